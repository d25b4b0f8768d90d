/* The dense layers on a CUDA device, created and destroyed: the device
 * opened and checked for memory, the weights uploaded once in their
 * checkpoint dtype (with progress on a terminal), the RoPE tables, the KV
 * cache, the scratch and pinned host buffers, streams and events. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef MB_HAVE_CUDA

#include "broker/device/forward_cuda_internal.h"

int mb_fwd_cuda_built(void)
{
    return 1;
}

void mb_fwdc_set_err(mb_fwd_cuda *fc, const char *fmt, ...)
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

cudaError_t mb_fwdc_dev_alloc(mb_fwd_cuda *fc, size_t bytes, void **out)
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

int mb_fwdc_kcuda_dtype(mb_dtype d)
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
    int dt = mb_fwdc_kcuda_dtype(t->dtype);
    if (dt < 0) {
        mb_fwdc_set_err(fc, "--device cuda:%d: layer %u %s is %s; the GPU coordinator takes f32, f16 and bf16 dense weights",
                fc->device, layer, what, mb_dtype_name(t->dtype));
        return MB_STATUS_BAD_DTYPE;
    }
    uint64_t bytes = mat_bytes(t);
    void *d = NULL;
    cudaError_t e = mb_fwdc_dev_alloc(fc, bytes, &d);
    if (e == cudaSuccess) e = cudaMemcpy(d, t->data, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        mb_fwdc_set_err(fc, "--device cuda:%d: uploading layer %u %s: %s", fc->device, layer, what, cudaGetErrorString(e));
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
    cudaError_t e = mb_fwdc_dev_alloc(fc, n * sizeof(float), &d);
    if (e == cudaSuccess) e = cudaMemcpy(d, h, n * sizeof(float), cudaMemcpyHostToDevice);
    free(h);
    if (e != cudaSuccess) {
        mb_fwdc_set_err(fc, "--device cuda:%d: uploading a norm or bias: %s", fc->device, cudaGetErrorString(e));
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
    int dt = mb_fwdc_kcuda_dtype(L->wq.dtype);
    if (dt < 0) {
        mb_fwdc_set_err(fc, "--device cuda:%d: layer %u q_proj is %s; the GPU coordinator takes f32, f16 and bf16 dense weights",
                fc->device, layer, mb_dtype_name(L->wq.dtype));
        return MB_STATUS_BAD_DTYPE;
    }
    uint64_t bytes = 0;
    for (int i = 0; i < 3; i++) bytes += mat_bytes(part[i]);
    char *d = NULL;
    cudaError_t e = mb_fwdc_dev_alloc(fc, bytes, (void **)&d);
    for (uint64_t off = 0, i = 0; e == cudaSuccess && i < 3; off += mat_bytes(part[i]), i++)
        e = cudaMemcpy(d + off, part[i]->data, mat_bytes(part[i]), cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        mb_fwdc_set_err(fc, "--device cuda:%d: uploading layer %u q/k/v_proj: %s", fc->device, layer, cudaGetErrorString(e));
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
    cudaError_t e = mb_fwdc_dev_alloc(fc, fc->qkv_dim * sizeof(float), (void **)&D->bqkv);
    if (e == cudaSuccess) e = cudaMemcpy(D->bqkv, h, fc->qkv_dim * sizeof(float), cudaMemcpyHostToDevice);
    free(h);
    if (e != cudaSuccess) {
        mb_fwdc_set_err(fc, "--device cuda:%d: uploading the q/k/v biases: %s", fc->device, cudaGetErrorString(e));
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
    cudaError_t e = mb_fwdc_dev_alloc(fc, bytes, (void **)&fc->cos);
    if (e == cudaSuccess) e = mb_fwdc_dev_alloc(fc, bytes, (void **)&fc->sin);
    if (e == cudaSuccess) e = cudaMemcpy(fc->cos, r.cos, bytes, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemcpy(fc->sin, r.sin, bytes, cudaMemcpyHostToDevice);
    mb_rope_fini(&r);
    if (e != cudaSuccess) {
        mb_fwdc_set_err(fc, "--device cuda:%d: RoPE tables: %s", fc->device, cudaGetErrorString(e));
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
    cudaError_t e = mb_fwdc_dev_alloc(fc, cache_bytes(fc), (void **)&kv);
    if (e != cudaSuccess) {
        mb_fwdc_set_err(fc, "--device cuda:%d: KV cache for %u positions (%.2f GiB): %s", fc->device, fc->max_ctx,
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
        cudaError_t e = mb_fwdc_dev_alloc(fc, bufs[i].floats * sizeof(float), (void **)bufs[i].p);
        if (e != cudaSuccess) {
            mb_fwdc_set_err(fc, "--device cuda:%d: scratch for %zu tokens: %s", fc->device, n, cudaGetErrorString(e));
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
        mb_fwdc_set_err(fc, "--device cuda:%d: zeroing the kernels' counters: %s", fc->device,
                cudaGetErrorString(e));
        return MB_STATUS_DEVICE;
    }
    e = cudaMallocHost((void **)&fc->h_xfer, xfer * sizeof(float));
    if (e == cudaSuccess) e = cudaMallocHost((void **)&fc->h_moe, n * d * sizeof(float));
    if (e == cudaSuccess) e = cudaMallocHost((void **)&fc->h_logits, (size_t)c->vocab * sizeof(float));
    if (e == cudaSuccess) e = cudaMallocHost((void **)&fc->h_tok, n * sizeof(int32_t));
    if (e != cudaSuccess) {
        mb_fwdc_set_err(fc, "--device cuda:%d: pinned host buffers: %s", fc->device, cudaGetErrorString(e));
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
        mb_fwdc_set_err(fc,
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
        mb_fwdc_set_err(fc, "--device cuda:%d: no CUDA device (%s)", fc->device,
                e != cudaSuccess ? cudaGetErrorString(e) : "the driver reports none");
        cudaGetLastError();
        return MB_STATUS_DEVICE;
    }
    if (fc->device >= count) {
        mb_fwdc_set_err(fc, "--device cuda:%d: this host has %d CUDA device%s (cuda:0..%d)", fc->device, count,
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
            e = mb_fwdc_dev_alloc(fc, (size_t)fc->prof.cap * sizeof *fc->prof.ts, (void **)&fc->prof.ts);
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
    if (e == cudaSuccess) e = mb_fwdc_dev_alloc(fc, sizeof(uint32_t), (void **)&fc->pos_dev);
    if (e == cudaSuccess) e = cudaMallocHost((void **)&fc->h_pos, sizeof(uint32_t));
    fc->wait = calloc(fc->cfg.n_layers, sizeof *fc->wait);
    fc->resume = calloc(fc->cfg.n_layers, sizeof *fc->resume);
    if (!fc->wait || !fc->resume) return MB_STATUS_NOMEM;
    for (uint32_t l = 0; e == cudaSuccess && l < fc->cfg.n_layers; l++) {
        e = cudaEventCreate(&fc->wait[l]);
        if (e == cudaSuccess) e = cudaEventCreate(&fc->resume[l]);
    }
    if (e != cudaSuccess) {
        mb_fwdc_set_err(fc, "--device cuda:%d: %s", fc->device, cudaGetErrorString(e));
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
    mb_fwdc_prof_print(fc);
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

#endif
