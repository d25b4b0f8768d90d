/* A moe-worker on tcp://127.0.0.1 against a hostile client, each attack
 * followed by a coordinator that must be served: random frames before and
 * inside a session, raw TCP garbage, a stale LOAD_EXPERT (layer 0, slot
 * 4095) left for the next session, a client running the previous session's
 * expert, a PING that holds its connection, an oversized frame, a second
 * coordinator (BUSY). Ends with a real moe-broker run; the worker must have
 * survived everything and stop cleanly on SIGTERM. */
#include <stdint.h>
#include <zmq.h>

#include "tests/integration/network/net_util.h"

static char ep[256];
static pid_t worker;
static unsigned char msg[16384] __attribute__((aligned(64)));

static uint64_t rnd_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

static void fill_random(unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)rnd();
}

static void expect_served(const char *after)
{
    char err[512] = "";
    REQUIRE(nt_alive(worker));
    mb_status st = nt_probe(ep, NULL, NULL, err, sizeof err);
    CHECK_MSG(st == MB_STATUS_OK, "after %s: %s (%s)", after, mb_status_str(st), err);
}

/* Random multipart messages from a raw DEALER; with hello, it first opens
 * a session, so the garbage comes from the session's own peer. */
static void attack_random_frames(int hello)
{
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    REQUIRE(zmq_connect(s, ep) == 0);
    if (hello) {
        size_t len = nt_hello_msg(msg, sizeof msg, 7);
        zmq_send(s, msg, MB_PROTO_HEADER_BYTES, ZMQ_SNDMORE);
        zmq_send(s, msg + MB_PROTO_HEADER_BYTES, len - MB_PROTO_HEADER_BYTES, 0);
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        CHECK_MSG(zmq_poll(&it, 1, 3000) == 1, "no HELLO_REPLY to the raw client");
    }
    for (int i = 0; i < 60; i++) {
        int frames = 1 + (int)(rnd() % 4);
        for (int f = 0; f < frames; f++) {
            size_t n = rnd() % 3 == 0 ? MB_PROTO_HEADER_BYTES : rnd() % 200;
            fill_random(msg, n);
            if (n >= 8 && rnd() % 2) { /* a header that looks right */
                uint32_t magic = MB_PROTO_MAGIC;
                memcpy(msg, &magic, 4);
            }
            zmq_send(s, msg, n, f + 1 < frames ? ZMQ_SNDMORE : 0);
        }
    }
    usleep(200000);
    zmq_close(s);
    zmq_ctx_term(ctx);
}

static void attack_tcp_garbage(void)
{
    static const unsigned char greeting[64] = {0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0, 'N', 'U', 'L', 'L'};
    int idle = nt_tcp_connect(ep); /* held open, silent, through the probe */
    for (int k = 0; k < 3; k++) {
        int fd = nt_tcp_connect(ep);
        REQUIRE(fd >= 0);
        if (k == 1) nt_write_all(fd, greeting, sizeof greeting);
        fill_random(msg, 8192);
        nt_write_all(fd, msg, k == 2 ? 64 : 8192);
        close(fd);
    }
    expect_served("raw TCP garbage");
    if (idle >= 0) close(idle);
}

/* A ZMTP 3.0 client written by hand, announcing a 1 TiB frame. */
static void attack_oversized(void)
{
    static const unsigned char greeting[64] = {0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0, 'N', 'U', 'L', 'L'};
    static const unsigned char ready[] = {0x04, 28, 5, 'R', 'E', 'A', 'D', 'Y', 11, 'S', 'o', 'c', 'k', 'e',
                                          't', '-', 'T', 'y', 'p', 'e', 0, 0, 0, 6, 'D', 'E', 'A', 'L', 'E', 'R'};
    static const unsigned char huge[] = {0x02, 0, 0, 1, 0, 0, 0, 0, 0, 'x', 'x', 'x', 'x'};
    /* While a session is open: the stranger's frame must not disturb it. */
    mb_transport t;
    nt_open_session(ep, &t);
    int fd = nt_tcp_connect(ep);
    REQUIRE(fd >= 0);
    nt_write_all(fd, greeting, sizeof greeting);
    nt_write_all(fd, ready, sizeof ready);
    nt_write_all(fd, huge, sizeof huge);
    usleep(200000);
    close(fd);
    int op = 0;
    CHECK_EQ(nt_call(&t, msg, nt_empty_msg(msg, MB_OP_PING, 9), 2000000000LL, &op), MB_STATUS_OK);
    CHECK_EQ(op, MB_OP_PONG);
    CHECK_EQ(nt_call(&t, msg, nt_empty_msg(msg, MB_OP_SHUTDOWN, 10), 2000000000LL, &op), MB_STATUS_OK);
    mb_transport_destroy(&t);
    expect_served("an oversized frame");
}

/* Experts one session loaded must not reach the next: a stale LOAD_EXPERT
 * of another shape in layer 0, and an expert a client could run later. */
static void attack_stale_experts(void)
{
    mb_transport t;
    nt_open_session(ep, &t);
    int op = 0;
    CHECK_EQ(nt_call(&t, msg, nt_load_msg(msg, sizeof msg, 2, 0, 4095, 1, 1.0f), 2000000000LL, &op), MB_STATUS_OK);
    CHECK_EQ(nt_call(&t, msg, nt_load_msg(msg, sizeof msg, 3, 1, 7, NT_D, 1.0f), 2000000000LL, &op), MB_STATUS_OK);
    mb_transport_destroy(&t); /* gone without SHUTDOWN */
    expect_served("a stale LOAD_EXPERT");

    nt_open_session(ep, &t);
    CHECK_EQ(nt_call(&t, msg, nt_load_msg(msg, sizeof msg, 2, 0, 7, NT_D, 1.0f), 2000000000LL, &op), MB_STATUS_OK);
    CHECK_EQ(nt_call(&t, msg, nt_req_msg(msg, sizeof msg, 3, 7), 2000000000LL, &op), MB_STATUS_OK);
    mb_transport_destroy(&t);
    nt_open_session(ep, &t);
    mb_status st = nt_call(&t, msg, nt_req_msg(msg, sizeof msg, 4, 7), 2000000000LL, &op);
    CHECK_MSG(st == MB_STATUS_NOT_LOADED, "the previous session's expert answered %s", mb_status_str(st));
    mb_transport_destroy(&t);
}

static void attack_ping_hold(void)
{
    mb_transport t;
    int op = 0;
    mb_status st = MB_STATUS_PEER_DEAD;
    /* No session was opened: no PONG, and the connection claims nothing.
     * (A connection made while the worker closed the previous session's
     * socket is dropped: try again.) */
    for (int attempt = 0; attempt < 20 && st == MB_STATUS_PEER_DEAD; attempt++) {
        if (attempt) {
            mb_transport_destroy(&t);
            usleep(100000);
        }
        nt_client(ep, NULL, &t);
        st = nt_call(&t, msg, nt_empty_msg(msg, MB_OP_PING, 5), 500000000LL, &op);
    }
    CHECK_EQ(st, MB_STATUS_TIMEOUT);
    expect_served("a PING that holds its connection");
    mb_transport_destroy(&t);
}

static void attack_second_coordinator(void)
{
    mb_transport a, b;
    nt_open_session(ep, &a);
    nt_client(ep, NULL, &b);
    int op = 0;
    CHECK_EQ(nt_call(&b, msg, nt_hello_msg(msg, sizeof msg, 1), 2000000000LL, &op), MB_STATUS_BUSY);
    mb_transport_destroy(&b);
    char err[512] = "";
    uint64_t t0 = mb_now_ns();
    CHECK_EQ(nt_probe(ep, NULL, NULL, err, sizeof err), MB_STATUS_BUSY);
    CHECK_MSG(strstr(err, "busy") != NULL, "%s", err);
    CHECK_MSG(mb_now_ns() - t0 < 6000000000ull, "BUSY took %.1f s", (mb_now_ns() - t0) / 1e9);
    CHECK_EQ(nt_call(&a, msg, nt_empty_msg(msg, MB_OP_SHUTDOWN, 2), 2000000000LL, &op), MB_STATUS_OK);
    mb_transport_destroy(&a);
    expect_served("a second coordinator");
}

static void run_broker(void)
{
    const char *broker = getenv("MB_BROKER_BIN"), *data = getenv("MB_TEST_DATA");
    if (!broker || !data) return;
    char cmd[1024];
    /* The small fixture checkpoint: the embedded default model takes a
     * minute to build under ThreadSanitizer. */
    snprintf(cmd, sizeof cmd, "'%s' run --model '%s/qwen3moe-a' --worker %s --gen 2 --quiet </dev/null >/dev/null",
             broker, data, ep);
    int rc = system(cmd);
    CHECK_MSG(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "moe-broker run against the worker failed (%d)", rc);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    worker = mb_test_start_worker("tcp://127.0.0.1:*", 1, ep, sizeof ep);
    if (worker < 0) MB_TEST_SKIP("cannot start moe-worker (MB_WORKER_BIN)");
    expect_served("start");
    attack_random_frames(0);
    expect_served("random frames from a stranger");
    attack_random_frames(1);
    expect_served("random frames inside a session");
    attack_tcp_garbage();
    attack_stale_experts();
    attack_ping_hold();
    attack_oversized();
    attack_second_coordinator();
    run_broker();
    CHECK(nt_alive(worker));
    kill(worker, SIGTERM);
    int status = 0;
    REQUIRE(waitpid(worker, &status, 0) == worker);
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker status %d", status);
    return mb_test_finish("test_worker_hostile");
}
