/* A peer killed with SIGKILL is reported as PEER_DEAD within a second, never
 * waited on: the coordinator blocked in recv while its worker dies mid-
 * request, the coordinator blocked in reserve on a full ring, the worker
 * blocked in recv while its coordinator dies, and the pidfd-less fallback
 * on an unreaped zombie. */
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/doorbell.h"
#include "shm/shm.h"
#include "tests/unit/shm/shm_test_util.h"

static const mb_shm_options opt = {.n_slots = 4, .request_bytes = 65536, .reply_bytes = 65536};

/* Worker that takes one request, then dies with SIGKILL without replying. */
static void child_die_mid_request(int fd, int64_t delay_ns)
{
    mb_transport t;
    if (mb_shm_transport_attach(fd, &t) != MB_STATUS_OK) _exit(10);
    const void *in;
    size_t len;
    if (mb_transport_recv(&t, -1, &in, &len) != MB_STATUS_OK) _exit(11);
    struct timespec ts = {0, (long)delay_ns};
    nanosleep(&ts, NULL);
    raise(SIGKILL);
    _exit(12);
}

static void test_worker_killed_during_recv(void)
{
    mb_transport co;
    int fd = -1;
    REQUIRE(mb_shm_transport_create(&opt, &co, &fd) == MB_STATUS_OK);
    fflush(stdout);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) child_die_mid_request(fd, 100000000);
    close(fd);
    REQUIRE(mb_shm_transport_set_peer_pid(&co, pid) == MB_STATUS_OK);
    void *buf;
    REQUIRE(mb_transport_send_reserve(&co, 64, -1, &buf) == MB_STATUS_OK);
    shm_test_fill(buf, 64, 0);
    REQUIRE(mb_transport_send_commit(&co, 64) == MB_STATUS_OK);

    /* The child sleeps 100 ms, then dies: we are asleep in the futex by then.
     * It stays an unreaped zombie until after the check. */
    const void *in;
    size_t len;
    int64_t t0 = shm_test_now_ns();
    mb_status st = mb_transport_recv(&co, -1, &in, &len);
    int64_t dt = shm_test_now_ns() - t0;
    CHECK_EQ(st, MB_STATUS_PEER_DEAD);
    CHECK_MSG(dt < 1000000000, "took %lld ns", (long long)dt);
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    printf("test_shm_peer_death: recv saw the worker's SIGKILL %.1f ms after starting to wait "
           "(death at ~100 ms)\n",
           dt / 1e6);
    mb_transport_destroy(&co);
}

/* Coordinator blocked in reserve (ring full, worker never reads) when the
 * worker is killed. */
static void test_worker_killed_during_reserve(void)
{
    mb_transport co;
    int fd = -1;
    REQUIRE(mb_shm_transport_create(&opt, &co, &fd) == MB_STATUS_OK);
    fflush(stdout);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        mb_transport t;
        if (mb_shm_transport_attach(fd, &t) != MB_STATUS_OK) _exit(10);
        pause();
        _exit(0);
    }
    close(fd);
    REQUIRE(mb_shm_transport_set_peer_pid(&co, pid) == MB_STATUS_OK);
    void *buf;
    for (int i = 0; i < 4; i++) {
        REQUIRE(mb_transport_send_reserve(&co, 64, 0, &buf) == MB_STATUS_OK);
        shm_test_fill(buf, 64, (uint64_t)i);
        REQUIRE(mb_transport_send_commit(&co, 64) == MB_STATUS_OK);
    }
    CHECK_EQ(mb_transport_send_reserve(&co, 64, 0, &buf), MB_STATUS_TIMEOUT);
    REQUIRE(kill(pid, SIGKILL) == 0);
    int64_t t0 = shm_test_now_ns();
    mb_status st = mb_transport_send_reserve(&co, 64, -1, &buf);
    int64_t dt = shm_test_now_ns() - t0;
    CHECK_EQ(st, MB_STATUS_PEER_DEAD);
    CHECK_MSG(dt < 1000000000, "took %lld ns", (long long)dt);
    waitpid(pid, NULL, 0);
    mb_transport_destroy(&co);
}

/* The worker's side: its coordinator dies while it waits for a request. The
 * coordinator is a child of ours and the worker a grandchild, reparented to
 * us (a subreaper) when the coordinator dies; its exit code is the verdict. */
static void test_coordinator_killed(void)
{
    REQUIRE(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    int report[2];
    REQUIRE(pipe(report) == 0);
    fflush(stdout);
    pid_t coord = fork();
    REQUIRE(coord >= 0);
    if (coord == 0) {
        close(report[0]);
        mb_transport co;
        int fd = -1;
        if (mb_shm_transport_create(&opt, &co, &fd) != MB_STATUS_OK) _exit(20);
        int ready[2];
        if (pipe(ready) != 0) _exit(21);
        pid_t wk = fork();
        if (wk < 0) _exit(22);
        if (wk == 0) {
            close(ready[0]);
            mb_transport t;
            if (mb_shm_transport_attach(fd, &t) != MB_STATUS_OK) _exit(30);
            char c = 'r';
            if (write(ready[1], &c, 1) != 1) _exit(31);
            const void *in;
            size_t len;
            int64_t t0 = shm_test_now_ns();
            mb_status st = mb_transport_recv(&t, -1, &in, &len);
            int64_t dt = shm_test_now_ns() - t0;
            if (st != MB_STATUS_PEER_DEAD) _exit(32);
            _exit(dt < 1000000000 ? 0 : 33); /* the coordinator dies ~50 ms in */
        }
        close(ready[1]);
        char c;
        if (read(ready[0], &c, 1) != 1) _exit(23);
        if (write(report[1], &wk, sizeof(wk)) != (ssize_t)sizeof(wk)) _exit(24);
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
        raise(SIGKILL);
        _exit(25);
    }
    close(report[1]);
    pid_t wk = -1;
    REQUIRE(read(report[0], &wk, sizeof(wk)) == (ssize_t)sizeof(wk));
    close(report[0]);
    int status = 0;
    REQUIRE(waitpid(coord, &status, 0) == coord);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    REQUIRE(waitpid(wk, &status, 0) == wk);
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker status %d", status);
    prctl(PR_SET_CHILD_SUBREAPER, 0);
}

/* The fallback used without pidfds (kill(0) succeeds on zombies). */
static void test_fallback_on_zombie(void)
{
    fflush(stdout);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) _exit(0);
    mb_shm_peer alive = {.pid = getpid(), .pidfd = -1};
    CHECK_EQ(mb_shm_peer_check(&alive), MB_STATUS_OK);
    mb_shm_peer zombie = {.pid = pid, .pidfd = -1};
    int64_t t0 = shm_test_now_ns();
    mb_status st = MB_STATUS_OK;
    while (st == MB_STATUS_OK && shm_test_now_ns() - t0 < 1000000000)
        st = mb_shm_peer_check(&zombie);
    CHECK_EQ(st, MB_STATUS_PEER_DEAD);
    REQUIRE(waitpid(pid, NULL, 0) == pid);
    CHECK_EQ(mb_shm_peer_check(&zombie), MB_STATUS_PEER_DEAD); /* reaped: ESRCH */
    mb_shm_peer w;
    mb_shm_peer_init(&w);
    CHECK_EQ(mb_shm_peer_watch(&w, pid), MB_STATUS_PEER_DEAD);
    CHECK_EQ(mb_shm_peer_watch(&w, 0), MB_STATUS_INVALID_ARG);
    mb_shm_peer_fini(&w);
}

int main(void)
{
    test_worker_killed_during_recv();
    test_worker_killed_during_reserve();
    test_coordinator_killed();
    test_fallback_on_zombie();
    return mb_test_finish("test_shm_peer_death");
}
