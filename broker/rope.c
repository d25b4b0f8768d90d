/* Rotary position embedding tables and their application ("rotate half"
 * layout), reproducing transformers' default rope in f32. */
#include "broker/rope.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

mb_status mb_rope_init(mb_rope *r, uint32_t head_dim, uint32_t n_pos, float theta)
{
    if (!r || head_dim == 0 || (head_dim & 1u) || n_pos == 0 || !(theta > 0.0f))
        return MB_STATUS_INVALID_ARG;
    memset(r, 0, sizeof(*r));
    uint32_t half = head_dim / 2;
    size_t count = (size_t)n_pos * half;
    if (count / half != n_pos || count > SIZE_MAX / sizeof(float)) return MB_STATUS_OVERFLOW;
    float *c = malloc(count * sizeof(float));
    float *s = malloc(count * sizeof(float));
    float *inv = malloc(half * sizeof(float));
    if (!c || !s || !inv) {
        free(c);
        free(s);
        free(inv);
        return MB_STATUS_NOMEM;
    }
    /* transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all f32. */
    for (uint32_t i = 0; i < half; i++) {
        float expo = (float)(2 * i) / (float)head_dim;
        float p = (float)pow((double)theta, (double)expo);
        inv[i] = 1.0f / p;
    }
    for (uint32_t pos = 0; pos < n_pos; pos++) {
        for (uint32_t i = 0; i < half; i++) {
            float angle = (float)pos * inv[i];
            c[(size_t)pos * half + i] = (float)cos((double)angle);
            s[(size_t)pos * half + i] = (float)sin((double)angle);
        }
    }
    free(inv);
    r->head_dim = head_dim;
    r->n_pos = n_pos;
    r->cos = c;
    r->sin = s;
    return MB_STATUS_OK;
}

void mb_rope_fini(mb_rope *r)
{
    if (!r) return;
    free(r->cos);
    free(r->sin);
    memset(r, 0, sizeof(*r));
}

void mb_rope_apply(const mb_rope *r, float *x, size_t ldx, uint32_t n_tokens, uint32_t n_heads,
                   uint32_t pos0)
{
    uint32_t half = r->head_dim / 2;
    for (uint32_t t = 0; t < n_tokens; t++) {
        const float *c = r->cos + (size_t)(pos0 + t) * half;
        const float *s = r->sin + (size_t)(pos0 + t) * half;
        float *row = x + (size_t)t * ldx;
        if (r->interleaved) {
            for (uint32_t h = 0; h < n_heads; h++) {
                float *xh = row + (size_t)h * r->head_dim;
                for (uint32_t i = 0; i < half; i++) {
                    float a = xh[2 * i], b = xh[2 * i + 1];
                    xh[2 * i] = a * c[i] - b * s[i];
                    xh[2 * i + 1] = a * s[i] + b * c[i];
                }
            }
            continue;
        }
        for (uint32_t h = 0; h < n_heads; h++) {
            float *x1 = row + (size_t)h * r->head_dim;
            float *x2 = x1 + half;
            /* q*cos + rotate_half(q)*sin with rotate_half(q) = cat(-x2, x1). */
            for (uint32_t i = 0; i < half; i++) {
                float a = x1[i], b = x2[i];
                x1[i] = a * c[i] - b * s[i];
                x2[i] = b * c[i] + a * s[i];
            }
        }
    }
}
