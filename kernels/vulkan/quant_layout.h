/* How the Vulkan shaders keep block-quantized weights (Q8_0, Q4_K, Q6_K)
 * in device memory: ggml's blocks split into sections, so that the quants
 * the shaders stream sit on 16-byte boundaries and everything else on
 * 4-byte ones (a Q8_0 block is 34 bytes and a Q6_K block 210, so ggml's
 * own layout would need 8- and 16-bit storage access). A matrix of
 * n_blocks blocks (row-major, k / block_elems blocks a row) is its
 * sections one after another; section s holds, block after block, bytes
 * [offset, offset + bytes) of each block. The total is the quantized
 * size, byte for byte (the same layout as kernels/cuda/quant_layout.h):
 *   Q8_0 (34 bytes):  qs[32] | d
 *   Q4_K (144 bytes): the block as it is (d, dmin, scales[12] fill its first 16 bytes)
 *   Q6_K (210 bytes): ql[128] | qh[64] | scales[16] | d
 * The shaders (kernels/vulkan/moe_quant.glsl) read a matrix that starts
 * 16-byte aligned, and may read the 2 bytes after its end (the last f16
 * scale is read as a whole word): the backend leaves room. Plain C: the
 * backend packs uploads with it on the host. */
#ifndef MB_KERNELS_VULKAN_QUANT_LAYOUT_H
#define MB_KERNELS_VULKAN_QUANT_LAYOUT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels/vulkan/moe.h"

#define MB_KVK_QSECTIONS_MAX 4

typedef struct {
    uint32_t offset; /* within a ggml block */
    uint32_t bytes;  /* of each block */
} mb_kvk_qsection;

/* 1 for the quantized types the shaders compute. */
static inline int mb_kvk_quant_supported(int wdtype)
{
    return wdtype == MB_KVK_Q8_0 || wdtype == MB_KVK_Q4_K || wdtype == MB_KVK_Q6_K;
}

/* Bytes of one block; 0 for another type. */
static inline uint32_t mb_kvk_qblock_bytes(int wdtype)
{
    return wdtype == MB_KVK_Q8_0 ? 34u : wdtype == MB_KVK_Q4_K ? 144u : wdtype == MB_KVK_Q6_K ? 210u : 0u;
}

static inline mb_kvk_qsection mb_kvk_qsec(uint32_t offset, uint32_t bytes)
{
    mb_kvk_qsection s;
    s.offset = offset;
    s.bytes = bytes;
    return s;
}

/* Fills sec (MB_KVK_QSECTIONS_MAX entries) with the type's sections in
 * layout order; returns how many (0 for another type). */
static inline int mb_kvk_qsections(int wdtype, mb_kvk_qsection *sec)
{
    switch (wdtype) {
    case MB_KVK_Q8_0:
        sec[0] = mb_kvk_qsec(2, 32);
        sec[1] = mb_kvk_qsec(0, 2);
        return 2;
    case MB_KVK_Q4_K:
        sec[0] = mb_kvk_qsec(0, 144);
        return 1;
    case MB_KVK_Q6_K:
        sec[0] = mb_kvk_qsec(0, 128);
        sec[1] = mb_kvk_qsec(128, 64);
        sec[2] = mb_kvk_qsec(192, 16);
        sec[3] = mb_kvk_qsec(208, 2);
        return 4;
    default: return 0;
    }
}

/* Copies section sec's part of blocks [b0, b0 + nb) of a ggml matrix
 * (blocks, packed) to dst, which receives nb * sec.bytes bytes: the piece
 * of the device layout at (sum of the earlier sections' bytes) * n_blocks
 * + b0 * sec.bytes. Cannot fail. */
static inline void mb_kvk_qsection_pack(int wdtype, mb_kvk_qsection sec, const void *blocks, size_t b0, size_t nb,
                                        void *dst)
{
    const size_t bb = mb_kvk_qblock_bytes(wdtype);
    const unsigned char *src = (const unsigned char *)blocks + b0 * bb + sec.offset;
    unsigned char *d = (unsigned char *)dst;
    if (sec.bytes == bb) {
        memcpy(d, src, nb * bb);
        return;
    }
    for (size_t i = 0; i < nb; i++)
        memcpy(d + i * sec.bytes, src + i * bb, sec.bytes);
}

#endif
