/* The CUDA kernels' quantized weights: kernels/quant_layout.h's layout
 * (shared with the Vulkan backend), and which types the kernels compute.
 * Plain C: the backend packs uploads with it on the host, the kernels
 * address sections with the same numbers. */
#ifndef MB_KERNELS_CUDA_QUANT_LAYOUT_H
#define MB_KERNELS_CUDA_QUANT_LAYOUT_H

#include "kernels/cuda/moe.h"
#include "kernels/quant_layout.h"

/* 1 for the quantized types the CUDA kernels compute. */
static inline int mb_kcuda_quant_supported(int wdtype)
{
    return wdtype == MB_KCUDA_Q8_0 || wdtype == MB_KCUDA_Q4_K || wdtype == MB_KCUDA_Q6_K;
}

/* Elements of one block; 0 for another type. */
static inline uint32_t mb_kcuda_qblock_elems(int wdtype)
{
    return wdtype == MB_KCUDA_Q8_0 ? 32u : mb_kcuda_quant_supported(wdtype) ? 256u : 0u;
}

#endif
