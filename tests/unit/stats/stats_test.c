/* IPC statistics: a known sequence of calls and steps, checked through the
 * getters, the JSON report (parsed back with cJSON), the table and the
 * step-timing JSON lines. */
#include "broker/stats.h"
#include "tests/testutil.h"

#include <cjson/cJSON.h>
#include <string.h>
#include <unistd.h>

#define N_BACKENDS 2
#define N_LAYERS 3

static const char *const names[N_BACKENDS] = {"w0 cpu shm", "local"};

/* The call recorded for (backend, layer, phase, i): every field distinct. */
static mb_stats_call make_call(uint32_t b, uint32_t l, int p, uint32_t i)
{
    uint64_t base = 1 + b * 1000 + l * 100 + (uint64_t)p * 10 + i;
    mb_stats_call c = {
        .tokens = base,
        .pairs = 2 * base,
        .bytes_sent = 4096 * base,
        .bytes_received = 2048 * base,
        .pack_ns = 10 * base,
        .send_ns = 11 * base,
        .wait_ns = 12 * base,
        .unpack_ns = 13 * base,
        .worker_compute_ns = 14 * base,
        .worker_decode_ns = 15 * base,
        .worker_encode_ns = 16 * base,
    };
    return c;
}

/* Calls per (backend, layer, phase): different counts so sums tell apart. */
static uint32_t n_calls(uint32_t b, uint32_t l, int p)
{
    return 1 + b + l + 2 * (uint32_t)p;
}

static void record_all(mb_stats *s)
{
    for (uint32_t b = 0; b < N_BACKENDS; b++)
        for (uint32_t l = 0; l < N_LAYERS; l++)
            for (int p = 0; p < MB_STATS_PHASE_COUNT_; p++)
                for (uint32_t i = 0; i < n_calls(b, l, p); i++) {
                    mb_stats_call c = make_call(b, l, p, i);
                    CHECK_EQ(mb_stats_record_call(s, b, l, (mb_stats_phase)p, &c), MB_STATUS_OK);
                }
}

static mb_stats_counters expected(uint32_t b, int p, int only_layer)
{
    mb_stats_counters e;
    memset(&e, 0, sizeof e);
    for (uint32_t l = 0; l < N_LAYERS; l++) {
        if (only_layer >= 0 && l != (uint32_t)only_layer) continue;
        for (uint32_t i = 0; i < n_calls(b, l, p); i++) {
            mb_stats_call c = make_call(b, l, p, i);
            e.calls++;
#define ADD_(name, doc) e.name += c.name;
            MB_STATS_CALL_FIELDS(ADD_)
#undef ADD_
        }
    }
    return e;
}

static void check_counters(const mb_stats_counters *got, const mb_stats_counters *want)
{
    CHECK_EQ(got->calls, want->calls);
#define CMP_(name, doc) CHECK_EQ(got->name, want->name);
    MB_STATS_CALL_FIELDS(CMP_)
#undef CMP_
}

static char *slurp(FILE *f)
{
    REQUIRE(fseek(f, 0, SEEK_END) == 0);
    long n = ftell(f);
    REQUIRE(n >= 0);
    rewind(f);
    char *text = calloc(1, (size_t)n + 1);
    REQUIRE(text);
    REQUIRE(fread(text, 1, (size_t)n, f) == (size_t)n);
    return text;
}

static char *slurp_path(const char *path)
{
    FILE *f = fopen(path, "r");
    REQUIRE(f);
    char *text = slurp(f);
    fclose(f);
    return text;
}

static double num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    CHECK_MSG(cJSON_IsNumber(v), "no number \"%s\"", key);
    return cJSON_IsNumber(v) ? v->valuedouble : -1.0;
}

static void check_json_counters(const cJSON *o, const mb_stats_counters *want)
{
    REQUIRE(cJSON_IsObject(o));
    CHECK(num(o, "calls") == (double)want->calls);
#define JCMP_(name, doc) CHECK_MSG(num(o, #name) == (double)want->name, #name);
    MB_STATS_CALL_FIELDS(JCMP_)
#undef JCMP_
}

static void test_totals(mb_stats *s)
{
    for (uint32_t b = 0; b < N_BACKENDS; b++)
        for (int p = 0; p < MB_STATS_PHASE_COUNT_; p++) {
            mb_stats_counters got, want = expected(b, p, -1);
            CHECK_EQ(mb_stats_get(s, b, (mb_stats_phase)p, &got), MB_STATUS_OK);
            check_counters(&got, &want);
            for (uint32_t l = 0; l < N_LAYERS; l++) {
                mb_stats_counters lw = expected(b, p, (int)l);
                CHECK_EQ(mb_stats_get_layer(s, b, l, (mb_stats_phase)p, &got), MB_STATUS_OK);
                check_counters(&got, &lw);
            }
        }
    mb_stats_counters got;
    CHECK_EQ(mb_stats_get(s, N_BACKENDS, MB_STATS_PHASE_PREFILL, &got), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_stats_get_layer(s, 0, N_LAYERS, MB_STATS_PHASE_PREFILL, &got),
             MB_STATUS_INVALID_ARG);

    /* Bad indices record nothing. */
    mb_stats_call c = make_call(0, 0, 0, 0);
    CHECK_EQ(mb_stats_record_call(s, N_BACKENDS, 0, MB_STATS_PHASE_PREFILL, &c),
             MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_stats_record_call(s, 0, N_LAYERS, MB_STATS_PHASE_PREFILL, &c),
             MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_stats_record_call(s, 0, 0, MB_STATS_PHASE_COUNT_, &c), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_stats_record_call(s, 0, 0, MB_STATS_PHASE_PREFILL, NULL), MB_STATUS_INVALID_ARG);
    mb_stats_counters want = expected(0, 0, -1);
    CHECK_EQ(mb_stats_get(s, 0, MB_STATS_PHASE_PREFILL, &got), MB_STATUS_OK);
    check_counters(&got, &want);
    /* Statistics off: a NULL object takes records silently. */
    CHECK_EQ(mb_stats_record_call(NULL, 99, 99, MB_STATS_PHASE_DECODE, &c), MB_STATUS_OK);
    CHECK_EQ(mb_stats_record_step(NULL, MB_STATS_PHASE_DECODE, 1, 1, 1, 1, 1), MB_STATUS_OK);

    CHECK_EQ(mb_stats_n_backends(s), N_BACKENDS);
    CHECK_EQ(mb_stats_n_layers(s), N_LAYERS);
    CHECK(strcmp(mb_stats_backend_name(s, 1), "local") == 0);
    CHECK(mb_stats_backend_name(s, 2) == NULL);
}

/* Steps: 2 prefill, 3 decode, each also a line in the step-timing file. */
static void record_steps(mb_stats *s)
{
    CHECK_EQ(mb_stats_record_step(s, MB_STATS_PHASE_PREFILL, 512, 40000000, 30000000, 20000000,
                                  26000000),
             MB_STATUS_OK);
    CHECK_EQ(
        mb_stats_record_step(s, MB_STATS_PHASE_PREFILL, 100, 10000000, 6000000, 5000000, 5500000),
        MB_STATUS_OK);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(
            mb_stats_record_step(s, MB_STATS_PHASE_DECODE, 1, 2500000, 1500000, 1000000, 1450000),
            MB_STATUS_OK);
    CHECK_EQ(mb_stats_record_step(s, MB_STATS_PHASE_COUNT_, 1, 1, 1, 1, 1), MB_STATUS_INVALID_ARG);
    mb_stats_steps st;
    CHECK_EQ(mb_stats_get_steps(s, MB_STATS_PHASE_PREFILL, &st), MB_STATUS_OK);
    CHECK(st.count == 2 && st.tokens == 612 && st.time_ns == 50000000 &&
          st.dispatch_ns == 36000000 && st.wait_ns == 25000000 && st.critical_ns == 31500000);
    CHECK_EQ(mb_stats_get_steps(s, MB_STATS_PHASE_DECODE, &st), MB_STATUS_OK);
    CHECK(st.count == 3 && st.tokens == 3 && st.time_ns == 7500000);
}

static void test_step_lines(const char *path)
{
    char *text = slurp_path(path);
    static const char *const phases[] = {"prefill", "prefill", "decode", "decode", "decode"};
    int line = 0;
    char *save = NULL;
    for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save), line++) {
        REQUIRE(line < 5);
        cJSON *o = cJSON_Parse(l);
        REQUIRE(o);
        CHECK(num(o, "step") == line);
        const cJSON *ph = cJSON_GetObjectItemCaseSensitive(o, "phase");
        CHECK(cJSON_IsString(ph) && strcmp(ph->valuestring, phases[line]) == 0);
        if (line == 0) {
            CHECK(num(o, "tokens") == 512);
            CHECK(num(o, "step_ms") == 40.0);
            CHECK(num(o, "dispatch_ms") == 30.0);
            CHECK(num(o, "wait_ms") == 20.0);
            CHECK(num(o, "crit_ipc_ms") == 4.0); /* dispatch less critical */
        }
        if (line == 4) CHECK(num(o, "step_ms") == 2.5 && num(o, "tokens") == 1);
        cJSON_Delete(o);
    }
    CHECK_EQ(line, 5);
    free(text);
}

static void test_json(mb_stats *s, const char *path)
{
    CHECK_EQ(mb_stats_set_config(s, "ipc_mode", "stream"), MB_STATUS_OK);
    CHECK_EQ(mb_stats_set_config(s, "ipc_mode", "batched"), MB_STATUS_OK); /* replaces */
    CHECK_EQ(mb_stats_set_config_int(s, "batch_capacity", 1024), MB_STATUS_OK);
    CHECK_EQ(mb_stats_write_json(s, path), MB_STATUS_OK);
    char *text = slurp_path(path);
    cJSON *root = cJSON_Parse(text);
    free(text);
    REQUIRE(root);
    const cJSON *backends = cJSON_GetObjectItemCaseSensitive(root, "backends");
    REQUIRE(cJSON_IsArray(backends) && cJSON_GetArraySize(backends) == N_BACKENDS);
    for (uint32_t b = 0; b < N_BACKENDS; b++) {
        const cJSON *bo = cJSON_GetArrayItem(backends, (int)b);
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(bo, "name");
        CHECK(cJSON_IsString(name) && strcmp(name->valuestring, names[b]) == 0);
        const cJSON *layers = cJSON_GetObjectItemCaseSensitive(bo, "layers");
        REQUIRE(cJSON_IsArray(layers) && cJSON_GetArraySize(layers) == N_LAYERS);
        for (int p = 0; p < MB_STATS_PHASE_COUNT_; p++) {
            mb_stats_counters want = expected(b, p, -1);
            check_json_counters(cJSON_GetObjectItemCaseSensitive(bo, mb_stats_phase_name(p)),
                                &want);
            for (uint32_t l = 0; l < N_LAYERS; l++) {
                const cJSON *lo = cJSON_GetArrayItem(layers, (int)l);
                CHECK(num(lo, "layer") == l);
                mb_stats_counters lw = expected(b, p, (int)l);
                check_json_counters(cJSON_GetObjectItemCaseSensitive(lo, mb_stats_phase_name(p)),
                                    &lw);
            }
        }
    }
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(root, "steps");
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(steps, "prefill");
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(steps, "decode");
    CHECK(num(pre, "count") == 2 && num(pre, "tokens") == 612 && num(pre, "time_ns") == 5e7);
    CHECK(num(pre, "dispatch_ns") == 3.6e7 && num(pre, "wait_ns") == 2.5e7 &&
          num(pre, "critical_ns") == 3.15e7);
    CHECK(num(dec, "count") == 3 && num(dec, "tokens") == 3 && num(dec, "time_ns") == 7.5e6);
    const cJSON *config = cJSON_GetObjectItemCaseSensitive(root, "config");
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(config, "ipc_mode");
    CHECK(cJSON_IsString(mode) && strcmp(mode->valuestring, "batched") == 0);
    CHECK(num(config, "batch_capacity") == 1024);
    CHECK_EQ(cJSON_GetArraySize(config), 2);
    cJSON_Delete(root);

    CHECK_EQ(mb_stats_write_json(s, "/nonexistent-dir/x.json"), MB_STATUS_IO);
}

static void test_table(mb_stats *s)
{
    FILE *f = tmpfile();
    REQUIRE(f);
    CHECK_EQ(mb_stats_print_table(s, f), MB_STATUS_OK);
    char *text = slurp(f);
    fclose(f);
    static const char *const needles[] = {"IPC statistics", "w0 cpu shm", "local",      "prefill",
                                          "decode",         "MiB sent",   "compute ms", "ipc/step",
                                          "coord ipc",      "per layer",  "crit ipc ms"};
    for (size_t i = 0; i < sizeof needles / sizeof needles[0]; i++)
        CHECK_MSG(strstr(text, needles[i]), "table lacks \"%s\"", needles[i]);
    /* Decode's critical-path IPC: 4.5 ms of dispatch less 4.35 of the
     * slowest backends' compute, against 7.5 ms of steps. */
    const char *dec_row = strstr(text, "\ndecode         3");
    CHECK_MSG(dec_row && strstr(dec_row, "0.150") && strstr(dec_row, "2.00%"),
              "decode step row: %s", dec_row ? dec_row : "(none)");
    /* Backend 0 prefill: the calls column holds the expected count. */
    mb_stats_counters want = expected(0, 0, -1);
    char row[128];
    snprintf(row, sizeof row, "w0 cpu shm  prefill %8llu %10llu", (unsigned long long)want.calls,
             (unsigned long long)want.tokens);
    CHECK_MSG(strstr(text, row), "table lacks row \"%s\":\n%s", row, text);
    if (getenv("MB_STATS_TEST_SHOW")) fputs(text, stdout);
    free(text);
}

static void test_flat_and_limits(void)
{
    mb_stats *s = NULL;
    CHECK_EQ(mb_stats_create(0, NULL, 0, 0, &s), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_stats_create(MB_STATS_MAX_BACKENDS + 1, NULL, 0, 0, &s), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_stats_create(1, NULL, 0, 1, &s), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_stats_create(1, NULL, MB_STATS_MAX_LAYERS + 1, 1, &s), MB_STATUS_INVALID_ARG);
    CHECK(s == NULL);

    /* Without per-layer storage the layer index is ignored. */
    REQUIRE(mb_stats_create(3, NULL, 48, 0, &s) == MB_STATUS_OK);
    CHECK(strcmp(mb_stats_backend_name(s, 2), "b2") == 0);
    CHECK_EQ(mb_stats_n_layers(s), 0);
    mb_stats_call c = make_call(0, 0, 0, 0);
    CHECK_EQ(mb_stats_record_call(s, 2, 1000, MB_STATS_PHASE_DECODE, &c), MB_STATUS_OK);
    mb_stats_counters got;
    CHECK_EQ(mb_stats_get_layer(s, 2, 0, MB_STATS_PHASE_DECODE, &got), MB_STATUS_UNSUPPORTED);
    CHECK_EQ(mb_stats_get(s, 2, MB_STATS_PHASE_DECODE, &got), MB_STATUS_OK);
    CHECK(got.calls == 1 && got.tokens == c.tokens);

    char path[] = "/tmp/mb_stats_flat_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    CHECK_EQ(mb_stats_write_json(s, path), MB_STATUS_OK);
    char *text = slurp_path(path);
    cJSON *root = cJSON_Parse(text);
    REQUIRE(root);
    const cJSON *b2 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "backends"), 2);
    CHECK(cJSON_GetObjectItemCaseSensitive(b2, "layers") == NULL);
    CHECK(num(cJSON_GetObjectItemCaseSensitive(b2, "decode"), "calls") == 1);
    cJSON_Delete(root);
    free(text);
    unlink(path);

    /* Reset zeroes counters and steps. */
    CHECK_EQ(mb_stats_record_step(s, MB_STATS_PHASE_DECODE, 1, 5, 4, 3, 2), MB_STATUS_OK);
    mb_stats_reset(s);
    mb_stats_steps st;
    CHECK_EQ(mb_stats_get(s, 2, MB_STATS_PHASE_DECODE, &got), MB_STATUS_OK);
    CHECK_EQ(mb_stats_get_steps(s, MB_STATS_PHASE_DECODE, &st), MB_STATUS_OK);
    CHECK(got.calls == 0 && got.tokens == 0 && st.count == 0 && st.time_ns == 0);

    FILE *f = tmpfile();
    REQUIRE(f);
    CHECK_EQ(mb_stats_print_table(s, f), MB_STATUS_OK);
    text = slurp(f);
    fclose(f);
    CHECK(strstr(text, "no dispatch calls recorded") != NULL);
    free(text);
    CHECK_EQ(mb_stats_open_step_timing(s, "/nonexistent-dir/steps.jsonl"), MB_STATUS_IO);
    mb_stats_destroy(s);
    mb_stats_destroy(NULL);
}

int main(void)
{
    char steps_path[] = "/tmp/mb_stats_steps_XXXXXX";
    char json_path[] = "/tmp/mb_stats_json_XXXXXX";
    int fd1 = mkstemp(steps_path), fd2 = mkstemp(json_path);
    REQUIRE(fd1 >= 0 && fd2 >= 0);
    close(fd1);
    close(fd2);

    mb_stats *s = NULL;
    REQUIRE(mb_stats_create(N_BACKENDS, names, N_LAYERS, 1, &s) == MB_STATUS_OK);
    CHECK_EQ(mb_stats_open_step_timing(s, steps_path), MB_STATUS_OK);
    record_all(s);
    test_totals(s);
    record_steps(s);
    CHECK_EQ(mb_stats_close_step_timing(s), MB_STATUS_OK);
    CHECK_EQ(mb_stats_close_step_timing(s), MB_STATUS_OK); /* none open: fine */
    test_step_lines(steps_path);
    test_json(s, json_path);
    test_table(s);
    mb_stats_destroy(s);
    test_flat_and_limits();

    CHECK(strcmp(mb_stats_phase_name(MB_STATS_PHASE_DECODE), "decode") == 0);
    CHECK(strcmp(mb_stats_phase_name(9), "?") == 0);
    unlink(steps_path);
    unlink(json_path);
    return mb_test_finish("stats_test");
}
