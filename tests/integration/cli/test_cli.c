/* The moe-broker command line, run as a user would: --help, --version,
 * invalid knob values and input ids, output paths checked before the run,
 * the context limit, a truncated checkpoint, an unknown architecture, a
 * fixture run with --input-ids/--prefill/--logits-out/--stats-json/
 * --step-timing checked against transformers' logits, the embedded default,
 * and text: --prompt, --chat and chat over a pipe on a fixture paired with a
 * byte-level tokenizer built here (every byte one token, ChatML specials). */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker/safetensors.h"
#include "tests/testutil.h"
#include "tests/integration/text_fixture.h"

static char tmpdir[256];
static const char *broker;

/* Runs a shell command line; returns its exit code. stdout and stderr go
 * to tmpdir/out and tmpdir/err. */
static int sh(const char *env, const char *args)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s '%s' %s >'%s/out' 2>'%s/err' </dev/null", env ? env : "", broker, args, tmpdir,
             tmpdir);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

static char *slurp(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return strdup("");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    size_t got = fread(s, 1, (size_t)n, f);
    s[got] = '\0';
    fclose(f);
    return s;
}

static int contains(const char *file, const char *needle)
{
    char *s = slurp(file);
    int r = strstr(s, needle) != NULL;
    if (!r) fprintf(stderr, "---- %s lacks '%s':\n%.2000s\n----\n", file, needle, s);
    free(s);
    return r;
}

static int strstr_file(const char *file, const char *needle)
{
    char *s = slurp(file);
    int r = strstr(s, needle) != NULL;
    free(s);
    return r;
}

static void copy_file(const char *from, const char *to)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
    REQUIRE(system(cmd) == 0);
}

static void test_knobs(void)
{
    CHECK_EQ(sh(NULL, "--help"), 0);
    const char *vars[] = {"MB_IPC_MODE", "MB_TRANSPORT", "MB_BATCH_CAPACITY", "MB_PAYLOAD_DTYPE", "MB_STATS"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) CHECK(contains("out", vars[i]));
    CHECK_EQ(sh(NULL, "run --ipc-mode fast"), 2);
    CHECK(contains("err", "auto, batched, stream"));
    CHECK_EQ(sh("MB_PAYLOAD_DTYPE=f64", "run"), 2);
    CHECK(contains("err", "MB_PAYLOAD_DTYPE"));
    CHECK(contains("err", "bf16"));
    CHECK_EQ(sh("MB_IPC_MODE=bogus", "run --ipc-mode stream --help"), 0); /* the flag shadows the variable */
    CHECK_EQ(sh(NULL, "run --batch-capacity 5000"), 2);
    CHECK(contains("err", "4096"));
}

static void test_bad_checkpoints(const char *fixture)
{
    char dir[512], path[600], from[1100];
    /* Truncated weights. */
    snprintf(dir, sizeof dir, "%s/truncated", tmpdir);
    mkdir(dir, 0700);
    snprintf(from, sizeof from, "%s/config.json", fixture);
    snprintf(path, sizeof path, "%s/config.json", dir);
    copy_file(from, path);
    snprintf(from, sizeof from, "%s/model.safetensors", fixture);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    copy_file(from, path);
    struct stat sb;
    REQUIRE(stat(path, &sb) == 0);
    REQUIRE(truncate(path, sb.st_size / 2) == 0);
    char args[1024];
    snprintf(args, sizeof args, "run --model '%s' --prompt-len 4", dir);
    CHECK_EQ(sh(NULL, args), 1);
    CHECK(contains("err", "model.safetensors"));
    /* Unknown architecture. */
    snprintf(dir, sizeof dir, "%s/llama", tmpdir);
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fprintf(f, "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"hidden_size\":64,"
               "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"vocab_size\":32}");
    fclose(f);
    snprintf(from, sizeof from, "%s/model.safetensors", fixture);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    copy_file(from, path);
    snprintf(args, sizeof args, "run --model '%s' --prompt-len 4", dir);
    CHECK_EQ(sh(NULL, args), 1);
    CHECK(contains("err", "LlamaForCausalLM"));
}

static void test_fixture_run(const char *fixture)
{
    char refpath[600], err[512];
    snprintf(refpath, sizeof refpath, "%s/reference.safetensors", fixture);
    mb_reference ref;
    REQUIRE(mb_reference_init(&ref, refpath, err, sizeof err) == MB_STATUS_OK);
    char ids_path[400];
    snprintf(ids_path, sizeof ids_path, "%s/ids.txt", tmpdir);
    FILE *f = fopen(ids_path, "w");
    REQUIRE(f);
    for (uint32_t i = 0; i < ref.n_tokens; i++) fprintf(f, "%d%c", ref.input_ids[i], i + 1 < ref.n_tokens ? ',' : '\n');
    fclose(f);
    char args[2048];
    snprintf(args, sizeof args,
             "run --model '%s' --worker cpu,threads=1 --worker cpu,threads=1 --input-ids '%s' --prefill %u "
             "--ipc-mode batched --logits-out '%s/logits.safetensors' --stats --stats-json '%s/stats.json' "
             "--step-timing '%s/steps.jsonl' --threads 1",
             fixture, ids_path, ref.prompt_len, tmpdir, tmpdir, tmpdir);
    int rc = sh(NULL, args);
    CHECK_EQ(rc, 0);
    if (rc != 0) {
        char *e = slurp("err");
        fprintf(stderr, "%s\n", e);
        free(e);
    }
    char lpath[600];
    snprintf(lpath, sizeof lpath, "%s/logits.safetensors", tmpdir);
    mb_safetensors *st = NULL;
    if (mb_safetensors_open(lpath, &st, err, sizeof err) == MB_STATUS_OK) {
        const mb_st_tensor *t = mb_safetensors_find(st, "logits");
        CHECK(t != NULL);
        if (t) {
            const float *got = (const float *)t->data;
            double max_ref = 0, max_diff = 0;
            for (size_t i = 0; i < (size_t)ref.n_tokens * ref.vocab; i++) {
                max_ref = fmax(max_ref, fabs(ref.logits[i]));
                max_diff = fmax(max_diff, fabs((double)got[i] - ref.logits[i]));
            }
            printf("cli fixture run: max|diff|/max|ref| = %.2e\n", max_diff / max_ref);
            CHECK(max_diff <= 1e-3 * max_ref);
        }
        mb_safetensors_close(st);
    } else {
        CHECK_MSG(0, "cannot read --logits-out file: %s", err);
    }
    char *js = slurp("stats.json");
    cJSON *root = cJSON_Parse(js);
    CHECK(root != NULL);
    cJSON *backends = root ? cJSON_GetObjectItem(root, "backends") : NULL;
    CHECK(cJSON_IsArray(backends) && cJSON_GetArraySize(backends) == 2);
    cJSON *b;
    cJSON_ArrayForEach(b, backends)
    {
        cJSON *pre = cJSON_GetObjectItem(b, "prefill"), *dec = cJSON_GetObjectItem(b, "decode");
        CHECK(pre && dec);
        if (pre && dec) {
            CHECK(cJSON_GetObjectItem(pre, "calls")->valuedouble > 0);
            CHECK(cJSON_GetObjectItem(dec, "calls")->valuedouble > 0);
            CHECK(cJSON_GetObjectItem(pre, "bytes_sent")->valuedouble > 0);
            CHECK(cJSON_GetObjectItem(dec, "bytes_received")->valuedouble > 0);
        }
    }
    cJSON_Delete(root);
    free(js);
    char *steps = slurp("steps.jsonl");
    int lines = 0;
    for (char *p = steps; *p; p++) lines += *p == '\n';
    CHECK_EQ(lines, 1 + (int)(ref.n_tokens - ref.prompt_len)); /* prompt fits one chunk */
    free(steps);
    CHECK(contains("out", "prefill"));
    mb_reference_fini(&ref);
}

static void test_embedded_default(void)
{
    /* Under TSan the embedded model's single-threaded build alone takes
     * half a minute, and its run takes the session path the fixture runs
     * (and test_parity_workers in every mode) already take there. */
    if (MB_TEST_TSAN) return;
    int rc = sh(NULL, "run --prompt-len 8 --gen 3");
    CHECK_EQ(rc, 0);
    CHECK(contains("out", "generated:"));
    CHECK(contains("out", "decode"));
    CHECK(contains("out", "IPC statistics")); /* on by default for the embedded model */
    CHECK(contains("out", "coord ipc"));
    CHECK_EQ(sh(NULL, "run --prompt-len 8 --gen 3 --quiet"), 0);
    CHECK(!strstr_file("out", "IPC statistics"));
    CHECK_EQ(sh(NULL, "run --prompt-len 8 --gen 3 --no-stats"), 0);
    CHECK(!strstr_file("out", "IPC statistics"));
    CHECK_EQ(sh(NULL, "run --prompt hello"), 1);
    CHECK(contains("err", "needs a tokenizer"));
}

/* What the issue found when the CLI was tried as a new user would. */
static void test_truthful(const char *fixture)
{
    char args[2048];
    CHECK_EQ(sh(NULL, "--version"), 0);
    CHECK(contains("out", "moe-broker 0."));
    CHECK_EQ(sh(NULL, "run --input-ids 1,-2,3"), 2);
    CHECK(contains("err", "negative id at byte 2"));
    CHECK_EQ(sh(NULL, "run --input-ids abc"), 2);
    CHECK(contains("err", "unexpected 'a' at byte 0"));
    CHECK_EQ(sh(NULL, "run --input-ids 1,,3"), 2);
    CHECK(contains("err", "empty entry"));
    CHECK_EQ(sh(NULL, "run --input-ids 1,2 --prompt-len 4"), 2);
    CHECK(contains("err", "--input-ids and --prompt-len exclude each other"));
    /* Output paths fail before anything starts. */
    snprintf(args, sizeof args, "run --model '%s' --prompt-len 4 --stats-json /nonexistent/x.json", fixture);
    CHECK_EQ(sh(NULL, args), 1);
    CHECK(contains("err", "no directory '/nonexistent'"));
    CHECK(!strstr_file("err", "starting backend"));
    /* The model's context (max_position_embeddings 256 in the fixtures). */
    snprintf(args, sizeof args, "run --model '%s' --prompt-len 300", fixture);
    CHECK_EQ(sh(NULL, args), 1);
    CHECK(contains("err", "max_position_embeddings 256"));
    CHECK(!strstr_file("err", "starting backend"));
    snprintf(args, sizeof args, "run --model '%s' --prompt-len 250 --gen 10", fixture);
    CHECK_EQ(sh(NULL, args), 1);
    /* The placement table's device column is whole. */
    snprintf(args, sizeof args, "run --model '%s' --prompt-len 4 --worker cpu,threads=1", fixture);
    CHECK_EQ(sh(NULL, args), 0);
    CHECK(contains("err", " threads, ")); /* "..., 1 threads, <isa>" continues past the count */
    /* moe-worker says what is missing. */
    const char *worker = getenv("MB_WORKER_BIN");
    if (worker) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "'%s' >'%s/out' 2>'%s/err'", worker, tmpdir, tmpdir);
        int rc = system(cmd);
        CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 2);
        CHECK(contains("err", "--listen is missing"));
    }
}

static double json_number(const char *file, const char *phase, const char *key)
{
    char *js = slurp(file);
    cJSON *root = cJSON_Parse(js);
    free(js);
    const cJSON *v = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(root, "steps"), phase), key);
    double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
    cJSON_Delete(root);
    return d;
}

static void test_text(const char *data)
{
    char dir[512], args[4096];
    snprintf(dir, sizeof dir, "%s/textmodel", tmpdir);
    mb_test_text_model(data, dir);
    const char *w = "--worker cpu,threads=1 --threads 1";

    /* Greedy is reproducible; text on stdout, the rest on stderr. */
    snprintf(args, sizeof args, "run --model '%s' %s --prompt 'Hello' --gen 12 --temperature 0", dir, w);
    CHECK_EQ(sh(NULL, args), 0);
    char *first = slurp("out");
    CHECK(first[0] != '\0' && !strstr(first, "prompt:") && !strstr(first, "IPC"));
    CHECK(contains("err", "prompt: 5 tokens"));
    CHECK(contains("err", "generated: 12 tokens"));
    CHECK(contains("err", "stopped: --gen reached"));
    CHECK_EQ(sh(NULL, args), 0);
    char *second = slurp("out");
    CHECK_MSG(strcmp(first, second) == 0, "greedy differs:\n%s\n%s", first, second);
    free(second);

    /* The same prompt as ids gives the greedy ids; naming the second one EOS
     * stops the text after the first. */
    snprintf(args, sizeof args, "run --model '%s' %s --input-ids 72,101,108,108,111 --gen 3 --temperature 0",
             dir, w);
    CHECK_EQ(sh(NULL, args), 0);
    char *ids = slurp("out");
    int g0 = -1, g1 = -1;
    CHECK(sscanf(strstr(ids, "generated:") ? strstr(ids, "generated:") : "", "generated: %d %d", &g0, &g1) == 2);
    free(ids);
    printf("greedy ids after the prompt: %d %d\n", g0, g1);
    if (g0 != g1 && g1 >= 0) {
        char gen_cfg[1024];
        snprintf(gen_cfg, sizeof gen_cfg, "%s/generation_config.json", dir);
        FILE *f = fopen(gen_cfg, "w");
        REQUIRE(f);
        fprintf(f, "{\"eos_token_id\": [%d]}\n", g1);
        fclose(f);
        snprintf(args, sizeof args, "run --model '%s' %s --prompt 'Hello' --temperature 0", dir, w);
        CHECK_EQ(sh(NULL, args), 0);
        CHECK(contains("err", "generated: 1 tokens"));
        CHECK(contains("err", "stopped: end of sequence"));
        unlink(gen_cfg);
    }

    /* Sampling: the seed decides. */
    snprintf(args, sizeof args, "run --model '%s' %s --prompt 'Hello' --gen 24 --temperature 1.5 --top-k 0 "
             "--top-p 1 --min-p 0 --seed 5", dir, w);
    CHECK_EQ(sh(NULL, args), 0);
    char *s5 = slurp("out");
    CHECK_EQ(sh(NULL, args), 0);
    char *s5b = slurp("out");
    CHECK(strcmp(s5, s5b) == 0);
    snprintf(args, sizeof args, "run --model '%s' %s --prompt 'Hello' --gen 24 --temperature 1.5 --top-k 0 "
             "--top-p 1 --min-p 0 --seed 6", dir, w);
    CHECK_EQ(sh(NULL, args), 0);
    char *s6 = slurp("out");
    CHECK(strcmp(s5, s6) != 0);
    free(s5);
    free(s5b);
    free(s6);

    /* --chat renders the template; the prompt is its token count. */
    snprintf(args, sizeof args, "run --model '%s' %s --chat 'Hi' --gen 4 --temperature 0", dir, w);
    CHECK_EQ(sh(NULL, args), 0);
    const char *turn1 = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    char want[64];
    snprintf(want, sizeof want, "prompt: %d tokens", mb_test_count_tokens(turn1));
    CHECK(contains("err", want));

    /* chat over a pipe: the second turn prefills only what the template
     * adds after the first reply, which stays in the KV cache. */
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "printf 'Hi\\nAgain\\n' | '%s' chat --model '%s' %s --gen 4 --temperature 0 "
             "--stats-json '%s/chat.json' >'%s/out' 2>'%s/err'",
             broker, dir, w, tmpdir, tmpdir, tmpdir);
    int rc = system(cmd);
    CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 0);
    const char *delta2 = "<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n";
    double prefilled = json_number("chat.json", "prefill", "tokens");
    CHECK_MSG(prefilled == mb_test_count_tokens(turn1) + mb_test_count_tokens(delta2), "prefilled %.0f tokens, expected %d",
              prefilled, mb_test_count_tokens(turn1) + mb_test_count_tokens(delta2));
    CHECK_EQ((int)json_number("chat.json", "decode", "count"), 8);
    printf("chat: 2 turns, %.0f tokens prefilled (the second turn only its delta)\n", prefilled);
    free(first);
}

int main(void)
{
    broker = getenv("MB_BROKER_BIN");
    const char *data = getenv("MB_TEST_DATA");
    if (!broker || !data) MB_TEST_SKIP("MB_BROKER_BIN / MB_TEST_DATA not set");
    snprintf(tmpdir, sizeof tmpdir, "/tmp/mb-cli-XXXXXX");
    REQUIRE(mkdtemp(tmpdir));
    char fixture[512] = "";
    DIR *d = opendir(data);
    REQUIRE(d);
    struct dirent *de;
    while ((de = readdir(d))) {
        char p[600];
        struct stat sb;
        snprintf(p, sizeof p, "%s/%s/reference.safetensors", data, de->d_name);
        if (de->d_name[0] != '.' && stat(p, &sb) == 0) {
            snprintf(fixture, sizeof fixture, "%s/%s", data, de->d_name);
            break;
        }
    }
    closedir(d);
    REQUIRE(fixture[0]);
    test_knobs();
    test_bad_checkpoints(fixture);
    test_fixture_run(fixture);
    test_embedded_default();
    test_truthful(fixture);
    test_text(data);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return mb_test_finish("test_cli");
}
