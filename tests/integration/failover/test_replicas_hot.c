/* Replicas where memory holds only some, hottest first: three tcp://
 * workers whose --max-memory leaves room for one copy of one other
 * worker's experts, on w2 alone. Without hotness that copy goes to w0's
 * experts (worker order); with a --hotness file that makes w1's experts
 * hot, to w1's; with the routing counts an undisturbed run measured and
 * wrote to its --stats-json, to whichever of w0 and w1 that run found
 * hotter. Each time the worker whose experts have the copy is killed
 * (SIGKILL) at decode, its lane moves to the copy on w2 without loading
 * anything, and the run's tokens and f32 logits are bit-identical to the
 * undisturbed run's. Then the command line: a bad or foreign --hotness
 * file (flag or MB_HOTNESS) stops the run before it starts with a clear
 * message, and a good one shows in the placement and the statistics. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker/failover.h"
#include "broker/hotness.h"
#include "broker/session.h"
#include "tests/integration/worker_util.h"
#include "tests/testutil.h"

#define N_PROMPT 40
#define N_GEN 12
#define N_POS (N_PROMPT + N_GEN)
#define N_WORKERS 3

static mb_model *model;
static char model_dir[512];
static char tmpdir[] = "/tmp/mb-replicas-XXXXXX";
static int32_t ids[N_POS];
static float ref_logits[N_POS * 512];
static float got_logits[N_POS * 512];
static int32_t ref_ids[N_POS];
static uint32_t own[N_WORKERS]; /* experts each worker holds as its own */
static uint16_t *group_of;      /* [n_layers][n_experts]: whose they are */
static uint64_t max_memory[N_WORKERS];

static uint32_t argmax(const float *v, uint32_t n)
{
    uint32_t b = 0;
    for (uint32_t i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

/* The primary placement a session over three equal workers makes (the
 * same planner, on links described by hand with room to spare), so the
 * memory caps can be set to fit it. */
static void learn_placement(void)
{
    mb_link links[N_WORKERS];
    memset(links, 0, sizeof links);
    for (int i = 0; i < N_WORKERS; i++) {
        links[i].weight = 1;
        links[i].kind = MB_LINK_REMOTE;
        links[i].caps.mem_free_bytes = 1ull << 40;
        links[i].caps.max_slots = model->cfg.n_layers * model->cfg.n_experts;
    }
    mb_placement p;
    char err[256];
    REQUIRE(mb_placement_plan(&model->cfg, links, N_WORKERS, -1, 0, 0, &p, err, sizeof err) ==
            MB_STATUS_OK);
    const size_t n = (size_t)p.n_layers * p.n_experts;
    group_of = malloc(n * sizeof *group_of);
    REQUIRE(group_of != NULL);
    for (size_t i = 0; i < n; i++)
        group_of[i] = p.table[i].link;
    for (int i = 0; i < N_WORKERS; i++)
        own[i] = p.primary_slots[i];
    mb_placement_free(&p);
    /* w0 and w1: their own experts and half an expert more; w2: its own
     * and the larger of w0's and w1's, but not both. */
    const uint64_t eb = mb_expert_bytes(&model->cfg);
    uint32_t larger = own[0] > own[1] ? own[0] : own[1];
    max_memory[0] = own[0] * eb + eb / 2;
    max_memory[1] = own[1] * eb + eb / 2;
    max_memory[2] = (own[2] + larger) * eb + eb / 2;
    REQUIRE(own[0] > 0 && own[1] > 0); /* so both never fit */
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    REQUIRE(f != NULL);
    fputs(text, f);
    fclose(f);
}

/* A hotness file: 1000 pairs for every expert of worker hot, 1 for the rest. */
static void write_hotness(const char *path, uint32_t hot)
{
    FILE *f = fopen(path, "w");
    REQUIRE(f != NULL);
    const uint32_t L = model->cfg.n_layers, E = model->cfg.n_experts;
    fprintf(f, "{\"routing\":{\"n_layers\":%u,\"n_experts\":%u,\"counts\":[", L, E);
    for (uint32_t l = 0; l < L; l++) {
        fprintf(f, "%s[", l ? "," : "");
        for (uint32_t e = 0; e < E; e++)
            fprintf(f, "%s%d", e ? "," : "", group_of[(size_t)l * E + e] == hot ? 1000 : 1);
        fprintf(f, "]");
    }
    fprintf(f, "]}}\n");
    fclose(f);
}

typedef struct {
    const char *what;
    const char *hotness; /* --hotness FILE, or NULL */
    int kill_at; /* kill the worker whose experts have the copy at this position; -1: never */
    const char *stats_json; /* write the statistics here, or NULL */
} scenario;

/* What a run found. */
typedef struct {
    int copied;           /* whose experts have the copy on w2 (-1: none) */
    int copies_elsewhere; /* copies anywhere but that one */
    int via_after;        /* the link that took the killed worker's lane (-1: none) */
    uint32_t lost;
} outcome;

/* Starts the three workers, runs the prompt and N_GEN greedy steps, and
 * kills as sc says. 0 on success. */
static int run(const scenario *sc, float *logits, int32_t *out_ids, outcome *o, char *err,
               size_t cap)
{
    pid_t pids[N_WORKERS];
    char endpoints[N_WORKERS][256];
    char *workers[N_WORKERS];
    for (int i = 0; i < N_WORKERS; i++) {
        char mem[32];
        snprintf(mem, sizeof mem, "%llu", (unsigned long long)max_memory[i]);
        const char *extra[] = {"--max-memory", mem, NULL};
        pids[i] = mb_test_start_worker_args("tcp://127.0.0.1:*", 1, extra, endpoints[i],
                                            sizeof endpoints[i]);
        REQUIRE(pids[i] > 0);
        workers[i] = endpoints[i];
    }
    mb_options opt;
    mb_options_init(&opt);
    opt.workers = workers;
    opt.n_workers = N_WORKERS;
    opt.ipc_mode = MB_IPC_MODE_STREAM;
    opt.replicas = 2;
    opt.hotness = (char *)sc->hotness;
    opt.quiet = 1;
    mb_session *s = NULL;
    mb_status st = mb_session_open(&opt, model, N_POS, MB_SESSION_INFO, &s, err, cap);
    CHECK_MSG(st == MB_STATUS_OK, "%s: %s", sc->what, err);
    if (st != MB_STATUS_OK) {
        for (int i = 0; i < N_WORKERS; i++)
            mb_test_stop_worker(pids[i]);
        return 1;
    }
    const mb_placement *pl = &s->placement;
    *o = (outcome){.copied = -1, .via_after = -1};
    for (uint32_t g = 0; g < N_WORKERS; g++)
        for (uint32_t k = 0; k < pl->n_copies[g]; k++) {
            if (pl->copies[(size_t)g * pl->max_copies + k].link == 2 && o->copied < 0)
                o->copied = (int)g;
            else
                o->copies_elsewhere++;
        }
    const uint32_t V = model->cfg.vocab;
    int failed = 0;
    memcpy(out_ids, ids, sizeof ids);
    for (uint32_t pos = 0; pos < N_POS && !failed;) {
        int decode = pos >= N_PROMPT;
        int hit = sc->kill_at >= 0 && pos == (uint32_t)sc->kill_at && o->copied >= 0;
        if (hit) kill(pids[o->copied], SIGKILL);
        if (decode) out_ids[pos] = (int32_t)argmax(logits + (size_t)(pos - 1) * V, V);
        uint32_t n = decode ? 1 : N_PROMPT;
        st = mb_session_step(s, out_ids + pos, n, logits + (size_t)pos * V, NULL, err, cap);
        if (hit) {
            const mb_link *via = mb_dispatch_via(s->dispatch, (uint32_t)o->copied);
            o->via_after = via ? (int)(via - s->links) : -1;
        }
        if (st != MB_STATUS_OK) failed = 1;
        pos += n;
    }
    o->lost = mb_failover_lost_count(s->failover);
    if (!failed && sc->stats_json)
        CHECK(mb_stats_write_json(s->stats, sc->stats_json) == MB_STATUS_OK);
    if (!failed && o->lost) {
        /* The lane moved to the copy: the event says so, and nothing was
         * loaded in-process. */
        char path[600];
        snprintf(path, sizeof path, "%s/after-kill.json", tmpdir);
        CHECK(mb_stats_write_json(s->stats, path) == MB_STATUS_OK);
        FILE *f = fopen(path, "r");
        char text[65536] = "";
        size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
        if (f) fclose(f);
        text[n] = '\0';
        CHECK_MSG(strstr(text, "(replica)") && !strstr(text, "local cpu"), "%s: events: %s",
                  sc->what, strstr(text, "\"events\"") ? strstr(text, "\"events\"") : text);
    }
    mb_session_close(s);
    for (int i = 0; i < N_WORKERS; i++) {
        if (sc->kill_at >= 0 && (int)i == o->copied)
            waitpid(pids[i], NULL, 0);
        else
            mb_test_stop_worker(pids[i]);
    }
    return failed;
}

/* Runs sc and checks that the copy went to want's experts, and, when it
 * kills, that the lost lane moved to w2 and nothing changed. */
static void check_run(const scenario *sc, int want)
{
    char err[512] = "";
    int32_t got_ids[N_POS];
    outcome o;
    int failed = run(sc, got_logits, got_ids, &o, err, sizeof err);
    const size_t logit_bytes = (size_t)N_POS * model->cfg.vocab * sizeof(float);
    int same = !failed && memcmp(got_logits, ref_logits, logit_bytes) == 0 &&
               memcmp(got_ids, ref_ids, sizeof got_ids) == 0;
    printf("%-52s copy of w%d's experts on w2; %s\n", sc->what, o.copied,
           failed ? err
           : same ? "identical tokens and logits"
                  : "DIFFERENT");
    CHECK_MSG(!failed, "%s: the run failed: %s", sc->what, err);
    CHECK_MSG(o.copied == want, "%s: w2 holds a copy of w%d's experts, not w%d's", sc->what,
              o.copied, want);
    CHECK_MSG(o.copies_elsewhere == 0, "%s: %d copies past what memory allows", sc->what,
              o.copies_elsewhere);
    CHECK_MSG(same, "%s: tokens or logits differ from the undisturbed run", sc->what);
    if (sc->kill_at >= 0) {
        CHECK_EQ(o.lost, 1);
        CHECK_MSG(o.via_after == 2, "%s: the lane went to link %d, not to the copy on w2", sc->what,
                  o.via_after);
    }
}

/* ---- the command line ---- */

static int sh(const char *env, const char *args, const char *out)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s '%s' %s >'%s' 2>&1 </dev/null", env ? env : "",
             getenv("MB_BROKER_BIN"), args, out);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

static int file_has(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char text[65536] = "";
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    text[n] = '\0';
    int r = strstr(text, needle) != NULL;
    if (!r) fprintf(stderr, "---- %s lacks '%s':\n%.3000s\n----\n", path, needle, text);
    return r;
}

static int file_lacks(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char text[65536] = "";
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    text[n] = '\0';
    return strstr(text, needle) == NULL;
}

static void test_cli(const char *stats_path)
{
    char out[600], bad[600], args[2048], env[700];
    snprintf(out, sizeof out, "%s/cli.out", tmpdir);
    const char *common =
        "--input-ids 1,2,3,4,5,6,7,8 --gen 2 --temperature 0 --replicas 2 --threads 1 "
        "--worker cpu,threads=1 --worker cpu,threads=1";
    /* Refused before anything starts, exit 1, the message names the file
     * and what is wrong. */
    struct {
        const char *text;
        const char *says;
    } cases[] = {
        {"{\"routing\": [", "is not valid JSON"},
        {"{\"counts\": []}", "has no \"routing\" object"},
        {"{\"routing\":{\"n_layers\":48,\"n_experts\":128,\"counts\":[]}}",
         "48 layers x 128 experts; this model has"},
        {"{\"routing\":{\"n_layers\":3,\"n_experts\":16,\"counts\":[[1]]}}", "array of 3 rows"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(bad, sizeof bad, "%s/bad%zu.json", tmpdir, i);
        write_text(bad, cases[i].text);
        snprintf(args, sizeof args, "run --model '%s' %s --hotness '%s'", model_dir, common, bad);
        CHECK_MSG(sh(NULL, args, out) == 1, "--hotness %s: not refused", cases[i].text);
        CHECK(file_has(out, "moe-broker: hotness file ") && file_has(out, cases[i].says));
        CHECK(file_lacks(out, "starting backend"));
    }
    snprintf(env, sizeof env, "MB_HOTNESS='%s/none.json'", tmpdir);
    snprintf(args, sizeof args, "run --model '%s' %s", model_dir, common);
    CHECK_EQ(sh(env, args, out), 1);
    CHECK(file_has(out, "cannot read hotness file") && file_has(out, "none.json"));
    /* A good one: the placement and the table say what was done and why. */
    snprintf(args, sizeof args, "run --model '%s' %s --hotness '%s' --stats", model_dir, common,
             stats_path);
    CHECK_EQ(sh(NULL, args, out), 0);
    CHECK(file_has(out,
                   "replicas: 2 homes per expert wanted; workers' experts served hottest first"));
    CHECK(file_has(out, "% of the --hotness pairs): copy on "));
    CHECK(file_has(
        out, "replicas (whole copies of a worker's experts; chosen hottest first, by --hotness"));
    CHECK(file_has(out, "; this run: "));
}

int main(void)
{
    const char *data = getenv("MB_TEST_DATA");
    if (!data || !getenv("MB_WORKER_BIN") || !getenv("MB_BROKER_BIN"))
        MB_TEST_SKIP("MB_TEST_DATA / MB_WORKER_BIN / MB_BROKER_BIN not set");
    REQUIRE(mkdtemp(tmpdir) != NULL);
    char err[512];
    snprintf(model_dir, sizeof model_dir, "%s/qwen3moe-a", data);
    REQUIRE(mb_model_load(model_dir, &model, err, sizeof err) == MB_STATUS_OK);
    REQUIRE(model->cfg.vocab <= 512);
    for (int i = 0; i < N_POS; i++)
        ids[i] = (int32_t)((i * 37 + 11) % model->cfg.vocab);
    learn_placement();
    printf("own experts: w0 %u, w1 %u, w2 %u; --max-memory %llu, %llu, %llu bytes\n", own[0],
           own[1], own[2], (unsigned long long)max_memory[0], (unsigned long long)max_memory[1],
           (unsigned long long)max_memory[2]);

    /* Undisturbed, no hotness: worker order gives w0's experts the copy.
     * Its routing counts are the measured hotness for later. */
    char measured[600], hot1[600];
    snprintf(measured, sizeof measured, "%s/measured.json", tmpdir);
    scenario ref = {"undisturbed, worker order", NULL, -1, measured};
    outcome o;
    REQUIRE(run(&ref, ref_logits, ref_ids, &o, err, sizeof err) == 0);
    CHECK_EQ(o.copied, 0);
    CHECK_EQ(o.copies_elsewhere, 0);
    printf("%-52s copy of w%d's experts on w2\n", ref.what, o.copied);

    /* A hotness file making w1's experts hot: the copy is theirs, and
     * killing w1 at decode recovers from it. */
    snprintf(hot1, sizeof hot1, "%s/hot1.json", tmpdir);
    write_hotness(hot1, 1);
    scenario hot = {"--hotness (w1 hot), w1 killed at decode", hot1, N_PROMPT + 3, NULL};
    check_run(&hot, 1);
    scenario hot_prefill = {"--hotness (w1 hot), w1 killed at prefill", hot1, 0, NULL};
    check_run(&hot_prefill, 1);

    /* The measured counts: the hotter of w0's and w1's experts (w2 can
     * hold either, nobody has room for w2's). */
    mb_hotness h;
    REQUIRE(mb_hotness_load(measured, model->cfg.n_layers, model->cfg.n_experts, &h, err,
                            sizeof err) == MB_STATUS_OK);
    uint64_t heat[N_WORKERS] = {0};
    for (size_t i = 0; i < (size_t)h.n_layers * h.n_experts; i++)
        heat[group_of[i]] += h.counts[i];
    CHECK_EQ(h.total, (uint64_t)N_POS * model->cfg.top_k * model->cfg.n_layers);
    mb_hotness_free(&h);
    int hotter = heat[1] > heat[0] ? 1 : 0;
    printf("measured routed pairs: w0 %llu, w1 %llu, w2 %llu\n", (unsigned long long)heat[0],
           (unsigned long long)heat[1], (unsigned long long)heat[2]);
    scenario meas = {"--hotness (measured), its worker killed at decode", measured, N_PROMPT + 3,
                     NULL};
    check_run(&meas, hotter);

    test_cli(measured);
    free(group_of);
    mb_model_destroy(model);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return mb_test_finish("test_replicas_hot");
}
