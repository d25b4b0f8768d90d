/* Two threads of one process, one per endpoint (the worker attaches from the
 * fd): many messages of random sizes with several in flight, small rings so
 * that slots and payload wrap around many times, every byte checked. */
#include <pthread.h>
#include <unistd.h>

#include "shm/shm.h"
#include "tests/unit/shm/shm_test_util.h"

#define N_MESSAGES 20000u
#define RING_BYTES (64u << 10)

typedef struct {
    int fd;
    mb_status st;
    uint64_t echoed;
} worker_arg;

/* Echoes every message until a 32-byte message with seq UINT64_MAX. */
static void *worker(void *p)
{
    worker_arg *a = p;
    mb_transport t;
    a->st = mb_shm_transport_attach(a->fd, &t);
    if (a->st != MB_STATUS_OK) return NULL;
    for (;;) {
        const void *in;
        size_t len;
        void *out;
        mb_status st = mb_transport_recv(&t, -1, &in, &len);
        if (st != MB_STATUS_OK) {
            a->st = st;
            break;
        }
        uint64_t seq;
        memcpy(&seq, in, 8);
        if (seq == UINT64_MAX) {
            mb_transport_recv_release(&t);
            break;
        }
        st = mb_transport_send_reserve(&t, len, -1, &out);
        if (st == MB_STATUS_OK) {
            memcpy(out, in, len);
            st = mb_transport_send_commit(&t, len);
        }
        mb_transport_recv_release(&t);
        if (st != MB_STATUS_OK) {
            a->st = st;
            break;
        }
        a->echoed++;
    }
    mb_transport_destroy(&t);
    return NULL;
}

static size_t random_size(unsigned long long *rng)
{
    uint64_t r = mb_test_rand_u64(rng);
    switch (r % 8) {
    case 0:
        return RING_BYTES; /* the whole ring: needs it empty */
    case 1:
    case 2:
        return 32 + (size_t)(r >> 8) % (RING_BYTES / 2); /* forces padding at the end */
    default:
        return 32 + (size_t)(r >> 8) % 2048; /* small, unaligned lengths too */
    }
}

int main(void)
{
    mb_shm_options opt = {.n_slots = 8, .request_bytes = RING_BYTES, .reply_bytes = RING_BYTES};
    mb_transport co;
    int fd = -1;
    REQUIRE(mb_shm_transport_create(&opt, &co, &fd) == MB_STATUS_OK);
    CHECK_EQ(mb_transport_max_message_bytes(&co), RING_BYTES);

    worker_arg arg = {.fd = fd, .st = MB_STATUS_OK};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, worker, &arg) == 0);

    static size_t sizes[N_MESSAGES];
    unsigned long long rng = 42;
    for (unsigned i = 0; i < N_MESSAGES; i++)
        sizes[i] = random_size(&rng);
    uint64_t sent = 0, received = 0, max_in_flight = 0, bad = 0;
    while (received < N_MESSAGES) {
        /* Send while there is room (poll), else collect a reply. */
        if (sent < N_MESSAGES) {
            size_t len = sizes[sent];
            void *buf;
            /* Nothing in flight: only a wait for the worker's release can help. */
            int64_t wait_ns = sent == received ? 5000000000ll : 0;
            mb_status st = mb_transport_send_reserve(&co, len, wait_ns, &buf);
            if (st == MB_STATUS_OK) {
                CHECK_EQ((uintptr_t)buf % 8, 0);
                shm_test_fill(buf, len, sent);
                REQUIRE(mb_transport_send_commit(&co, len) == MB_STATUS_OK);
                sent++;
                if (sent - received > max_in_flight) max_in_flight = sent - received;
                continue;
            }
            REQUIRE(st == MB_STATUS_TIMEOUT);
        }
        const void *in;
        size_t len;
        mb_status st = mb_transport_recv(&co, 5000000000ll, &in, &len);
        REQUIRE(st == MB_STATUS_OK);
        CHECK_EQ((uintptr_t)in % 8, 0);
        if (len != sizes[received] || !shm_test_check(in, len, received)) bad++;
        mb_transport_recv_release(&co);
        received++;
    }
    void *buf;
    REQUIRE(mb_transport_send_reserve(&co, 32, -1, &buf) == MB_STATUS_OK);
    memset(buf, 0xff, 32);
    REQUIRE(mb_transport_send_commit(&co, 32) == MB_STATUS_OK);
    pthread_join(th, NULL);

    CHECK_EQ(bad, 0);
    CHECK_EQ(arg.st, MB_STATUS_OK);
    CHECK_EQ(arg.echoed, N_MESSAGES);
    CHECK(max_in_flight >= 4);
    printf("test_shm_threads: %u messages echoed, up to %llu in flight\n", N_MESSAGES,
           (unsigned long long)max_in_flight);
    /* The worker hung up: the coordinator is told, not left waiting. */
    const void *in;
    size_t len;
    CHECK_EQ(mb_transport_recv(&co, -1, &in, &len), MB_STATUS_PEER_DEAD);
    mb_transport_destroy(&co);
    close(fd);
    return mb_test_finish("test_shm_threads");
}
