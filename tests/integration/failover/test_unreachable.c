/* An unreachable worker at start fails fast and says why: a refused port,
 * a host that does not resolve, a missing or stale ipc socket file within
 * 1 s; a port that accepts but never speaks ZeroMQ within --connect-timeout. */
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "broker/link.h"
#include "tests/testutil.h"

/* A TCP port on 127.0.0.1 that listens (listening) or was just closed. */
static int tcp_port(int listening, int *fd_out)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    REQUIRE(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    REQUIRE(getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
    if (listening) REQUIRE(listen(fd, 4) == 0);
    if (listening) *fd_out = fd;
    else close(fd);
    return ntohs(sa.sin_port);
}

static void expect(const char *endpoint, int64_t connect_timeout_ns, const char *words, double max_s)
{
    mb_link_spec spec = {.endpoint = endpoint, .weight = 1, .connect_timeout_ns = connect_timeout_ns};
    mb_link l;
    char err[512] = "";
    uint64_t t0 = mb_now_ns();
    mb_status st = mb_link_connect(&spec, 0, 20000000000LL, &l, err, sizeof err);
    double s = (double)(mb_now_ns() - t0) / 1e9;
    printf("%-40s %.3f s  %s: %s\n", endpoint, s, mb_status_name(st), err);
    CHECK(st != MB_STATUS_OK);
    if (st == MB_STATUS_OK) mb_link_close(&l);
    CHECK_MSG(strstr(err, words) != NULL, "%s: message lacks '%s': %s", endpoint, words, err);
    CHECK_MSG(strstr(err, endpoint) != NULL, "message does not name %s: %s", endpoint, err);
    CHECK_MSG(s < max_s, "%s: took %.3f s", endpoint, s);
}

int main(void)
{
    char ep[300];
    int fd = -1;
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", tcp_port(0, &fd));
    expect(ep, 0, "connection refused", 1.0);
    expect("tcp://no-such-host.invalid:5555", 0, "cannot resolve host", 1.0);
    char path[96];
    snprintf(path, sizeof path, "/tmp/mb-unreachable-%d.sock", (int)getpid());
    unlink(path);
    snprintf(ep, sizeof ep, "ipc://%s", path);
    expect(ep, 0, "no socket file", 1.0);
    /* A socket file nobody listens on any more. */
    int us = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    REQUIRE(us >= 0 && bind(us, (struct sockaddr *)&sa, sizeof sa) == 0);
    close(us);
    expect(ep, 0, "connection refused", 1.0);
    unlink(path);
    /* Something listens but never answers the handshake. */
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", tcp_port(1, &fd));
    expect(ep, 300000000LL, "no moe-worker completed the handshake", 1.5);
    close(fd);
    return mb_test_finish("test_unreachable");
}
