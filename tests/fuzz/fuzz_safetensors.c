/* libFuzzer target for the safetensors header parser: any bytes as a file
 * image must be accepted or refused with a status, never read out of
 * bounds. When accepted, every tensor's data range lies inside the image. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "broker/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mb_safetensors *f = NULL;
    char err[256];
    if (mb_safetensors_parse(data, size, "fuzz", &f, err, sizeof err) != MB_STATUS_OK) return 0;
    uint32_t n = mb_safetensors_count(f);
    for (uint32_t i = 0; i < n; i++) {
        const mb_st_tensor *t = mb_safetensors_at(f, i);
        if (!t || t->file_offset > size || t->bytes > size - t->file_offset) abort();
        if (mb_safetensors_find(f, t->name) != t) abort();
    }
    mb_safetensors_close(f);
    return 0;
}
