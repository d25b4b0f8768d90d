/* Expert slots of the CPU backend: copies an expert's three matrices into
 * one NUMA-placed allocation per slot (bound to the backend's node, or
 * interleaved, or plain aligned memory), with rows padded to 64 bytes so
 * every row the kernels stream starts on a cache line. */
#include <numa.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/cpu_internal.h"

#define MB_CPU_ROW_ALIGN 64u

void mb_cpu_slot_free(mb_cpu_backend *be, mb_cpu_slot *s)
{
    if (!s->mem) {
        memset(s, 0, sizeof *s);
        return;
    }
    if (s->mem_kind == MB_CPU_MEM_NUMA)
        numa_free(s->mem, s->mem_bytes);
    else
        free(s->mem);
    be->weight_bytes -= s->mem_bytes;
    memset(s, 0, sizeof *s);
}

/* Elements per padded row of k elements of esz bytes. */
static size_t mb_cpu_padded(size_t k, size_t esz)
{
    size_t per = MB_CPU_ROW_ALIGN / esz;
    return (k + per - 1) / per * per;
}

static void *mb_cpu_alloc(const mb_cpu_backend *be, size_t bytes, mb_cpu_mem_kind *kind)
{
    void *p = NULL;
    if (be->numa_ok && be->numa == MB_NUMA_BIND && be->node >= 0) {
        p = numa_alloc_onnode(bytes, be->node);
        *kind = MB_CPU_MEM_NUMA;
    } else if (be->numa_ok && be->numa == MB_NUMA_INTERLEAVE) {
        p = numa_alloc_interleaved(bytes);
        *kind = MB_CPU_MEM_NUMA;
    } else {
        p = aligned_alloc(MB_CPU_ROW_ALIGN, bytes);
        *kind = MB_CPU_MEM_ALIGNED;
    }
    return p;
}

/* Copies rows x cols elements into rows padded to ld elements. */
static void mb_cpu_copy_rows(char *dst, const char *src, size_t rows, size_t cols, size_t ld,
                             size_t esz)
{
    for (size_t r = 0; r < rows; r++) {
        memcpy(dst + r * ld * esz, src + r * cols * esz, cols * esz);
        memset(dst + (r * ld + cols) * esz, 0, (ld - cols) * esz);
    }
}

/* Quantized experts keep their blocks as they are, rows unpadded (a row
 * of whole blocks; the kernels read them block by block). Each matrix has
 * its own dtype, so its own row size. */
static mb_status mb_cpu_load_expert_quant(mb_cpu_backend *be, const mb_expert_weights *w)
{
    const void *src[MB_PROTO_MATS] = {w->gate, w->up, w->down};
    size_t mat[MB_PROTO_MATS], at[MB_PROTO_MATS], bytes = 0;
    for (int i = 0; i < MB_PROTO_MATS; i++) {
        const uint32_t rows = i == MB_PROTO_MAT_DOWN ? w->d_model : w->d_ff;
        const uint32_t cols = i == MB_PROTO_MAT_DOWN ? w->d_ff : w->d_model;
        uint64_t rb;
        if (mb_dtype_row_bytes(w->wdtype[i], cols, &rb) != MB_STATUS_OK) return MB_STATUS_BAD_SHAPE;
        at[i] = bytes;
        if (__builtin_mul_overflow((size_t)rows, (size_t)rb, &mat[i]) ||
            __builtin_add_overflow(bytes, mat[i], &bytes))
            return MB_STATUS_OVERFLOW;
    }
    const size_t used = bytes;
    if (__builtin_add_overflow(bytes, (size_t)MB_CPU_ROW_ALIGN - 1, &bytes)) return MB_STATUS_OVERFLOW;
    bytes = bytes / MB_CPU_ROW_ALIGN * MB_CPU_ROW_ALIGN;
    mb_cpu_mem_kind kind = MB_CPU_MEM_NONE;
    char *mem = mb_cpu_alloc(be, bytes, &kind);
    if (!mem) return MB_STATUS_NOMEM;
    for (int i = 0; i < MB_PROTO_MATS; i++)
        memcpy(mem + at[i], src[i], mat[i]);
    memset(mem + used, 0, bytes - used);
    mb_cpu_slot *s = &be->slots[w->slot];
    mb_cpu_slot_free(be, s);
    *s = (mb_cpu_slot){
        .ld_in = w->d_model,
        .ld_ff = w->d_ff,
        .mem = mem,
        .mem_bytes = bytes,
        .mem_kind = kind,
        .gate = mem + at[MB_PROTO_MAT_GATE],
        .up = mem + at[MB_PROTO_MAT_UP],
        .down = mem + at[MB_PROTO_MAT_DOWN],
    };
    be->weight_bytes += bytes;
    mb_route_table_set(&be->table, w);
    return MB_STATUS_OK;
}

mb_status mb_cpu_load_expert(void *state, const mb_expert_weights *w)
{
    mb_cpu_backend *be = state;
    if (!be || !w || !w->gate || !w->up || !w->down) return MB_STATUS_INVALID_ARG;
    /* Slot in range, shapes nonzero, and all slots of one layer alike (the
     * kernel runs a layer's experts as one problem). */
    mb_status st = mb_route_table_check_load(&be->table, w);
    if (st == MB_STATUS_OK) st = mb_backend_expert_dtypes_check(w->wdtype);
    if (st != MB_STATUS_OK) return st;

    /* The wrapper admits either quantized matrices only or one element
     * dtype for all three. */
    if (mb_dtype_is_quant(w->wdtype[MB_PROTO_MAT_GATE])) return mb_cpu_load_expert_quant(be, w);
    const size_t esz = mb_dtype_size(w->wdtype[MB_PROTO_MAT_GATE]);
    const size_t ld_in = mb_cpu_padded(w->d_model, esz), ld_ff = mb_cpu_padded(w->d_ff, esz);
    /* 2 * d_ff * ld_in + d_model * ld_ff elements; each factor < 2^32 and
     * padding adds < 64, so check the products against SIZE_MAX. */
    size_t gu = 0, dn = 0, bytes = 0;
    if (__builtin_mul_overflow((size_t)w->d_ff, ld_in, &gu) ||
        __builtin_mul_overflow(gu, (size_t)2, &gu) ||
        __builtin_mul_overflow((size_t)w->d_model, ld_ff, &dn) ||
        __builtin_add_overflow(gu, dn, &bytes) || __builtin_mul_overflow(bytes, esz, &bytes))
        return MB_STATUS_OVERFLOW;

    mb_cpu_mem_kind kind = MB_CPU_MEM_NONE;
    char *mem = mb_cpu_alloc(be, bytes, &kind);
    if (!mem) return MB_STATUS_NOMEM;
    const size_t mat_gu = (size_t)w->d_ff * ld_in * esz;
    mb_cpu_copy_rows(mem, w->gate, w->d_ff, w->d_model, ld_in, esz);
    mb_cpu_copy_rows(mem + mat_gu, w->up, w->d_ff, w->d_model, ld_in, esz);
    mb_cpu_copy_rows(mem + 2 * mat_gu, w->down, w->d_model, w->d_ff, ld_ff, esz);

    mb_cpu_slot *s = &be->slots[w->slot];
    mb_cpu_slot_free(be, s);
    *s = (mb_cpu_slot){
        .ld_in = ld_in,
        .ld_ff = ld_ff,
        .mem = mem,
        .mem_bytes = bytes,
        .mem_kind = kind,
        .gate = mem,
        .up = mem + mat_gu,
        .down = mem + 2 * mat_gu,
    };
    be->weight_bytes += bytes;
    mb_route_table_set(&be->table, w);
    return MB_STATUS_OK;
}
