/* Writes the seed corpus for fuzz_decode: valid messages of every opcode and
 * one malformed message per rejection class, each checked against the status
 * it must decode to before it is written. Run once by hand
 * (fuzz_gen_corpus tests/fuzz/corpus); the output is committed. It writes
 * only valid-* and bad-* files: the fuzz-* files beside them are inputs
 * libFuzzer found and stay as they are. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "protocol/message.h"
#include "tests/unit/message/message_fixtures.h"

/* The fuzz target's limits, so "valid" here means valid there. */
static const mb_proto_limits limits = {.max_slots = 64, .max_tokens = 0, .max_d_model = 0};

static const char *out_dir;
static int n_written, n_failed;

/* Checks m decodes to want, writes it as out_dir/name, frees it. */
static void emit(const char *name, fx_msg m, mb_status want)
{
    mb_status got = fx_decode_any(m.p, m.len, &limits);
    if (got != want) {
        fprintf(stderr, "gen_corpus: %s decodes to %s, want %s\n", name, mb_status_name(got),
                mb_status_name(want));
        n_failed++;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", out_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(m.p, 1, m.len, f) != m.len || fclose(f) != 0) {
        fprintf(stderr, "gen_corpus: cannot write %s\n", path);
        n_failed++;
    } else {
        n_written++;
    }
    fx_msg_free(&m);
}

/* A copy of base with width bytes at off replaced by value. */
static fx_msg patched(const fx_msg *base, size_t off, size_t width, uint64_t value)
{
    fx_msg m = fx_msg_copy(base->p, base->len);
    memcpy(m.p + off, &value, width);
    return m;
}

static void gen_expert(void)
{
    fx_expert_req src;
    fx_msg m = fx_build_expert_req(&src, 3, 5, MB_DTYPE_F32, limits.max_slots, 1);
    emit("valid-expert-req-f32-3x5-last", fx_msg_copy(m.p, m.len), MB_STATUS_OK);
    fx_msg_free(&m);
    fx_expert_req_free(&src);
    m = fx_build_expert_req(&src, 1, 1, MB_DTYPE_BF16, limits.max_slots, 2);
    emit("valid-expert-req-bf16-1x1", fx_msg_copy(m.p, m.len), MB_STATUS_OK);
    fx_msg_free(&m);
    fx_expert_req_free(&src);
    m = fx_build_expert_req(&src, 9, 24, MB_DTYPE_BF16, limits.max_slots, 4);
    emit("valid-expert-req-bf16-9x24", fx_msg_copy(m.p, m.len), MB_STATUS_OK);
    fx_msg_free(&m);
    fx_expert_req_free(&src);

    /* 5 x 16 f16, counts (1,2,3,0,1): pairs at 72, act at 128, len 288. */
    m = fx_build_expert_req(&src, 5, 16, MB_DTYPE_F16, limits.max_slots, 4);
    emit("valid-expert-req-f16-5x16", fx_msg_copy(m.p, m.len), MB_STATUS_OK);
    emit("bad-expert-req-magic", patched(&m, 0, 4, 0x4b52424eu), MB_STATUS_BAD_MAGIC);
    emit("bad-expert-req-version", patched(&m, 4, 2, 1), MB_STATUS_BAD_VERSION);
    emit("bad-opcode-0", patched(&m, 6, 2, 0), MB_STATUS_BAD_OPCODE);
    emit("bad-opcode-10", patched(&m, 6, 2, MB_OP_COUNT_), MB_STATUS_BAD_OPCODE);
    emit("bad-expert-req-flags", patched(&m, 16, 4, 0x2), MB_STATUS_BAD_FLAGS);
    emit("bad-expert-req-header-reserved", patched(&m, 22, 2, 1), MB_STATUS_BAD_FLAGS);
    emit("bad-expert-req-request-status", patched(&m, 20, 2, MB_STATUS_IO), MB_STATUS_BAD_FLAGS);
    emit("bad-expert-req-body-long", patched(&m, 24, 8, m.len - 32 + 8), MB_STATUS_TRUNCATED);
    emit("bad-expert-req-body-short", patched(&m, 24, 8, m.len - 32 - 8), MB_STATUS_BAD_LENGTH);
    emit("bad-expert-req-body-unaligned", patched(&m, 24, 8, m.len - 32 - 1), MB_STATUS_BAD_LENGTH);
    emit("bad-expert-req-body-u64max", patched(&m, 24, 8, UINT64_MAX), MB_STATUS_OVERFLOW);
    emit("bad-expert-req-body-near-max", patched(&m, 24, 8, UINT64_MAX - 39), MB_STATUS_TRUNCATED);
    emit("bad-expert-req-reserved", patched(&m, 46, 2, 1), MB_STATUS_BAD_FLAGS);
    emit("bad-expert-req-reserved2", patched(&m, 52, 4, 1), MB_STATUS_BAD_FLAGS);
    emit("bad-expert-req-padding", patched(&m, 66, 1, 0xff), MB_STATUS_BAD_FLAGS);
    emit("bad-expert-req-dtype", patched(&m, 44, 2, 3), MB_STATUS_BAD_DTYPE);
    emit("bad-expert-req-zero-tokens", patched(&m, 36, 4, 0), MB_STATUS_BAD_SHAPE);
    emit("bad-expert-req-d-model-vs-payload", patched(&m, 40, 4, 17), MB_STATUS_BAD_LENGTH);
    emit("bad-expert-req-n-pairs", patched(&m, 48, 4, 8), MB_STATUS_BAD_LENGTH);
    emit("bad-expert-req-pair-count-sum", patched(&m, 56, 2, 2), MB_STATUS_PAIR_COUNT);
    emit("bad-expert-req-pair-count-ffff", patched(&m, 62, 2, 0xffff), MB_STATUS_PAIR_COUNT);
    emit("bad-expert-req-slot", patched(&m, 104, 4, limits.max_slots), MB_STATUS_SLOT_RANGE);
    emit("bad-expert-req-gate-nan", patched(&m, 108, 4, 0x7fc00000u), MB_STATUS_INVALID_ARG);
    emit("bad-expert-req-gate-inf", patched(&m, 108, 4, 0xff800000u), MB_STATUS_INVALID_ARG);
    emit("bad-expert-req-relabelled-reply", patched(&m, 6, 2, MB_OP_EXPERT_REPLY),
         MB_STATUS_BAD_FLAGS);
    fx_msg cut = fx_msg_copy(m.p, 100);
    emit("bad-expert-req-truncated-100", cut, MB_STATUS_TRUNCATED);
    fx_msg longer = fx_msg_grow(&m, 8);
    emit("bad-expert-req-trailing", longer, MB_STATUS_BAD_LENGTH);
    fx_msg_free(&m);
    fx_expert_req_free(&src);

    /* Shapes whose sizes overflow 64 bits. */
    fx_msg raw = fx_build_raw(MB_OP_EXPERT_REQ, MB_PROTO_EXPERT_REQ_FIXED_BYTES);
    fx_put32(&raw, 36, UINT32_MAX);
    fx_put32(&raw, 40, UINT32_MAX);
    emit("bad-expert-req-overflow-act", fx_msg_copy(raw.p, raw.len), MB_STATUS_OVERFLOW);
    fx_put32(&raw, 40, 1u << 31);
    fx_put16(&raw, 44, MB_DTYPE_F16);
    emit("bad-expert-req-overflow-offset", fx_msg_copy(raw.p, raw.len), MB_STATUS_OVERFLOW);
    fx_msg_free(&raw);

    m = fx_build_expert_reply(3, 5, MB_DTYPE_F16, 9, NULL);
    emit("valid-expert-reply-f16-3x5", fx_msg_copy(m.p, m.len), MB_STATUS_OK);
    emit("bad-expert-reply-padding", patched(&m, 102, 1, 1), MB_STATUS_BAD_FLAGS);
    emit("bad-expert-reply-shape", patched(&m, 36, 4, 4), MB_STATUS_BAD_LENGTH);
    emit("bad-expert-reply-status-with-body", patched(&m, 20, 2, MB_STATUS_BACKEND),
         MB_STATUS_BAD_LENGTH);
    fx_msg_free(&m);
    emit("valid-expert-reply-f32-2x3", fx_build_expert_reply(2, 3, MB_DTYPE_F32, 10, NULL),
         MB_STATUS_OK);
    emit("valid-expert-reply-bf16-4x8", fx_build_expert_reply(4, 8, MB_DTYPE_BF16, 11, NULL),
         MB_STATUS_OK);
    emit("valid-expert-reply-error", fx_build_empty(MB_OP_EXPERT_REPLY, 12, MB_STATUS_BACKEND),
         MB_STATUS_BACKEND);
    raw = fx_build_raw(MB_OP_EXPERT_REPLY, MB_PROTO_EXPERT_REPLY_FIXED_BYTES);
    fx_put32(&raw, 32, 3969050863u); /* x 2323823089 = 2^63 - 1 */
    fx_put32(&raw, 36, 2323823089u);
    fx_put16(&raw, 40, MB_DTYPE_BF16);
    emit("bad-expert-reply-overflow", raw, MB_STATUS_OVERFLOW);
}

static void gen_control(void)
{
    fx_msg m = fx_build_hello(1);
    emit("valid-hello", fx_msg_copy(m.p, m.len), MB_STATUS_OK);
    emit("valid-hello-v7", patched(&m, 32, 4, 7), MB_STATUS_OK);
    emit("bad-hello-version", patched(&m, 32, 4, 0), MB_STATUS_BAD_VERSION);
    emit("bad-hello-reserved", patched(&m, 36, 4, 1), MB_STATUS_BAD_FLAGS);
    fx_msg_free(&m);

    mb_proto_hello_reply r = fx_hello_reply_value();
    m = fx_build_hello_reply(&r, 2);
    emit("valid-hello-reply", fx_msg_copy(m.p, m.len), MB_STATUS_OK);
    emit("bad-hello-reply-mask", patched(&m, 36, 4, 1u << 3), MB_STATUS_BAD_DTYPE);
    emit("bad-hello-reply-name-junk", patched(&m, 90, 1, 'z'), MB_STATUS_BAD_FLAGS);
    fx_msg bad = fx_msg_copy(m.p, m.len);
    memset(bad.p + 80, 'b', MB_PROTO_NAME_BYTES);
    emit("bad-hello-reply-unterminated", bad, MB_STATUS_BAD_LENGTH);
    fx_msg_free(&m);
    r.backend[0] = 0;
    memset(r.device, 'd', MB_PROTO_NAME_BYTES - 1);
    emit("valid-hello-reply-names", fx_build_hello_reply(&r, 3), MB_STATUS_OK);
    emit("valid-hello-reply-error", fx_build_empty(MB_OP_HELLO_REPLY, 4, MB_STATUS_DEVICE),
         MB_STATUS_DEVICE);

    emit("valid-ping", fx_build_empty(MB_OP_PING, 5, MB_STATUS_OK), MB_STATUS_OK);
    emit("valid-pong", fx_build_empty(MB_OP_PONG, 5, MB_STATUS_OK), MB_STATUS_OK);
    emit("valid-shutdown", fx_build_empty(MB_OP_SHUTDOWN, 6, MB_STATUS_OK), MB_STATUS_OK);
    emit("valid-status-ok", fx_build_empty(MB_OP_STATUS, 7, MB_STATUS_OK), MB_STATUS_OK);
    emit("valid-status-nomem", fx_build_empty(MB_OP_STATUS, 8, MB_STATUS_NOMEM), MB_STATUS_OK);
    emit("valid-status-unknown-code", fx_build_empty(MB_OP_STATUS, 9, (mb_status)0xfffe),
         MB_STATUS_OK);
    m = fx_build_empty(MB_OP_PING, 10, MB_STATUS_OK);
    emit("bad-ping-flags", patched(&m, 16, 4, MB_PROTO_FLAG_LAST), MB_STATUS_BAD_FLAGS);
    emit("bad-ping-truncated-header", fx_msg_copy(m.p, 16), MB_STATUS_TRUNCATED);
    fx_msg_free(&m);
    fx_msg raw = fx_build_raw(MB_OP_PING, 8);
    emit("bad-ping-with-body", raw, MB_STATUS_BAD_LENGTH);
    emit("bad-empty-input", fx_msg_copy("", 0), MB_STATUS_TRUNCATED);
}

static void gen_load_expert(void)
{
    /* 3 x 5 f16 inline: matrices at data offsets 0, 32, 64; len 208. */
    fx_load_expert f;
    fx_msg m = fx_build_load_expert_inline(&f, 3, 5, MB_DTYPE_F16, 9, 1);
    emit("valid-load-expert-inline-f16", fx_msg_copy(m.p, m.len), MB_STATUS_OK);
    emit("bad-load-expert-zero-d-ff", patched(&m, 48, 4, 0), MB_STATUS_BAD_SHAPE);
    emit("bad-load-expert-bytes", patched(&m, 88, 8, 32), MB_STATUS_BAD_SHAPE);
    emit("bad-load-expert-dtype", patched(&m, 52, 2, MB_DTYPE_COUNT_), MB_STATUS_BAD_DTYPE);
    emit("bad-load-expert-source", patched(&m, 54, 2, 2), MB_STATUS_UNSUPPORTED);
    emit("bad-load-expert-slot", patched(&m, 40, 4, limits.max_slots), MB_STATUS_SLOT_RANGE);
    emit("bad-load-expert-up-dtype", patched(&m, 108, 2, MB_DTYPE_COUNT_), MB_STATUS_BAD_DTYPE);
    emit("bad-load-expert-down-dtype-size", patched(&m, 110, 2, MB_DTYPE_F32), MB_STATUS_BAD_SHAPE);
    emit("bad-load-expert-inline-path-len", patched(&m, 104, 4, 1), MB_STATUS_BAD_LENGTH);
    emit("bad-load-expert-inline-outside", patched(&m, 72, 8, 67), MB_STATUS_BAD_LENGTH);
    emit("bad-load-expert-inline-overflow", patched(&m, 64, 8, UINT64_MAX), MB_STATUS_OVERFLOW);
    emit("bad-load-expert-inline-moved", patched(&m, 64, 8, 40), MB_STATUS_BAD_LENGTH);
    emit("bad-load-expert-inline-padding", patched(&m, 112 + 30, 1, 1), MB_STATUS_BAD_FLAGS);
    fx_msg_free(&m);
    fx_load_expert_free(&f);
    emit("valid-load-expert-inline-f32", fx_build_load_expert_inline(&f, 2, 2, MB_DTYPE_F32, 0, 2),
         MB_STATUS_OK);
    fx_load_expert_free(&f);
    emit("valid-load-expert-inline-bf16",
         fx_build_load_expert_inline(&f, 4, 8, MB_DTYPE_BF16, 63, 3), MB_STATUS_OK);
    fx_load_expert_free(&f);

    /* File source: "/m/w.bin" at 112..120. */
    mb_proto_load_expert lf;
    m = fx_build_load_expert_file(&lf, "/m/w.bin", 4, 8, MB_DTYPE_BF16, 1);
    emit("valid-load-expert-file", fx_msg_copy(m.p, m.len), MB_STATUS_OK);
    emit("bad-load-expert-path-len-0", patched(&m, 104, 4, 0), MB_STATUS_BAD_LENGTH);
    emit("bad-load-expert-path-len-4096", patched(&m, 104, 4, MB_PROTO_PATH_BYTES),
         MB_STATUS_BAD_LENGTH);
    emit("bad-load-expert-path-len-long", patched(&m, 104, 4, 9), MB_STATUS_BAD_LENGTH);
    emit("bad-load-expert-path-nul", patched(&m, 115, 1, 0), MB_STATUS_BAD_LENGTH);
    emit("bad-load-expert-file-offset", patched(&m, 64, 8, (uint64_t)INT64_MAX),
         MB_STATUS_OVERFLOW);
    fx_msg_free(&m);
    emit("valid-load-expert-file-short", fx_build_load_expert_file(&lf, "w", 1, 1, MB_DTYPE_F32, 2),
         MB_STATUS_OK);
    m = fx_build_load_expert_file(&lf, "/m/x", 4, 8, MB_DTYPE_F16, 3);
    emit("bad-load-expert-path-padding", patched(&m, 116, 1, '!'), MB_STATUS_BAD_FLAGS);
    emit("bad-load-expert-file-misaligned", patched(&m, 56, 8, 4097), MB_STATUS_MISALIGNED);
    fx_msg_free(&m);

    /* Each matrix in its own dtype: Q8_0 gate/up and a Q4_0 down inline
     * (32 x 32), and a Q4_K_M expert (Q4_K gate/up, Q6_K down) by file. */
    const mb_dtype q8q4[3] = {MB_DTYPE_Q8_0, MB_DTYPE_Q8_0, MB_DTYPE_Q4_0};
    m = fx_build_load_expert_inline_mixed(&f, 32, 32, q8q4, 4, 5);
    emit("valid-load-expert-inline-q8_0-q4_0", fx_msg_copy(m.p, m.len), MB_STATUS_OK);
    emit("bad-load-expert-inline-down-blocks", patched(&m, 110, 2, MB_DTYPE_Q4_K),
         MB_STATUS_BAD_SHAPE);
    fx_msg_free(&m);
    fx_load_expert_free(&f);
    const mb_dtype q4km[3] = {MB_DTYPE_Q4_K, MB_DTYPE_Q4_K, MB_DTYPE_Q6_K};
    m = fx_build_load_expert_file_mixed(&lf, "/m/q4_k_m.gguf", 256, 512, q4km, 6);
    emit("valid-load-expert-file-q4_k_m", fx_msg_copy(m.p, m.len), MB_STATUS_OK);
    /* down's bytes as if it were Q4_K like gate and up */
    emit("bad-load-expert-file-q6_k-bytes", patched(&m, 96, 8, 512 / 256 * 144 * 256),
         MB_STATUS_BAD_SHAPE);
    fx_msg_free(&m);

    fx_msg raw = fx_build_raw(MB_OP_LOAD_EXPERT, MB_PROTO_LOAD_EXPERT_FIXED_BYTES);
    fx_put32(&raw, 44, UINT32_MAX);
    fx_put32(&raw, 48, UINT32_MAX);
    emit("bad-load-expert-overflow", raw, MB_STATUS_OVERFLOW);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
        return 2;
    }
    out_dir = argv[1];
    gen_expert();
    gen_control();
    gen_load_expert();
    printf("gen_corpus: %d files written to %s, %d failures\n", n_written, out_dir, n_failed);
    return n_failed ? 1 : 0;
}
