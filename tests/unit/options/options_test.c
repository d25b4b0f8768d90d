/* Run-option parsing: defaults, every flag, every environment variable, flag
 * over environment, rejection messages for every enum and range knob,
 * --worker specs, --input-ids files and --help. */
#include "broker/options.h"
#include "tests/testutil.h"

#include <stdarg.h>
#include <string.h>
#include <unistd.h>

static const char *const env_vars[] = {
    "MB_MODEL",          "MB_WORKERS",      "MB_IPC_MODE",      "MB_TRANSPORT",
    "MB_BATCH_CAPACITY", "MB_STREAM_SLICE", "MB_PAYLOAD_DTYPE", "MB_THREADS",
    "MB_LOCAL_EXPERTS",  "MB_LOCAL_BUDGET", "MB_STATS",         "MB_STATS_JSON",
    "MB_STATS_LAYERS",   "MB_STEP_TIMING",  "MB_SYSTEM",        "MB_TOKENIZER",
    "MB_SEED",           "MB_TEMPERATURE",  "MB_TOP_K",         "MB_TOP_P",
    "MB_MIN_P",          "MB_REPEAT_PENALTY", "MB_REPEAT_LAST_N",
    "MB_ON_WORKER_LOSS", "MB_REPLICAS", "MB_WORKER_TIMEOUT", "MB_CONNECT_TIMEOUT",
    "MB_HOTNESS",
};

static void clear_env(void)
{
    for (size_t i = 0; i < sizeof env_vars / sizeof env_vars[0]; i++)
        unsetenv(env_vars[i]);
}

static char err[512];

/* Parses a NULL-terminated argument list after "moe-broker". */
static mb_status parse(mb_options *o, ...)
{
    char *argv[128];
    int argc = 0;
    argv[argc++] = "moe-broker";
    va_list ap;
    va_start(ap, o);
    for (char *a; (a = va_arg(ap, char *)) && argc < 127;)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    err[0] = '\0';
    return mb_options_parse(argc, argv, o, err, sizeof err);
}

static void test_defaults(void)
{
    mb_options o;
    CHECK_EQ(parse(&o, NULL), MB_STATUS_OK);
    CHECK(o.model_dir == NULL);
    CHECK_EQ(o.n_workers, 0);
    CHECK_EQ(o.ipc_mode, MB_IPC_MODE_AUTO);
    CHECK_EQ(o.transport, MB_TRANSPORT_AUTO);
    CHECK_EQ(o.batch_capacity, 1024);
    CHECK_EQ(o.stream_slice, 4);
    CHECK_EQ(o.payload_dtype, MB_DTYPE_F32);
    CHECK_EQ(o.threads, 0);
    CHECK_EQ(o.local_experts, 0);
    CHECK_EQ(o.local_budget_bytes, 0);
    CHECK_EQ(o.on_worker_loss, MB_ON_WORKER_LOSS_FALLBACK);
    CHECK_EQ(o.replicas, 1);
    CHECK_EQ(o.worker_timeout_ms, 1500);
    CHECK_EQ(o.connect_timeout_ms, 5000);
    CHECK(o.input_ids == NULL && o.n_input_ids == 0);
    CHECK_EQ(o.seed, 1);
    CHECK_EQ(o.gen, 0);
    CHECK_EQ(o.chunk, 512);
    CHECK_EQ(o.max_ctx, 0);
    CHECK(o.temperature == 0.8 && o.top_k == 40 && o.top_p == 0.95 && o.min_p == 0.05);
    CHECK(o.repeat_penalty == 1.0 && o.repeat_last_n == 64);
    CHECK(o.prompt == NULL && o.chat == NULL && o.system == NULL && o.tokenizer == NULL);
    CHECK_EQ(o.command, MB_COMMAND_RUN);
    CHECK(!o.version);
    CHECK(!o.stats && !o.stats_per_layer && !o.quiet && !o.help);
    CHECK(o.stats_json == NULL && o.step_timing == NULL && o.logits_out == NULL);
    CHECK_EQ(o.given_mask, 0);
    for (int i = 0; i < MB_OPTION_COUNT_; i++)
        CHECK(!mb_options_given(&o, (mb_option_id)i));
    mb_options_free(&o);

    /* The subcommand "run" is the default and may be named. */
    CHECK_EQ(parse(&o, "run", "--gen", "3", NULL), MB_STATUS_OK);
    CHECK_EQ(o.gen, 3);
    mb_options_free(&o);
    CHECK_EQ(parse(&o, "chat", "--system", "be brief", NULL), MB_STATUS_OK);
    CHECK(o.command == MB_COMMAND_CHAT && strcmp(o.system, "be brief") == 0);
    mb_options_free(&o);
    CHECK_EQ(parse(&o, "frob", NULL), MB_STATUS_CONFIG);
    CHECK(strstr(err, "unknown command 'frob'") && strstr(err, "valid: run, chat"));
    CHECK_EQ(parse(&o, "run", "--version", NULL), MB_STATUS_OK);
    CHECK(o.version && !o.help);
    mb_options_free(&o);
}

static void test_flags(void)
{
    mb_options o;
    mb_status st =
        parse(&o, "--model", "/m", "--worker", "cpu", "--worker", "tcp://h:5555", "--ipc-mode",
              "stream", "--transport", "zmq", "--batch-capacity", "4096", "--stream-slice", "16",
              "--payload-dtype", "bf16", "--shm-spin", "0", "--threads", "8", "--local-experts", "2", "--local-budget",
              "512M", "--input-ids", "5, 6,7", "--prefill", "128", "--seed",
              "18446744073709551615", "--gen", "32", "--chunk", "256", "--max-ctx", "4096",
              "--logits-out", "/tmp/l.bin", "--stats", "--stats-json", "s.json", "--stats-layers",
              "--step-timing", "t.jsonl", "--quiet", "--system", "sys", "--tokenizer", "/t.json",
              "--temperature", "0", "--top-k", "5", "--top-p", "0.5", "--min-p", "0.1",
              "--repeat-penalty", "1.1", "--repeat-last-n", "32", "--on-worker-loss", "abort", "--replicas", "2",
              "--hotness", "h.json", "--worker-timeout", "700", "--connect-timeout", "250", "--curve-secret", "c.key",
              "--device", "cuda:1",
              "--host", "::1", "--port", "9000", "--api-key", "k", "--queue-max", "4", "--max-body", "1M", NULL);
    REQUIRE(st == MB_STATUS_OK);
    CHECK(o.host && strcmp(o.host, "::1") == 0 && o.api_key && strcmp(o.api_key, "k") == 0);
    CHECK(o.port == 9000 && o.queue_max == 4 && o.max_body_bytes == 1u << 20);
    CHECK_EQ(o.on_worker_loss, MB_ON_WORKER_LOSS_ABORT);
    CHECK_EQ(o.cuda_device, 1);
    CHECK_EQ(o.replicas, 2);
    CHECK(o.hotness && strcmp(o.hotness, "h.json") == 0);
    CHECK_EQ(o.worker_timeout_ms, 700);
    CHECK_EQ(o.connect_timeout_ms, 250);
    CHECK(o.model_dir && strcmp(o.model_dir, "/m") == 0);
    REQUIRE(o.n_workers == 2);
    CHECK(strcmp(o.workers[0], "cpu") == 0 && strcmp(o.workers[1], "tcp://h:5555") == 0);
    CHECK_EQ(o.ipc_mode, MB_IPC_MODE_STREAM);
    CHECK_EQ(o.transport, MB_TRANSPORT_ZMQ);
    CHECK_EQ(o.batch_capacity, 4096);
    CHECK_EQ(o.stream_slice, 16);
    CHECK_EQ(o.payload_dtype, MB_DTYPE_BF16);
    CHECK_EQ(o.shm_spin_us, 0);
    CHECK_EQ(o.threads, 8);
    CHECK_EQ(o.local_experts, 2);
    CHECK_EQ(o.local_budget_bytes, 512ull << 20);
    REQUIRE(o.n_input_ids == 3);
    CHECK(o.input_ids[0] == 5 && o.input_ids[1] == 6 && o.input_ids[2] == 7);
    CHECK_EQ(o.prefill, 128);
    CHECK(strcmp(o.system, "sys") == 0 && strcmp(o.tokenizer, "/t.json") == 0);
    CHECK(o.temperature == 0.0 && o.top_k == 5 && o.top_p == 0.5 && o.min_p == 0.1);
    CHECK(o.repeat_penalty == 1.1 && o.repeat_last_n == 32);
    CHECK(o.seed == UINT64_MAX);
    CHECK_EQ(o.gen, 32);
    CHECK_EQ(o.chunk, 256);
    CHECK_EQ(o.max_ctx, 4096);
    CHECK(o.logits_out && strcmp(o.logits_out, "/tmp/l.bin") == 0);
    CHECK(o.stats && o.stats_per_layer && o.quiet);
    CHECK(o.stats_json && strcmp(o.stats_json, "s.json") == 0);
    CHECK(o.step_timing && strcmp(o.step_timing, "t.jsonl") == 0);
    CHECK(o.curve_secret && strcmp(o.curve_secret, "c.key") == 0);
    /* Every knob but the prompts that exclude --input-ids. */
    for (int i = 0; i < MB_OPTION_COUNT_; i++) {
        int excluded = i == MB_OPTION_PROMPT || i == MB_OPTION_CHAT || i == MB_OPTION_PROMPT_LEN;
        CHECK_MSG(mb_options_given(&o, (mb_option_id)i) == !excluded, "knob %d given: %d", i,
                  mb_options_given(&o, (mb_option_id)i));
    }
    CHECK_EQ(o.from_env_mask, 0);
    mb_options_free(&o);
    CHECK(o.model_dir == NULL && o.workers == NULL && o.batch_capacity == 1024);
    mb_options_free(&o); /* twice is fine */

    CHECK_EQ(parse(&o, "--prompt", "Hello", "--prompt-len", "3", NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "--prompt and --prompt-len exclude each other"), "%s", err);
    /* --device: cpu, cuda, cuda:N; nothing else. */
    CHECK_EQ(parse(&o, "--device", "cpu", NULL), MB_STATUS_OK);
    CHECK_EQ(o.cuda_device, -1);
    mb_options_free(&o);
    CHECK_EQ(parse(&o, "--device", "cuda", NULL), MB_STATUS_OK);
    CHECK_EQ(o.cuda_device, 0);
    mb_options_free(&o);
    const char *bad_devices[] = {"cuda:", "cuda:x", "cuda:-1", "cuda:1a", "gpu", "vulkan:0", "cuda:99999"};
    for (size_t i = 0; i < sizeof bad_devices / sizeof bad_devices[0]; i++)
        CHECK_EQ(parse(&o, "--device", bad_devices[i], NULL), MB_STATUS_CONFIG);
    /* serve: its own command; prompts come from requests. */
    CHECK_EQ(parse(&o, "serve", "--port", "0", NULL), MB_STATUS_OK);
    CHECK_EQ(o.command, MB_COMMAND_SERVE);
    mb_options_free(&o);
    CHECK_EQ(parse(&o, "serve", "--chat", "Hi", NULL), MB_STATUS_CONFIG);
    CHECK_EQ(parse(&o, "serve", "--port", "65536", NULL), MB_STATUS_CONFIG);
    CHECK_EQ(parse(&o, "--input-ids", "1,2", "--prompt-len", "3", NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "--input-ids and --prompt-len exclude each other"), "%s", err);
    CHECK_EQ(parse(&o, "--chat", "hi", "--input-ids", "1", NULL), MB_STATUS_CONFIG);
    CHECK_EQ(parse(&o, "chat", "--prompt", "hi", NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "chat reads its messages from stdin"), "%s", err);
    CHECK_EQ(parse(&o, "--prefill", "3", NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "--prefill applies only to --input-ids"), "%s", err);
    CHECK_EQ(parse(&o, "--chat", "hi", "--system", "s", "--temperature", "0.7", NULL), MB_STATUS_OK);
    CHECK(strcmp(o.chat, "hi") == 0 && o.temperature == 0.7);
    mb_options_free(&o);

    /* --flag=value, later flags override earlier, --no- forms, each dtype. */
    CHECK_EQ(parse(&o, "--ipc-mode=batched", "--payload-dtype=f16", "--stats", "--no-stats",
                   "--gen", "1", "--gen", "2", NULL),
             MB_STATUS_OK);
    CHECK_EQ(o.ipc_mode, MB_IPC_MODE_BATCHED);
    CHECK_EQ(o.payload_dtype, MB_DTYPE_F16);
    CHECK(!o.stats && mb_options_given(&o, MB_OPTION_STATS));
    CHECK_EQ(o.gen, 2);
    mb_options_free(&o);

    /* Byte sizes. */
    static const struct {
        const char *text;
        uint64_t bytes;
    } sizes[] = {{"1024", 1024},     {"4K", 4096},       {"1KiB", 1024},
                 {"3m", 3ull << 20}, {"2G", 2ull << 30}, {"1GB", 1ull << 30},
                 {"1T", 1ull << 40}, {"0", 0},           {"7B", 7}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        CHECK_EQ(parse(&o, "--local-budget", sizes[i].text, NULL), MB_STATUS_OK);
        CHECK_MSG(o.local_budget_bytes == sizes[i].bytes, "%s", sizes[i].text);
        mb_options_free(&o);
    }

    /* getopt permutes its array: the caller's argv must keep its order. */
    char *argv[] = {"moe-broker", "--gen", "4", "--quiet", NULL};
    CHECK_EQ(mb_options_parse(4, argv, &o, err, sizeof err), MB_STATUS_OK);
    CHECK(strcmp(argv[1], "--gen") == 0 && strcmp(argv[2], "4") == 0 &&
          strcmp(argv[3], "--quiet") == 0);
    mb_options_free(&o);
}

static void test_env(void)
{
    mb_options o;
    setenv("MB_MODEL", "/env/model", 1);
    setenv("MB_WORKERS", "cpu:0,threads=4;cuda:1,weight=2;", 1);
    setenv("MB_IPC_MODE", "stream", 1);
    setenv("MB_TRANSPORT", "shm", 1);
    setenv("MB_BATCH_CAPACITY", "77", 1);
    setenv("MB_STREAM_SLICE", "8", 1);
    setenv("MB_PAYLOAD_DTYPE", "f16", 1);
    setenv("MB_THREADS", "3", 1);
    setenv("MB_LOCAL_EXPERTS", "5", 1);
    setenv("MB_LOCAL_BUDGET", "1G", 1);
    setenv("MB_STATS", "true", 1);
    setenv("MB_STATS_JSON", "/env/s.json", 1);
    setenv("MB_STATS_LAYERS", "1", 1);
    setenv("MB_STEP_TIMING", "/env/t.jsonl", 1);
    setenv("MB_ON_WORKER_LOSS", "abort", 1);
    setenv("MB_REPLICAS", "3", 1);
    setenv("MB_HOTNESS", "/env/h.json", 1);
    setenv("MB_WORKER_TIMEOUT", "2000", 1);
    setenv("MB_CONNECT_TIMEOUT", "100", 1);
    setenv("MB_TEMPERATURE", "1.5", 1);
    setenv("MB_TOP_K", "7", 1);
    setenv("MB_TOP_P", "0.9", 1);
    setenv("MB_MIN_P", "0", 1);
    setenv("MB_REPEAT_PENALTY", "1.2", 1);
    setenv("MB_REPEAT_LAST_N", "16", 1);
    setenv("MB_SEED", "42", 1);
    setenv("MB_SYSTEM", "env system", 1);
    setenv("MB_TOKENIZER", "/env/tok", 1);
    REQUIRE(parse(&o, NULL) == MB_STATUS_OK);
    CHECK(o.temperature == 1.5 && o.top_k == 7 && o.top_p == 0.9 && o.min_p == 0.0);
    CHECK(o.repeat_penalty == 1.2 && o.repeat_last_n == 16 && o.seed == 42);
    CHECK(strcmp(o.system, "env system") == 0 && strcmp(o.tokenizer, "/env/tok") == 0);
    static const char *const text_vars[] = {"MB_TEMPERATURE", "MB_TOP_K", "MB_TOP_P",
                                            "MB_MIN_P", "MB_REPEAT_PENALTY", "MB_REPEAT_LAST_N",
                                            "MB_SEED", "MB_SYSTEM", "MB_TOKENIZER"};
    for (size_t i = 0; i < sizeof text_vars / sizeof text_vars[0]; i++)
        unsetenv(text_vars[i]);
    CHECK(o.model_dir && strcmp(o.model_dir, "/env/model") == 0);
    REQUIRE(o.n_workers == 2);
    CHECK(strcmp(o.workers[0], "cpu:0,threads=4") == 0);
    CHECK(strcmp(o.workers[1], "cuda:1,weight=2") == 0);
    CHECK_EQ(o.ipc_mode, MB_IPC_MODE_STREAM);
    CHECK_EQ(o.transport, MB_TRANSPORT_SHM);
    CHECK_EQ(o.batch_capacity, 77);
    CHECK_EQ(o.stream_slice, 8);
    CHECK_EQ(o.payload_dtype, MB_DTYPE_F16);
    CHECK_EQ(o.threads, 3);
    CHECK_EQ(o.local_experts, 5);
    CHECK_EQ(o.local_budget_bytes, 1ull << 30);
    CHECK(o.stats && o.stats_per_layer);
    CHECK(o.stats_json && strcmp(o.stats_json, "/env/s.json") == 0);
    CHECK(o.step_timing && strcmp(o.step_timing, "/env/t.jsonl") == 0);
    CHECK_EQ(o.on_worker_loss, MB_ON_WORKER_LOSS_ABORT);
    CHECK_EQ(o.replicas, 3);
    CHECK(o.hotness && strcmp(o.hotness, "/env/h.json") == 0);
    CHECK_EQ(o.worker_timeout_ms, 2000);
    CHECK_EQ(o.connect_timeout_ms, 100);
    CHECK(mb_options_given(&o, MB_OPTION_IPC_MODE) && (o.from_env_mask >> MB_OPTION_IPC_MODE) & 1);
    CHECK(!mb_options_given(&o, MB_OPTION_GEN));
    mb_options_free(&o);

    /* Every flag wins over its variable, even an invalid variable. */
    setenv("MB_BATCH_CAPACITY", "999999", 1);
    setenv("MB_STATS", "1", 1);
    CHECK_EQ(parse(&o, "--model", "/flag", "--worker", "vulkan", "--ipc-mode", "batched",
                   "--transport", "zmq", "--batch-capacity", "12", "--stream-slice", "2",
                   "--payload-dtype", "bf16", "--threads", "1", "--local-experts", "0",
                   "--local-budget", "1K", "--no-stats", "--stats-json", "/f.json",
                   "--no-stats-layers", "--step-timing", "/f.jsonl", "--on-worker-loss", "fallback",
                   "--replicas", "1", "--worker-timeout", "50", "--connect-timeout", "1", "--hotness", "/f.h",
                   NULL),
             MB_STATUS_OK);
    CHECK_EQ(o.on_worker_loss, MB_ON_WORKER_LOSS_FALLBACK);
    CHECK(strcmp(o.hotness, "/f.h") == 0);
    CHECK(o.replicas == 1 && o.worker_timeout_ms == 50 && o.connect_timeout_ms == 1);
    CHECK(strcmp(o.model_dir, "/flag") == 0);
    REQUIRE(o.n_workers == 1);
    CHECK(strcmp(o.workers[0], "vulkan") == 0);
    CHECK_EQ(o.ipc_mode, MB_IPC_MODE_BATCHED);
    CHECK_EQ(o.transport, MB_TRANSPORT_ZMQ);
    CHECK_EQ(o.batch_capacity, 12);
    CHECK_EQ(o.stream_slice, 2);
    CHECK_EQ(o.payload_dtype, MB_DTYPE_BF16);
    CHECK_EQ(o.threads, 1);
    CHECK_EQ(o.local_experts, 0);
    CHECK_EQ(o.local_budget_bytes, 1024);
    CHECK(!o.stats && !o.stats_per_layer);
    CHECK(strcmp(o.stats_json, "/f.json") == 0 && strcmp(o.step_timing, "/f.jsonl") == 0);
    CHECK_EQ(o.from_env_mask, 0);
    mb_options_free(&o);
    clear_env();

    /* Boolean spellings; an empty variable counts as unset. */
    clear_env();
    static const char *const on[] = {"1", "true", "YES", "on"}, *const off[] = {"0", "False", "no",
                                                                                "OFF"};
    for (int i = 0; i < 4; i++) {
        setenv("MB_STATS", on[i], 1);
        CHECK_EQ(parse(&o, NULL), MB_STATUS_OK);
        CHECK_MSG(o.stats == 1, "%s", on[i]);
        mb_options_free(&o);
        setenv("MB_STATS", off[i], 1);
        CHECK_EQ(parse(&o, NULL), MB_STATUS_OK);
        CHECK_MSG(o.stats == 0 && mb_options_given(&o, MB_OPTION_STATS), "%s", off[i]);
        mb_options_free(&o);
    }
    setenv("MB_IPC_MODE", "", 1);
    CHECK_EQ(parse(&o, NULL), MB_STATUS_OK);
    CHECK(!mb_options_given(&o, MB_OPTION_IPC_MODE));
    mb_options_free(&o);
    clear_env();
}

/* Expects a rejection whose message holds every needle. */
static void expect_reject(const char *flag, const char *value, const char *env, const char *valid)
{
    mb_options o;
    memset(&o, 0xA5, sizeof o);
    CHECK_EQ(parse(&o, flag, value, NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, flag) && strstr(err, valid) && strstr(err, value) &&
                  strncmp(err, "moe-broker: invalid ", 20) == 0,
              "%s %s -> \"%s\"", flag, value, err);
    CHECK_MSG(o.batch_capacity == 0xA5A5A5A5u, "output written on failure");
    if (!env) return;
    setenv(env, value, 1);
    CHECK_EQ(parse(&o, NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, env) && strstr(err, valid) && strstr(err, value), "%s=%s -> \"%s\"", env,
              value, err);
    unsetenv(env);
}

static void test_invalid(void)
{
    clear_env();
    expect_reject("--ipc-mode", "fast", "MB_IPC_MODE", "(valid: auto, batched, stream)");
    CHECK(strcmp(err, "moe-broker: invalid MB_IPC_MODE 'fast' (valid: auto, batched, stream)") ==
          0);
    expect_reject("--transport", "tcp", "MB_TRANSPORT", "(valid: auto, shm, zmq)");
    expect_reject("--payload-dtype", "f8", "MB_PAYLOAD_DTYPE", "(valid: f32, f16, bf16)");
    expect_reject("--batch-capacity", "0", "MB_BATCH_CAPACITY", "(valid: 1..4096)");
    expect_reject("--batch-capacity", "4097", "MB_BATCH_CAPACITY", "(valid: 1..4096)");
    expect_reject("--batch-capacity", "12x", "MB_BATCH_CAPACITY", "(valid: 1..4096)");
    expect_reject("--batch-capacity", "-1", "MB_BATCH_CAPACITY", "(valid: 1..4096)");
    expect_reject("--stream-slice", "0", "MB_STREAM_SLICE", "(valid: 1..4096)");
    expect_reject("--stream-slice", "5000", "MB_STREAM_SLICE", "(valid: 1..4096)");
    expect_reject("--threads", "1025", "MB_THREADS", "(valid: 0..1024)");
    expect_reject("--local-experts", "65536", "MB_LOCAL_EXPERTS", "(valid: 0..65535)");
    expect_reject("--local-budget", "5X", "MB_LOCAL_BUDGET", "K, M, G or T");
    expect_reject("--local-budget", "99999999999T", "MB_LOCAL_BUDGET", "K, M, G or T");
    expect_reject("--chunk", "0", NULL, "(valid: 1..65536)");
    expect_reject("--prefill", "16777217", NULL, "(valid: 0..16777216)");
    expect_reject("--prompt-len", "x", NULL, "(valid: 1..16777216)");
    expect_reject("--prompt-len", "0", NULL, "(valid: 1..16777216)");
    expect_reject("--temperature", "-1", "MB_TEMPERATURE", "(valid: 0..100)");
    expect_reject("--temperature", "nan", "MB_TEMPERATURE", "(valid: 0..100)");
    expect_reject("--top-p", "1.5", "MB_TOP_P", "(valid: 0..1)");
    expect_reject("--min-p", "x", "MB_MIN_P", "(valid: 0..1)");
    expect_reject("--repeat-penalty", "0", "MB_REPEAT_PENALTY", "(valid: 0.01..100)");
    expect_reject("--gen", "1e3", NULL, "(valid: 0..16777216)");
    expect_reject("--max-ctx", "99999999", NULL, "(valid: 0..16777216)");
    expect_reject("--seed", "18446744073709551616", NULL, "(valid: 0..");
    expect_reject("--worker", "gpu", "MB_WORKERS", "valid: cpu[:N], cuda[:N], vulkan[:N]");

    mb_options o;
    setenv("MB_STATS", "maybe", 1);
    CHECK_EQ(parse(&o, NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "MB_STATS 'maybe'") && strstr(err, "1, 0, true, false"), "%s", err);
    unsetenv("MB_STATS");

    CHECK_EQ(parse(&o, "--ipc-mode", NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "--ipc-mode needs a value"), "%s", err);
    CHECK_EQ(parse(&o, "--model", "", NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "--model needs a non-empty value"), "%s", err);
    CHECK_EQ(parse(&o, "--frobnicate", NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "unknown or ambiguous option '--frobnicate'"), "%s", err);
    CHECK_EQ(parse(&o, "-x", NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "unknown option '-x'"), "%s", err);
    CHECK_EQ(parse(&o, "--stats=1", NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "--stats takes no value"), "%s", err);
    CHECK_EQ(parse(&o, "--gen", "3", "stray", NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "unexpected argument 'stray'"), "%s", err);
    CHECK_EQ(mb_options_parse(1, NULL, &o, err, sizeof err), MB_STATUS_INVALID_ARG);
    /* A tiny error buffer is truncated, never overrun. */
    char tiny[8];
    char *argv[] = {"moe-broker", "--ipc-mode", "fast", NULL};
    CHECK_EQ(mb_options_parse(3, argv, &o, tiny, sizeof tiny), MB_STATUS_CONFIG);
    CHECK(strlen(tiny) == sizeof tiny - 1);
    CHECK_EQ(mb_options_parse(3, argv, &o, NULL, 0), MB_STATUS_CONFIG);
}

static void test_worker_specs(void)
{
    mb_worker_spec w;
    CHECK_EQ(mb_worker_spec_parse("cpu", &w, err, sizeof err), MB_STATUS_OK);
    CHECK(w.kind == MB_WORKER_KIND_LOCAL && strcmp(w.backend, "cpu") == 0 && w.device == -1 &&
          w.weight == 1.0 && w.threads == 0 && w.endpoint[0] == '\0');
    CHECK_EQ(mb_worker_spec_parse("cpu:1", &w, err, sizeof err), MB_STATUS_OK);
    CHECK(w.device == 1 && strcmp(w.backend, "cpu") == 0);
    CHECK_EQ(mb_worker_spec_parse("cpu,weight=2", &w, err, sizeof err), MB_STATUS_OK);
    CHECK(w.weight == 2.0 && w.device == -1);
    CHECK_EQ(mb_worker_spec_parse("cpu:0,threads=4", &w, err, sizeof err), MB_STATUS_OK);
    CHECK(w.device == 0 && w.threads == 4);
    CHECK_EQ(mb_worker_spec_parse("cuda:3,weight=0.5,threads=8", &w, err, sizeof err),
             MB_STATUS_OK);
    CHECK(strcmp(w.backend, "cuda") == 0 && w.device == 3 && w.weight == 0.5 && w.threads == 8);
    CHECK_EQ(mb_worker_spec_parse("vulkan", &w, err, sizeof err), MB_STATUS_OK);
    CHECK(strcmp(w.backend, "vulkan") == 0);
    CHECK_EQ(mb_worker_spec_parse("tcp://10.0.0.2:5555", &w, err, sizeof err), MB_STATUS_OK);
    CHECK(w.kind == MB_WORKER_KIND_REMOTE && strcmp(w.endpoint, "tcp://10.0.0.2:5555") == 0 &&
          w.backend[0] == '\0' && w.device == -1);
    CHECK_EQ(mb_worker_spec_parse("tcp://[::1]:7000,weight=3", &w, err, sizeof err), MB_STATUS_OK);
    CHECK(strcmp(w.endpoint, "tcp://[::1]:7000") == 0 && w.weight == 3.0);
    CHECK_EQ(mb_worker_spec_parse("ipc:///tmp/w0.sock", &w, err, sizeof err), MB_STATUS_OK);
    CHECK(w.kind == MB_WORKER_KIND_REMOTE && strcmp(w.endpoint, "ipc:///tmp/w0.sock") == 0);
    CHECK(w.key_file[0] == '\0');
    CHECK_EQ(mb_worker_spec_parse("tcp://10.0.0.2:5555,key=/k/w.pub,weight=2", &w, err, sizeof err), MB_STATUS_OK);
    CHECK(strcmp(w.key_file, "/k/w.pub") == 0 && w.weight == 2.0);

    static const struct {
        const char *spec, *needle;
    } bad[] = {
        {"gpu", "unknown backend 'gpu'"},
        {"", "empty"},
        {"cpu:x", "device must be 0..1023"},
        {"cpu:2000", "device must be 0..1023"},
        {"cpu:", "device must be 0..1023"},
        {"cpu,weight=0", "valid: a number > 0"},
        {"cpu,weight=abc", "weight 'abc'"},
        {"cpu,weight=nan", "weight 'nan'"},
        {"cpu,weight=inf", "weight 'inf'"},
        {"cpu,threads=9999", "valid: 0..1024"},
        {"cpu,foo=1", "unknown key 'foo'"},
        {"cpu,weight", "not KEY=VALUE"},
        {"cpu,", "trailing ','"},
        {"tcp://host", "HOST:PORT"},
        {"tcp://host:0", "port 1..65535"},
        {"tcp://:80", "HOST:PORT"},
        {"ipc://", "empty ipc path"},
        {"cpu,key=w.pub", "key 'w.pub'"},
        {"tcp://h:1,key=", "tcp:// or ipc:// worker"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&w, 0x5A, sizeof w);
        err[0] = '\0';
        CHECK_EQ(mb_worker_spec_parse(bad[i].spec, &w, err, sizeof err), MB_STATUS_CONFIG);
        CHECK_MSG(strstr(err, bad[i].needle), "'%s' -> \"%s\"", bad[i].spec, err);
        CHECK_MSG(w.device == 0x5A5A5A5A, "output written on failure for '%s'", bad[i].spec);
    }
    char longspec[400];
    memset(longspec, 'a', sizeof longspec);
    memcpy(longspec, "ipc:///", 7);
    longspec[sizeof longspec - 1] = '\0';
    CHECK_EQ(mb_worker_spec_parse(longspec, &w, err, sizeof err), MB_STATUS_CONFIG);
    CHECK_EQ(mb_worker_spec_parse(NULL, &w, err, sizeof err), MB_STATUS_INVALID_ARG);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs(text, f);
    fclose(f);
}

static void test_input_ids(void)
{
    mb_options o;
    char path[] = "/tmp/mb_options_ids_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);

    write_file(path, "1 2\n3,4,\t 2147483647\n");
    REQUIRE(parse(&o, "--input-ids", path, NULL) == MB_STATUS_OK);
    REQUIRE(o.n_input_ids == 5);
    CHECK(o.input_ids[0] == 1 && o.input_ids[3] == 4 && o.input_ids[4] == 2147483647);
    mb_options_free(&o);

    CHECK_EQ(parse(&o, "--input-ids", "7", NULL), MB_STATUS_OK);
    CHECK(o.n_input_ids == 1 && o.input_ids[0] == 7);
    mb_options_free(&o);

    write_file(path, "1 2 x\n");
    CHECK_EQ(parse(&o, "--input-ids", path, NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "--input-ids") && strstr(err, "unexpected 'x'"), "%s", err);
    write_file(path, " \n");
    CHECK_EQ(parse(&o, "--input-ids", path, NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "no token ids"), "%s", err);
    CHECK_EQ(parse(&o, "--input-ids", "1,2147483648", NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "above 2147483647"), "%s", err);
    /* Text that names no file is a list, and its mistakes are named. */
    CHECK_EQ(parse(&o, "--input-ids", "1,-2,3", NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "negative id at byte 2") && strstr(err, "not a file"), "%s", err);
    CHECK_EQ(parse(&o, "--input-ids", "abc", NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "unexpected 'a' at byte 0") && strstr(err, "not a file"), "%s", err);
    CHECK_EQ(parse(&o, "--input-ids", "1,,3", NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "empty entry before the ',' at byte 2"), "%s", err);
    CHECK_EQ(parse(&o, "--input-ids", ",1", NULL), MB_STATUS_CONFIG);
    CHECK_EQ(parse(&o, "--input-ids", "1,2,", NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "trailing ','"), "%s", err);
    CHECK_EQ(parse(&o, "--input-ids", "1 , 2\n3", NULL), MB_STATUS_OK);
    CHECK(o.n_input_ids == 3);
    mb_options_free(&o);
    CHECK_EQ(parse(&o, "--input-ids", "1 , 2 3", NULL), MB_STATUS_OK);
    CHECK(o.n_input_ids == 3 && o.input_ids[2] == 3);
    mb_options_free(&o);
    unlink(path);
    CHECK_EQ(parse(&o, "--input-ids", path, NULL), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "not a file"), "%s", err);
    CHECK_EQ(parse(&o, "--input-ids", "/", NULL), MB_STATUS_CONFIG); /* a directory */
}

static void test_help(void)
{
    mb_options o;
    CHECK_EQ(parse(&o, "--help", NULL), MB_STATUS_OK);
    CHECK(o.help);
    mb_options_free(&o);
    CHECK_EQ(parse(&o, "--ipc-mode", "fast", "-h", NULL), MB_STATUS_OK); /* help wins */
    CHECK(o.help);
    mb_options_free(&o);
    CHECK_EQ(parse(&o, "run", "--gen", "2", "--", "--help", NULL), MB_STATUS_CONFIG);
    CHECK_EQ(parse(&o, "--gen", "2", "--he", NULL), MB_STATUS_OK); /* an abbreviation */
    CHECK(o.help && o.gen == 0 && o.given_mask == 0);
    mb_options_free(&o);

    FILE *f = tmpfile();
    REQUIRE(f);
    mb_options_usage(f);
    long n = ftell(f);
    REQUIRE(n > 0);
    char *text = calloc(1, (size_t)n + 1);
    REQUIRE(text);
    rewind(f);
    REQUIRE(fread(text, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    static const char *const needles[] = {
        "--model DIR",
        "--worker SPEC",
        "--ipc-mode MODE",
        "--transport KIND",
        "--batch-capacity N",
        "--stream-slice N",
        "--payload-dtype DTYPE",
        "--threads N",
        "--local-experts N",
        "--local-budget BYTES",
        "--input-ids LIST|FILE",
        "--prefill P",
        "--prompt-len N",
        "--seed S",
        "--gen N",
        "--chunk N",
        "--max-ctx N",
        "--logits-out PATH",
        "--stats, --no-stats",
        "--stats-json PATH",
        "--stats-layers, --no-stats-layers",
        "--step-timing PATH",
        "--quiet, --no-quiet",
        "--prompt TEXT",
        "--chat TEXT",
        "--system TEXT",
        "--tokenizer PATH",
        "--temperature T",
        "--top-k N",
        "--top-p P",
        "--min-p P",
        "--repeat-penalty R",
        "--repeat-last-n N",
        "valid: 0..100; default: 0.8; env: MB_TEMPERATURE",
        "--version",
        "-h, --help",
        "valid: auto, batched, stream; default: auto; env: MB_IPC_MODE",
        "valid: auto, shm, zmq; default: auto; env: MB_TRANSPORT",
        "valid: f32, f16, bf16; default: f32; env: MB_PAYLOAD_DTYPE",
        "valid: 1..4096; default: 1024; env: MB_BATCH_CAPACITY",
        "valid: 1..4096; default: 4; env: MB_STREAM_SLICE",
        "default: 1",
        "default: 512",
        "env: MB_WORKERS",
        "env: MB_MODEL",
        "env: MB_STATS",
        "env: MB_STATS_JSON",
        "env: MB_STATS_LAYERS",
        "env: MB_STEP_TIMING",
        "env: MB_THREADS",
        "env: MB_LOCAL_EXPERTS",
        "env: MB_LOCAL_BUDGET",
    };
    for (size_t i = 0; i < sizeof needles / sizeof needles[0]; i++)
        CHECK_MSG(strstr(text, needles[i]), "usage lacks \"%s\"", needles[i]);
    free(text);

    CHECK(strcmp(mb_ipc_mode_name(MB_IPC_MODE_STREAM), "stream") == 0);
    CHECK(strcmp(mb_transport_kind_name(MB_TRANSPORT_SHM), "shm") == 0);
    CHECK(strcmp(mb_ipc_mode_name(7), "?") == 0);
}

#define README_BEGIN "<!-- knobs:begin: generated from broker/options.c by options_test --write-readme -->\n"
#define README_END "<!-- knobs:end -->"

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = calloc(1, (size_t)n + 1);
    if (text && fread(text, 1, (size_t)n, f) != (size_t)n) {
        free(text);
        text = NULL;
    }
    fclose(f);
    if (len) *len = (size_t)n;
    return text;
}

/* The README's knob table must be mb_options_markdown's output, byte for
 * byte: --help and the README come from the same table. With write set,
 * rewrites the README's section instead. */
static void test_readme(const char *readme, int write)
{
    FILE *f = tmpfile();
    REQUIRE(f);
    mb_options_markdown(f);
    long n = ftell(f);
    char *table = calloc(1, (size_t)n + 1);
    REQUIRE(table);
    rewind(f);
    REQUIRE(fread(table, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    CHECK(strstr(table, "| `--temperature T` | `MB_TEMPERATURE` |"));
    CHECK(strstr(table, "| `--local-budget BYTES` | `MB_LOCAL_BUDGET` |"));

    size_t len = 0;
    char *text = read_all(readme, &len);
    if (!text) fprintf(stderr, "cannot read %s\n", readme);
    REQUIRE(text);
    char *begin = strstr(text, README_BEGIN), *end = begin ? strstr(begin, README_END) : NULL;
    if (!begin || !end) fprintf(stderr, "%s lacks the generated knob section markers\n", readme);
    REQUIRE(begin && end);
    begin += strlen(README_BEGIN);
    if (write) {
        FILE *o = fopen(readme, "wb");
        REQUIRE(o);
        fwrite(text, 1, (size_t)(begin - text), o);
        fputs(table, o);
        fputs(end, o);
        fclose(o);
        printf("rewrote the knob table in %s\n", readme);
    } else {
        size_t have = (size_t)(end - begin);
        int same = have == strlen(table) && memcmp(begin, table, have) == 0;
        CHECK_MSG(same,
                  "README.md's knob table differs from --help's table; regenerate it with\n"
                  "  build/dev/tests/unit/options/options_test --write-readme README.md\n"
                  "expected:\n%s",
                  table);
    }
    free(text);
    free(table);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-readme") == 0) {
        test_readme(argv[2], 1);
        return mb_test_finish("options_test --write-readme");
    }
    clear_env();
    test_defaults();
    test_flags();
    test_env();
    test_invalid();
    test_worker_specs();
    test_input_ids();
    test_help();
    const char *data = getenv("MB_TEST_DATA");
    if (data) {
        char readme[1024];
        snprintf(readme, sizeof readme, "%s/../../README.md", data);
        test_readme(readme, 0);
    }
    return mb_test_finish("options_test");
}
