/* Round-trip latency of the ZeroMQ transport next to bare libzmq in the same
 * run, for the goal "ZeroMQ transport <= bare libzmq + 10%". Both sides echo
 * from a thread over their own contexts (as two processes would): the
 * transport through reserve/commit/recv, bare libzmq as a DEALER/ROUTER pair
 * sending one frame from a user buffer (zmq_send copies) and receiving with
 * zmq_msg_recv (no copy). Blocks of both alternate so machine noise hits
 * both alike. Prints medians and p90; fails only if a round trip fails. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "tests/testutil.h"
#include "tests/unit/zmq/zmq_testutil.h"

#define SEC 1000000000ll
#define BLOCKS 5
/* Under ASan every large allocation is a fresh mapping: a few round trips
 * only prove the path works, and the figures mean nothing. */
#if defined(__SANITIZE_ADDRESS__)
#define ITER_DIV 10
#else
#define ITER_DIV 1
#endif
#define MAX_SIZE ((size_t)1 << 20)

static unsigned char src[MAX_SIZE] __attribute__((aligned(64)));

typedef struct {
    void *ctx_l, *ctx_c, *router, *dealer;
    pthread_t th;
    unsigned char *reply;
} bare_pair;

static void *bare_echo(void *arg)
{
    bare_pair *b = arg;
    for (;;) {
        zmq_msg_t id, m;
        zmq_msg_init(&id);
        zmq_msg_init(&m);
        if (zmq_msg_recv(&id, b->router, 0) < 0 || zmq_msg_recv(&m, b->router, 0) < 0) break;
        size_t n = zmq_msg_size(&m);
        memcpy(b->reply, zmq_msg_data(&m), n);
        zmq_send(b->router, zmq_msg_data(&id), zmq_msg_size(&id), ZMQ_SNDMORE);
        zmq_send(b->router, b->reply, n, 0);
        zmq_msg_close(&id);
        zmq_msg_close(&m);
        if (n == 0) break;
    }
    return NULL;
}

static void bare_open(bare_pair *b, const char *endpoint)
{
    int zero = 0;
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
    if (zmq_send(b->dealer, src, size, 0) != (int)size) return 0;
    zmq_msg_t m;
    zmq_msg_init(&m);
    int ok = zmq_msg_recv(&m, b->dealer, 0) == (int)size;
    zmq_msg_close(&m);
    return ok;
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

static void measure(const char *label, mb_transport *c, bare_pair *b, size_t size, int per_block)
{
    per_block = per_block / ITER_DIV > 2 ? per_block / ITER_DIV : 2;
    size_t n = (size_t)BLOCKS * (size_t)per_block;
    int64_t *t_mb = calloc(n, sizeof *t_mb), *t_bare = calloc(n, sizeof *t_bare);
    REQUIRE(t_mb && t_bare);
    for (int w = 0; w < per_block / 4 + 2; w++) { /* warm up: pools, page faults, TCP windows */
        CHECK(mb_roundtrip(c, size));
        CHECK(bare_roundtrip(b, size));
    }
    size_t k = 0;
    for (int blk = 0; blk < BLOCKS; blk++) {
        for (int i = 0; i < per_block; i++) {
            int64_t t0 = zt_now_ns();
            CHECK(mb_roundtrip(c, size));
            t_mb[k + (size_t)i] = zt_now_ns() - t0;
        }
        for (int i = 0; i < per_block; i++) {
            int64_t t0 = zt_now_ns();
            CHECK(bare_roundtrip(b, size));
            t_bare[k + (size_t)i] = zt_now_ns() - t0;
        }
        k += (size_t)per_block;
    }
    double mb50 = pct_us(t_mb, n, 0.5), mb90 = pct_us(t_mb, n, 0.9);
    double b50 = pct_us(t_bare, n, 0.5), b90 = pct_us(t_bare, n, 0.9);
    printf("  %-4s %8zu B  transport %9.1f / %9.1f us   bare libzmq %9.1f / %9.1f us   median "
           "ratio %.3f\n",
           label, size, mb50, mb90, b50, b90, mb50 / b50);
    free(t_mb);
    free(t_bare);
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
    bare_pair b;
    bare_open(&b, bare_endpoint);

    measure(label, &c, &b, 64, 200);
    measure(label, &c, &b, 8192, 150);
    measure(label, &c, &b, MAX_SIZE, 20);

    CHECK_EQ(zt_send(&c, 32, ZT_SEQ_STOP, 5 * SEC), MB_STATUS_OK);
    const void *msg = NULL;
    size_t n = 0;
    CHECK_EQ(mb_transport_recv(&c, 5 * SEC, &msg, &n), MB_STATUS_OK);
    pthread_join(th, NULL);
    mb_transport_destroy(&c);
    mb_transport_destroy(&l);
    bare_close(&b);
}

int main(void)
{
    for (size_t i = 0; i < MAX_SIZE; i++)
        src[i] = (unsigned char)(i * 131 + 7);
    memset(src, 0, 8); /* sequence 0: not a STOP or HANG request */
    char dir[256], ep[320], bare_ep[320];
    zt_mkdtemp(dir, sizeof dir);
    snprintf(ep, sizeof ep, "ipc://%s/mb.sock", dir);
    snprintf(bare_ep, sizeof bare_ep, "ipc://%s/bare.sock", dir);
    printf("round trip, median / p90 over %d blocks (transport and bare alternate)%s:\n", BLOCKS,
           ITER_DIV > 1 ? " [sanitizer build: not a measurement]" : "");
    run("ipc", ep, bare_ep);
    run("tcp", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*");
    unlink(bare_ep);
    rmdir(dir);
    return mb_test_finish("zmq_latency_test");
}
