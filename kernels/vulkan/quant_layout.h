/* The Vulkan shaders' quantized weights: kernels/quant_layout.h's layout
 * (the CUDA backend's too), read by kernels/vulkan/moe_quant.glsl from a
 * matrix that starts 16-byte aligned; the shaders may read the 2 bytes
 * after its end (the last f16 scale is read as a whole word), so the
 * backend leaves room. Sections are read as 32-bit words and 16-byte loads:
 * no 8- or 16-bit storage access is needed. Plain C: the backend packs
 * uploads with it on the host. */
#ifndef MB_KERNELS_VULKAN_QUANT_LAYOUT_H
#define MB_KERNELS_VULKAN_QUANT_LAYOUT_H

#include "kernels/quant_layout.h"
#include "kernels/vulkan/moe.h"

/* 1 for the quantized types the shaders compute. */
static inline int mb_kvk_quant_supported(int wdtype)
{
    return wdtype == MB_KVK_Q8_0 || wdtype == MB_KVK_Q4_K || wdtype == MB_KVK_Q6_K;
}

#endif
