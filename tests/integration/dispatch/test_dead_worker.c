/* A worker killed with SIGKILL in the middle of a request: the dispatcher
 * reports an error naming that worker within a second, nothing hangs, and
 * no socket file is left behind. Over shm and over ZeroMQ ipc; and a worker
 * frozen (SIGSTOP) while the dispatcher polls: the request's timeout. */
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "broker/dispatch.h"
#include "broker/link.h"
#include "broker/placement.h"
#include "broker/session.h"
#include "broker/synthetic.h"
#include "tests/testutil.h"

/* Enough tokens that a call lasts far longer than the 5 ms before the
 * kill; under TSan the kernels are slow enough with a quarter of them. */
#define N_TOK (MB_TEST_TSAN ? 128 : 512)

typedef struct {
    pid_t pid;
    int delay_ms, sig;
} killer_arg;

static void *killer(void *p)
{
    killer_arg *a = p;
    struct timespec ts = {0, a->delay_ms * 1000000L};
    nanosleep(&ts, NULL);
    kill(a->pid, a->sig);
    return NULL;
}

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

int main(void)
{
    mb_model_config cfg;
    mb_synthetic_default_config(&cfg);
    cfg.n_layers = 1;
    cfg.d_model = 512;
    cfg.n_experts = 8;
    cfg.top_k = 2;
    cfg.d_ff_expert = 1024;
    cfg.vocab = 64;
    char err[256];
    mb_model *model = NULL;
    REQUIRE(mb_synthetic_create(&cfg, 3, 0, &model, err, sizeof err) == MB_STATUS_OK);
    static int32_t ids[N_TOK * 2];
    static float gate[N_TOK * 2], x[N_TOK * 512], out[N_TOK * 512];
    for (int t = 0; t < N_TOK; t++) {
        ids[2 * t] = t % 8;
        ids[2 * t + 1] = (t + 3) % 8;
        gate[2 * t] = gate[2 * t + 1] = 0.5f;
    }
    for (int i = 0; i < N_TOK * 512; i++) x[i] = (float)(i % 17) / 17.0f;

    /* Pass 2: shm again, the dispatcher polling both busy links for up to
     * a second (as a coordinator on a GPU does) instead of blocking on one:
     * the death must still be seen at once, not when the spin ends. Pass 3:
     * the same poll, worker 1 frozen instead: its request's 300 ms timeout
     * must end the call while the dispatcher still polls. */
    const char *kinds[] = {"shm", "zmq ipc", "shm, polling", "shm, polling, frozen"};
    for (int pass = 0; pass < 4; pass++) {
        const int kind = pass == 1;
        int fds_before = count_fds();
        mb_link links[2];
        memset(links, 0, sizeof links);
        mb_link_spec spec = {.backend = "cpu", .device = -1, .threads = 1, .weight = 1, .max_slots = 16};
        for (int i = 0; i < 2; i++)
            REQUIRE(mb_link_spawn(&spec, kind ? MB_LINK_SPAWNED_ZMQ : MB_LINK_SPAWNED_SHM, i, 10000000000LL,
                                  &links[i], err, sizeof err) == MB_STATUS_OK);
        char sock_path[256];
        snprintf(sock_path, sizeof sock_path, "%s", links[1].ipc_path);
        mb_placement pl;
        REQUIRE(mb_placement_plan(&cfg, links, 2, -1, 0, 0, &pl, err, sizeof err) == MB_STATUS_OK);
        REQUIRE(mb_experts_load(model, links, &pl, 0, err, sizeof err) == MB_STATUS_OK);
        mb_dispatch_config dc = {.links = links,
                                 .n_links = 2,
                                 .placement = &pl,
                                 .mode = MB_IPC_MODE_STREAM,
                                 .batch_capacity = 1024,
                                 .stream_slice = 4,
                                 .payload = MB_DTYPE_F32,
                                 .d_model = cfg.d_model,
                                 .top_k = 2,
                                 .max_tokens = N_TOK,
                                 .timeout_ns = pass == 3 ? 300000000 : 0,
                                 .poll_spin_ns = pass >= 2 ? 1000000000 : 0};
        mb_dispatch *d = NULL;
        REQUIRE(mb_dispatch_create(&dc, &d) == MB_STATUS_OK);
        mb_moe_work w = {.layer = 0, .n_tokens = N_TOK, .top_k = 2, .expert_ids = ids, .gate = gate, .x = x,
                         .out = out};
        /* A healthy call first. */
        CHECK(mb_dispatch_moe(d, &w) == MB_STATUS_OK);
        /* Then kill worker 1 a few milliseconds into a call that takes far
         * longer than that in stream mode. */
        pthread_t th;
        killer_arg ka = {.pid = links[1].pid, .delay_ms = 5, .sig = pass == 3 ? SIGSTOP : SIGKILL};
        pthread_create(&th, NULL, killer, &ka);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        mb_status st = mb_dispatch_moe(d, &w);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        pthread_join(th, NULL);
        double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        const char *msg = mb_dispatch_error(d);
        printf("%s: status %s after %.3f s: %s\n", kinds[pass], mb_status_name(st), s, msg);
        if (pass == 3) {
            CHECK_MSG(st == MB_STATUS_TIMEOUT, "status %s", mb_status_name(st));
            CHECK_MSG(s >= 0.3, "the timeout ended the call after %.3f s", s);
            kill(links[1].pid, SIGKILL); /* a stopped worker would not see the close */
        } else {
            CHECK(st == MB_STATUS_PEER_DEAD || st == MB_STATUS_CLOSED);
        }
        CHECK_MSG(strstr(msg, links[1].name) != NULL, "message does not name the worker: %s", msg);
        CHECK_MSG(s < 1.0 + 0.005, "took %.3f s", s);
        mb_dispatch_destroy(d);
        mb_placement_free(&pl);
        for (int i = 0; i < 2; i++) mb_link_close(&links[i]);
        if (kind == 1) {
            struct stat sb;
            CHECK_MSG(stat(sock_path, &sb) != 0, "socket file %s left behind", sock_path);
        }
        CHECK_EQ(count_fds(), fds_before);
    }
    mb_model_destroy(model);
    return mb_test_finish("test_dead_worker");
}
