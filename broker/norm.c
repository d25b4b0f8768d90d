/* RMSNorm rows in f32: x * rsqrt(mean(x^2) + eps) * w, matching transformers'
 * LlamaRMSNorm family (float32 compute, weight applied after the scale). */
#include "broker/norm.h"

#include <math.h>

void mb_norm_rms(float *y, size_t ldy, const float *x, size_t ldx, size_t n, size_t d,
                 const float *w, float eps)
{
    for (size_t t = 0; t < n; t++) {
        const float *xr = x + t * ldx;
        float *yr = y + t * ldy;
        double ss = 0.0;
        for (size_t i = 0; i < d; i++)
            ss += (double)xr[i] * (double)xr[i];
        float var = (float)(ss / (double)d);
        float scale = 1.0f / sqrtf(var + eps);
        for (size_t i = 0; i < d; i++)
            yr[i] = w[i] * (xr[i] * scale);
    }
}
