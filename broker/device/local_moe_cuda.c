/* Experts on the coordinator's own GPU, from its buffers: see
 * local_moe_cuda.h. */
#include "broker/device/local_moe_cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef MB_HAVE_CUDA

mb_status mb_cuda_local_moe_create(int device, const mb_cuda_local_layer *layers, uint32_t n_layers,
                                   uint32_t n_experts, uint32_t top_k, uint32_t d_model, uint32_t max_tokens,
                                   mb_cuda_local_moe **out, char *err, size_t err_cap)
{
    (void)layers, (void)n_layers, (void)n_experts, (void)top_k, (void)d_model, (void)max_tokens, (void)out;
    snprintf(err, err_cap, "cuda:%d: this build has no CUDA support", device);
    return MB_STATUS_UNSUPPORTED;
}

void mb_cuda_local_moe_destroy(mb_cuda_local_moe *lm)
{
    (void)lm;
}

int mb_cuda_local_moe_enqueue(mb_cuda_local_moe *lm, void *stream, uint32_t layer, const float *x,
                              const int32_t *ids, const float *gate, uint32_t n, float *out)
{
    (void)lm, (void)stream, (void)layer, (void)x, (void)ids, (void)gate, (void)n, (void)out;
    return 1;
}

int mb_cuda_local_moe_enqueue_paired(mb_cuda_local_moe *lm, void *stream, uint32_t layer,
                                     const float *x, uint32_t n, float *out)
{
    (void)lm, (void)stream, (void)layer, (void)x, (void)n, (void)out;
    return 1;
}

int mb_cuda_local_moe_route_local(const mb_cuda_local_moe *lm, uint32_t layer,
                                  mb_kcuda_route_local *out)
{
    (void)lm, (void)layer, (void)out;
    return 1;
}

int mb_cuda_local_moe_mark(mb_cuda_local_moe *lm, void *stream, uint32_t layer, int end)
{
    (void)lm, (void)stream, (void)layer, (void)end;
    return 1;
}

int mb_cuda_local_moe_flush(mb_cuda_local_moe *lm, void *stream)
{
    (void)lm, (void)stream;
    return 1;
}

const uint32_t *mb_cuda_local_moe_routed(const mb_cuda_local_moe *lm)
{
    (void)lm;
    return NULL;
}

uint64_t mb_cuda_local_moe_take_ns(mb_cuda_local_moe *lm, uint32_t n_layers, uint64_t *layer_ns)
{
    (void)lm, (void)n_layers, (void)layer_ns;
    return 0;
}

#else

#include <cuda_runtime_api.h>

#include "kernels/cuda/dense.h"
#include "kernels/cuda/moe.h"
#include "protocol/dtype.h"

typedef struct {
    mb_backend_device_view view;
} local_layer;

struct mb_cuda_local_moe {
    int device;
    uint32_t n_layers, n_experts, top_k, d_model, max_tokens;
    local_layer *layers;
    int32_t *slot_of;    /* device [n_layers][n_experts] */
    uint16_t *counts;    /* device [max_tokens] */
    void *pairs;         /* device [max_tokens * top_k] of {u32 slot, f32 gate} */
    /* One device buffer and its pinned twin, so that the step's flush is
     * one launch: stamps [n_layers][2] (the device clock around each
     * layer's experts), then routed [n_layers][n_experts] (counters); the
     * flush copies both and resets them. */
    void *state, *h_state;
    unsigned long long *stamps, *h_stamps;
    uint32_t *routed, *h_routed;
    mb_kcuda_moe_ws *ws;
};

static size_t state_bytes(const mb_cuda_local_moe *lm)
{
    return 2 * (size_t)lm->n_layers * sizeof(unsigned long long) +
           (size_t)lm->n_layers * lm->n_experts * sizeof(uint32_t);
}

static void problem(const mb_cuda_local_moe *lm, uint32_t layer, uint32_t n, const float *x, float *out,
                    mb_kcuda_moe_problem *p)
{
    const mb_backend_device_view *v = &lm->layers[layer].view;
    memset(p, 0, sizeof *p);
    p->n_tokens = n;
    p->n_pairs = n * lm->top_k;
    p->d_model = lm->d_model;
    p->d_ff = v->d_ff;
    p->max_slots = v->max_slots;
    p->layer_experts = v->layer_experts;
    p->payload = MB_KCUDA_F32;
    p->wdtype = (int)v->wdtype[MB_PROTO_MAT_GATE];
    if (mb_dtype_is_quant(v->wdtype[MB_PROTO_MAT_GATE])) {
        p->wdtype_up = (int)v->wdtype[MB_PROTO_MAT_UP];
        p->wdtype_down = (int)v->wdtype[MB_PROTO_MAT_DOWN];
    }
    p->path = MB_KCUDA_PATH_AUTO;
    p->slots = (const mb_kcuda_expert *)v->slots;
    p->act = x;
    p->pair_counts = lm->counts;
    p->pairs = lm->pairs;
    p->out = out;
}

mb_status mb_cuda_local_moe_create(int device, const mb_cuda_local_layer *layers, uint32_t n_layers,
                                   uint32_t n_experts, uint32_t top_k, uint32_t d_model, uint32_t max_tokens,
                                   mb_cuda_local_moe **out, char *err, size_t err_cap)
{
    if (!layers || !out || n_layers == 0 || n_experts == 0 || top_k == 0 || max_tokens == 0)
        return MB_STATUS_INVALID_ARG;
    for (uint32_t l = 0; l < n_layers; l++) {
        const mb_backend_device_view *v = &layers[l].view;
        if (v->device != device || v->d_model != d_model || !v->slots) {
            snprintf(err, err_cap, "layer %u's experts are not on cuda:%d in this shape", l, device);
            return MB_STATUS_UNSUPPORTED;
        }
        for (uint32_t e = 0; e < n_experts; e++)
            if (layers[l].slot_of[e] >= v->max_slots) {
                snprintf(err, err_cap, "layer %u expert %u: slot %u past the backend's %u", l, e,
                         layers[l].slot_of[e], v->max_slots);
                return MB_STATUS_INVALID_ARG;
            }
    }
    mb_cuda_local_moe *lm = calloc(1, sizeof *lm);
    if (!lm) return MB_STATUS_NOMEM;
    lm->device = device;
    lm->n_layers = n_layers;
    lm->n_experts = n_experts;
    lm->top_k = top_k;
    lm->d_model = d_model;
    lm->max_tokens = max_tokens;
    lm->layers = calloc(n_layers, sizeof *lm->layers);
    const size_t n_map = (size_t)n_layers * n_experts;
    int32_t *map = malloc(n_map * sizeof *map);
    mb_status st = lm->layers && map ? MB_STATUS_OK : MB_STATUS_NOMEM;
    cudaError_t e = cudaSetDevice(device);
    const char *what = "selecting the device";
    for (uint32_t l = 0; st == MB_STATUS_OK && e == cudaSuccess && l < n_layers; l++) {
        lm->layers[l].view = layers[l].view;
        for (uint32_t x = 0; x < n_experts; x++)
            map[(size_t)l * n_experts + x] = (int32_t)layers[l].slot_of[x];
    }
    if (st == MB_STATUS_OK && e == cudaSuccess) {
        what = "allocating the routing buffers";
        e = cudaMalloc((void **)&lm->slot_of, n_map * sizeof(int32_t));
        if (e == cudaSuccess) e = cudaMalloc((void **)&lm->counts, max_tokens * sizeof(uint16_t));
        if (e == cudaSuccess) e = cudaMalloc(&lm->pairs, (size_t)max_tokens * top_k * 8);
        if (e == cudaSuccess) e = cudaMalloc(&lm->state, state_bytes(lm));
        if (e == cudaSuccess) e = cudaMemset(lm->state, 0, state_bytes(lm));
        if (e == cudaSuccess) e = cudaMallocHost(&lm->h_state, state_bytes(lm));
        if (e == cudaSuccess) {
            lm->stamps = lm->state;
            lm->h_stamps = lm->h_state;
            lm->routed = (uint32_t *)(lm->stamps + 2 * (size_t)n_layers);
            lm->h_routed = (uint32_t *)(lm->h_stamps + 2 * (size_t)n_layers);
        }
        if (e == cudaSuccess) e = cudaMemcpy(lm->slot_of, map, n_map * sizeof(int32_t), cudaMemcpyHostToDevice);
    }
    if (st == MB_STATUS_OK && e == cudaSuccess) {
        memset(lm->h_state, 0, state_bytes(lm));
        what = "creating the expert workspace";
        uint32_t max_slots = 0;
        for (uint32_t l = 0; l < n_layers; l++)
            if (layers[l].view.max_slots > max_slots) max_slots = layers[l].view.max_slots;
        int ke = mb_kcuda_moe_ws_create(max_slots, &lm->ws);
        /* The largest step of every layer (they may differ in d_ff). */
        for (uint32_t l = 0; !ke && l < n_layers; l++) {
            mb_kcuda_moe_problem p;
            problem(lm, l, max_tokens, NULL, NULL, &p);
            ke = mb_kcuda_moe_ws_reserve(lm->ws, &p);
        }
        e = (cudaError_t)ke;
    }
    free(map);
    if (st == MB_STATUS_OK && e != cudaSuccess) {
        snprintf(err, err_cap, "cuda:%d: %s for the local experts: %s", device, what, cudaGetErrorString(e));
        st = e == cudaErrorMemoryAllocation ? MB_STATUS_NOMEM : MB_STATUS_DEVICE;
        cudaGetLastError();
    }
    if (st != MB_STATUS_OK) {
        mb_cuda_local_moe_destroy(lm);
        return st;
    }
    *out = lm;
    return MB_STATUS_OK;
}

void mb_cuda_local_moe_destroy(mb_cuda_local_moe *lm)
{
    if (!lm) return;
    cudaSetDevice(lm->device);
    cudaDeviceSynchronize();
    mb_kcuda_moe_ws_destroy(lm->ws);
    cudaFree(lm->slot_of);
    cudaFree(lm->counts);
    cudaFree(lm->pairs);
    cudaFree(lm->state);
    cudaFreeHost(lm->h_state);
    cudaGetLastError();
    free(lm->layers);
    free(lm);
}

int mb_cuda_local_moe_enqueue_paired(mb_cuda_local_moe *lm, void *stream, uint32_t layer,
                                     const float *x, uint32_t n, float *out)
{
    if (!lm || layer >= lm->n_layers || n == 0 || n > lm->max_tokens)
        return (int)cudaErrorInvalidValue;
    mb_kcuda_moe_problem p;
    problem(lm, layer, n, x, out, &p);
    int e = mb_kcuda_moe_ws_reserve(lm->ws, &p); /* reserved at create: a check, no allocation */
    if (!e) e = mb_kcuda_moe_enqueue(lm->ws, &p, stream);
    return e;
}

int mb_cuda_local_moe_route_local(const mb_cuda_local_moe *lm, uint32_t layer,
                                  mb_kcuda_route_local *out)
{
    if (!lm || !out || layer >= lm->n_layers) return (int)cudaErrorInvalidValue;
    *out = (mb_kcuda_route_local){.slot_of = lm->slot_of + (size_t)layer * lm->n_experts,
                                  .counts = lm->counts,
                                  .pairs = lm->pairs,
                                  .routed = lm->routed + (size_t)layer * lm->n_experts,
                                  .stamp = lm->stamps + 2 * (size_t)layer};
    return 0;
}

int mb_cuda_local_moe_enqueue(mb_cuda_local_moe *lm, void *stream, uint32_t layer, const float *x,
                              const int32_t *ids, const float *gate, uint32_t n, float *out)
{
    mb_kcuda_route_local loc;
    if (!lm || layer >= lm->n_layers || n == 0 || n > lm->max_tokens)
        return (int)cudaErrorInvalidValue;
    int e = mb_cuda_local_moe_route_local(lm, layer, &loc);
    if (!e)
        e = mb_kcuda_local_pairs(stream, ids, gate, n, lm->top_k, loc.slot_of, loc.counts,
                                 loc.pairs, loc.routed);
    return e ? e : mb_cuda_local_moe_enqueue_paired(lm, stream, layer, x, n, out);
}

int mb_cuda_local_moe_mark(mb_cuda_local_moe *lm, void *stream, uint32_t layer, int end)
{
    if (!lm || layer >= lm->n_layers) return (int)cudaErrorInvalidValue;
    return mb_kcuda_stamp(stream, lm->stamps + 2 * (size_t)layer + (end ? 1 : 0));
}

int mb_cuda_local_moe_flush(mb_cuda_local_moe *lm, void *stream)
{
    if (!lm) return (int)cudaErrorInvalidValue;
    /* Stamps and counters to the host, and both reset, in one launch. */
    return mb_kcuda_drain(stream, lm->state, lm->h_state, state_bytes(lm) / sizeof(uint32_t), 0);
}

const uint32_t *mb_cuda_local_moe_routed(const mb_cuda_local_moe *lm)
{
    return lm ? lm->h_routed : NULL;
}

uint64_t mb_cuda_local_moe_take_ns(mb_cuda_local_moe *lm, uint32_t n_layers, uint64_t *layer_ns)
{
    if (!lm) return 0;
    uint64_t ns = 0;
    for (uint32_t l = 0; l < n_layers && l < lm->n_layers; l++) {
        const unsigned long long t0 = lm->h_stamps[2 * l], t1 = lm->h_stamps[2 * l + 1];
        const uint64_t d =
            t1 > t0 ? t1 - t0 : 0; /* a layer not marked in the step left both as they were */
        ns += d;
        if (layer_ns) layer_ns[l] += d;
    }
    memset(lm->h_stamps, 0, 2 * (size_t)lm->n_layers * sizeof *lm->h_stamps);
    return ns;
}

#endif
