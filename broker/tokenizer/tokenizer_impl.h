/* Private to broker/tokenizer/: the loaded tokenizer's tables and the helpers
 * its files share (growable buffers, UTF-8, the byte-level alphabet, the
 * pipeline stages). Nothing outside this folder includes it. */
#ifndef MB_BROKER_TOKENIZER_IMPL_H
#define MB_BROKER_TOKENIZER_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/tokenizer/tokenizer.h"

/* A growable byte or id buffer; zero-initialised is empty. */
typedef struct {
    char *data;
    size_t len, cap;
} mb_tok_buf;

typedef struct {
    int32_t *data;
    size_t len, cap;
} mb_tok_ids;

/* Appends n bytes / one id; 0 on success, -1 when out of memory. */
int mb_tok_buf_put(mb_tok_buf *b, const void *p, size_t n);
int mb_tok_ids_put(mb_tok_ids *v, int32_t id);

/* UTF-8: the length of the sequence a lead byte starts (1 for invalid lead
 * bytes, which never reach it: text is made valid first). */
static inline size_t mb_tok_utf8_len(unsigned char c)
{
    return c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
}

/* Appends src[0..n) to out with each maximal invalid UTF-8 subsequence
 * replaced by U+FFFD (the WHATWG and Rust from_utf8_lossy rule). With
 * final = 0 a trailing incomplete sequence is not consumed: the return value
 * is the number of bytes consumed (n when final). Returns -1 (as SIZE_MAX)
 * when out of memory. */
size_t mb_tok_utf8_lossy(const char *src, size_t n, int final, mb_tok_buf *out);

/* The GPT-2 byte-level alphabet: each byte's character (UTF-8, 1 or 2 bytes)
 * and, for decoding, each code point's byte (-1 outside the alphabet). */
void mb_tok_byte_level_char(unsigned char byte, char out[2], size_t *len);
int mb_tok_byte_level_byte(uint32_t code_point);

/* Decodes one UTF-8 character of valid text at s (n bytes left) into a code
 * point; *len receives its byte length. */
uint32_t mb_tok_utf8_decode(const char *s, size_t n, size_t *len);

typedef enum {
    MB_TOK_NORM_NFC,
    MB_TOK_NORM_NFD,
    MB_TOK_NORM_NFKC,
    MB_TOK_NORM_NFKD,
    MB_TOK_NORM_LOWERCASE,
    MB_TOK_NORM_PREPEND, /* a = the prefix */
    MB_TOK_NORM_REPLACE, /* re (or literal a) -> b */
    MB_TOK_NORM_STRIP,   /* left, right: strip Unicode white space */
} mb_tok_norm_kind;

typedef struct {
    mb_tok_norm_kind kind;
    char *a, *b; /* owned, NUL-terminated */
    size_t a_len, b_len;
    pcre2_code *re; /* Replace with a Regex pattern; NULL for a String one */
    int left, right;
} mb_tok_norm;

/* How Split treats the matches (Hugging Face's SplitDelimiterBehavior). */
typedef enum {
    MB_TOK_SPLIT_REMOVED,
    MB_TOK_SPLIT_ISOLATED,
    MB_TOK_SPLIT_MERGED_WITH_PREVIOUS,
    MB_TOK_SPLIT_MERGED_WITH_NEXT,
    MB_TOK_SPLIT_CONTIGUOUS,
} mb_tok_split_behavior;

typedef enum {
    MB_TOK_PRE_SPLIT,      /* re, behavior, invert */
    MB_TOK_PRE_BYTE_LEVEL, /* add_prefix_space, re when use_regex */
    MB_TOK_PRE_METASPACE,  /* a = replacement, prepend_scheme, split */
    MB_TOK_PRE_DIGITS,     /* re = \p{N}, behavior isolated or contiguous */
} mb_tok_pre_kind;

typedef enum {
    MB_TOK_PREPEND_ALWAYS,
    MB_TOK_PREPEND_NEVER,
    MB_TOK_PREPEND_FIRST,
} mb_tok_prepend_scheme;

typedef struct {
    mb_tok_pre_kind kind;
    pcre2_code *re; /* owned; NULL when the stage has no pattern */
    mb_tok_split_behavior behavior;
    int invert;
    int add_prefix_space;
    char *a; /* Metaspace replacement, owned */
    size_t a_len;
    mb_tok_prepend_scheme prepend_scheme;
    int split;
} mb_tok_pre;

typedef enum {
    MB_TOK_DEC_BYTE_LEVEL,
    MB_TOK_DEC_REPLACE,       /* a -> b */
    MB_TOK_DEC_BYTE_FALLBACK, /* <0xXX> runs become text, invalid runs U+FFFD per byte */
    MB_TOK_DEC_FUSE,
    MB_TOK_DEC_STRIP,     /* a = content char, start, stop */
    MB_TOK_DEC_METASPACE, /* a = replacement, prepend_scheme */
} mb_tok_dec_kind;

typedef struct {
    mb_tok_dec_kind kind;
    char *a, *b;
    size_t a_len, b_len;
    uint32_t start, stop;
    mb_tok_prepend_scheme prepend_scheme;
} mb_tok_dec;

typedef struct {
    char *text; /* owned */
    size_t len;
    int32_t id;
    uint8_t special, normalized, lstrip, rstrip, single_word;
} mb_tok_added;

/* Added tokens matched in one pass (raw text or normalized text): for each
 * first byte, indices into mb_tokenizer.added, longest first. */
typedef struct {
    uint32_t *order; /* owned */
    uint32_t first[257]; /* order[first[b] .. first[b + 1]) start with byte b */
} mb_tok_added_set;

#define MB_TOK_MAX_STAGES 16
#define MB_TOK_CP_TABLE 0x800 /* code points with a direct id table */

struct mb_tokenizer {
    /* The model's vocabulary: token text by id, and text -> id. */
    char *arena;
    size_t arena_len, arena_cap;
    uint32_t n_ids;     /* one more than the largest id */
    uint64_t *text_ref; /* [n_ids]: offset << 24 | length, UINT64_MAX = none */
    int32_t *slots;     /* [n_slots] ids, -1 empty: hash of the token text */
    uint32_t n_slots;
    int32_t cp_id[MB_TOK_CP_TABLE]; /* single-character tokens, -1 none */
    int32_t byte_id[256];           /* "<0xXX>" tokens, -1 none */

    /* Merges: (left id << 32 | right id) -> rank << 32 | merged id. */
    uint64_t *merge_keys, *merge_vals;
    uint32_t n_merge_slots;

    int32_t unk_id; /* -1 none */
    int fuse_unk, byte_fallback, ignore_merges;

    mb_tok_added *added;
    uint32_t n_added;
    int32_t *added_of_id; /* [n_ids] index into added, -1 none */
    mb_tok_added_set raw_set, norm_set;

    mb_tok_norm norm[MB_TOK_MAX_STAGES];
    uint32_t n_norm;
    mb_tok_pre pre[MB_TOK_MAX_STAGES];
    uint32_t n_pre;
    mb_tok_dec dec[MB_TOK_MAX_STAGES];
    uint32_t n_dec;
    int has_decoder; /* 0: tokens joined with ' ' */

    int32_t *post_pre, *post_post; /* ids around the sequence when add_special */
    uint32_t n_post_pre, n_post_post;

    int32_t bos_id, eos_id;
};

/* Model vocabulary lookup: the id of text[0..n), or -1. */
int32_t mb_tok_vocab_find(const mb_tokenizer *tok, const char *text, size_t n);

/* The merged id and rank of the pair (left, right); 0 when they merge. */
int mb_tok_merge_find(const mb_tokenizer *tok, int32_t left, int32_t right, uint32_t *rank,
                      int32_t *merged);

/* A list of pieces over one buffer: the pre-tokenizers' working form. */
typedef struct {
    uint32_t off, len;
    uint8_t at_origin; /* starts at offset 0 of the input sequence */
} mb_tok_span;

typedef struct {
    mb_tok_buf text;
    mb_tok_span *spans;
    size_t n, cap;
} mb_tok_pieces;

typedef struct {
    int32_t id; /* -1: merged into its left neighbour */
    int32_t prev, next;
} mb_tok_sym;

typedef struct {
    uint32_t rank, pos;
    int32_t merged;
} mb_tok_merge;

typedef struct {
    uint64_t hash; /* 0 = empty slot */
    uint32_t key_off, key_len, ids_off, n_ids;
} mb_tok_cache_slot;

typedef struct {
    uint32_t start, end;
    uint8_t is_match;
} mb_tok_seg;

/* Per-call working memory of one encode, reused across its words; zeroed
 * is empty. One thread at a time. */
typedef struct {
    pcre2_match_data *md;
    mb_tok_pieces pieces[3];
    mb_tok_buf buf[4]; /* 0: clean input, 3: normalized text, 1 and 2: stage temporaries */
    mb_tok_seg *segs;
    size_t segs_cap;
    mb_tok_sym *sym;
    size_t sym_cap;
    mb_tok_merge *heap;
    size_t heap_cap;
    mb_tok_cache_slot *cache; /* word -> ids, for words up to 256 bytes */
    uint32_t cache_slots, cache_used;
    mb_tok_buf cache_keys;
    mb_tok_ids cache_ids;
} mb_tok_scratch;

void mb_tok_scratch_fini(mb_tok_scratch *sc);
void mb_tok_pieces_free(mb_tok_pieces *p);

/* BPE of one pre-tokenized word (valid UTF-8), appending its ids to out.
 * Returns MB_STATUS_OK or MB_STATUS_NOMEM. */
mb_status mb_tok_bpe_word(const mb_tokenizer *tok, mb_tok_scratch *sc, const char *word, size_t n,
                          mb_tok_ids *out);

/* Applies the normalizers to text[0..n) into out (cleared first).
 * MB_STATUS_OK or MB_STATUS_NOMEM. */
mb_status mb_tok_normalize(const mb_tokenizer *tok, mb_tok_scratch *sc, const char *text, size_t n,
                           mb_tok_buf *out);

/* Splits normalized text into pieces (out cleared first; out is one of
 * sc->pieces, the other is used as a temporary). at_origin: the text starts
 * the input sequence (Metaspace's prepend_scheme "first"). */
mb_status mb_tok_pretokenize(const mb_tokenizer *tok, mb_tok_scratch *sc, const char *text,
                             size_t n, int at_origin, mb_tok_pieces **out);

/* Unicode White_Space, as Rust's char::is_whitespace. */
int mb_tok_is_space(uint32_t cp);

/* Parsing of the pipeline stages (tokenizer_stages.c): each fills tok from
 * the tokenizer.json member (NULL or JSON null = none). */
struct cJSON;
mb_status mb_tok_parse_normalizer(mb_tokenizer *tok, const struct cJSON *j, char *err,
                                  size_t err_cap);
mb_status mb_tok_parse_pre_tokenizer(mb_tokenizer *tok, const struct cJSON *j, char *err,
                                     size_t err_cap);
mb_status mb_tok_parse_decoder(mb_tokenizer *tok, const struct cJSON *j, char *err,
                               size_t err_cap);
mb_status mb_tok_parse_post_processor(mb_tokenizer *tok, const struct cJSON *j, char *err,
                                      size_t err_cap);

/* Builds a tokenizer from a parsed tokenizer.json object (model, added
 * tokens, pipeline stages; BOS/EOS left -1 for the caller): the one loader
 * behind tokenizer.json files and GGUF metadata. Errors as
 * mb_tokenizer_load_json. */
mb_status mb_tok_build(const struct cJSON *root, mb_tokenizer **out, char *err, size_t err_cap);

/* Writes one formatted line into err when err_cap > 0. */
void mb_tok_errf(char *err, size_t err_cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
