/* Capacity and time limits: a message larger than the ring is FULL at once,
 * a ring kept full by a slow consumer makes reserve time out at the given
 * timeout (and succeed once the consumer releases), a default segment carries
 * a 32 MiB prefill chunk, a clean hang-up is PEER_DEAD after the last message,
 * and misuse of the interface is INVALID_ARG. */
#include <pthread.h>
#include <unistd.h>

#include "shm/segment.h"
#include "shm/shm.h"
#include "tests/unit/shm/shm_test_util.h"

#define MS 1000000ll

typedef struct {
    mb_transport co, wk;
    int fd;
} pair;

static void pair_open(pair *p, const mb_shm_options *opt)
{
    REQUIRE(mb_shm_transport_create(opt, &p->co, &p->fd) == MB_STATUS_OK);
    REQUIRE(mb_shm_transport_attach(p->fd, &p->wk) == MB_STATUS_OK);
}

static void pair_close(pair *p)
{
    mb_transport_destroy(&p->wk);
    mb_transport_destroy(&p->co);
    close(p->fd);
}

static mb_status send_n(mb_transport *t, size_t len, uint64_t seq, int64_t timeout_ns)
{
    void *buf;
    mb_status st = mb_transport_send_reserve(t, len, timeout_ns, &buf);
    if (st != MB_STATUS_OK) return st;
    shm_test_fill(buf, len, seq);
    return mb_transport_send_commit(t, len);
}

static void test_too_big(void)
{
    mb_shm_options opt = {.n_slots = 4, .request_bytes = 16384, .reply_bytes = 8192};
    pair p;
    pair_open(&p, &opt);
    void *buf;
    CHECK_EQ(mb_transport_max_message_bytes(&p.co), 16384);
    CHECK_EQ(mb_transport_max_message_bytes(&p.wk), 8192);
    CHECK_EQ(mb_transport_send_reserve(&p.co, 16385, -1, &buf), MB_STATUS_FULL);
    CHECK_EQ(mb_transport_send_reserve(&p.co, SIZE_MAX, -1, &buf), MB_STATUS_FULL);
    CHECK_EQ(mb_transport_send_reserve(&p.wk, 8193, -1, &buf), MB_STATUS_FULL);
    /* Exactly the capacity fits an empty ring. */
    CHECK_EQ(send_n(&p.co, 16384, 0, 0), MB_STATUS_OK);
    const void *in;
    size_t len;
    CHECK_EQ(mb_transport_recv(&p.wk, 0, &in, &len), MB_STATUS_OK);
    CHECK(len == 16384 && shm_test_check(in, len, 0));
    mb_transport_recv_release(&p.wk);
    pair_close(&p);
}

static void expect_timeout(mb_transport *t, size_t len, int64_t timeout_ns, const char *what)
{
    void *buf;
    int64_t t0 = shm_test_now_ns();
    mb_status st = mb_transport_send_reserve(t, len, timeout_ns, &buf);
    int64_t dt = shm_test_now_ns() - t0;
    CHECK_MSG(st == MB_STATUS_TIMEOUT, "%s: %s", what, mb_status_name(st));
    CHECK_MSG(dt >= timeout_ns && dt < timeout_ns + 500 * MS, "%s: %lld ns for %lld", what,
              (long long)dt, (long long)timeout_ns);
}

typedef struct {
    mb_transport *wk;
    int64_t delay_ns;
    mb_status st;
} slow_arg;

/* Sleeps, then takes and releases one message. */
static void *slow_consumer(void *p)
{
    slow_arg *a = p;
    struct timespec ts = {0, (long)a->delay_ns};
    nanosleep(&ts, NULL);
    const void *in;
    size_t len;
    a->st = mb_transport_recv(a->wk, 0, &in, &len);
    if (a->st == MB_STATUS_OK) mb_transport_recv_release(a->wk);
    return NULL;
}

static void test_slow_consumer(void)
{
    mb_shm_options opt = {.n_slots = 4, .request_bytes = 8192, .reply_bytes = 8192};
    pair p;
    pair_open(&p, &opt);
    /* Out of slots. */
    for (int i = 0; i < 4; i++)
        REQUIRE(send_n(&p.co, 32, (uint64_t)i, 0) == MB_STATUS_OK);
    expect_timeout(&p.co, 32, 0, "poll, no slot");
    expect_timeout(&p.co, 32, 200 * MS, "no slot");

    /* A release 100 ms later wakes the sleeping producer. */
    slow_arg a = {.wk = &p.wk, .delay_ns = 100 * MS};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, slow_consumer, &a) == 0);
    int64_t t0 = shm_test_now_ns();
    CHECK_EQ(send_n(&p.co, 32, 4, 2000 * MS), MB_STATUS_OK);
    int64_t dt = shm_test_now_ns() - t0;
    pthread_join(th, NULL);
    CHECK_EQ(a.st, MB_STATUS_OK);
    CHECK_MSG(dt >= 90 * MS && dt < 1000 * MS, "woken after %lld ns", (long long)dt);
    pair_close(&p);

    /* Out of payload bytes with slots to spare: 3 x 2.5 KiB in 8 KiB. */
    pair_open(&p, &opt);
    for (int i = 0; i < 3; i++)
        REQUIRE(send_n(&p.co, 2560, (uint64_t)i, 0) == MB_STATUS_OK);
    expect_timeout(&p.co, 2560, 150 * MS, "no payload space");
    /* After one release the wrap-around message fits (padded to offset 0). */
    const void *in;
    size_t len;
    REQUIRE(mb_transport_recv(&p.wk, 0, &in, &len) == MB_STATUS_OK);
    CHECK(len == 2560 && shm_test_check(in, len, 0));
    mb_transport_recv_release(&p.wk);
    CHECK_EQ(send_n(&p.co, 2560, 3, 0), MB_STATUS_OK);
    for (uint64_t i = 1; i < 4; i++) {
        REQUIRE(mb_transport_recv(&p.wk, 0, &in, &len) == MB_STATUS_OK);
        CHECK(len == 2560 && shm_test_check(in, len, i));
        mb_transport_recv_release(&p.wk);
    }
    /* recv: poll and a bounded wait on an empty ring. */
    t0 = shm_test_now_ns();
    CHECK_EQ(mb_transport_recv(&p.wk, 0, &in, &len), MB_STATUS_TIMEOUT);
    CHECK_EQ(mb_transport_recv(&p.wk, 80 * MS, &in, &len), MB_STATUS_TIMEOUT);
    dt = shm_test_now_ns() - t0;
    CHECK_MSG(dt >= 80 * MS && dt < 580 * MS, "recv timeout took %lld ns", (long long)dt);
    pair_close(&p);
}

/* Defaults: 64 MiB each way, so a 4096 x 2048 x f32 prefill chunk fits. */
static void test_default_capacity(void)
{
    pair p;
    pair_open(&p, NULL);
    CHECK_EQ(mb_transport_max_message_bytes(&p.co), MB_SHM_DEFAULT_RING_BYTES);
    size_t chunk = 4096u * 2048u * 4u;
    CHECK_EQ(send_n(&p.co, chunk + 64, 9, 0), MB_STATUS_OK);
    const void *in;
    size_t len;
    CHECK_EQ(mb_transport_recv(&p.wk, 0, &in, &len), MB_STATUS_OK);
    CHECK(len == chunk + 64 && shm_test_check(in, len, 9));
    mb_transport_recv_release(&p.wk);
    pair_close(&p);
}

static void test_hang_up(void)
{
    mb_shm_options opt = {.n_slots = 4, .request_bytes = 8192, .reply_bytes = 8192};
    pair p;
    pair_open(&p, &opt);
    REQUIRE(send_n(&p.wk, 40, 1, 0) == MB_STATUS_OK);
    mb_transport_destroy(&p.wk);
    const void *in;
    size_t len;
    void *buf;
    /* The last message still arrives, then the hang-up is reported. */
    CHECK_EQ(mb_transport_recv(&p.co, -1, &in, &len), MB_STATUS_OK);
    CHECK(len == 40 && shm_test_check(in, len, 1));
    mb_transport_recv_release(&p.co);
    CHECK_EQ(mb_transport_recv(&p.co, -1, &in, &len), MB_STATUS_PEER_DEAD);
    CHECK_EQ(mb_transport_send_reserve(&p.co, 64, -1, &buf), MB_STATUS_PEER_DEAD);
    mb_transport_destroy(&p.co);
    close(p.fd);
}

static void test_misuse(void)
{
    mb_transport t;
    int fd;
    mb_shm_options bad[] = {
        {.n_slots = 3},          {.n_slots = 1},
        {.n_slots = 1u << 17},   {.request_bytes = 4097},
        {.reply_bytes = 1024},   {.request_bytes = 1ull << 41},
        {.spin_ns = 2000000000}, {.spin_ns = (int64_t)MB_SHM_MAX_SPIN_NS + 1},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK_EQ(mb_shm_transport_create(&bad[i], &t, &fd), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_shm_transport_create(NULL, NULL, &fd), MB_STATUS_INVALID_ARG);

    mb_shm_options opt = {.n_slots = 4, .request_bytes = 8192, .reply_bytes = 8192, .spin_ns = -1};
    pair p;
    pair_open(&p, &opt);
    void *buf;
    const void *in;
    size_t len;
    CHECK_EQ(mb_transport_send_reserve(&p.co, 31, 0, &buf), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_transport_send_commit(&p.co, 64), MB_STATUS_INVALID_ARG);
    REQUIRE(mb_transport_send_reserve(&p.co, 64, 0, &buf) == MB_STATUS_OK);
    CHECK_EQ(mb_transport_send_reserve(&p.co, 64, 0, &buf), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_transport_send_commit(&p.co, 72), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_transport_send_commit(&p.co, 16), MB_STATUS_INVALID_ARG);
    shm_test_fill(buf, 48, 5);
    CHECK_EQ(mb_transport_send_commit(&p.co, 48), MB_STATUS_OK); /* shorter than reserved */
    REQUIRE(mb_transport_recv(&p.wk, 0, &in, &len) == MB_STATUS_OK);
    CHECK(len == 48 && shm_test_check(in, len, 5));
    CHECK_EQ(mb_transport_recv(&p.wk, 0, &in, &len), MB_STATUS_INVALID_ARG);
    mb_transport_recv_release(&p.wk);
    mb_transport_recv_release(&p.wk); /* nothing held: no-op */
    CHECK_EQ(mb_shm_transport_set_peer_pid(&p.wk, getpid()), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_shm_transport_set_peer_pid(&p.co, 0), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_shm_transport_set_peer_pid(&p.co, getpid()), MB_STATUS_OK);
    CHECK_EQ(mb_shm_transport_spin_ns(&p.co), 0); /* never spin */
    CHECK_EQ(mb_shm_transport_spin_ns(&p.wk), 0);
    CHECK_EQ(mb_shm_transport_spin_ns(NULL), -1);
    pair_close(&p);
}

/* The worker reads the spin the coordinator set: the default, the ceiling. */
static void test_spin_seen(void)
{
    const int64_t asked[] = {0, (int64_t)MB_SHM_MAX_SPIN_NS};
    const int64_t seen[] = {MB_SHM_DEFAULT_SPIN_NS, (int64_t)MB_SHM_MAX_SPIN_NS};
    for (int i = 0; i < 2; i++) {
        mb_shm_options opt = {
            .n_slots = 4, .request_bytes = 8192, .reply_bytes = 8192, .spin_ns = asked[i]};
        pair p;
        pair_open(&p, &opt);
        CHECK_EQ(mb_shm_transport_spin_ns(&p.co), seen[i]);
        CHECK_EQ(mb_shm_transport_spin_ns(&p.wk), seen[i]);
        pair_close(&p);
    }
}

int main(void)
{
    test_too_big();
    test_slow_consumer();
    test_default_capacity();
    test_hang_up();
    test_misuse();
    test_spin_seen();
    return mb_test_finish("test_shm_full");
}
