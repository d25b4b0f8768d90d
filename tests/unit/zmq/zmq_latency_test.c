/* Round-trip latency of the ZeroMQ transport next to bare libzmq in the same
 * run, for the goal "ZeroMQ transport <= bare libzmq + 10%". Every side
 * echoes from a thread over its own contexts (as two processes would): the
 * transport through reserve/commit/recv; bare libzmq as a DEALER/ROUTER pair
 * sending from a user buffer (zmq_send copies) and receiving with
 * zmq_msg_recv (no copy), once as one frame and once split as the transport
 * frames a message (32-byte header + body), which separates the transport's
 * own overhead from its framing's. Blocks alternate, in rotating order, so
 * machine noise hits all alike. Prints medians and p90; fails only if a
 * round trip fails. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "tests/testutil.h"
#include "tests/unit/zmq/zmq_testutil.h"

#define SEC 1000000000ll
#define BLOCKS 10
/* Under ASan every large allocation is a fresh mapping: a few round trips
 * only prove the path works, and the figures mean nothing. */
#if defined(__SANITIZE_ADDRESS__)
#define ITER_DIV 10
#define LARGE_SIZE ((size_t)128 << 10)
#else
#define ITER_DIV 1
#define LARGE_SIZE ((size_t)1 << 20)
#endif
#define MAX_SIZE ((size_t)1 << 20)

static unsigned char src[MAX_SIZE] __attribute__((aligned(64)));

typedef struct {
    void *ctx_l, *ctx_c, *router, *dealer;
    pthread_t th;
    int split; /* 1: header frame + body frame; 0: one frame */
    unsigned char *reply;
} bare_pair;

/* Echoes each message with the frame split it came with; an empty message
 * stops it. */
static void *bare_echo(void *arg)
{
    bare_pair *b = arg;
    for (;;) {
        zmq_msg_t id, m;
        zmq_msg_init(&id);
        if (zmq_msg_recv(&id, b->router, 0) < 0) break;
        size_t sizes[2] = {0, 0}, n = 0, k = 0;
        int more = 1;
        while (more) {
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, b->router, 0) < 0) return NULL;
            size_t len = zmq_msg_size(&m);
            memcpy(b->reply + n, zmq_msg_data(&m), len);
            if (k < 2) sizes[k++] = len;
            n += len;
            more = zmq_msg_more(&m);
            zmq_msg_close(&m);
        }
        zmq_send(b->router, zmq_msg_data(&id), zmq_msg_size(&id), ZMQ_SNDMORE);
        if (k == 2) zmq_send(b->router, b->reply, sizes[0], ZMQ_SNDMORE);
        zmq_send(b->router, b->reply + (k == 2 ? sizes[0] : 0), k == 2 ? sizes[1] : n, 0);
        zmq_msg_close(&id);
        if (n == 0) break;
    }
    return NULL;
}

static void bare_open(bare_pair *b, const char *endpoint, int split)
{
    int zero = 0;
    b->split = split;
    b->reply = malloc(MAX_SIZE);
    b->ctx_l = zmq_ctx_new();
    b->ctx_c = zmq_ctx_new();
    b->router = zmq_socket(b->ctx_l, ZMQ_ROUTER);
    b->dealer = zmq_socket(b->ctx_c, ZMQ_DEALER);
    REQUIRE(b->reply && b->router && b->dealer);
    zmq_setsockopt(b->router, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(b->dealer, ZMQ_LINGER, &zero, sizeof zero);
    REQUIRE(zmq_bind(b->router, endpoint) == 0);
    char ep[256];
    size_t len = sizeof ep;
    REQUIRE(zmq_getsockopt(b->router, ZMQ_LAST_ENDPOINT, ep, &len) == 0);
    REQUIRE(zmq_connect(b->dealer, ep) == 0);
    REQUIRE(pthread_create(&b->th, NULL, bare_echo, b) == 0);
}

static void bare_close(bare_pair *b)
{
    zmq_send(b->dealer, "", 0, 0);
    pthread_join(b->th, NULL);
    zmq_close(b->dealer);
    zmq_close(b->router);
    zmq_ctx_term(b->ctx_c);
    zmq_ctx_term(b->ctx_l);
    free(b->reply);
}

static int bare_roundtrip(bare_pair *b, size_t size)
{
    if (b->split) {
        if (zmq_send(b->dealer, src, MB_PROTO_HEADER_BYTES, ZMQ_SNDMORE) < 0) return 0;
        if (zmq_send(b->dealer, src + MB_PROTO_HEADER_BYTES, size - MB_PROTO_HEADER_BYTES, 0) < 0)
            return 0;
    } else if (zmq_send(b->dealer, src, size, 0) != (int)size) {
        return 0;
    }
    size_t n = 0;
    int more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, b->dealer, 0) < 0) return 0;
        n += zmq_msg_size(&m);
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    return n == size;
}

static int mb_roundtrip(mb_transport *c, size_t size)
{
    void *buf = NULL;
    if (mb_transport_send_reserve(c, size, 5 * SEC, &buf) != MB_STATUS_OK) return 0;
    memcpy(buf, src, size);
    if (mb_transport_send_commit(c, size) != MB_STATUS_OK) return 0;
    const void *msg = NULL;
    size_t n = 0;
    if (mb_transport_recv(c, 5 * SEC, &msg, &n) != MB_STATUS_OK) return 0;
    mb_transport_recv_release(c);
    return n == size;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct_us(int64_t *v, size_t n, double q)
{
    qsort(v, n, sizeof *v, cmp_i64);
    return (double)v[(size_t)(q * (double)(n - 1))] / 1e3;
}

enum { C_MB, C_BARE1, C_BARE2, N_C };

static void measure(const char *label, mb_transport *c, bare_pair *b1, bare_pair *b2, size_t size,
                    int per_block)
{
    per_block = per_block / ITER_DIV > 2 ? per_block / ITER_DIV : 2;
    size_t n = (size_t)BLOCKS * (size_t)per_block;
    int64_t *t[N_C];
    for (int j = 0; j < N_C; j++)
        REQUIRE((t[j] = calloc(n, sizeof *t[j])) != NULL);
    for (int w = 0; w < per_block / 2 + 2; w++) { /* warm up: pools, page faults, TCP windows */
        CHECK(mb_roundtrip(c, size));
        CHECK(bare_roundtrip(b1, size));
        CHECK(bare_roundtrip(b2, size));
    }
    size_t k = 0;
    for (int blk = 0; blk < BLOCKS; blk++) {
        for (int step = 0; step < N_C; step++) {
            int who = (step + blk) % N_C; /* rotate who goes first */
            for (int i = 0; i < per_block; i++) {
                int64_t t0 = zt_now_ns();
                int ok = who == C_MB ? mb_roundtrip(c, size)
                                     : bare_roundtrip(who == C_BARE1 ? b1 : b2, size);
                t[who][k + (size_t)i] = zt_now_ns() - t0;
                CHECK(ok);
            }
        }
        k += (size_t)per_block;
    }
    double p50[N_C], p90[N_C];
    for (int j = 0; j < N_C; j++) {
        p50[j] = pct_us(t[j], n, 0.5);
        p90[j] = pct_us(t[j], n, 0.9);
        free(t[j]);
    }
    printf("  %-4s %8zu B %9.1f / %8.1f  %9.1f / %8.1f  %9.1f / %8.1f   %6.3f   %6.3f\n", label,
           size, p50[C_MB], p90[C_MB], p50[C_BARE1], p90[C_BARE1], p50[C_BARE2], p90[C_BARE2],
           p50[C_MB] / p50[C_BARE1], p50[C_MB] / p50[C_BARE2]);
}

static void run(const char *label, const char *endpoint, const char *bare_endpoint)
{
    mb_transport l = {0}, c = {0};
    REQUIRE(mb_zmq_transport_listen(endpoint, NULL, &l) == MB_STATUS_OK);
    char ep[256];
    REQUIRE(mb_zmq_transport_endpoint(&l, ep, sizeof ep) == MB_STATUS_OK);
    REQUIRE(mb_zmq_transport_connect(ep, NULL, &c) == MB_STATUS_OK);
    zt_echo echo = {.t = &l, .idle_timeout_ns = 30 * SEC};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, zt_echo_run, &echo) == 0);
    bare_pair b1, b2;
    char bare_ep[320];
    snprintf(bare_ep, sizeof bare_ep, bare_endpoint, 1);
    bare_open(&b1, bare_ep, 0);
    snprintf(bare_ep, sizeof bare_ep, bare_endpoint, 2);
    bare_open(&b2, bare_ep, 1);

    measure(label, &c, &b1, &b2, 64, 100);
    measure(label, &c, &b1, &b2, 8192, 75);
    measure(label, &c, &b1, &b2, LARGE_SIZE, 10);

    CHECK_EQ(zt_send(&c, 32, ZT_SEQ_STOP, 5 * SEC), MB_STATUS_OK);
    const void *msg = NULL;
    size_t n = 0;
    CHECK_EQ(mb_transport_recv(&c, 5 * SEC, &msg, &n), MB_STATUS_OK);
    pthread_join(th, NULL);
    mb_transport_destroy(&c);
    mb_transport_destroy(&l);
    bare_close(&b1);
    bare_close(&b2);
}

int main(void)
{
    for (size_t i = 0; i < MAX_SIZE; i++)
        src[i] = (unsigned char)(i * 131 + 7);
    memset(src, 0, 8); /* sequence 0: not a STOP or HANG request */
    char dir[256], ep[320], bare_ep[320];
    zt_mkdtemp(dir, sizeof dir);
    snprintf(ep, sizeof ep, "ipc://%s/mb.sock", dir);
    snprintf(bare_ep, sizeof bare_ep, "ipc://%s/bare%%d.sock", dir);
    printf("round trip in us, median / p90, %d blocks rotating%s\n", BLOCKS,
           ITER_DIV > 1 ? " [sanitizer build: not a measurement]" : "");
    printf("  %-4s %10s %20s  %20s  %20s   %6s   %6s\n", "", "size", "transport", "bare 1 frame",
           "bare 2 frames", "/bare1", "/bare2");
    run("ipc", ep, bare_ep);
    run("tcp", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*");
    for (int i = 1; i <= 2; i++) {
        char path[400];
        snprintf(path, sizeof path, "%s/bare%d.sock", dir, i);
        unlink(path);
    }
    rmdir(dir);
    return mb_test_finish("zmq_latency_test");
}
