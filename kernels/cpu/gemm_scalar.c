/* Portable GEMM tiles: plain C loops, the reference every SIMD path is
 * tested against and the fallback on CPUs without AVX2. */
#include <string.h>

#include "kernels/cpu/convert.h"
#include "kernels/cpu/gemm_isa.h"

static void mb_kcpu_scalar_pack(int wdtype, const float *x, size_t k, float *xp)
{
    (void)wdtype;
    memcpy(xp, x, k * sizeof *xp);
}

static void mb_kcpu_scalar_tile(int wdtype, const void *w, size_t ldw, int rows,
                                const float *const *xp, int n_tok, size_t k0, size_t k1, float *out)
{
    const size_t esz = mb_kcpu_wsize(wdtype);
    for (int r = 0; r < rows; r++) {
        const void *wr = (const char *)w + (size_t)r * ldw * esz;
        for (int t = 0; t < n_tok; t++) {
            const float *x = xp[t];
            float s = 0.0f;
            for (size_t kk = k0; kk < k1; kk++)
                s += mb_kcpu_load_w(wdtype, wr, kk) * x[kk];
            out[t * rows + r] = s;
        }
    }
}

const mb_kcpu_isa_impl mb_kcpu_isa_scalar = {
    .name = "scalar",
    .chunk = 1,
    .bf16_deinterleave = 0,
    .t_max = 4,
    .rows_for_t = {4, 4, 4, 4, 4, 4, 4, 4, 4},
    .pack = mb_kcpu_scalar_pack,
    .tile = mb_kcpu_scalar_tile,
    .silu_mul = mb_kcpu_silu_mul_scalar,
};
