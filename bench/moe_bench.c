/* Shared helpers of the MoE benchmarks (see moe_bench.h). */
#include "bench/moe_bench.h"

#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

void mb_bench_find_worker(void)
{
    if (getenv("MB_WORKER_BIN")) return;
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash) return;
    *slash = '\0';
    char path[4200];
    snprintf(path, sizeof path, "%s/../bin/moe-worker", self);
    if (access(path, X_OK) == 0) setenv("MB_WORKER_BIN", path, 0);
}

int mb_bench_parse_u32(const char *text, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-' || v < lo || v > hi) return -1;
    *out = (uint32_t)v;
    return 0;
}

int mb_bench_parse_list(const char *text, const char *const *names, int n, int *on)
{
    char buf[256];
    if (strlen(text) >= sizeof buf) return -1;
    snprintf(buf, sizeof buf, "%s", text);
    for (int i = 0; i < n; i++) on[i] = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int found = 0;
        for (int i = 0; i < n; i++)
            if (strcmp(tok, names[i]) == 0) on[i] = found = 1;
        if (!found) return -1;
    }
    return 0;
}

int mb_bench_emit_json(const char *text, const char *path, const char *prog)
{
    printf("%s\n", text);
    fflush(stdout);
    if (!path) return 0;
    FILE *f = fopen(path, "w");
    int bad = !f || fprintf(f, "%s\n", text) < 0;
    if (f && fclose(f) != 0) bad = 1;
    if (bad) fprintf(stderr, "%s: cannot write %s: %s\n", prog, path, strerror(errno));
    return bad ? -1 : 0;
}

uint64_t mb_bench_mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    fclose(f);
    return (uint64_t)kb * 1024;
}

void mb_bench_cpu_range(int *first, int *last)
{
    cpu_set_t set;
    *first = *last = 0;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return;
    int seen = 0;
    for (int i = 0; i < CPU_SETSIZE; i++) {
        if (!CPU_ISSET(i, &set)) continue;
        if (!seen) *first = i;
        *last = i;
        seen = 1;
    }
}

int mb_bench_pin_process(pid_t pid, int cpu)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d) return -1;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        if (sched_setaffinity((pid_t)atoi(e->d_name), sizeof set, &set) != 0) rc = -1;
    }
    closedir(d);
    return rc;
}

pid_t mb_bench_hog_start(int cpu)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0) return pid < 0 ? 0 : pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
    for (volatile uint64_t i = 0;; i++) {
    }
}

void mb_bench_hog_stop(pid_t pid)
{
    if (pid <= 0) return;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}
