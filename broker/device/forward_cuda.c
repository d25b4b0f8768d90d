/* The dense layers on a CUDA device: weights uploaded once, the layer loop
 * enqueued on one stream, and per layer one wait for the copy that hands
 * the routed tokens to the dispatcher (seed 000: no other host sync in a
 * layer). The shared expert's gate and up projections are enqueued before
 * that wait, so they run while the workers compute. */
#include "broker/device/forward_cuda.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef MB_HAVE_CUDA

struct mb_fwd_cuda {
    int unused;
};

int mb_fwd_cuda_built(void)
{
    return 0;
}

mb_status mb_fwd_cuda_create(const mb_model *m, uint32_t max_ctx, uint32_t chunk_cap, int device, int progress,
                             mb_fwd_cuda **out, char *err, size_t err_cap)
{
    (void)m, (void)max_ctx, (void)chunk_cap, (void)progress, (void)out;
    snprintf(err, err_cap, "--device cuda:%d: this build has no CUDA support (nvcc was not found)", device);
    return MB_STATUS_UNSUPPORTED;
}

void mb_fwd_cuda_destroy(mb_fwd_cuda *fc)
{
    (void)fc;
}

mb_status mb_fwd_cuda_chunk(mb_fwd_cuda *fc, const int32_t *ids, uint32_t n, uint32_t pos, int decode,
                            mb_moe_fn moe_fn, void *moe_ctx, float *logits, float *last_logits)
{
    (void)fc, (void)ids, (void)n, (void)pos, (void)decode, (void)moe_fn, (void)moe_ctx, (void)logits,
        (void)last_logits;
    return MB_STATUS_UNSUPPORTED;
}

uint64_t mb_fwd_cuda_take_device_ns(mb_fwd_cuda *fc)
{
    (void)fc;
    return 0;
}

const char *mb_fwd_cuda_error(const mb_fwd_cuda *fc)
{
    (void)fc;
    return "";
}

mb_status mb_fwd_cuda_set_local(mb_fwd_cuda *fc, struct mb_cuda_local_moe *lm, uint32_t max_tokens)
{
    (void)fc, (void)lm, (void)max_tokens;
    return MB_STATUS_UNSUPPORTED;
}

mb_status mb_fwd_cuda_set_wire(mb_fwd_cuda *fc, mb_dtype wire)
{
    (void)fc, (void)wire;
    return MB_STATUS_UNSUPPORTED;
}

uint64_t mb_fwd_cuda_take_local_ns(mb_fwd_cuda *fc)
{
    (void)fc;
    return 0;
}

uint64_t *mb_fwd_cuda_routed(mb_fwd_cuda *fc)
{
    (void)fc;
    return NULL;
}

uint64_t *mb_fwd_cuda_local_layer_ns(mb_fwd_cuda *fc)
{
    (void)fc;
    return NULL;
}

#else

#include <cuda_runtime_api.h>
#include <math.h>
#include <unistd.h>

#include "broker/rope.h"
#include "broker/device/local_moe_cuda.h"
#include "broker/router.h"
#include "kernels/cuda/dense.h"
#include "protocol/dtype.h"

/* A weight matrix on the device, in its checkpoint dtype. */
typedef struct {
    const void *w;
    int dtype; /* MB_KCUDA_* */
    uint32_t rows, cols;
} dev_mat;

typedef struct {
    dev_mat wq, wk, wv, wo, router;
    /* With fusions on: q_proj, k_proj and v_proj stacked in one matrix
     * [q_dim + 2 kv_dim][d_model] (one GEMV instead of three) when they
     * share a dtype, and their biases as one vector; else wq/wk/wv. */
    dev_mat wqkv;
    float *bqkv;
    dev_mat sh_gate, sh_up, sh_down, sh_sg; /* Qwen2-MoE shared expert */
    float *attn_norm, *ffn_norm, *bq, *bk, *bv, *q_norm, *k_norm;
    mb_kcuda_kv kv;
} dev_layer;

struct mb_fwd_cuda {
    const mb_model *m;
    mb_model_config cfg;
    int device;
    uint32_t max_ctx, chunk_cap, q_dim, kv_dim, qkv_dim, window;
    /* 1 (default): the fused decode path (one QKV GEMV; head norm, RoPE
     * and KV store in one kernel; the residual add folded into the next
     * norm). 0 (MB_CUDA_FUSE=0): one kernel per operation, as before. */
    int fuse;
    /* The dtype the experts' links carry activations in (MB_DTYPE_F32
     * until mb_fwd_cuda_set_wire): with fuse, the kernels that write the
     * normalised rows into pinned host memory write them in it, and the
     * dispatcher sends those bytes as they are. */
    mb_dtype wire;
    /* 1 (default with fuse): a decode step's RMSNorms run inside the
     * one-token GEMVs that read them (QKV, router, lm_head), and o_proj
     * adds the previous layer's experts to x as it accumulates, so a
     * layer has two kernels fewer. 0 (MB_CUDA_FUSE_NORM=0): the norms are
     * kernels of their own. */
    int fuse_norm;
    /* 1 (MB_CUDA_FUSE_QKV=1, with fuse_norm): a decode step's QKV GEMV
     * also runs the head norms, RoPE and the KV store
     * (mb_kcuda_qkv_rope_store), the block finishing a head's rows doing
     * that head: one kernel fewer a layer. Checked bit for bit against
     * the two kernels on the emulator only, so off by default until a GPU
     * run has passed test_parity_device with it (bench/gpu/fuse9b.sh). */
    int fuse_qkv;
    /* 1 (MB_CUDA_FUSE_MERGE=1, with fuse): the split-K decode attention
     * merges its chunks in the blocks that finish them last (the shape's
     * merge_done) instead of in a second kernel. Checked on the emulator
     * only, so off by default until a GPU run (bench/gpu/fuse9b.sh). */
    int fuse_merge;
    /* 1 (MB_CUDA_FUSE_ATTN=1, with fuse; head_dim % 4 == 0 and <= 128): a
     * one-token step's head pass runs inside the decode attention
     * (mb_kcuda_qkp_attention), one kernel fewer a layer; measured slower,
     * so off by default. */
    int fuse_attn;
    /* 1 (unless MB_CUDA_L2_PREFETCH=0, with fuse): a one-token step asks
     * the L2 cache for weights on a second stream (side): o_proj's (unless
     * staged: mb_kcuda_linear_staged) and the router's once the QKV
     * projection is enqueued, joined back at the end
     * of the layer's segment A; with the experts elsewhere, the next
     * layer's QKV weights while the host waits (side_prefetch). */
    int l2_prefetch, side_pending;
    /* 1 (unless MB_CUDA_ROUTE_PAIRS=0, with fuse): a one-token step with
     * local experts has the router's last block write their pairs and
     * start mark (route_paired), with no launches of their own. */
    int route_pairs;
    cudaStream_t side;
    cudaEvent_t fork, join;
    int renorm;
    cudaStream_t stream;
    cudaEvent_t copied, t0, t1;
    /* Per layer, around the host's wait for the experts: the stream is
     * idle from wait[l] to resume[l] unless work was still queued, so the
     * device's own time is t1 - t0 less those gaps. */
    cudaEvent_t *wait, *resume;
    dev_layer *layers;
    dev_mat embed, lm_head;
    float *final_norm, *cos, *sin;
    void **allocs; /* every cudaMalloc, for destroy */
    size_t n_allocs, cap_allocs;
    /* Device scratch for chunk_cap tokens. xfer is what the dispatcher
     * needs, laid out for the current chunk's n: xn [n][d_model], then ids
     * [n][top_k] (int32), then gate [n][top_k]: one copy moves all three.
     * h_xfer has the same layout; where the kernels write it themselves
     * (fuse), its xn rows are in the wire's dtype, packed from the start
     * of the xn region (a 2-byte dtype leaves the region's second half
     * unused). */
    float *x, *xfer, *q, *k, *v, *qkv, *att, *rlog, *moe, *sh_g, *sh_u, *sh_s, *logits_last,
        *logits_all, *work;
    int32_t *tok;
    /* The kernels' counters, 0 between calls, in one allocation (at
     * route_done): mb_kcuda_router_topk's, mb_kcuda_qkv_rope_store's (a
     * head each), the attention's merge (mb_kcuda_attn_shape). */
    unsigned *route_done, *qkv_done, *merge_done;
    size_t work_floats;
    /* Pinned host twins. */
    float *h_xfer, *h_moe, *h_logits;
    int32_t *h_tok;
    /* h_logits as the device sees it (mapped pinned memory), or NULL: a
     * one-token lm_head with the norm folded in writes the logits there
     * itself, with no copy after it (MB_CUDA_LOGITS_DIRECT=0: the copy). */
    float *logits_direct;
    uint64_t device_ns;
    /* Decode (one-token) steps replay one CUDA graph per layer, captured at
     * the first decode step: graph_a is layer 0 up to the routed tokens;
     * graph_b[l] takes layer l from the experts' sums on and runs layer
     * l + 1 up to its routed tokens (the last layer's ends with the sums),
     * so the host launches once per wait. Their kernels read the position
     * from pos_dev, so the graphs serve every position. */
    int graphs; /* 1: on, 0: off (MB_CUDA_GRAPHS=0, or a capture failed) */
    cudaGraphExec_t graph_a, *graph_b; /* graph_b [n_layers]; NULL until captured */
    cudaGraphExec_t *graph_e;          /* [n_layers]: the local experts (mb_fwd_cuda_set_local) */
    /* A decode step whose experts are all local has no host wait: it
     * replays one graph from the token copy to the logits (MB_CUDA_STEP_GRAPH=0:
     * the per-layer graphs above). capturing: that graph is being
     * captured, so run_segment enqueues its segments directly. */
    int step_graph, capturing;
    cudaGraphExec_t graph_step;
    uint32_t *pos_dev, *h_pos;
    /* MB_CUDA_PROFILE=1: decode steps run without graphs, with an event
     * after every operation; the gaps are summed per operation and printed
     * at destroy (a launch gap counts toward the operation after it).
     * MB_CUDA_PROFILE=graph: the whole-step graphs of local decode steps
     * stay on, with a clock stamp (mb_kcuda_stamp) after every operation
     * instead; a stamp is a launch of its own, included in the figures. */
    struct {
        int on, marks, cap;
        int stamps, graph_marks; /* graph mode; marks captured in graph_step */
        uint64_t steps;
        cudaEvent_t *ev;
        unsigned long long *ts, *h_ts; /* graph mode: [cap] stamps, device and pinned */
        const char **label;
        struct {
            const char *label;
            double ms;
        } row[40];
        int rows;
    } prof;
    /* Experts on this device computed from its buffers
     * (mb_fwd_cuda_set_local) in steps of at most local_max_n tokens:
     * no host wait in such a layer. routed_acc sums the routed pairs per
     * (layer, expert) over those steps, for the statistics. */
    mb_cuda_local_moe *local;
    uint32_t local_max_n;
    int local_step; /* the chunk now running takes the local path */
    uint64_t local_ns;
    uint64_t *routed_acc;
    uint64_t *local_layer_ns; /* [n_layers], summed over steps */
    char err[256];
};

int mb_fwd_cuda_built(void)
{
    return 1;
}

static void set_err(mb_fwd_cuda *fc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fc->err, sizeof fc->err, fmt, ap);
    va_end(ap);
}

/* ---- creation ------------------------------------------------------------ */

static int track(mb_fwd_cuda *fc, void *p)
{
    if (fc->n_allocs == fc->cap_allocs) {
        size_t cap = fc->cap_allocs ? 2 * fc->cap_allocs : 64;
        void **a = realloc(fc->allocs, cap * sizeof *a);
        if (!a) return 0;
        fc->allocs = a;
        fc->cap_allocs = cap;
    }
    fc->allocs[fc->n_allocs++] = p;
    return 1;
}

static cudaError_t dev_alloc(mb_fwd_cuda *fc, size_t bytes, void **out)
{
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 16);
    if (e != cudaSuccess) return e;
    if (!track(fc, p)) {
        cudaFree(p);
        return cudaErrorMemoryAllocation;
    }
    *out = p;
    return cudaSuccess;
}

/* Loading progress: bytes uploaded of the dense total, on a terminal. */
typedef struct {
    int on;
    uint64_t done, total, last_print;
} progress_line;

static void progress_add(progress_line *p, uint64_t bytes)
{
    p->done += bytes;
    if (!p->on || (p->done - p->last_print < ((uint64_t)256 << 20) && p->done != p->total)) return;
    p->last_print = p->done;
    fprintf(stderr, "\rloading dense weights to the GPU: %.2f / %.2f GiB", (double)p->done / (1u << 30),
            (double)p->total / (1u << 30));
    if (p->done == p->total) fputc('\n', stderr);
}

static int kcuda_dtype(mb_dtype d)
{
    switch (d) {
    case MB_DTYPE_F32: return MB_KCUDA_F32;
    case MB_DTYPE_F16: return MB_KCUDA_F16;
    case MB_DTYPE_BF16: return MB_KCUDA_BF16;
    default: return -1;
    }
}

static uint64_t mat_bytes(const mb_tensor *t)
{
    return t->data ? t->rows * t->cols * mb_dtype_size(t->dtype) : 0;
}

/* Uploads a matrix as it is stored. A matrix absent from the model (an
 * optional tensor) stays NULL. */
static mb_status upload_mat(mb_fwd_cuda *fc, const mb_tensor *t, const char *what, uint32_t layer, dev_mat *out,
                            progress_line *p)
{
    memset(out, 0, sizeof *out);
    if (!t->data) return MB_STATUS_OK;
    int dt = kcuda_dtype(t->dtype);
    if (dt < 0) {
        set_err(fc, "--device cuda:%d: layer %u %s is %s; the GPU coordinator takes f32, f16 and bf16 dense weights",
                fc->device, layer, what, mb_dtype_name(t->dtype));
        return MB_STATUS_BAD_DTYPE;
    }
    uint64_t bytes = mat_bytes(t);
    void *d = NULL;
    cudaError_t e = dev_alloc(fc, bytes, &d);
    if (e == cudaSuccess) e = cudaMemcpy(d, t->data, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        set_err(fc, "--device cuda:%d: uploading layer %u %s: %s", fc->device, layer, what, cudaGetErrorString(e));
        return MB_STATUS_DEVICE;
    }
    progress_add(p, bytes);
    *out = (dev_mat){.w = d, .dtype = dt, .rows = (uint32_t)t->rows, .cols = (uint32_t)t->cols};
    return MB_STATUS_OK;
}

/* Uploads a 1-D tensor widened to f32 (norm weights, biases); NULL stays. */
static mb_status upload_vec(mb_fwd_cuda *fc, const mb_tensor *t, size_t n, float **out)
{
    *out = NULL;
    if (!t->data) return MB_STATUS_OK;
    float *h = malloc(n * sizeof *h);
    if (!h) return MB_STATUS_NOMEM;
    mb_dtype_decode_f32(t->dtype, h, t->data, n);
    void *d = NULL;
    cudaError_t e = dev_alloc(fc, n * sizeof(float), &d);
    if (e == cudaSuccess) e = cudaMemcpy(d, h, n * sizeof(float), cudaMemcpyHostToDevice);
    free(h);
    if (e != cudaSuccess) {
        set_err(fc, "--device cuda:%d: uploading a norm or bias: %s", fc->device, cudaGetErrorString(e));
        return MB_STATUS_DEVICE;
    }
    *out = d;
    return MB_STATUS_OK;
}

static uint64_t dense_bytes(const mb_model *m)
{
    uint64_t b = mat_bytes(&m->embed) + (m->lm_head.data != m->embed.data ? mat_bytes(&m->lm_head) : 0);
    for (uint32_t l = 0; l < m->cfg.n_layers; l++) {
        const mb_layer_weights *L = &m->layers[l];
        b += mat_bytes(&L->wq) + mat_bytes(&L->wk) + mat_bytes(&L->wv) + mat_bytes(&L->wo) + mat_bytes(&L->router);
        b += mat_bytes(&L->shared.gate) + mat_bytes(&L->shared.up) + mat_bytes(&L->shared.down) +
             mat_bytes(&L->shared_gate);
    }
    return b;
}

/* q_proj, k_proj and v_proj stacked into one device matrix, rows in that
 * order (the columns of the qkv scratch). The caller checked that the
 * three share a dtype. */
static mb_status upload_qkv(mb_fwd_cuda *fc, const mb_layer_weights *L, uint32_t layer, dev_mat *out,
                            progress_line *p)
{
    memset(out, 0, sizeof *out);
    const mb_tensor *part[3] = {&L->wq, &L->wk, &L->wv};
    int dt = kcuda_dtype(L->wq.dtype);
    if (dt < 0) {
        set_err(fc, "--device cuda:%d: layer %u q_proj is %s; the GPU coordinator takes f32, f16 and bf16 dense weights",
                fc->device, layer, mb_dtype_name(L->wq.dtype));
        return MB_STATUS_BAD_DTYPE;
    }
    uint64_t bytes = 0;
    for (int i = 0; i < 3; i++) bytes += mat_bytes(part[i]);
    char *d = NULL;
    cudaError_t e = dev_alloc(fc, bytes, (void **)&d);
    for (uint64_t off = 0, i = 0; e == cudaSuccess && i < 3; off += mat_bytes(part[i]), i++)
        e = cudaMemcpy(d + off, part[i]->data, mat_bytes(part[i]), cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        set_err(fc, "--device cuda:%d: uploading layer %u q/k/v_proj: %s", fc->device, layer, cudaGetErrorString(e));
        return MB_STATUS_DEVICE;
    }
    progress_add(p, bytes);
    *out = (dev_mat){.w = d, .dtype = dt, .rows = fc->qkv_dim, .cols = (uint32_t)L->wq.cols};
    return MB_STATUS_OK;
}

/* The q, k and v biases as one f32 vector [q_dim + 2 kv_dim] (an absent
 * one is zeros); bq, bk and bv point into it. */
static mb_status upload_qkv_bias(mb_fwd_cuda *fc, const mb_layer_weights *L, dev_layer *D)
{
    const mb_tensor *part[3] = {&L->bq, &L->bk, &L->bv};
    const size_t len[3] = {fc->q_dim, fc->kv_dim, fc->kv_dim};
    float *h = calloc(fc->qkv_dim, sizeof *h);
    if (!h) return MB_STATUS_NOMEM;
    for (size_t i = 0, off = 0; i < 3; off += len[i], i++)
        if (part[i]->data) mb_dtype_decode_f32(part[i]->dtype, h + off, part[i]->data, len[i]);
    cudaError_t e = dev_alloc(fc, fc->qkv_dim * sizeof(float), (void **)&D->bqkv);
    if (e == cudaSuccess) e = cudaMemcpy(D->bqkv, h, fc->qkv_dim * sizeof(float), cudaMemcpyHostToDevice);
    free(h);
    if (e != cudaSuccess) {
        set_err(fc, "--device cuda:%d: uploading the q/k/v biases: %s", fc->device, cudaGetErrorString(e));
        return MB_STATUS_DEVICE;
    }
    D->bq = L->bq.data ? D->bqkv : NULL;
    D->bk = L->bk.data ? D->bqkv + fc->q_dim : NULL;
    D->bv = L->bv.data ? D->bqkv + fc->q_dim + fc->kv_dim : NULL;
    return MB_STATUS_OK;
}

static mb_status upload_layer(mb_fwd_cuda *fc, uint32_t l, progress_line *p)
{
    const mb_model_config *c = &fc->cfg;
    const mb_layer_weights *L = &fc->m->layers[l];
    dev_layer *D = &fc->layers[l];
    if (fc->fuse && L->wq.dtype == L->wk.dtype && L->wq.dtype == L->wv.dtype)
        MB_TRY(upload_qkv(fc, L, l, &D->wqkv, p));
    if (!D->wqkv.w) {
        MB_TRY(upload_mat(fc, &L->wq, "q_proj", l, &D->wq, p));
        MB_TRY(upload_mat(fc, &L->wk, "k_proj", l, &D->wk, p));
        MB_TRY(upload_mat(fc, &L->wv, "v_proj", l, &D->wv, p));
    }
    MB_TRY(upload_mat(fc, &L->wo, "o_proj", l, &D->wo, p));
    MB_TRY(upload_mat(fc, &L->router, "router", l, &D->router, p));
    if (c->d_ff_shared) {
        MB_TRY(upload_mat(fc, &L->shared.gate, "shared_expert.gate_proj", l, &D->sh_gate, p));
        MB_TRY(upload_mat(fc, &L->shared.up, "shared_expert.up_proj", l, &D->sh_up, p));
        MB_TRY(upload_mat(fc, &L->shared.down, "shared_expert.down_proj", l, &D->sh_down, p));
        MB_TRY(upload_mat(fc, &L->shared_gate, "shared_expert_gate", l, &D->sh_sg, p));
    }
    MB_TRY(upload_vec(fc, &L->attn_norm, c->d_model, &D->attn_norm));
    MB_TRY(upload_vec(fc, &L->ffn_norm, c->d_model, &D->ffn_norm));
    if (c->qkv_bias) MB_TRY(upload_qkv_bias(fc, L, D));
    if (c->qk_norm) {
        MB_TRY(upload_vec(fc, &L->q_norm, c->head_dim, &D->q_norm));
        MB_TRY(upload_vec(fc, &L->k_norm, c->head_dim, &D->k_norm));
    }
    return MB_STATUS_OK;
}

/* RoPE tables computed on the host exactly as the CPU coordinator's. */
static mb_status upload_rope(mb_fwd_cuda *fc)
{
    mb_rope r;
    MB_TRY(mb_rope_init(&r, fc->cfg.head_dim, fc->max_ctx, fc->cfg.rope_theta));
    size_t bytes = (size_t)fc->max_ctx * (fc->cfg.head_dim / 2) * sizeof(float);
    cudaError_t e = dev_alloc(fc, bytes, (void **)&fc->cos);
    if (e == cudaSuccess) e = dev_alloc(fc, bytes, (void **)&fc->sin);
    if (e == cudaSuccess) e = cudaMemcpy(fc->cos, r.cos, bytes, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemcpy(fc->sin, r.sin, bytes, cudaMemcpyHostToDevice);
    mb_rope_fini(&r);
    if (e != cudaSuccess) {
        set_err(fc, "--device cuda:%d: RoPE tables: %s", fc->device, cudaGetErrorString(e));
        return MB_STATUS_DEVICE;
    }
    return MB_STATUS_OK;
}

/* Bytes of the KV cache and of the scratch for chunk_cap tokens. */
static uint64_t cache_bytes(const mb_fwd_cuda *fc)
{
    return 2ull * fc->cfg.n_layers * fc->kv_dim * fc->max_ctx * sizeof(float);
}

static mb_status alloc_cache(mb_fwd_cuda *fc)
{
    const mb_model_config *c = &fc->cfg;
    float *kv = NULL;
    cudaError_t e = dev_alloc(fc, cache_bytes(fc), (void **)&kv);
    if (e != cudaSuccess) {
        set_err(fc, "--device cuda:%d: KV cache for %u positions (%.2f GiB): %s", fc->device, fc->max_ctx,
                (double)cache_bytes(fc) / (1u << 30), cudaGetErrorString(e));
        return MB_STATUS_NOMEM;
    }
    const size_t per = (size_t)fc->kv_dim * fc->max_ctx;
    for (uint32_t l = 0; l < c->n_layers; l++)
        fc->layers[l].kv = (mb_kcuda_kv){.k = kv + 2 * l * per, .v = kv + (2 * l + 1) * per,
                                         .n_kv_heads = c->n_kv_heads, .head_dim = c->head_dim,
                                         .max_ctx = fc->max_ctx};
    return MB_STATUS_OK;
}

/* Work for the longest step: mb_kcuda_attention_work is non-decreasing in
 * n (dense.h), so it serves every shorter one. */
static size_t attention_work(const mb_fwd_cuda *fc)
{
    const mb_kcuda_attn_shape s = {.n_heads = fc->cfg.n_heads, .window = fc->window, .scale = 1.0f};
    return mb_kcuda_attention_work(&fc->layers[0].kv, &s, fc->chunk_cap);
}

static mb_status alloc_scratch(mb_fwd_cuda *fc)
{
    const mb_model_config *c = &fc->cfg;
    const size_t n = fc->chunk_cap, d = c->d_model, k = c->top_k;
    fc->work_floats = attention_work(fc);
    const size_t xfer = n * (d + 2 * k);
    /* The kernels' counters, one buffer: route_done | qkv_done (a head
     * each) | merge_done. */
    const size_t n_qkv = c->n_heads + 2 * (size_t)c->n_kv_heads,
                 n_cnt = 1 + n_qkv + MB_KCUDA_ATTN_MERGE_COUNTERS(c->n_heads);
    struct {
        float **p;
        size_t floats;
    } bufs[] = {
        {&fc->x, n * d},
        {&fc->xfer, xfer},
        {&fc->q, n * fc->q_dim},
        {&fc->k, n * fc->kv_dim},
        {&fc->v, n * fc->kv_dim},
        {&fc->qkv, n * fc->qkv_dim},
        {&fc->att, n * fc->q_dim},
        {&fc->rlog, n * c->n_experts},
        {&fc->moe, n * d},
        {&fc->sh_g, n * c->d_ff_shared},
        {&fc->sh_u, n * c->d_ff_shared},
        {&fc->sh_s, n},
        {&fc->logits_last, c->vocab},
        {&fc->work, fc->work_floats},
        {(float **)&fc->tok, n},
        {(float **)&fc->route_done, n_cnt},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        cudaError_t e = dev_alloc(fc, bufs[i].floats * sizeof(float), (void **)bufs[i].p);
        if (e != cudaSuccess) {
            set_err(fc, "--device cuda:%d: scratch for %zu tokens: %s", fc->device, n, cudaGetErrorString(e));
            return MB_STATUS_NOMEM;
        }
    }
    fc->qkv_done = fc->route_done + 1;
    fc->merge_done = fc->qkv_done + n_qkv;
    /* The counters are zero before any kernel on the (non-blocking) stream
     * reads them: a counter starting elsewhere would never complete. */
    cudaError_t e = cudaMemset(fc->route_done, 0, n_cnt * sizeof *fc->route_done);
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    if (e != cudaSuccess) {
        set_err(fc, "--device cuda:%d: zeroing the kernels' counters: %s", fc->device,
                cudaGetErrorString(e));
        return MB_STATUS_DEVICE;
    }
    e = cudaMallocHost((void **)&fc->h_xfer, xfer * sizeof(float));
    if (e == cudaSuccess) e = cudaMallocHost((void **)&fc->h_moe, n * d * sizeof(float));
    if (e == cudaSuccess) e = cudaMallocHost((void **)&fc->h_logits, (size_t)c->vocab * sizeof(float));
    if (e == cudaSuccess) e = cudaMallocHost((void **)&fc->h_tok, n * sizeof(int32_t));
    if (e != cudaSuccess) {
        set_err(fc, "--device cuda:%d: pinned host buffers: %s", fc->device, cudaGetErrorString(e));
        return MB_STATUS_NOMEM;
    }
    const char *ld = getenv("MB_CUDA_LOGITS_DIRECT");
    if (!(ld && strcmp(ld, "0") == 0) &&
        cudaHostGetDevicePointer((void **)&fc->logits_direct, fc->h_logits, 0) != cudaSuccess) {
        cudaGetLastError(); /* not mapped on this system: the copy */
        fc->logits_direct = NULL;
    }
    return MB_STATUS_OK;
}

/* Fails early, with figures, when the dense part cannot fit. */
static mb_status check_memory(mb_fwd_cuda *fc, uint64_t weights)
{
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return MB_STATUS_OK; /* the allocations will say */
    const mb_model_config *c = &fc->cfg;
    uint64_t scratch = (uint64_t)fc->chunk_cap * (4ull * c->d_model + 3ull * fc->q_dim + c->n_experts) * 4u;
    uint64_t need = weights + cache_bytes(fc) + scratch;
    if (need > free_b) {
        set_err(fc,
                "--device cuda:%d: the dense part needs %.2f GiB (weights %.2f, KV cache for %u positions %.2f) "
                "but the device has %.2f GiB free: lower --max-ctx or use --device cpu",
                fc->device, (double)need / (1u << 30), (double)weights / (1u << 30), fc->max_ctx,
                (double)cache_bytes(fc) / (1u << 30), (double)free_b / (1u << 30));
        return MB_STATUS_NOMEM;
    }
    return MB_STATUS_OK;
}

static mb_status open_device(mb_fwd_cuda *fc)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        set_err(fc, "--device cuda:%d: no CUDA device (%s)", fc->device,
                e != cudaSuccess ? cudaGetErrorString(e) : "the driver reports none");
        cudaGetLastError();
        return MB_STATUS_DEVICE;
    }
    if (fc->device >= count) {
        set_err(fc, "--device cuda:%d: this host has %d CUDA device%s (cuda:0..%d)", fc->device, count,
                count == 1 ? "" : "s", count - 1);
        return MB_STATUS_DEVICE;
    }
    e = cudaSetDevice(fc->device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&fc->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&fc->side, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&fc->fork, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&fc->join, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&fc->copied, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreate(&fc->t0);
    if (e == cudaSuccess) e = cudaEventCreate(&fc->t1);
    const char *g = getenv("MB_CUDA_GRAPHS");
    fc->graphs = !(g && strcmp(g, "0") == 0);
    const char *sg = getenv("MB_CUDA_STEP_GRAPH");
    fc->step_graph = !(sg && strcmp(sg, "0") == 0);
    const char *pr = getenv("MB_CUDA_PROFILE");
    if (pr && (strcmp(pr, "1") == 0 || strcmp(pr, "graph") == 0)) {
        fc->prof.stamps = strcmp(pr, "graph") == 0;
        if (!fc->prof.stamps) fc->graphs = 0;
        fc->prof.cap = (int)fc->cfg.n_layers * 32 + 16;
        fc->prof.label = calloc((size_t)fc->prof.cap, sizeof *fc->prof.label);
        if (!fc->prof.label) return MB_STATUS_NOMEM;
        if (fc->prof.stamps) {
            e = dev_alloc(fc, (size_t)fc->prof.cap * sizeof *fc->prof.ts, (void **)&fc->prof.ts);
            if (e == cudaSuccess)
                e = cudaMallocHost((void **)&fc->prof.h_ts,
                                   (size_t)fc->prof.cap * sizeof *fc->prof.h_ts);
        } else {
            fc->prof.ev = calloc((size_t)fc->prof.cap, sizeof *fc->prof.ev);
            if (!fc->prof.ev) return MB_STATUS_NOMEM;
            for (int i = 0; e == cudaSuccess && i < fc->prof.cap; i++)
                e = cudaEventCreate(&fc->prof.ev[i]);
        }
        fc->prof.on = 1;
    }
    fc->graph_b = calloc(fc->cfg.n_layers, sizeof *fc->graph_b);
    fc->graph_e = calloc(fc->cfg.n_layers, sizeof *fc->graph_e);
    if (!fc->graph_b || !fc->graph_e) return MB_STATUS_NOMEM;
    if (e == cudaSuccess) e = dev_alloc(fc, sizeof(uint32_t), (void **)&fc->pos_dev);
    if (e == cudaSuccess) e = cudaMallocHost((void **)&fc->h_pos, sizeof(uint32_t));
    fc->wait = calloc(fc->cfg.n_layers, sizeof *fc->wait);
    fc->resume = calloc(fc->cfg.n_layers, sizeof *fc->resume);
    if (!fc->wait || !fc->resume) return MB_STATUS_NOMEM;
    for (uint32_t l = 0; e == cudaSuccess && l < fc->cfg.n_layers; l++) {
        e = cudaEventCreate(&fc->wait[l]);
        if (e == cudaSuccess) e = cudaEventCreate(&fc->resume[l]);
    }
    if (e != cudaSuccess) {
        set_err(fc, "--device cuda:%d: %s", fc->device, cudaGetErrorString(e));
        return MB_STATUS_DEVICE;
    }
    return MB_STATUS_OK;
}

static mb_status create_all(mb_fwd_cuda *fc, int progress)
{
    const mb_model_config *c = &fc->cfg;
    MB_TRY(open_device(fc));
    uint64_t weights = dense_bytes(fc->m);
    MB_TRY(check_memory(fc, weights));
    fc->layers = calloc(c->n_layers, sizeof *fc->layers);
    if (!fc->layers) return MB_STATUS_NOMEM;
    progress_line p = {.on = progress, .total = weights};
    MB_TRY(upload_mat(fc, &fc->m->embed, "embed_tokens", 0, &fc->embed, &p));
    if (fc->m->lm_head.data == fc->m->embed.data && fc->m->lm_head.dtype == fc->m->embed.dtype)
        fc->lm_head = fc->embed; /* tied: one copy */
    else
        MB_TRY(upload_mat(fc, &fc->m->lm_head, "lm_head", 0, &fc->lm_head, &p));
    for (uint32_t l = 0; l < c->n_layers; l++) MB_TRY(upload_layer(fc, l, &p));
    MB_TRY(upload_vec(fc, &fc->m->final_norm, c->d_model, &fc->final_norm));
    MB_TRY(upload_rope(fc));
    MB_TRY(alloc_cache(fc));
    MB_TRY(alloc_scratch(fc));
    return MB_STATUS_OK;
}

mb_status mb_fwd_cuda_create(const mb_model *m, uint32_t max_ctx, uint32_t chunk_cap, int device, int progress,
                             mb_fwd_cuda **out, char *err, size_t err_cap)
{
    if (!m || !out || max_ctx == 0 || chunk_cap == 0 || chunk_cap > max_ctx || device < 0)
        return MB_STATUS_INVALID_ARG;
    if (m->cfg.head_dim > MB_KCUDA_MAX_HEAD_DIM) { /* before: the first step's attention failed */
        snprintf(err, err_cap, "--device cuda:%d: head_dim %u: the GPU attention takes up to %u",
                 device, m->cfg.head_dim, MB_KCUDA_MAX_HEAD_DIM);
        return MB_STATUS_UNSUPPORTED;
    }
    mb_fwd_cuda *fc = calloc(1, sizeof *fc);
    if (!fc) return MB_STATUS_NOMEM;
    fc->m = m;
    fc->cfg = m->cfg;
    fc->device = device;
    fc->max_ctx = max_ctx;
    fc->chunk_cap = chunk_cap;
    fc->q_dim = fc->cfg.n_heads * fc->cfg.head_dim;
    fc->kv_dim = fc->cfg.n_kv_heads * fc->cfg.head_dim;
    fc->qkv_dim = fc->q_dim + 2 * fc->kv_dim;
    const char *fz = getenv("MB_CUDA_FUSE");
    fc->fuse = !(fz && strcmp(fz, "0") == 0);
    const char *fn = getenv("MB_CUDA_FUSE_NORM");
    fc->fuse_norm = fc->fuse && !(fn && strcmp(fn, "0") == 0);
    const char *fq = getenv("MB_CUDA_FUSE_QKV");
    fc->fuse_qkv = fc->fuse_norm && fq && strcmp(fq, "1") == 0;
    /* MB_CUDA_FUSE_ATTN=1: the decode attention runs the head pass itself
     * where its pipelined tiles take the heads (head_dim % 4 == 0, <= 128).
     * Off: on the H100 a decode step's dense part took 0.250-0.253 ms with
     * it against 0.230-0.232 without (every one of the attention's blocks
     * then runs a head pass, serial work in each, where the kernel it
     * replaces spreads it over warps). */
    const char *fa = getenv("MB_CUDA_FUSE_ATTN");
    fc->fuse_attn = fc->fuse && fa && strcmp(fa, "1") == 0 && fc->cfg.head_dim % 4 == 0 &&
                    fc->cfg.head_dim <= 128;
    const char *pf = getenv("MB_CUDA_L2_PREFETCH");
    fc->l2_prefetch = fc->fuse && !(pf && strcmp(pf, "0") == 0);
    const char *rp = getenv("MB_CUDA_ROUTE_PAIRS");
    fc->route_pairs = fc->fuse && !(rp && strcmp(rp, "0") == 0);
    const char *fm = getenv("MB_CUDA_FUSE_MERGE");
    fc->fuse_merge = fc->fuse && fm && strcmp(fm, "1") == 0;
    /* As mb_attn_init: a window as wide as the context hides nothing. */
    fc->window = fc->cfg.sliding_window < max_ctx ? fc->cfg.sliding_window : 0;
    mb_router r;
    mb_status st = mb_router_init(&r, &fc->cfg);
    fc->renorm = r.renorm;
    if (st == MB_STATUS_OK) st = create_all(fc, progress && isatty(STDERR_FILENO));
    if (st != MB_STATUS_OK) {
        snprintf(err, err_cap, "%s", fc->err[0] ? fc->err : mb_status_str(st));
        mb_fwd_cuda_destroy(fc);
        return st;
    }
    *out = fc;
    return MB_STATUS_OK;
}

/* ---- decode profile (MB_CUDA_PROFILE=1) ------------------------------------ */

/* Records an event (or, in graph mode, a clock stamp) after the operation
 * just enqueued, in a profiled step. */
static void prof_mark(mb_fwd_cuda *fc, const char *label)
{
    if (!fc->prof.on || fc->prof.marks < 0 || fc->prof.marks >= fc->prof.cap) return;
    if (fc->prof.stamps) {
        if (mb_kcuda_stamp(fc->stream, fc->prof.ts + fc->prof.marks) != 0) return;
    } else if (cudaEventRecord(fc->prof.ev[fc->prof.marks], fc->stream) != cudaSuccess) {
        return;
    }
    fc->prof.label[fc->prof.marks++] = label;
}

/* After the step's synchronisation: each gap between marks goes to the
 * label of the mark that ends it. */
static void prof_collect(mb_fwd_cuda *fc)
{
    if (!fc->prof.on || fc->prof.marks < 0) return;
    if (fc->prof.stamps &&
        cudaMemcpy(fc->prof.h_ts, fc->prof.ts, (size_t)fc->prof.marks * sizeof *fc->prof.ts,
                   cudaMemcpyDeviceToHost) != cudaSuccess) {
        fc->prof.marks = -1;
        return;
    }
    for (int i = 1; i < fc->prof.marks; i++) {
        float ms = 0;
        if (fc->prof.stamps) {
            const unsigned long long a = fc->prof.h_ts[i - 1], b = fc->prof.h_ts[i];
            ms = b > a ? (float)((double)(b - a) / 1e6) : 0.0f;
        } else if (cudaEventElapsedTime(&ms, fc->prof.ev[i - 1], fc->prof.ev[i]) != cudaSuccess) {
            continue;
        }
        int r = 0;
        while (r < fc->prof.rows && strcmp(fc->prof.row[r].label, fc->prof.label[i]) != 0) r++;
        if (r == fc->prof.rows) {
            if (r == (int)(sizeof fc->prof.row / sizeof fc->prof.row[0])) continue;
            fc->prof.row[fc->prof.rows++].label = fc->prof.label[i];
        }
        fc->prof.row[r].ms += ms;
    }
    fc->prof.steps++;
    fc->prof.marks = -1;
}

static void prof_print(const mb_fwd_cuda *fc)
{
    if (!fc->prof.on || fc->prof.steps == 0) return;
    double total = 0;
    for (int r = 0; r < fc->prof.rows; r++) total += fc->prof.row[r].ms;
    fprintf(stderr, "cuda decode profile: %llu steps, %u layers, %s, %.1f us a step\n",
            (unsigned long long)fc->prof.steps, fc->cfg.n_layers,
            fc->prof.stamps ? "whole-step graphs, clock stamps between operations (each a launch)"
                            : "no graphs, event gaps",
            1e3 * total / (double)fc->prof.steps);
    fprintf(stderr, "  %-34s %10s %10s %7s\n", "operation", "us/step", "us/layer", "share");
    for (int r = 0; r < fc->prof.rows; r++) {
        double us = 1e3 * fc->prof.row[r].ms / (double)fc->prof.steps;
        fprintf(stderr, "  %-34s %10.1f %10.2f %6.1f%%\n", fc->prof.row[r].label, us,
                us / (fc->cfg.n_layers ? fc->cfg.n_layers : 1), 100.0 * fc->prof.row[r].ms / total);
    }
}

void mb_fwd_cuda_destroy(mb_fwd_cuda *fc)
{
    if (!fc) return;
    cudaSetDevice(fc->device);
    if (fc->stream) cudaStreamSynchronize(fc->stream);
    for (size_t i = 0; i < fc->n_allocs; i++) cudaFree(fc->allocs[i]);
    cudaFreeHost(fc->h_xfer);
    cudaFreeHost(fc->h_moe);
    cudaFreeHost(fc->h_logits);
    cudaFreeHost(fc->h_tok);
    if (fc->copied) cudaEventDestroy(fc->copied);
    if (fc->fork) cudaEventDestroy(fc->fork);
    if (fc->join) cudaEventDestroy(fc->join);
    if (fc->t0) cudaEventDestroy(fc->t0);
    if (fc->t1) cudaEventDestroy(fc->t1);
    for (uint32_t l = 0; l < fc->cfg.n_layers; l++) {
        if (fc->wait && fc->wait[l]) cudaEventDestroy(fc->wait[l]);
        if (fc->resume && fc->resume[l]) cudaEventDestroy(fc->resume[l]);
    }
    free(fc->wait);
    free(fc->resume);
    for (uint32_t l = 0; l < fc->cfg.n_layers; l++) {
        if (fc->graph_b && fc->graph_b[l]) cudaGraphExecDestroy(fc->graph_b[l]);
        if (fc->graph_e && fc->graph_e[l]) cudaGraphExecDestroy(fc->graph_e[l]);
    }
    if (fc->graph_a) cudaGraphExecDestroy(fc->graph_a);
    if (fc->graph_step) cudaGraphExecDestroy(fc->graph_step);
    free(fc->graph_b);
    free(fc->graph_e);
    cudaFreeHost(fc->h_pos);
    mb_cuda_local_moe_destroy(fc->local);
    free(fc->routed_acc);
    free(fc->local_layer_ns);
    prof_print(fc);
    for (int i = 0; fc->prof.ev && i < fc->prof.cap; i++)
        if (fc->prof.ev[i]) cudaEventDestroy(fc->prof.ev[i]);
    free(fc->prof.ev);
    free(fc->prof.label);
    cudaFreeHost(fc->prof.h_ts);
    if (fc->stream) cudaStreamDestroy(fc->stream);
    if (fc->side) cudaStreamDestroy(fc->side);
    cudaGetLastError();
    free(fc->allocs);
    free(fc->layers);
    free(fc);
}

/* ---- the layer loop -------------------------------------------------------- */

/* Kernel calls return a CUDA error code; the first one ends the chunk. */
#define K(expr)                                                                                                    \
    do {                                                                                                           \
        int e_ = (expr);                                                                                           \
        if (e_) return fail(fc, e_, #expr);                                                                        \
    } while (0)

static mb_status fail(mb_fwd_cuda *fc, int e, const char *what)
{
    set_err(fc, "cuda:%d: %s: %s", fc->device, what, mb_kcuda_error_str(e));
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
    prof_mark(fc, nig && l ? "o_proj + experts + residual" : "o_proj + residual");
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
    prof_mark(fc, "attention (+ merge)");
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
            prof_mark(fc, "(+ experts) attn rmsnorm + qkv_proj + head norms + rope + kv store");
            return attention_rest(fc, l, n, pos, p, &s, nig);
        }
        K(mb_kcuda_linear_norm(fc->stream, W->dtype, W->w, W->rows, W->cols, &in, qkv, D->bqkv, 0));
        prof_mark(fc, "(+ experts) attn rmsnorm + qkv_proj");
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
        prof_mark(fc, "(+ experts) attn rmsnorm");
        if (D->wqkv.w) {
            K(linear(fc, &D->wqkv, xn, d, n, qkv, ld, D->bqkv, 0));
        } else {
            K(linear(fc, &D->wq, xn, d, n, qkv, ld, D->bq, 0));
            K(linear(fc, &D->wk, xn, d, n, qkv + fc->q_dim, ld, D->bk, 0));
            K(linear(fc, &D->wv, xn, d, n, qkv + fc->q_dim + fc->kv_dim, ld, D->bv, 0));
        }
        prof_mark(fc, "qkv_proj");
    }
    if (n == 1 && fc->fuse_attn) { /* the head pass inside the attention's blocks */
        K(mb_kcuda_qkp_attention(fc->stream, qkv, ld, D->q_norm, D->k_norm, c->rms_eps, fc->cos,
                                 fc->sin, il, &D->kv, &s, pos, p, fc->att, fc->q_dim, fc->work,
                                 fc->work_floats));
        prof_mark(fc, "head norms + rope + kv store + attention (+ merge)");
        return o_proj(fc, l, n, nig);
    }
    if (p)
        K(mb_kcuda_qk_rope_store_at(fc->stream, qkv, ld, n, c->n_heads, D->q_norm, D->k_norm, c->rms_eps, p, fc->cos,
                                    fc->sin, il, &D->kv));
    else
        K(mb_kcuda_qk_rope_store(fc->stream, qkv, ld, n, c->n_heads, D->q_norm, D->k_norm, c->rms_eps, pos, fc->cos,
                                 fc->sin, il, &D->kv));
    prof_mark(fc, "head norms + rope + kv store");
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
    prof_mark(fc, "attn rmsnorm");
    K(linear(fc, &D->wq, xn, d, n, fc->q, fc->q_dim, D->bq, 0));
    prof_mark(fc, "q_proj");
    K(linear(fc, &D->wk, xn, d, n, fc->k, fc->kv_dim, D->bk, 0));
    prof_mark(fc, "k_proj");
    K(linear(fc, &D->wv, xn, d, n, fc->v, fc->kv_dim, D->bv, 0));
    prof_mark(fc, "v_proj");
    if (c->qk_norm) { /* Qwen3: RMSNorm over each head, before RoPE */
        K(mb_kcuda_rmsnorm(fc->stream, fc->q, c->head_dim, fc->q, c->head_dim, n * c->n_heads, c->head_dim,
                           D->q_norm, c->rms_eps));
        K(mb_kcuda_rmsnorm(fc->stream, fc->k, c->head_dim, fc->k, c->head_dim, n * c->n_kv_heads, c->head_dim,
                           D->k_norm, c->rms_eps));
        prof_mark(fc, "q/k head norms");
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
        prof_mark(fc, "rope q, k");
        K(mb_kcuda_kv_store(fc->stream, &D->kv, pos, n, fc->k, fc->kv_dim, fc->v, fc->kv_dim));
        prof_mark(fc, "kv store");
        K(mb_kcuda_attention(fc->stream, &D->kv, &s, pos, n, fc->q, fc->q_dim, fc->att, fc->q_dim, fc->work,
                             fc->work_floats));
        prof_mark(fc, "attention (+ merge)");
    }
    K(linear(fc, &D->wo, fc->att, fc->q_dim, n, fc->x, d, NULL, 1));
    prof_mark(fc, "o_proj + residual");
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
                                         .xn2_dtype = kcuda_dtype(fc->wire)};
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
            prof_mark(fc, paired           ? "ffn rmsnorm + router + top-k + local pairs"
                          : fc->local_step ? "ffn rmsnorm + router + top-k"
                                           : "ffn rmsnorm + router + top-k (to host)");
            return MB_STATUS_OK;
        }
        if (fc->local_step)
            K(mb_kcuda_rmsnorm(fc->stream, xn, d, fc->x, d, n, c->d_model, D->ffn_norm, c->rms_eps));
        else
            K(mb_kcuda_rmsnorm_copy(fc->stream, xn, d, dst, kcuda_dtype(fc->wire), d, fc->x, d, n,
                                    c->d_model, D->ffn_norm, c->rms_eps));
        prof_mark(fc, fc->local_step ? "ffn rmsnorm" : "ffn rmsnorm (+ to host)");
        K(mb_kcuda_router_topk(fc->stream, R->dtype, R->w, R->rows, R->cols, xn, d, n, fc->rlog, c->top_k, fc->renorm,
                               (int32_t *)(dst + n * d), dst + n * (d + k), fc->route_done));
        prof_mark(fc, fc->local_step ? "router + top-k" : "router + top-k (to host)");
        return MB_STATUS_OK;
    }
    K(mb_kcuda_rmsnorm(fc->stream, xn, d, fc->x, d, n, c->d_model, D->ffn_norm, c->rms_eps));
    prof_mark(fc, "ffn rmsnorm");
    K(linear(fc, &D->router, xn, d, n, fc->rlog, c->n_experts, NULL, 0));
    prof_mark(fc, "router GEMV");
    K(mb_kcuda_route_topk(fc->stream, fc->rlog, n, c->n_experts, c->top_k, fc->renorm, (int32_t *)(xn + n * d),
                          xn + n * (d + k)));
    prof_mark(fc, "top-k");
    cudaError_t e = cudaMemcpyAsync(fc->h_xfer, fc->xfer, (size_t)n * (d + 2 * k) * sizeof(float),
                                    cudaMemcpyDeviceToHost, fc->stream);
    prof_mark(fc, "copy to host (xn|ids|gate)");
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
    prof_mark(fc, "local experts (same device)");
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
        prof_mark(fc, "copy sums to device");
    }
    if (ff) K(linear(fc, &fc->layers[l].sh_down, fc->sh_g, ff, n, fc->moe, d, NULL, 1));
    /* Fused: the next norm (the next layer's, or the final one) adds moe. */
    if (!fc->fuse) K(mb_kcuda_add(fc->stream, fc->x, fc->moe, (size_t)n * d));
    prof_mark(fc, "shared down + residual add");
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
        prof_mark(fc, "shared expert gate/up (overlapped)");
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
    prof_mark(fc, "(idle: host waits for the experts)");
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
                prof_mark(fc, "final norm + lm_head (logits to host)");
                return MB_STATUS_OK;
            }
        } else {
            K(final_norm(fc, n - 1, 1));
            K(linear(fc, W, xn, d, 1, fc->logits_last, V, NULL, 0));
        }
        e = cudaMemcpyAsync(fc->h_logits, fc->logits_last, V * sizeof(float), cudaMemcpyDeviceToHost, fc->stream);
        prof_mark(fc, "final norm + lm_head + logits copy");
        return e == cudaSuccess ? MB_STATUS_OK : fail(fc, e, "copying the logits");
    }
    prof_mark(fc, "final norm + lm_head + logits copy");
    if (e == cudaSuccess && fc->local_step) e = (cudaError_t)mb_cuda_local_moe_flush(fc->local, fc->stream);
    return e == cudaSuccess ? MB_STATUS_OK : fail(fc, e, "copying the logits");
}

/* Everything a chunk of n tokens at pos enqueues, from the token copy to
 * the logits (h_tok and, for graphs, h_pos hold the step's tokens and
 * position). */
static mb_status enqueue_chunk(mb_fwd_cuda *fc, uint32_t n, uint32_t pos, int decode,
                               mb_moe_fn moe_fn, void *moe_ctx, float *logits, float *last_logits)
{
    prof_mark(fc, "start");
    cudaError_t e = cudaMemcpyAsync(fc->tok, fc->h_tok, n * sizeof(int32_t), cudaMemcpyHostToDevice,
                                    fc->stream);
    if (e == cudaSuccess && use_graph(fc, n))
        e = cudaMemcpyAsync(fc->pos_dev, fc->h_pos, sizeof(uint32_t), cudaMemcpyHostToDevice,
                            fc->stream);
    if (e != cudaSuccess) return fail(fc, e, "starting the step");
    K(mb_kcuda_embed(fc->stream, fc->embed.dtype, fc->embed.w, fc->cfg.d_model, fc->tok, n, fc->x));
    prof_mark(fc, "token copy + embed");
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
    prof_collect(fc);
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
        e = dev_alloc(fc, (size_t)fc->chunk_cap * fc->cfg.vocab * sizeof(float),
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
