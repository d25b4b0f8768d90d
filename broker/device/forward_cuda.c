/* The dense layers on a CUDA device, run: the layer loop enqueued on one
 * stream (decode steps replaying CUDA graphs), and per layer one wait for
 * the copy that hands the routed tokens to the dispatcher (seed 000: no
 * other host sync in a layer). The shared expert's gate and up projections
 * are enqueued before that wait, so they run while the workers compute.
 * Creation is forward_cuda_create.c's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef MB_HAVE_CUDA

#include "broker/device/forward_cuda_internal.h"

/* ---- the layer loop -------------------------------------------------------- */

/* Kernel calls return a CUDA error code; the first one ends the chunk. */
#define K(expr)                                                                                                    \
    do {                                                                                                           \
        int e_ = (expr);                                                                                           \
        if (e_) return fail(fc, e_, #expr);                                                                        \
    } while (0)

static mb_status fail(mb_fwd_cuda *fc, int e, const char *what)
{
    mb_fwdc_set_err(fc, "cuda:%d: %s: %s", fc->device, what, mb_kcuda_error_str(e));
    return MB_STATUS_DEVICE;
}

static int linear(mb_fwd_cuda *fc, const dev_mat *W, const float *x, size_t ldx, uint32_t n, float *y,
                  size_t ldy, const float *bias, int accumulate)
{
    return mb_kcuda_linear(fc->stream, W->dtype, W->w, W->rows, W->cols, x, ldx, n, y, ldy, bias, accumulate);
}

/* Whether a step of n tokens runs from graphs (decode steps). */
static int use_graph(const mb_fwd_cuda *fc, uint32_t n)
{
    return fc->graphs && n == 1;
}

/* Whether the norms run inside the GEMVs that read them (fuse_norm): one
 * token, and for the attention block one QKV matrix. */
static int norm_in_gemv(const mb_fwd_cuda *fc, uint32_t n)
{
    return fc->fuse_norm && n == 1;
}

/* Whether the router's last block writes the local experts' pairs and
 * start mark (route_pairs): a local step whose router has the norm folded
 * in. A function of the step's shape, so the graphs replayed agree. */
static int route_paired(const mb_fwd_cuda *fc, uint32_t n)
{
    return fc->local_step && fc->route_pairs && norm_in_gemv(fc, n);
}

/* o_proj accumulating the attention's output into x, with the experts'
 * row as its bias where the norm ran in the QKV GEMV (nig). */
static mb_status o_proj(mb_fwd_cuda *fc, uint32_t l, uint32_t n, int nig)
{
    K(linear(fc, &fc->layers[l].wo, fc->att, fc->q_dim, n, fc->x, fc->cfg.d_model,
             nig && l ? fc->moe : NULL, 1));
    mb_fwdc_prof_mark(fc, nig && l ? "o_proj + experts + residual" : "o_proj + residual");
    return MB_STATUS_OK;
}

/* Attention over the cache (the position from p on the device when set),
 * then o_proj. */
static mb_status attention_rest(mb_fwd_cuda *fc, uint32_t l, uint32_t n, uint32_t pos,
                                const uint32_t *p, const mb_kcuda_attn_shape *s, int nig)
{
    const dev_layer *D = &fc->layers[l];
    const size_t ld = fc->qkv_dim;
    if (p)
        K(mb_kcuda_attention_at(fc->stream, &D->kv, s, p, n, fc->qkv, ld, fc->att, fc->q_dim,
                                fc->work, fc->work_floats));
    else
        K(mb_kcuda_attention(fc->stream, &D->kv, s, pos, n, fc->qkv, ld, fc->att, fc->q_dim,
                             fc->work, fc->work_floats));
    mb_fwdc_prof_mark(fc, "attention (+ merge)");
    return o_proj(fc, l, n, nig);
}

static size_t dev_mat_bytes(const dev_mat *m)
{
    return (size_t)m->rows * m->cols * (m->dtype == MB_KCUDA_F32 ? 4u : 2u);
}

/* Weights asked into L2 from the side stream once the main stream has
 * reached this point (after: an event recorded there already, or NULL: one
 * recorded now), for kernels that read them soon while the DRAM idles.
 * join: the side stream is joined back at the end of the segment
 * (side_join; a graph's capture must end joined); else it is never waited
 * for (outside any graph). Matrices without weights are skipped. */
static mb_status side_prefetch(mb_fwd_cuda *fc, cudaEvent_t after, const dev_mat *a,
                               const dev_mat *b, int join)
{
    cudaError_t e = after ? cudaSuccess : cudaEventRecord(fc->fork, fc->stream);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(fc->side, after ? after : fc->fork, 0);
    const dev_mat *m[2] = {a, b};
    for (int i = 0; i < 2 && e == cudaSuccess; i++)
        if (m[i] && m[i]->w)
            e = (cudaError_t)mb_kcuda_l2_prefetch(fc->side, m[i]->w, dev_mat_bytes(m[i]));
    if (e == cudaSuccess && join) {
        e = cudaEventRecord(fc->join, fc->side);
        fc->side_pending = e == cudaSuccess;
    }
    return e == cudaSuccess ? MB_STATUS_OK : fail(fc, e, "prefetching weights into L2");
}

/* The fused attention block: the previous layer's experts added to x in
 * its norm, one QKV projection, head norm + RoPE + KV store in one kernel,
 * attention, o_proj accumulating into x. With the norm in the QKV GEMV,
 * x + experts is only read there, and o_proj adds the experts to x as it
 * accumulates (one token: the experts' row is o_proj's bias). */
static mb_status attention_block_fused(mb_fwd_cuda *fc, uint32_t l, uint32_t n, uint32_t pos)
{
    const mb_model_config *c = &fc->cfg;
    const dev_layer *D = &fc->layers[l];
    float *xn = fc->xfer, *qkv = fc->qkv;
    const size_t d = c->d_model, ld = fc->qkv_dim;
    const int nig = norm_in_gemv(fc, n) && D->wqkv.w;
    const int il = c->rope_interleaved != 0;
    const dev_mat *wo = &D->wo;
    const int wo_staged = n == 1 && wo->w && mb_kcuda_linear_staged(wo->dtype, wo->rows, wo->cols);
    const mb_kcuda_attn_shape s = {.n_heads = c->n_heads,
                                   .window = fc->window,
                                   .scale = (float)(1.0 / sqrt((double)c->head_dim)),
                                   .merge_done = fc->fuse_merge ? fc->merge_done : NULL,
                                   .next_early = wo_staged};
    const uint32_t *p =
        use_graph(fc, n) ? fc->pos_dev : NULL; /* a graph reads the position on the device */
    if (nig) {
        const mb_kcuda_norm_in in = {
            .x = fc->x, .a = l ? fc->moe : NULL, .w = D->attn_norm, .eps = c->rms_eps};
        const dev_mat *W = &D->wqkv;
        if (fc->fuse_qkv) {
            if (p)
                K(mb_kcuda_qkv_rope_store_at(fc->stream, W->dtype, W->w, W->cols, &in, qkv, D->bqkv,
                                             c->n_heads, D->q_norm, D->k_norm, c->rms_eps, p,
                                             fc->cos, fc->sin, il, &D->kv, fc->qkv_done));
            else
                K(mb_kcuda_qkv_rope_store(fc->stream, W->dtype, W->w, W->cols, &in, qkv, D->bqkv,
                                          c->n_heads, D->q_norm, D->k_norm, c->rms_eps, pos,
                                          fc->cos, fc->sin, il, &D->kv, fc->qkv_done));
            mb_fwdc_prof_mark(fc,
                              "(+ experts) attn rmsnorm + qkv_proj + head norms + rope + kv store");
            return attention_rest(fc, l, n, pos, p, &s, nig);
        }
        K(mb_kcuda_linear_norm(fc->stream, W->dtype, W->w, W->rows, W->cols, &in, qkv, D->bqkv, 0));
        mb_fwdc_prof_mark(fc, "(+ experts) attn rmsnorm + qkv_proj");
        /* o_proj's and the router's weights stream into L2 while the head
         * pass and attention, latency-bound, run; a staged o_proj streams
         * its own into shared memory then. */
        if (fc->l2_prefetch && n == 1)
            MB_TRY(side_prefetch(fc, NULL, wo_staged ? NULL : wo, &D->router, 1));
    } else {
        if (l == 0)
            K(mb_kcuda_rmsnorm(fc->stream, xn, d, fc->x, d, n, c->d_model, D->attn_norm,
                               c->rms_eps));
        else
            K(mb_kcuda_add_rmsnorm(fc->stream, xn, d, fc->x, d, fc->moe, d, n, c->d_model,
                                   D->attn_norm, c->rms_eps));
        mb_fwdc_prof_mark(fc, "(+ experts) attn rmsnorm");
        if (D->wqkv.w) {
            K(linear(fc, &D->wqkv, xn, d, n, qkv, ld, D->bqkv, 0));
        } else {
            K(linear(fc, &D->wq, xn, d, n, qkv, ld, D->bq, 0));
            K(linear(fc, &D->wk, xn, d, n, qkv + fc->q_dim, ld, D->bk, 0));
            K(linear(fc, &D->wv, xn, d, n, qkv + fc->q_dim + fc->kv_dim, ld, D->bv, 0));
        }
        mb_fwdc_prof_mark(fc, "qkv_proj");
    }
    if (n == 1 && fc->fuse_attn) { /* the head pass inside the attention's blocks */
        K(mb_kcuda_qkp_attention(fc->stream, qkv, ld, D->q_norm, D->k_norm, c->rms_eps, fc->cos,
                                 fc->sin, il, &D->kv, &s, pos, p, fc->att, fc->q_dim, fc->work,
                                 fc->work_floats));
        mb_fwdc_prof_mark(fc, "head norms + rope + kv store + attention (+ merge)");
        return o_proj(fc, l, n, nig);
    }
    if (p)
        K(mb_kcuda_qk_rope_store_at(fc->stream, qkv, ld, n, c->n_heads, D->q_norm, D->k_norm, c->rms_eps, p, fc->cos,
                                    fc->sin, il, &D->kv));
    else
        K(mb_kcuda_qk_rope_store(fc->stream, qkv, ld, n, c->n_heads, D->q_norm, D->k_norm, c->rms_eps, pos, fc->cos,
                                 fc->sin, il, &D->kv));
    mb_fwdc_prof_mark(fc, "head norms + rope + kv store");
    return attention_rest(fc, l, n, pos, p, &s, nig);
}

/* x += o_proj(attention(rope(q), rope(k), v)) for n tokens at pos. */
static mb_status attention_block(mb_fwd_cuda *fc, uint32_t l, uint32_t n, uint32_t pos)
{
    if (fc->fuse) return attention_block_fused(fc, l, n, pos);
    const mb_model_config *c = &fc->cfg;
    const dev_layer *D = &fc->layers[l];
    float *xn = fc->xfer;
    const size_t d = c->d_model;
    K(mb_kcuda_rmsnorm(fc->stream, xn, d, fc->x, d, n, c->d_model, D->attn_norm, c->rms_eps));
    mb_fwdc_prof_mark(fc, "attn rmsnorm");
    K(linear(fc, &D->wq, xn, d, n, fc->q, fc->q_dim, D->bq, 0));
    mb_fwdc_prof_mark(fc, "q_proj");
    K(linear(fc, &D->wk, xn, d, n, fc->k, fc->kv_dim, D->bk, 0));
    mb_fwdc_prof_mark(fc, "k_proj");
    K(linear(fc, &D->wv, xn, d, n, fc->v, fc->kv_dim, D->bv, 0));
    mb_fwdc_prof_mark(fc, "v_proj");
    if (c->qk_norm) { /* Qwen3: RMSNorm over each head, before RoPE */
        K(mb_kcuda_rmsnorm(fc->stream, fc->q, c->head_dim, fc->q, c->head_dim, n * c->n_heads, c->head_dim,
                           D->q_norm, c->rms_eps));
        K(mb_kcuda_rmsnorm(fc->stream, fc->k, c->head_dim, fc->k, c->head_dim, n * c->n_kv_heads, c->head_dim,
                           D->k_norm, c->rms_eps));
        mb_fwdc_prof_mark(fc, "q/k head norms");
    }
    const int il = c->rope_interleaved != 0;
    const mb_kcuda_attn_shape s = {.n_heads = c->n_heads, .window = fc->window,
                                   .scale = (float)(1.0 / sqrt((double)c->head_dim))};
    if (use_graph(fc, n)) { /* the position comes from pos_dev */
        const uint32_t *p = fc->pos_dev;
        K(mb_kcuda_rope_at(fc->stream, fc->q, fc->q_dim, n, c->n_heads, c->head_dim, p, fc->cos, fc->sin, il));
        K(mb_kcuda_rope_at(fc->stream, fc->k, fc->kv_dim, n, c->n_kv_heads, c->head_dim, p, fc->cos, fc->sin, il));
        K(mb_kcuda_kv_store_at(fc->stream, &D->kv, p, n, fc->k, fc->kv_dim, fc->v, fc->kv_dim));
        K(mb_kcuda_attention_at(fc->stream, &D->kv, &s, p, n, fc->q, fc->q_dim, fc->att, fc->q_dim, fc->work,
                                fc->work_floats));
    } else {
        K(mb_kcuda_rope(fc->stream, fc->q, fc->q_dim, n, c->n_heads, c->head_dim, pos, fc->cos, fc->sin, il));
        K(mb_kcuda_rope(fc->stream, fc->k, fc->kv_dim, n, c->n_kv_heads, c->head_dim, pos, fc->cos, fc->sin, il));
        mb_fwdc_prof_mark(fc, "rope q, k");
        K(mb_kcuda_kv_store(fc->stream, &D->kv, pos, n, fc->k, fc->kv_dim, fc->v, fc->kv_dim));
        mb_fwdc_prof_mark(fc, "kv store");
        K(mb_kcuda_attention(fc->stream, &D->kv, &s, pos, n, fc->q, fc->q_dim, fc->att, fc->q_dim, fc->work,
                             fc->work_floats));
        mb_fwdc_prof_mark(fc, "attention (+ merge)");
    }
    K(linear(fc, &D->wo, fc->att, fc->q_dim, n, fc->x, d, NULL, 1));
    mb_fwdc_prof_mark(fc, "o_proj + residual");
    return MB_STATUS_OK;
}

/* Segment A's tail: norm, router, top-k, and one copy of [xn | ids |
 * gate] to the host. */
static mb_status route_out(mb_fwd_cuda *fc, uint32_t l, uint32_t n)
{
    const mb_model_config *c = &fc->cfg;
    const dev_layer *D = &fc->layers[l];
    const size_t d = c->d_model, k = c->top_k;
    float *xn = fc->xfer;
    if (fc->fuse || fc->local_step) {
        /* ids and gate after xn: on the device for the local experts (in
         * xfer), else written straight into pinned host memory by the norm
         * and the top-k kernel for the dispatcher, with no copy on the
         * stream. */
        float *dst = fc->local_step ? xn : fc->h_xfer;
        const dev_mat *R = &D->router;
        if (norm_in_gemv(fc, n)) {
            const mb_kcuda_norm_in in = {.x = fc->x,
                                         .w = D->ffn_norm,
                                         .eps = c->rms_eps,
                                         .xn = xn,
                                         .xn2 = fc->local_step ? NULL : dst,
                                         .xn2_dtype = mb_fwdc_kcuda_dtype(fc->wire)};
            mb_kcuda_route_local loc;
            const int paired = route_paired(fc, n);
            if (paired) {
                K(mb_cuda_local_moe_route_local(fc->local, l, &loc));
                /* A shared expert runs between the router and the experts:
                 * their start is marked after it (run_layer), not here. */
                if (c->d_ff_shared) loc.stamp = NULL;
            }
            int32_t *ids = (int32_t *)(dst + n * d);
            float *gate = dst + n * (d + k);
            K(mb_kcuda_router_topk_norm_local(fc->stream, R->dtype, R->w, R->rows, R->cols, &in,
                                              fc->rlog, c->top_k, fc->renorm, ids, gate,
                                              fc->route_done, paired ? &loc : NULL));
            mb_fwdc_prof_mark(fc, paired           ? "ffn rmsnorm + router + top-k + local pairs"
                                  : fc->local_step ? "ffn rmsnorm + router + top-k"
                                                   : "ffn rmsnorm + router + top-k (to host)");
            return MB_STATUS_OK;
        }
        if (fc->local_step)
            K(mb_kcuda_rmsnorm(fc->stream, xn, d, fc->x, d, n, c->d_model, D->ffn_norm, c->rms_eps));
        else
            K(mb_kcuda_rmsnorm_copy(fc->stream, xn, d, dst, mb_fwdc_kcuda_dtype(fc->wire), d, fc->x,
                                    d, n, c->d_model, D->ffn_norm, c->rms_eps));
        mb_fwdc_prof_mark(fc, fc->local_step ? "ffn rmsnorm" : "ffn rmsnorm (+ to host)");
        K(mb_kcuda_router_topk(fc->stream, R->dtype, R->w, R->rows, R->cols, xn, d, n, fc->rlog, c->top_k, fc->renorm,
                               (int32_t *)(dst + n * d), dst + n * (d + k), fc->route_done));
        mb_fwdc_prof_mark(fc, fc->local_step ? "router + top-k" : "router + top-k (to host)");
        return MB_STATUS_OK;
    }
    K(mb_kcuda_rmsnorm(fc->stream, xn, d, fc->x, d, n, c->d_model, D->ffn_norm, c->rms_eps));
    mb_fwdc_prof_mark(fc, "ffn rmsnorm");
    K(linear(fc, &D->router, xn, d, n, fc->rlog, c->n_experts, NULL, 0));
    mb_fwdc_prof_mark(fc, "router GEMV");
    K(mb_kcuda_route_topk(fc->stream, fc->rlog, n, c->n_experts, c->top_k, fc->renorm, (int32_t *)(xn + n * d),
                          xn + n * (d + k)));
    mb_fwdc_prof_mark(fc, "top-k");
    cudaError_t e = cudaMemcpyAsync(fc->h_xfer, fc->xfer, (size_t)n * (d + 2 * k) * sizeof(float),
                                    cudaMemcpyDeviceToHost, fc->stream);
    mb_fwdc_prof_mark(fc, "copy to host (xn|ids|gate)");
    return e == cudaSuccess ? MB_STATUS_OK : fail(fc, e, "copying the routed tokens to the host");
}

/* The side stream's work joined back: before a segment ends (a graph's
 * capture must end with it joined). */
static mb_status side_join(mb_fwd_cuda *fc)
{
    if (!fc->side_pending) return MB_STATUS_OK;
    fc->side_pending = 0;
    cudaError_t e = cudaStreamWaitEvent(fc->stream, fc->join, 0);
    return e == cudaSuccess ? MB_STATUS_OK : fail(fc, e, "joining the prefetch stream");
}

/* The local experts of layer l, from xfer's xn | ids | gate into moe. */
static mb_status segment_e(mb_fwd_cuda *fc, uint32_t l, uint32_t n, uint32_t pos)
{
    (void)pos;
    const size_t d = fc->cfg.d_model, k = fc->cfg.top_k;
    float *xn = fc->xfer;
    if (route_paired(fc, n))
        K(mb_cuda_local_moe_enqueue_paired(fc->local, fc->stream, l, xn, n, fc->moe));
    else
        K(mb_cuda_local_moe_enqueue(fc->local, fc->stream, l, xn, (const int32_t *)(xn + n * d),
                                    xn + n * (d + k), n, fc->moe));
    mb_fwdc_prof_mark(fc, "local experts (same device)");
    return MB_STATUS_OK;
}

static mb_status segment_a(mb_fwd_cuda *fc, uint32_t l, uint32_t n, uint32_t pos)
{
    MB_TRY(attention_block(fc, l, n, pos));
    MB_TRY(route_out(fc, l, n));
    return side_join(fc);
}

/* Segment B: the experts' sums back, the shared expert's down projection
 * added to them (the CPU's order), the residual. */
static mb_status segment_b(mb_fwd_cuda *fc, uint32_t l, uint32_t n, uint32_t pos)
{
    (void)pos;
    const size_t d = fc->cfg.d_model, ff = fc->cfg.d_ff_shared;
    if (!fc->local_step) { /* the local experts wrote moe on the device */
        cudaError_t e =
            cudaMemcpyAsync(fc->moe, fc->h_moe, (size_t)n * d * sizeof(float), cudaMemcpyHostToDevice, fc->stream);
        if (e != cudaSuccess) return fail(fc, e, "copying the experts' sums to the device");
        mb_fwdc_prof_mark(fc, "copy sums to device");
    }
    if (ff) K(linear(fc, &fc->layers[l].sh_down, fc->sh_g, ff, n, fc->moe, d, NULL, 1));
    /* Fused: the next norm (the next layer's, or the final one) adds moe. */
    if (!fc->fuse) K(mb_kcuda_add(fc->stream, fc->x, fc->moe, (size_t)n * d));
    mb_fwdc_prof_mark(fc, "shared down + residual add");
    return MB_STATUS_OK;
}

/* Segment B of layer l, then segment A of layer l + 1: one launch. */
static mb_status segment_ba(mb_fwd_cuda *fc, uint32_t l, uint32_t n, uint32_t pos)
{
    MB_TRY(segment_b(fc, l, n, pos));
    return segment_a(fc, l + 1, n, pos);
}

typedef mb_status (*segment_fn)(mb_fwd_cuda *fc, uint32_t l, uint32_t n, uint32_t pos);

/* Runs a segment: enqueued directly, or for a decode step replayed from
 * its graph, captured the first time. A capture that fails turns graphs
 * off for good and the segment runs directly. */
static mb_status run_segment(mb_fwd_cuda *fc, cudaGraphExec_t *exec, segment_fn fn, uint32_t l, uint32_t n,
                             uint32_t pos)
{
    if (!use_graph(fc, n) || fc->capturing) return fn(fc, l, n, pos);
    if (!*exec) {
        cudaError_t e = cudaStreamBeginCapture(fc->stream, cudaStreamCaptureModeThreadLocal);
        mb_status st = e == cudaSuccess ? fn(fc, l, n, pos) : MB_STATUS_DEVICE;
        cudaGraph_t g = NULL;
        if (e == cudaSuccess) e = cudaStreamEndCapture(fc->stream, &g);
        if (e == cudaSuccess && st == MB_STATUS_OK) e = cudaGraphInstantiate(exec, g, 0);
        if (g) cudaGraphDestroy(g);
        if (e != cudaSuccess || st != MB_STATUS_OK) {
            cudaGetLastError();
            *exec = NULL;
            fc->graphs = 0;
            fc->side_pending = 0; /* a join recorded in the discarded capture */
            fc->err[0] = '\0';
            return fn(fc, l, n, pos);
        }
    }
    cudaError_t e = cudaGraphLaunch(*exec, fc->stream);
    return e == cudaSuccess ? MB_STATUS_OK : fail(fc, e, "launching a layer's graph");
}

/* One layer: segment A (layer 0's alone; the others' were launched with
 * the previous layer's B), the shared expert's gate and up (overlapping
 * the workers), the host's one wait, the dispatcher, then segment B with
 * the next layer's A. */
static mb_status run_layer(mb_fwd_cuda *fc, uint32_t l, uint32_t n, uint32_t pos, int decode, mb_moe_fn moe_fn,
                           void *moe_ctx)
{
    const mb_model_config *c = &fc->cfg;
    const dev_layer *D = &fc->layers[l];
    const size_t d = c->d_model, k = c->top_k, ff = c->d_ff_shared;
    if (l == 0) MB_TRY(run_segment(fc, &fc->graph_a, segment_a, 0, n, pos)); /* later layers' A ran with B */
    cudaError_t e = fc->local_step ? cudaSuccess : cudaEventRecord(fc->copied, fc->stream);
    if (e != cudaSuccess) return fail(fc, e, "recording the copy");
    if (ff) {
        const float *xn = fc->xfer;
        K(linear(fc, &D->sh_gate, xn, d, n, fc->sh_g, ff, NULL, 0));
        K(linear(fc, &D->sh_up, xn, d, n, fc->sh_u, ff, NULL, 0));
        K(linear(fc, &D->sh_sg, xn, d, n, fc->sh_s, 1, NULL, 0));
        K(mb_kcuda_silu_mul(fc->stream, fc->sh_g, fc->sh_u, ff, n, (uint32_t)ff, fc->sh_s));
        mb_fwdc_prof_mark(fc, "shared expert gate/up (overlapped)");
    }
    if (fc->local_step) {
        /* Nothing to wait for, so no idle gap to time (head() knows). The
         * experts replay their own graph, between marks that time them. */
        if (!route_paired(fc, n) || ff) /* else the router marked it */
            K(mb_cuda_local_moe_mark(fc->local, fc->stream, l, 0));
        MB_TRY(run_segment(fc, &fc->graph_e[l], segment_e, l, n, pos));
        K(mb_cuda_local_moe_mark(fc->local, fc->stream, l, 1));
        if (l + 1 < c->n_layers) return run_segment(fc, &fc->graph_b[l], segment_ba, l, n, pos);
        return run_segment(fc, &fc->graph_b[l], segment_b, l, n, pos);
    }
    /* Experts elsewhere: while the host waits for them the GPU idles, so
     * the next layer's QKV weights are asked into L2 then, after the routed
     * tokens' copy, outside any graph and never waited for. (Beside experts
     * on this GPU it measured no gain: they stream tens of megabytes
     * through L2 in between.) */
    if (fc->l2_prefetch && n == 1 && l + 1 < c->n_layers)
        MB_TRY(side_prefetch(fc, fc->copied, &fc->layers[l + 1].wqkv, NULL, 0));
    e = cudaEventRecord(fc->wait[l], fc->stream);
    if (e == cudaSuccess) e = cudaEventSynchronize(fc->copied);
    if (e != cudaSuccess) return fail(fc, e, "waiting for the routed tokens");
    /* Where route_out's kernels wrote the rows (fuse), they are in the
     * wire's dtype; else f32, as computed. */
    const int wire_rows = fc->fuse && fc->wire != MB_DTYPE_F32;
    const mb_moe_work w = {.layer = l,
                           .n_tokens = n,
                           .top_k = c->top_k,
                           .decode = decode,
                           .expert_ids = (const int32_t *)(fc->h_xfer + n * d),
                           .gate = fc->h_xfer + n * (d + k),
                           .x = wire_rows ? NULL : fc->h_xfer,
                           .x_wire = wire_rows ? fc->h_xfer : NULL,
                           .x_wire_dtype = fc->wire,
                           .out = fc->h_moe};
    mb_status st = moe_fn(moe_ctx, &w);
    if (st != MB_STATUS_OK) return st;
    e = cudaEventRecord(fc->resume[l], fc->stream);
    if (e != cudaSuccess) return fail(fc, e, "recording the experts' return");
    mb_fwdc_prof_mark(fc, "(idle: host waits for the experts)");
    if (l + 1 < c->n_layers) return run_segment(fc, &fc->graph_b[l], segment_ba, l, n, pos);
    return run_segment(fc, &fc->graph_b[l], segment_b, l, n, pos);
}

/* The final norm of rows r0.. r0 + rows into xfer (fused: adding the last
 * layer's experts first). */
static int final_norm(mb_fwd_cuda *fc, uint32_t r0, uint32_t rows)
{
    const size_t d = fc->cfg.d_model;
    float *x = fc->x + (size_t)r0 * d;
    if (fc->fuse)
        return mb_kcuda_add_rmsnorm(fc->stream, fc->xfer, d, x, d, fc->moe + (size_t)r0 * d, d, rows, fc->cfg.d_model,
                                    fc->final_norm, fc->cfg.rms_eps);
    return mb_kcuda_rmsnorm(fc->stream, fc->xfer, d, x, d, rows, fc->cfg.d_model, fc->final_norm, fc->cfg.rms_eps);
}

/* Final norm and lm_head: every row into logits, or the last into
 * fc->h_logits; for a local step, the routed counts' and the experts'
 * stamps' copy to the host. */
static mb_status head_enqueue(mb_fwd_cuda *fc, uint32_t n, float *logits, float *last_logits)
{
    const mb_model_config *c = &fc->cfg;
    const size_t d = c->d_model, V = c->vocab;
    float *xn = fc->xfer;
    cudaError_t e = cudaSuccess;
    if (logits) { /* logits_all was allocated before (never while capturing) */
        K(final_norm(fc, 0, n));
        K(linear(fc, &fc->lm_head, xn, d, n, fc->logits_all, V, NULL, 0));
        e = cudaMemcpyAsync(logits, fc->logits_all, (size_t)n * V * sizeof(float), cudaMemcpyDeviceToHost,
                            fc->stream);
    } else if (last_logits) { /* only the last row: the other rows of x are not read again */
        /* The local experts' stamps and counts are final once the last
         * layer's experts ran: their flush goes before lm_head, so the
         * step ends with lm_head (a kernel after it would wait for all of
         * it, plus its own launch). */
        if (fc->local_step) {
            e = (cudaError_t)mb_cuda_local_moe_flush(fc->local, fc->stream);
            if (e != cudaSuccess) return fail(fc, e, "flushing the local experts' counters");
        }
        const size_t r = (size_t)(n - 1) * d;
        const dev_mat *W = &fc->lm_head;
        if (norm_in_gemv(fc, 1)) {
            const mb_kcuda_norm_in in = {.x = fc->x + r,
                                         .a = fc->moe + r,
                                         .w = fc->final_norm,
                                         .eps = c->rms_eps}; /* fused: moe not yet in x */
            /* Straight into the pinned logits where they are mapped: the
             * GEMV's stores leave as it streams W, instead of a copy of
             * the whole row after it. */
            K(mb_kcuda_linear_norm(fc->stream, W->dtype, W->w, W->rows, W->cols, &in,
                                   fc->logits_direct ? fc->logits_direct : fc->logits_last, NULL,
                                   0));
            if (fc->logits_direct) {
                mb_fwdc_prof_mark(fc, "final norm + lm_head (logits to host)");
                return MB_STATUS_OK;
            }
        } else {
            K(final_norm(fc, n - 1, 1));
            K(linear(fc, W, xn, d, 1, fc->logits_last, V, NULL, 0));
        }
        e = cudaMemcpyAsync(fc->h_logits, fc->logits_last, V * sizeof(float), cudaMemcpyDeviceToHost, fc->stream);
        mb_fwdc_prof_mark(fc, "final norm + lm_head + logits copy");
        return e == cudaSuccess ? MB_STATUS_OK : fail(fc, e, "copying the logits");
    }
    mb_fwdc_prof_mark(fc, "final norm + lm_head + logits copy");
    if (e == cudaSuccess && fc->local_step) e = (cudaError_t)mb_cuda_local_moe_flush(fc->local, fc->stream);
    return e == cudaSuccess ? MB_STATUS_OK : fail(fc, e, "copying the logits");
}

/* Everything a chunk of n tokens at pos enqueues, from the token copy to
 * the logits (h_tok and, for graphs, h_pos hold the step's tokens and
 * position). */
static mb_status enqueue_chunk(mb_fwd_cuda *fc, uint32_t n, uint32_t pos, int decode,
                               mb_moe_fn moe_fn, void *moe_ctx, float *logits, float *last_logits)
{
    mb_fwdc_prof_mark(fc, "start");
    cudaError_t e = cudaMemcpyAsync(fc->tok, fc->h_tok, n * sizeof(int32_t), cudaMemcpyHostToDevice,
                                    fc->stream);
    if (e == cudaSuccess && use_graph(fc, n))
        e = cudaMemcpyAsync(fc->pos_dev, fc->h_pos, sizeof(uint32_t), cudaMemcpyHostToDevice,
                            fc->stream);
    if (e != cudaSuccess) return fail(fc, e, "starting the step");
    K(mb_kcuda_embed(fc->stream, fc->embed.dtype, fc->embed.w, fc->cfg.d_model, fc->tok, n, fc->x));
    mb_fwdc_prof_mark(fc, "token copy + embed");
    for (uint32_t l = 0; l < fc->cfg.n_layers; l++)
        MB_TRY(run_layer(fc, l, n, pos, decode, moe_fn, moe_ctx));
    return head_enqueue(fc, n, logits, last_logits);
}

/* A local decode step as one graph, captured the first time. A capture
 * that fails turns the whole-step graph off for good: the step is then
 * enqueued as before (per-layer graphs). */
static mb_status run_step_graph(mb_fwd_cuda *fc, uint32_t pos, int decode, float *last_logits)
{
    if (!fc->graph_step) {
        cudaError_t e = cudaStreamBeginCapture(fc->stream, cudaStreamCaptureModeThreadLocal);
        fc->capturing = 1;
        mb_status st = e == cudaSuccess
                           ? enqueue_chunk(fc, 1, pos, decode, NULL, NULL, NULL, last_logits)
                           : MB_STATUS_DEVICE;
        fc->capturing = 0;
        cudaGraph_t g = NULL;
        if (e == cudaSuccess) e = cudaStreamEndCapture(fc->stream, &g);
        if (e == cudaSuccess && st == MB_STATUS_OK) e = cudaGraphInstantiate(&fc->graph_step, g, 0);
        if (g) cudaGraphDestroy(g);
        if (e != cudaSuccess || st != MB_STATUS_OK) {
            cudaGetLastError();
            fc->graph_step = NULL;
            fc->step_graph = 0;
            fc->side_pending = 0; /* a join recorded in the discarded capture */
            fc->err[0] = '\0';
            fc->prof.marks = fc->prof.on && !fc->prof.stamps ? 0 : -1;
            return enqueue_chunk(fc, 1, pos, decode, NULL, NULL, NULL, last_logits);
        }
        fc->prof.graph_marks = fc->prof.marks;
    }
    cudaError_t e = cudaGraphLaunch(fc->graph_step, fc->stream);
    if (e != cudaSuccess) return fail(fc, e, "launching the step's graph");
    if (fc->prof.on && fc->prof.stamps) fc->prof.marks = fc->prof.graph_marks;
    return MB_STATUS_OK;
}

/* After the chunk's enqueue: its one full synchronisation, the logits to
 * the caller, the local experts' counts and time, the device time. */
static mb_status finish_chunk(mb_fwd_cuda *fc, uint32_t n, float *logits, float *last_logits)
{
    const mb_model_config *c = &fc->cfg;
    const size_t V = c->vocab;
    cudaError_t e = cudaEventRecord(fc->t1, fc->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(fc->stream);
    if (e != cudaSuccess) return fail(fc, e, "finishing the step");
    mb_fwdc_prof_collect(fc);
    uint64_t local_ns = 0;
    if (fc->local_step) {
        local_ns = mb_cuda_local_moe_take_ns(fc->local, c->n_layers, fc->local_layer_ns);
        fc->local_ns += local_ns;
        const uint32_t *r = mb_cuda_local_moe_routed(fc->local);
        for (size_t i = 0; i < (size_t)c->n_layers * c->n_experts; i++) fc->routed_acc[i] += r[i];
    }
    if (logits && last_logits) memcpy(last_logits, logits + (size_t)(n - 1) * V, V * sizeof(float));
    else if (last_logits) memcpy(last_logits, fc->h_logits, V * sizeof(float));
    float ms = 0;
    if (cudaEventElapsedTime(&ms, fc->t0, fc->t1) != cudaSuccess) return MB_STATUS_OK;
    double busy = ms - (double)local_ns / 1e6; /* the dense part's time: the experts are counted apart */
    for (uint32_t l = 0; !fc->local_step && l < fc->cfg.n_layers; l++) {
        float gap = 0;
        if (cudaEventElapsedTime(&gap, fc->wait[l], fc->resume[l]) == cudaSuccess) busy -= gap;
    }
    fc->device_ns += busy > 0 ? (uint64_t)(busy * 1e6) : 0;
    return MB_STATUS_OK;
}

mb_status mb_fwd_cuda_chunk(mb_fwd_cuda *fc, const int32_t *ids, uint32_t n, uint32_t pos, int decode,
                            mb_moe_fn moe_fn, void *moe_ctx, float *logits, float *last_logits)
{
    if (!fc || !ids || n == 0 || n > fc->chunk_cap || pos + n > fc->max_ctx) return MB_STATUS_INVALID_ARG;
    fc->err[0] = '\0';
    fc->local_step = fc->local && n <= fc->local_max_n;
    cudaError_t e = cudaSetDevice(fc->device);
    /* A chunk that failed may have left copies in flight from the pinned
     * buffers this one refills. */
    if (e == cudaSuccess) e = cudaStreamSynchronize(fc->stream);
    if (e == cudaSuccess && logits &&
        !fc->logits_all) /* [chunk][vocab] is large: only runs that ask for every position pay */
        e = mb_fwdc_dev_alloc(fc, (size_t)fc->chunk_cap * fc->cfg.vocab * sizeof(float),
                              (void **)&fc->logits_all);
    if (e != cudaSuccess) return fail(fc, e, "starting the step");
    memcpy(fc->h_tok, ids, n * sizeof(int32_t));
    *fc->h_pos = pos;
    /* Whole-step graph: a local decode step, logits only for its token. */
    const int whole =
        fc->local_step && use_graph(fc, n) && fc->step_graph && !logits && last_logits;
    fc->prof.marks = fc->prof.on && n == 1 && (!fc->prof.stamps || whole) ? 0 : -1;
    e = cudaEventRecord(fc->t0, fc->stream);
    if (e != cudaSuccess) return fail(fc, e, "starting the step");
    MB_TRY(whole ? run_step_graph(fc, pos, decode, last_logits)
                 : enqueue_chunk(fc, n, pos, decode, moe_fn, moe_ctx, logits, last_logits));
    return finish_chunk(fc, n, logits, last_logits);
}

/* Every captured graph destroyed, to be captured again at the next step. */
static void drop_graphs(mb_fwd_cuda *fc)
{
    cudaSetDevice(fc->device);
    cudaStreamSynchronize(fc->stream);
    for (uint32_t l = 0; fc->graph_b && l < fc->cfg.n_layers; l++) {
        if (fc->graph_b[l]) cudaGraphExecDestroy(fc->graph_b[l]);
        fc->graph_b[l] = NULL;
    }
    if (fc->graph_a) cudaGraphExecDestroy(fc->graph_a);
    fc->graph_a = NULL;
    if (fc->graph_step) cudaGraphExecDestroy(fc->graph_step);
    fc->graph_step = NULL;
}

mb_status mb_fwd_cuda_set_local(mb_fwd_cuda *fc, mb_cuda_local_moe *lm, uint32_t max_tokens)
{
    if (!fc || !lm || fc->local) return MB_STATUS_INVALID_ARG;
    fc->routed_acc = calloc((size_t)fc->cfg.n_layers * fc->cfg.n_experts, sizeof *fc->routed_acc);
    fc->local_layer_ns = calloc(fc->cfg.n_layers, sizeof *fc->local_layer_ns);
    if (!fc->routed_acc || !fc->local_layer_ns) return MB_STATUS_NOMEM;
    /* Graphs captured so far ran the experts through the host. */
    drop_graphs(fc);
    fc->local = lm;
    fc->local_max_n = max_tokens < fc->chunk_cap ? max_tokens : fc->chunk_cap;
    return MB_STATUS_OK;
}

mb_status mb_fwd_cuda_set_wire(mb_fwd_cuda *fc, mb_dtype wire)
{
    if (!fc || (wire != MB_DTYPE_F32 && wire != MB_DTYPE_F16 && wire != MB_DTYPE_BF16))
        return MB_STATUS_INVALID_ARG;
    /* MB_CUDA_WIRE=0: the rows cross as f32 and the dispatcher converts
     * them (the way before, for measuring). */
    const char *off = getenv("MB_CUDA_WIRE");
    if (off && strcmp(off, "0") == 0) wire = MB_DTYPE_F32;
    if (wire == fc->wire) return MB_STATUS_OK;
    drop_graphs(fc); /* they hold the kernels' arguments */
    fc->wire = wire;
    return MB_STATUS_OK;
}

uint64_t mb_fwd_cuda_take_local_ns(mb_fwd_cuda *fc)
{
    if (!fc) return 0;
    uint64_t ns = fc->local_ns;
    fc->local_ns = 0;
    return ns;
}

uint64_t *mb_fwd_cuda_routed(mb_fwd_cuda *fc)
{
    return fc ? fc->routed_acc : NULL;
}

uint64_t *mb_fwd_cuda_local_layer_ns(mb_fwd_cuda *fc)
{
    return fc ? fc->local_layer_ns : NULL;
}

uint64_t mb_fwd_cuda_take_device_ns(mb_fwd_cuda *fc)
{
    if (!fc) return 0;
    uint64_t ns = fc->device_ns;
    fc->device_ns = 0;
    return ns;
}

const char *mb_fwd_cuda_error(const mb_fwd_cuda *fc)
{
    return fc ? fc->err : "";
}

#endif
