/* Helpers for integration tests: start a moe-worker listening on ZeroMQ and
 * learn its endpoint from the line it prints. */
#ifndef MB_TESTS_INTEGRATION_WORKER_UTIL_H
#define MB_TESTS_INTEGRATION_WORKER_UTIL_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

/* Starts `moe-worker --backend cpu --listen LISTEN --threads N EXTRA...`
 * (extra: NULL-terminated, may be NULL) and waits for its "listening on"
 * line; writes the endpoint. Returns the pid, or -1. */
static inline pid_t mb_test_start_worker_args(const char *listen, int threads, const char *const *extra,
                                              char *endpoint, size_t cap)
{
    const char *bin = getenv("MB_WORKER_BIN");
    if (!bin) return -1;
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        char t[16];
        snprintf(t, sizeof t, "%d", threads);
        const char *argv[32] = {bin, "--backend", "cpu", "--listen", listen, "--threads", t};
        int argc = 7;
        for (int i = 0; extra && extra[i] && argc < 31; i++)
            argv[argc++] = extra[i];
        argv[argc] = NULL;
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    char line[512];
    int ok = 0;
    if (f && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "listening on ");
        if (p) {
            p += strlen("listening on ");
            size_t n = strcspn(p, "\r\n");
            if (n < cap) {
                memcpy(endpoint, p, n);
                endpoint[n] = '\0';
                ok = 1;
            }
        }
    }
    if (f) fclose(f);
    else close(fds[0]);
    if (!ok) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return pid;
}

/* Starts `moe-worker --backend cpu --listen LISTEN --threads N`; see
 * mb_test_start_worker_args. */
static inline pid_t mb_test_start_worker(const char *listen, int threads, char *endpoint, size_t cap)
{
    return mb_test_start_worker_args(listen, threads, NULL, endpoint, cap);
}

/* Stops a worker as a user would (SIGTERM), killing it if it lingers. */
static inline void mb_test_stop_worker(pid_t pid)
{
    if (pid <= 0) return;
    kill(pid, SIGTERM);
    for (int i = 0; i < 2000; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid) return;
        usleep(1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

#endif
