/* Builders of valid wire messages for the protocol tests and the fuzz corpus
 * generator: each returns a message in its own malloc'd buffer of exactly
 * the message's length (so ASan flags any read past the end) together with
 * the source arrays it was built from. Header-only, test code only. */
#ifndef MB_TESTS_MESSAGE_FIXTURES_H
#define MB_TESTS_MESSAGE_FIXTURES_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/message.h"

/* One encoded message; free with fx_msg_free. */
typedef struct {
    unsigned char *p;
    size_t len;
} fx_msg;

static inline void fx_msg_free(fx_msg *m)
{
    free(m->p);
    m->p = NULL;
    m->len = 0;
}

/* A malloc'd copy of len bytes (malloc's alignment is at least 8). */
static inline fx_msg fx_msg_copy(const void *src, size_t len)
{
    fx_msg m;
    m.p = malloc(len ? len : 1);
    if (!m.p) {
        fprintf(stderr, "fixture: out of memory\n");
        exit(1);
    }
    if (len) memcpy(m.p, src, len);
    m.len = len;
    return m;
}

/* A copy of src followed by extra zero bytes (a message with trailing slack). */
static inline fx_msg fx_msg_grow(const fx_msg *src, size_t extra)
{
    fx_msg m;
    m.len = src->len + extra;
    m.p = calloc(1, m.len ? m.len : 1);
    if (!m.p) {
        fprintf(stderr, "fixture: out of memory\n");
        exit(1);
    }
    memcpy(m.p, src->p, src->len);
    return m;
}

/* Aborts the test when a builder's own encode fails: the fixture is wrong. */
static inline void fx_require_ok(mb_status st, const char *what)
{
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "fixture %s: %s\n", what, mb_status_name(st));
        exit(1);
    }
}

static inline uint64_t fx_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static inline void fx_fill_random(void *dst, size_t n, uint64_t *seed)
{
    unsigned char *d = dst;
    for (size_t i = 0; i < n; i++)
        d[i] = (unsigned char)(fx_rand(seed) >> 56);
}

static inline size_t fx_dtype_bytes(mb_dtype d)
{
    return d == MB_DTYPE_F32 ? 4 : 2;
}

/* Bytes of one [rows][cols] expert matrix of d_model x d_ff elements in a
 * weight dtype (whole blocks for quantized ones). */
static inline size_t fx_weight_mat_bytes(uint32_t d_model, uint32_t d_ff, mb_dtype d)
{
    return (size_t)d_model * d_ff / mb_dtype_block_elems(d) * mb_dtype_block_bytes(d);
}

/* The arrays an EXPERT_REQ fixture was built from, for comparisons. */
typedef struct {
    uint64_t tag;
    uint32_t flags, layer, n_tokens, d_model, n_pairs;
    mb_dtype dtype;
    uint16_t *pair_counts;
    mb_proto_pair *pairs;
    unsigned char *act;
    size_t act_bytes;
} fx_expert_req;

static inline void fx_expert_req_free(fx_expert_req *r)
{
    free(r->pair_counts);
    free(r->pairs);
    free(r->act);
}

/* Token i gets (i * 5 + 1) % 4 pairs, slots < max_slots, gates in [-1, 1),
 * random activation bytes (any bit pattern is valid payload). */
static inline fx_msg fx_build_expert_req(fx_expert_req *src, uint32_t n_tokens, uint32_t d_model,
                                         mb_dtype dtype, uint32_t max_slots, uint64_t seed)
{
    memset(src, 0, sizeof *src);
    src->tag = 0x1000 + seed;
    src->flags = (seed & 1) ? MB_PROTO_FLAG_LAST : 0;
    src->layer = (uint32_t)(seed % 61);
    src->n_tokens = n_tokens;
    src->d_model = d_model;
    src->dtype = dtype;
    src->pair_counts = calloc(n_tokens, sizeof(uint16_t));
    uint32_t n_pairs = 0;
    for (uint32_t i = 0; i < n_tokens; i++) {
        src->pair_counts[i] = (uint16_t)((i * 5 + 1) % 4);
        n_pairs += src->pair_counts[i];
    }
    src->n_pairs = n_pairs;
    src->pairs = calloc(n_pairs ? n_pairs : 1, sizeof(mb_proto_pair));
    for (uint32_t i = 0; i < n_pairs; i++) {
        src->pairs[i].slot = max_slots ? (uint32_t)(fx_rand(&seed) % max_slots) : 0;
        src->pairs[i].gate =
            (float)((double)(fx_rand(&seed) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    src->act_bytes = (size_t)n_tokens * d_model * fx_dtype_bytes(dtype);
    src->act = malloc(src->act_bytes ? src->act_bytes : 1);
    fx_fill_random(src->act, src->act_bytes, &seed);

    size_t bytes;
    fx_require_ok(mb_proto_expert_req_size(n_tokens, d_model, dtype, n_pairs, &bytes),
                  "expert_req_size");
    void *scratch = malloc(bytes);
    mb_proto_expert_req_writer w;
    fx_require_ok(mb_proto_encode_expert_req(scratch, bytes, src->tag, src->flags, src->layer,
                                             n_tokens, d_model, dtype, n_pairs, &w),
                  "encode_expert_req");
    memcpy(w.pair_counts, src->pair_counts, n_tokens * sizeof(uint16_t));
    if (n_pairs) memcpy(w.pairs, src->pairs, n_pairs * sizeof(mb_proto_pair));
    memcpy(w.act, src->act, src->act_bytes);
    fx_msg m = fx_msg_copy(scratch, w.bytes);
    free(scratch);
    return m;
}

/* EXPERT_REPLY with random output bytes and timings (1, 2, 3) * seed. */
static inline fx_msg fx_build_expert_reply(uint32_t n_tokens, uint32_t d_model, mb_dtype dtype,
                                           uint64_t seed, unsigned char **out_src)
{
    size_t bytes, out_bytes = (size_t)n_tokens * d_model * fx_dtype_bytes(dtype);
    fx_require_ok(mb_proto_expert_reply_size(n_tokens, d_model, dtype, &bytes),
                  "expert_reply_size");
    void *scratch = malloc(bytes);
    void *out;
    size_t got;
    fx_require_ok(mb_proto_encode_expert_reply(scratch, bytes, 0x2000 + seed, n_tokens, d_model,
                                               dtype, &out, &got),
                  "encode_expert_reply");
    unsigned char *src = malloc(out_bytes);
    uint64_t rs = seed;
    fx_fill_random(src, out_bytes, &rs);
    memcpy(out, src, out_bytes);
    mb_proto_timings t = {1 * seed, 2 * seed, 3 * seed};
    mb_proto_expert_reply_set_timings(scratch, &t);
    fx_msg m = fx_msg_copy(scratch, got);
    free(scratch);
    if (out_src)
        *out_src = src;
    else
        free(src);
    return m;
}

static inline fx_msg fx_build_hello(uint64_t tag)
{
    uint64_t scratch[8];
    size_t bytes;
    fx_require_ok(mb_proto_encode_hello(scratch, sizeof scratch, tag, &bytes), "encode_hello");
    return fx_msg_copy(scratch, bytes);
}

static inline mb_proto_hello_reply fx_hello_reply_value(void)
{
    mb_proto_hello_reply r;
    memset(&r, 0, sizeof r);
    r.version = MB_PROTO_VERSION;
    r.payload_dtype_mask = MB_DTYPE_MASK_ALL;
    r.weight_dtype_mask = MB_DTYPE_MASK(MB_DTYPE_BF16) | MB_DTYPE_MASK(MB_DTYPE_F16);
    r.preferred_batch = 64;
    r.n_threads = 16;
    r.max_slots = 256;
    r.mem_total_bytes = 128ull << 30;
    r.mem_free_bytes = 100ull << 30;
    r.max_message_bytes = 64ull << 20;
    strcpy(r.backend, "cpu");
    strcpy(r.device, "AMD EPYC 9654 96-Core Processor");
    return r;
}

static inline fx_msg fx_build_hello_reply(const mb_proto_hello_reply *r, uint64_t tag)
{
    uint64_t scratch[64];
    size_t bytes;
    fx_require_ok(mb_proto_encode_hello_reply(scratch, sizeof scratch, tag, r, &bytes),
                  "encode_hello_reply");
    return fx_msg_copy(scratch, bytes);
}

/* The weights an inline LOAD_EXPERT fixture carries. */
typedef struct {
    mb_proto_load_expert m;
    unsigned char *w[3];
} fx_load_expert;

static inline void fx_load_expert_free(fx_load_expert *f)
{
    for (int i = 0; i < 3; i++)
        free(f->w[i]);
}

/* A LOAD_EXPERT with inline weights, matrix i in wdtype[i]. */
static inline fx_msg fx_build_load_expert_inline_mixed(fx_load_expert *f, uint32_t d_model, uint32_t d_ff,
                                                       const mb_dtype *wdtype, uint32_t slot, uint64_t seed)
{
    memset(f, 0, sizeof *f);
    f->m.layer = 3;
    f->m.expert_id = 77;
    f->m.slot = slot;
    f->m.d_model = d_model;
    f->m.d_ff = d_ff;
    f->m.source = MB_WEIGHTS_INLINE;
    for (int i = 0; i < 3; i++) {
        size_t mat = fx_weight_mat_bytes(d_model, d_ff, wdtype[i]);
        f->m.wdtype[i] = wdtype[i];
        f->m.bytes[i] = mat;
        f->w[i] = malloc(mat);
        fx_fill_random(f->w[i], mat, &seed);
        f->m.data[i] = f->w[i];
    }
    size_t bytes, got;
    fx_require_ok(mb_proto_load_expert_size(&f->m, &bytes), "load_expert_size");
    void *scratch = malloc(bytes);
    fx_require_ok(mb_proto_encode_load_expert(scratch, bytes, 0x3000 + seed, &f->m, &got),
                  "encode_load_expert");
    fx_msg m = fx_msg_copy(scratch, got);
    free(scratch);
    return m;
}

/* The same with all three matrices in wdtype. */
static inline fx_msg fx_build_load_expert_inline(fx_load_expert *f, uint32_t d_model, uint32_t d_ff,
                                                 mb_dtype wdtype, uint32_t slot, uint64_t seed)
{
    const mb_dtype wd[3] = {wdtype, wdtype, wdtype};
    return fx_build_load_expert_inline_mixed(f, d_model, d_ff, wd, slot, seed);
}

/* A LOAD_EXPERT naming a file region per matrix (matrix i in wdtype[i],
 * the three back to back from offset 4096). */
static inline fx_msg fx_build_load_expert_file_mixed(mb_proto_load_expert *m, const char *path,
                                                     uint32_t d_model, uint32_t d_ff,
                                                     const mb_dtype *wdtype, uint32_t slot)
{
    memset(m, 0, sizeof *m);
    m->layer = 11;
    m->expert_id = 5;
    m->slot = slot;
    m->d_model = d_model;
    m->d_ff = d_ff;
    m->source = MB_WEIGHTS_FILE;
    uint64_t at = 4096;
    for (int i = 0; i < 3; i++) {
        m->wdtype[i] = wdtype[i];
        m->bytes[i] = fx_weight_mat_bytes(d_model, d_ff, wdtype[i]);
        m->offset[i] = at;
        at += m->bytes[i];
    }
    m->path = path;
    m->path_len = (uint32_t)strlen(path);
    size_t bytes, got;
    fx_require_ok(mb_proto_load_expert_size(m, &bytes), "load_expert_size");
    void *scratch = malloc(bytes);
    fx_require_ok(mb_proto_encode_load_expert(scratch, bytes, 0x4000, m, &got),
                  "encode_load_expert");
    fx_msg out = fx_msg_copy(scratch, got);
    free(scratch);
    return out;
}

static inline fx_msg fx_build_load_expert_file(mb_proto_load_expert *m, const char *path,
                                               uint32_t d_model, uint32_t d_ff, mb_dtype wdtype,
                                               uint32_t slot)
{
    const mb_dtype wd[3] = {wdtype, wdtype, wdtype};
    return fx_build_load_expert_file_mixed(m, path, d_model, d_ff, wd, slot);
}

static inline fx_msg fx_build_empty(mb_proto_opcode op, uint64_t tag, mb_status status)
{
    uint64_t scratch[4];
    size_t bytes;
    fx_require_ok(mb_proto_encode_empty(scratch, sizeof scratch, op, tag, status, &bytes),
                  "encode_empty");
    return fx_msg_copy(scratch, bytes);
}

/* Field patching at absolute offsets, for malformed variants. */
static inline void fx_put16(fx_msg *m, size_t off, uint16_t v)
{
    memcpy(m->p + off, &v, sizeof v);
}

static inline void fx_put32(fx_msg *m, size_t off, uint32_t v)
{
    memcpy(m->p + off, &v, sizeof v);
}

static inline void fx_put64(fx_msg *m, size_t off, uint64_t v)
{
    memcpy(m->p + off, &v, sizeof v);
}

static inline uint16_t fx_get16(const fx_msg *m, size_t off)
{
    uint16_t v;
    memcpy(&v, m->p + off, sizeof v);
    return v;
}

static inline uint32_t fx_get32(const fx_msg *m, size_t off)
{
    uint32_t v;
    memcpy(&v, m->p + off, sizeof v);
    return v;
}

static inline uint64_t fx_get64(const fx_msg *m, size_t off)
{
    uint64_t v;
    memcpy(&v, m->p + off, sizeof v);
    return v;
}

/* A header-only message (plus body_len zero bytes) with arbitrary fields,
 * for shapes no encoder will produce. */
static inline fx_msg fx_build_raw(uint16_t opcode, uint64_t body_len)
{
    fx_msg m;
    m.len = (size_t)(MB_PROTO_HEADER_BYTES + body_len);
    m.p = calloc(1, m.len);
    mb_proto_header h;
    mb_proto_header_init(&h, (mb_proto_opcode)opcode, 0x5000, body_len);
    memcpy(m.p, &h, sizeof h);
    return m;
}

/* Decodes with the decoder the opcode field names (the one a receiver would
 * pick), or the header decoder for an unknown opcode or a short buffer. */
static inline mb_status fx_decode_any(const void *p, size_t len, const mb_proto_limits *limits)
{
    union {
        mb_proto_expert_req req;
        mb_proto_expert_reply rep;
        mb_proto_hello_reply hr;
        mb_proto_load_expert le;
        mb_proto_header h;
        uint32_t version;
    } u;
    uint16_t opcode = 0;
    if (len >= MB_PROTO_HEADER_BYTES) memcpy(&opcode, (const unsigned char *)p + 6, sizeof opcode);
    switch (opcode) {
    case MB_OP_EXPERT_REQ:
        return mb_proto_decode_expert_req(p, len, limits, &u.req);
    case MB_OP_EXPERT_REPLY:
        return mb_proto_decode_expert_reply(p, len, &u.rep);
    case MB_OP_HELLO:
        return mb_proto_decode_hello(p, len, &u.version);
    case MB_OP_HELLO_REPLY:
        return mb_proto_decode_hello_reply(p, len, &u.hr);
    case MB_OP_LOAD_EXPERT:
        return mb_proto_decode_load_expert(p, len, limits, &u.le);
    case MB_OP_PING:
    case MB_OP_PONG:
    case MB_OP_SHUTDOWN:
    case MB_OP_STATUS:
        return mb_proto_decode_empty(p, len, &u.h);
    default:
        return mb_proto_decode_header(p, len, &u.h);
    }
}

/* Header field offsets, for patching. */
enum {
    FX_H_MAGIC = 0,
    FX_H_VERSION = 4,
    FX_H_OPCODE = 6,
    FX_H_TAG = 8,
    FX_H_FLAGS = 16,
    FX_H_STATUS = 20,
    FX_H_RESERVED = 22,
    FX_H_BODY = 24,
};

#endif
