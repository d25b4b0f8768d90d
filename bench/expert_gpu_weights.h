/* One expert's weights for bench_expert_gpu as the device holds them:
 * bf16 gate | up | down back to back (the benchmark makes those itself), or
 * random quantized blocks scaled like a trained layer (Q8_0, Q4_K, Q6_K,
 * all three matrices one type) in kernels/cuda/quant_layout.h's layout,
 * each matrix 256-byte aligned. Host memory only; nothing here touches a
 * device. */
#ifndef MB_BENCH_EXPERT_GPU_WEIGHTS_H
#define MB_BENCH_EXPERT_GPU_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "bench/expert_gpu_report.h"

typedef struct {
    int wdtype;          /* MB_KCUDA_* (= mb_dtype) of all three matrices */
    const char *name;    /* "bf16", "q8_0", ... */
    void *host;          /* span bytes: the three matrices at off[] */
    size_t span;         /* bytes a slot takes on the device */
    size_t bytes;        /* the weights' own bytes (what decode streams) */
    size_t off[3];       /* gate, up, down */
    /* The same matrices as a checkpoint holds them (GGUF blocks, or bf16),
     * at raw + raw_off[]: what mb_backend_load_expert takes. */
    const void *raw;
    size_t raw_off[3];
    void *raw_own; /* raw when this struct allocated it */
} mb_egpu_weights;

/* Parses "bf16", "q8_0", "q4_k" or "q6_k" into its type; -1 for another. */
int mb_egpu_weights_parse(const char *name);

/* Makes model m's expert in the quantized type wdtype (see above), in
 * both layouts. Returns
 * 0, or -1 for another type, when out of memory or when m's shape is not
 * whole blocks of the type. */
int mb_egpu_weights_make(mb_egpu_weights *w, const mb_egpu_model *m, int wdtype);
void mb_egpu_weights_free(mb_egpu_weights *w);

#endif
