/* Private helpers shared by message.c and message_control.c: unaligned-safe
 * little-endian field access, overflow-checked layout arithmetic and the
 * header reader every decoder starts with. Not part of the public API. */
#ifndef MB_PROTOCOL_MESSAGE_INTERNAL_H
#define MB_PROTOCOL_MESSAGE_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "protocol/message.h"

/* Field access through memcpy: no alignment or aliasing assumptions, and each
 * call reads the wire exactly once (callers keep the value, then validate). */
static inline uint16_t mb_wire_rd16(const unsigned char *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint32_t mb_wire_rd32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint64_t mb_wire_rd64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void mb_wire_wr16(unsigned char *p, uint16_t v)
{
    memcpy(p, &v, sizeof v);
}

static inline void mb_wire_wr32(unsigned char *p, uint32_t v)
{
    memcpy(p, &v, sizeof v);
}

static inline void mb_wire_wr64(unsigned char *p, uint64_t v)
{
    memcpy(p, &v, sizeof v);
}

/* Bytes per element of a wire dtype value, 0 if the value names none. Kept
 * here rather than calling mb_dtype_size so the decoders stay a leaf with no
 * dependency on the codecs; message.c asserts the dtype count it knows. */
static inline uint64_t mb_wire_dtype_bytes(uint32_t dtype)
{
    switch (dtype) {
    case MB_DTYPE_F32:
        return 4;
    case MB_DTYPE_F16:
    case MB_DTYPE_BF16:
        return 2;
    default:
        return 0;
    }
}

/* A weight dtype's block on the wire: elements and bytes per block (1 and
 * the element size for element dtypes), 0 when the value names no weight
 * dtype. Layouts are ggml's (protocol/dtype.h). */
static inline uint64_t mb_wire_weight_block(uint32_t dtype, uint64_t *block_bytes)
{
    switch (dtype) {
    case MB_DTYPE_F32: *block_bytes = 4; return 1;
    case MB_DTYPE_F16:
    case MB_DTYPE_BF16: *block_bytes = 2; return 1;
    case MB_DTYPE_Q8_0: *block_bytes = 34; return 32;
    case MB_DTYPE_Q4_0: *block_bytes = 18; return 32;
    case MB_DTYPE_Q4_K: *block_bytes = 144; return 256;
    case MB_DTYPE_Q5_K: *block_bytes = 176; return 256;
    case MB_DTYPE_Q6_K: *block_bytes = 210; return 256;
    default: *block_bytes = 0; return 0;
    }
}

/* Alignment a weight dtype's data needs in a file: the element size, or 2
 * for a quantized block (ggml's blocks hold f16 scales). dtype must name a
 * weight dtype. */
static inline uint64_t mb_wire_weight_align(uint32_t dtype)
{
    uint64_t block_bytes;
    return mb_wire_weight_block(dtype, &block_bytes) == 1 ? block_bytes : 2;
}

/* *out = x rounded up to MB_PROTO_ALIGN; returns 0 on overflow. */
static inline int mb_wire_align8(uint64_t x, uint64_t *out)
{
    uint64_t y;
    if (__builtin_add_overflow(x, (uint64_t)(MB_PROTO_ALIGN - 1), &y)) return 0;
    *out = y & ~(uint64_t)(MB_PROTO_ALIGN - 1);
    return 1;
}

/* *out = (size_t)v; returns 0 when v does not fit size_t. */
static inline int mb_wire_to_size(uint64_t v, size_t *out)
{
    if ((uint64_t)(size_t)v != v) return 0;
    *out = (size_t)v;
    return 1;
}

/* 1 if all n bytes at p are zero (padding and reserved areas). */
static inline int mb_wire_all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

/* 1 if the IEEE binary32 bit pattern is neither infinite nor NaN. */
static inline int mb_wire_f32_bits_finite(uint32_t bits)
{
    return (bits & 0x7f800000u) != 0x7f800000u;
}

/* Writes a 32-byte header at p. */
void mb_wire_write_header(unsigned char *p, mb_proto_opcode op, uint64_t tag, uint32_t flags,
                          uint16_t status, uint64_t body_bytes);

/* mb_proto_decode_header, then MB_STATUS_PROTOCOL unless the opcode is op. */
mb_status mb_wire_decode_header_op(const void *buf, size_t len, mb_proto_opcode op,
                                   mb_proto_header *out);

#endif
