/* Wire messages between the coordinator and expert workers: a fixed 32-byte
 * versioned header followed by an opcode-specific body. Encoders write into a
 * caller-given buffer (so a shared-memory slot is filled in place); decoders
 * validate every field with overflow-checked arithmetic, never read outside
 * the buffer and return views that point into it (no copies, no pointers on
 * the wire). All integers little-endian; bodies start 8-byte aligned and every
 * array inside a body is 8-byte aligned relative to the message start, so a
 * decoder requires an 8-byte aligned buffer (MB_STATUS_MISALIGNED otherwise). */
#ifndef MB_PROTOCOL_MESSAGE_H
#define MB_PROTOCOL_MESSAGE_H

#include <stddef.h>
#include <stdint.h>

#include "protocol/dtype.h"
#include "protocol/status.h"

#define MB_PROTO_MAGIC 0x4b52424du /* "MBRK" little-endian */
#define MB_PROTO_VERSION 1u
#define MB_PROTO_HEADER_BYTES 32u
#define MB_PROTO_ALIGN 8u
#define MB_PROTO_NAME_BYTES 64u
#define MB_PROTO_PATH_BYTES 4096u

typedef enum {
    MB_OP_HELLO = 1,          /* coordinator -> worker, worker replies HELLO_REPLY */
    MB_OP_HELLO_REPLY = 2,
    MB_OP_LOAD_EXPERT = 3,    /* coordinator -> worker; reply STATUS */
    MB_OP_EXPERT_REQ = 4,     /* coordinator -> worker; reply EXPERT_REPLY */
    MB_OP_EXPERT_REPLY = 5,
    MB_OP_PING = 6,           /* reply PONG with the same tag */
    MB_OP_PONG = 7,
    MB_OP_SHUTDOWN = 8,       /* reply STATUS, then the worker exits */
    MB_OP_STATUS = 9,         /* generic reply carrying only header.status */
    MB_OP_COUNT_
} mb_proto_opcode;

/* Header flags. Unknown bits are rejected. */
#define MB_PROTO_FLAG_LAST 0x1u /* last chunk of a layer's work (informational) */
#define MB_PROTO_FLAGS_KNOWN 0x1u

/* The 32-byte header as laid out on the wire. */
typedef struct {
    uint32_t magic;         /* MB_PROTO_MAGIC */
    uint16_t version;       /* MB_PROTO_VERSION */
    uint16_t opcode;        /* mb_proto_opcode */
    uint64_t tag;           /* request tag, echoed by the reply */
    uint32_t flags;         /* MB_PROTO_FLAG_* */
    uint16_t status;        /* mb_status in replies, 0 in requests */
    uint16_t reserved;      /* must be 0 */
    uint64_t body_bytes;    /* bytes after the header */
} mb_proto_header;

/* One (expert slot, gate weight) pair of a token. The slot is the
 * backend-local index assigned at LOAD_EXPERT time. */
typedef struct {
    uint32_t slot;
    float gate;
} mb_proto_pair;

/* EXPERT_REQ body layout (offsets from the message start, each 8-aligned):
 *   u32 layer, u32 n_tokens, u32 d_model, u16 dtype, u16 reserved,
 *   u32 n_pairs, u32 reserved2                       (24 bytes)
 *   u16 pair_counts[n_tokens]        pairs of each token, in token order
 *   mb_proto_pair pairs[n_pairs]     token 0's pairs, then token 1's, ...
 *   act[n_tokens][d_model]           activations in dtype
 * Decoded view: every pointer points into the message buffer. */
typedef struct {
    uint32_t layer;
    uint32_t n_tokens;
    uint32_t d_model;
    mb_dtype dtype;
    uint32_t n_pairs;
    const uint16_t *pair_counts; /* [n_tokens] */
    const mb_proto_pair *pairs;  /* [n_pairs] */
    const void *act;             /* [n_tokens][d_model] in dtype */
} mb_proto_expert_req;

/* Worker-side timings carried back in every EXPERT_REPLY. */
typedef struct {
    uint64_t decode_ns;
    uint64_t compute_ns;
    uint64_t encode_ns;
} mb_proto_timings;

/* EXPERT_REPLY body layout:
 *   u32 n_tokens, u32 d_model, u16 dtype, u16 reserved, u32 reserved2,
 *   u64 decode_ns, u64 compute_ns, u64 encode_ns      (40 bytes)
 *   out[n_tokens][d_model] in dtype: per token the gate-weighted sum of its
 *   experts on this backend.
 * A reply with header.status != OK has an empty body. */
typedef struct {
    uint32_t n_tokens;
    uint32_t d_model;
    mb_dtype dtype;
    mb_proto_timings timings;
    const void *out; /* [n_tokens][d_model] */
} mb_proto_expert_reply;

/* HELLO body: u32 version, u32 reserved. HELLO_REPLY body: */
typedef struct {
    uint32_t version;              /* worker's MB_PROTO_VERSION */
    uint32_t payload_dtype_mask;   /* MB_DTYPE_MASK bits accepted for payloads */
    uint32_t weight_dtype_mask;    /* MB_DTYPE_MASK bits accepted for weights */
    uint32_t preferred_batch;      /* tokens per request the backend prefers */
    uint32_t n_threads;
    uint32_t max_slots;            /* how many expert slots it can hold */
    uint64_t mem_total_bytes;
    uint64_t mem_free_bytes;
    uint64_t max_message_bytes;    /* largest message it accepts */
    char backend[MB_PROTO_NAME_BYTES]; /* NUL-terminated, validated */
    char device[MB_PROTO_NAME_BYTES];  /* NUL-terminated, validated */
} mb_proto_hello_reply;

/* Where LOAD_EXPERT weights come from. */
typedef enum {
    MB_WEIGHTS_INLINE = 0, /* bytes follow in the message */
    MB_WEIGHTS_FILE = 1,   /* the worker maps a region of a file on its host */
} mb_proto_weight_source;

/* LOAD_EXPERT body layout:
 *   u32 layer, u32 expert_id, u32 slot, u32 d_model, u32 d_ff,
 *   u16 weight dtype, u16 source, u64 offset[3], u64 bytes[3], u32 path_len,
 *   u32 reserved                                        (80 bytes)
 *   source FILE:   path[path_len] (no NUL; at most MB_PROTO_PATH_BYTES-1),
 *                  offsets are file offsets.
 *   source INLINE: offsets are relative to the start of the data area that
 *                  follows the fixed part (8-aligned), bytes are inline.
 * Matrices: 0 = gate [d_ff][d_model], 1 = up [d_ff][d_model],
 *           2 = down [d_model][d_ff], each row-major in the weight dtype,
 *           bytes[i] must equal rows * cols * dtype size. */
typedef struct {
    uint32_t layer;
    uint32_t expert_id;
    uint32_t slot;
    uint32_t d_model;
    uint32_t d_ff;
    mb_dtype wdtype;
    mb_proto_weight_source source;
    uint64_t offset[3];
    uint64_t bytes[3];
    const char *path;          /* FILE: points into the buffer, path_len bytes, not NUL-terminated */
    uint32_t path_len;
    const void *data[3];       /* INLINE: points into the buffer; FILE: NULL */
} mb_proto_load_expert;

/* Limits a decoder enforces beyond the buffer's own bounds. */
typedef struct {
    uint32_t max_slots;        /* pairs with slot >= max_slots are rejected (0: no slots) */
    uint32_t max_tokens;       /* 0 means no limit beyond the buffer */
    uint32_t max_d_model;      /* 0 means no limit beyond the buffer */
} mb_proto_limits;

/* ---- header ---- */

/* Writes a header. Cannot fail. */
void mb_proto_header_init(mb_proto_header *h, mb_proto_opcode op, uint64_t tag, uint64_t body_bytes);

/* Validates the first MB_PROTO_HEADER_BYTES of buf (magic, version, opcode,
 * flags, reserved, body_bytes == len - header) and copies it out. */
mb_status mb_proto_decode_header(const void *buf, size_t len, mb_proto_header *out);

/* ---- expert work ---- */

/* Bytes an EXPERT_REQ message needs; MB_STATUS_OVERFLOW if it does not fit
 * size_t. */
mb_status mb_proto_expert_req_size(uint32_t n_tokens, uint32_t d_model, mb_dtype dtype, uint32_t n_pairs,
                                   size_t *bytes);

/* Writes the header and fixed part of an EXPERT_REQ into buf (cap bytes,
 * 8-aligned) and returns writable pointers to the arrays so the caller fills
 * them in place. Returns MB_STATUS_FULL if cap is too small. */
typedef struct {
    uint16_t *pair_counts;
    mb_proto_pair *pairs;
    void *act;
    size_t bytes; /* whole message */
} mb_proto_expert_req_writer;
mb_status mb_proto_encode_expert_req(void *buf, size_t cap, uint64_t tag, uint32_t flags, uint32_t layer,
                                     uint32_t n_tokens, uint32_t d_model, mb_dtype dtype, uint32_t n_pairs,
                                     mb_proto_expert_req_writer *w);

/* Decodes a whole EXPERT_REQ message (header included). Checks: header, body
 * length exact, dtype, n_tokens/d_model/n_pairs within limits, every
 * pair_counts entry summed with overflow checks equals n_pairs, every slot <
 * limits->max_slots, gate weights finite. */
mb_status mb_proto_decode_expert_req(const void *buf, size_t len, const mb_proto_limits *limits,
                                     mb_proto_expert_req *out);

mb_status mb_proto_expert_reply_size(uint32_t n_tokens, uint32_t d_model, mb_dtype dtype, size_t *bytes);

/* Writes an EXPERT_REPLY header+fixed part; *out_data receives where the
 * caller writes out[n_tokens][d_model]. Timings may be patched later with
 * mb_proto_expert_reply_set_timings. */
mb_status mb_proto_encode_expert_reply(void *buf, size_t cap, uint64_t tag, uint32_t n_tokens, uint32_t d_model,
                                       mb_dtype dtype, void **out_data, size_t *bytes);
void mb_proto_expert_reply_set_timings(void *buf, const mb_proto_timings *t);

/* Decodes an EXPERT_REPLY; the header's status must be OK (otherwise that
 * status is returned). */
mb_status mb_proto_decode_expert_reply(const void *buf, size_t len, mb_proto_expert_reply *out);

/* ---- control ---- */

/* Messages whose body is empty: PING, PONG, SHUTDOWN, STATUS (with status). */
mb_status mb_proto_encode_empty(void *buf, size_t cap, mb_proto_opcode op, uint64_t tag, mb_status status,
                                size_t *bytes);

mb_status mb_proto_encode_hello(void *buf, size_t cap, uint64_t tag, size_t *bytes);
mb_status mb_proto_decode_hello(const void *buf, size_t len, uint32_t *version);
mb_status mb_proto_encode_hello_reply(void *buf, size_t cap, uint64_t tag, const mb_proto_hello_reply *r,
                                      size_t *bytes);
mb_status mb_proto_decode_hello_reply(const void *buf, size_t len, mb_proto_hello_reply *out);

/* Size of a LOAD_EXPERT message: inline weights are counted; a FILE source
 * counts path_len only. */
mb_status mb_proto_load_expert_size(const mb_proto_load_expert *m, size_t *bytes);
/* Encodes LOAD_EXPERT. For INLINE, m->data[i] are copied in (m->offset is
 * computed by the encoder); for FILE, m->path/path_len are copied. */
mb_status mb_proto_encode_load_expert(void *buf, size_t cap, uint64_t tag, const mb_proto_load_expert *m,
                                      size_t *bytes);
/* Decodes LOAD_EXPERT: shapes non-zero, bytes[i] == rows*cols*size, slot <
 * limits->max_slots, path_len in range and free of NUL, inline regions inside
 * the buffer. */
mb_status mb_proto_decode_load_expert(const void *buf, size_t len, const mb_proto_limits *limits,
                                      mb_proto_load_expert *out);

#endif
