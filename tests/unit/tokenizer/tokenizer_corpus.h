/* The tokenizer tests' corpus (tests/data/tokenizer/corpus.txt) read into
 * cases exactly as tests/tokenizer/ref/encode.js reads it: every line that
 * is neither empty nor a '#' comment, with \\ \n \r \t \xNN unescaped, then
 * the whole file's bytes as the last case. */
#ifndef MB_TESTS_TOKENIZER_CORPUS_H
#define MB_TESTS_TOKENIZER_CORPUS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *bytes;
    size_t len;
} mb_corpus_case;

typedef struct {
    mb_corpus_case *cases;
    size_t n;
    char *raw;
    size_t raw_len;
} mb_corpus;

static int mb_corpus_hex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                        : c >= 'A' && c <= 'F'   ? c - 'A' + 10
                                                                 : -1;
}

/* Returns 0 on success; exits the test on allocation failure. */
static int mb_corpus_load(const char *path, mb_corpus *c)
{
    memset(c, 0, sizeof *c);
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    c->raw = malloc((size_t)size + 1);
    if (!c->raw || fread(c->raw, 1, (size_t)size, f) != (size_t)size) exit(1);
    fclose(f);
    c->raw_len = (size_t)size;
    c->cases = calloc(c->raw_len + 2, sizeof *c->cases);
    if (!c->cases) exit(1);
    size_t start = 0;
    for (size_t i = 0; i <= c->raw_len; i++) {
        if (i < c->raw_len && c->raw[i] != '\n') continue;
        const char *line = c->raw + start;
        size_t n = i - start;
        start = i + 1;
        if (n == 0 || line[0] == '#') continue;
        char *out = malloc(n + 1);
        size_t k = 0;
        if (!out) exit(1);
        for (size_t j = 0; j < n; j++) {
            if (line[j] != '\\' || j + 1 >= n) {
                out[k++] = line[j];
                continue;
            }
            char e = line[++j];
            if (e == 'n') out[k++] = '\n';
            else if (e == 'r') out[k++] = '\r';
            else if (e == 't') out[k++] = '\t';
            else if (e == '\\') out[k++] = '\\';
            else if (e == 'x' && j + 2 < n && mb_corpus_hex(line[j + 1]) >= 0 &&
                     mb_corpus_hex(line[j + 2]) >= 0) {
                out[k++] = (char)(mb_corpus_hex(line[j + 1]) << 4 | mb_corpus_hex(line[j + 2]));
                j += 2;
            } else {
                out[k++] = '\\';
                out[k++] = e;
            }
        }
        out[k] = '\0';
        c->cases[c->n++] = (mb_corpus_case){out, k};
    }
    char *whole = malloc(c->raw_len + 1);
    if (!whole) exit(1);
    memcpy(whole, c->raw, c->raw_len);
    whole[c->raw_len] = '\0';
    c->cases[c->n++] = (mb_corpus_case){whole, c->raw_len};
    return 0;
}

static void mb_corpus_free(mb_corpus *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->cases[i].bytes);
    free(c->cases);
    free(c->raw);
    memset(c, 0, sizeof *c);
}

#endif
