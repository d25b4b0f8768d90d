/* The tokenizer from GGUF metadata: the fixtures' own (tests/data/gguf: a
 * GPT-2 byte-level vocabulary of 256 byte tokens and 8 merges, [PADi]
 * UNUSED, <s> and </s> CONTROL, written by gguf-py as llama.cpp's converter
 * does) and hostile metadata, each refused with a message naming the key.
 * Parity with Hugging Face on real vocabularies converted to GGUF lives in
 * tests/integration/tokenizer. */
#include <stdio.h>
#include <string.h>

#include "broker/gguf.h"
#include "broker/tokenizer/tokenizer.h"
#include "tests/testutil.h"
#include "tests/unit/model/gguf_testutil.h"
#include "tests/unit/tokenizer/tokenizer_corpus.h"

/* decode(encode(text)) == text on every corpus case (byte-level covers
 * every byte, so valid UTF-8 always comes back). */
static void check_round_trips(const mb_tokenizer *tok, const mb_corpus *corpus)
{
    for (size_t k = 0; k < corpus->n; k++) {
        int32_t *ids = NULL;
        size_t n = 0, bytes = 0;
        char *text = NULL;
        REQUIRE(mb_tokenizer_encode(tok, corpus->cases[k].bytes, corpus->cases[k].len, 0, &ids, &n) ==
                MB_STATUS_OK);
        REQUIRE(mb_tokenizer_decode(tok, ids, n, 0, &text, &bytes) == MB_STATUS_OK);
        int valid = 1; /* invalid UTF-8 comes back as U+FFFD, by design */
        for (size_t i = 0; i < corpus->cases[k].len; i++)
            valid &= (unsigned char)corpus->cases[k].bytes[i] < 0x80;
        if (valid)
            CHECK_MSG(bytes == corpus->cases[k].len && !memcmp(text, corpus->cases[k].bytes, bytes),
                      "case %zu does not round-trip", k);
        free(ids);
        free(text);
    }
}

static void test_fixture(const char *data, const mb_corpus *corpus)
{
    char path[2048], err[512] = "";
    snprintf(path, sizeof path, "%s/gguf/qwen3moe-q4_k_m/model.gguf", data);
    mb_gguf *g = NULL;
    if (mb_gguf_open(path, &g, err, sizeof err) != MB_STATUS_OK) {
        fprintf(stderr, "%s: %s, skipped\n", path, err);
        return;
    }
    mb_tokenizer *tok = NULL;
    mb_status st = mb_tokenizer_load_gguf(g, &tok, err, sizeof err);
    CHECK_MSG(st == MB_STATUS_OK, "%s", err);
    if (st == MB_STATUS_OK) {
        CHECK_EQ(mb_tokenizer_n_vocab(tok), 320);
        CHECK_EQ(mb_tokenizer_bos_id(tok), 318);
        CHECK_EQ(mb_tokenizer_eos_id(tok), 319);
        size_t n = 0;
        const char *s = mb_tokenizer_token_text(tok, 319, &n);
        CHECK(s && n == 4 && !memcmp(s, "</s>", 4) && mb_tokenizer_is_added(tok, 319));
        CHECK(mb_tokenizer_token_text(tok, 300, &n) == NULL); /* [PAD300] is UNUSED */
        /* A CONTROL token in the text is that token; byte-level BPE around it. */
        int32_t *ids = NULL;
        REQUIRE(mb_tokenizer_encode(tok, "a<s> b", 6, 0, &ids, &n) == MB_STATUS_OK);
        CHECK(n >= 3 && ids[1] == 318);
        free(ids);
        check_round_trips(tok, corpus);
    }
    char *tmpl = (char *)1;
    CHECK_EQ(mb_tokenizer_chat_template_gguf(g, &tmpl, err, sizeof err), MB_STATUS_OK);
    CHECK(tmpl == NULL); /* the fixtures carry no chat template */
    mb_tokenizer_destroy(tok);
    mb_gguf_close(g);
}

/* A GGUF image with no tensors and the given tokenizer metadata: model,
 * pre (NULL: none), tokens "a" "b" "ab" "<s>", their types (n_types of
 * them), merges "a b", and a BOS id. A byte-level one that loads must merge
 * "ab" (BACKEND otherwise). */
static mb_status load_hostile(const char *model, const char *pre, uint64_t n_types, uint32_t bos, char *err,
                              size_t err_cap)
{
    tg_buf b = {0};
    tg_u32(&b, 0x46554747u);
    tg_u32(&b, 3);
    tg_u64(&b, 0);
    tg_u64(&b, pre ? 6 : 5);
    tg_str(&b, "tokenizer.ggml.model");
    tg_u32(&b, 8);
    tg_str(&b, model);
    if (pre) {
        tg_str(&b, "tokenizer.ggml.pre");
        tg_u32(&b, 8);
        tg_str(&b, pre);
    }
    static const char *const tokens[] = {"a", "b", "ab", "<s>"};
    tg_str(&b, "tokenizer.ggml.tokens");
    tg_u32(&b, 9);
    tg_u32(&b, 8);
    tg_u64(&b, 4);
    for (int i = 0; i < 4; i++)
        tg_str(&b, tokens[i]);
    tg_str(&b, "tokenizer.ggml.token_type");
    tg_u32(&b, 9);
    tg_u32(&b, 5);
    tg_u64(&b, n_types);
    for (uint64_t i = 0; i < n_types; i++)
        tg_u32(&b, i == 3 ? 3 : 1);
    tg_str(&b, "tokenizer.ggml.merges");
    tg_u32(&b, 9);
    tg_u32(&b, 8);
    tg_u64(&b, 1);
    tg_str(&b, "a b");
    tg_str(&b, "tokenizer.ggml.bos_token_id");
    tg_u32(&b, 4);
    tg_u32(&b, bos);
    tg_pad(&b, 32);
    mb_gguf *g = NULL;
    mb_tokenizer *tok = NULL;
    err[0] = '\0';
    mb_status st = mb_gguf_parse(b.buf, b.len, "hostile", &g, err, err_cap);
    if (st == MB_STATUS_OK) st = mb_tokenizer_load_gguf(g, &tok, err, err_cap);
    if (st == MB_STATUS_OK && !strcmp(model, "gpt2")) {
        int32_t *ids = NULL;
        size_t n = 0;
        st = mb_tokenizer_encode(tok, "ab", 2, 1, &ids, &n);
        if (st == MB_STATUS_OK && (n != 1 || ids[0] != 2)) st = MB_STATUS_BACKEND; /* "ab" merged */
        free(ids);
    }
    mb_tokenizer_destroy(tok);
    mb_gguf_close(g);
    free(b.buf);
    return st;
}

static void test_hostile(void)
{
    char err[512];
    CHECK_EQ(load_hostile("gpt2", "gpt2", 4, 3, err, sizeof err), MB_STATUS_OK);
    CHECK_EQ(load_hostile("gpt2", NULL, 4, 3, err, sizeof err), MB_STATUS_OK); /* pre defaults */
    CHECK_EQ(load_hostile("bert", "gpt2", 4, 3, err, sizeof err), MB_STATUS_UNSUPPORTED);
    CHECK_MSG(strstr(err, "tokenizer.ggml.model") && strstr(err, "bert"), "%s", err);
    CHECK_EQ(load_hostile("gpt2", "deepseek-v9", 4, 3, err, sizeof err), MB_STATUS_UNSUPPORTED);
    CHECK_MSG(strstr(err, "tokenizer.ggml.pre") && strstr(err, "deepseek-v9"), "%s", err);
    CHECK_EQ(load_hostile("gpt2", "gpt2", 3, 3, err, sizeof err), MB_STATUS_FORMAT);
    CHECK_MSG(strstr(err, "tokenizer.ggml.token_type"), "%s", err);
    CHECK_EQ(load_hostile("gpt2", "gpt2", 4, 4, err, sizeof err), MB_STATUS_FORMAT);
    CHECK_MSG(strstr(err, "tokenizer.ggml.bos_token_id"), "%s", err);
    /* SentencePiece ("llama") with its merges given loads too. */
    CHECK_EQ(load_hostile("llama", NULL, 4, 3, err, sizeof err), MB_STATUS_OK);
}

int main(void)
{
    const char *data = getenv("MB_TEST_DATA");
    char path[2048];
    snprintf(path, sizeof path, "%s/tokenizer/corpus.txt", data ? data : "tests/data");
    mb_corpus corpus;
    REQUIRE(mb_corpus_load(path, &corpus) == 0);
    test_hostile();
    test_fixture(data ? data : "tests/data", &corpus);
    mb_corpus_free(&corpus);
    return mb_test_finish("tokenizer_gguf_test");
}
