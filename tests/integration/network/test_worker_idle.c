/* A moe-worker on tcp://127.0.0.1 whose coordinator stops talking: one that
 * opens a session, loads 48 MiB of experts and goes silent is cut off after
 * --idle-timeout (set here through MB_WORKER_IDLE_TIMEOUT), its experts
 * freed and the memory given back, and the next coordinator is served; one
 * stopped with SIGSTOP is cut off by the lost heartbeats alone; a session
 * that keeps talking is never idle; invalid timeouts are refused. */
#include <inttypes.h>
#include <stdint.h>

#include "tests/integration/network/net_util.h"

/* Sanitizers slow every message: a longer timeout keeps the busy parts busy. */
#define IDLE_S (MB_TEST_SANITIZED ? 3.0 : 1.0)
#define BIG_D 1024 /* a 1024 x 1024 f32 expert: 12 MiB */
#define N_BIG 4

static char ep[256];
static unsigned char msg[16384] __attribute__((aligned(64)));

/* The worker's resident memory in bytes, from /proc; 0 when unreadable. */
static uint64_t rss_bytes(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    uint64_t kib = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %" SCNu64, &kib) == 1) break;
    fclose(f);
    return kib * 1024;
}

/* LOAD_EXPERT messages of BIG_D x BIG_D f32 experts into layer 0, slots
 * 0..N_BIG-1, encoded before any session opens: under a sanitizer encoding
 * 12 MiB takes long enough to count as silence. */
static void *big_msg[N_BIG];
static size_t big_len[N_BIG];

static void encode_big(void)
{
    static float w[BIG_D * BIG_D];
    const size_t mat = sizeof w, cap = 3 * mat + 4096;
    for (size_t i = 0; i < BIG_D * BIG_D; i++)
        w[i] = 1.0f / BIG_D;
    for (uint32_t slot = 0; slot < N_BIG; slot++) {
        big_msg[slot] = aligned_alloc(64, cap);
        REQUIRE(big_msg[slot]);
        mb_proto_load_expert le;
        memset(&le, 0, sizeof le);
        le.slot = slot;
        le.d_model = le.d_ff = BIG_D;
        le.source = MB_WEIGHTS_INLINE;
        for (int i = 0; i < 3; i++) {
            le.wdtype[i] = MB_DTYPE_F32;
            le.bytes[i] = mat;
            le.data[i] = w;
        }
        REQUIRE(mb_proto_encode_load_expert(big_msg[slot], cap, 100 + slot, &le, &big_len[slot]) == MB_STATUS_OK);
    }
}

/* Probes until a coordinator is served or limit_s passes; returns the
 * seconds it took, or -1. */
static double served_within(double limit_s)
{
    const uint64_t t0 = mb_now_ns();
    char err[512] = "";
    while ((double)(mb_now_ns() - t0) / 1e9 < limit_s) {
        if (nt_probe(ep, NULL, NULL, err, sizeof err) == MB_STATUS_OK) return (double)(mb_now_ns() - t0) / 1e9;
        usleep(50000);
    }
    fprintf(stderr, "last probe: %s\n", err);
    return -1;
}

/* Silent but alive: the idle timeout ends the session. */
static void test_silent(pid_t worker)
{
    const uint64_t rss0 = rss_bytes(worker);
    mb_transport t;
    nt_open_session(ep, &t);
    int op = 0;
    for (uint32_t i = 0; i < N_BIG; i++) CHECK_EQ(nt_call(&t, big_msg[i], big_len[i], 10000000000LL, &op), MB_STATUS_OK);
    const uint64_t rss_loaded = rss_bytes(worker);
    const uint64_t t0 = mb_now_ns();
    /* Another coordinator is refused while the session lives... */
    mb_transport other;
    nt_client(ep, NULL, &other);
    CHECK_EQ(nt_call(&other, msg, nt_hello_msg(msg, sizeof msg, 1), 2000000000LL, &op), MB_STATUS_BUSY);
    mb_transport_destroy(&other);
    /* ...and served once the silent one has been cut off. */
    double took = served_within(10.0);
    double since_silent = (double)(mb_now_ns() - t0) / 1e9;
    printf("silent session: the next coordinator served %.2f s after its last message (idle timeout %.1f s)\n",
           since_silent, IDLE_S);
    CHECK_MSG(took >= 0, "the next coordinator was not served within 10 s");
    CHECK_MSG(since_silent >= IDLE_S * 0.9, "the session ended after %.2f s, before its idle timeout", since_silent);
    /* The silent coordinator finds its session gone. */
    mb_status st = nt_call(&t, msg, nt_empty_msg(msg, MB_OP_PING, 5), 2000000000LL, &op);
    CHECK_MSG(st == MB_STATUS_PEER_DEAD || st == MB_STATUS_TIMEOUT, "the idle session still answers: %s",
              mb_status_str(st));
    mb_transport_destroy(&t);
    /* Its experts are gone, and so is their memory. */
    mb_transport n;
    nt_open_session(ep, &n);
    st = nt_call(&n, msg, nt_req_msg(msg, sizeof msg, 6, 1), 2000000000LL, &op);
    CHECK_MSG(st == MB_STATUS_NOT_LOADED, "the idle session's expert answered %s", mb_status_str(st));
    CHECK_EQ(nt_call(&n, msg, nt_empty_msg(msg, MB_OP_SHUTDOWN, 7), 2000000000LL, &op), MB_STATUS_OK);
    mb_transport_destroy(&n);
    const uint64_t rss_after = rss_bytes(worker);
    const uint64_t loaded = (uint64_t)N_BIG * 3 * BIG_D * BIG_D * sizeof(float);
    printf("worker RSS: %.1f MiB before, %.1f MiB with %.0f MiB of experts, %.1f MiB after\n", rss0 / 1048576.0,
           rss_loaded / 1048576.0, loaded / 1048576.0, rss_after / 1048576.0);
    /* Sanitizers keep shadow and quarantined memory: RSS says little there. */
    if (MB_TEST_SANITIZED) return;
    CHECK(rss_loaded >= rss0 + loaded / 2);
    /* What may stay: allocator slack, well under the experts' bytes. */
    CHECK_MSG(rss_after <= rss0 + loaded / 2, "%.1f MiB still held after the session",
              (rss_after - rss0) / 1048576.0);
}

/* Frozen: SIGSTOP stops its heartbeats too, which end the session well
 * before the idle timeout would. */
static void test_stopped(void)
{
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        close(fds[0]);
        mb_transport t;
        nt_open_session(ep, &t);
        int op = 0;
        nt_call(&t, msg, nt_load_msg(msg, sizeof msg, 2, 0, 0, NT_D, 1.0f), 2000000000LL, &op);
        if (write(fds[1], "x", 1) != 1) _exit(1);
        for (;;) pause();
    }
    close(fds[1]);
    char c;
    REQUIRE(read(fds[0], &c, 1) == 1);
    close(fds[0]);
    kill(child, SIGSTOP);
    double took = served_within(10.0);
    printf("stopped coordinator: the next one served after %.2f s\n", took);
    CHECK_MSG(took >= 0 && took < 5.0, "a stopped coordinator held the worker (%.2f s)", took);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
}

/* A session that keeps talking is never idle, however long it lasts. */
static void test_talking(void)
{
    mb_transport t;
    nt_open_session(ep, &t);
    int op = 0;
    for (int i = 0; i < 6; i++) { /* 2.4 idle timeouts in all */
        usleep((useconds_t)(IDLE_S * 0.4e6));
        mb_status st = nt_call(&t, msg, nt_empty_msg(msg, MB_OP_PING, 10 + (uint64_t)i), 2000000000LL, &op);
        CHECK_MSG(st == MB_STATUS_OK && op == MB_OP_PONG, "ping %d after %.1f s: %s", i, (i + 1) * IDLE_S * 0.4,
                  mb_status_str(st));
    }
    CHECK_EQ(nt_call(&t, msg, nt_empty_msg(msg, MB_OP_SHUTDOWN, 30), 2000000000LL, &op), MB_STATUS_OK);
    mb_transport_destroy(&t);
}

/* moe-worker's exit code for a command line (and environment). */
static int worker_rc(const char *env, const char *args)
{
    char cmd[1024];
    /* timeout: a value wrongly accepted would leave the worker listening. */
    snprintf(cmd, sizeof cmd, "%s timeout 10 '%s' --backend cpu --listen tcp://127.0.0.1:0 %s >/dev/null 2>&1 </dev/null",
             env, getenv("MB_WORKER_BIN"), args);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (!getenv("MB_WORKER_BIN")) MB_TEST_SKIP("MB_WORKER_BIN not set");
    CHECK_EQ(worker_rc("", "--idle-timeout -1"), 2);
    CHECK_EQ(worker_rc("", "--idle-timeout 1x"), 2);
    CHECK_EQ(worker_rc("MB_WORKER_IDLE_TIMEOUT=soon", ""), 2);

    encode_big();
    char idle_text[16];
    snprintf(idle_text, sizeof idle_text, "%g", IDLE_S);
    setenv("MB_WORKER_IDLE_TIMEOUT", idle_text, 1);
    pid_t worker = mb_test_start_worker("tcp://127.0.0.1:*", 1, ep, sizeof ep);
    unsetenv("MB_WORKER_IDLE_TIMEOUT");
    REQUIRE(worker > 0);
    test_silent(worker);
    test_talking();
    mb_test_stop_worker(worker);

    /* A long idle timeout: only the heartbeats can free the worker. */
    const char *long_idle[] = {"--idle-timeout", "600", NULL};
    worker = mb_test_start_worker_args("tcp://127.0.0.1:*", 1, long_idle, ep, sizeof ep);
    REQUIRE(worker > 0);
    test_stopped();
    CHECK(nt_alive(worker));
    mb_test_stop_worker(worker);
    for (uint32_t i = 0; i < N_BIG; i++) free(big_msg[i]);
    return mb_test_finish("test_worker_idle");
}
