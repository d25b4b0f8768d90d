/* Stopping with a signal leaves nothing behind. moe-broker given SIGTERM
 * (spawned ZeroMQ workers) or SIGINT (shared memory) in the middle of a run
 * exits 143 / 130 within a second, writes the statistics it was asked for,
 * and leaves no worker running and no socket file: an id run, a text run
 * (--prompt) while it generates, and a chat waiting for its next message.
 * moe-worker given SIGTERM removes its ipc socket file. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/integration/worker_util.h"

/* Stopping is one step, closing and the statistics; sanitizer builds (and
 * their leak check at exit) are many times slower. */
#if defined(__SANITIZE_ADDRESS__)
#define MAX_STOP_S 30.0
#else
#define MAX_STOP_S 3.0
#endif
#include "tests/testutil.h"
#include "tests/integration/text_fixture.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int count_files(const char *dir)
{
    int n = 0;
    DIR *d = opendir(dir);
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* The children of pid (its workers), from /proc. */
static int children_of(pid_t pid, pid_t *out, int cap)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pid, (int)pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t len = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (len < 0) return -1;
    buf[len] = '\0';
    int n = 0;
    for (char *p = buf, *end; n < cap; p = end) {
        long v = strtol(p, &end, 10);
        if (end == p) break;
        out[n++] = (pid_t)v;
    }
    return n;
}

/* 1 while pid exists and is not a zombie. */
static int alive(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t len = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (len <= 0) return 0;
    buf[len] = '\0';
    const char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

/* Which run a signal stops. */
typedef enum { RUN_IDS, RUN_PROMPT, RUN_CHAT } run_form;

static char text_model[256]; /* the text fixture, made once */

/* Starts moe-broker on a test checkpoint with a decode far longer than the
 * test (ids, or text: greedy "Hello" runs thousands of tokens without an
 * end of sequence), or a chat whose stdin stays open and silent; returns
 * once its experts are loaded (it says so on stderr). */
static pid_t start_broker(const char *tmpdir, const char *transport, const char *stats_json, run_form form)
{
    int in[2];
    REQUIRE(pipe(in) == 0);
    const char *bin = getenv("MB_BROKER_BIN");
    int fds[2];
    REQUIRE(bin && pipe(fds) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], STDERR_FILENO);
        int null = open("/dev/null", O_WRONLY);
        dup2(null, STDOUT_FILENO);
        dup2(in[0], STDIN_FILENO);
        close(fds[0]);
        close(fds[1]);
        close(in[1]);
        setenv("TMPDIR", tmpdir, 1);
        char model[512];
        snprintf(model, sizeof model, "%s/qwen3moe-a", getenv("MB_TEST_DATA"));
        const char *cmd = form == RUN_CHAT ? "chat" : "run";
        const char *m = form == RUN_IDS ? model : text_model;
        const char *input = form == RUN_PROMPT ? "--prompt" : "--seed";
        const char *input_value = form == RUN_PROMPT ? "Hello" : "1";
        const char *gen = form == RUN_CHAT ? "--seed" : "--gen";
        execl(bin, bin, cmd, "--model", m, "--transport", transport, gen, "60000", "--max-ctx", "60100",
              "--temperature", "0", input, input_value, "--threads", "1", "--worker", "cpu,threads=1", "--worker",
              "cpu,threads=1", "--stats-json", stats_json, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    close(in[0]); /* the write end stays open (and leaks) so a chat waits on stdin */
    FILE *f = fdopen(fds[0], "r");
    char line[512];
    int loaded = 0;
    while (f && !loaded && fgets(line, sizeof line, f)) loaded = strstr(line, "experts loaded") != NULL;
    /* Let it decode a few steps; keep reading stderr so it never blocks. */
    int flags = fcntl(fds[0], F_GETFL);
    fcntl(fds[0], F_SETFL, flags | O_NONBLOCK);
    usleep(300000);
    CHECK_MSG(loaded, "moe-broker did not load its experts");
    fclose(f);
    return pid;
}

static void stop_broker(int sig, const char *transport, int want_rc, run_form form)
{
    char tmpdir[] = "/tmp/mb-signals-XXXXXX";
    REQUIRE(mkdtemp(tmpdir));
    char stats[300];
    snprintf(stats, sizeof stats, "%s.json", tmpdir);
    unlink(stats);
    pid_t pid = start_broker(tmpdir, transport, stats, form);
    if (!strcmp(transport, "zmq")) CHECK_EQ(count_files(tmpdir), 2); /* the two workers' sockets */
    pid_t kids[8];
    int n_kids = children_of(pid, kids, 8);
    CHECK_EQ(n_kids, 2);
    double t0 = now_s();
    kill(pid, sig);
    int status = 0;
    pid_t r;
    while ((r = waitpid(pid, &status, WNOHANG)) == 0 && now_s() - t0 < 10) usleep(2000);
    double s = now_s() - t0;
    if (r == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    int rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    static const char *const forms[] = {"id run", "text run", "chat"};
    printf("%s, %s, %s workers: exit %d after %.3f s\n", forms[form], sig == SIGTERM ? "SIGTERM" : "SIGINT",
           transport, rc, s);
    CHECK_EQ(rc, want_rc);
    CHECK_MSG(s < MAX_STOP_S, "took %.3f s to stop", s);
    CHECK_EQ(count_files(tmpdir), 0);
    struct stat sb;
    CHECK_MSG(stat(stats, &sb) == 0 && sb.st_size > 0, "statistics %s not written", stats);
    FILE *f = fopen(stats, "r");
    char buf[256] = "";
    if (f) {
        CHECK(fread(buf, 1, sizeof buf - 1, f) > 0);
        fclose(f);
    }
    CHECK(strstr(buf, "backends") != NULL);
    /* Its workers went with it. */
    usleep(100000);
    for (int i = 0; i < n_kids; i++) CHECK_MSG(!alive(kids[i]), "worker %d still running", (int)kids[i]);
    unlink(stats);
    rmdir(tmpdir);
}

static void stop_worker(void)
{
    char path[96], listen[128], endpoint[256];
    snprintf(path, sizeof path, "/tmp/mb-signals-worker-%d.sock", (int)getpid());
    snprintf(listen, sizeof listen, "ipc://%s", path);
    pid_t w = mb_test_start_worker(listen, 1, endpoint, sizeof endpoint);
    REQUIRE(w > 0);
    struct stat sb;
    CHECK(stat(path, &sb) == 0);
    kill(w, SIGTERM);
    int status = 0;
    waitpid(w, &status, 0);
    printf("moe-worker SIGTERM: exit %d, socket file %s\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1,
           stat(path, &sb) == 0 ? "left behind" : "removed");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK_MSG(stat(path, &sb) != 0, "socket file %s left behind", path);
    unlink(path);
}

int main(void)
{
    if (!getenv("MB_BROKER_BIN") || !getenv("MB_WORKER_BIN") || !getenv("MB_TEST_DATA"))
        MB_TEST_SKIP("MB_BROKER_BIN / MB_WORKER_BIN / MB_TEST_DATA not set");
    stop_worker();
    stop_broker(SIGTERM, "zmq", 143, RUN_IDS);
    stop_broker(SIGINT, "shm", 130, RUN_IDS);
    snprintf(text_model, sizeof text_model, "/tmp/mb-signals-text-%d", (int)getpid());
    mb_test_text_model(getenv("MB_TEST_DATA"), text_model);
    stop_broker(SIGINT, "shm", 130, RUN_PROMPT);
    stop_broker(SIGTERM, "zmq", 143, RUN_PROMPT);
    stop_broker(SIGINT, "shm", 130, RUN_CHAT);
    stop_broker(SIGTERM, "zmq", 143, RUN_CHAT);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", text_model);
    CHECK(system(cmd) == 0);
    return mb_test_finish("test_signals");
}
