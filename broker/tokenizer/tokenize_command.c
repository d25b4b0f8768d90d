/* The tokenize subcommand: argument parsing, reading the text (or ids), and
 * printing ids (or text). */
#include "broker/tokenizer/tokenize_command.h"

#include <getopt.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "broker/gguf.h"
#include "broker/tokenizer/tokenizer.h"

void mb_tokenize_command_usage(FILE *f)
{
    fprintf(f,
            "usage: moe-broker tokenize (--model DIR|FILE.gguf | --tokenizer FILE)\n"
            "                           (--text TEXT | --file PATH) [OPTION]...\n\n"
            "Encodes text into token ids with the checkpoint's tokenizer.json (Hugging Face\n"
            "tokenizers' ids) and prints them as [id, id, ...]; with --decode, reads ids\n"
            "(separated by commas, spaces or brackets) and prints the text.\n\n"
            "  --model DIR          checkpoint folder holding tokenizer.json, or a GGUF file\n"
            "                       (its tokenizer.ggml.* metadata)\n"
            "  --tokenizer FILE     a tokenizer.json file (its folder's tokenizer_config.json\n"
            "                       is read too when present)\n"
            "  --text TEXT          the input text (or ids with --decode)\n"
            "  --file PATH          read the input from PATH ('-' = stdin)\n"
            "  --decode             the input is ids: print their text\n"
            "  --no-special         encode without the post-processor's tokens (BOS...)\n"
            "  --skip-special       decode without special tokens\n"
            "  --tokens             print one line per token: id and its text\n"
            "  -h, --help           print this help and exit\n");
}

static char *read_all(const char *path, size_t *bytes)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0, got;
    char *buf = malloc(cap);
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *grown = cap < (1u << 30) ? realloc(buf, cap *= 2) : NULL;
            if (!grown) {
                free(buf);
                buf = NULL;
            }
            buf = grown;
        }
    }
    if (buf && ferror(f)) {
        free(buf);
        buf = NULL;
    }
    if (f != stdin) fclose(f);
    *bytes = n;
    return buf;
}

/* Ids separated by commas, white space or brackets; 0 on success. */
static int parse_ids(const char *s, size_t n, int32_t **ids, size_t *n_ids)
{
    static const char seps[] = "[], \t\r\n";
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        int digit = s[i] >= '0' && s[i] <= '9';
        if (!digit && (s[i] == '\0' || !strchr(seps, s[i]))) return -1;
        if (digit && (i == 0 || s[i - 1] < '0' || s[i - 1] > '9')) count++;
    }
    int32_t *v = count ? malloc(count * sizeof *v) : NULL;
    if (!v) return -1;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] < '0' || s[i] > '9') {
            i++;
            continue;
        }
        uint64_t x = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            x = x * 10 + (uint64_t)(s[i++] - '0');
            if (x > INT32_MAX) {
                free(v);
                return -1;
            }
        }
        v[k++] = (int32_t)x;
    }
    *ids = v;
    *n_ids = count;
    return 0;
}

static void print_tokens(const mb_tokenizer *tok, const int32_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char *text = NULL;
        size_t len = 0;
        if (mb_tokenizer_decode(tok, &ids[i], 1, 0, &text, &len) != MB_STATUS_OK) return;
        printf("%6d -> '%s'\n", ids[i], text);
        free(text);
    }
}

int mb_tokenize_command_run(int argc, char **argv)
{
    enum { OPT_MODEL = 256, OPT_TOKENIZER, OPT_TEXT, OPT_FILE, OPT_DECODE, OPT_NO_SPECIAL,
           OPT_SKIP_SPECIAL, OPT_TOKENS };
    static const struct option longs[] = {
        {"model", required_argument, NULL, OPT_MODEL},
        {"tokenizer", required_argument, NULL, OPT_TOKENIZER},
        {"text", required_argument, NULL, OPT_TEXT},
        {"file", required_argument, NULL, OPT_FILE},
        {"decode", no_argument, NULL, OPT_DECODE},
        {"no-special", no_argument, NULL, OPT_NO_SPECIAL},
        {"skip-special", no_argument, NULL, OPT_SKIP_SPECIAL},
        {"tokens", no_argument, NULL, OPT_TOKENS},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL, *text = NULL, *file = NULL;
    int decode = 0, add_special = 1, skip_special = 0, show_tokens = 0, c;
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        switch (c) {
        case OPT_MODEL:
        case OPT_TOKENIZER:
            if (path) {
                fprintf(stderr, "moe-broker tokenize: give one of --model and --tokenizer\n");
                return 2;
            }
            path = optarg;
            break;
        case OPT_TEXT: text = optarg; break;
        case OPT_FILE: file = optarg; break;
        case OPT_DECODE: decode = 1; break;
        case OPT_NO_SPECIAL: add_special = 0; break;
        case OPT_SKIP_SPECIAL: skip_special = 1; break;
        case OPT_TOKENS: show_tokens = 1; break;
        case 'h': mb_tokenize_command_usage(stdout); return 0;
        default:
            fprintf(stderr, "moe-broker tokenize: bad or incomplete option '%s' (see --help)\n",
                    argv[optind > 1 ? optind - 1 : 1]);
            return 2;
        }
    }
    if (!path || (!text) == (!file) || optind < argc) {
        fprintf(stderr, "moe-broker tokenize: needs --model DIR or --tokenizer FILE, and one of "
                        "--text and --file (see --help)\n");
        return 2;
    }

    char err[512];
    mb_tokenizer *tok = NULL;
    char *input = NULL, *out_text = NULL;
    int32_t *ids = NULL;
    size_t n_input = 0, n_ids = 0, n_out = 0;
    int rc = 1;
    const size_t plen = strlen(path);
    mb_status st;
    if (plen > 5 && !strcmp(path + plen - 5, ".gguf")) {
        mb_gguf *g = NULL;
        st = mb_gguf_open(path, &g, err, sizeof err);
        if (st == MB_STATUS_OK) st = mb_tokenizer_load_gguf(g, &tok, err, sizeof err);
        mb_gguf_close(g);
    } else {
        st = mb_tokenizer_load(path, &tok, err, sizeof err);
    }
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker tokenize: %s\n", err[0] ? err : mb_status_str(st));
        goto done;
    }
    if (file) {
        input = read_all(file, &n_input);
        if (!input) {
            fprintf(stderr, "moe-broker tokenize: cannot read %s\n", file);
            goto done;
        }
    }
    const char *in = file ? input : text;
    if (!file) n_input = strlen(text);
    if (decode) {
        if (parse_ids(in, n_input, &ids, &n_ids)) {
            fprintf(stderr, "moe-broker tokenize: --decode needs ids such as '[1, 2, 3]'\n");
            rc = 2;
            goto done;
        }
        st = mb_tokenizer_decode(tok, ids, n_ids, skip_special, &out_text, &n_out);
        if (st == MB_STATUS_OK) fwrite(out_text, 1, n_out, stdout), putchar('\n');
    } else {
        st = mb_tokenizer_encode(tok, in, n_input, add_special, &ids, &n_ids);
        if (st == MB_STATUS_OK && show_tokens) {
            print_tokens(tok, ids, n_ids);
        } else if (st == MB_STATUS_OK) {
            putchar('[');
            for (size_t i = 0; i < n_ids; i++)
                printf("%s%d", i ? ", " : "", ids[i]);
            printf("]\n");
        }
    }
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker tokenize: %s\n", mb_status_str(st));
        goto done;
    }
    rc = 0;
done:
    free(input);
    free(out_text);
    free(ids);
    mb_tokenizer_destroy(tok);
    return rc;
}
