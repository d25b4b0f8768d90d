/* Experts on the GPU coordinator's own device, computed straight from its
 * buffers (issue 9: "experts placed on the coordinator's own GPU run
 * in-process"). When every expert of every layer sits on the in-process
 * CUDA backend of the coordinator's device, a layer's routing table never
 * leaves the device: the router's ids and gates become the expert
 * kernels' pairs (mb_kcuda_local_pairs), the kernels (kernels/cuda/moe.h)
 * read the normed activations where the norm wrote them, in f32 (no
 * payload encoding: nothing crosses a transport), and their sums land in
 * the buffer the next norm adds. No host wait in the layer, so a decode
 * step replays its graphs back to back. The weights stay the backend's
 * (mb_backend_device_layer); this only borrows them.
 *
 * Prefill-sized steps have no host plan for cuBLAS here (the pair counts
 * per expert live on the device), so they take the WMMA grouped GEMM; the
 * caller chooses per step size which way a step goes. */
#ifndef MB_BROKER_DEVICE_LOCAL_MOE_CUDA_H
#define MB_BROKER_DEVICE_LOCAL_MOE_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "backends/backend.h"
#include "kernels/cuda/dense.h"

typedef struct mb_cuda_local_moe mb_cuda_local_moe;

/* One layer's experts for mb_cuda_local_moe_create: the backend's device
 * view and, per expert of the model, its slot there. */
typedef struct {
    mb_backend_device_view view;
    const uint32_t *slot_of; /* [n_experts] */
} mb_cuda_local_layer;

/* Allocates, on device, the slot maps, the pair buffers and an expert
 * workspace for max_tokens tokens of top_k pairs, and reserves that
 * workspace for the largest step now (so no step allocates, and graphs
 * can capture the kernels). Every layer's view must name device. Errors
 * (UNSUPPORTED for another device, NOMEM, DEVICE) come with err. */
mb_status mb_cuda_local_moe_create(int device, const mb_cuda_local_layer *layers, uint32_t n_layers,
                                   uint32_t n_experts, uint32_t top_k, uint32_t d_model, uint32_t max_tokens,
                                   mb_cuda_local_moe **out, char *err, size_t err_cap);
void mb_cuda_local_moe_destroy(mb_cuda_local_moe *lm);

/* Enqueues layer's experts for n tokens on stream (a cudaStream_t): x
 * [n][d_model] f32, ids and gate [n][top_k] (device, as the router wrote
 * them), out [n][d_model] f32 overwritten with the gate-weighted sums.
 * Counts the routed pairs per expert on the device. Capturable in a CUDA
 * graph. Returns 0 or a CUDA error code. */
int mb_cuda_local_moe_enqueue(mb_cuda_local_moe *lm, void *stream, uint32_t layer, const float *x,
                              const int32_t *ids, const float *gate, uint32_t n, float *out);

/* The same, where the router already wrote layer's pairs (with what
 * mb_cuda_local_moe_route_local gave it): the expert kernels only. */
int mb_cuda_local_moe_enqueue_paired(mb_cuda_local_moe *lm, void *stream, uint32_t layer,
                                     const float *x, uint32_t n, float *out);

/* Where the router writes layer's pairs, its routed counts and the start
 * mark of its experts (mb_kcuda_router_topk_norm_local; the caller may drop
 * the mark and take it with mb_cuda_local_moe_mark). Returns 0 or a CUDA
 * error code. */
int mb_cuda_local_moe_route_local(const mb_cuda_local_moe *lm, uint32_t layer,
                                  mb_kcuda_route_local *out);

/* Stamps the device clock at the start (end 0) or the end (1) of layer's
 * experts on stream, for mb_cuda_local_moe_take_ns (mb_kcuda_stamp: unlike
 * an event, it may be captured in a graph). Returns 0 or a CUDA error code. */
int mb_cuda_local_moe_mark(mb_cuda_local_moe *lm, void *stream, uint32_t layer, int end);

/* Enqueues on stream the copy of the routed-pair counts and of the marks'
 * stamps to the host and the counts' reset; after the stream's next
 * synchronisation, mb_cuda_local_moe_routed and _take_ns read them.
 * Capturable. Returns 0 or a CUDA error code. */
int mb_cuda_local_moe_flush(mb_cuda_local_moe *lm, void *stream);

/* Pairs routed to expert e of layer l since the flush before the last one
 * ([n_layers][n_experts], pinned host memory). */
const uint32_t *mb_cuda_local_moe_routed(const mb_cuda_local_moe *lm);

/* After the step's flush and synchronisation: the device time of the
 * experts of layers 0..n_layers-1 in that step (between their marks), and
 * each layer's added to layer_ns[l] when not NULL. */
uint64_t mb_cuda_local_moe_take_ns(mb_cuda_local_moe *lm, uint32_t n_layers, uint64_t *layer_ns);

#endif
