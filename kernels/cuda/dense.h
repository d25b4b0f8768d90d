/* The dense (non-expert) part of a transformer layer on a CUDA device,
 * callable from C: what the coordinator runs when it sits on the GPU
 * (`moe-broker run --device cuda:N`). Every function enqueues on the
 * given stream (a cudaStream_t; NULL is the legacy default stream) and
 * never blocks the host: no allocation, no synchronisation, no copy to the
 * host. All pointers are device pointers unless a comment says otherwise.
 *
 * Arithmetic follows the CPU coordinator (broker/norm.c, rope.c,
 * attention.c, router.c, kernels/cpu/gemm.c) so the two agree to f32
 * rounding: activations, the KV cache and accumulation are f32; weights
 * stay in the checkpoint's dtype (f32, f16 or bf16) and are widened to f32
 * as they are read. Results are deterministic: no float atomics, a fixed
 * reduction order for a given shape.
 *
 * Every function returns 0, or a CUDA error code (non-zero, printable with
 * mb_kcuda_error_str) for a launch that failed or arguments it refuses
 * (cudaErrorInvalidValue: a zero or inconsistent size, an unsupported
 * dtype). */
#ifndef MB_KERNELS_CUDA_DENSE_H
#define MB_KERNELS_CUDA_DENSE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/cuda/moe.h" /* MB_KCUDA_F32/F16/BF16, mb_kcuda_error_str */

#ifdef __cplusplus
extern "C" {
#endif

/* x[t][0..d) = row ids[t] of table[vocab][d] (dtype wdtype) widened to f32,
 * for t < n. ids are device int32, each in [0, vocab) (the caller checked
 * them on the host). */
int mb_kcuda_embed(void *stream, int wdtype, const void *table, uint32_t d, const int32_t *ids,
                   uint32_t n, float *x);

/* y[r][0..d) = x[r] * rsqrt(mean(x[r]^2) + eps) * w, for r < rows; row
 * strides ldx, ldy (>= d) in floats; y may equal x. w is f32 [d]. The
 * per-head q/k norm of Qwen3 is this with rows = tokens * heads, d =
 * head_dim, ld = head_dim. */
int mb_kcuda_rmsnorm(void *stream, float *y, size_t ldy, const float *x, size_t ldx, uint32_t rows,
                     uint32_t d, const float *w, float eps);

/* mb_kcuda_rmsnorm writing its result to y and to y2 (row stride ldy2
 * elements) in y2_dtype (MB_KCUDA_F32, F16 or BF16, rounded as
 * mb_kcuda_norm_in's xn2): y2 may be pinned host memory (the device
 * writes it directly, so no copy on the stream is needed). y may equal x. */
int mb_kcuda_rmsnorm_copy(void *stream, float *y, size_t ldy, void *y2, int y2_dtype, size_t ldy2,
                          const float *x, size_t ldx, uint32_t rows, uint32_t d, const float *w,
                          float eps);

/* The residual add folded into the norm that follows it: x[r] += a[r]
 * (stored), then y[r] = RMSNorm(x[r]) * w as mb_kcuda_rmsnorm, for r <
 * rows; a has row stride lda. Bit-identical to mb_kcuda_add then
 * mb_kcuda_rmsnorm. y may equal x; a must overlap neither. */
int mb_kcuda_add_rmsnorm(void *stream, float *y, size_t ldy, float *x, size_t ldx, const float *a, size_t lda,
                         uint32_t rows, uint32_t d, const float *w, float eps);

/* y[t][0..m) = x[t][0..k) @ W^T (+ bias) (+ y when accumulate), for t < n.
 * W is [m][k] row-major in wdtype; x is f32 with row stride ldx (>= k), y
 * f32 with row stride ldy (>= m); bias is f32 [m] or NULL. x and y must
 * not overlap. Few rows (decode) take a GEMV path that streams W once for
 * all rows; many rows a tiled GEMM. Accumulation in f32. */
int mb_kcuda_linear(void *stream, int wdtype, const void *w, uint32_t m, uint32_t k, const float *x,
                    size_t ldx, uint32_t n, float *y, size_t ldy, const float *bias, int accumulate);

/* Whether mb_kcuda_linear takes one token of this shape (x and y of rows
 * k and m, no norm) through the staged GEMV: every weight of a block in
 * its shared memory, streamed while the kernels before it run (preload
 * letter s of MB_CUDA_PRELOAD; its weights need no L2 prefetch then). */
int mb_kcuda_linear_staged(int wdtype, uint32_t m, uint32_t k);

/* Rotary embedding in place: x[t] holds n_heads heads of head_dim values
 * (row stride ldx floats) for the token at position pos0 + t, t < n.
 * cos and sin are the tables of broker/rope.h ([n_pos][head_dim/2], f32,
 * uploaded once); the caller guarantees pos0 + n <= n_pos. interleaved 0
 * pairs dimension i with i + head_dim/2 ("rotate half"), 1 pairs 2i with
 * 2i+1, exactly as mb_rope_apply. */
int mb_kcuda_rope(void *stream, float *x, size_t ldx, uint32_t n, uint32_t n_heads, uint32_t head_dim,
                  uint32_t pos0, const float *cos, const float *sin, int interleaved);

/* One layer's KV cache: k and v as [n_kv_heads][max_ctx][head_dim] f32. */
typedef struct {
    float *k;
    float *v;
    uint32_t n_kv_heads;
    uint32_t head_dim;
    uint32_t max_ctx;
} mb_kcuda_kv;

/* Stores the keys k[t][n_kv_heads*head_dim] (row stride ldk) and values
 * (ldv) of n tokens at positions pos0.. into the cache; pos0 + n <=
 * max_ctx. */
int mb_kcuda_kv_store(void *stream, const mb_kcuda_kv *kv, uint32_t pos0, uint32_t n, const float *k,
                      size_t ldk, const float *v, size_t ldv);

/* Causal grouped-query attention, as mb_attn_compute: for the n query
 * tokens at positions pos0 + t, out[t][h*head_dim..] = softmax(q_t,h K^T *
 * scale) V over cached positions p <= pos0 + t (and p > pos0 + t - window
 * when window > 0), with query head h reading kv head h / (n_heads /
 * n_kv_heads). q has row stride ldq, out ldo (floats). Keys and values of
 * those positions must be stored already. Long steps (prefill) run a
 * tiled flash-attention kernel; short ones (decode) split the cached
 * positions over blocks and merge the partial results (log-sum-exp) in a
 * second kernel, using work. */
typedef struct {
    uint32_t n_heads;
    uint32_t window; /* 0: full causal */
    float scale;     /* head_dim^-0.5 */
    /* NULL, or MB_KCUDA_ATTN_MERGE_COUNTERS(n_heads) device counters, 0
     * before the first call and left 0 by each (calls in flight at once on
     * different streams need their own): the split-K decode then merges a
     * row's chunks in the block that finishes them last instead of in a
     * second kernel (the same log-sum-exp, summed in chunk order). */
    unsigned *merge_done;
    /* 1: the caller's next kernel stages its weights before its wait (one
     * token's mb_kcuda_linear where mb_kcuda_linear_staged says so): the
     * split-K decode's merge then lets it launch before the merge itself
     * waits, so those weights stream in while the attention runs. */
    int next_early;
} mb_kcuda_attn_shape;
#define MB_KCUDA_ATTN_MERGE_COUNTERS(n_heads) (8u * (n_heads))
/* The largest head_dim attention (and the fused head pass) takes. */
#define MB_KCUDA_MAX_HEAD_DIM 256u

/* Floats of work attention needs for n query tokens over up to max_ctx
 * positions (0 when it needs none). Non-decreasing in n: work sized once
 * for a caller's largest step serves every smaller one. */
size_t mb_kcuda_attention_work(const mb_kcuda_kv *kv, const mb_kcuda_attn_shape *s, uint32_t n);

int mb_kcuda_attention(void *stream, const mb_kcuda_kv *kv, const mb_kcuda_attn_shape *s, uint32_t pos0,
                       uint32_t n, const float *q, size_t ldq, float *out, size_t ldo, float *work,
                       size_t work_floats);

/* Decode graphs: rope, kv_store and attention with the position read on
 * the device, from *pos (a device uint32_t), when the kernels run, so one
 * captured CUDA graph replays at every position. The caller guarantees
 * *pos + n <= the tables' and the cache's positions (kv_store drops rows
 * past the cache rather than write there). attention_at takes n <= 8 and
 * splits for the whole cache (empty chunks cost a block each); work as
 * mb_kcuda_attention_work. */
int mb_kcuda_rope_at(void *stream, float *x, size_t ldx, uint32_t n, uint32_t n_heads, uint32_t head_dim,
                     const uint32_t *pos, const float *cos, const float *sin, int interleaved);
int mb_kcuda_kv_store_at(void *stream, const mb_kcuda_kv *kv, const uint32_t *pos, uint32_t n, const float *k,
                         size_t ldk, const float *v, size_t ldv);
int mb_kcuda_attention_at(void *stream, const mb_kcuda_kv *kv, const mb_kcuda_attn_shape *s, const uint32_t *pos,
                          uint32_t n, const float *q, size_t ldq, float *out, size_t ldo, float *work,
                          size_t work_floats);

/* After one projection into qkv[t] = [q heads | k heads | v heads] (row
 * stride ld floats, n_heads query and kv->n_kv_heads key/value heads of
 * kv->head_dim), for the n tokens at positions pos0 + t: each query and
 * key head normalised by RMSNorm with q_norm / k_norm (f32 [head_dim];
 * NULL: no head norm) and eps, then rotated (as mb_kcuda_rope), in place;
 * the rotated keys and the values stored in the cache at their positions.
 * Bit-identical to mb_kcuda_rmsnorm per head, mb_kcuda_rope and
 * mb_kcuda_kv_store in sequence. The _at variant reads the position from
 * *pos on the device (as mb_kcuda_rope_at; rows past the cache are not
 * stored). */
int mb_kcuda_qk_rope_store(void *stream, float *qkv, size_t ld, uint32_t n, uint32_t n_heads, const float *q_norm,
                           const float *k_norm, float eps, uint32_t pos0, const float *cos, const float *sin,
                           int interleaved, const mb_kcuda_kv *kv);
int mb_kcuda_qk_rope_store_at(void *stream, float *qkv, size_t ld, uint32_t n, uint32_t n_heads,
                              const float *q_norm, const float *k_norm, float eps, const uint32_t *pos,
                              const float *cos, const float *sin, int interleaved, const mb_kcuda_kv *kv);

/* mb_kcuda_qk_rope_store then mb_kcuda_attention for one token (decode)
 * in one launch, bit for bit those two calls except that qkv is not
 * written: the attention's blocks run the head pass on their own query
 * heads, and the block holding the token's own position on its key and
 * value heads, which it stores in the cache. The position is pos0, or
 * *pos on the device when pos is not NULL (as the _at variants). Needs
 * head_dim % 4 == 0, head_dim <= 128 and a 16-byte aligned cache
 * (cudaErrorInvalidValue otherwise: the caller then makes the two calls);
 * work as mb_kcuda_attention_work(kv, s, 1). */
int mb_kcuda_qkp_attention(void *stream, const float *qkv, size_t ld, const float *q_norm,
                           const float *k_norm, float eps, const float *cos, const float *sin,
                           int interleaved, const mb_kcuda_kv *kv, const mb_kcuda_attn_shape *s,
                           uint32_t pos0, const uint32_t *pos, float *out, size_t ldo, float *work,
                           size_t work_floats);

/* Routing, as mb_router_select, fused in one kernel: for each of n rows of
 * logits[n][n_experts] (f32), softmax in f32, the top_k largest
 * probabilities in descending order (ties: the lower index first) into
 * ids[t][0..top_k) (int32) and their weights into gate[t][0..top_k),
 * divided by their sum when renorm. logits is left unchanged. top_k <=
 * 32, n_experts <= 1024. ids and gate may be pinned host memory. */
int mb_kcuda_route_topk(void *stream, const float *logits, uint32_t n, uint32_t n_experts, uint32_t top_k,
                        int renorm, int32_t *ids, float *gate);

/* The router and the routing in one launch: logits[n][n_experts] = x @
 * W^T (W [n_experts][k] in wdtype, exactly as mb_kcuda_linear computes
 * them), then ids and gate as mb_kcuda_route_topk. done is a device
 * unsigned, 0 before the first call and left 0 by each (the last block
 * to finish routes; calls in flight at once on different streams need
 * their own). Results bit-identical to mb_kcuda_linear then
 * mb_kcuda_route_topk; shapes the fused kernel does not take run as those
 * two. ids and gate may be pinned host memory. */
int mb_kcuda_router_topk(void *stream, int wdtype, const void *w, uint32_t n_experts, uint32_t k, const float *x,
                         size_t ldx, uint32_t n, float *logits, uint32_t top_k, int renorm, int32_t *ids, float *gate,
                         unsigned *done);

/* An RMSNorm folded into the one-token projection that reads its output
 * (decode): the input row is h = x + a (a may be NULL) normalised with
 * weights w (f32 [k]) and eps, as mb_kcuda_(add_)rmsnorm computes it; x
 * is not written. When xn is set the normalised row is written there too,
 * bit for bit mb_kcuda_rmsnorm's output, and also to xn2 when set (pinned
 * host memory may be it) in xn2_dtype (MB_KCUDA_F32, the default, F16 or
 * BF16: each element rounded to nearest even, as the CPU's
 * mb_dtype_encode_f32 rounds it; the experts' wire payload). */
typedef struct {
    const float *x, *a, *w;
    float eps;
    float *xn;
    void *xn2;
    int xn2_dtype;
} mb_kcuda_norm_in;

/* y[m] = W h_norm (+ bias) (+ y) for one token: mb_kcuda_linear with the
 * norm in the same launch. The sums are scaled by the norm's factor after
 * the dot product, not before, so y differs from mb_kcuda_rmsnorm then
 * mb_kcuda_linear by f32 rounding (no more than the summation order does). */
int mb_kcuda_linear_norm(void *stream, int wdtype, const void *w, uint32_t m, uint32_t k,
                         const mb_kcuda_norm_in *in, float *y, const float *bias, int accumulate);

/* mb_kcuda_router_topk for one token whose input is normalised in the same
 * launch (as mb_kcuda_linear_norm; in->xn gets the normalised row for the
 * experts). ids and gate are those mb_kcuda_route_topk gives on the logits
 * written. */
int mb_kcuda_router_topk_norm(void *stream, int wdtype, const void *w, uint32_t n_experts,
                              uint32_t k, const mb_kcuda_norm_in *in, float *logits, uint32_t top_k,
                              int renorm, int32_t *ids, float *gate, unsigned *done);

/* What mb_kcuda_local_pairs writes (its arguments of the same names), and
 * stamp (device, or NULL): the device clock once the routing is written. */
typedef struct {
    const int32_t *slot_of;
    uint16_t *counts;
    void *pairs;
    uint32_t *routed;
    unsigned long long *stamp;
} mb_kcuda_route_local;

/* mb_kcuda_router_topk_norm whose last block also writes, from the ids and
 * gate it routed, what mb_kcuda_local_pairs would (loc, or NULL: nothing):
 * the experts on this device need no launch of their own for it. */
int mb_kcuda_router_topk_norm_local(void *stream, int wdtype, const void *w, uint32_t n_experts,
                                    uint32_t k, const mb_kcuda_norm_in *in, float *logits,
                                    uint32_t top_k, int renorm, int32_t *ids, float *gate,
                                    unsigned *done, const mb_kcuda_route_local *loc);

/* mb_kcuda_linear_norm into qkv (W [(n_heads + 2 kv->n_kv_heads) *
 * kv->head_dim][k], one token; bias may be NULL) and mb_kcuda_qk_rope_store
 * on the row it writes, in one launch: bit for bit those two calls (the
 * head pass of a head runs once all its rows are in). cnt is device
 * unsigned [n_heads + 2 kv->n_kv_heads], 0 before the first call and left 0
 * by each (calls in flight at once on different streams need their own).
 * head_dim <= 256. The _at variant reads the position from *pos on the
 * device. */
int mb_kcuda_qkv_rope_store(void *stream, int wdtype, const void *w, uint32_t k,
                            const mb_kcuda_norm_in *in, float *qkv, const float *bias,
                            uint32_t n_heads, const float *q_norm, const float *k_norm, float eps,
                            uint32_t pos0, const float *cos, const float *sin, int interleaved,
                            const mb_kcuda_kv *kv, unsigned *cnt);
int mb_kcuda_qkv_rope_store_at(void *stream, int wdtype, const void *w, uint32_t k,
                               const mb_kcuda_norm_in *in, float *qkv, const float *bias,
                               uint32_t n_heads, const float *q_norm, const float *k_norm,
                               float eps, const uint32_t *pos, const float *cos, const float *sin,
                               int interleaved, const mb_kcuda_kv *kv, unsigned *cnt);

/* The routing table as an expert request (kernels/cuda/moe.h) for experts
 * held on this device: counts[t] = top_k and pairs[t * top_k + j] = {slot
 * of expert ids[t][j] (slot_of[n_experts], int32), gate[t][j]} for t < n,
 * as the wire's pairs (u32 slot, f32 gate). When routed (device uint32
 * [n_experts]) is not NULL, routed[e] += the pairs that chose expert e. */
int mb_kcuda_local_pairs(void *stream, const int32_t *ids, const float *gate, uint32_t n, uint32_t top_k,
                         const int32_t *slot_of, uint16_t *counts, void *pairs, uint32_t *routed);

/* The shared expert's activation, in place: g[t][i] = s_t * silu(g[t][i])
 * * u[t][i] for t < n, i < ff (row stride ld for g and u), where s_t =
 * sigmoid(sg[t]) when sg (f32 [n]) is not NULL, else 1. */
int mb_kcuda_silu_mul(void *stream, float *g, const float *u, size_t ld, uint32_t n, uint32_t ff,
                      const float *sg);

/* x[i] += y[i] for i < count. */
int mb_kcuda_add(void *stream, float *x, const float *y, size_t count);

/* *slot = the device's global nanosecond clock once everything enqueued
 * before on the stream has finished: one thread, so it costs a launch and
 * little else. Unlike an event it can be captured in a CUDA graph and
 * still be read as a time (two slots' difference, after the stream
 * synchronised): how the coordinator times its local experts and its
 * profile inside whole-step graphs. */
int mb_kcuda_stamp(void *stream, unsigned long long *slot);

/* Asks the L2 cache for bytes at p (device memory; p 16-byte aligned) and
 * returns without waiting for them: a few threads issue bulk prefetches
 * (sm_90; elsewhere, and on the emulator, it does nothing). For a second
 * stream while the main one runs latency-bound kernels, so that weights
 * read next come from L2. */
int mb_kcuda_l2_prefetch(void *stream, const void *p, size_t bytes);

/* dst[i] = src[i] for i < count (32-bit words; dst may be pinned host
 * memory), then src[i] = 0 for zero_from <= i < count: counters and clock
 * stamps handed to the host and reset in one launch, where a copy and a
 * memset would be two graph nodes that programmatic launch cannot
 * overlap. */
int mb_kcuda_drain(void *stream, uint32_t *src, uint32_t *dst, size_t count, size_t zero_from);

#ifdef __cplusplus
}
#endif

#endif
