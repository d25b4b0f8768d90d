/* Every class of malformed message is rejected with its own status: each
 * case takes a valid message, breaks exactly one thing and checks the code
 * (see the table at the top of protocol/message.h). */
#include <stdint.h>
#include <string.h>

#include "protocol/message.h"
#include "tests/testutil.h"
#include "tests/unit/message/message_fixtures.h"

static const mb_proto_limits limits = {.max_slots = 64, .max_tokens = 1024, .max_d_model = 8192};

/* Decodes p with the decoder for opcode `as`, whatever its opcode field
 * says, so a wrong decoder can be tried on purpose. */
static mb_status decode_any(const void *p, size_t len, uint16_t as)
{
    union {
        mb_proto_expert_req req;
        mb_proto_expert_reply rep;
        mb_proto_hello_reply hr;
        mb_proto_load_expert le;
        mb_proto_header h;
        uint32_t version;
    } u;
    switch (as) {
    case MB_OP_EXPERT_REQ:
        return mb_proto_decode_expert_req(p, len, &limits, &u.req);
    case MB_OP_EXPERT_REPLY:
        return mb_proto_decode_expert_reply(p, len, &u.rep);
    case MB_OP_HELLO:
        return mb_proto_decode_hello(p, len, &u.version);
    case MB_OP_HELLO_REPLY:
        return mb_proto_decode_hello_reply(p, len, &u.hr);
    case MB_OP_LOAD_EXPERT:
        return mb_proto_decode_load_expert(p, len, &limits, &u.le);
    case MB_OP_PING:
    case MB_OP_PONG:
    case MB_OP_SHUTDOWN:
    case MB_OP_STATUS:
        return mb_proto_decode_empty(p, len, &u.h);
    default:
        return mb_proto_decode_header(p, len, &u.h);
    }
}

/* Checks that m, decoded by the decoder for `as`, gives want. */
#define EXPECT_AS(m, as, want)                                                                     \
    do {                                                                                           \
        mb_status got_ = decode_any((m)->p, (m)->len, (as));                                       \
        CHECK_MSG(got_ == (want), "got %s, want %s", mb_status_name(got_), mb_status_name(want));  \
    } while (0)

/* Patches a field of a fresh copy of base and expects a status. */
static void expect_patch(const fx_msg *base, uint16_t as, size_t off, size_t width, uint64_t value,
                         mb_status want, int line)
{
    fx_msg m = fx_msg_copy(base->p, base->len);
    memcpy(m.p + off, &value, width);
    mb_status got = decode_any(m.p, m.len, as);
    CHECK_MSG(got == want, "line %d: patch @%zu=%llu: got %s, want %s", line, off,
              (unsigned long long)value, mb_status_name(got), mb_status_name(want));
    fx_msg_free(&m);
}
#define PATCH(base, as, off, width, value, want)                                                   \
    expect_patch(base, as, off, width, value, want, __LINE__)

static void test_header(void)
{
    fx_expert_req src;
    fx_msg req = fx_build_expert_req(&src, 5, 16, MB_DTYPE_F16, limits.max_slots, 4); /* flags 0 */
    fx_msg ping = fx_build_empty(MB_OP_PING, 1, MB_STATUS_OK);
    mb_proto_header h;

    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_MAGIC, 4, 0x4b52424eu, MB_STATUS_BAD_MAGIC);
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_MAGIC, 4, 0, MB_STATUS_BAD_MAGIC);
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_VERSION, 2, 0, MB_STATUS_BAD_VERSION);
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_VERSION, 2, MB_PROTO_VERSION + 1, MB_STATUS_BAD_VERSION);
    /* Version 1 (one LOAD_EXPERT dtype for all three matrices) is refused. */
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_VERSION, 2, 1, MB_STATUS_BAD_VERSION);
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_OPCODE, 2, 0, MB_STATUS_BAD_OPCODE);
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_OPCODE, 2, MB_OP_COUNT_, MB_STATUS_BAD_OPCODE);
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_OPCODE, 2, 0xffff, MB_STATUS_BAD_OPCODE);
    /* A known opcode handed to the wrong decoder. */
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_OPCODE, 2, MB_OP_EXPERT_REPLY, MB_STATUS_PROTOCOL);
    EXPECT_AS(&ping, MB_OP_EXPERT_REQ, MB_STATUS_PROTOCOL);
    EXPECT_AS(&ping, MB_OP_HELLO, MB_STATUS_PROTOCOL);
    EXPECT_AS(&req, MB_OP_PING, MB_STATUS_PROTOCOL);
    /* Unknown flag bits; a known flag where it means nothing. */
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_FLAGS, 4, 0x2, MB_STATUS_BAD_FLAGS);
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_FLAGS, 4, 0x80000000u, MB_STATUS_BAD_FLAGS);
    PATCH(&ping, MB_OP_PING, FX_H_FLAGS, 4, MB_PROTO_FLAG_LAST, MB_STATUS_BAD_FLAGS);
    /* Reserved field; status in a request. */
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_RESERVED, 2, 1, MB_STATUS_BAD_FLAGS);
    PATCH(&ping, MB_OP_PING, FX_H_RESERVED, 2, 0x8000, MB_STATUS_BAD_FLAGS);
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_STATUS, 2, MB_STATUS_IO, MB_STATUS_BAD_FLAGS);
    PATCH(&ping, MB_OP_PING, FX_H_STATUS, 2, 1, MB_STATUS_BAD_FLAGS);
    /* body_bytes against len. */
    uint64_t body = req.len - MB_PROTO_HEADER_BYTES;
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_BODY, 8, body + 8, MB_STATUS_TRUNCATED);
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_BODY, 8, body - 8, MB_STATUS_BAD_LENGTH);
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_BODY, 8, body + 1, MB_STATUS_BAD_LENGTH);
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_BODY, 8, body - 4, MB_STATUS_BAD_LENGTH);
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_BODY, 8, UINT64_MAX, MB_STATUS_OVERFLOW);
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_BODY, 8, UINT64_MAX & ~7ull, MB_STATUS_OVERFLOW);
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_BODY, 8, UINT64_MAX - 31, MB_STATUS_OVERFLOW);
    PATCH(&req, MB_OP_EXPERT_REQ, FX_H_BODY, 8, UINT64_MAX - 39, MB_STATUS_TRUNCATED);
    PATCH(&ping, MB_OP_PING, FX_H_BODY, 8, 1ull << 62, MB_STATUS_TRUNCATED);

    /* Trailing bytes after a complete message. */
    fx_msg longer = fx_msg_grow(&req, 8);
    EXPECT_AS(&longer, MB_OP_EXPERT_REQ, MB_STATUS_BAD_LENGTH);
    fx_msg_free(&longer);

    /* Misaligned buffers. */
    unsigned char *raw = malloc(req.len + 8);
    for (int shift = 1; shift < 8; shift++) {
        memcpy(raw + shift, req.p, req.len);
        mb_status st = decode_any(raw + shift, req.len, MB_OP_EXPERT_REQ);
        CHECK_MSG(st == MB_STATUS_MISALIGNED, "shift %d: %s", shift, mb_status_name(st));
        CHECK_EQ(mb_proto_decode_header(raw + shift, req.len, &h), MB_STATUS_MISALIGNED);
    }
    free(raw);

    /* NULL arguments. */
    CHECK_EQ(mb_proto_decode_header(req.p, req.len, NULL), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_proto_decode_header(NULL, 64, &h), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_proto_decode_header(NULL, 0, &h), MB_STATUS_TRUNCATED);
    mb_proto_expert_req v;
    CHECK_EQ(mb_proto_decode_expert_req(req.p, req.len, NULL, &v), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_proto_decode_expert_req(req.p, req.len, &limits, NULL), MB_STATUS_INVALID_ARG);

    fx_expert_req_free(&src);
    fx_msg_free(&req);
    fx_msg_free(&ping);
}

static void test_expert_req(void)
{
    /* 5 tokens: counts (1, 2, 3, 0, 1) = 7 pairs; pair_counts end at 66,
     * pairs at 72..128, act[5][16] f16 at 128..288. */
    fx_expert_req src;
    fx_msg m = fx_build_expert_req(&src, 5, 16, MB_DTYPE_F16, limits.max_slots, 3);
    const uint16_t op = MB_OP_EXPERT_REQ;
    REQUIRE(src.n_pairs == 7 && m.len == 288);
    EXPECT_AS(&m, op, MB_STATUS_OK);

    PATCH(&m, op, 46, 2, 1, MB_STATUS_BAD_FLAGS);    /* reserved */
    PATCH(&m, op, 52, 4, 1, MB_STATUS_BAD_FLAGS);    /* reserved2 */
    PATCH(&m, op, 66, 1, 0xff, MB_STATUS_BAD_FLAGS); /* padding after pair_counts */
    PATCH(&m, op, 71, 1, 0x01, MB_STATUS_BAD_FLAGS);
    PATCH(&m, op, 44, 2, 3, MB_STATUS_BAD_DTYPE);
    PATCH(&m, op, 44, 2, 0xffff, MB_STATUS_BAD_DTYPE);
    PATCH(&m, op, 36, 4, 0, MB_STATUS_BAD_SHAPE); /* n_tokens */
    PATCH(&m, op, 40, 4, 0, MB_STATUS_BAD_SHAPE); /* d_model */
    PATCH(&m, op, 36, 4, limits.max_tokens + 1, MB_STATUS_BAD_SHAPE);
    PATCH(&m, op, 40, 4, limits.max_d_model + 1, MB_STATUS_BAD_SHAPE);
    /* n_tokens x d_model larger (or smaller) than the payload. */
    PATCH(&m, op, 40, 4, 17, MB_STATUS_BAD_LENGTH);
    PATCH(&m, op, 40, 4, 12, MB_STATUS_BAD_LENGTH);
    PATCH(&m, op, 44, 2, MB_DTYPE_F32, MB_STATUS_BAD_LENGTH);
    PATCH(&m, op, 36, 4, 6, MB_STATUS_BAD_LENGTH);
    PATCH(&m, op, 48, 4, 8, MB_STATUS_BAD_LENGTH); /* n_pairs */
    /* pair_counts that do not sum to n_pairs. */
    PATCH(&m, op, 56, 2, 2, MB_STATUS_PAIR_COUNT);
    PATCH(&m, op, 56 + 2 * 3, 2, 0xffff, MB_STATUS_PAIR_COUNT);
    PATCH(&m, op, 56, 2, 0, MB_STATUS_PAIR_COUNT);
    /* Slots and gates: pair 4 at 72 + 4 * 8. */
    PATCH(&m, op, 72 + 32, 4, limits.max_slots, MB_STATUS_SLOT_RANGE);
    PATCH(&m, op, 72 + 32, 4, UINT32_MAX, MB_STATUS_SLOT_RANGE);
    PATCH(&m, op, 72 + 36, 4, 0x7fc00000u, MB_STATUS_INVALID_ARG); /* NaN */
    PATCH(&m, op, 72 + 36, 4, 0xffffffffu, MB_STATUS_INVALID_ARG); /* NaN, sign set */
    PATCH(&m, op, 72 + 36, 4, 0x7f800000u, MB_STATUS_INVALID_ARG); /* +inf */
    PATCH(&m, op, 72 + 36, 4, 0xff800000u, MB_STATUS_INVALID_ARG); /* -inf */
    PATCH(&m, op, 72 + 36, 4, 0x7f7fffffu, MB_STATUS_OK);          /* FLT_MAX is finite */
    PATCH(&m, op, 72 + 36, 4, 0x00000001u, MB_STATUS_OK);          /* subnormal */
    mb_proto_expert_req v;
    const mb_proto_limits no_slots = {0, 0, 0};
    CHECK_EQ(mb_proto_decode_expert_req(m.p, m.len, &no_slots, &v), MB_STATUS_SLOT_RANGE);
    fx_expert_req_free(&src);
    fx_msg_free(&m);

    /* Odd payload: 3 tokens x 5 f16 = 30 bytes, 2 bytes tail padding. */
    m = fx_build_expert_req(&src, 3, 5, MB_DTYPE_F16, limits.max_slots, 4);
    PATCH(&m, op, m.len - 1, 1, 0x80, MB_STATUS_BAD_FLAGS);
    PATCH(&m, op, m.len - 2, 1, 0x01, MB_STATUS_BAD_FLAGS);
    PATCH(&m, op, m.len - 3, 1, 0x01, MB_STATUS_OK); /* last payload byte */
    fx_expert_req_free(&src);
    fx_msg_free(&m);

    /* Sizes that overflow: a fixed part whose shape cannot exist. */
    fx_msg raw = fx_build_raw(op, MB_PROTO_EXPERT_REQ_FIXED_BYTES);
    const mb_proto_limits open = {UINT32_MAX, 0, 0};
    struct {
        uint32_t n_tokens, d_model;
        uint16_t dtype;
        uint32_t n_pairs;
        mb_status want;
    } ov[] = {
        {UINT32_MAX, UINT32_MAX, MB_DTYPE_F32, 0, MB_STATUS_OVERFLOW},
        {UINT32_MAX, UINT32_MAX, MB_DTYPE_BF16, UINT32_MAX, MB_STATUS_OVERFLOW},
        {1u << 31, 1u << 31, MB_DTYPE_F32, 0, MB_STATUS_OVERFLOW}, /* act = 2^64 exactly */
        {UINT32_MAX, 1u << 31, MB_DTYPE_F16, 0,
         MB_STATUS_OVERFLOW}, /* act fits, + offset does not */
        {1u << 30, 1u << 31, MB_DTYPE_F32, 0,
         MB_STATUS_BAD_LENGTH}, /* fits 64 bits, not the buffer */
        {1, 1, MB_DTYPE_F32, UINT32_MAX, MB_STATUS_BAD_LENGTH},
    };
    for (size_t i = 0; i < sizeof ov / sizeof ov[0]; i++) {
        fx_put32(&raw, 36, ov[i].n_tokens);
        fx_put32(&raw, 40, ov[i].d_model);
        fx_put16(&raw, 44, ov[i].dtype);
        fx_put32(&raw, 48, ov[i].n_pairs);
        mb_status st = mb_proto_decode_expert_req(raw.p, raw.len, &open, &v);
        CHECK_MSG(st == ov[i].want, "overflow case %zu: %s", i, mb_status_name(st));
    }
    fx_msg_free(&raw);

    /* Body shorter than the fixed part. */
    raw = fx_build_raw(op, 16);
    EXPECT_AS(&raw, op, MB_STATUS_BAD_LENGTH);
    fx_msg_free(&raw);
    raw = fx_build_raw(op, 0);
    EXPECT_AS(&raw, op, MB_STATUS_BAD_LENGTH);
    fx_msg_free(&raw);
}

/* pair_counts whose running sum overflows 32 bits: 65538 tokens x 0xffff. */
static void test_pair_count_overflow(void)
{
    const uint32_t n_tokens = 65538;
    size_t bytes;
    REQUIRE(mb_proto_expert_req_size(n_tokens, 1, MB_DTYPE_F16, 0, &bytes) == MB_STATUS_OK);
    unsigned char *buf = malloc(bytes);
    mb_proto_expert_req_writer w;
    REQUIRE(mb_proto_encode_expert_req(buf, bytes, 1, 0, 0, n_tokens, 1, MB_DTYPE_F16, 0, &w) ==
            MB_STATUS_OK);
    memset(w.act, 0, (size_t)n_tokens * 2);
    memset(w.pair_counts, 0, (size_t)n_tokens * 2);
    const mb_proto_limits open = {UINT32_MAX, 0, 0};
    mb_proto_expert_req v;
    CHECK_EQ(mb_proto_decode_expert_req(buf, bytes, &open, &v), MB_STATUS_OK);
    memset(w.pair_counts, 0xff, (size_t)n_tokens * 2);
    CHECK_EQ(mb_proto_decode_expert_req(buf, bytes, &open, &v), MB_STATUS_PAIR_COUNT);
    /* Counts that wrap to exactly n_pairs if summed in 32 bits unchecked:
     * 65537 * 0xffff + 1 = 2^32 -> 0. */
    for (uint32_t i = 0; i < n_tokens; i++)
        w.pair_counts[i] = i < 65537 ? 0xffff : 1;
    CHECK_EQ(mb_proto_decode_expert_req(buf, bytes, &open, &v), MB_STATUS_PAIR_COUNT);
    free(buf);
}

static void test_expert_reply(void)
{
    /* 3 x 5 f16: out at 72..102, padding to 104. */
    fx_msg m = fx_build_expert_reply(3, 5, MB_DTYPE_F16, 9, NULL);
    const uint16_t op = MB_OP_EXPERT_REPLY;
    REQUIRE(m.len == 104);
    EXPECT_AS(&m, op, MB_STATUS_OK);
    PATCH(&m, op, 42, 2, 1, MB_STATUS_BAD_FLAGS);
    PATCH(&m, op, 44, 4, 1, MB_STATUS_BAD_FLAGS);
    PATCH(&m, op, 102, 1, 1, MB_STATUS_BAD_FLAGS);
    PATCH(&m, op, 40, 2, 7, MB_STATUS_BAD_DTYPE);
    PATCH(&m, op, 32, 4, 0, MB_STATUS_BAD_SHAPE);
    PATCH(&m, op, 36, 4, 0, MB_STATUS_BAD_SHAPE);
    PATCH(&m, op, 32, 4, 4, MB_STATUS_BAD_LENGTH);
    PATCH(&m, op, 36, 4, 4, MB_STATUS_BAD_LENGTH);
    PATCH(&m, op, 32, 4, UINT32_MAX, MB_STATUS_BAD_LENGTH);
    PATCH(&m, op, 40, 2, MB_DTYPE_F32, MB_STATUS_BAD_LENGTH);
    /* An error status needs an empty body. */
    PATCH(&m, op, FX_H_STATUS, 2, MB_STATUS_BACKEND, MB_STATUS_BAD_LENGTH);
    fx_msg_free(&m);

    fx_msg raw = fx_build_raw(op, MB_PROTO_EXPERT_REPLY_FIXED_BYTES);
    fx_put32(&raw, 32, UINT32_MAX);
    fx_put32(&raw, 36, UINT32_MAX);
    EXPECT_AS(&raw, op, MB_STATUS_OVERFLOW);
    /* out fits 64 bits, 72 + out does not: 3969050863 * 2323823089 = 2^63 - 1. */
    fx_put32(&raw, 32, 3969050863u);
    fx_put32(&raw, 36, 2323823089u);
    fx_put16(&raw, 40, MB_DTYPE_BF16);
    EXPECT_AS(&raw, op, MB_STATUS_OVERFLOW);
    /* 2^64 - 2^32 + 72 bytes fits 64 bits but not this buffer. */
    fx_put32(&raw, 32, UINT32_MAX);
    fx_put32(&raw, 36, 1u << 31);
    EXPECT_AS(&raw, op, MB_STATUS_BAD_LENGTH);
    fx_msg_free(&raw);
    raw = fx_build_raw(op, 32);
    EXPECT_AS(&raw, op, MB_STATUS_BAD_LENGTH);
    fx_msg_free(&raw);
}

static void test_hello(void)
{
    fx_msg m = fx_build_hello(5);
    const uint16_t op = MB_OP_HELLO;
    PATCH(&m, op, 32, 4, 0, MB_STATUS_BAD_VERSION);
    PATCH(&m, op, 36, 4, 1, MB_STATUS_BAD_FLAGS);
    fx_msg_free(&m);
    fx_msg raw = fx_build_raw(op, 16);
    fx_put32(&raw, 32, MB_PROTO_VERSION);
    EXPECT_AS(&raw, op, MB_STATUS_BAD_LENGTH);
    fx_msg_free(&raw);
    raw = fx_build_raw(op, 0);
    EXPECT_AS(&raw, op, MB_STATUS_BAD_LENGTH);
    fx_msg_free(&raw);

    mb_proto_hello_reply r = fx_hello_reply_value();
    m = fx_build_hello_reply(&r, 6);
    const uint16_t rop = MB_OP_HELLO_REPLY;
    EXPECT_AS(&m, rop, MB_STATUS_OK);
    PATCH(&m, rop, 32, 4, 0, MB_STATUS_BAD_VERSION);
    PATCH(&m, rop, 36, 4, 0, MB_STATUS_BAD_DTYPE);
    PATCH(&m, rop, 36, 4, 1u << 3, MB_STATUS_BAD_DTYPE);
    PATCH(&m, rop, 40, 4, MB_DTYPE_MASK_ALL | 0x100, MB_STATUS_BAD_DTYPE);
    PATCH(&m, rop, FX_H_STATUS, 2, MB_STATUS_DEVICE, MB_STATUS_BAD_LENGTH);
    /* backend "cpu" at 80: junk after its NUL; device at 144. */
    PATCH(&m, rop, 80 + 10, 1, 'z', MB_STATUS_BAD_FLAGS);
    PATCH(&m, rop, 144 + 63, 1, 'z', MB_STATUS_BAD_FLAGS);
    fx_msg bad = fx_msg_copy(m.p, m.len);
    memset(bad.p + 80, 'b', MB_PROTO_NAME_BYTES);
    EXPECT_AS(&bad, rop, MB_STATUS_BAD_LENGTH);
    memcpy(bad.p, m.p, m.len);
    memset(bad.p + 144, 'd', MB_PROTO_NAME_BYTES);
    EXPECT_AS(&bad, rop, MB_STATUS_BAD_LENGTH);
    /* Unterminated backend running into a terminated device field. */
    memcpy(bad.p, m.p, m.len);
    memset(bad.p + 80, 'b', MB_PROTO_NAME_BYTES);
    bad.p[144] = 0;
    EXPECT_AS(&bad, rop, MB_STATUS_BAD_LENGTH);
    fx_msg_free(&bad);
    fx_msg_free(&m);
    raw = fx_build_raw(rop, 168);
    EXPECT_AS(&raw, rop, MB_STATUS_BAD_LENGTH);
    fx_msg_free(&raw);
}

static void test_load_expert_inline(void)
{
    /* 3 x 5 f16 = 30-byte matrices at data offsets 0, 32, 64; len 208. */
    fx_load_expert f;
    fx_msg m = fx_build_load_expert_inline(&f, 3, 5, MB_DTYPE_F16, 9, 77);
    const uint16_t op = MB_OP_LOAD_EXPERT;
    REQUIRE(m.len == 208);
    EXPECT_AS(&m, op, MB_STATUS_OK);
    PATCH(&m, op, 44, 4, 0, MB_STATUS_BAD_SHAPE); /* d_model */
    PATCH(&m, op, 48, 4, 0, MB_STATUS_BAD_SHAPE); /* d_ff */
    PATCH(&m, op, 44, 4, limits.max_d_model + 1, MB_STATUS_BAD_SHAPE);
    PATCH(&m, op, 48, 4, 6, MB_STATUS_BAD_SHAPE);  /* bytes no longer rows*cols*size */
    PATCH(&m, op, 80, 8, 32, MB_STATUS_BAD_SHAPE); /* bytes[0] */
    PATCH(&m, op, 96, 8, 0, MB_STATUS_BAD_SHAPE);  /* bytes[2] */
    PATCH(&m, op, 52, 2, MB_DTYPE_COUNT_, MB_STATUS_BAD_DTYPE);
    PATCH(&m, op, 52, 2, 0xffff, MB_STATUS_BAD_DTYPE);
    /* A quantized type needs d_model and d_ff in whole blocks (these are not). */
    PATCH(&m, op, 52, 2, MB_DTYPE_Q8_0, MB_STATUS_BAD_SHAPE);
    PATCH(&m, op, 52, 2, MB_DTYPE_F32, MB_STATUS_BAD_SHAPE);
    PATCH(&m, op, 54, 2, 2, MB_STATUS_UNSUPPORTED);
    PATCH(&m, op, 40, 4, limits.max_slots, MB_STATUS_SLOT_RANGE);
    PATCH(&m, op, 40, 4, UINT32_MAX, MB_STATUS_SLOT_RANGE);
    /* up's and down's own dtypes (108, 110): named, sized as bytes[] says;
     * element dtypes may differ on the wire (backends refuse the mix). */
    PATCH(&m, op, 108, 2, MB_DTYPE_COUNT_, MB_STATUS_BAD_DTYPE);
    PATCH(&m, op, 110, 2, 0xffff, MB_STATUS_BAD_DTYPE);
    PATCH(&m, op, 110, 2, MB_DTYPE_F32, MB_STATUS_BAD_SHAPE);
    PATCH(&m, op, 110, 2, MB_DTYPE_Q4_K, MB_STATUS_BAD_SHAPE);
    PATCH(&m, op, 108, 2, MB_DTYPE_BF16, MB_STATUS_OK);
    PATCH(&m, op, 104, 4, 1, MB_STATUS_BAD_LENGTH); /* path_len with INLINE */
    /* Inline regions outside the buffer, overflowing, or moved. */
    PATCH(&m, op, 72, 8, 96 - 29, MB_STATUS_BAD_LENGTH); /* offset[2]: ends past the body */
    PATCH(&m, op, 72, 8, 1ull << 40, MB_STATUS_BAD_LENGTH);
    PATCH(&m, op, 72, 8, UINT64_MAX - 10, MB_STATUS_OVERFLOW);
    PATCH(&m, op, 64, 8, UINT64_MAX, MB_STATUS_OVERFLOW);
    PATCH(&m, op, 64, 8, 40, MB_STATUS_BAD_LENGTH); /* offset[1] in bounds, off layout */
    PATCH(&m, op, 64, 8, 0, MB_STATUS_BAD_LENGTH);  /* overlapping matrix 0 */
    PATCH(&m, op, 56, 8, 8, MB_STATUS_BAD_LENGTH);
    /* Padding after each matrix (data area starts at 112). */
    PATCH(&m, op, 112 + 30, 1, 1, MB_STATUS_BAD_FLAGS);
    PATCH(&m, op, 112 + 63, 1, 1, MB_STATUS_BAD_FLAGS);
    PATCH(&m, op, 112 + 95, 1, 1, MB_STATUS_BAD_FLAGS);
    PATCH(&m, op, 112 + 94, 1, 1, MB_STATUS_BAD_FLAGS);
    PATCH(&m, op, 112 + 93, 1, 1, MB_STATUS_OK); /* last weight byte */
    mb_proto_load_expert v;
    const mb_proto_limits no_slots = {0, 0, 0};
    CHECK_EQ(mb_proto_decode_load_expert(m.p, m.len, &no_slots, &v), MB_STATUS_SLOT_RANGE);
    CHECK_EQ(mb_proto_decode_load_expert(m.p, m.len, NULL, &v), MB_STATUS_INVALID_ARG);

    /* Trailing slack after the last matrix. */
    fx_msg longer = fx_msg_grow(&m, 8);
    fx_put64(&longer, FX_H_BODY, longer.len - MB_PROTO_HEADER_BYTES);
    EXPECT_AS(&longer, op, MB_STATUS_BAD_LENGTH);
    fx_msg_free(&longer);
    fx_load_expert_free(&f);
    fx_msg_free(&m);

    /* Shapes whose byte count overflows. */
    fx_msg raw = fx_build_raw(op, MB_PROTO_LOAD_EXPERT_FIXED_BYTES);
    const mb_proto_limits open = {UINT32_MAX, 0, 0};
    fx_put32(&raw, 44, UINT32_MAX);
    fx_put32(&raw, 48, UINT32_MAX);
    fx_put16(&raw, 52, MB_DTYPE_F32);
    CHECK_EQ(mb_proto_decode_load_expert(raw.p, raw.len, &open, &v), MB_STATUS_OVERFLOW);
    /* bytes fit 64 bits but three aligned copies do not. */
    fx_put32(&raw, 44, UINT32_MAX);
    fx_put32(&raw, 48, 1u << 31);
    fx_put16(&raw, 52, MB_DTYPE_F16);
    fx_put16(&raw, 108, MB_DTYPE_F16);
    fx_put16(&raw, 110, MB_DTYPE_F16);
    for (int i = 0; i < 3; i++)
        fx_put64(&raw, 80 + 8 * i, (uint64_t)UINT32_MAX << 32);
    CHECK_EQ(mb_proto_decode_load_expert(raw.p, raw.len, &open, &v), MB_STATUS_OVERFLOW);
    /* Plausible shape, no data. */
    fx_put32(&raw, 44, 4);
    fx_put32(&raw, 48, 4);
    for (int i = 0; i < 3; i++)
        fx_put64(&raw, 80 + 8 * i, 32);
    CHECK_EQ(mb_proto_decode_load_expert(raw.p, raw.len, &open, &v), MB_STATUS_BAD_LENGTH);
    fx_msg_free(&raw);
    raw = fx_build_raw(op, 72);
    EXPECT_AS(&raw, op, MB_STATUS_BAD_LENGTH);
    fx_msg_free(&raw);
}

static void test_load_expert_file(void)
{
    /* path "/m/w.bin" (8 bytes) at 112..120, len 120; "/m/x" (4) pads to 120 too. */
    mb_proto_load_expert src;
    fx_msg m = fx_build_load_expert_file(&src, "/m/w.bin", 4, 8, MB_DTYPE_BF16, 1);
    fx_msg s = fx_build_load_expert_file(&src, "/m/x", 4, 8, MB_DTYPE_BF16, 1);
    const uint16_t op = MB_OP_LOAD_EXPERT;
    REQUIRE(m.len == 120 && s.len == 120);
    EXPECT_AS(&m, op, MB_STATUS_OK);
    EXPECT_AS(&s, op, MB_STATUS_OK);
    PATCH(&m, op, 104, 4, 0, MB_STATUS_BAD_LENGTH);
    PATCH(&m, op, 104, 4, MB_PROTO_PATH_BYTES, MB_STATUS_BAD_LENGTH);
    PATCH(&m, op, 104, 4, UINT32_MAX, MB_STATUS_BAD_LENGTH);
    PATCH(&m, op, 104, 4, 9, MB_STATUS_BAD_LENGTH);     /* runs past the body */
    PATCH(&m, op, 104, 4, 7, MB_STATUS_BAD_FLAGS);      /* last path byte becomes padding */
    PATCH(&m, op, 112 + 3, 1, 0, MB_STATUS_BAD_LENGTH); /* NUL inside the path */
    PATCH(&m, op, 112, 1, 0, MB_STATUS_BAD_LENGTH);
    PATCH(&s, op, 112 + 4, 1, '!', MB_STATUS_BAD_FLAGS); /* padding after the path */
    PATCH(&s, op, 112 + 7, 1, 1, MB_STATUS_BAD_FLAGS);
    /* File regions must end within INT64_MAX. */
    PATCH(&m, op, 56, 8, UINT64_MAX, MB_STATUS_OVERFLOW);
    PATCH(&m, op, 64, 8, (uint64_t)INT64_MAX, MB_STATUS_OVERFLOW);
    PATCH(&m, op, 72, 8, (uint64_t)INT64_MAX - 65, MB_STATUS_OK);
    PATCH(&m, op, 72, 8, (uint64_t)INT64_MAX - 63, MB_STATUS_OVERFLOW);
    /* ... and start aligned for their dtype (bf16: 2 bytes). */
    PATCH(&m, op, 72, 8, (uint64_t)INT64_MAX - 64, MB_STATUS_MISALIGNED);
    PATCH(&m, op, 56, 8, 4097, MB_STATUS_MISALIGNED);
    PATCH(&m, op, 80, 8, 65, MB_STATUS_BAD_SHAPE);
    fx_msg_free(&m);
    fx_msg_free(&s);

    /* A path of MB_PROTO_PATH_BYTES bytes, sized consistently. */
    fx_msg raw = fx_build_raw(op, MB_PROTO_LOAD_EXPERT_FIXED_BYTES + MB_PROTO_PATH_BYTES);
    fx_put32(&raw, 44, 1);
    fx_put32(&raw, 48, 1);
    fx_put16(&raw, 52, MB_DTYPE_F32);
    fx_put16(&raw, 54, MB_WEIGHTS_FILE);
    for (int i = 0; i < 3; i++)
        fx_put64(&raw, 80 + 8 * i, 4);
    memset(raw.p + 112, 'q', MB_PROTO_PATH_BYTES);
    fx_put32(&raw, 104, MB_PROTO_PATH_BYTES);
    EXPECT_AS(&raw, op, MB_STATUS_BAD_LENGTH);
    fx_put32(&raw, 104, MB_PROTO_PATH_BYTES - 8);
    EXPECT_AS(&raw, op, MB_STATUS_BAD_LENGTH); /* body holds 8 bytes more than the path */
    fx_msg_free(&raw);
}

static void test_empty(void)
{
    fx_msg raw = fx_build_raw(MB_OP_PING, 8);
    EXPECT_AS(&raw, MB_OP_PING, MB_STATUS_BAD_LENGTH);
    fx_msg_free(&raw);
    raw = fx_build_raw(MB_OP_STATUS, 16);
    EXPECT_AS(&raw, MB_OP_STATUS, MB_STATUS_BAD_LENGTH);
    fx_msg_free(&raw);
    fx_msg hello = fx_build_hello(1);
    mb_proto_header h;
    CHECK_EQ(mb_proto_decode_empty(hello.p, hello.len, &h), MB_STATUS_PROTOCOL);
    fx_msg_free(&hello);
}

int main(void)
{
    test_header();
    test_expert_req();
    test_pair_count_overflow();
    test_expert_reply();
    test_hello();
    test_load_expert_inline();
    test_load_expert_file();
    test_empty();
    return mb_test_finish("message_reject");
}
