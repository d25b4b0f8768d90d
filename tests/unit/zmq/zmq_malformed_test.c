/* Hostile framing against both ends: a raw libzmq DEALER sends a listener
 * messages with the wrong frame count, empty, short and long header frames,
 * a body past max_message_bytes and one past ZMQ_MAXMSGSIZE; a raw ROUTER
 * does the same to a connector. Each is rejected (PROTOCOL or TRUNCATED, or
 * the connection dropped by libzmq) and the next good message is served. */
#include <stdint.h>
#include <string.h>
#include <zmq.h>

#include "tests/testutil.h"
#include "tests/unit/zmq/zmq_testutil.h"

#define SEC 1000000000ll
#define MAX_BYTES 65536u

static unsigned char scratch[4 * MAX_BYTES];

/* Sends one message whose frames have the given sizes, cut in order from a
 * zt_fill pattern of seq; with id, a ROUTER's routing frame goes first. */
static void raw_send(void *sock, const zmq_msg_t *id, uint64_t seq, const size_t *frames, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += frames[i];
    REQUIRE(total <= sizeof scratch);
    zt_fill(scratch, total, seq);
    if (id)
        REQUIRE(zmq_send(sock, zmq_msg_data((zmq_msg_t *)id), zmq_msg_size(id), ZMQ_SNDMORE) >= 0);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        REQUIRE(zmq_send(sock, scratch + off, frames[i], i + 1 < n ? ZMQ_SNDMORE : 0) >= 0);
        off += frames[i];
    }
}

static mb_status recv_status(mb_transport *t, int64_t timeout_ns, uint64_t want_seq)
{
    const void *msg = NULL;
    size_t bytes = 0;
    mb_status st = mb_transport_recv(t, timeout_ns, &msg, &bytes);
    if (st == MB_STATUS_OK) {
        CHECK(zt_check(msg, bytes, want_seq));
        mb_transport_recv_release(t);
    }
    return st;
}

static void *raw_socket(void *ctx, int type)
{
    void *s = zmq_socket(ctx, type);
    REQUIRE(s);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    int timeout_ms = 5000;
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    return s;
}

static void hostile_coordinator(void *ctx)
{
    mb_zmq_options opt = {.max_message_bytes = MAX_BYTES};
    mb_transport l = {0};
    REQUIRE(mb_zmq_transport_listen("tcp://127.0.0.1:*", &opt, &l) == MB_STATUS_OK);
    CHECK_EQ(mb_transport_max_message_bytes(&l), MAX_BYTES);
    char ep[256];
    REQUIRE(mb_zmq_transport_endpoint(&l, ep, sizeof ep) == MB_STATUS_OK);
    void *d = raw_socket(ctx, ZMQ_DEALER);
    REQUIRE(zmq_connect(d, ep) == 0);

    static const struct {
        size_t frames[4];
        size_t n;
        mb_status want;
    } bad[] = {
        {{32}, 1, MB_STATUS_PROTOCOL},         /* header without body frame */
        {{0}, 1, MB_STATUS_PROTOCOL},          /* one empty frame */
        {{32, 16, 16}, 3, MB_STATUS_PROTOCOL}, /* an extra frame */
        {{32, 8, 8, 8}, 4, MB_STATUS_PROTOCOL},
        {{16, 16}, 2, MB_STATUS_TRUNCATED},            /* short header frame */
        {{0, 32}, 2, MB_STATUS_TRUNCATED},             /* empty header frame */
        {{40, 8}, 2, MB_STATUS_PROTOCOL},              /* long header frame */
        {{32, MAX_BYTES - 16}, 2, MB_STATUS_PROTOCOL}, /* message past max_message_bytes */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        raw_send(d, NULL, 100 + i, bad[i].frames, bad[i].n);
        mb_status st = recv_status(&l, 5 * SEC, 0);
        CHECK_MSG(st == bad[i].want, "case %zu: %s", i, mb_status_name(st));
    }
    /* 100 frames. */
    size_t many[100];
    for (size_t i = 0; i < 100; i++)
        many[i] = 8;
    raw_send(d, NULL, 200, many, 100);
    CHECK_EQ(recv_status(&l, 5 * SEC, 0), MB_STATUS_PROTOCOL);

    /* A frame past ZMQ_MAXMSGSIZE: libzmq drops that connection before the
     * message is whole, so nothing arrives; the DEALER reconnects by itself. */
    size_t oversize[] = {32, 2 * MAX_BYTES};
    raw_send(d, NULL, 300, oversize, 2);
    CHECK_EQ(recv_status(&l, 300000000ll, 0), MB_STATUS_TIMEOUT);

    /* The next good message is served and answered. */
    size_t good[] = {32, 96};
    raw_send(d, NULL, 1, good, 2);
    CHECK_EQ(recv_status(&l, 5 * SEC, 1), MB_STATUS_OK);
    CHECK_EQ(zt_send(&l, 128, 2, SEC), MB_STATUS_OK);
    zmq_msg_t f;
    zmq_msg_init(&f);
    CHECK(zmq_msg_recv(&f, d, 0) == 32 && zmq_msg_more(&f));
    unsigned char reply[128];
    memcpy(reply, zmq_msg_data(&f), 32);
    CHECK(zmq_msg_recv(&f, d, 0) == 96 && !zmq_msg_more(&f));
    memcpy(reply + 32, zmq_msg_data(&f), 96);
    zmq_msg_close(&f);
    CHECK(zt_check(reply, 128, 2));

    /* The established peer's own bad message is rejected too, and it is
     * still served after. A stranger's messages, good or bad, are dropped. */
    raw_send(d, NULL, 3, bad[0].frames, bad[0].n);
    CHECK_EQ(recv_status(&l, 5 * SEC, 0), MB_STATUS_PROTOCOL);
    void *d2 = raw_socket(ctx, ZMQ_DEALER);
    REQUIRE(zmq_connect(d2, ep) == 0);
    raw_send(d2, NULL, 4, good, 2);
    raw_send(d2, NULL, 5, bad[0].frames, bad[0].n);
    CHECK_EQ(recv_status(&l, 300000000ll, 0), MB_STATUS_TIMEOUT);
    raw_send(d, NULL, 6, good, 2);
    CHECK_EQ(recv_status(&l, 5 * SEC, 6), MB_STATUS_OK);

    zmq_close(d2);
    zmq_close(d);
    mb_transport_destroy(&l);
}

static void hostile_worker(void *ctx)
{
    void *r = raw_socket(ctx, ZMQ_ROUTER);
    REQUIRE(zmq_bind(r, "tcp://127.0.0.1:*") == 0);
    char ep[256];
    size_t len = sizeof ep;
    REQUIRE(zmq_getsockopt(r, ZMQ_LAST_ENDPOINT, ep, &len) == 0);
    mb_zmq_options opt = {.max_message_bytes = MAX_BYTES};
    mb_transport c = {0};
    REQUIRE(mb_zmq_transport_connect(ep, &opt, &c) == MB_STATUS_OK);

    /* The connector speaks first so the ROUTER learns its identity. */
    REQUIRE(zt_send(&c, 64, 1, 5 * SEC) == MB_STATUS_OK);
    zmq_msg_t id, f;
    zmq_msg_init(&id);
    zmq_msg_init(&f);
    REQUIRE(zmq_msg_recv(&id, r, 0) > 0);
    CHECK(zmq_msg_recv(&f, r, 0) == 32);
    CHECK(zmq_msg_recv(&f, r, 0) == 32 && !zmq_msg_more(&f));
    zmq_msg_close(&f);

    static const struct {
        size_t frames[3];
        size_t n;
        mb_status want;
    } bad[] = {
        {{32}, 1, MB_STATUS_PROTOCOL},
        {{32, 8, 8}, 3, MB_STATUS_PROTOCOL},
        {{16, 0}, 2, MB_STATUS_TRUNCATED},
        {{40, 8}, 2, MB_STATUS_PROTOCOL},
        {{32, MAX_BYTES}, 2, MB_STATUS_PROTOCOL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        raw_send(r, &id, 10 + i, bad[i].frames, bad[i].n);
        mb_status st = recv_status(&c, 5 * SEC, 0);
        CHECK_MSG(st == bad[i].want, "case %zu: %s", i, mb_status_name(st));
    }
    size_t good[] = {32, 64};
    raw_send(r, &id, 2, good, 2);
    CHECK_EQ(recv_status(&c, 5 * SEC, 2), MB_STATUS_OK);

    zmq_msg_close(&id);
    mb_transport_destroy(&c);
    zmq_close(r);
}

int main(void)
{
    void *ctx = zmq_ctx_new();
    REQUIRE(ctx);
    hostile_coordinator(ctx);
    hostile_worker(ctx);
    zmq_ctx_term(ctx);
    return mb_test_finish("zmq_malformed_test");
}
