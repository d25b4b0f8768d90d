/* ZeroMQ transport round trips over ipc:// and tcp:// between a listener
 * (echo server thread) and a connector: sizes from a bare header to 8 MiB
 * across the copy/zero-copy boundary, several in flight, every byte checked;
 * a second coordinator is ignored while the first keeps being served. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "tests/testutil.h"
#include "tests/unit/zmq/zmq_testutil.h"

#define SEC 1000000000ll

static const size_t sizes[] = {
    32, 40, 64, 1000, 4096, 8224, 8232, 65536, 100000, (size_t)1 << 20, (size_t)8 << 20,
};
#define N_SIZES (sizeof sizes / sizeof sizes[0])

/* Sends every size up to max_bytes back to back (all in flight), then
 * receives and checks the echoes in order. Returns how many it sent. */
static unsigned roundtrip_burst(mb_transport *c, uint64_t *seq, size_t max_bytes)
{
    uint64_t first = *seq;
    size_t n = 0;
    while (n < N_SIZES && sizes[n] <= max_bytes)
        n++;
    for (size_t i = 0; i < n; i++) {
        mb_status st = zt_send(c, sizes[i], (*seq)++, 5 * SEC);
        CHECK_MSG(st == MB_STATUS_OK, "send %zu bytes: %s", sizes[i], mb_status_name(st));
    }
    for (size_t i = 0; i < n; i++) {
        const void *msg = NULL;
        size_t bytes = 0;
        mb_status st = mb_transport_recv(c, 5 * SEC, &msg, &bytes);
        CHECK_MSG(st == MB_STATUS_OK, "recv echo of %zu bytes: %s", sizes[i], mb_status_name(st));
        if (st != MB_STATUS_OK) return (unsigned)n;
        CHECK(((uintptr_t)msg & 7) == 0);
        CHECK_EQ(bytes, sizes[i]);
        CHECK_MSG(zt_check(msg, bytes, first + i), "echo of %zu bytes differs", sizes[i]);
        mb_transport_recv_release(c);
    }
    return (unsigned)n;
}

/* A second coordinator's messages are dropped: it hears nothing, and the
 * first one is still served. */
static void second_coordinator_ignored(const char *endpoint, mb_transport *c, uint64_t *seq)
{
    mb_transport other = {0};
    REQUIRE(mb_zmq_transport_connect(endpoint, NULL, &other) == MB_STATUS_OK);
    CHECK_EQ(zt_send(&other, 64, 777, 2 * SEC), MB_STATUS_OK);
    const void *msg = NULL;
    size_t bytes = 0;
    CHECK_EQ(mb_transport_recv(&other, 200000000ll, &msg, &bytes), MB_STATUS_TIMEOUT);

    CHECK_EQ(zt_send(c, 128, *seq, 2 * SEC), MB_STATUS_OK);
    mb_status st = mb_transport_recv(c, 5 * SEC, &msg, &bytes);
    CHECK_EQ(st, MB_STATUS_OK);
    if (st == MB_STATUS_OK) {
        CHECK(zt_check(msg, bytes, *seq));
        mb_transport_recv_release(c);
    }
    (*seq)++;
    mb_transport_destroy(&other);
}

/* full: all sizes in three bursts and the second-coordinator check; else
 * one burst up to 1 MiB (for IPv6, skipped where the host has none). */
static void run(const char *listen_endpoint, int full)
{
    mb_transport l = {0}, c = {0};
    mb_status st = mb_zmq_transport_listen(listen_endpoint, NULL, &l);
    if (!full && st != MB_STATUS_OK) {
        printf("%s: skipped, cannot listen (%s)\n", listen_endpoint, mb_status_name(st));
        return;
    }
    REQUIRE(st == MB_STATUS_OK);
    char endpoint[256];
    REQUIRE(mb_zmq_transport_endpoint(&l, endpoint, sizeof endpoint) == MB_STATUS_OK);
    CHECK(strchr(endpoint, '*') == NULL);
    char tiny[4];
    CHECK_EQ(mb_zmq_transport_endpoint(&l, tiny, sizeof tiny), MB_STATUS_FULL);
    REQUIRE(mb_zmq_transport_connect(endpoint, NULL, &c) == MB_STATUS_OK);
    CHECK_EQ(mb_transport_max_message_bytes(&c), (size_t)1 << 30);

    zt_echo echo = {.t = &l, .idle_timeout_ns = 10 * SEC};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, zt_echo_run, &echo) == 0);

    uint64_t seq = 0;
    int64_t t0 = zt_now_ns();
    /* The first burst carries the 8 MiB messages; the others reuse pooled
     * buffers of the smaller sizes. */
    unsigned long sent = roundtrip_burst(&c, &seq, full ? SIZE_MAX : (size_t)1 << 20);
    for (int round = 0; full && round < 2; round++)
        sent += roundtrip_burst(&c, &seq, (size_t)1 << 20);
    int64_t t1 = zt_now_ns();
    if (full) second_coordinator_ignored(endpoint, &c, &seq);
    int64_t t2 = zt_now_ns();

    CHECK_EQ(zt_send(&c, 32, ZT_SEQ_STOP, 5 * SEC), MB_STATUS_OK);
    const void *msg = NULL;
    size_t bytes = 0;
    st = mb_transport_recv(&c, 5 * SEC, &msg, &bytes);
    CHECK_EQ(st, MB_STATUS_OK);
    if (st == MB_STATUS_OK) mb_transport_recv_release(&c);
    pthread_join(th, NULL);
    CHECK_EQ(echo.last, MB_STATUS_OK);
    CHECK_EQ(echo.n_echoed, sent + (full ? 2 : 1));
    int64_t t3 = zt_now_ns();
    printf("%s: %lu messages echoed; bursts %.1f ms, second coordinator %.1f ms, stop %.1f ms\n",
           endpoint, echo.n_echoed, (t1 - t0) / 1e6, (t2 - t1) / 1e6, (t3 - t2) / 1e6);

    mb_transport_destroy(&c);
    mb_transport_destroy(&l);
}

int main(void)
{
    char dir[256], ep[320];
    zt_mkdtemp(dir, sizeof dir);
    snprintf(ep, sizeof ep, "ipc://%s/worker.sock", dir);
    run(ep, 1);
    run("tcp://127.0.0.1:*", 1);
    run("tcp://[::1]:*", 0);
    rmdir(dir);
    return mb_test_finish("zmq_roundtrip_test");
}
