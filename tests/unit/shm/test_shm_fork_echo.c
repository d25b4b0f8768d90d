/* A real worker process (fork, then attach in the child) echoing messages:
 * round trips with content checks, several in flight, and round-trip
 * latency for 64 B, 8 KiB and 1 MiB printed for information (not asserted).
 * Ends with a clean hang-up, which the coordinator sees as PEER_DEAD. */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/shm.h"
#include "tests/unit/shm/shm_test_util.h"

#define QUIT_SEQ UINT64_MAX

static int child_echo(int fd)
{
    mb_transport t;
    if (mb_shm_transport_attach(fd, &t) != MB_STATUS_OK) return 10;
    close(fd);
    int rc = 0;
    for (;;) {
        const void *in;
        size_t len;
        void *out;
        if (mb_transport_recv(&t, -1, &in, &len) != MB_STATUS_OK) {
            rc = 11;
            break;
        }
        uint64_t seq;
        memcpy(&seq, in, 8);
        if (seq == QUIT_SEQ) break;
        if (mb_transport_send_reserve(&t, len, -1, &out) != MB_STATUS_OK) {
            rc = 12;
            break;
        }
        memcpy(out, in, len);
        mb_transport_recv_release(&t);
        if (mb_transport_send_commit(&t, len) != MB_STATUS_OK) {
            rc = 13;
            break;
        }
    }
    mb_transport_destroy(&t);
    return rc;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* n round trips of len bytes; prints median, p99 and mean in microseconds. */
static void measure(mb_transport *co, size_t len, unsigned n, uint64_t *seq)
{
    int64_t *rt = calloc(n, sizeof(*rt));
    uint8_t *src = malloc(len);
    REQUIRE(rt && src);
    unsigned bad = 0;
    for (unsigned i = 0; i < n; i++) {
        shm_test_fill(src, len, *seq);
        int64_t t0 = shm_test_now_ns();
        void *buf;
        const void *in;
        size_t got;
        REQUIRE(mb_transport_send_reserve(co, len, -1, &buf) == MB_STATUS_OK);
        memcpy(buf, src, len);
        REQUIRE(mb_transport_send_commit(co, len) == MB_STATUS_OK);
        REQUIRE(mb_transport_recv(co, 5000000000ll, &in, &got) == MB_STATUS_OK);
        rt[i] = shm_test_now_ns() - t0;
        if (got != len || !shm_test_check(in, got, *seq)) bad++;
        mb_transport_recv_release(co);
        (*seq)++;
    }
    CHECK_EQ(bad, 0);
    double mean = 0;
    for (unsigned i = 0; i < n; i++)
        mean += (double)rt[i];
    mean /= n;
    qsort(rt, n, sizeof(*rt), cmp_i64);
    printf(
        "shm round trip %8zu B: median %8.2f us  p99 %8.2f us  mean %8.2f us  (%u trips, copy in "
        "and echo copy included)\n",
        len, rt[n / 2] / 1e3, rt[(size_t)n * 99 / 100] / 1e3, mean / 1e3, n);
    free(rt);
    free(src);
}

int main(void)
{
    mb_shm_options opt = {.n_slots = 16, .request_bytes = 4u << 20, .reply_bytes = 4u << 20};
    mb_transport co;
    int fd = -1;
    REQUIRE(mb_shm_transport_create(&opt, &co, &fd) == MB_STATUS_OK);
    fflush(stdout);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) _exit(child_echo(fd));
    close(fd);
    REQUIRE(mb_shm_transport_set_peer_pid(&co, pid) == MB_STATUS_OK);

    uint64_t seq = 0;
    /* Several in flight: 12 requests, then 12 replies in order. */
    unsigned long long rng = 7;
    size_t lens[12];
    for (int round = 0; round < 50; round++) {
        uint64_t first = seq;
        for (int i = 0; i < 12; i++) {
            void *buf;
            lens[i] = 32 + (size_t)(mb_test_rand_u64(&rng) % 100000);
            REQUIRE(mb_transport_send_reserve(&co, lens[i], 5000000000ll, &buf) == MB_STATUS_OK);
            shm_test_fill(buf, lens[i], seq++);
            REQUIRE(mb_transport_send_commit(&co, lens[i]) == MB_STATUS_OK);
        }
        for (int i = 0; i < 12; i++) {
            const void *in;
            size_t len;
            REQUIRE(mb_transport_recv(&co, 5000000000ll, &in, &len) == MB_STATUS_OK);
            CHECK(len == lens[i] && shm_test_check(in, len, first + (uint64_t)i));
            mb_transport_recv_release(&co);
        }
    }

    measure(&co, 64, 20000, &seq);
    measure(&co, 8192, 5000, &seq);
    measure(&co, 1u << 20, 300, &seq);

    void *buf;
    REQUIRE(mb_transport_send_reserve(&co, 32, -1, &buf) == MB_STATUS_OK);
    shm_test_fill(buf, 32, QUIT_SEQ);
    REQUIRE(mb_transport_send_commit(&co, 32) == MB_STATUS_OK);
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    const void *in;
    size_t len;
    CHECK_EQ(mb_transport_recv(&co, -1, &in, &len), MB_STATUS_PEER_DEAD);
    mb_transport_destroy(&co);
    return mb_test_finish("test_shm_fork_echo");
}
