/* A tiny GGUF writer for tests and seed corpora: builds an image in memory
 * field by field, so each test can write exactly the damage it wants. */
#ifndef MB_TESTS_MODEL_GGUF_TESTUTIL_H
#define MB_TESTS_MODEL_GGUF_TESTUTIL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint8_t *buf;
    size_t len, cap;
} tg_buf;

static inline void tg_put(tg_buf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *nb = realloc(b->buf, cap);
        if (!nb) abort();
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, p, n);
    b->len += n;
}

static inline void tg_u32(tg_buf *b, uint32_t v) { tg_put(b, &v, 4); }
static inline void tg_u64(tg_buf *b, uint64_t v) { tg_put(b, &v, 8); }

static inline void tg_str(tg_buf *b, const char *s)
{
    tg_u64(b, strlen(s));
    tg_put(b, s, strlen(s));
}

static inline void tg_pad(tg_buf *b, size_t align)
{
    static const uint8_t zero[64];
    while (b->len % align)
        tg_put(b, zero, 1);
}

/* The valid image the hostile variants start from: 3 metadata entries
 * (architecture string, alignment 32, an array of 2 strings) and two
 * tensors, "a" F32 ggml [4, 2] at data offset 0 and "b" Q8_0 [32, 1] at 32,
 * then their data (32 + 34 bytes, zeros). offsets_out (optional) receives
 * where each tensor info's type and offset fields are. */
typedef struct {
    size_t n_tensors_at, n_kv_at, key0_len_at, arr_count_at;
    size_t a_ndims_at, a_ne0_at, a_type_at, a_off_at, b_type_at, b_off_at, data_at;
} tg_layout;

static inline tg_buf tg_valid(tg_layout *lay)
{
    tg_buf b = {0};
    tg_layout L;
    tg_u32(&b, 0x46554747u);
    tg_u32(&b, 3);
    L.n_tensors_at = b.len;
    tg_u64(&b, 2);
    L.n_kv_at = b.len;
    tg_u64(&b, 3);
    L.key0_len_at = b.len;
    tg_str(&b, "general.architecture");
    tg_u32(&b, 8);
    tg_str(&b, "qwen3moe");
    tg_str(&b, "general.alignment");
    tg_u32(&b, 4);
    tg_u32(&b, 32);
    tg_str(&b, "tokenizer.ggml.tokens");
    tg_u32(&b, 9);
    tg_u32(&b, 8);
    L.arr_count_at = b.len;
    tg_u64(&b, 2);
    tg_str(&b, "hi");
    tg_str(&b, "there");
    tg_str(&b, "a");
    L.a_ndims_at = b.len;
    tg_u32(&b, 2);
    L.a_ne0_at = b.len;
    tg_u64(&b, 4);
    tg_u64(&b, 2);
    L.a_type_at = b.len;
    tg_u32(&b, 0);
    L.a_off_at = b.len;
    tg_u64(&b, 0);
    tg_str(&b, "b");
    tg_u32(&b, 2);
    tg_u64(&b, 32);
    tg_u64(&b, 1);
    L.b_type_at = b.len;
    tg_u32(&b, 8);
    L.b_off_at = b.len;
    tg_u64(&b, 32);
    tg_pad(&b, 32);
    L.data_at = b.len;
    static const uint8_t zero[66];
    tg_put(&b, zero, sizeof zero);
    if (lay) *lay = L;
    return b;
}

static inline void tg_set32(tg_buf *b, size_t at, uint32_t v) { memcpy(b->buf + at, &v, 4); }
static inline void tg_set64(tg_buf *b, size_t at, uint64_t v) { memcpy(b->buf + at, &v, 8); }

#endif
