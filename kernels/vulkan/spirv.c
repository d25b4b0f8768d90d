/* Lookup of the embedded SPIR-V modules by shader name. */
#include <string.h>

#include "kernels/vulkan/spirv.h"

const mb_kvk_spirv *mb_kvk_spirv_find(const char *name)
{
    for (size_t i = 0; name && i < mb_kvk_spirv_count; i++)
        if (strcmp(mb_kvk_spirv_table[i].name, name) == 0) return &mb_kvk_spirv_table[i];
    return NULL;
}
