/* RMSNorm for the coordinator's forward pass, computed in f32 the way
 * transformers' *RMSNorm modules compute it. */
#ifndef MB_BROKER_NORM_H
#define MB_BROKER_NORM_H

#include <stddef.h>

/* y[n][d] = x[n][d] * rsqrt(mean(x[i]^2) + eps) * w[d], row by row.
 * Row strides ldx and ldy (>= d); y may equal x (in place). The mean of
 * squares is accumulated in double so the result does not depend on d's
 * size; the rest is f32 as in transformers. Cannot fail. */
void mb_norm_rms(float *y, size_t ldy, const float *x, size_t ldx, size_t n, size_t d,
                 const float *w, float eps);

#endif
