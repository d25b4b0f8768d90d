/* The message header and the expert-work messages (EXPERT_REQ, EXPERT_REPLY):
 * their sizes, in-place encoders and validating decoders. Every size is
 * computed in 64 bits with overflow checks before anything is read or
 * written; layouts are documented in message.h. */
#include "protocol/message.h"

#include <stddef.h>
#include <string.h>

#include "protocol/message_internal.h"

_Static_assert(sizeof(mb_proto_header) == MB_PROTO_HEADER_BYTES, "header is 32 bytes on the wire");
_Static_assert(offsetof(mb_proto_header, magic) == 0, "wire offset");
_Static_assert(offsetof(mb_proto_header, version) == 4, "wire offset");
_Static_assert(offsetof(mb_proto_header, opcode) == 6, "wire offset");
_Static_assert(offsetof(mb_proto_header, tag) == 8, "wire offset");
_Static_assert(offsetof(mb_proto_header, flags) == 16, "wire offset");
_Static_assert(offsetof(mb_proto_header, status) == 20, "wire offset");
_Static_assert(offsetof(mb_proto_header, reserved) == 22, "wire offset");
_Static_assert(offsetof(mb_proto_header, body_bytes) == 24, "wire offset");
_Static_assert(sizeof(mb_proto_pair) == 8 && offsetof(mb_proto_pair, gate) == 4,
               "pair is 8 bytes on the wire");
_Static_assert(sizeof(float) == 4, "gate weights are IEEE binary32");
_Static_assert(MB_DTYPE_COUNT_ == 8, "a new dtype needs its size in mb_wire_dtype_bytes (payloads) "
               "and mb_wire_weight_block (weights)");
_Static_assert(MB_STATUS_COUNT_ <= UINT16_MAX, "status travels in a u16");
_Static_assert(MB_OP_COUNT_ <= UINT16_MAX, "opcode travels in a u16");

/* Absolute offsets of the EXPERT_REQ / EXPERT_REPLY fields. */
enum {
    REQ_LAYER = 32,
    REQ_N_TOKENS = 36,
    REQ_D_MODEL = 40,
    REQ_DTYPE = 44,
    REQ_RESERVED = 46,
    REQ_N_PAIRS = 48,
    REQ_RESERVED2 = 52,
    REQ_COUNTS = 56,
    REP_N_TOKENS = 32,
    REP_D_MODEL = 36,
    REP_DTYPE = 40,
    REP_RESERVED = 42,
    REP_RESERVED2 = 44,
    REP_TIMINGS = 48,
    REP_OUT = 72,
};
_Static_assert(REQ_COUNTS == MB_PROTO_HEADER_BYTES + MB_PROTO_EXPERT_REQ_FIXED_BYTES, "layout");
_Static_assert(REP_OUT == MB_PROTO_HEADER_BYTES + MB_PROTO_EXPERT_REPLY_FIXED_BYTES, "layout");

int mb_proto_opcode_is_reply(int opcode)
{
    return opcode == MB_OP_HELLO_REPLY || opcode == MB_OP_EXPERT_REPLY || opcode == MB_OP_PONG ||
           opcode == MB_OP_STATUS;
}

void mb_proto_header_init(mb_proto_header *h, mb_proto_opcode op, uint64_t tag, uint64_t body_bytes)
{
    memset(h, 0, sizeof *h);
    h->magic = MB_PROTO_MAGIC;
    h->version = (uint16_t)MB_PROTO_VERSION;
    h->opcode = (uint16_t)op;
    h->tag = tag;
    h->body_bytes = body_bytes;
}

void mb_wire_write_header(unsigned char *p, mb_proto_opcode op, uint64_t tag, uint32_t flags,
                          uint16_t status, uint64_t body_bytes)
{
    mb_proto_header h;
    mb_proto_header_init(&h, op, tag, body_bytes);
    h.flags = flags;
    h.status = status;
    memcpy(p, &h, sizeof h);
}

mb_status mb_proto_decode_header(const void *buf, size_t len, mb_proto_header *out)
{
    if (!out || (!buf && len)) return MB_STATUS_INVALID_ARG;
    if (len < MB_PROTO_HEADER_BYTES) return MB_STATUS_TRUNCATED;
    if ((uintptr_t)buf % MB_PROTO_ALIGN) return MB_STATUS_MISALIGNED;

    /* One copy of the header: every check below sees the same values. */
    mb_proto_header h;
    memcpy(&h, buf, sizeof h);
    if (h.magic != MB_PROTO_MAGIC) return MB_STATUS_BAD_MAGIC;
    if (h.version != MB_PROTO_VERSION) return MB_STATUS_BAD_VERSION;
    if (h.opcode == 0 || h.opcode >= MB_OP_COUNT_) return MB_STATUS_BAD_OPCODE;
    if (h.flags & ~MB_PROTO_FLAGS_KNOWN) return MB_STATUS_BAD_FLAGS;
    /* FLAG_LAST only means something on EXPERT_REQ; anywhere else it would
     * be a second encoding of the same message. */
    if (h.flags && h.opcode != MB_OP_EXPERT_REQ) return MB_STATUS_BAD_FLAGS;
    if (h.reserved) return MB_STATUS_BAD_FLAGS;
    if (h.status && !mb_proto_opcode_is_reply(h.opcode)) return MB_STATUS_BAD_FLAGS;

    uint64_t total;
    size_t total_size;
    if (__builtin_add_overflow((uint64_t)MB_PROTO_HEADER_BYTES, h.body_bytes, &total))
        return MB_STATUS_OVERFLOW;
    if (!mb_wire_to_size(total, &total_size)) return MB_STATUS_OVERFLOW;
    if (h.body_bytes % MB_PROTO_ALIGN) return MB_STATUS_BAD_LENGTH;
    if (total_size > len) return MB_STATUS_TRUNCATED;
    if (total_size < len) return MB_STATUS_BAD_LENGTH;
    *out = h;
    return MB_STATUS_OK;
}

mb_status mb_wire_decode_header_op(const void *buf, size_t len, mb_proto_opcode op,
                                   mb_proto_header *out)
{
    mb_status st = mb_proto_decode_header(buf, len, out);
    if (st != MB_STATUS_OK) return st;
    if (out->opcode != op) return MB_STATUS_PROTOCOL;
    return MB_STATUS_OK;
}

/* ---- shared layout arithmetic ---- */

/* Bytes of a [n_tokens][d_model] array in a dtype of dsize bytes. */
static mb_status array_bytes(uint32_t n_tokens, uint32_t d_model, uint64_t dsize, uint64_t *out)
{
    uint64_t elems, bytes;
    if (__builtin_mul_overflow((uint64_t)n_tokens, (uint64_t)d_model, &elems))
        return MB_STATUS_OVERFLOW;
    if (__builtin_mul_overflow(elems, dsize, &bytes)) return MB_STATUS_OVERFLOW;
    *out = bytes;
    return MB_STATUS_OK;
}

/* Where the EXPERT_REQ arrays sit, as absolute offsets. */
typedef struct {
    uint64_t counts_end; /* end of pair_counts, before padding */
    uint64_t pairs;      /* offset of pairs[] */
    uint64_t act;        /* offset of act[][] */
    uint64_t act_end;    /* end of act, before padding */
    uint64_t total;      /* whole message */
} req_layout;

static mb_status req_layout_compute(uint32_t n_tokens, uint32_t d_model, uint64_t dsize,
                                    uint32_t n_pairs, req_layout *l)
{
    uint64_t counts_bytes, pairs_bytes, act_bytes;
    if (__builtin_mul_overflow((uint64_t)n_tokens, (uint64_t)sizeof(uint16_t), &counts_bytes) ||
        __builtin_add_overflow((uint64_t)REQ_COUNTS, counts_bytes, &l->counts_end) ||
        !mb_wire_align8(l->counts_end, &l->pairs) ||
        __builtin_mul_overflow((uint64_t)n_pairs, (uint64_t)sizeof(mb_proto_pair), &pairs_bytes) ||
        __builtin_add_overflow(l->pairs, pairs_bytes, &l->act))
        return MB_STATUS_OVERFLOW;
    mb_status st = array_bytes(n_tokens, d_model, dsize, &act_bytes);
    if (st != MB_STATUS_OK) return st;
    if (__builtin_add_overflow(l->act, act_bytes, &l->act_end) ||
        !mb_wire_align8(l->act_end, &l->total))
        return MB_STATUS_OVERFLOW;
    size_t unused;
    if (!mb_wire_to_size(l->total, &unused)) return MB_STATUS_OVERFLOW;
    return MB_STATUS_OK;
}

/* Argument checks shared by the EXPERT_REQ size function and encoder. */
static mb_status req_plan(uint32_t n_tokens, uint32_t d_model, mb_dtype dtype, uint32_t n_pairs,
                          req_layout *l)
{
    uint64_t dsize = mb_wire_dtype_bytes((uint32_t)dtype);
    if (!dsize) return MB_STATUS_BAD_DTYPE;
    if (!n_tokens || !d_model) return MB_STATUS_BAD_SHAPE;
    return req_layout_compute(n_tokens, d_model, dsize, n_pairs, l);
}

/* ---- EXPERT_REQ ---- */

mb_status mb_proto_expert_req_size(uint32_t n_tokens, uint32_t d_model, mb_dtype dtype,
                                   uint32_t n_pairs, size_t *bytes)
{
    if (!bytes) return MB_STATUS_INVALID_ARG;
    req_layout l;
    mb_status st = req_plan(n_tokens, d_model, dtype, n_pairs, &l);
    if (st != MB_STATUS_OK) return st;
    *bytes = (size_t)l.total;
    return MB_STATUS_OK;
}

mb_status mb_proto_encode_expert_req(void *buf, size_t cap, uint64_t tag, uint32_t flags,
                                     uint32_t layer, uint32_t n_tokens, uint32_t d_model,
                                     mb_dtype dtype, uint32_t n_pairs,
                                     mb_proto_expert_req_writer *w)
{
    if (!buf || !w) return MB_STATUS_INVALID_ARG;
    if ((uintptr_t)buf % MB_PROTO_ALIGN) return MB_STATUS_MISALIGNED;
    if (flags & ~MB_PROTO_FLAGS_KNOWN) return MB_STATUS_BAD_FLAGS;
    req_layout l;
    mb_status st = req_plan(n_tokens, d_model, dtype, n_pairs, &l);
    if (st != MB_STATUS_OK) return st;
    if (l.total > cap) return MB_STATUS_FULL;

    unsigned char *p = buf;
    mb_wire_write_header(p, MB_OP_EXPERT_REQ, tag, flags, 0, l.total - MB_PROTO_HEADER_BYTES);
    mb_wire_wr32(p + REQ_LAYER, layer);
    mb_wire_wr32(p + REQ_N_TOKENS, n_tokens);
    mb_wire_wr32(p + REQ_D_MODEL, d_model);
    mb_wire_wr16(p + REQ_DTYPE, (uint16_t)dtype);
    mb_wire_wr16(p + REQ_RESERVED, 0);
    mb_wire_wr32(p + REQ_N_PAIRS, n_pairs);
    mb_wire_wr32(p + REQ_RESERVED2, 0);
    memset(p + l.counts_end, 0, (size_t)(l.pairs - l.counts_end));
    memset(p + l.act_end, 0, (size_t)(l.total - l.act_end));

    w->pair_counts = (uint16_t *)(void *)(p + REQ_COUNTS);
    w->pairs = (mb_proto_pair *)(void *)(p + l.pairs);
    w->act = p + l.act;
    w->bytes = (size_t)l.total;
    return MB_STATUS_OK;
}

/* Sums pair_counts with overflow checks; each count is read once. */
static mb_status req_check_counts(const unsigned char *counts, uint32_t n_tokens, uint32_t n_pairs)
{
    uint32_t sum = 0;
    for (uint32_t i = 0; i < n_tokens; i++)
        if (__builtin_add_overflow(sum, (uint32_t)mb_wire_rd16(counts + 2u * (size_t)i), &sum))
            return MB_STATUS_PAIR_COUNT;
    return sum == n_pairs ? MB_STATUS_OK : MB_STATUS_PAIR_COUNT;
}

static mb_status req_check_pairs(const unsigned char *pairs, uint32_t n_pairs, uint32_t max_slots)
{
    for (uint32_t i = 0; i < n_pairs; i++) {
        const unsigned char *q = pairs + (size_t)i * sizeof(mb_proto_pair);
        uint32_t slot = mb_wire_rd32(q);
        uint32_t gate_bits = mb_wire_rd32(q + 4);
        if (slot >= max_slots) return MB_STATUS_SLOT_RANGE;
        if (!mb_wire_f32_bits_finite(gate_bits)) return MB_STATUS_INVALID_ARG;
    }
    return MB_STATUS_OK;
}

mb_status mb_proto_decode_expert_req(const void *buf, size_t len, const mb_proto_limits *limits,
                                     mb_proto_expert_req *out)
{
    if (!limits || !out) return MB_STATUS_INVALID_ARG;
    mb_proto_header h;
    mb_status st = mb_wire_decode_header_op(buf, len, MB_OP_EXPERT_REQ, &h);
    if (st != MB_STATUS_OK) return st;
    if (h.body_bytes < MB_PROTO_EXPERT_REQ_FIXED_BYTES) return MB_STATUS_BAD_LENGTH;

    const unsigned char *p = buf;
    uint32_t layer = mb_wire_rd32(p + REQ_LAYER);
    uint32_t n_tokens = mb_wire_rd32(p + REQ_N_TOKENS);
    uint32_t d_model = mb_wire_rd32(p + REQ_D_MODEL);
    uint16_t dtype = mb_wire_rd16(p + REQ_DTYPE);
    uint16_t reserved = mb_wire_rd16(p + REQ_RESERVED);
    uint32_t n_pairs = mb_wire_rd32(p + REQ_N_PAIRS);
    uint32_t reserved2 = mb_wire_rd32(p + REQ_RESERVED2);

    if (reserved || reserved2) return MB_STATUS_BAD_FLAGS;
    uint64_t dsize = mb_wire_dtype_bytes(dtype);
    if (!dsize) return MB_STATUS_BAD_DTYPE;
    if (!n_tokens || !d_model) return MB_STATUS_BAD_SHAPE;
    if (limits->max_tokens && n_tokens > limits->max_tokens) return MB_STATUS_BAD_SHAPE;
    if (limits->max_d_model && d_model > limits->max_d_model) return MB_STATUS_BAD_SHAPE;

    req_layout l;
    st = req_layout_compute(n_tokens, d_model, dsize, n_pairs, &l);
    if (st != MB_STATUS_OK) return st;
    /* The header already matched len, so from here on every offset below
     * l.total is inside the buffer. */
    if (l.total != (uint64_t)len) return MB_STATUS_BAD_LENGTH;
    if (!mb_wire_all_zero(p + l.counts_end, (size_t)(l.pairs - l.counts_end)) ||
        !mb_wire_all_zero(p + l.act_end, (size_t)(l.total - l.act_end)))
        return MB_STATUS_BAD_FLAGS;
    st = req_check_counts(p + REQ_COUNTS, n_tokens, n_pairs);
    if (st != MB_STATUS_OK) return st;
    st = req_check_pairs(p + l.pairs, n_pairs, limits->max_slots);
    if (st != MB_STATUS_OK) return st;

    out->layer = layer;
    out->n_tokens = n_tokens;
    out->d_model = d_model;
    out->dtype = (mb_dtype)dtype;
    out->n_pairs = n_pairs;
    out->pair_counts = (const uint16_t *)(const void *)(p + REQ_COUNTS);
    out->pairs = (const mb_proto_pair *)(const void *)(p + l.pairs);
    out->act = p + l.act;
    return MB_STATUS_OK;
}

/* ---- EXPERT_REPLY ---- */

/* Size of an OK EXPERT_REPLY; *out_end receives the end of out[][]. */
static mb_status reply_layout(uint32_t n_tokens, uint32_t d_model, uint64_t dsize,
                              uint64_t *out_end, uint64_t *total)
{
    uint64_t out_bytes;
    mb_status st = array_bytes(n_tokens, d_model, dsize, &out_bytes);
    if (st != MB_STATUS_OK) return st;
    if (__builtin_add_overflow((uint64_t)REP_OUT, out_bytes, out_end) ||
        !mb_wire_align8(*out_end, total))
        return MB_STATUS_OVERFLOW;
    size_t unused;
    if (!mb_wire_to_size(*total, &unused)) return MB_STATUS_OVERFLOW;
    return MB_STATUS_OK;
}

static mb_status reply_plan(uint32_t n_tokens, uint32_t d_model, mb_dtype dtype, uint64_t *out_end,
                            uint64_t *total)
{
    uint64_t dsize = mb_wire_dtype_bytes((uint32_t)dtype);
    if (!dsize) return MB_STATUS_BAD_DTYPE;
    if (!n_tokens || !d_model) return MB_STATUS_BAD_SHAPE;
    return reply_layout(n_tokens, d_model, dsize, out_end, total);
}

mb_status mb_proto_expert_reply_size(uint32_t n_tokens, uint32_t d_model, mb_dtype dtype,
                                     size_t *bytes)
{
    if (!bytes) return MB_STATUS_INVALID_ARG;
    uint64_t out_end, total;
    mb_status st = reply_plan(n_tokens, d_model, dtype, &out_end, &total);
    if (st != MB_STATUS_OK) return st;
    *bytes = (size_t)total;
    return MB_STATUS_OK;
}

mb_status mb_proto_encode_expert_reply(void *buf, size_t cap, uint64_t tag, uint32_t n_tokens,
                                       uint32_t d_model, mb_dtype dtype, void **out_data,
                                       size_t *bytes)
{
    if (!buf || !out_data || !bytes) return MB_STATUS_INVALID_ARG;
    if ((uintptr_t)buf % MB_PROTO_ALIGN) return MB_STATUS_MISALIGNED;
    uint64_t out_end, total;
    mb_status st = reply_plan(n_tokens, d_model, dtype, &out_end, &total);
    if (st != MB_STATUS_OK) return st;
    if (total > cap) return MB_STATUS_FULL;

    unsigned char *p = buf;
    mb_wire_write_header(p, MB_OP_EXPERT_REPLY, tag, 0, MB_STATUS_OK,
                         total - MB_PROTO_HEADER_BYTES);
    mb_wire_wr32(p + REP_N_TOKENS, n_tokens);
    mb_wire_wr32(p + REP_D_MODEL, d_model);
    mb_wire_wr16(p + REP_DTYPE, (uint16_t)dtype);
    mb_wire_wr16(p + REP_RESERVED, 0);
    mb_wire_wr32(p + REP_RESERVED2, 0);
    mb_proto_timings zero = {0, 0, 0};
    mb_proto_expert_reply_set_timings(p, &zero);
    memset(p + out_end, 0, (size_t)(total - out_end));
    *out_data = p + REP_OUT;
    *bytes = (size_t)total;
    return MB_STATUS_OK;
}

void mb_proto_expert_reply_set_timings(void *buf, const mb_proto_timings *t)
{
    unsigned char *p = buf;
    mb_wire_wr64(p + REP_TIMINGS, t->decode_ns);
    mb_wire_wr64(p + REP_TIMINGS + 8, t->compute_ns);
    mb_wire_wr64(p + REP_TIMINGS + 16, t->encode_ns);
}

mb_status mb_proto_decode_expert_reply(const void *buf, size_t len, mb_proto_expert_reply *out)
{
    if (!out) return MB_STATUS_INVALID_ARG;
    mb_proto_header h;
    mb_status st = mb_wire_decode_header_op(buf, len, MB_OP_EXPERT_REPLY, &h);
    if (st != MB_STATUS_OK) return st;
    if (h.status != MB_STATUS_OK) {
        /* The worker's own error: pass it on unchanged. */
        if (h.body_bytes) return MB_STATUS_BAD_LENGTH;
        return (mb_status)h.status;
    }
    if (h.body_bytes < MB_PROTO_EXPERT_REPLY_FIXED_BYTES) return MB_STATUS_BAD_LENGTH;

    const unsigned char *p = buf;
    uint32_t n_tokens = mb_wire_rd32(p + REP_N_TOKENS);
    uint32_t d_model = mb_wire_rd32(p + REP_D_MODEL);
    uint16_t dtype = mb_wire_rd16(p + REP_DTYPE);
    uint16_t reserved = mb_wire_rd16(p + REP_RESERVED);
    uint32_t reserved2 = mb_wire_rd32(p + REP_RESERVED2);
    mb_proto_timings t;
    t.decode_ns = mb_wire_rd64(p + REP_TIMINGS);
    t.compute_ns = mb_wire_rd64(p + REP_TIMINGS + 8);
    t.encode_ns = mb_wire_rd64(p + REP_TIMINGS + 16);

    if (reserved || reserved2) return MB_STATUS_BAD_FLAGS;
    uint64_t dsize = mb_wire_dtype_bytes(dtype);
    if (!dsize) return MB_STATUS_BAD_DTYPE;
    if (!n_tokens || !d_model) return MB_STATUS_BAD_SHAPE;
    uint64_t out_end, total;
    st = reply_layout(n_tokens, d_model, dsize, &out_end, &total);
    if (st != MB_STATUS_OK) return st;
    if (total != (uint64_t)len) return MB_STATUS_BAD_LENGTH;
    if (!mb_wire_all_zero(p + out_end, (size_t)(total - out_end))) return MB_STATUS_BAD_FLAGS;

    out->n_tokens = n_tokens;
    out->d_model = d_model;
    out->dtype = (mb_dtype)dtype;
    out->timings = t;
    out->out = p + REP_OUT;
    return MB_STATUS_OK;
}
