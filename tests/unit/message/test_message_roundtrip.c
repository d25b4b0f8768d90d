/* Round trips of every wire message: encode, decode, compare every field and
 * every array, and check that views point inside the buffer. Also covers the
 * encoders' own argument checks (FULL leaves the buffer untouched, ...). */
#include <stdint.h>
#include <string.h>

#include "protocol/message.h"
#include "tests/testutil.h"
#include "tests/unit/message/message_fixtures.h"

static const mb_proto_limits limits = {.max_slots = 64, .max_tokens = 0, .max_d_model = 0};

/* 1 if [p, p + n) lies inside the message. */
static int inside(const fx_msg *m, const void *p, size_t n)
{
    const unsigned char *q = p;
    return q >= m->p && q <= m->p + m->len && n <= (size_t)(m->p + m->len - q);
}

static void test_header(void)
{
    mb_proto_header h, got;
    mb_proto_header_init(&h, MB_OP_PING, 0xfeedfacecafebeefull, 0);
    CHECK_EQ(h.magic, MB_PROTO_MAGIC);
    CHECK_EQ(h.version, MB_PROTO_VERSION);
    CHECK_EQ(h.flags, 0);
    CHECK_EQ(h.status, 0);
    CHECK_EQ(h.reserved, 0);
    uint64_t buf[4];
    memcpy(buf, &h, sizeof h);
    CHECK_EQ(mb_proto_decode_header(buf, sizeof buf, &got), MB_STATUS_OK);
    CHECK(memcmp(&h, &got, sizeof h) == 0);
    CHECK_EQ(got.tag, 0xfeedfacecafebeefull);
    /* "MBRK" in byte order. */
    CHECK(memcmp(buf, "MBRK", 4) == 0);

    for (int op = 0; op < MB_OP_COUNT_ + 2; op++)
        CHECK_EQ(mb_proto_opcode_is_reply(op), op == MB_OP_HELLO_REPLY ||
                                                   op == MB_OP_EXPERT_REPLY || op == MB_OP_PONG ||
                                                   op == MB_OP_STATUS);
}

static void check_expert_req(uint32_t n_tokens, uint32_t d_model, mb_dtype dtype, uint64_t seed)
{
    fx_expert_req src;
    fx_msg m = fx_build_expert_req(&src, n_tokens, d_model, dtype, limits.max_slots, seed);
    size_t bytes;
    CHECK_EQ(mb_proto_expert_req_size(n_tokens, d_model, dtype, src.n_pairs, &bytes), MB_STATUS_OK);
    CHECK_EQ(bytes, m.len);
    CHECK_EQ(m.len % MB_PROTO_ALIGN, 0);

    mb_proto_header h;
    REQUIRE(mb_proto_decode_header(m.p, m.len, &h) == MB_STATUS_OK);
    CHECK_EQ(h.opcode, MB_OP_EXPERT_REQ);
    CHECK_EQ(h.tag, src.tag);
    CHECK_EQ(h.flags, src.flags);
    CHECK_EQ(h.body_bytes, m.len - MB_PROTO_HEADER_BYTES);

    mb_proto_expert_req v;
    mb_status st = mb_proto_decode_expert_req(m.p, m.len, &limits, &v);
    CHECK_MSG(st == MB_STATUS_OK, "%s for n_tokens=%u d_model=%u dtype=%d", mb_status_name(st),
              n_tokens, d_model, dtype);
    if (st == MB_STATUS_OK) {
        CHECK_EQ(v.layer, src.layer);
        CHECK_EQ(v.n_tokens, n_tokens);
        CHECK_EQ(v.d_model, d_model);
        CHECK_EQ(v.dtype, dtype);
        CHECK_EQ(v.n_pairs, src.n_pairs);
        CHECK(inside(&m, v.pair_counts, n_tokens * sizeof(uint16_t)));
        CHECK(inside(&m, v.pairs, src.n_pairs * sizeof(mb_proto_pair)));
        CHECK(inside(&m, v.act, src.act_bytes));
        CHECK((uintptr_t)v.pairs % MB_PROTO_ALIGN == 0 && (uintptr_t)v.act % MB_PROTO_ALIGN == 0);
        CHECK(memcmp(v.pair_counts, src.pair_counts, n_tokens * sizeof(uint16_t)) == 0);
        for (uint32_t i = 0; i < src.n_pairs; i++) {
            CHECK_EQ(v.pairs[i].slot, src.pairs[i].slot);
            CHECK(v.pairs[i].gate == src.pairs[i].gate);
        }
        CHECK(memcmp(v.act, src.act, src.act_bytes) == 0);
    }
    fx_expert_req_free(&src);
    fx_msg_free(&m);
}

static void test_expert_req_encoder_errors(void)
{
    uint64_t buf[64];
    mb_proto_expert_req_writer w;
    size_t need;
    REQUIRE(mb_proto_expert_req_size(3, 5, MB_DTYPE_F16, 4, &need) == MB_STATUS_OK);
    /* 56 + 6 (+2 pad) + 32 + 30 (+2 pad) */
    CHECK_EQ(need, 128);
    memset(buf, 0xab, sizeof buf);
    CHECK_EQ(mb_proto_encode_expert_req(buf, need - 1, 1, 0, 0, 3, 5, MB_DTYPE_F16, 4, &w),
             MB_STATUS_FULL);
    const unsigned char *b = (const unsigned char *)buf;
    int untouched = 1;
    for (size_t i = 0; i < sizeof buf; i++)
        untouched &= b[i] == 0xab;
    CHECK(untouched);
    CHECK_EQ(mb_proto_encode_expert_req((char *)buf + 4, 400, 1, 0, 0, 3, 5, MB_DTYPE_F16, 4, &w),
             MB_STATUS_MISALIGNED);
    CHECK_EQ(mb_proto_encode_expert_req(buf, sizeof buf, 1, 0x2, 0, 3, 5, MB_DTYPE_F16, 4, &w),
             MB_STATUS_BAD_FLAGS);
    CHECK_EQ(mb_proto_encode_expert_req(buf, sizeof buf, 1, 0, 0, 3, 5, (mb_dtype)3, 4, &w),
             MB_STATUS_BAD_DTYPE);
    CHECK_EQ(mb_proto_encode_expert_req(buf, sizeof buf, 1, 0, 0, 0, 5, MB_DTYPE_F16, 4, &w),
             MB_STATUS_BAD_SHAPE);
    CHECK_EQ(mb_proto_encode_expert_req(buf, sizeof buf, 1, 0, 0, 3, 0, MB_DTYPE_F16, 4, &w),
             MB_STATUS_BAD_SHAPE);
    CHECK_EQ(mb_proto_encode_expert_req(NULL, sizeof buf, 1, 0, 0, 3, 5, MB_DTYPE_F16, 4, &w),
             MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_proto_expert_req_size(UINT32_MAX, UINT32_MAX, MB_DTYPE_F32, UINT32_MAX, &need),
             MB_STATUS_OVERFLOW);
    CHECK_EQ(mb_proto_expert_req_size(UINT32_MAX, 1u << 31, MB_DTYPE_F16, 0, &need),
             MB_STATUS_OVERFLOW);
    CHECK_EQ(mb_proto_expert_reply_size(UINT32_MAX, UINT32_MAX, MB_DTYPE_BF16, &need),
             MB_STATUS_OVERFLOW);
    /* The largest n_pairs still has a size. */
    CHECK_EQ(mb_proto_expert_req_size(1, 1, MB_DTYPE_F32, UINT32_MAX, &need), MB_STATUS_OK);
    CHECK_EQ(need, 64 + 8ull * UINT32_MAX + 8);
}

static void check_expert_reply(uint32_t n_tokens, uint32_t d_model, mb_dtype dtype, uint64_t seed)
{
    unsigned char *src;
    fx_msg m = fx_build_expert_reply(n_tokens, d_model, dtype, seed, &src);
    size_t out_bytes = (size_t)n_tokens * d_model * fx_dtype_bytes(dtype);
    mb_proto_expert_reply v;
    mb_status st = mb_proto_decode_expert_reply(m.p, m.len, &v);
    CHECK_MSG(st == MB_STATUS_OK, "%s", mb_status_name(st));
    if (st == MB_STATUS_OK) {
        CHECK_EQ(v.n_tokens, n_tokens);
        CHECK_EQ(v.d_model, d_model);
        CHECK_EQ(v.dtype, dtype);
        CHECK_EQ(v.timings.decode_ns, seed);
        CHECK_EQ(v.timings.compute_ns, 2 * seed);
        CHECK_EQ(v.timings.encode_ns, 3 * seed);
        CHECK(inside(&m, v.out, out_bytes));
        CHECK(memcmp(v.out, src, out_bytes) == 0);
    }
    mb_proto_header h;
    CHECK_EQ(mb_proto_decode_header(m.p, m.len, &h), MB_STATUS_OK);
    CHECK_EQ(h.tag, 0x2000 + seed);
    CHECK_EQ(h.status, MB_STATUS_OK);
    free(src);
    fx_msg_free(&m);
}

static void test_error_replies(void)
{
    mb_proto_expert_reply v;
    mb_proto_hello_reply hr;
    fx_msg m = fx_build_empty(MB_OP_EXPERT_REPLY, 9, MB_STATUS_BACKEND);
    CHECK_EQ(mb_proto_decode_expert_reply(m.p, m.len, &v), MB_STATUS_BACKEND);
    fx_msg_free(&m);
    /* A code this build does not know passes through unchanged. */
    m = fx_build_empty(MB_OP_EXPERT_REPLY, 9, (mb_status)1000);
    CHECK_EQ(mb_proto_decode_expert_reply(m.p, m.len, &v), 1000);
    fx_msg_free(&m);
    m = fx_build_empty(MB_OP_HELLO_REPLY, 9, MB_STATUS_DEVICE);
    CHECK_EQ(mb_proto_decode_hello_reply(m.p, m.len, &hr), MB_STATUS_DEVICE);
    fx_msg_free(&m);

    uint64_t buf[8];
    size_t bytes;
    CHECK_EQ(mb_proto_encode_empty(buf, sizeof buf, MB_OP_EXPERT_REPLY, 1, MB_STATUS_OK, &bytes),
             MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_proto_encode_empty(buf, sizeof buf, MB_OP_HELLO_REPLY, 1, MB_STATUS_OK, &bytes),
             MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_proto_encode_empty(buf, sizeof buf, MB_OP_PING, 1, MB_STATUS_IO, &bytes),
             MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_proto_encode_empty(buf, sizeof buf, MB_OP_SHUTDOWN, 1, MB_STATUS_IO, &bytes),
             MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_proto_encode_empty(buf, sizeof buf, MB_OP_HELLO, 1, MB_STATUS_OK, &bytes),
             MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_proto_encode_empty(buf, sizeof buf, MB_OP_EXPERT_REQ, 1, MB_STATUS_OK, &bytes),
             MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_proto_encode_empty(buf, sizeof buf, MB_OP_STATUS, 1, (mb_status)70000, &bytes),
             MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_proto_encode_empty(buf, 31, MB_OP_PING, 1, MB_STATUS_OK, &bytes), MB_STATUS_FULL);
}

static void test_empty(void)
{
    static const struct {
        mb_proto_opcode op;
        mb_status status;
    } cases[] = {
        {MB_OP_PING, MB_STATUS_OK},      {MB_OP_PONG, MB_STATUS_OK},
        {MB_OP_SHUTDOWN, MB_STATUS_OK},  {MB_OP_STATUS, MB_STATUS_OK},
        {MB_OP_STATUS, MB_STATUS_NOMEM}, {MB_OP_STATUS, (mb_status)0xffff},
        {MB_OP_PONG, MB_STATUS_BACKEND},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fx_msg m = fx_build_empty(cases[i].op, 100 + i, cases[i].status);
        CHECK_EQ(m.len, MB_PROTO_HEADER_BYTES);
        mb_proto_header h;
        CHECK_EQ(mb_proto_decode_empty(m.p, m.len, &h), MB_STATUS_OK);
        CHECK_EQ(h.opcode, cases[i].op);
        CHECK_EQ(h.tag, 100 + i);
        CHECK_EQ(h.status, cases[i].status);
        CHECK_EQ(h.body_bytes, 0);
        fx_msg_free(&m);
    }
}

static void test_hello(void)
{
    fx_msg m = fx_build_hello(42);
    CHECK_EQ(m.len, MB_PROTO_HEADER_BYTES + MB_PROTO_HELLO_BODY_BYTES);
    uint32_t version = 0;
    CHECK_EQ(mb_proto_decode_hello(m.p, m.len, &version), MB_STATUS_OK);
    CHECK_EQ(version, MB_PROTO_VERSION);
    /* A newer peer's higher version is reported, not rejected. */
    fx_put32(&m, 32, 7);
    CHECK_EQ(mb_proto_decode_hello(m.p, m.len, &version), MB_STATUS_OK);
    CHECK_EQ(version, 7);
    fx_msg_free(&m);
}

static void check_hello_reply(const mb_proto_hello_reply *r)
{
    fx_msg m = fx_build_hello_reply(r, 43);
    CHECK_EQ(m.len, MB_PROTO_HEADER_BYTES + MB_PROTO_HELLO_REPLY_BODY_BYTES);
    mb_proto_hello_reply got;
    memset(&got, 0x5a, sizeof got);
    CHECK_EQ(mb_proto_decode_hello_reply(m.p, m.len, &got), MB_STATUS_OK);
    CHECK_EQ(got.version, r->version);
    CHECK_EQ(got.payload_dtype_mask, r->payload_dtype_mask);
    CHECK_EQ(got.weight_dtype_mask, r->weight_dtype_mask);
    CHECK_EQ(got.preferred_batch, r->preferred_batch);
    CHECK_EQ(got.n_threads, r->n_threads);
    CHECK_EQ(got.max_slots, r->max_slots);
    CHECK_EQ(got.mem_total_bytes, r->mem_total_bytes);
    CHECK_EQ(got.mem_free_bytes, r->mem_free_bytes);
    CHECK_EQ(got.max_message_bytes, r->max_message_bytes);
    CHECK(strcmp(got.backend, r->backend) == 0);
    CHECK(strcmp(got.device, r->device) == 0);
    fx_msg_free(&m);
}

static void test_hello_reply(void)
{
    mb_proto_hello_reply r = fx_hello_reply_value();
    check_hello_reply(&r);
    /* Empty names and names of the longest length. */
    r.backend[0] = 0;
    memset(r.device, 'd', MB_PROTO_NAME_BYTES - 1);
    r.device[MB_PROTO_NAME_BYTES - 1] = 0;
    r.mem_total_bytes = UINT64_MAX;
    r.max_slots = UINT32_MAX;
    check_hello_reply(&r);

    /* Encoder checks: unterminated name, bad masks, old version. */
    uint64_t buf[64];
    size_t bytes;
    mb_proto_hello_reply bad = fx_hello_reply_value();
    memset(bad.backend, 'x', MB_PROTO_NAME_BYTES);
    CHECK_EQ(mb_proto_encode_hello_reply(buf, sizeof buf, 1, &bad, &bytes), MB_STATUS_INVALID_ARG);
    bad = fx_hello_reply_value();
    bad.payload_dtype_mask = 0;
    CHECK_EQ(mb_proto_encode_hello_reply(buf, sizeof buf, 1, &bad, &bytes), MB_STATUS_BAD_DTYPE);
    bad = fx_hello_reply_value();
    bad.weight_dtype_mask = 1u << MB_DTYPE_COUNT_; /* past every weight dtype */
    CHECK_EQ(mb_proto_encode_hello_reply(buf, sizeof buf, 1, &bad, &bytes), MB_STATUS_BAD_DTYPE);
    bad = fx_hello_reply_value();
    bad.payload_dtype_mask = MB_DTYPE_MASK(MB_DTYPE_Q8_0); /* quantized payloads: never */
    CHECK_EQ(mb_proto_encode_hello_reply(buf, sizeof buf, 1, &bad, &bytes), MB_STATUS_BAD_DTYPE);
    bad = fx_hello_reply_value();
    bad.weight_dtype_mask = MB_DTYPE_MASK_WEIGHTS; /* quantized weights: fine */
    CHECK_EQ(mb_proto_encode_hello_reply(buf, sizeof buf, 1, &bad, &bytes), MB_STATUS_OK);
    bad = fx_hello_reply_value();
    bad.version = 0;
    CHECK_EQ(mb_proto_encode_hello_reply(buf, sizeof buf, 1, &bad, &bytes), MB_STATUS_BAD_VERSION);
    r = fx_hello_reply_value();
    CHECK_EQ(mb_proto_encode_hello_reply(buf, 207, 1, &r, &bytes), MB_STATUS_FULL);
}

static void check_load_inline_mixed(uint32_t d_model, uint32_t d_ff, const mb_dtype *wdtype,
                                    uint64_t seed)
{
    fx_load_expert f;
    fx_msg m = fx_build_load_expert_inline_mixed(&f, d_model, d_ff, wdtype, 7, seed);
    size_t mat[3], at[3], end = 0;
    for (int i = 0; i < 3; i++) {
        mat[i] = fx_weight_mat_bytes(d_model, d_ff, wdtype[i]);
        at[i] = end;
        end += (mat[i] + 7) & ~(size_t)7;
    }
    CHECK_EQ(m.len, 112 + end);
    mb_proto_load_expert v;
    mb_status st = mb_proto_decode_load_expert(m.p, m.len, &limits, &v);
    CHECK_MSG(st == MB_STATUS_OK, "%s", mb_status_name(st));
    if (st == MB_STATUS_OK) {
        CHECK_EQ(v.layer, f.m.layer);
        CHECK_EQ(v.expert_id, f.m.expert_id);
        CHECK_EQ(v.slot, 7);
        CHECK_EQ(v.d_model, d_model);
        CHECK_EQ(v.d_ff, d_ff);
        CHECK_EQ(v.source, MB_WEIGHTS_INLINE);
        CHECK(v.path == NULL);
        CHECK_EQ(v.path_len, 0);
        for (int i = 0; i < 3; i++) {
            CHECK_EQ(v.wdtype[i], wdtype[i]);
            CHECK_EQ(v.bytes[i], mat[i]);
            CHECK_EQ(v.offset[i], at[i]);
            CHECK(inside(&m, v.data[i], mat[i]));
            CHECK((uintptr_t)v.data[i] % MB_PROTO_ALIGN == 0);
            CHECK(memcmp(v.data[i], f.w[i], mat[i]) == 0);
        }
    }
    fx_load_expert_free(&f);
    fx_msg_free(&m);
}

static void check_load_inline(uint32_t d_model, uint32_t d_ff, mb_dtype wdtype, uint64_t seed)
{
    const mb_dtype wd[3] = {wdtype, wdtype, wdtype};
    check_load_inline_mixed(d_model, d_ff, wd, seed);
}

static void check_load_file_mixed(const char *path, uint32_t d_model, uint32_t d_ff,
                                  const mb_dtype *wdtype)
{
    mb_proto_load_expert src, v;
    fx_msg m = fx_build_load_expert_file_mixed(&src, path, d_model, d_ff, wdtype, 63);
    size_t plen = strlen(path);
    CHECK_EQ(m.len, 112 + ((plen + 7) & ~(size_t)7));
    mb_status st = mb_proto_decode_load_expert(m.p, m.len, &limits, &v);
    CHECK_MSG(st == MB_STATUS_OK, "%s", mb_status_name(st));
    if (st == MB_STATUS_OK) {
        CHECK_EQ(v.source, MB_WEIGHTS_FILE);
        CHECK_EQ(v.slot, 63);
        CHECK_EQ(v.layer, src.layer);
        CHECK_EQ(v.expert_id, src.expert_id);
        CHECK_EQ(v.d_model, d_model);
        CHECK_EQ(v.d_ff, d_ff);
        CHECK_EQ(v.path_len, plen);
        CHECK(inside(&m, v.path, plen));
        CHECK(memcmp(v.path, path, plen) == 0);
        for (int i = 0; i < 3; i++) {
            CHECK_EQ(v.wdtype[i], wdtype[i]);
            CHECK_EQ(v.offset[i], src.offset[i]);
            CHECK_EQ(v.bytes[i], src.bytes[i]);
            CHECK(v.data[i] == NULL);
        }
    }
    fx_msg_free(&m);
}

static void check_load_file(const char *path, uint32_t d_model, uint32_t d_ff, mb_dtype wdtype)
{
    const mb_dtype wd[3] = {wdtype, wdtype, wdtype};
    check_load_file_mixed(path, d_model, d_ff, wd);
}

static void test_load_expert_encoder_errors(void)
{
    fx_load_expert f;
    fx_msg m = fx_build_load_expert_inline(&f, 4, 6, MB_DTYPE_F32, 0, 1);
    uint64_t buf[128];
    size_t bytes;
    mb_proto_load_expert e = f.m;
    e.d_ff = 0;
    CHECK_EQ(mb_proto_encode_load_expert(buf, sizeof buf, 1, &e, &bytes), MB_STATUS_BAD_SHAPE);
    e = f.m;
    e.bytes[1] += 4;
    CHECK_EQ(mb_proto_encode_load_expert(buf, sizeof buf, 1, &e, &bytes), MB_STATUS_BAD_SHAPE);
    e = f.m;
    e.data[2] = NULL;
    CHECK_EQ(mb_proto_encode_load_expert(buf, sizeof buf, 1, &e, &bytes), MB_STATUS_INVALID_ARG);
    e = f.m;
    e.wdtype[2] = (mb_dtype)9;
    CHECK_EQ(mb_proto_encode_load_expert(buf, sizeof buf, 1, &e, &bytes), MB_STATUS_BAD_DTYPE);
    /* Each matrix's rows are whole blocks of its own dtype: 4 x 6 is not
     * Q8_0 blocks for down alone either. */
    e = f.m;
    e.wdtype[2] = MB_DTYPE_Q8_0;
    CHECK_EQ(mb_proto_encode_load_expert(buf, sizeof buf, 1, &e, &bytes), MB_STATUS_BAD_SHAPE);
    e = f.m;
    e.source = (mb_proto_weight_source)2;
    CHECK_EQ(mb_proto_encode_load_expert(buf, sizeof buf, 1, &e, &bytes), MB_STATUS_UNSUPPORTED);
    e = f.m;
    CHECK_EQ(mb_proto_encode_load_expert(buf, m.len - 8, 1, &e, &bytes), MB_STATUS_FULL);
    e.d_model = e.d_ff = UINT32_MAX;
    e.bytes[0] = e.bytes[1] = e.bytes[2] = 0;
    CHECK_EQ(mb_proto_load_expert_size(&e, &bytes), MB_STATUS_OVERFLOW);

    e = f.m;
    e.source = MB_WEIGHTS_FILE;
    e.path = "a\0b";
    e.path_len = 3;
    CHECK_EQ(mb_proto_encode_load_expert(buf, sizeof buf, 1, &e, &bytes), MB_STATUS_INVALID_ARG);
    e.path_len = 0;
    CHECK_EQ(mb_proto_encode_load_expert(buf, sizeof buf, 1, &e, &bytes), MB_STATUS_BAD_LENGTH);
    e.path = "/w";
    e.path_len = 2;
    e.offset[2] = (uint64_t)INT64_MAX;
    CHECK_EQ(mb_proto_encode_load_expert(buf, sizeof buf, 1, &e, &bytes), MB_STATUS_OVERFLOW);
    /* A file region starts aligned for its dtype (f32: 4 bytes). */
    e.offset[2] = 4098;
    CHECK_EQ(mb_proto_encode_load_expert(buf, sizeof buf, 1, &e, &bytes), MB_STATUS_MISALIGNED);
    fx_load_expert_free(&f);
    fx_msg_free(&m);
}

int main(void)
{
    test_header();
    const mb_dtype dtypes[] = {MB_DTYPE_F32, MB_DTYPE_F16, MB_DTYPE_BF16};
    uint64_t seed = 1;
    for (int d = 0; d < 3; d++) {
        /* Shapes chosen so pair_counts and the payload both need padding. */
        check_expert_req(1, 1, dtypes[d], seed++);
        check_expert_req(3, 5, dtypes[d], seed++);
        check_expert_req(4, 8, dtypes[d], seed++);
        check_expert_req(17, 33, dtypes[d], seed++);
        check_expert_req(64, 128, dtypes[d], seed++);
        check_expert_reply(1, 1, dtypes[d], seed++);
        check_expert_reply(3, 7, dtypes[d], seed++);
        check_expert_reply(16, 64, dtypes[d], seed++);
        check_load_inline(1, 1, dtypes[d], seed++);
        check_load_inline(3, 5, dtypes[d], seed++);
        check_load_inline(16, 40, dtypes[d], seed++);
        check_load_file("/models/x.safetensors", 4096, 14336, dtypes[d]);
    }
    char long_path[MB_PROTO_PATH_BYTES];
    memset(long_path, 'p', sizeof long_path - 1);
    long_path[sizeof long_path - 1] = 0;
    check_load_file(long_path, 8, 8, MB_DTYPE_BF16);
    check_load_file("x", 1, 1, MB_DTYPE_F32);
    /* Quantized experts travel as their blocks. */
    check_load_inline(32, 64, MB_DTYPE_Q8_0, seed++);
    check_load_inline(64, 32, MB_DTYPE_Q4_0, seed++);
    check_load_inline(256, 512, MB_DTYPE_Q4_K, seed++);
    check_load_inline(512, 256, MB_DTYPE_Q5_K, seed++);
    check_load_inline(256, 256, MB_DTYPE_Q6_K, seed++);
    check_load_file("/models/qwen3-30b-a3b-q4_k_m.gguf", 2048, 768, MB_DTYPE_Q4_K);
    check_load_file("/models/mixtral-q6_k.gguf", 4096, 14336, MB_DTYPE_Q6_K);
    /* Q4_K_M: down in Q6_K beside Q4_K gate/up; matrices of one expert may
     * each take another type (a Q8_0 down row needs d_ff in 32s only). */
    const mb_dtype q4km[3] = {MB_DTYPE_Q4_K, MB_DTYPE_Q4_K, MB_DTYPE_Q6_K};
    const mb_dtype odd[3] = {MB_DTYPE_Q8_0, MB_DTYPE_Q4_K, MB_DTYPE_Q8_0};
    check_load_inline_mixed(256, 512, q4km, seed++);
    check_load_inline_mixed(256, 96, odd, seed++);
    check_load_file_mixed("/models/qwen3-30b-a3b-q4_k_m.gguf", 2048, 768, q4km);
    check_load_file_mixed("/m/odd.gguf", 512, 32, odd);
    test_expert_req_encoder_errors();
    test_error_replies();
    test_empty();
    test_hello();
    test_hello_reply();
    test_load_expert_encoder_errors();
    return mb_test_finish("message_roundtrip");
}
