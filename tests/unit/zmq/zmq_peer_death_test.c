/* A lost peer becomes PEER_DEAD within about a second, never a hang: a
 * forked worker killed with SIGKILL mid-request, a worker frozen with
 * SIGSTOP (only the ZMTP heartbeat can tell), and a coordinator killed while
 * the worker waits for its next request. Children are forked before this
 * process makes any libzmq context. */
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/testutil.h"
#include "tests/unit/zmq/zmq_testutil.h"

#define SEC 1000000000ll

/* Reads a NUL-terminated endpoint the other process writes into the pipe. */
static void read_endpoint(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t r = read(fd, buf + n, 1);
        REQUIRE(r == 1);
        if (buf[n] == '\0') return;
        n++;
    }
    REQUIRE(0);
}

static void write_endpoint(int fd, const char *ep)
{
    size_t len = strlen(ep) + 1;
    if (write(fd, ep, len) != (ssize_t)len) _exit(3);
}

/* Child: a worker that echoes until told to hang. Never returns. */
static void child_worker(int ep_fd)
{
    mb_transport l = {0};
    if (mb_zmq_transport_listen("tcp://127.0.0.1:*", NULL, &l) != MB_STATUS_OK) _exit(2);
    char ep[256];
    if (mb_zmq_transport_endpoint(&l, ep, sizeof ep) != MB_STATUS_OK) _exit(2);
    write_endpoint(ep_fd, ep);
    zt_echo echo = {.t = &l, .idle_timeout_ns = 20 * SEC};
    zt_echo_run(&echo);
    mb_transport_destroy(&l);
    _exit(0);
}

static pid_t spawn_worker(char *ep, size_t cap)
{
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        child_worker(fds[1]);
    }
    close(fds[1]);
    read_endpoint(fds[0], ep, cap);
    close(fds[0]);
    return pid;
}

static void echo_roundtrips(mb_transport *c, int n)
{
    for (int i = 0; i < n; i++) {
        REQUIRE(zt_send(c, 4096, (uint64_t)i, 5 * SEC) == MB_STATUS_OK);
        const void *msg = NULL;
        size_t bytes = 0;
        REQUIRE(mb_transport_recv(c, 5 * SEC, &msg, &bytes) == MB_STATUS_OK);
        CHECK(zt_check(msg, bytes, (uint64_t)i));
        mb_transport_recv_release(c);
    }
}

/* Returns how long recv took to give up, in seconds; checks it said PEER_DEAD. */
static double recv_until_dead(mb_transport *c, int64_t since_ns)
{
    const void *msg = NULL;
    size_t bytes = 0;
    mb_status st = mb_transport_recv(c, 10 * SEC, &msg, &bytes);
    double s = (double)(zt_now_ns() - since_ns) / 1e9;
    CHECK_MSG(st == MB_STATUS_PEER_DEAD, "recv said %s after %.3f s", mb_status_name(st), s);
    return s;
}

static void worker_killed_mid_request(void)
{
    char ep[256];
    pid_t pid = spawn_worker(ep, sizeof ep);
    mb_transport c = {0};
    REQUIRE(mb_zmq_transport_connect(ep, NULL, &c) == MB_STATUS_OK);
    echo_roundtrips(&c, 3);
    /* The worker takes the request and never answers; kill it meanwhile. */
    REQUIRE(zt_send(&c, 65536, ZT_SEQ_HANG, 5 * SEC) == MB_STATUS_OK);
    usleep(100000);
    int64_t t0 = zt_now_ns();
    kill(pid, SIGKILL);
    double s = recv_until_dead(&c, t0);
    printf("worker SIGKILLed mid-request: PEER_DEAD after %.3f s\n", s);
    CHECK_MSG(s < 1.5, "took %.3f s", s);
    /* Dead is final: sending fails at once instead of queueing. */
    void *buf = NULL;
    CHECK_EQ(mb_transport_send_reserve(&c, 64, 5 * SEC, &buf), MB_STATUS_PEER_DEAD);
    CHECK_EQ(recv_until_dead(&c, zt_now_ns()) < 0.1, 1);
    waitpid(pid, NULL, 0);
    mb_transport_destroy(&c);
}

static void worker_frozen(void)
{
    char ep[256];
    pid_t pid = spawn_worker(ep, sizeof ep);
    mb_transport c = {0};
    REQUIRE(mb_zmq_transport_connect(ep, NULL, &c) == MB_STATUS_OK);
    echo_roundtrips(&c, 3);
    /* A stopped process keeps its connection open: only the heartbeat
     * (250 ms interval, 1000 ms timeout by default) notices. */
    kill(pid, SIGSTOP);
    int64_t t0 = zt_now_ns();
    REQUIRE(zt_send(&c, 4096, 99, 5 * SEC) == MB_STATUS_OK);
    double s = recv_until_dead(&c, t0);
    printf("worker SIGSTOPped: PEER_DEAD after %.3f s (heartbeat timeout 1 s)\n", s);
    CHECK_MSG(s > 0.5 && s < 2.0, "took %.3f s", s);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    mb_transport_destroy(&c);
}

/* The coordinator dies while the worker waits in recv. */
static void coordinator_killed(void)
{
    int fds[2], ack[2];
    REQUIRE(pipe(fds) == 0 && pipe(ack) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(fds[1]);
        close(ack[0]);
        char ep[256];
        read_endpoint(fds[0], ep, sizeof ep);
        mb_transport c = {0};
        if (mb_zmq_transport_connect(ep, NULL, &c) != MB_STATUS_OK) _exit(2);
        if (zt_send(&c, 64, 1, 5 * SEC) != MB_STATUS_OK) _exit(2);
        const void *msg = NULL;
        size_t bytes = 0;
        if (mb_transport_recv(&c, 5 * SEC, &msg, &bytes) != MB_STATUS_OK) _exit(2);
        if (write(ack[1], "k", 1) != 1) _exit(2);
        for (;;)
            pause();
    }
    close(fds[0]);
    close(ack[1]);
    mb_transport l = {0};
    REQUIRE(mb_zmq_transport_listen("tcp://127.0.0.1:*", NULL, &l) == MB_STATUS_OK);
    char ep[256];
    REQUIRE(mb_zmq_transport_endpoint(&l, ep, sizeof ep) == MB_STATUS_OK);
    write_endpoint(fds[1], ep);
    close(fds[1]);

    const void *msg = NULL;
    size_t bytes = 0;
    REQUIRE(mb_transport_recv(&l, 5 * SEC, &msg, &bytes) == MB_STATUS_OK);
    CHECK(zt_check(msg, bytes, 1));
    void *out = NULL;
    REQUIRE(mb_transport_send_reserve(&l, bytes, SEC, &out) == MB_STATUS_OK);
    memcpy(out, msg, bytes);
    mb_transport_recv_release(&l);
    REQUIRE(mb_transport_send_commit(&l, bytes) == MB_STATUS_OK);
    char k;
    REQUIRE(read(ack[0], &k, 1) == 1);
    close(ack[0]);

    int64_t t0 = zt_now_ns();
    kill(pid, SIGKILL);
    double s = recv_until_dead(&l, t0);
    printf("coordinator SIGKILLed: worker's recv PEER_DEAD after %.3f s\n", s);
    CHECK_MSG(s < 1.5, "took %.3f s", s);
    waitpid(pid, NULL, 0);
    mb_transport_destroy(&l);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    worker_killed_mid_request();
    worker_frozen();
    coordinator_killed();
    return mb_test_finish("zmq_peer_death_test");
}
