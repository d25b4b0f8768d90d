/* The MoE expert FFN on a CUDA device, callable from C: for every (token,
 * expert, gate) pair of a request,
 *   h[pair][d_ff]    = silu(x[token] @ W_gate^T) * (x[token] @ W_up^T)
 *   out[token][d_model] = sum over the token's pairs, in request order,
 *                         of gate * (h[pair] @ W_down^T)
 * all enqueued on one stream with no host synchronisation:
 *   1. route: one kernel groups the pairs by expert slot on the device (a
 *      counting sort whose counters are the only memory it zeroes, and it
 *      zeroes them back itself), converts the activations for the math, and
 *      lays out the tile schedule of the grouped GEMMs;
 *   2. decode-sized requests: fused gate+up+SiLU GEMV and down GEMV kernels
 *      that stream each routed expert's weights once for all its tokens;
 *      prefill-sized requests: grouped GEMMs on tensor cores (bf16/f16
 *      weights) over every expert of the layer in one launch each;
 *   3. combine: per token, its pairs' gate-weighted rows added in request
 *      order (no float atomics), encoded to the payload dtype.
 * Results are deterministic: the device-side grouping may order a expert's
 * rows differently from run to run, but no row's arithmetic depends on its
 * position and the combine order is fixed.
 *
 * Precision: f32 payloads keep f32 activations: the GEMV path multiplies in
 * f32, the tensor-core path splits each activation into a high and a low
 * half in the weights' 16-bit type (two MMAs), so products carry about 16
 * significant bits. f16/bf16 payloads feed tensor cores directly. The
 * hidden row h between the two projections is split the same way for
 * every payload (the CPU keeps it in f32). f32 weights always take the f32
 * GEMV path. Accumulation is f32 throughout. Known limit: with f16
 * weights, an activation or hidden value beyond f16's range (65504)
 * becomes inf in the split and the result NaN (the CPU backend stays
 * finite); bf16 weights have no such limit.
 *
 * Quantized weights (Q8_0, Q4_K, Q6_K; gate, up and down each of its own
 * type) stay quantized in device memory, in the layout of
 * kernels/cuda/quant_layout.h. Every path dequantizes exactly as
 * kernels/cpu/quant.c does (bit for bit in f32). The GEMV path multiplies
 * those f32 weights with the activations in f32 (payloads widened, no
 * 8-bit activation quantization); the tensor-core paths (the grouped GEMM,
 * which dequantizes weight tiles into shared memory, and cuBLAS, which
 * dequantizes one expert at a time into an f16 scratch matrix) round each
 * dequantized weight to f16 (relative error <= 2^-11, absolute <= 2^-25
 * below f16's normal range) and take activations and the hidden row as
 * f16 high and low halves, so the f16 range limit above applies to them. */
#ifndef MB_KERNELS_CUDA_MOE_H
#define MB_KERNELS_CUDA_MOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element and weight types, numbered as protocol/dtype.h's mb_dtype (the
 * quantized ones are weights only). */
enum {
    MB_KCUDA_F32 = 0,
    MB_KCUDA_F16 = 1,
    MB_KCUDA_BF16 = 2,
    MB_KCUDA_Q8_0 = 3,
    MB_KCUDA_Q4_K = 5,
    MB_KCUDA_Q6_K = 7,
};

/* One slot's weights in device memory: gate and up [d_ff][d_model], down
 * [d_model][d_ff], row-major, densely packed, in the layer's weight type;
 * quantized matrices in kernels/cuda/quant_layout.h's layout, each starting
 * 16-byte aligned. */
typedef struct {
    const void *gate;
    const void *up;
    const void *down;
} mb_kcuda_expert;

/* Which inner path a request takes. */
typedef enum {
    MB_KCUDA_PATH_AUTO = 0, /* GEMV when pairs per routed expert are few */
    MB_KCUDA_PATH_GEMV = 1,
    MB_KCUDA_PATH_GEMM = 2,   /* our WMMA grouped GEMM */
    MB_KCUDA_PATH_CUBLAS = 3, /* cuBLAS GEMMs per expert (needs a host plan and cuBLAS) */
} mb_kcuda_path;

typedef struct {
    uint32_t n_tokens;
    uint32_t n_pairs;
    uint32_t d_model;
    uint32_t d_ff;
    uint32_t max_slots;     /* entries of slots and of the workspace's counters */
    uint32_t layer_experts; /* slots loaded for this layer (tunes AUTO) */
    int payload;            /* MB_KCUDA_* of act and out */
    int wdtype;             /* MB_KCUDA_* of the weights (the gate's, when quantized) */
    int wdtype_up;          /* quantized weights: up's and down's types (each may */
    int wdtype_down;        /* differ from the gate's); ignored for element types */
    mb_kcuda_path path;
    const mb_kcuda_expert *slots; /* device [max_slots] */
    /* Device inputs, as on the wire: */
    const void *act;              /* [n_tokens][d_model] payload */
    const uint16_t *pair_counts;  /* [n_tokens] */
    const void *pairs;            /* [n_pairs] of {u32 slot, f32 gate} */
    void *out;                    /* device [n_tokens][d_model] payload */
    /* Optional host plan, which the cuBLAS path needs (its sizes and
     * pointers are host arguments): the request's experts in ascending slot
     * order with their pair counts (host arrays), and the same on the
     * device as int32 [plan_experts] slots then [plan_experts + 1] first
     * rows. The route kernel then follows it instead of discovering
     * experts. slots_host mirrors slots on the host. */
    uint32_t plan_experts;        /* 0: no plan */
    const int32_t *plan_slot;     /* host [plan_experts] */
    const int32_t *plan_count;    /* host [plan_experts] */
    const int32_t *plan_dev;      /* device, as above */
    const mb_kcuda_expert *slots_host; /* host [max_slots] */
    /* Optional cudaEvent_t pair for benchmarks, recorded on the stream after
     * the routing bookkeeping (route, and convert or gather) and after the
     * expert GEMMs or GEMVs (before the combine, if any). */
    void *phase_marks[2];
} mb_kcuda_moe_problem;

/* Device scratch for requests, grown to the largest problem and reused;
 * one per request in flight. Holds the slot counters, kept zero between
 * requests. */
typedef struct mb_kcuda_moe_ws mb_kcuda_moe_ws;

/* Creates a workspace for slot ids < max_slots on the current device.
 * Returns 0, or a CUDA error code (non-zero). */
int mb_kcuda_moe_ws_create(uint32_t max_slots, mb_kcuda_moe_ws **out);
void mb_kcuda_moe_ws_destroy(mb_kcuda_moe_ws *ws);

/* Grows ws to hold problem p (blocking: may allocate device memory; call
 * outside the hot path, e.g. when a request's shape exceeds what was seen).
 * Returns 0 or a CUDA error code. */
int mb_kcuda_moe_ws_reserve(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p);

/* Bytes of device memory ws holds. */
size_t mb_kcuda_moe_ws_bytes(const mb_kcuda_moe_ws *ws);

/* Bytes a workspace needs for p (beyond its slot counters), to refuse a
 * request before growing. */
size_t mb_kcuda_moe_ws_need(const mb_kcuda_moe_problem *p);

/* Changes whenever ws frees the buffers it grew (even when the reserve
 * then fails): anything holding their addresses, such as a captured CUDA
 * graph, is stale once this moves. */
uint64_t mb_kcuda_moe_ws_generation(const mb_kcuda_moe_ws *ws);

/* Enqueues the whole request on stream (a cudaStream_t): nothing blocks
 * the host. ws must have been reserved for p; slot ids in p->pairs must be
 * < p->max_slots and name loaded slots of one layer (the caller validated
 * them). Returns 0 or the launch's CUDA error code. */
int mb_kcuda_moe_enqueue(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, void *stream);

/* Whether cuBLAS could be loaded (dlopen, once; the binary does not link
 * it, so it runs where only the driver is installed). */
int mb_kcuda_cublas_available(void);

/* Dequantizes a quantized matrix w (device, [rows][k] in
 * quant_layout.h's layout of type wdtype) into out (device [rows][k]):
 * out_dtype MB_KCUDA_F32 gives exactly kernels/cpu/quant.c's values,
 * MB_KCUDA_F16 those rounded to nearest even. Enqueued on stream. Returns
 * 0, or cudaErrorInvalidValue for another type or k not whole blocks. */
int mb_kcuda_dequant(int wdtype, const void *w, size_t rows, size_t k, int out_dtype, void *out, void *stream);

/* Which path AUTO would take for p (for benchmarks and tests). */
mb_kcuda_path mb_kcuda_moe_path(const mb_kcuda_moe_problem *p);

/* The string of a CUDA error code. */
const char *mb_kcuda_error_str(int err);

#ifdef __cplusplus
}
#endif

#endif
