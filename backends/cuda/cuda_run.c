/* Requests on the CUDA backend. submit validates the pairs on the host
 * against the slot table, copies the request into the pinned staging of a
 * free in-flight entry (so its inputs are consumed when submit returns) and
 * enqueues, on that entry's own stream: one host-to-device copy, the
 * kernels of kernels/cuda/moe.h, one device-to-host copy, framed by two
 * events. poll reports completion from the events, in whatever order the
 * streams finish; fetch copies the result out of pinned staging. Nothing
 * here waits on the device except poll when asked to. */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cuda/cuda_internal.h"

#define MB_CUDA_ALIGN(x) (((x) + 255) & ~(size_t)255)

static void mb_cuda_graphs_drop(mb_cuda_req *r)
{
    for (int i = 0; i < MB_CUDA_GRAPHS; i++)
        if (r->graphs[i].exec) cudaGraphExecDestroy(r->graphs[i].exec);
    memset(r->graphs, 0, sizeof r->graphs);
}

void mb_cuda_req_free(mb_cuda_req *r)
{
    mb_cuda_graphs_drop(r);
    if (r->ws) mb_kcuda_moe_ws_destroy(r->ws);
    if (r->h_in) cudaFreeHost(r->h_in);
    if (r->h_out) cudaFreeHost(r->h_out);
    if (r->d_in) cudaFree(r->d_in);
    if (r->d_out) cudaFree(r->d_out);
    if (r->ev_start) cudaEventDestroy(r->ev_start);
    if (r->ev_end) cudaEventDestroy(r->ev_end);
    if (r->stream) cudaStreamDestroy(r->stream);
    memset(r, 0, sizeof *r);
}

/* Creates an entry's stream, events and workspace on first use. */
static mb_status mb_cuda_req_init(mb_cuda_backend *be, mb_cuda_req *r)
{
    if (r->stream) return MB_STATUS_OK;
    cudaError_t e = cudaStreamCreateWithFlags(&r->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaEventCreate(&r->ev_start);
    if (e == cudaSuccess) e = cudaEventCreate(&r->ev_end);
    if (e == cudaSuccess) {
        int ke = mb_kcuda_moe_ws_create(be->max_slots, &r->ws);
        if (ke) e = (cudaError_t)ke;
    }
    if (e != cudaSuccess) {
        mb_status st = mb_cuda_fail("request setup", e);
        mb_cuda_req_free(r);
        return st;
    }
    return MB_STATUS_OK;
}

/* Grows a pinned host buffer and its device twin to bytes. */
static mb_status mb_cuda_grow(void **h, void **d, size_t *cap, size_t bytes)
{
    if (bytes <= *cap) return MB_STATUS_OK;
    size_t c = *cap ? *cap : ((size_t)1 << 20);
    while (c < bytes)
        c *= 2;
    /* Whatever is queued on the old buffers must finish before they go. */
    cudaDeviceSynchronize();
    if (*h) cudaFreeHost(*h);
    if (*d) cudaFree(*d);
    *h = *d = NULL;
    *cap = 0;
    /* Mapped, so small results can be written by the kernels straight into
     * host memory (see mb_cuda_submit). */
    cudaError_t e = cudaHostAlloc(h, c, cudaHostAllocMapped);
    if (e == cudaSuccess) e = cudaMalloc(d, c);
    if (e != cudaSuccess) return mb_cuda_fail("staging allocation", e);
    *cap = c;
    return MB_STATUS_OK;
}

/* Enqueues copies and kernels of p on r's stream directly. */
static cudaError_t mb_cuda_enqueue(mb_cuda_req *r, const mb_kcuda_moe_problem *p, size_t in_bytes, size_t out_bytes)
{
    cudaError_t e = cudaMemcpyAsync(r->d_in, r->h_in, in_bytes, cudaMemcpyHostToDevice, r->stream);
    if (e == cudaSuccess) e = (cudaError_t)mb_kcuda_moe_enqueue(r->ws, p, r->stream);
    if (e == cudaSuccess && out_bytes && p->out == r->d_out)
        e = cudaMemcpyAsync(r->h_out, r->d_out, out_bytes, cudaMemcpyDeviceToHost, r->stream);
    return e;
}

/* Decode-shaped requests repeat the same shapes layer after layer: their
 * copies and kernels are captured into a CUDA graph once per shape and
 * replayed, one launch instead of seven. Larger requests launch directly
 * (their kernels run long enough that launch costs do not matter). */
static cudaError_t mb_cuda_launch(mb_cuda_backend *be, mb_cuda_req *r, const mb_kcuda_moe_problem *p,
                                  size_t in_bytes, size_t out_bytes)
{
    /* Only the GEMV path is captured: cuBLAS may allocate while capturing. */
    if (!be->use_graphs || p->n_tokens > MB_CUDA_GRAPH_MAX_TOKENS || p->n_pairs == 0 ||
        mb_kcuda_moe_path(p) != MB_KCUDA_PATH_GEMV)
        return mb_cuda_enqueue(r, p, in_bytes, out_bytes);
    mb_cuda_graph *g = NULL, *lru = &r->graphs[0];
    for (int i = 0; i < MB_CUDA_GRAPHS; i++) {
        mb_cuda_graph *c = &r->graphs[i];
        if (c->exec && c->gen == r->gen && c->ws_gen == mb_kcuda_moe_ws_generation(r->ws) &&
            c->in_bytes == in_bytes && c->out_bytes == out_bytes &&
            memcmp(&c->key, p, sizeof *p) == 0) {
            g = c;
            break;
        }
        if (!c->exec || c->last_use < lru->last_use) lru = c;
    }
    if (!g) {
        if (lru->exec) cudaGraphExecDestroy(lru->exec);
        memset(lru, 0, sizeof *lru);
        cudaGraph_t graph = NULL;
        cudaError_t e = cudaStreamBeginCapture(r->stream, cudaStreamCaptureModeThreadLocal);
        if (e != cudaSuccess) return e;
        cudaError_t le = mb_cuda_enqueue(r, p, in_bytes, out_bytes);
        e = cudaStreamEndCapture(r->stream, &graph);
        if (le != cudaSuccess || e != cudaSuccess) {
            if (graph) cudaGraphDestroy(graph);
            return le != cudaSuccess ? le : e;
        }
        e = cudaGraphInstantiate(&lru->exec, graph, 0);
        cudaGraphDestroy(graph);
        if (e != cudaSuccess) {
            lru->exec = NULL;
            return e;
        }
        lru->key = *p;
        lru->in_bytes = in_bytes;
        lru->out_bytes = out_bytes;
        lru->gen = r->gen;
        lru->ws_gen = mb_kcuda_moe_ws_generation(r->ws);
        g = lru;
    }
    g->last_use = ++r->graph_uses;
    return cudaGraphLaunch(g->exec, r->stream);
}

static int mb_cuda_cmp_i32(const void *a, const void *b)
{
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* The request's experts in ascending slot order with their pair counts,
 * into be->plan_slot / plan_count; *n receives how many. The per-slot
 * counters go back to zero. */
static mb_status mb_cuda_plan(mb_cuda_backend *be, const mb_proto_expert_req *req, uint32_t *n)
{
    if (req->n_pairs > be->plan_cap) {
        size_t cap = be->plan_cap ? be->plan_cap : 256;
        while (cap < req->n_pairs)
            cap *= 2;
        int32_t *a = realloc(be->plan_slot, cap * sizeof *a);
        if (a) be->plan_slot = a;
        int32_t *c = realloc(be->plan_count, cap * sizeof *c);
        if (c) be->plan_count = c;
        if (!a || !c) return MB_STATUS_NOMEM;
        be->plan_cap = cap;
    }
    uint32_t ne = 0;
    for (uint32_t i = 0; i < req->n_pairs; i++) {
        const uint32_t slot = req->pairs[i].slot;
        if (be->plan_by_slot[slot]++ == 0) be->plan_slot[ne++] = (int32_t)slot;
    }
    qsort(be->plan_slot, ne, sizeof *be->plan_slot, mb_cuda_cmp_i32);
    for (uint32_t e = 0; e < ne; e++) {
        be->plan_count[e] = be->plan_by_slot[be->plan_slot[e]];
        be->plan_by_slot[be->plan_slot[e]] = 0;
    }
    *n = ne;
    return MB_STATUS_OK;
}

mb_status mb_cuda_submit(void *state, uint64_t tag, const mb_proto_expert_req *req)
{
    mb_cuda_backend *be = state;
    if (!be || !req) return MB_STATUS_INVALID_ARG;
    if (!mb_dtype_valid(req->dtype)) return MB_STATUS_BAD_DTYPE;
    uint32_t d_ff = 0;
    mb_dtype wdtype[MB_PROTO_MATS]; /* one element dtype for all three, or quantized ones */
    mb_status st = mb_route_validate(&be->table, req, &d_ff, wdtype);
    if (st != MB_STATUS_OK) return st;

    mb_cuda_req *r = NULL;
    unsigned busy = 0;
    for (unsigned i = 0; i < be->max_inflight; i++) {
        if (be->reqs[i].used) busy++;
        else if (!r) r = &be->reqs[i];
    }
    if (!r || busy >= be->max_inflight) return MB_STATUS_AGAIN;

    /* Sizes: counts | pairs | activations, each piece 256-aligned. */
    const size_t esz = mb_dtype_size(req->dtype);
    size_t act_bytes = 0, out_bytes = 0;
    if (__builtin_mul_overflow((size_t)req->n_tokens, (size_t)req->d_model, &act_bytes) ||
        __builtin_mul_overflow(act_bytes, esz, &act_bytes))
        return MB_STATUS_OVERFLOW;
    out_bytes = act_bytes;
    const size_t counts_bytes = (size_t)req->n_tokens * sizeof(uint16_t);
    const size_t pairs_off = MB_CUDA_ALIGN(counts_bytes);
    const size_t act_off = pairs_off + MB_CUDA_ALIGN((size_t)req->n_pairs * sizeof(mb_proto_pair));
    /* Requests with several pairs per expert may take the cuBLAS path,
     * whose group sizes the host plans: experts in slot order, counts, and
     * on the device the slots and first rows after the activations. */
    const uint32_t layer_experts =
        req->layer < be->n_layers_cap && be->layer_experts ? be->layer_experts[req->layer] : 0;
    const uint32_t max_experts = layer_experts && layer_experts < req->n_pairs ? layer_experts : req->n_pairs;
    const int want_plan = req->n_pairs > 2u * max_experts || be->path == MB_KCUDA_PATH_CUBLAS;
    uint32_t plan_n = 0;
    if (want_plan && req->n_pairs && (st = mb_cuda_plan(be, req, &plan_n)) != MB_STATUS_OK) return st;
    const size_t plan_off = MB_CUDA_ALIGN(act_off + act_bytes);
    const size_t in_bytes = plan_n ? plan_off + (2 * (size_t)plan_n + 1) * sizeof(int32_t) : act_off + act_bytes;
    /* The limit is on activations and results (caps.max_request_bytes);
     * pair arrays and the plan come on top. */
    if (act_bytes > be->staging_max || out_bytes > be->staging_max) return MB_STATUS_FULL;

    cudaSetDevice(be->device);
    if ((st = mb_cuda_req_init(be, r)) != MB_STATUS_OK) return st;
    if (in_bytes > r->in_cap || out_bytes > r->out_cap) {
        /* Staging is about to move (even if growing then fails): no
         * captured graph may replay against the old buffers. */
        mb_cuda_graphs_drop(r);
        r->gen++;
    }
    if ((st = mb_cuda_grow(&r->h_in, &r->d_in, &r->in_cap, in_bytes)) != MB_STATUS_OK) return st;
    if ((st = mb_cuda_grow(&r->h_out, &r->d_out, &r->out_cap, out_bytes ? out_bytes : 1)) != MB_STATUS_OK)
        return st;
    if (be->uploads_pending) {
        /* Weights (and slot table entries) must be on the device first. */
        cudaError_t e = cudaStreamSynchronize(be->upload);
        be->uploads_pending = 0;
        if (e != cudaSuccess) {
            st = mb_cuda_fail("weight upload", e);
            if (be->upload_status == MB_STATUS_OK) be->upload_status = st;
            return st;
        }
    }
    /* Zeroed first: graphs are looked up by comparing whole problems. */
    mb_kcuda_moe_problem p;
    memset(&p, 0, sizeof p);
    p.n_tokens = req->n_tokens;
    p.n_pairs = req->n_pairs;
    p.d_model = req->d_model;
    p.d_ff = d_ff;
    p.max_slots = be->max_slots;
    p.layer_experts = layer_experts;
    p.payload = (int)req->dtype;
    p.wdtype = (int)wdtype[MB_PROTO_MAT_GATE];
    if (mb_dtype_is_quant(wdtype[MB_PROTO_MAT_GATE])) {
        p.wdtype_up = (int)wdtype[MB_PROTO_MAT_UP];
        p.wdtype_down = (int)wdtype[MB_PROTO_MAT_DOWN];
    }
    p.path = be->path;
    p.slots = be->d_slots;
    p.act = (char *)r->d_in + act_off;
    p.pair_counts = (const uint16_t *)r->d_in;
    p.pairs = (char *)r->d_in + pairs_off;
    /* Decode-sized results (a few KiB) are written by the last kernel
     * straight into mapped pinned memory: no device-to-host copy to wait
     * for. Larger ones go through device memory and one copy. */
    p.out = r->d_out;
    void *h_out_dev = NULL;
    if (req->n_tokens <= MB_CUDA_GRAPH_MAX_TOKENS && cudaHostGetDevicePointer(&h_out_dev, r->h_out, 0) == cudaSuccess)
        p.out = h_out_dev;
    else
        cudaGetLastError();
    if (plan_n) {
        p.plan_experts = plan_n;
        p.plan_slot = be->plan_slot;
        p.plan_count = be->plan_count;
        p.slots_host = be->h_slots;
        p.plan_dev = (const int32_t *)((char *)r->d_in + plan_off);
    }
    if (req->n_pairs) {
        /* Pair counts are the peer's to choose: a request whose scratch
         * would pass the workspace limit is refused, not allocated. */
        if (mb_kcuda_moe_ws_need(&p) > be->ws_max) return MB_STATUS_FULL;
        int ke = mb_kcuda_moe_ws_reserve(r->ws, &p);
        if (ke) return mb_cuda_fail("workspace", (cudaError_t)ke);
    }

    /* The inputs are consumed here: the peer's buffer is free once this
     * copy into pinned staging is done. */
    if (counts_bytes) memcpy(r->h_in, req->pair_counts, counts_bytes);
    if (req->n_pairs) memcpy((char *)r->h_in + pairs_off, req->pairs, (size_t)req->n_pairs * sizeof(mb_proto_pair));
    if (act_bytes) memcpy((char *)r->h_in + act_off, req->act, act_bytes);
    if (plan_n) {
        int32_t *pl = (int32_t *)((char *)r->h_in + plan_off);
        memcpy(pl, be->plan_slot, plan_n * sizeof *pl);
        int32_t off = 0;
        for (uint32_t e = 0; e < plan_n; e++) {
            pl[plan_n + e] = off;
            off += be->plan_count[e];
        }
        pl[2 * plan_n] = (int32_t)req->n_pairs;
    }

    cudaError_t e = cudaEventRecord(r->ev_start, r->stream);
    if (e == cudaSuccess) e = mb_cuda_launch(be, r, &p, in_bytes, out_bytes);
    if (e == cudaSuccess) e = cudaEventRecord(r->ev_end, r->stream);
    if (e != cudaSuccess) {
        st = mb_cuda_fail("request launch", e);
        cudaStreamSynchronize(r->stream);
        return st;
    }
    r->used = 1;
    r->consumed_reported = 0;
    r->done = 0;
    r->status = MB_STATUS_OK;
    r->tag = tag;
    r->seq = be->next_seq++;
    r->n_tokens = req->n_tokens;
    r->d_model = req->d_model;
    r->dtype = req->dtype;
    r->out_bytes = out_bytes;
    return MB_STATUS_OK;
}

/* One pass over the entries: the oldest unreported CONSUMED, else the
 * oldest finished request. Returns TIMEOUT when there is nothing to say. */
static mb_status mb_cuda_poll_once(mb_cuda_backend *be, mb_backend_event *ev)
{
    mb_cuda_req *pick = NULL;
    for (unsigned i = 0; i < be->max_inflight; i++) {
        mb_cuda_req *r = &be->reqs[i];
        if (r->used && !r->consumed_reported && (!pick || r->seq < pick->seq)) pick = r;
    }
    if (pick) {
        pick->consumed_reported = 1;
        *ev = (mb_backend_event){.kind = MB_BACKEND_EVENT_CONSUMED, .tag = pick->tag, .status = MB_STATUS_OK};
        return MB_STATUS_OK;
    }
    for (unsigned i = 0; i < be->max_inflight; i++) {
        mb_cuda_req *r = &be->reqs[i];
        if (!r->used || r->done) continue;
        cudaError_t e = cudaEventQuery(r->ev_end);
        if (e == cudaErrorNotReady) continue;
        if (!pick || r->seq < pick->seq) pick = r;
    }
    if (!pick) return MB_STATUS_TIMEOUT;
    cudaError_t e = cudaEventQuery(pick->ev_end);
    float ms = 0.0f;
    if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, pick->ev_start, pick->ev_end);
    pick->done = 1;
    pick->status = e == cudaSuccess ? MB_STATUS_OK : mb_cuda_fail("request", e);
    *ev = (mb_backend_event){.kind = MB_BACKEND_EVENT_DONE, .tag = pick->tag, .status = pick->status,
                             .compute_ns = (uint64_t)((double)ms * 1e6)};
    if (pick->status != MB_STATUS_OK) pick->used = 0; /* a failed request is forgotten at once */
    return MB_STATUS_OK;
}

mb_status mb_cuda_poll(void *state, int64_t timeout_ns, mb_backend_event *ev)
{
    mb_cuda_backend *be = state;
    if (!be || !ev) return MB_STATUS_INVALID_ARG;
    cudaSetDevice(be->device);
    const uint64_t t0 = mb_cuda_now_ns();
    for (;;) {
        mb_status st = mb_cuda_poll_once(be, ev);
        if (st != MB_STATUS_TIMEOUT) return st;
        int any = 0;
        for (unsigned i = 0; i < be->max_inflight; i++)
            any |= be->reqs[i].used && !be->reqs[i].done;
        if (!any || timeout_ns == 0) return MB_STATUS_TIMEOUT;
        if (timeout_ns > 0 && mb_cuda_now_ns() - t0 >= (uint64_t)timeout_ns) return MB_STATUS_TIMEOUT;
        /* Expert requests take tens of microseconds and up: spin politely. */
        sched_yield();
    }
}

mb_status mb_cuda_fetch(void *state, uint64_t tag, void *out)
{
    mb_cuda_backend *be = state;
    if (!be) return MB_STATUS_INVALID_ARG;
    for (unsigned i = 0; i < be->max_inflight; i++) {
        mb_cuda_req *r = &be->reqs[i];
        if (!r->used || r->tag != tag) continue;
        if (!r->done) return MB_STATUS_AGAIN;
        if (r->out_bytes) {
            if (!out) return MB_STATUS_INVALID_ARG;
            memcpy(out, r->h_out, r->out_bytes);
        }
        r->used = 0;
        return MB_STATUS_OK;
    }
    return MB_STATUS_INVALID_ARG;
}
