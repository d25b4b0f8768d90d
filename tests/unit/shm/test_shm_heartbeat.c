/* The worker's heartbeat: a worker busy with one request for far longer
 * than the peer timeout is not declared lost (its heartbeat thread keeps
 * beating), and a frozen one (SIGSTOP) is, as PEER_DEAD, within the timeout
 * plus one sleep slice, and stays so. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/shm.h"
#include "tests/unit/shm/shm_test_util.h"

static const mb_shm_options opt = {.n_slots = 4, .request_bytes = 65536, .reply_bytes = 65536};

/* Worker: each request is answered after sleeping its first byte * 100 ms. */
static void child_slow_echo(int fd)
{
    mb_transport t;
    if (mb_shm_transport_attach(fd, &t) != MB_STATUS_OK) _exit(10);
    for (;;) {
        const void *in;
        size_t len;
        if (mb_transport_recv(&t, -1, &in, &len) != MB_STATUS_OK) _exit(0);
        unsigned tenths = ((const unsigned char *)in)[0];
        mb_transport_recv_release(&t);
        struct timespec ts = {tenths / 10, (long)(tenths % 10) * 100000000L};
        nanosleep(&ts, NULL);
        void *out;
        if (mb_transport_send_reserve(&t, 64, -1, &out) != MB_STATUS_OK) _exit(11);
        shm_test_fill(out, 64, 1);
        mb_transport_send_commit(&t, 64);
    }
}

static void send_one(mb_transport *co, unsigned tenths)
{
    void *buf;
    REQUIRE(mb_transport_send_reserve(co, 64, -1, &buf) == MB_STATUS_OK);
    shm_test_fill(buf, 64, 0);
    ((unsigned char *)buf)[0] = (unsigned char)tenths;
    REQUIRE(mb_transport_send_commit(co, 64) == MB_STATUS_OK);
}

int main(void)
{
    mb_transport co;
    int fd = -1;
    REQUIRE(mb_shm_transport_create(&opt, &co, &fd) == MB_STATUS_OK);
    fflush(stdout);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) child_slow_echo(fd);
    close(fd);
    REQUIRE(mb_shm_transport_set_peer_pid(&co, pid) == MB_STATUS_OK);
    REQUIRE(mb_shm_transport_set_peer_timeout(&co, 300000000LL) == MB_STATUS_OK);

    /* Busy for 1.5 s, five times the timeout: the reply comes. */
    send_one(&co, 15);
    const void *in;
    size_t len;
    int64_t t0 = shm_test_now_ns();
    mb_status st = mb_transport_recv(&co, -1, &in, &len);
    double busy_s = (double)(shm_test_now_ns() - t0) / 1e9;
    CHECK_EQ(st, MB_STATUS_OK);
    if (st == MB_STATUS_OK) mb_transport_recv_release(&co);
    printf("test_shm_heartbeat: a request busy for %.2f s (timeout 0.3 s) was answered\n", busy_s);

    /* Frozen: noticed within the timeout plus a sleep slice. */
    send_one(&co, 1);
    kill(pid, SIGSTOP);
    t0 = shm_test_now_ns();
    st = mb_transport_recv(&co, -1, &in, &len);
    double frozen_s = (double)(shm_test_now_ns() - t0) / 1e9;
    CHECK_EQ(st, MB_STATUS_PEER_DEAD);
    CHECK_MSG(frozen_s < 0.3 + 0.2, "frozen worker noticed after %.3f s", frozen_s);
    printf("test_shm_heartbeat: a frozen worker was declared lost after %.3f s (timeout 0.3 s)\n", frozen_s);
    /* For good, even once it runs again: its late reply may still be read,
     * then every wait says PEER_DEAD. */
    kill(pid, SIGCONT);
    usleep(200000);
    st = mb_transport_recv(&co, 0, &in, &len);
    if (st == MB_STATUS_OK) {
        mb_transport_recv_release(&co);
        st = mb_transport_recv(&co, 0, &in, &len);
    }
    CHECK_EQ(st, MB_STATUS_PEER_DEAD);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    mb_transport_destroy(&co);
    return mb_test_finish("test_shm_heartbeat");
}
