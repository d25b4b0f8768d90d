/* The moe-broker command line, run as a user would: --help, invalid knob
 * values, a truncated checkpoint, an unknown architecture, a fixture run with
 * --input-ids/--prefill/--logits-out/--stats-json/--step-timing checked
 * against transformers' logits, and the embedded default. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker/safetensors.h"
#include "tests/testutil.h"

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
    int rc = sh(NULL, "run --prompt-len 8 --gen 3");
    CHECK_EQ(rc, 0);
    CHECK(contains("out", "generated:"));
    CHECK(contains("out", "decode"));
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
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return mb_test_finish("test_cli");
}
