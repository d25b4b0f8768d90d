/* Private state of the CUDA backend, shared by its files: cuda_backend.c
 * (open, close, capabilities), cuda_weights.c (expert slots in device
 * memory, uploads through pinned staging) and cuda_run.c (requests: pinned
 * staging, one stream each, completion by event). The arithmetic is in
 * kernels/cuda/. */
#ifndef MB_BACKENDS_CUDA_CUDA_INTERNAL_H
#define MB_BACKENDS_CUDA_CUDA_INTERNAL_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "backends/backend.h"
#include "backends/route_plan.h"
#include "kernels/cuda/moe.h"

#define MB_CUDA_DEFAULT_SLOTS 4096u
#define MB_CUDA_MAX_SLOTS (1u << 20)
#define MB_CUDA_UPLOAD_BUFS 2
#define MB_CUDA_UPLOAD_BYTES ((size_t)64 << 20)
#define MB_CUDA_ARENA_BYTES ((size_t)256 << 20)
#define MB_CUDA_DEFAULT_STAGING ((uint64_t)256 << 20)

/* A piece of device memory that slots are carved from. */
typedef struct mb_cuda_arena {
    struct mb_cuda_arena *next;
    char *base;
    size_t bytes, used;
} mb_cuda_arena;

/* Device memory of one slot: gate, up, down packed, expert_bytes long. */
typedef struct {
    char *mem;
    size_t bytes;
} mb_cuda_slot_mem;

/* A captured decode-shaped request (copies and kernels) for replay. */
#define MB_CUDA_GRAPHS 8
#define MB_CUDA_GRAPH_MAX_TOKENS 64
typedef struct {
    mb_kcuda_moe_problem key; /* every field that shapes the launches */
    size_t in_bytes, out_bytes;
    uint64_t gen;             /* staging generation when captured */
    uint64_t ws_gen;          /* workspace generation when captured */
    uint64_t last_use;
    cudaGraphExec_t exec;
} mb_cuda_graph;

/* One request in flight. Staging layout (host and device alike):
 * pair_counts at 0, pairs at pairs_off, activations at act_off. */
typedef struct {
    int used;
    int consumed_reported;
    int done;       /* DONE reported by poll */
    mb_status status;
    uint64_t tag;
    uint64_t seq;   /* submission order */
    uint32_t n_tokens, d_model;
    mb_dtype dtype;
    size_t out_bytes;
    cudaStream_t stream;
    cudaEvent_t ev_start, ev_end;
    mb_kcuda_moe_ws *ws;
    void *h_in, *h_out; /* pinned */
    void *d_in, *d_out;
    size_t in_cap, out_cap;
    uint64_t gen;             /* bumped whenever a buffer above moves */
    mb_cuda_graph graphs[MB_CUDA_GRAPHS];
    uint64_t graph_uses;
} mb_cuda_req;

typedef struct {
    int device;
    uint32_t max_slots;
    uint32_t max_inflight;
    uint64_t staging_max;
    uint64_t ws_max;              /* device workspace one request may grow to */
    int progress;
    int use_graphs;               /* MB_CUDA_GRAPHS=0 turns replay off */
    mb_kcuda_path path;           /* MB_CUDA_PATH=gemv|gemm forces one (benchmarks) */
    char device_name[MB_PROTO_NAME_BYTES];

    mb_route_table table;
    mb_cuda_slot_mem *slot_mem;   /* [max_slots] */
    mb_kcuda_expert *h_slots;     /* pinned mirror of d_slots */
    mb_kcuda_expert *d_slots;     /* [max_slots] device */
    uint32_t *layer_experts;      /* loaded slots per layer */
    uint32_t n_layers_cap;
    mb_cuda_arena *arenas;
    uint64_t weight_bytes;

    cudaStream_t upload;
    void *up_buf[MB_CUDA_UPLOAD_BUFS]; /* pinned */
    cudaEvent_t up_ev[MB_CUDA_UPLOAD_BUFS];
    int up_next;
    int uploads_pending;
    mb_status upload_status;
    uint64_t up_bytes, up_t0_ns, up_last_print_ns;

    /* Host plan scratch (the cuBLAS path's group sizes). */
    int32_t *plan_by_slot;        /* [max_slots] pair counts, zero between requests */
    int32_t *plan_slot, *plan_count;
    size_t plan_cap;

    mb_cuda_req reqs[MB_BACKEND_MAX_INFLIGHT];
    uint64_t next_seq;
} mb_cuda_backend;

/* Reports a failed CUDA call on stderr and maps it to a status (DEVICE for
 * a lost or missing device, NOMEM for allocation failures, BACKEND
 * otherwise). */
mb_status mb_cuda_fail(const char *what, cudaError_t e);

uint64_t mb_cuda_now_ns(void);

/* cuda_weights.c */
/* 1 for a weight dtype these kernels compute: f32, f16, bf16, and the
 * quantized Q8_0, Q4_K and Q6_K. */
int mb_cuda_weight_dtype_ok(mb_dtype wdtype);
mb_status mb_cuda_load_expert(void *state, const mb_expert_weights *w);
mb_status mb_cuda_load_finish(void *state);
mb_status mb_cuda_reserve_layer(void *state, uint32_t layer, uint32_t slot0, uint32_t n_slots, uint32_t d_model,
                                uint32_t d_ff, mb_dtype wdtype);
void mb_cuda_weights_free(mb_cuda_backend *be);
/* mb_backend_ops.device_layer: the layer's slots as device memory. */
mb_status mb_cuda_device_layer(void *state, uint32_t layer, mb_backend_device_view *out);

/* cuda_run.c */
mb_status mb_cuda_submit(void *state, uint64_t tag, const mb_proto_expert_req *req);
mb_status mb_cuda_poll(void *state, int64_t timeout_ns, mb_backend_event *ev);
mb_status mb_cuda_fetch(void *state, uint64_t tag, void *out);
void mb_cuda_req_free(mb_cuda_req *r);

#endif
