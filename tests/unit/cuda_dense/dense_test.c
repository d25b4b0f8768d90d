/* What every group of the dense CUDA test shares: the seed of its random
 * data, weights stored in each dtype, and the table of each kernel's worst
 * error, printed at the end. */
#include <cuda_runtime_api.h>
#include <stdarg.h>
#include <stdint.h>

#include "kernels/cpu/convert.h"
#include "kernels/cuda/dense.h"
#include "protocol/dtype.h"
#include "tests/cuda_testutil.h"
#include "tests/testutil.h"

#include "dense_test.h"

unsigned long long dense_seed = 2024;

/* ---- host data ------------------------------------------------------------ */

float *dense_rand_f32(size_t n, float scale)
{
    float *p = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = scale * mb_test_rand_f32(&dense_seed);
    return p;
}

/* ---- worst errors per kernel, printed at the end -------------------------- */

typedef struct {
    const char *name;
    double worst, bound;
    char where[160];
    long cases;
} err_stat;

static err_stat stats[E_N] = {
    [E_EMBED] = {"embed (exact)", 0, 0, "", 0},
    [E_NORM] = {"rmsnorm (rel to row max)", 0, 2e-6, "", 0},
    [E_ROPE] = {"rope (abs)", 0, 1e-6, "", 0},
    [E_KV] = {"kv_store (exact)", 0, 0, "", 0},
    [E_LIN_GEMV] = {"linear GEMV SIMT (|err| / sum|w x|, vs double)", 0, 1e-5, "", 0},
    [E_LIN_GEMV_MMA] = {"linear GEMV bf16 tensor cores (same)", 0, 1e-5, "", 0},
    [E_LIN_GEMM] = {"linear GEMM f32/f16 (|err| / sum|w x|)", 0, 1e-5, "", 0},
    [E_LIN_MMA] = {"linear GEMM bf16 tensor cores (same)", 0, 1e-5, "", 0},
    [E_LIN_CPU] = {"  CPU mb_kcpu_gemm, same metric (reference)", 0, 1e-5, "", 0},
    [E_ATT_DEC] = {"attention decode/split-K (abs vs CPU)", 0, 1e-5, "", 0},
    [E_ATT_AT] = {"attention_at, device position (same)", 0, 1e-5, "", 0},
    [E_ATT_FLASH] = {"attention flash (abs vs CPU)", 0, 1e-5, "", 0},
    [E_ROUTE] = {"route gate (abs; ids exact)", 0, 1e-6, "", 0},
    [E_SILU] = {"silu_mul (rel)", 0, 1e-6, "", 0},
    [E_ADD] = {"add (exact)", 0, 0, "", 0},
    [E_FUSED] = {"fusions vs unfused sequence (bits differing)", 0, 0, "", 0},
    [E_NORM_IN] = {"norm folded in GEMV (|err| / sum|w xn| vs unfused)", 0, 1e-5, "", 0},
};

int dense_note(int k, double err, const char *fmt, ...)
{
    err_stat *s = &stats[k];
    s->cases++;
    if (err > s->worst || (err != err)) {
        s->worst = err != err ? INFINITY : err;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(s->where, sizeof s->where, fmt, ap);
        va_end(ap);
    }
    return err <= s->bound;
}

void dense_print_stats(void)
{
    printf("\n%-46s %12s %10s %6s  %s\n", "kernel", "worst", "bound", "cases", "worst at");
    for (int k = 0; k < E_N; k++)
        printf("%-46s %12.3g %10.3g %6ld  %s\n", stats[k].name, stats[k].worst, stats[k].bound,
               stats[k].cases, stats[k].where);
}

/* ---- weights in a dtype ---------------------------------------------------- */

size_t dense_wsize(int dt)
{
    return dt == MB_KCUDA_F32 ? 4 : 2;
}
const char *dense_dtname(int dt)
{
    return dt == MB_KCUDA_F32 ? "f32" : dt == MB_KCUDA_F16 ? "f16" : "bf16";
}

/* Random [rows][cols] weights stored in dt; *exact gets their f32 values. */
void *dense_rand_weights(int dt, size_t count, float scale, float **exact)
{
    void *w = xmalloc(count * dense_wsize(dt));
    float *e = xmalloc(count * sizeof(float));
    for (size_t i = 0; i < count; i++) {
        float v = scale * mb_test_rand_f32(&dense_seed);
        if (dt == MB_KCUDA_F32)
            ((float *)w)[i] = v;
        else
            ((uint16_t *)w)[i] = dt == MB_KCUDA_F16 ? mb_f32_to_f16(v) : mb_f32_to_bf16(v);
        e[i] = mb_kcpu_load_w(dt, w, i);
    }
    *exact = e;
    return w;
}
