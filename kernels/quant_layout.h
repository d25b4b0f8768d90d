/* How the GPU backends (CUDA, Vulkan) keep block-quantized weights (Q8_0,
 * Q4_K, Q6_K) in device memory: ggml's blocks split into sections, so that
 * every field the kernels stream sits on a 16-byte boundary (a Q8_0 block
 * is 34 bytes and a Q6_K block 210, so ggml's own layout allows only 2-byte
 * loads). A matrix of n_blocks blocks (row-major, k / block_elems blocks a
 * row) is its sections one after another; section s holds, block after
 * block, bytes [offset, offset + bytes) of each block. The total is the
 * quantized size, byte for byte. With the matrix 16-byte aligned, every
 * section's part of every block is 16-byte aligned, except the f16 scales
 * (2 bytes a block):
 *   Q8_0 (34 bytes):  qs[32] | d
 *   Q4_K (144 bytes): the block as it is (d, dmin, scales[12] fill its first 16 bytes)
 *   Q6_K (210 bytes): ql[128] | qh[64] | scales[16] | d
 * Plain C: a backend packs uploads with it on the host, its kernels
 * (kernels/cuda/moe_quant.cuh, kernels/vulkan/moe_quant.glsl) address the
 * sections with the same numbers. Types are numbered as protocol/dtype.h's
 * mb_dtype. */
#ifndef MB_KERNELS_QUANT_LAYOUT_H
#define MB_KERNELS_QUANT_LAYOUT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum { MB_KQ_Q8_0 = 3, MB_KQ_Q4_K = 5, MB_KQ_Q6_K = 7 };

#define MB_KQ_SECTIONS_MAX 4

typedef struct {
    uint32_t offset; /* within a ggml block */
    uint32_t bytes;  /* of each block */
} mb_kq_section;

/* Bytes of one block; 0 for another type. */
static inline uint32_t mb_kq_block_bytes(int wdtype)
{
    return wdtype == MB_KQ_Q8_0 ? 34u : wdtype == MB_KQ_Q4_K ? 144u : wdtype == MB_KQ_Q6_K ? 210u : 0u;
}

static inline mb_kq_section mb_kq_sec(uint32_t offset, uint32_t bytes)
{
    mb_kq_section s;
    s.offset = offset;
    s.bytes = bytes;
    return s;
}

/* Fills sec (MB_KQ_SECTIONS_MAX entries) with the type's sections in
 * layout order; returns how many (0 for another type). */
static inline int mb_kq_sections(int wdtype, mb_kq_section *sec)
{
    switch (wdtype) {
    case MB_KQ_Q8_0:
        sec[0] = mb_kq_sec(2, 32);
        sec[1] = mb_kq_sec(0, 2);
        return 2;
    case MB_KQ_Q4_K:
        sec[0] = mb_kq_sec(0, 144);
        return 1;
    case MB_KQ_Q6_K:
        sec[0] = mb_kq_sec(0, 128);
        sec[1] = mb_kq_sec(128, 64);
        sec[2] = mb_kq_sec(192, 16);
        sec[3] = mb_kq_sec(208, 2);
        return 4;
    default: return 0;
    }
}

/* Copies section sec's part of blocks [b0, b0 + nb) of a ggml matrix
 * (blocks, packed) to dst, which receives nb * sec.bytes bytes: the piece
 * of the device layout at (sum of the earlier sections' bytes) * n_blocks
 * + b0 * sec.bytes. Cannot fail. */
static inline void mb_kq_section_pack(int wdtype, mb_kq_section sec, const void *blocks, size_t b0, size_t nb,
                                      void *dst)
{
    const size_t bb = mb_kq_block_bytes(wdtype);
    const unsigned char *src = (const unsigned char *)blocks + b0 * bb + sec.offset;
    unsigned char *d = (unsigned char *)dst;
    if (sec.bytes == bb) {
        memcpy(d, src, nb * bb);
        return;
    }
    for (size_t i = 0; i < nb; i++)
        memcpy(d + i * sec.bytes, src + i * bb, sec.bytes);
}

/* The whole matrix of n_blocks ggml blocks in the device layout, into dst
 * (n_blocks * block bytes). Cannot fail. */
static inline void mb_kq_layout_pack(int wdtype, const void *blocks, size_t n_blocks, void *dst)
{
    mb_kq_section sec[MB_KQ_SECTIONS_MAX];
    const int n = mb_kq_sections(wdtype, sec);
    unsigned char *d = (unsigned char *)dst;
    for (int s = 0; s < n; s++) {
        mb_kq_section_pack(wdtype, sec[s], blocks, 0, n_blocks, d);
        d += n_blocks * sec[s].bytes;
    }
}

#endif
