/* Quantized weights on the CPU: the portable half. Dequantization follows
 * gguf-py's numpy code operation by operation (f32 products, then the
 * subtraction, never fused: this file is built without FMA), activation
 * quantization follows llama.cpp, and the scalar dot products define the
 * integer sums the SIMD paths (quant_avx2.c) must reproduce. Also the
 * quantized GEMM driver. */
#include "kernels/cpu/quant.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/convert.h"
#include "kernels/cpu/gemm_isa.h"
#include "kernels/cpu/quant_isa.h"

int mb_kcpu_quant_valid(int wdtype)
{
    return wdtype >= MB_KCPU_Q8_0 && wdtype <= MB_KCPU_Q6_K;
}

size_t mb_kcpu_block_elems(int wdtype)
{
    switch (wdtype) {
    case 0: case 1: case 2: return 1;
    case MB_KCPU_Q8_0: case MB_KCPU_Q4_0: return 32;
    case MB_KCPU_Q4_K: case MB_KCPU_Q5_K: case MB_KCPU_Q6_K: return MB_KCPU_QK;
    default: return 0;
    }
}

size_t mb_kcpu_block_bytes(int wdtype)
{
    switch (wdtype) {
    case 0: return 4;
    case 1: case 2: return 2;
    case MB_KCPU_Q8_0: return sizeof(mb_kcpu_block_q8_0);
    case MB_KCPU_Q4_0: return sizeof(mb_kcpu_block_q4_0);
    case MB_KCPU_Q4_K: return sizeof(mb_kcpu_block_q4_k);
    case MB_KCPU_Q5_K: return sizeof(mb_kcpu_block_q5_k);
    case MB_KCPU_Q6_K: return sizeof(mb_kcpu_block_q6_k);
    default: return 0;
    }
}

/* ---- dequantization ---------------------------------------------------- */

/* The 6-bit scale and min of sub-block j of a Q4_K/Q5_K block (gguf-py's
 * Q4_K.get_scale_min, llama.cpp's get_scale_min_k4). */
void mb_kcpu_scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static void dequant_q8_0(const mb_kcpu_block_q8_0 *b, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++) {
        const float d = mb_kcpu_f16_f32(b[i].d);
        for (int l = 0; l < 32; l++)
            y[i * 32 + l] = (float)b[i].qs[l] * d;
    }
}

static void dequant_q4_0(const mb_kcpu_block_q4_0 *b, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++) {
        const float d = mb_kcpu_f16_f32(b[i].d);
        for (int l = 0; l < 16; l++) {
            y[i * 32 + l] = d * (float)((b[i].qs[l] & 0xF) - 8);
            y[i * 32 + 16 + l] = d * (float)((b[i].qs[l] >> 4) - 8);
        }
    }
}

/* Q4_K and Q5_K share the scales; qh is NULL for Q4_K. Per sub-block of
 * 32: y = (d * sc) * q - (dmin * m), two roundings as numpy does. */
static void dequant_k4(uint16_t dh, uint16_t dminh, const uint8_t *scales, const uint8_t *qh,
                       const uint8_t *qs, float *y)
{
    const float d = mb_kcpu_f16_f32(dh), dmin = mb_kcpu_f16_f32(dminh);
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        mb_kcpu_scale_min_k4(j, scales, &sc, &m);
        const float ds = d * (float)sc, dm = dmin * (float)m;
        const uint8_t *q = qs + (j / 2) * 32;
        const int shift = (j & 1) * 4;
        for (int l = 0; l < 32; l++) {
            int v = (q[l] >> shift) & 0xF;
            if (qh) v |= ((qh[l] >> j) & 1) << 4;
            const float p = ds * (float)v;
            y[j * 32 + l] = p - dm;
        }
    }
}

static void dequant_q6_k(const mb_kcpu_block_q6_k *b, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, y += MB_KCPU_QK) {
        const float d = mb_kcpu_f16_f32(b[i].d);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = b[i].ql + 64 * h, *qh = b[i].qh + 32 * h;
            const int8_t *sc = b[i].scales + 8 * h;
            float *yh = y + 128 * h;
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                yh[l] = (d * (float)sc[is + 0]) * (float)q1;
                yh[l + 32] = (d * (float)sc[is + 2]) * (float)q2;
                yh[l + 64] = (d * (float)sc[is + 4]) * (float)q3;
                yh[l + 96] = (d * (float)sc[is + 6]) * (float)q4;
            }
        }
    }
}

void mb_kcpu_dequant_row(int wdtype, const void *src, float *dst, size_t k)
{
    const size_t nb = mb_kcpu_block_elems(wdtype) ? k / mb_kcpu_block_elems(wdtype) : 0;
    switch (wdtype) {
    case 0: memcpy(dst, src, k * sizeof(float)); break;
    case 1:
    case 2:
        for (size_t i = 0; i < k; i++)
            dst[i] = mb_kcpu_load_w(wdtype, src, i);
        break;
    case MB_KCPU_Q8_0: dequant_q8_0(src, dst, nb); break;
    case MB_KCPU_Q4_0: dequant_q4_0(src, dst, nb); break;
    case MB_KCPU_Q4_K:
        for (size_t i = 0; i < nb; i++) {
            const mb_kcpu_block_q4_k *b = (const mb_kcpu_block_q4_k *)src + i;
            dequant_k4(b->d, b->dmin, b->scales, NULL, b->qs, dst + i * MB_KCPU_QK);
        }
        break;
    case MB_KCPU_Q5_K:
        for (size_t i = 0; i < nb; i++) {
            const mb_kcpu_block_q5_k *b = (const mb_kcpu_block_q5_k *)src + i;
            dequant_k4(b->d, b->dmin, b->scales, b->qh, b->qs, dst + i * MB_KCPU_QK);
        }
        break;
    case MB_KCPU_Q6_K: dequant_q6_k(src, dst, nb); break;
    default: break;
    }
}

/* ---- activation quantization ------------------------------------------- */

static int k_family(int wdtype)
{
    return wdtype == MB_KCPU_Q4_K || wdtype == MB_KCPU_Q5_K || wdtype == MB_KCPU_Q6_K;
}

int mb_kcpu_qact_same(int a, int b)
{
    return k_family(a) == k_family(b);
}

size_t mb_kcpu_qact_row_bytes(int wdtype, size_t k)
{
    if (k_family(wdtype)) return k / MB_KCPU_QK * sizeof(mb_kcpu_block_q8_k);
    return k / 32 * sizeof(mb_kcpu_block_q8_0);
}

/* f32 -> f16 bits, round to nearest even (the block scales). */
static uint16_t f32_to_f16_bits(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (x > 0x7f800000u ? 0x200u : 0));
    if (x >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds past 65504 */
    if (x < 0x38800000u) {                                 /* f16 subnormal or zero */
        if (x < 0x33000000u) return (uint16_t)sign;
        const uint32_t e = x >> 23, m = (x & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - e; /* 14..24 */
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((x >> 13) - (112u << 10));
    const uint32_t rem = x & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

/* llama.cpp's nearest_int: round half to even for |x| < 2^22. */
static int nearest_int(float fval)
{
    float val = fval + 12582912.f;
    int i;
    memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

static void qact_q8_0(const float *x, mb_kcpu_block_q8_0 *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, x += 32) {
        float amax = 0.0f;
        for (int l = 0; l < 32; l++)
            amax = fmaxf(amax, fabsf(x[l]));
        const float d = amax / 127.f;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        y[i].d = f32_to_f16_bits(d);
        for (int l = 0; l < 32; l++)
            y[i].qs[l] = (int8_t)nearest_int(x[l] * id);
    }
}

static void qact_q8_k(const float *x, mb_kcpu_block_q8_k *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, x += MB_KCPU_QK) {
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < MB_KCPU_QK; j++) {
            const float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (amax == 0.0f) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < MB_KCPU_QK; j++) {
            const int v = nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < MB_KCPU_QK / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++)
                sum += y[i].qs[j * 16 + l];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1.0f / iscale;
    }
}

void mb_kcpu_qact_row(int wdtype, const float *x, void *dst, size_t k)
{
    if (k_family(wdtype))
        qact_q8_k(x, dst, k / MB_KCPU_QK);
    else
        qact_q8_0(x, dst, k / 32);
}

void mb_kcpu_qact_dequant_row(int wdtype, const void *xq, float *dst, size_t k)
{
    if (k_family(wdtype)) {
        const mb_kcpu_block_q8_k *b = xq;
        for (size_t i = 0; i < k / MB_KCPU_QK; i++)
            for (int l = 0; l < MB_KCPU_QK; l++)
                dst[i * MB_KCPU_QK + l] = b[i].d * (float)b[i].qs[l];
    } else {
        const mb_kcpu_block_q8_0 *b = xq;
        for (size_t i = 0; i < k / 32; i++) {
            const float d = mb_kcpu_f16_f32(b[i].d);
            for (int l = 0; l < 32; l++)
                dst[i * 32 + l] = d * (float)b[i].qs[l];
        }
    }
}

/* ---- scalar dot products ----------------------------------------------- */

static float dot_q8_0(const void *w, const void *xq, size_t nb)
{
    const mb_kcpu_block_q8_0 *a = w, *b = xq;
    float sum = 0.0f;
    for (size_t i = 0; i < nb; i++) {
        int s = 0;
        for (int l = 0; l < 32; l++)
            s += a[i].qs[l] * b[i].qs[l];
        sum += mb_kcpu_f16_f32(a[i].d) * mb_kcpu_f16_f32(b[i].d) * (float)s;
    }
    return sum;
}

static float dot_q4_0(const void *w, const void *xq, size_t nb)
{
    const mb_kcpu_block_q4_0 *a = w;
    const mb_kcpu_block_q8_0 *b = xq;
    float sum = 0.0f;
    for (size_t i = 0; i < nb; i++) {
        int s = 0;
        for (int l = 0; l < 16; l++)
            s += ((a[i].qs[l] & 0xF) - 8) * b[i].qs[l] + ((a[i].qs[l] >> 4) - 8) * b[i].qs[l + 16];
        sum += mb_kcpu_f16_f32(a[i].d) * mb_kcpu_f16_f32(b[i].d) * (float)s;
    }
    return sum;
}

/* Q4_K/Q5_K: sum = d*yd * sum_j sc_j * (q . y)_j - dmin*yd * sum_j m_j * ysum_j. */
static float dot_k4(const void *w, const void *xq, size_t nb, int q5)
{
    const mb_kcpu_block_q8_k *b = xq;
    float sum = 0.0f;
    for (size_t i = 0; i < nb; i++) {
        const uint8_t *scales, *qs, *qh = NULL;
        uint16_t dh, dminh;
        if (q5) {
            const mb_kcpu_block_q5_k *a = (const mb_kcpu_block_q5_k *)w + i;
            scales = a->scales, qs = a->qs, qh = a->qh, dh = a->d, dminh = a->dmin;
        } else {
            const mb_kcpu_block_q4_k *a = (const mb_kcpu_block_q4_k *)w + i;
            scales = a->scales, qs = a->qs, dh = a->d, dminh = a->dmin;
        }
        int isum = 0, msum = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            mb_kcpu_scale_min_k4(j, scales, &sc, &m);
            const uint8_t *q = qs + (j / 2) * 32;
            const int shift = (j & 1) * 4;
            int s = 0;
            for (int l = 0; l < 32; l++) {
                int v = (q[l] >> shift) & 0xF;
                if (qh) v |= ((qh[l] >> j) & 1) << 4;
                s += v * b[i].qs[j * 32 + l];
            }
            isum += sc * s;
            msum += m * (b[i].bsums[2 * j] + b[i].bsums[2 * j + 1]);
        }
        sum += mb_kcpu_f16_f32(dh) * b[i].d * (float)isum -
               mb_kcpu_f16_f32(dminh) * b[i].d * (float)msum;
    }
    return sum;
}

static float dot_q6_k(const void *w, const void *xq, size_t nb)
{
    const mb_kcpu_block_q6_k *a = w;
    const mb_kcpu_block_q8_k *b = xq;
    float sum = 0.0f;
    for (size_t i = 0; i < nb; i++) {
        int isum = 0;
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = a[i].ql + 64 * h, *qh = a[i].qh + 32 * h;
            const int8_t *sc = a[i].scales + 8 * h;
            const int8_t *y = b[i].qs + 128 * h;
            for (int g = 0; g < 4; g++) {
                for (int half = 0; half < 2; half++) {
                    int s = 0;
                    for (int l = half * 16; l < half * 16 + 16; l++) {
                        const uint8_t lo = g & 1 ? ql[l + 32] : ql[l];
                        const int q = ((g < 2 ? lo & 0xF : lo >> 4) | (((qh[l] >> (2 * g)) & 3) << 4)) - 32;
                        s += q * y[32 * g + l];
                    }
                    isum += sc[2 * g + half] * s;
                }
            }
        }
        sum += mb_kcpu_f16_f32(a[i].d) * b[i].d * (float)isum;
    }
    return sum;
}

float mb_kcpu_qdot_scalar(int wdtype, const void *w, const void *xq, size_t k)
{
    switch (wdtype) {
    case MB_KCPU_Q8_0: return dot_q8_0(w, xq, k / 32);
    case MB_KCPU_Q4_0: return dot_q4_0(w, xq, k / 32);
    case MB_KCPU_Q4_K: return dot_k4(w, xq, k / MB_KCPU_QK, 0);
    case MB_KCPU_Q5_K: return dot_k4(w, xq, k / MB_KCPU_QK, 1);
    case MB_KCPU_Q6_K: return dot_q6_k(w, xq, k / MB_KCPU_QK);
    default: return 0.0f;
    }
}

void mb_kcpu_qdot2_scalar(int wdtype, const void *w0, const void *w1, const void *xq, size_t k,
                          float out[2])
{
    out[0] = mb_kcpu_qdot_scalar(wdtype, w0, xq, k);
    out[1] = mb_kcpu_qdot_scalar(wdtype, w1, xq, k);
}

void mb_kcpu_qdot2_rows_scalar(int wdtype, const void *w0, const void *w1, size_t row_bytes,
                               size_t n, const void *xq, size_t k, float *out0, float *out1)
{
    for (size_t i = 0; i < n; i++) {
        out0[i] = mb_kcpu_qdot_scalar(wdtype, (const char *)w0 + i * row_bytes, xq, k);
        out1[i] = mb_kcpu_qdot_scalar(wdtype, (const char *)w1 + i * row_bytes, xq, k);
    }
}

void mb_kcpu_qdot2_rows_nt_scalar(int wdtype, const void *w0, const void *w1, size_t row_bytes,
                                  size_t n, const void *const *xq, size_t nt, size_t k, float *out0,
                                  float *out1, size_t ld_out)
{
    for (size_t t = 0; t < nt; t++)
        mb_kcpu_qdot2_rows_scalar(wdtype, w0, w1, row_bytes, n, xq[t], k, out0 + t * ld_out,
                                  out1 + t * ld_out);
}

/* ---- dispatch ---------------------------------------------------------- */

static mb_kcpu_qdot_fn qdot_impl = mb_kcpu_qdot_scalar;
static mb_kcpu_qdot2_fn qdot2_impl = mb_kcpu_qdot2_scalar;
static mb_kcpu_qdot2_rows_fn qdot2_rows_impl = mb_kcpu_qdot2_rows_scalar;
static mb_kcpu_qdot2_rows_nt_fn qdot2_rows_nt_impl = mb_kcpu_qdot2_rows_nt_scalar;
static mb_kcpu_dequant_fn dequant_impl = mb_kcpu_dequant_row;
static const char *qdot_name = "scalar";
static pthread_once_t qdot_once = PTHREAD_ONCE_INIT;

#if defined(__x86_64__)
static void dequant_avx2_any(int wdtype, const void *src, float *dst, size_t k)
{
    if (!mb_kcpu_dequant_avx2(wdtype, src, dst, k)) mb_kcpu_dequant_row(wdtype, src, dst, k);
}
#endif

static void qdot_init(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        qdot_impl = mb_kcpu_qdot_avx2;
        qdot2_impl = mb_kcpu_qdot2_avx2;
        qdot2_rows_impl = mb_kcpu_qdot2_rows_avx2;
        qdot2_rows_nt_impl = mb_kcpu_qdot2_rows_nt_avx2;
        dequant_impl = dequant_avx2_any;
        qdot_name = "avx2";
    }
#endif
}

/* 1 when the SIMD paths are in use: detected, and not overridden by
 * mb_kcpu_force_isa("scalar") (which tests and benchmarks use to run the
 * portable code end to end). */
static int qdot_simd(void)
{
    pthread_once(&qdot_once, qdot_init);
    return mb_kcpu_isa_current() != &mb_kcpu_isa_scalar;
}

const char *mb_kcpu_quant_isa_name(void)
{
    return qdot_simd() ? qdot_name : "scalar";
}

mb_kcpu_qdot_fn mb_kcpu_qdot_get(void)
{
    return qdot_simd() ? qdot_impl : mb_kcpu_qdot_scalar;
}

mb_kcpu_qdot2_fn mb_kcpu_qdot2_get(void)
{
    return qdot_simd() ? qdot2_impl : mb_kcpu_qdot2_scalar;
}

mb_kcpu_qdot2_rows_fn mb_kcpu_qdot2_rows_get(void)
{
    return qdot_simd() ? qdot2_rows_impl : mb_kcpu_qdot2_rows_scalar;
}

mb_kcpu_qdot2_rows_nt_fn mb_kcpu_qdot2_rows_nt_get(void)
{
    return qdot_simd() ? qdot2_rows_nt_impl : mb_kcpu_qdot2_rows_nt_scalar;
}

mb_kcpu_dequant_fn mb_kcpu_dequant_get(void)
{
    return qdot_simd() ? dequant_impl : mb_kcpu_dequant_row;
}

float mb_kcpu_qdot(int wdtype, const void *w, const void *xq, size_t k)
{
    return mb_kcpu_qdot_get()(wdtype, w, xq, k);
}

/* ---- quantized GEMM ---------------------------------------------------- */

typedef struct {
    mb_kcpu_qdot_fn dot;
    mb_kcpu_qdot2_rows_nt_fn dot2_rows_nt;
    int wdtype;
    const char *w;
    size_t ldw, m, k, n;
    const char *xq;
    size_t xq_row;
    float *y;
    size_t ldy;
    int add;
    size_t rows_per_task;
} qgemm_job;

/* Rows a multi-token call covers at once (two halves of QGEMM_RB / 2). */
#define QGEMM_RB 64

/* Rows [r0, r1) for every token; weight rows of a task stay in cache while
 * the tokens sweep over them, MB_KCPU_QDOT_NT tokens a weight block (each
 * result the single dot's, bit for bit). */
static void qgemm_task(void *ctx, size_t task, int thread)
{
    (void)thread;
    const qgemm_job *j = ctx;
    const size_t r0 = task * j->rows_per_task;
    const size_t r1 = r0 + j->rows_per_task < j->m ? r0 + j->rows_per_task : j->m;
    float v[MB_KCPU_QDOT_NT][QGEMM_RB];
    for (size_t c0 = r0; c0 < r1; c0 += QGEMM_RB) {
        const size_t nc = r1 - c0 < QGEMM_RB ? r1 - c0 : QGEMM_RB, half = nc / 2;
        const char *w = j->w + c0 * j->ldw;
        for (size_t t0 = 0; t0 < j->n; t0 += MB_KCPU_QDOT_NT) {
            const size_t nt = j->n - t0 < MB_KCPU_QDOT_NT ? j->n - t0 : MB_KCPU_QDOT_NT;
            const void *xq[MB_KCPU_QDOT_NT];
            for (size_t t = 0; t < nt; t++)
                xq[t] = j->xq + (t0 + t) * j->xq_row;
            j->dot2_rows_nt(j->wdtype, w, w + half * j->ldw, j->ldw, half, xq, nt, j->k, v[0],
                            v[0] + half, QGEMM_RB);
            for (size_t t = 0; t < nt; t++) {
                if (nc % 2) v[t][nc - 1] = j->dot(j->wdtype, w + (nc - 1) * j->ldw, xq[t], j->k);
                float *y = j->y + (t0 + t) * j->ldy + c0;
                for (size_t c = 0; c < nc; c++)
                    y[c] = j->add ? y[c] + v[t][c] : v[t][c];
            }
        }
    }
}

typedef struct {
    int wdtype;
    const float *x;
    size_t ldx, k;
    char *xq;
    size_t xq_row;
} qact_job;

static void qact_task(void *ctx, size_t t, int thread)
{
    (void)thread;
    const qact_job *j = ctx;
    mb_kcpu_qact_row(j->wdtype, j->x + t * j->ldx, j->xq + t * j->xq_row, j->k);
}

static __thread void *qgemm_tls_buf;
static __thread size_t qgemm_tls_cap;
static pthread_key_t qgemm_tls_key;
static pthread_once_t qgemm_tls_once = PTHREAD_ONCE_INIT;

static void qgemm_tls_init(void)
{
    (void)pthread_key_create(&qgemm_tls_key, free);
}

static void *qgemm_tls_get(size_t bytes)
{
    if (bytes <= qgemm_tls_cap) return qgemm_tls_buf;
    pthread_once(&qgemm_tls_once, qgemm_tls_init);
    if (bytes > SIZE_MAX - 63) return NULL;
    void *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!p) return NULL;
    free(qgemm_tls_buf);
    qgemm_tls_buf = p;
    qgemm_tls_cap = (bytes + 63) & ~(size_t)63;
    (void)pthread_setspecific(qgemm_tls_key, p);
    return p;
}

int mb_kcpu_qgemm(mb_kcpu_pool *pool, int wdtype, const void *w, size_t ldw_bytes, size_t m,
                  size_t k, const float *x, size_t ldx, size_t n, float *y, size_t ldy,
                  int accumulate)
{
    if (!mb_kcpu_quant_valid(wdtype) || k % mb_kcpu_block_elems(wdtype)) return -1;
    if (m == 0 || n == 0) return 0;
    const size_t xq_row = mb_kcpu_qact_row_bytes(wdtype, k);
    if (xq_row && n > SIZE_MAX / xq_row) return -1;
    char *xq = qgemm_tls_get(n * xq_row);
    if (!xq) return -1;
    const int threads = mb_kcpu_pool_threads(pool);
    qact_job aj = {wdtype, x, ldx, k, xq, xq_row};
    mb_kcpu_pool_run(n >= 4 ? pool : NULL, n, qact_task, &aj);
    qgemm_job j = {mb_kcpu_qdot_get(), mb_kcpu_qdot2_rows_nt_get(), wdtype, w, ldw_bytes, m, k, n,
                   xq, xq_row, y, ldy, accumulate, m};
    if (threads > 1) {
        size_t rb = QGEMM_RB;
        while (rb > 4 && (m + rb - 1) / rb < (size_t)threads * 4)
            rb /= 2;
        j.rows_per_task = rb;
    }
    mb_kcpu_pool_run(threads > 1 ? pool : NULL, (m + j.rows_per_task - 1) / j.rows_per_task,
                     qgemm_task, &j);
    return 0;
}
