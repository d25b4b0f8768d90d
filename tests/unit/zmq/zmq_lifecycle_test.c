/* ZeroMQ transport lifetime and argument checks: the ipc socket file is
 * removed on destroy, a stale one is replaced, a regular file or a live
 * listener's socket at the path is refused; no descriptor outlives destroy;
 * sends to a worker that never comes time out; bad arguments are refused. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "tests/testutil.h"
#include "tests/unit/zmq/zmq_testutil.h"

#define SEC 1000000000ll

static char dir[256];

static int path_exists(const char *path)
{
    struct stat sb;
    return lstat(path, &sb) == 0;
}

static void one_roundtrip(mb_transport *l, mb_transport *c, size_t bytes)
{
    const void *msg = NULL;
    size_t n = 0;
    CHECK_EQ(zt_send(c, bytes, 7, 5 * SEC), MB_STATUS_OK);
    CHECK_EQ(mb_transport_recv(l, 5 * SEC, &msg, &n), MB_STATUS_OK);
    CHECK(n == bytes && zt_check(msg, n, 7));
    mb_transport_recv_release(l);
    CHECK_EQ(zt_send(l, bytes, 8, 5 * SEC), MB_STATUS_OK);
    CHECK_EQ(mb_transport_recv(c, 5 * SEC, &msg, &n), MB_STATUS_OK);
    CHECK(n == bytes && zt_check(msg, n, 8));
    mb_transport_recv_release(c);
}

static void ipc_file_and_fds(void)
{
    char path[320], ep[400];
    snprintf(path, sizeof path, "%s/w.sock", dir);
    snprintf(ep, sizeof ep, "ipc://%s", path);
    int fds_before = zt_count_fds();
    for (int i = 0; i < 3; i++) {
        mb_transport l = {0}, c = {0};
        REQUIRE(mb_zmq_transport_listen(ep, NULL, &l) == MB_STATUS_OK);
        CHECK(path_exists(path));
        REQUIRE(mb_zmq_transport_connect(ep, NULL, &c) == MB_STATUS_OK);
        one_roundtrip(&l, &c, 64);
        one_roundtrip(&l, &c, 1 << 20); /* a zero-copy frame in flight */
        /* A message still queued at destroy is dropped and freed. */
        CHECK_EQ(zt_send(&c, 1 << 20, 9, 5 * SEC), MB_STATUS_OK);
        mb_transport_destroy(&c);
        mb_transport_destroy(&l);
        CHECK_MSG(!path_exists(path), "socket file left after destroy");
    }
    CHECK_EQ(zt_count_fds(), fds_before);

    /* An abstract-namespace name (no file), tcp, and a listener nobody ever
     * talked to. */
    mb_transport l = {0}, c = {0};
    snprintf(ep, sizeof ep, "ipc://@mb-zmq-lifecycle-%d", (int)getpid());
    REQUIRE(mb_zmq_transport_listen(ep, NULL, &l) == MB_STATUS_OK);
    REQUIRE(mb_zmq_transport_connect(ep, NULL, &c) == MB_STATUS_OK);
    one_roundtrip(&l, &c, 64);
    mb_transport_destroy(&c);
    mb_transport_destroy(&l);
    REQUIRE(mb_zmq_transport_listen("tcp://127.0.0.1:*", NULL, &l) == MB_STATUS_OK);
    mb_transport_destroy(&l);
    CHECK_EQ(zt_count_fds(), fds_before);
}

static void ipc_path_rules(void)
{
    char path[320], ep[400];
    snprintf(path, sizeof path, "%s/stale.sock", dir);
    snprintf(ep, sizeof ep, "ipc://%s", path);

    /* A socket file nobody listens on (a crashed worker's) is replaced. */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, path, strlen(path) + 1);
    REQUIRE(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    close(fd);
    REQUIRE(path_exists(path));
    mb_transport l = {0}, l2 = {0}, c = {0};
    CHECK_EQ(mb_zmq_transport_listen(ep, NULL, &l), MB_STATUS_OK);

    /* A live listener's socket is not taken over, and it keeps working. */
    CHECK_EQ(mb_zmq_transport_listen(ep, NULL, &l2), MB_STATUS_IO);
    REQUIRE(mb_zmq_transport_connect(ep, NULL, &c) == MB_STATUS_OK);
    one_roundtrip(&l, &c, 256);
    mb_transport_destroy(&c);
    mb_transport_destroy(&l);
    CHECK(!path_exists(path));

    /* A file that is not a socket is never deleted. */
    snprintf(path, sizeof path, "%s/precious.txt", dir);
    snprintf(ep, sizeof ep, "ipc://%s", path);
    fd = open(path, O_CREAT | O_WRONLY, 0600);
    REQUIRE(fd >= 0 && write(fd, "x", 1) == 1);
    close(fd);
    CHECK_EQ(mb_zmq_transport_listen(ep, NULL, &l), MB_STATUS_INVALID_ARG);
    CHECK(path_exists(path));
    unlink(path);

    /* A path too long for a unix socket. */
    char longep[600];
    snprintf(longep, sizeof longep, "ipc://%s/%0150d", dir, 0);
    CHECK_EQ(mb_zmq_transport_listen(longep, NULL, &l), MB_STATUS_INVALID_ARG);

    /* A tcp port in use. */
    REQUIRE(mb_zmq_transport_listen("tcp://127.0.0.1:*", NULL, &l) == MB_STATUS_OK);
    char tcp[256];
    REQUIRE(mb_zmq_transport_endpoint(&l, tcp, sizeof tcp) == MB_STATUS_OK);
    CHECK_EQ(mb_zmq_transport_listen(tcp, NULL, &l2), MB_STATUS_IO);
    mb_transport_destroy(&l);
}

static void arguments(void)
{
    mb_transport t = {0};
    mb_zmq_options bad_hb = {.heartbeat_ms = -1};
    mb_zmq_options bad_max = {.max_message_bytes = 16};
    CHECK_EQ(mb_zmq_transport_listen(NULL, NULL, &t), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_zmq_transport_listen("udp://1.2.3.4:5", NULL, &t), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_zmq_transport_listen("tcp://", NULL, &t), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_zmq_transport_listen("tcp://not an address", NULL, &t), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_zmq_transport_connect("tcp://127.0.0.1", NULL, &t), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_zmq_transport_connect("tcp://127.0.0.1:1", &bad_hb, &t), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_zmq_transport_connect("tcp://127.0.0.1:1", &bad_max, &t), MB_STATUS_INVALID_ARG);
    CHECK(t.ops == NULL && t.impl == NULL);

    char buf[64];
    mb_transport not_zmq = {0};
    CHECK_EQ(mb_zmq_transport_endpoint(&not_zmq, buf, sizeof buf), MB_STATUS_INVALID_ARG);

    mb_zmq_options small = {.max_message_bytes = 4096};
    REQUIRE(mb_zmq_transport_connect("tcp://127.0.0.1:1", &small, &t) == MB_STATUS_OK);
    void *p = NULL;
    CHECK_EQ(mb_transport_send_reserve(&t, 16, 0, &p), MB_STATUS_INVALID_ARG); /* below a header */
    CHECK_EQ(mb_transport_send_reserve(&t, 4097, 0, &p), MB_STATUS_FULL);
    CHECK_EQ(mb_transport_send_commit(&t, 64), MB_STATUS_INVALID_ARG); /* nothing reserved */
    CHECK_EQ(mb_transport_send_reserve(&t, 64, 0, &p), MB_STATUS_OK);
    CHECK(((uintptr_t)p & 63) == 0);
    CHECK_EQ(mb_transport_send_reserve(&t, 64, 0, &p), MB_STATUS_INVALID_ARG); /* one at a time */
    CHECK_EQ(mb_transport_send_commit(&t, 128), MB_STATUS_INVALID_ARG); /* more than reserved */
    const void *m = NULL;
    size_t n = 0;
    CHECK_EQ(mb_transport_recv(&t, 0, &m, &n), MB_STATUS_TIMEOUT);
    mb_transport_destroy(&t);

    /* A worker that listens but never received anything has nobody to
     * answer. */
    REQUIRE(mb_zmq_transport_listen("tcp://127.0.0.1:*", NULL, &t) == MB_STATUS_OK);
    CHECK_EQ(mb_transport_send_reserve(&t, 64, 0, &p), MB_STATUS_PEER_DEAD);
    mb_transport_destroy(&t);
}

/* Nobody listens: commit waits for a connection only as long as allowed. */
static void worker_never_comes(void)
{
    char ep[400];
    snprintf(ep, sizeof ep, "ipc://%s/nobody.sock", dir);
    mb_zmq_options opt = {.send_timeout_ms = 200};
    mb_transport c = {0};
    REQUIRE(mb_zmq_transport_connect(ep, &opt, &c) == MB_STATUS_OK);
    int64_t t0 = zt_now_ns();
    CHECK_EQ(zt_send(&c, 64, 1, 100000000ll), MB_STATUS_TIMEOUT); /* the reserve's 100 ms */
    double s1 = (double)(zt_now_ns() - t0) / 1e9;
    t0 = zt_now_ns();
    CHECK_EQ(zt_send(&c, 1 << 20, 2, -1), MB_STATUS_TIMEOUT); /* send_timeout_ms */
    double s2 = (double)(zt_now_ns() - t0) / 1e9;
    CHECK_MSG(s1 >= 0.09 && s1 < 1.0, "%.3f s", s1);
    CHECK_MSG(s2 >= 0.19 && s2 < 1.0, "%.3f s", s2);
    const void *m = NULL;
    size_t n = 0;
    t0 = zt_now_ns();
    CHECK_EQ(mb_transport_recv(&c, 120000000ll, &m, &n), MB_STATUS_TIMEOUT);
    double s3 = (double)(zt_now_ns() - t0) / 1e9;
    CHECK_MSG(s3 >= 0.11 && s3 < 1.0, "%.3f s", s3);
    printf("no worker: commit TIMEOUT after %.3f s and %.3f s, recv TIMEOUT after %.3f s\n", s1, s2,
           s3);

    /* The worker shows up late: the next send goes through. */
    mb_transport l = {0};
    REQUIRE(mb_zmq_transport_listen(ep, NULL, &l) == MB_STATUS_OK);
    one_roundtrip(&l, &c, 64);
    mb_transport_destroy(&l);
    mb_transport_destroy(&c);
}

/* A worker that stops reading: once both queues and the socket buffers are
 * full, commit gives up after the reservation's timeout instead of blocking. */
static void worker_stops_reading(void)
{
    mb_transport l = {0}, c = {0};
    REQUIRE(mb_zmq_transport_listen("tcp://127.0.0.1:*", NULL, &l) == MB_STATUS_OK);
    char ep[256];
    REQUIRE(mb_zmq_transport_endpoint(&l, ep, sizeof ep) == MB_STATUS_OK);
    REQUIRE(mb_zmq_transport_connect(ep, NULL, &c) == MB_STATUS_OK);
    one_roundtrip(&l, &c, 64);
    mb_status st = MB_STATUS_OK;
    int sent = 0;
    double s = 0;
    while (sent < 4000) {
        int64_t t0 = zt_now_ns();
        st = zt_send(&c, 65536, (uint64_t)sent, 100000000ll);
        s = (double)(zt_now_ns() - t0) / 1e9;
        if (st != MB_STATUS_OK) break;
        sent++;
    }
    printf("worker not reading: commit %s after %d messages queued, in %.3f s\n",
           mb_status_name(st), sent, s);
    CHECK_EQ(st, MB_STATUS_TIMEOUT);
    CHECK_MSG(s >= 0.09 && s < 1.0, "%.3f s", s);
    mb_transport_destroy(&c);
    mb_transport_destroy(&l);
}

int main(void)
{
    zt_mkdtemp(dir, sizeof dir);
    ipc_file_and_fds();
    ipc_path_rules();
    arguments();
    worker_never_comes();
    worker_stops_reading();
    CHECK_MSG(rmdir(dir) == 0, "scratch dir not empty: %s", strerror(errno));
    return mb_test_finish("zmq_lifecycle_test");
}
