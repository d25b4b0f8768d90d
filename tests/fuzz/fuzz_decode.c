/* libFuzzer target for every wire-message decoder in protocol/message.h. Each
 * input goes to all decoders (not only the one its opcode names), in an
 * exactly sized 8-aligned copy so ASan reports any read past the end, and in
 * a misaligned copy. Beyond "no crash" it checks three properties and aborts
 * when one fails: every decoder agrees with mb_proto_decode_header about the
 * header; views lie inside the input; and whatever decodes re-encodes to the
 * same bytes (the encoding is canonical). Built with libFuzzer under
 * -DMB_FUZZ=ON, and linked with replay_main.c otherwise. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/message.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_REQUIRE(cond)                                                                         \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_decode: %s:%d: property failed: %s\n", __FILE__, __LINE__,       \
                    #cond);                                                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static const mb_proto_limits fuzz_limits = {.max_slots = 64, .max_tokens = 0, .max_d_model = 0};

/* The input as decoders see it, with the header decoder's verdict. */
typedef struct {
    const unsigned char *buf;
    size_t len;
    mb_status header_st;
    mb_proto_header h;
} fuzz_input;

static size_t elem_bytes(mb_dtype d)
{
    return d == MB_DTYPE_F32 ? 4 : 2;
}

/* 1 if [p, p + n) lies inside the input. */
static int within(const fuzz_input *in, const void *p, size_t n)
{
    const unsigned char *q = p;
    return q >= in->buf && q <= in->buf + in->len && n <= (size_t)(in->buf + in->len - q);
}

/* A decoder for opcode op must fail exactly as the header decoder does, and
 * with PROTOCOL when the header names another opcode. Returns 1 when the
 * header was fine and named op (the decoder's own verdict then stands). */
static int header_agrees(const fuzz_input *in, mb_status st, int (*is_op)(int))
{
    if (in->header_st != MB_STATUS_OK) {
        FUZZ_REQUIRE(st == in->header_st);
        return 0;
    }
    if (!is_op(in->h.opcode)) {
        FUZZ_REQUIRE(st == MB_STATUS_PROTOCOL);
        return 0;
    }
    return 1;
}

static void require_same(const fuzz_input *in, const unsigned char *re, size_t re_len)
{
    FUZZ_REQUIRE(re_len == in->len);
    FUZZ_REQUIRE(memcmp(re, in->buf, in->len) == 0);
}

static int is_expert_req(int op)
{
    return op == MB_OP_EXPERT_REQ;
}
static int is_expert_reply(int op)
{
    return op == MB_OP_EXPERT_REPLY;
}
static int is_hello(int op)
{
    return op == MB_OP_HELLO;
}
static int is_hello_reply(int op)
{
    return op == MB_OP_HELLO_REPLY;
}
static int is_load_expert(int op)
{
    return op == MB_OP_LOAD_EXPERT;
}
static int is_empty(int op)
{
    return op == MB_OP_PING || op == MB_OP_PONG || op == MB_OP_SHUTDOWN || op == MB_OP_STATUS;
}

/* An error reply (HELLO_REPLY / EXPERT_REPLY with a status): the decoder
 * must hand back the peer's status, and encode_empty must reproduce it. */
static void check_error_reply(const fuzz_input *in, mb_status st, unsigned char *re)
{
    FUZZ_REQUIRE(in->h.body_bytes == 0 ? st == (mb_status)in->h.status
                                       : st == MB_STATUS_BAD_LENGTH);
    if (in->h.body_bytes) return;
    size_t n;
    FUZZ_REQUIRE(mb_proto_encode_empty(re, in->len, (mb_proto_opcode)in->h.opcode, in->h.tag,
                                       (mb_status)in->h.status, &n) == MB_STATUS_OK);
    require_same(in, re, n);
}

static void fuzz_expert_req(const fuzz_input *in, unsigned char *re)
{
    mb_proto_expert_req v;
    mb_status st = mb_proto_decode_expert_req(in->buf, in->len, &fuzz_limits, &v);
    if (!header_agrees(in, st, is_expert_req) || st != MB_STATUS_OK) return;
    size_t act_bytes = (size_t)v.n_tokens * v.d_model * elem_bytes(v.dtype);
    FUZZ_REQUIRE(within(in, v.pair_counts, (size_t)v.n_tokens * sizeof(uint16_t)));
    FUZZ_REQUIRE(within(in, v.pairs, (size_t)v.n_pairs * sizeof(mb_proto_pair)));
    FUZZ_REQUIRE(within(in, v.act, act_bytes));
    mb_proto_expert_req_writer w;
    FUZZ_REQUIRE(mb_proto_encode_expert_req(re, in->len, in->h.tag, in->h.flags, v.layer,
                                            v.n_tokens, v.d_model, v.dtype, v.n_pairs,
                                            &w) == MB_STATUS_OK);
    memcpy(w.pair_counts, v.pair_counts, (size_t)v.n_tokens * sizeof(uint16_t));
    if (v.n_pairs) memcpy(w.pairs, v.pairs, (size_t)v.n_pairs * sizeof(mb_proto_pair));
    memcpy(w.act, v.act, act_bytes);
    require_same(in, re, w.bytes);
}

static void fuzz_expert_reply(const fuzz_input *in, unsigned char *re)
{
    mb_proto_expert_reply v;
    mb_status st = mb_proto_decode_expert_reply(in->buf, in->len, &v);
    if (!header_agrees(in, st, is_expert_reply)) return;
    if (in->h.status != MB_STATUS_OK) {
        check_error_reply(in, st, re);
        return;
    }
    if (st != MB_STATUS_OK) return;
    size_t out_bytes = (size_t)v.n_tokens * v.d_model * elem_bytes(v.dtype);
    FUZZ_REQUIRE(within(in, v.out, out_bytes));
    void *out;
    size_t n;
    FUZZ_REQUIRE(mb_proto_encode_expert_reply(re, in->len, in->h.tag, v.n_tokens, v.d_model,
                                              v.dtype, &out, &n) == MB_STATUS_OK);
    memcpy(out, v.out, out_bytes);
    mb_proto_expert_reply_set_timings(re, &v.timings);
    require_same(in, re, n);
}

static void fuzz_hello(const fuzz_input *in, unsigned char *re)
{
    uint32_t version;
    mb_status st = mb_proto_decode_hello(in->buf, in->len, &version);
    if (!header_agrees(in, st, is_hello) || st != MB_STATUS_OK) return;
    FUZZ_REQUIRE(version >= MB_PROTO_VERSION);
    size_t n;
    FUZZ_REQUIRE(mb_proto_encode_hello(re, in->len, in->h.tag, &n) == MB_STATUS_OK);
    /* The encoder always offers MB_PROTO_VERSION; a newer peer may offer more. */
    memcpy(re + MB_PROTO_HEADER_BYTES, &version, sizeof version);
    require_same(in, re, n);
}

static void fuzz_hello_reply(const fuzz_input *in, unsigned char *re)
{
    mb_proto_hello_reply r;
    mb_status st = mb_proto_decode_hello_reply(in->buf, in->len, &r);
    if (!header_agrees(in, st, is_hello_reply)) return;
    if (in->h.status != MB_STATUS_OK) {
        check_error_reply(in, st, re);
        return;
    }
    if (st != MB_STATUS_OK) return;
    FUZZ_REQUIRE(memchr(r.backend, 0, sizeof r.backend) && memchr(r.device, 0, sizeof r.device));
    size_t n;
    FUZZ_REQUIRE(mb_proto_encode_hello_reply(re, in->len, in->h.tag, &r, &n) == MB_STATUS_OK);
    require_same(in, re, n);
}

static void fuzz_load_expert(const fuzz_input *in, unsigned char *re)
{
    mb_proto_load_expert v;
    mb_status st = mb_proto_decode_load_expert(in->buf, in->len, &fuzz_limits, &v);
    if (!header_agrees(in, st, is_load_expert) || st != MB_STATUS_OK) return;
    FUZZ_REQUIRE(v.slot < fuzz_limits.max_slots);
    if (v.source == MB_WEIGHTS_INLINE) {
        for (int i = 0; i < 3; i++)
            FUZZ_REQUIRE(within(in, v.data[i], (size_t)v.bytes[i]));
        FUZZ_REQUIRE(v.path == NULL);
    } else {
        FUZZ_REQUIRE(within(in, v.path, v.path_len));
        FUZZ_REQUIRE(v.path_len > 0 && v.path_len < MB_PROTO_PATH_BYTES &&
                     !memchr(v.path, 0, v.path_len));
    }
    size_t n;
    FUZZ_REQUIRE(mb_proto_encode_load_expert(re, in->len, in->h.tag, &v, &n) == MB_STATUS_OK);
    require_same(in, re, n);
}

static void fuzz_empty(const fuzz_input *in, unsigned char *re)
{
    mb_proto_header h;
    mb_status st = mb_proto_decode_empty(in->buf, in->len, &h);
    if (!header_agrees(in, st, is_empty) || st != MB_STATUS_OK) return;
    FUZZ_REQUIRE(memcmp(&h, &in->h, sizeof h) == 0);
    size_t n;
    FUZZ_REQUIRE(mb_proto_encode_empty(re, in->len, (mb_proto_opcode)h.opcode, h.tag,
                                       (mb_status)h.status, &n) == MB_STATUS_OK);
    require_same(in, re, n);
}

/* Every decoder on a misaligned copy: MISALIGNED, or TRUNCATED when too short
 * to hold a header. */
static void fuzz_misaligned(const uint8_t *data, size_t size)
{
    unsigned char *raw = malloc(size + 1);
    FUZZ_REQUIRE(raw);
    memcpy(raw + 1, data, size);
    const mb_status want =
        size < MB_PROTO_HEADER_BYTES ? MB_STATUS_TRUNCATED : MB_STATUS_MISALIGNED;
    const unsigned char *p = raw + 1;
    mb_proto_header h;
    mb_proto_expert_req req;
    mb_proto_expert_reply rep;
    mb_proto_hello_reply hr;
    mb_proto_load_expert le;
    uint32_t version;
    FUZZ_REQUIRE(mb_proto_decode_header(p, size, &h) == want);
    FUZZ_REQUIRE(mb_proto_decode_expert_req(p, size, &fuzz_limits, &req) == want);
    FUZZ_REQUIRE(mb_proto_decode_expert_reply(p, size, &rep) == want);
    FUZZ_REQUIRE(mb_proto_decode_hello(p, size, &version) == want);
    FUZZ_REQUIRE(mb_proto_decode_hello_reply(p, size, &hr) == want);
    FUZZ_REQUIRE(mb_proto_decode_load_expert(p, size, &fuzz_limits, &le) == want);
    FUZZ_REQUIRE(mb_proto_decode_empty(p, size, &h) == want);
    free(raw);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* malloc of exactly size bytes: 8-aligned, and its end is the input's. */
    unsigned char *buf = malloc(size ? size : 1);
    unsigned char *re = malloc(size ? size : 1);
    FUZZ_REQUIRE(buf && re);
    if (size) memcpy(buf, data, size);

    fuzz_input in = {.buf = buf, .len = size};
    in.header_st = mb_proto_decode_header(buf, size, &in.h);
    fuzz_expert_req(&in, re);
    fuzz_expert_reply(&in, re);
    fuzz_hello(&in, re);
    fuzz_hello_reply(&in, re);
    fuzz_load_expert(&in, re);
    fuzz_empty(&in, re);
    fuzz_misaligned(data, size);

    free(re);
    free(buf);
    return 0;
}
