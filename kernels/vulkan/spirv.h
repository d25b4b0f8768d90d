/* The Vulkan compute shaders of kernels/vulkan/NAME.comp, compiled to SPIR-V by
 * glslc at build time and embedded in the binary (cmake/spirv_embed.cmake),
 * so a worker needs no shader files at run time. What each shader computes,
 * its push constants and its specialisation constants are in kernels/vulkan/moe.h. */
#ifndef MB_KERNELS_VULKAN_SPIRV_H
#define MB_KERNELS_VULKAN_SPIRV_H

#include <stddef.h>
#include <stdint.h>

/* One compiled shader: the .comp file's base name and its SPIR-V words. */
typedef struct {
    const char *name;
    const uint32_t *words;
    size_t n_words;
} mb_kvk_spirv;

extern const mb_kvk_spirv mb_kvk_spirv_table[];
extern const size_t mb_kvk_spirv_count;

/* The shader built from kernels/vulkan/NAME.comp; NULL when there is none.
 * Cannot fail otherwise; the memory is static. */
const mb_kvk_spirv *mb_kvk_spirv_find(const char *name);

#endif
