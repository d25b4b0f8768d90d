/* Wire messages between the coordinator and expert workers: a fixed 32-byte
 * versioned header followed by an opcode-specific body. Encoders write into a
 * caller-given buffer (so a shared-memory slot is filled in place); decoders
 * validate every field with overflow-checked arithmetic, never read outside
 * the buffer and return views that point into it (no copies, no pointers on
 * the wire). All integers little-endian; bodies start 8-byte aligned and every
 * array inside a body is 8-byte aligned relative to the message start, so a
 * decoder requires an 8-byte aligned buffer (MB_STATUS_MISALIGNED otherwise).
 *
 * Encoding is canonical: every message length is a multiple of 8, and every
 * padding byte, reserved field and unused bit is zero. Decoders reject any
 * other encoding, so decode followed by encode reproduces the input bytes
 * exactly (the fuzz target checks this).
 *
 * Status codes the decoders return, by class of defect:
 *   TRUNCATED    fewer than 32 bytes, or fewer than 32 + header.body_bytes
 *   BAD_MAGIC    header.magic != MB_PROTO_MAGIC
 *   BAD_VERSION  header.version != MB_PROTO_VERSION; HELLO/HELLO_REPLY body
 *                version below it
 *   BAD_OPCODE   header.opcode is not a known opcode
 *   PROTOCOL     a known opcode, but not the one the decoder was called for
 *   BAD_FLAGS    unknown header flag bits, or flags on any opcode but
 *                EXPERT_REQ; a nonzero reserved field, padding byte or
 *                request status (all "must be zero" fields)
 *   OVERFLOW     a size computed from header or body fields does not fit
 *                64 bits or size_t
 *   BAD_LENGTH   more bytes than 32 + body_bytes; body_bytes not a multiple of
 *                8; a body whose size disagrees with its own fields; a path or
 *                string that is empty, too long, unterminated or holds a NUL;
 *                LOAD_EXPERT inline regions outside the body or not where the
 *                layout puts them
 *   BAD_DTYPE    a dtype field or dtype mask names no known dtype
 *   BAD_SHAPE    a zero dimension, a dimension above a limit, a LOAD_EXPERT
 *                row that is not whole blocks of its matrix's dtype, bytes[i]
 *                that disagree with the shape
 *   SLOT_RANGE   an expert slot >= limits->max_slots
 *   PAIR_COUNT   pair_counts that overflow when summed or do not sum to n_pairs
 *   INVALID_ARG  NULL arguments; a non-finite gate weight
 *   UNSUPPORTED  an unknown LOAD_EXPERT weight source
 *   MISALIGNED   buf not 8-byte aligned; a LOAD_EXPERT file offset not a
 *                multiple of its matrix's dtype alignment
 * Decoders write their outputs only when they return MB_STATUS_OK.
 *
 * The views returned by the decoders point into the buffer and were validated
 * when decoded: they stay valid only while the caller owns the buffer and no
 * peer can still write it (the transports hand a slot over before recv
 * returns it). Decoders run in time linear in the message, never block and
 * allocate nothing. */
#ifndef MB_PROTOCOL_MESSAGE_H
#define MB_PROTOCOL_MESSAGE_H

#include <stddef.h>
#include <stdint.h>

#include "protocol/dtype.h"
#include "protocol/status.h"

/* The layouts below are the in-memory layouts of a little-endian host; a
 * big-endian port would need byte swaps in every encoder and decoder. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "moe-broker's wire protocol assumes a little-endian host"
#endif

#define MB_PROTO_MAGIC 0x4b52424du /* "MBRK" little-endian */
/* 2: LOAD_EXPERT names a weight dtype per matrix (Q4_K_M files keep some
 * down_proj in Q6_K beside Q4_K gate/up). */
#define MB_PROTO_VERSION 2u
#define MB_PROTO_HEADER_BYTES 32u
#define MB_PROTO_ALIGN 8u
#define MB_PROTO_NAME_BYTES 64u
#define MB_PROTO_PATH_BYTES 4096u

/* Fixed-part sizes of each body (the bytes before its arrays). */
#define MB_PROTO_EXPERT_REQ_FIXED_BYTES 24u
#define MB_PROTO_EXPERT_REPLY_FIXED_BYTES 40u
#define MB_PROTO_HELLO_BODY_BYTES 8u
#define MB_PROTO_HELLO_REPLY_BODY_BYTES 176u
#define MB_PROTO_LOAD_EXPERT_FIXED_BYTES 80u

typedef enum {
    MB_OP_HELLO = 1, /* coordinator -> worker, worker replies HELLO_REPLY */
    MB_OP_HELLO_REPLY = 2,
    MB_OP_LOAD_EXPERT = 3, /* coordinator -> worker; reply STATUS */
    MB_OP_EXPERT_REQ = 4,  /* coordinator -> worker; reply EXPERT_REPLY */
    MB_OP_EXPERT_REPLY = 5,
    MB_OP_PING = 6, /* reply PONG with the same tag */
    MB_OP_PONG = 7,
    MB_OP_SHUTDOWN = 8, /* reply STATUS, then the worker exits */
    MB_OP_STATUS = 9,   /* generic reply carrying only header.status */
    MB_OP_COUNT_
} mb_proto_opcode;

/* 1 for the reply opcodes (HELLO_REPLY, EXPERT_REPLY, PONG, STATUS), whose
 * header.status may be nonzero; 0 for requests and unknown values. */
int mb_proto_opcode_is_reply(int opcode);

/* Header flags. Unknown bits are rejected. LAST (EXPERT_REQ only): the last
 * chunk of a layer's work, informational. */
#define MB_PROTO_FLAG_LAST 0x1u
#define MB_PROTO_FLAGS_KNOWN 0x1u

/* The 32-byte header as laid out on the wire (offsets 0, 4, 6, 8, 16, 20,
 * 22, 24; message.c asserts them). */
typedef struct {
    uint32_t magic;      /* MB_PROTO_MAGIC */
    uint16_t version;    /* MB_PROTO_VERSION */
    uint16_t opcode;     /* mb_proto_opcode */
    uint64_t tag;        /* request tag, echoed by the reply */
    uint32_t flags;      /* MB_PROTO_FLAG_* */
    uint16_t status;     /* mb_status in replies (any value: a newer peer
                            may send codes this build lacks), 0 in requests */
    uint16_t reserved;   /* must be 0 */
    uint64_t body_bytes; /* bytes after the header, a multiple of 8 */
} mb_proto_header;

/* One (expert slot, gate weight) pair of a token. The slot is the
 * backend-local index assigned at LOAD_EXPERT time. 8 bytes on the wire. */
typedef struct {
    uint32_t slot;
    float gate; /* IEEE binary32, finite */
} mb_proto_pair;

/* EXPERT_REQ body layout (offsets from the message start, each 8-aligned):
 *   32: u32 layer, u32 n_tokens, u32 d_model, u16 dtype, u16 reserved,
 *       u32 n_pairs, u32 reserved2                   (24 bytes)
 *   56: u16 pair_counts[n_tokens]    pairs of each token, in token order
 *       zero padding to 8
 *       mb_proto_pair pairs[n_pairs] token 0's pairs, then token 1's, ...
 *       act[n_tokens][d_model]       activations in dtype
 *       zero padding to 8
 * n_tokens and d_model are nonzero; a token may have zero pairs.
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
 *   32: u32 n_tokens, u32 d_model, u16 dtype, u16 reserved, u32 reserved2,
 *   48: u64 decode_ns, u64 compute_ns, u64 encode_ns   (40 bytes)
 *   72: out[n_tokens][d_model] in dtype: per token the gate-weighted sum of
 *       its experts on this backend; zero padding to 8.
 * A reply with header.status != OK has an empty body (encode it with
 * mb_proto_encode_empty). */
typedef struct {
    uint32_t n_tokens;
    uint32_t d_model;
    mb_dtype dtype;
    mb_proto_timings timings;
    const void *out; /* [n_tokens][d_model] */
} mb_proto_expert_reply;

/* HELLO body: u32 version (the highest protocol version the sender speaks,
 * >= MB_PROTO_VERSION), u32 reserved.
 * HELLO_REPLY body: the fields below in this order, packed (176 bytes):
 * six u32 at 32..55, three u64 at 56..79, backend at 80, device at 144. */
typedef struct {
    uint32_t version;            /* worker's highest version, >= MB_PROTO_VERSION */
    uint32_t payload_dtype_mask; /* MB_DTYPE_MASK bits accepted for payloads, nonzero */
    uint32_t weight_dtype_mask;  /* MB_DTYPE_MASK bits accepted for weights, nonzero */
    uint32_t preferred_batch;    /* tokens per request the backend prefers */
    uint32_t n_threads;
    uint32_t max_slots; /* how many expert slots it can hold */
    uint64_t mem_total_bytes;
    uint64_t mem_free_bytes;
    uint64_t max_message_bytes;        /* largest message it accepts */
    char backend[MB_PROTO_NAME_BYTES]; /* NUL-terminated, zero after the NUL */
    char device[MB_PROTO_NAME_BYTES];  /* NUL-terminated, zero after the NUL */
} mb_proto_hello_reply;

/* Where LOAD_EXPERT weights come from. */
typedef enum {
    MB_WEIGHTS_INLINE = 0, /* bytes follow in the message */
    MB_WEIGHTS_FILE = 1,   /* the worker maps a region of a file on its host */
} mb_proto_weight_source;

/* LOAD_EXPERT's three matrices: the index of wdtype[], offset[], bytes[]
 * and data[]. */
enum { MB_PROTO_MAT_GATE = 0, MB_PROTO_MAT_UP = 1, MB_PROTO_MAT_DOWN = 2, MB_PROTO_MATS = 3 };

/* LOAD_EXPERT body layout:
 *    32: u32 layer, u32 expert_id, u32 slot, u32 d_model, u32 d_ff,
 *    52: u16 gate dtype, u16 source,
 *    56: u64 offset[3], 80: u64 bytes[3], 104: u32 path_len,
 *   108: u16 up dtype, u16 down dtype                  (80 bytes)
 *   112: source FILE:   path[path_len] (no NUL; 1 .. MB_PROTO_PATH_BYTES-1
 *                       bytes), zero padding to 8; offsets are file offsets,
 *                       each a multiple of its dtype's alignment (the element
 *                       size, 2 for a quantized block: ggml's blocks hold f16
 *                       scales) and offset[i] + bytes[i] <= INT64_MAX.
 *        source INLINE: path_len is 0; the data area holds the three
 *                       matrices, offsets are relative to its start and fixed
 *                       by the layout: offset[0] = 0, offset[i+1] =
 *                       offset[i] + bytes[i] rounded up to 8; zero padding
 *                       after each matrix.
 * (Version 1 had one dtype at 52 and a zero u32 at 108; the up/down dtypes
 * took its place.)
 * Matrices: 0 = gate [d_ff][d_model], 1 = up [d_ff][d_model],
 *           2 = down [d_model][d_ff], each row-major in its own weight dtype
 *           (the dtypes may differ: the wire carries what the file holds,
 *           a backend says what it computes), bytes[i] must equal rows *
 *           cols / block elements * block bytes of matrix i's dtype
 *           (nonzero shapes; a row is whole blocks, so d_model is a multiple
 *           of gate's and up's block and d_ff of down's; rows are ggml's
 *           blocks as stored). */
typedef struct {
    uint32_t layer;
    uint32_t expert_id;
    uint32_t slot;
    uint32_t d_model;
    uint32_t d_ff;
    mb_dtype wdtype[MB_PROTO_MATS]; /* per matrix (MB_PROTO_MAT_*) */
    mb_proto_weight_source source;
    uint64_t offset[MB_PROTO_MATS];
    uint64_t bytes[MB_PROTO_MATS];
    const char *path; /* FILE: points into the buffer, path_len bytes, not NUL-terminated */
    uint32_t path_len;
    const void *data[MB_PROTO_MATS]; /* INLINE: points into the buffer; FILE: NULL */
} mb_proto_load_expert;

/* Limits a decoder enforces beyond the buffer's own bounds. */
typedef struct {
    uint32_t max_slots;   /* pairs with slot >= max_slots are rejected (0: no slots) */
    uint32_t max_tokens;  /* 0 means no limit beyond the buffer */
    uint32_t max_d_model; /* 0 means no limit beyond the buffer */
} mb_proto_limits;

/* ---- header ---- */

/* Fills *h for a message of opcode op: magic, version, tag, body_bytes;
 * flags, status and reserved zero. Does not touch any buffer (copy it out
 * with memcpy). Cannot fail. */
void mb_proto_header_init(mb_proto_header *h, mb_proto_opcode op, uint64_t tag,
                          uint64_t body_bytes);

/* Validates the first MB_PROTO_HEADER_BYTES of buf (magic, version, opcode,
 * flags, reserved, status zero for requests, body_bytes a multiple of 8 and
 * == len - header) and copies it out. Reads each header byte once, so a peer
 * rewriting the buffer meanwhile cannot pass a check with one value and hand
 * out another. Use it to dispatch on the opcode and to learn the tag. */
mb_status mb_proto_decode_header(const void *buf, size_t len, mb_proto_header *out);

/* ---- expert work ---- */

/* Bytes an EXPERT_REQ message needs. BAD_DTYPE, BAD_SHAPE (zero n_tokens or
 * d_model), OVERFLOW if it does not fit size_t. */
mb_status mb_proto_expert_req_size(uint32_t n_tokens, uint32_t d_model, mb_dtype dtype,
                                   uint32_t n_pairs, size_t *bytes);

/* Writes the header, fixed part and padding of an EXPERT_REQ into buf (cap
 * bytes, 8-aligned) and returns writable pointers to the arrays so the caller
 * fills them in place; the caller must write every element (pair_counts
 * summing to n_pairs, slots in range, finite gates). Errors as
 * mb_proto_expert_req_size plus INVALID_ARG (NULL), MISALIGNED, BAD_FLAGS
 * (unknown flag bits) and FULL if cap is too small; buf is untouched then. */
typedef struct {
    uint16_t *pair_counts; /* [n_tokens] */
    mb_proto_pair *pairs;  /* [n_pairs] */
    void *act;             /* [n_tokens][d_model] in dtype */
    size_t bytes;          /* whole message */
} mb_proto_expert_req_writer;
mb_status mb_proto_encode_expert_req(void *buf, size_t cap, uint64_t tag, uint32_t flags,
                                     uint32_t layer, uint32_t n_tokens, uint32_t d_model,
                                     mb_dtype dtype, uint32_t n_pairs,
                                     mb_proto_expert_req_writer *w);

/* Decodes a whole EXPERT_REQ message (header included). Checks: header,
 * opcode, body length exact, reserved fields and padding zero, dtype,
 * n_tokens/d_model nonzero and within limits, pair_counts summed with
 * overflow checks equal to n_pairs, every slot < limits->max_slots, gate
 * weights finite. limits must not be NULL. */
mb_status mb_proto_decode_expert_req(const void *buf, size_t len, const mb_proto_limits *limits,
                                     mb_proto_expert_req *out);

/* Bytes an EXPERT_REPLY message needs; errors as mb_proto_expert_req_size. */
mb_status mb_proto_expert_reply_size(uint32_t n_tokens, uint32_t d_model, mb_dtype dtype,
                                     size_t *bytes);

/* Writes an EXPERT_REPLY header+fixed part (status OK, timings zero) and the
 * tail padding; *out_data receives where the caller writes
 * out[n_tokens][d_model], *bytes the message size. Timings may be patched
 * later with mb_proto_expert_reply_set_timings. Errors as
 * mb_proto_encode_expert_req; buf is untouched then. */
mb_status mb_proto_encode_expert_reply(void *buf, size_t cap, uint64_t tag, uint32_t n_tokens,
                                       uint32_t d_model, mb_dtype dtype, void **out_data,
                                       size_t *bytes);

/* Overwrites the timings of an EXPERT_REPLY already encoded in buf. Cannot
 * fail. */
void mb_proto_expert_reply_set_timings(void *buf, const mb_proto_timings *t);

/* Decodes an EXPERT_REPLY. If the header's status is not OK the body must be
 * empty and that status is returned as it came (it may be a value this build
 * does not name; print it with mb_status_str). Checking n_tokens, d_model and
 * dtype against the request is the caller's job. */
mb_status mb_proto_decode_expert_reply(const void *buf, size_t len, mb_proto_expert_reply *out);

/* ---- control ---- */

/* Encodes a message with an empty body: PING, SHUTDOWN (status must be OK),
 * PONG, STATUS (any status), or an error reply HELLO_REPLY / EXPERT_REPLY
 * (status must not be OK). status may be any value that fits 16 bits so a
 * relay can pass on codes it does not know. INVALID_ARG for another opcode
 * or status, MISALIGNED, FULL if cap < 32. */
mb_status mb_proto_encode_empty(void *buf, size_t cap, mb_proto_opcode op, uint64_t tag,
                                mb_status status, size_t *bytes);

/* Decodes PING, PONG, SHUTDOWN or STATUS (PROTOCOL for any other opcode):
 * header checks plus an empty body. The header, status included, is copied
 * to *out; a non-OK status is data here, not an error of this call. */
mb_status mb_proto_decode_empty(const void *buf, size_t len, mb_proto_header *out);

/* HELLO carries MB_PROTO_VERSION. decode_hello returns the sender's version
 * (>= MB_PROTO_VERSION, else BAD_VERSION). */
mb_status mb_proto_encode_hello(void *buf, size_t cap, uint64_t tag, size_t *bytes);
mb_status mb_proto_decode_hello(const void *buf, size_t len, uint32_t *version);

/* Encodes a HELLO_REPLY (status OK). r->backend and r->device must be
 * NUL-terminated within their fields (INVALID_ARG otherwise); bytes after the
 * NUL are written as zero. Masks and version are checked as the decoder does
 * (BAD_DTYPE, BAD_VERSION). */
mb_status mb_proto_encode_hello_reply(void *buf, size_t cap, uint64_t tag,
                                      const mb_proto_hello_reply *r, size_t *bytes);
/* Decodes a HELLO_REPLY into a copy (no views). A non-OK header status with
 * an empty body is returned as it came, like mb_proto_decode_expert_reply. */
mb_status mb_proto_decode_hello_reply(const void *buf, size_t len, mb_proto_hello_reply *out);

/* Size of a LOAD_EXPERT message: inline weights are counted; a FILE source
 * counts path_len only. Validates m as the decoder would (shape, bytes,
 * dtype, source, path_len; not the slot) and returns those errors. */
mb_status mb_proto_load_expert_size(const mb_proto_load_expert *m, size_t *bytes);
/* Encodes LOAD_EXPERT. For INLINE, m->data[i] are copied in (m->offset is
 * ignored: the encoder computes it, and path/path_len must be NULL/0); for
 * FILE, m->path/path_len are copied and m->data is ignored. Errors as
 * mb_proto_load_expert_size plus INVALID_ARG (NULL data or path, a path with
 * a NUL), MISALIGNED and FULL; buf is untouched then. */
mb_status mb_proto_encode_load_expert(void *buf, size_t cap, uint64_t tag,
                                      const mb_proto_load_expert *m, size_t *bytes);
/* Decodes LOAD_EXPERT: every dtype a weight dtype, shapes non-zero (d_model
 * within limits) and whole blocks of each matrix's dtype, bytes[i] == matrix
 * i's size in its dtype, slot < limits->max_slots, padding zero, path_len in
 * range and free of NUL, inline regions inside the buffer where the layout
 * puts them, file regions aligned for their dtype and within INT64_MAX. */
mb_status mb_proto_decode_load_expert(const void *buf, size_t len, const mb_proto_limits *limits,
                                      mb_proto_load_expert *out);

#endif
