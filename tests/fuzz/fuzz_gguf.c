/* libFuzzer target for the GGUF header parser (broker/gguf.h): any bytes as
 * a file image must be accepted or refused with a status, never read out
 * of bounds. When accepted, every tensor's data lies inside the image, is
 * aligned, and every lookup finds what enumeration lists. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "broker/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mb_gguf *g = NULL;
    char err[256];
    if (mb_gguf_parse(data, size, "fuzz", &g, err, sizeof err) != MB_STATUS_OK) return 0;
    for (uint64_t i = 0; i < mb_gguf_tensor_count(g); i++) {
        const mb_gguf_tensor *t = mb_gguf_tensor_at(g, i);
        if (!t || t->file_offset > size || t->bytes > size - t->file_offset) abort();
        if (t->file_offset % mb_gguf_alignment(g)) abort();
        if (mb_gguf_tensor_find(g, t->name) != t) abort();
    }
    for (uint64_t i = 0; i < mb_gguf_kv_count(g); i++) {
        const mb_gguf_kv *kv = mb_gguf_kv_at(g, i);
        if (!kv || mb_gguf_kv_find(g, kv->key) != kv) abort();
        uint32_t u;
        float f;
        char *s = NULL;
        (void)mb_gguf_get_u32(g, kv->key, &u, NULL, 0);
        (void)mb_gguf_get_f32(g, kv->key, &f, NULL, 0);
        if (mb_gguf_get_str(g, kv->key, &s, NULL, 0) == MB_STATUS_OK) free(s);
    }
    mb_gguf_close(g);
    return 0;
}
