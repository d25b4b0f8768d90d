/* GEMM driver: picks the instruction-set path at run time, packs the
 * activations, blocks the work over k and over rows of W, and splits row
 * blocks over the thread pool. The arithmetic lives in gemm_<isa>.c. */
#include "kernels/cpu/gemm.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/gemm_isa.h"
#include "kernels/cpu/quant.h"

static const mb_kcpu_isa_impl *mb_kcpu_isa_forced;

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

/* F16C from cpuid (leaf 1, ECX bit 29): clang 14's __builtin_cpu_supports
 * does not know "f16c". */
static int mb_kcpu_has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}
#endif

static const mb_kcpu_isa_impl *mb_kcpu_isa_detect(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    const int f16c = mb_kcpu_has_f16c();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma") && f16c)
        return &mb_kcpu_isa_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c)
        return &mb_kcpu_isa_avx2;
#endif
    return &mb_kcpu_isa_scalar;
}

static const mb_kcpu_isa_impl *mb_kcpu_isa_detected;
static pthread_once_t mb_kcpu_isa_once = PTHREAD_ONCE_INIT;

static void mb_kcpu_isa_init(void)
{
    mb_kcpu_isa_detected = mb_kcpu_isa_detect();
}

const mb_kcpu_isa_impl *mb_kcpu_isa_current(void)
{
    pthread_once(&mb_kcpu_isa_once, mb_kcpu_isa_init);
    return mb_kcpu_isa_forced ? mb_kcpu_isa_forced : mb_kcpu_isa_detected;
}

const char *mb_kcpu_isa_name(void)
{
    return mb_kcpu_isa_current()->name;
}

int mb_kcpu_force_isa(const char *name)
{
    if (!name) return -1;
    const mb_kcpu_isa_impl *det = (mb_kcpu_isa_current(), mb_kcpu_isa_detected);
    if (strcmp(name, "auto") == 0) {
        mb_kcpu_isa_forced = NULL;
        return 0;
    }
    /* A path may be forced if the detected one is at least as capable. */
    const mb_kcpu_isa_impl *order[] = {&mb_kcpu_isa_scalar, &mb_kcpu_isa_avx2, &mb_kcpu_isa_avx512};
    int det_rank = 0;
    for (int i = 0; i < 3; i++)
        if (order[i] == det) det_rank = i;
    for (int i = 0; i < 3; i++) {
        if (strcmp(name, order[i]->name) != 0) continue;
        if (i > det_rank) return -1;
        mb_kcpu_isa_forced = order[i];
        return 0;
    }
    return -1;
}

void mb_kcpu_gemm_block(const mb_kcpu_isa_impl *isa, int wdtype, const void *w, size_t ldw,
                        size_t r0, size_t r1, const float *const *xp, size_t n_tok, size_t k,
                        float *acc, size_t ldacc, int add)
{
    if (r1 <= r0 || n_tok == 0) return;
    const size_t esz = mb_kcpu_wsize(wdtype);
    const int t_main = n_tok < (size_t)isa->t_max ? (int)n_tok : isa->t_max;
    const int rows_main = isa->rows_for_t[t_main];
    float out[MB_KCPU_TILE_R_MAX * MB_KCPU_TILE_T_MAX];

    if (k == 0) {
        if (!add)
            for (size_t t = 0; t < n_tok; t++)
                memset(acc + t * ldacc, 0, (r1 - r0) * sizeof(float));
        return;
    }
    size_t kc = MB_KCPU_KC_BYTES / sizeof(float) / n_tok / 32 * 32;
    if (kc < MB_KCPU_KC_MIN) kc = MB_KCPU_KC_MIN;
    for (size_t k0 = 0; k0 < k; k0 += kc) {
        const size_t k1 = k - k0 > kc ? k0 + kc : k;
        const int store = k0 == 0 && !add;
        for (size_t r = r0; r < r1;) {
            /* A short last group is computed as the last rows_main rows of
             * the block (overlapping rows already done) and only the new
             * rows are written; blocks shorter than a group go row by row. */
            int rows = rows_main;
            size_t rs = r;
            if (r1 - r < (size_t)rows) {
                if (r1 - r0 >= (size_t)rows)
                    rs = r1 - (size_t)rows;
                else
                    rows = 1;
            }
            const void *wr = (const char *)w + rs * ldw * esz;
            for (size_t t0 = 0; t0 < n_tok; t0 += (size_t)t_main) {
                const int nt = n_tok - t0 < (size_t)t_main ? (int)(n_tok - t0) : t_main;
                isa->tile(wdtype, wr, ldw, rows, xp + t0, nt, k0, k1, out);
                for (int t = 0; t < nt; t++) {
                    float *dst = acc + (t0 + (size_t)t) * ldacc - r0;
                    const float *src = out + (size_t)t * (size_t)rows - rs;
                    size_t re = rs + (size_t)rows;
                    if (store)
                        for (size_t q = r; q < re; q++)
                            dst[q] = src[q];
                    else
                        for (size_t q = r; q < re; q++)
                            dst[q] += src[q];
                }
            }
            r = rs + (size_t)rows;
        }
    }
}

/* ---- public GEMM ---- */

static __thread float *mb_kcpu_tls_buf;
static __thread size_t mb_kcpu_tls_cap;
static pthread_key_t mb_kcpu_tls_key;
static pthread_once_t mb_kcpu_tls_once = PTHREAD_ONCE_INIT;

static void mb_kcpu_tls_free(void *p)
{
    free(p);
}

static void mb_kcpu_tls_init(void)
{
    (void)pthread_key_create(&mb_kcpu_tls_key, mb_kcpu_tls_free);
}

/* A 64-byte aligned per-thread buffer of at least n floats, or NULL. */
static float *mb_kcpu_tls_get(size_t n)
{
    if (n <= mb_kcpu_tls_cap) return mb_kcpu_tls_buf;
    pthread_once(&mb_kcpu_tls_once, mb_kcpu_tls_init);
    if (n > (SIZE_MAX - 63) / sizeof(float)) return NULL;
    size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
    float *p = aligned_alloc(64, bytes);
    if (!p) return NULL;
    free(mb_kcpu_tls_buf);
    mb_kcpu_tls_buf = p;
    mb_kcpu_tls_cap = bytes / sizeof(float);
    (void)pthread_setspecific(mb_kcpu_tls_key, p);
    return p;
}

typedef struct {
    const mb_kcpu_isa_impl *isa;
    int wdtype;
    const void *w;
    size_t ldw, m, k, n;
    const float *const *xp;
    float *y;
    size_t ldy;
    int add;
    size_t rows_per_task, tok_per_task, n_row_tasks;
} mb_kcpu_gemm_job;

static void mb_kcpu_gemm_task(void *ctx, size_t task, int thread)
{
    (void)thread;
    const mb_kcpu_gemm_job *j = ctx;
    size_t rt = task % j->n_row_tasks, tt = task / j->n_row_tasks;
    size_t r0 = rt * j->rows_per_task, r1 = r0 + j->rows_per_task;
    size_t t0 = tt * j->tok_per_task, t1 = t0 + j->tok_per_task;
    if (r1 > j->m) r1 = j->m;
    if (t1 > j->n) t1 = j->n;
    mb_kcpu_gemm_block(j->isa, j->wdtype, j->w, j->ldw, r0, r1, j->xp + t0, t1 - t0, j->k,
                       j->y + t0 * j->ldy + r0, j->ldy, j->add);
}

#define MB_KCPU_PTRS_STACK 64

/* Quantized weights without memory for quantized activations: dequantize
 * one block at a time (no allocation) and accumulate in f32. Serial. */
static void mb_kcpu_gemm_dequant(int wdtype, const void *w, size_t ldw_bytes, size_t m, size_t k,
                                 const float *x, size_t ldx, size_t n, float *y, size_t ldy,
                                 int accumulate)
{
    const size_t be = mb_kcpu_block_elems(wdtype), bb = mb_kcpu_block_bytes(wdtype);
    float blk[MB_KCPU_QK];
    for (size_t r = 0; r < m; r++) {
        const char *row = (const char *)w + r * ldw_bytes;
        for (size_t t = 0; t < n; t++) {
            float sum = 0.0f;
            for (size_t b = 0; b < k / be; b++) {
                mb_kcpu_dequant_row(wdtype, row + b * bb, blk, be);
                for (size_t i = 0; i < be; i++)
                    sum += blk[i] * x[t * ldx + b * be + i];
            }
            y[t * ldy + r] = accumulate ? y[t * ldy + r] + sum : sum;
        }
    }
}

static void mb_kcpu_gemm_run(mb_kcpu_pool *pool, int wdtype, const void *w, size_t ldw, size_t m,
                             size_t k, const float *x, size_t ldx, size_t n, float *y, size_t ldy,
                             int accumulate)
{
    if (m == 0 || n == 0) return;
    if (mb_kcpu_quant_valid(wdtype)) {
        const size_t ldw_bytes = mb_kcpu_row_bytes(wdtype, ldw);
        if (mb_kcpu_qgemm(pool, wdtype, w, ldw_bytes, m, k, x, ldx, n, y, ldy, accumulate) != 0)
            mb_kcpu_gemm_dequant(wdtype, w, ldw_bytes, m, k, x, ldx, n, y, ldy, accumulate);
        return;
    }
    const mb_kcpu_isa_impl *isa = mb_kcpu_isa_current();
    size_t kp = mb_kcpu_packed_len(isa, k);
    /* Tiles read whole chunks, so rows must be padded (or already a
     * multiple of the chunk), and bf16 pairs need the deinterleaved order. */
    int needs_pack = kp != k || (wdtype == 2 && isa->bf16_deinterleave);
    const float *xpk = x;
    size_t ldp = ldx;
    if (needs_pack) {
        float *buf = (n <= SIZE_MAX / (kp ? kp : 1)) ? mb_kcpu_tls_get(n * kp) : NULL;
        if (!buf) {
            isa = &mb_kcpu_isa_scalar;
        } else {
            for (size_t t = 0; t < n; t++)
                isa->pack(wdtype, x + t * ldx, k, buf + t * kp);
            xpk = buf;
            ldp = kp;
        }
    }
    const float *stack_ptrs[MB_KCPU_PTRS_STACK];
    const float **ptrs = stack_ptrs;
    if (n > MB_KCPU_PTRS_STACK) {
        ptrs = malloc(n * sizeof *ptrs);
        if (!ptrs) {
            /* Out of memory: run in slices that fit the stack array. */
            for (size_t t0 = 0; t0 < n; t0 += MB_KCPU_PTRS_STACK) {
                size_t nt = n - t0 < MB_KCPU_PTRS_STACK ? n - t0 : MB_KCPU_PTRS_STACK;
                for (size_t t = 0; t < nt; t++)
                    stack_ptrs[t] = xpk + (t0 + t) * ldp;
                mb_kcpu_gemm_block(isa, wdtype, w, ldw, 0, m, stack_ptrs, nt, k, y + t0 * ldy, ldy,
                                   accumulate);
            }
            return;
        }
    }
    for (size_t t = 0; t < n; t++)
        ptrs[t] = xpk + t * ldp;

    mb_kcpu_gemm_job j = {isa, wdtype, w, ldw, m, k, n, ptrs, y, ldy, accumulate, m, n, 1};
    int threads = mb_kcpu_pool_threads(pool);
    if (threads > 1) {
        /* Row blocks of 48 (a multiple of every tile height) give each
         * thread several tasks; large n is also split by 120-token blocks
         * so activation blocks stay in L2. */
        size_t rb = 48;
        size_t n_rt = (m + rb - 1) / rb;
        while (n_rt < (size_t)threads * 4 && rb > 8) {
            rb /= 2;
            n_rt = (m + rb - 1) / rb;
        }
        j.rows_per_task = rb;
        j.n_row_tasks = n_rt;
        j.tok_per_task = n > 240 ? 120 : n;
    }
    size_t n_tt = (n + j.tok_per_task - 1) / j.tok_per_task;
    mb_kcpu_pool_run(threads > 1 ? pool : NULL, j.n_row_tasks * n_tt, mb_kcpu_gemm_task, &j);
    if (ptrs != stack_ptrs) free(ptrs);
}

void mb_kcpu_gemm_ex(mb_kcpu_pool *pool, int wdtype, const void *w, size_t ldw, size_t m, size_t k,
                     const float *x, size_t ldx, size_t n, float *y, size_t ldy, int accumulate)
{
    mb_kcpu_gemm_run(pool, wdtype, w, ldw, m, k, x, ldx, n, y, ldy, accumulate);
}

void mb_kcpu_gemm(mb_kcpu_pool *pool, int wdtype, const void *w, size_t m, size_t k, const float *x,
                  size_t ldx, size_t n, float *y, size_t ldy, int accumulate)
{
    mb_kcpu_gemm_run(pool, wdtype, w, k, m, k, x, ldx, n, y, ldy, accumulate);
}

void mb_kcpu_gemm_serial(int wdtype, const void *w, size_t m, size_t k, const float *x, size_t ldx,
                         size_t n, float *y, size_t ldy, int accumulate)
{
    mb_kcpu_gemm_run(NULL, wdtype, w, k, m, k, x, ldx, n, y, ldy, accumulate);
}
