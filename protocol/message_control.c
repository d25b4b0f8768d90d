/* The control messages: HELLO / HELLO_REPLY (capability exchange),
 * LOAD_EXPERT (expert weights inline or by file region) and the empty-body
 * messages PING, PONG, SHUTDOWN, STATUS and error replies. Layouts are
 * documented in message.h; helpers shared with message.c live in
 * message_internal.h. */
#include "protocol/message.h"

#include <string.h>

#include "protocol/message_internal.h"

/* Absolute offsets of the HELLO, HELLO_REPLY and LOAD_EXPERT fields. */
enum {
    HELLO_VERSION = 32,
    HELLO_RESERVED = 36,
    HR_VERSION = 32,
    HR_PAYLOAD_MASK = 36,
    HR_WEIGHT_MASK = 40,
    HR_PREFERRED_BATCH = 44,
    HR_N_THREADS = 48,
    HR_MAX_SLOTS = 52,
    HR_MEM_TOTAL = 56,
    HR_MEM_FREE = 64,
    HR_MAX_MESSAGE = 72,
    HR_BACKEND = 80,
    HR_DEVICE = HR_BACKEND + MB_PROTO_NAME_BYTES,
    HR_END = HR_DEVICE + MB_PROTO_NAME_BYTES,
    LE_LAYER = 32,
    LE_EXPERT_ID = 36,
    LE_SLOT = 40,
    LE_D_MODEL = 44,
    LE_D_FF = 48,
    LE_GATE_DTYPE = 52,
    LE_SOURCE = 54,
    LE_OFFSET = 56,
    LE_BYTES = 80,
    LE_PATH_LEN = 104,
    LE_UP_DTYPE = 108,
    LE_DOWN_DTYPE = 110,
    LE_DATA = 112,
};
_Static_assert(HR_END == MB_PROTO_HEADER_BYTES + MB_PROTO_HELLO_REPLY_BODY_BYTES, "layout");
_Static_assert(LE_DATA == MB_PROTO_HEADER_BYTES + MB_PROTO_LOAD_EXPERT_FIXED_BYTES, "layout");
_Static_assert(LE_DATA % MB_PROTO_ALIGN == 0, "LOAD_EXPERT data area is 8-aligned");

/* Where each matrix's dtype sits (indexed by MB_PROTO_MAT_*). */
static const unsigned le_dtype_at[MB_PROTO_MATS] = {LE_GATE_DTYPE, LE_UP_DTYPE, LE_DOWN_DTYPE};

/* ---- empty bodies ---- */

mb_status mb_proto_encode_empty(void *buf, size_t cap, mb_proto_opcode op, uint64_t tag,
                                mb_status status, size_t *bytes)
{
    if (!buf || !bytes) return MB_STATUS_INVALID_ARG;
    if ((unsigned long)status > UINT16_MAX) return MB_STATUS_INVALID_ARG;
    switch (op) {
    case MB_OP_PING:
    case MB_OP_SHUTDOWN:
        if (status != MB_STATUS_OK) return MB_STATUS_INVALID_ARG;
        break;
    case MB_OP_PONG:
    case MB_OP_STATUS:
        break;
    case MB_OP_HELLO_REPLY:
    case MB_OP_EXPERT_REPLY:
        /* An OK reply of these kinds has a body; only errors are empty. */
        if (status == MB_STATUS_OK) return MB_STATUS_INVALID_ARG;
        break;
    default:
        return MB_STATUS_INVALID_ARG;
    }
    if ((uintptr_t)buf % MB_PROTO_ALIGN) return MB_STATUS_MISALIGNED;
    if (cap < MB_PROTO_HEADER_BYTES) return MB_STATUS_FULL;
    mb_wire_write_header(buf, op, tag, 0, (uint16_t)status, 0);
    *bytes = MB_PROTO_HEADER_BYTES;
    return MB_STATUS_OK;
}

mb_status mb_proto_decode_empty(const void *buf, size_t len, mb_proto_header *out)
{
    if (!out) return MB_STATUS_INVALID_ARG;
    mb_proto_header h;
    mb_status st = mb_proto_decode_header(buf, len, &h);
    if (st != MB_STATUS_OK) return st;
    if (h.opcode != MB_OP_PING && h.opcode != MB_OP_PONG && h.opcode != MB_OP_SHUTDOWN &&
        h.opcode != MB_OP_STATUS)
        return MB_STATUS_PROTOCOL;
    if (h.body_bytes) return MB_STATUS_BAD_LENGTH;
    *out = h;
    return MB_STATUS_OK;
}

/* ---- HELLO / HELLO_REPLY ---- */

mb_status mb_proto_encode_hello(void *buf, size_t cap, uint64_t tag, size_t *bytes)
{
    if (!buf || !bytes) return MB_STATUS_INVALID_ARG;
    if ((uintptr_t)buf % MB_PROTO_ALIGN) return MB_STATUS_MISALIGNED;
    const size_t total = MB_PROTO_HEADER_BYTES + MB_PROTO_HELLO_BODY_BYTES;
    if (cap < total) return MB_STATUS_FULL;
    unsigned char *p = buf;
    mb_wire_write_header(p, MB_OP_HELLO, tag, 0, 0, MB_PROTO_HELLO_BODY_BYTES);
    mb_wire_wr32(p + HELLO_VERSION, MB_PROTO_VERSION);
    mb_wire_wr32(p + HELLO_RESERVED, 0);
    *bytes = total;
    return MB_STATUS_OK;
}

mb_status mb_proto_decode_hello(const void *buf, size_t len, uint32_t *version)
{
    if (!version) return MB_STATUS_INVALID_ARG;
    mb_proto_header h;
    mb_status st = mb_wire_decode_header_op(buf, len, MB_OP_HELLO, &h);
    if (st != MB_STATUS_OK) return st;
    if (h.body_bytes != MB_PROTO_HELLO_BODY_BYTES) return MB_STATUS_BAD_LENGTH;
    const unsigned char *p = buf;
    uint32_t v = mb_wire_rd32(p + HELLO_VERSION);
    uint32_t reserved = mb_wire_rd32(p + HELLO_RESERVED);
    if (reserved) return MB_STATUS_BAD_FLAGS;
    if (v < MB_PROTO_VERSION) return MB_STATUS_BAD_VERSION;
    *version = v;
    return MB_STATUS_OK;
}

/* A capability mask must name at least one dtype and only known ones:
 * element dtypes for payloads, any weight dtype for weights. */
static int hello_mask_ok(uint32_t mask, uint32_t known)
{
    return mask && !(mask & ~known);
}

/* Checks a name field as the wire carries it: a NUL inside the field, zero
 * after it. BAD_LENGTH when unterminated, BAD_FLAGS for bytes after the NUL. */
static mb_status hello_name_check(const unsigned char *field)
{
    const unsigned char *nul = memchr(field, 0, MB_PROTO_NAME_BYTES);
    if (!nul) return MB_STATUS_BAD_LENGTH;
    size_t used = (size_t)(nul - field);
    if (!mb_wire_all_zero(nul, MB_PROTO_NAME_BYTES - used)) return MB_STATUS_BAD_FLAGS;
    return MB_STATUS_OK;
}

mb_status mb_proto_encode_hello_reply(void *buf, size_t cap, uint64_t tag,
                                      const mb_proto_hello_reply *r, size_t *bytes)
{
    if (!buf || !r || !bytes) return MB_STATUS_INVALID_ARG;
    if ((uintptr_t)buf % MB_PROTO_ALIGN) return MB_STATUS_MISALIGNED;
    if (r->version < MB_PROTO_VERSION) return MB_STATUS_BAD_VERSION;
    if (!hello_mask_ok(r->payload_dtype_mask, MB_DTYPE_MASK_ALL) ||
        !hello_mask_ok(r->weight_dtype_mask, MB_DTYPE_MASK_WEIGHTS))
        return MB_STATUS_BAD_DTYPE;
    size_t backend_len = strnlen(r->backend, MB_PROTO_NAME_BYTES);
    size_t device_len = strnlen(r->device, MB_PROTO_NAME_BYTES);
    if (backend_len == MB_PROTO_NAME_BYTES || device_len == MB_PROTO_NAME_BYTES)
        return MB_STATUS_INVALID_ARG;
    const size_t total = HR_END;
    if (cap < total) return MB_STATUS_FULL;

    unsigned char *p = buf;
    mb_wire_write_header(p, MB_OP_HELLO_REPLY, tag, 0, MB_STATUS_OK,
                         MB_PROTO_HELLO_REPLY_BODY_BYTES);
    mb_wire_wr32(p + HR_VERSION, r->version);
    mb_wire_wr32(p + HR_PAYLOAD_MASK, r->payload_dtype_mask);
    mb_wire_wr32(p + HR_WEIGHT_MASK, r->weight_dtype_mask);
    mb_wire_wr32(p + HR_PREFERRED_BATCH, r->preferred_batch);
    mb_wire_wr32(p + HR_N_THREADS, r->n_threads);
    mb_wire_wr32(p + HR_MAX_SLOTS, r->max_slots);
    mb_wire_wr64(p + HR_MEM_TOTAL, r->mem_total_bytes);
    mb_wire_wr64(p + HR_MEM_FREE, r->mem_free_bytes);
    mb_wire_wr64(p + HR_MAX_MESSAGE, r->max_message_bytes);
    memset(p + HR_BACKEND, 0, 2 * MB_PROTO_NAME_BYTES);
    memcpy(p + HR_BACKEND, r->backend, backend_len);
    memcpy(p + HR_DEVICE, r->device, device_len);
    *bytes = total;
    return MB_STATUS_OK;
}

mb_status mb_proto_decode_hello_reply(const void *buf, size_t len, mb_proto_hello_reply *out)
{
    if (!out) return MB_STATUS_INVALID_ARG;
    mb_proto_header h;
    mb_status st = mb_wire_decode_header_op(buf, len, MB_OP_HELLO_REPLY, &h);
    if (st != MB_STATUS_OK) return st;
    if (h.status != MB_STATUS_OK) {
        if (h.body_bytes) return MB_STATUS_BAD_LENGTH;
        return (mb_status)h.status;
    }
    if (h.body_bytes != MB_PROTO_HELLO_REPLY_BODY_BYTES) return MB_STATUS_BAD_LENGTH;

    /* Copy first, then validate the copy: the strings are checked and used
     * from the same bytes. */
    const unsigned char *p = buf;
    mb_proto_hello_reply r;
    r.version = mb_wire_rd32(p + HR_VERSION);
    r.payload_dtype_mask = mb_wire_rd32(p + HR_PAYLOAD_MASK);
    r.weight_dtype_mask = mb_wire_rd32(p + HR_WEIGHT_MASK);
    r.preferred_batch = mb_wire_rd32(p + HR_PREFERRED_BATCH);
    r.n_threads = mb_wire_rd32(p + HR_N_THREADS);
    r.max_slots = mb_wire_rd32(p + HR_MAX_SLOTS);
    r.mem_total_bytes = mb_wire_rd64(p + HR_MEM_TOTAL);
    r.mem_free_bytes = mb_wire_rd64(p + HR_MEM_FREE);
    r.max_message_bytes = mb_wire_rd64(p + HR_MAX_MESSAGE);
    memcpy(r.backend, p + HR_BACKEND, MB_PROTO_NAME_BYTES);
    memcpy(r.device, p + HR_DEVICE, MB_PROTO_NAME_BYTES);

    if (r.version < MB_PROTO_VERSION) return MB_STATUS_BAD_VERSION;
    if (!hello_mask_ok(r.payload_dtype_mask, MB_DTYPE_MASK_ALL) ||
        !hello_mask_ok(r.weight_dtype_mask, MB_DTYPE_MASK_WEIGHTS))
        return MB_STATUS_BAD_DTYPE;
    st = hello_name_check((const unsigned char *)r.backend);
    if (st != MB_STATUS_OK) return st;
    st = hello_name_check((const unsigned char *)r.device);
    if (st != MB_STATUS_OK) return st;
    *out = r;
    return MB_STATUS_OK;
}

/* ---- LOAD_EXPERT ---- */

typedef struct {
    uint64_t mat_bytes[MB_PROTO_MATS]; /* bytes of each matrix in its dtype */
    uint64_t off[MB_PROTO_MATS];       /* INLINE: where the layout puts each matrix in the data area */
    uint64_t total;                    /* whole message */
} le_layout;

/* Bytes of matrix i (gate and up are [d_ff][d_model], down [d_model][d_ff])
 * in wdtype, whose rows must be whole blocks. */
static mb_status le_mat_bytes(int i, uint32_t d_model, uint32_t d_ff, uint32_t wdtype, uint64_t *bytes)
{
    uint64_t block_bytes;
    const uint64_t block_elems = mb_wire_weight_block(wdtype, &block_bytes);
    if (!block_elems) return MB_STATUS_BAD_DTYPE;
    const uint64_t cols = i == MB_PROTO_MAT_DOWN ? d_ff : d_model;
    const uint64_t rows = i == MB_PROTO_MAT_DOWN ? d_model : d_ff;
    if (cols % block_elems) return MB_STATUS_BAD_SHAPE;
    if (__builtin_mul_overflow(rows, cols / block_elems, bytes) ||
        __builtin_mul_overflow(*bytes, block_bytes, bytes))
        return MB_STATUS_OVERFLOW;
    return MB_STATUS_OK;
}

/* Checks shared by the size function, encoder and decoder, on field values
 * already read once. offset[] is only checked for FILE (INLINE offsets are
 * the encoder's to compute and the decoder's to compare). */
static mb_status le_check(uint32_t d_model, uint32_t d_ff, const uint32_t *wdtype, uint32_t source,
                          const uint64_t *offset, const uint64_t *bytes, uint32_t path_len,
                          le_layout *l)
{
    uint64_t block_bytes;
    for (int i = 0; i < MB_PROTO_MATS; i++)
        if (!mb_wire_weight_block(wdtype[i], &block_bytes)) return MB_STATUS_BAD_DTYPE;
    if (source != MB_WEIGHTS_INLINE && source != MB_WEIGHTS_FILE) return MB_STATUS_UNSUPPORTED;
    if (!d_model || !d_ff) return MB_STATUS_BAD_SHAPE;
    for (int i = 0; i < MB_PROTO_MATS; i++) {
        mb_status st = le_mat_bytes(i, d_model, d_ff, wdtype[i], &l->mat_bytes[i]);
        if (st != MB_STATUS_OK) return st;
        if (bytes[i] != l->mat_bytes[i]) return MB_STATUS_BAD_SHAPE;
    }

    uint64_t body = 0;
    if (source == MB_WEIGHTS_INLINE) {
        if (path_len) return MB_STATUS_BAD_LENGTH;
        for (int i = 0; i < MB_PROTO_MATS; i++) {
            uint64_t step;
            l->off[i] = body;
            if (!mb_wire_align8(l->mat_bytes[i], &step) || __builtin_add_overflow(body, step, &body))
                return MB_STATUS_OVERFLOW;
        }
    } else {
        if (!path_len || path_len >= MB_PROTO_PATH_BYTES) return MB_STATUS_BAD_LENGTH;
        for (int i = 0; i < MB_PROTO_MATS; i++) {
            uint64_t end;
            if (__builtin_add_overflow(offset[i], bytes[i], &end) || end > (uint64_t)INT64_MAX)
                return MB_STATUS_OVERFLOW;
            if (offset[i] % mb_wire_weight_align(wdtype[i])) return MB_STATUS_MISALIGNED;
        }
        if (!mb_wire_align8(path_len, &body)) return MB_STATUS_OVERFLOW;
        l->off[0] = l->off[1] = l->off[2] = 0;
    }
    size_t unused;
    if (__builtin_add_overflow((uint64_t)LE_DATA, body, &l->total) ||
        !mb_wire_to_size(l->total, &unused))
        return MB_STATUS_OVERFLOW;
    return MB_STATUS_OK;
}

static mb_status le_plan(const mb_proto_load_expert *m, le_layout *l)
{
    const uint32_t wdtype[MB_PROTO_MATS] = {(uint32_t)m->wdtype[0], (uint32_t)m->wdtype[1],
                                            (uint32_t)m->wdtype[2]};
    return le_check(m->d_model, m->d_ff, wdtype, (uint32_t)m->source, m->offset, m->bytes,
                    m->path_len, l);
}

mb_status mb_proto_load_expert_size(const mb_proto_load_expert *m, size_t *bytes)
{
    if (!m || !bytes) return MB_STATUS_INVALID_ARG;
    le_layout l;
    mb_status st = le_plan(m, &l);
    if (st != MB_STATUS_OK) return st;
    *bytes = (size_t)l.total;
    return MB_STATUS_OK;
}

mb_status mb_proto_encode_load_expert(void *buf, size_t cap, uint64_t tag,
                                      const mb_proto_load_expert *m, size_t *bytes)
{
    if (!buf || !m || !bytes) return MB_STATUS_INVALID_ARG;
    if ((uintptr_t)buf % MB_PROTO_ALIGN) return MB_STATUS_MISALIGNED;
    le_layout l;
    mb_status st = le_plan(m, &l);
    if (st != MB_STATUS_OK) return st;
    const int is_inline = m->source == MB_WEIGHTS_INLINE;
    if (is_inline) {
        if (!m->data[0] || !m->data[1] || !m->data[2]) return MB_STATUS_INVALID_ARG;
    } else if (!m->path || memchr(m->path, 0, m->path_len)) {
        return MB_STATUS_INVALID_ARG;
    }
    if (l.total > cap) return MB_STATUS_FULL;

    unsigned char *p = buf;
    mb_wire_write_header(p, MB_OP_LOAD_EXPERT, tag, 0, 0, l.total - MB_PROTO_HEADER_BYTES);
    mb_wire_wr32(p + LE_LAYER, m->layer);
    mb_wire_wr32(p + LE_EXPERT_ID, m->expert_id);
    mb_wire_wr32(p + LE_SLOT, m->slot);
    mb_wire_wr32(p + LE_D_MODEL, m->d_model);
    mb_wire_wr32(p + LE_D_FF, m->d_ff);
    for (int i = 0; i < MB_PROTO_MATS; i++)
        mb_wire_wr16(p + le_dtype_at[i], (uint16_t)m->wdtype[i]);
    mb_wire_wr16(p + LE_SOURCE, (uint16_t)m->source);
    for (int i = 0; i < 3; i++) {
        mb_wire_wr64(p + LE_OFFSET + 8 * i, is_inline ? l.off[i] : m->offset[i]);
        mb_wire_wr64(p + LE_BYTES + 8 * i, m->bytes[i]);
    }
    mb_wire_wr32(p + LE_PATH_LEN, m->path_len);

    /* Zero the whole data area first: that writes every padding byte. */
    memset(p + LE_DATA, 0, (size_t)(l.total - LE_DATA));
    if (is_inline) {
        for (int i = 0; i < MB_PROTO_MATS; i++)
            memcpy(p + LE_DATA + l.off[i], m->data[i], (size_t)l.mat_bytes[i]);
    } else {
        memcpy(p + LE_DATA, m->path, m->path_len);
    }
    *bytes = (size_t)l.total;
    return MB_STATUS_OK;
}

/* INLINE: each region inside the data area, exactly where the layout puts it,
 * zero padding after each. area = bytes after the fixed part. */
static mb_status le_check_inline(const unsigned char *data, uint64_t area, const uint64_t *offset,
                                 const uint64_t *bytes, const le_layout *l)
{
    for (int i = 0; i < 3; i++) {
        uint64_t end;
        if (__builtin_add_overflow(offset[i], bytes[i], &end)) return MB_STATUS_OVERFLOW;
        if (end > area) return MB_STATUS_BAD_LENGTH;
        if (offset[i] != l->off[i]) return MB_STATUS_BAD_LENGTH;
    }
    if (l->total - LE_DATA != area) return MB_STATUS_BAD_LENGTH;
    for (int i = 0; i < 3; i++) {
        uint64_t pad_from = l->off[i] + l->mat_bytes[i];
        uint64_t pad_to = i < 2 ? l->off[i + 1] : area;
        if (!mb_wire_all_zero(data + pad_from, (size_t)(pad_to - pad_from)))
            return MB_STATUS_BAD_FLAGS;
    }
    return MB_STATUS_OK;
}

mb_status mb_proto_decode_load_expert(const void *buf, size_t len, const mb_proto_limits *limits,
                                      mb_proto_load_expert *out)
{
    if (!limits || !out) return MB_STATUS_INVALID_ARG;
    mb_proto_header h;
    mb_status st = mb_wire_decode_header_op(buf, len, MB_OP_LOAD_EXPERT, &h);
    if (st != MB_STATUS_OK) return st;
    if (h.body_bytes < MB_PROTO_LOAD_EXPERT_FIXED_BYTES) return MB_STATUS_BAD_LENGTH;

    const unsigned char *p = buf;
    mb_proto_load_expert m;
    memset(&m, 0, sizeof m);
    m.layer = mb_wire_rd32(p + LE_LAYER);
    m.expert_id = mb_wire_rd32(p + LE_EXPERT_ID);
    m.slot = mb_wire_rd32(p + LE_SLOT);
    m.d_model = mb_wire_rd32(p + LE_D_MODEL);
    m.d_ff = mb_wire_rd32(p + LE_D_FF);
    uint32_t wdtype[MB_PROTO_MATS];
    for (int i = 0; i < MB_PROTO_MATS; i++)
        wdtype[i] = mb_wire_rd16(p + le_dtype_at[i]);
    uint16_t source = mb_wire_rd16(p + LE_SOURCE);
    for (int i = 0; i < 3; i++) {
        m.offset[i] = mb_wire_rd64(p + LE_OFFSET + 8 * i);
        m.bytes[i] = mb_wire_rd64(p + LE_BYTES + 8 * i);
    }
    m.path_len = mb_wire_rd32(p + LE_PATH_LEN);

    if (limits->max_d_model && m.d_model > limits->max_d_model) return MB_STATUS_BAD_SHAPE;
    if (m.slot >= limits->max_slots) return MB_STATUS_SLOT_RANGE;
    le_layout l;
    st = le_check(m.d_model, m.d_ff, wdtype, source, m.offset, m.bytes, m.path_len, &l);
    if (st != MB_STATUS_OK) return st;

    /* len >= LE_DATA: the header matched len and body_bytes >= the fixed part. */
    const unsigned char *data = p + LE_DATA;
    uint64_t area = (uint64_t)len - LE_DATA;
    if (source == MB_WEIGHTS_INLINE) {
        st = le_check_inline(data, area, m.offset, m.bytes, &l);
        if (st != MB_STATUS_OK) return st;
        for (int i = 0; i < 3; i++)
            m.data[i] = data + m.offset[i];
    } else {
        if (l.total != (uint64_t)len) return MB_STATUS_BAD_LENGTH;
        if (memchr(data, 0, m.path_len)) return MB_STATUS_BAD_LENGTH;
        if (!mb_wire_all_zero(data + m.path_len, (size_t)(area - m.path_len)))
            return MB_STATUS_BAD_FLAGS;
        m.path = (const char *)data;
    }
    for (int i = 0; i < MB_PROTO_MATS; i++)
        m.wdtype[i] = (mb_dtype)wdtype[i];
    m.source = (mb_proto_weight_source)source;
    *out = m;
    return MB_STATUS_OK;
}
