/* Watches the peer process: a pidfd (readable once the process exited, even
 * before it is reaped) where the kernel has pidfd_open, else kill(pid, 0)
 * plus the /proc state letter, since kill() succeeds on a zombie. */
#include "shm/doorbell.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* the same number on every architecture but alpha */
#endif

void mb_shm_peer_init(mb_shm_peer *peer)
{
    peer->pid = 0;
    peer->pidfd = -1;
}

/* 1 if /proc says pid is a zombie or dead; 0 if alive or unknown. */
static int mb_shm_proc_dead(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* "pid (comm) S ...": comm may hold spaces and parentheses; take the last ')'. */
    char *p = NULL;
    for (size_t i = 0; i < n; i++)
        if (buf[i] == ')') p = &buf[i];
    return p && p + 2 < buf + n && (p[2] == 'Z' || p[2] == 'X');
}

mb_status mb_shm_peer_watch(mb_shm_peer *peer, pid_t pid)
{
    if (pid <= 0) return MB_STATUS_INVALID_ARG;
    /* pidfds are always close-on-exec. */
    long fd = syscall(SYS_pidfd_open, pid, 0);
    if (fd < 0) {
        if (errno == ESRCH) return MB_STATUS_PEER_DEAD;
        if (errno != ENOSYS) return MB_STATUS_IO;
        if (kill(pid, 0) != 0 && errno == ESRCH) return MB_STATUS_PEER_DEAD;
    }
    if (peer->pidfd >= 0) close(peer->pidfd);
    peer->pid = pid;
    peer->pidfd = (int)fd;
    return MB_STATUS_OK;
}

mb_status mb_shm_peer_check(const mb_shm_peer *peer)
{
    if (peer->pid <= 0) return MB_STATUS_OK;
    if (peer->pidfd >= 0) {
        struct pollfd pfd = {.fd = peer->pidfd, .events = POLLIN};
        int n = poll(&pfd, 1, 0);
        return (n > 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR))) ? MB_STATUS_PEER_DEAD
                                                                       : MB_STATUS_OK;
    }
    if (kill(peer->pid, 0) != 0 && errno == ESRCH) return MB_STATUS_PEER_DEAD;
    return mb_shm_proc_dead(peer->pid) ? MB_STATUS_PEER_DEAD : MB_STATUS_OK;
}

void mb_shm_peer_fini(mb_shm_peer *peer)
{
    if (peer->pidfd >= 0) close(peer->pidfd);
    mb_shm_peer_init(peer);
}
