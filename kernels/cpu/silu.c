/* SiLU-gated product h = silu(g) * u, the expert FFN's activation: the
 * portable path, also the reference the SIMD paths are tested against. */
#include <math.h>

#include "kernels/cpu/gemm_isa.h"

void mb_kcpu_silu_mul_scalar(const float *g, const float *u, float *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}
