/* The coordinator's dense layers on a CUDA device (`--device cuda:N`):
 * embeddings, attention with its KV cache, norms, routing, the shared
 * expert and lm_head run on the GPU; the routed experts go to the same
 * callback as on the CPU (the dispatcher), which sees host copies of what
 * it needs. Per layer the host waits once, for one device-to-host copy of
 * the normed activations and the routing table; the experts' sums come
 * back in one host-to-device copy and are added on the device. Used by
 * broker/forward.c; not thread-safe. */
#ifndef MB_BROKER_DEVICE_FORWARD_CUDA_H
#define MB_BROKER_DEVICE_FORWARD_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "broker/forward.h"

typedef struct mb_fwd_cuda mb_fwd_cuda;

/* Whether this build has the CUDA coordinator. */
int mb_fwd_cuda_built(void);

/* Uploads m's dense weights (in their own dtype; f32, f16 and bf16 only)
 * to GPU device, allocates the KV cache for max_ctx positions and scratch
 * for chunk_cap tokens, all now. m must have passed forward.c's checks.
 * progress: a loading line on stderr. On failure err says why (no such
 * device, a quantized dense tensor, not enough device memory) and the
 * status is DEVICE, UNSUPPORTED, BAD_DTYPE, NOMEM or OVERFLOW. */
mb_status mb_fwd_cuda_create(const mb_model *m, uint32_t max_ctx, uint32_t chunk_cap, int device, int progress,
                             mb_fwd_cuda **out, char *err, size_t err_cap);
void mb_fwd_cuda_destroy(mb_fwd_cuda *fc);

/* Runs n <= chunk_cap tokens (ids checked by the caller) at position pos,
 * calling moe_fn once per layer; writes logits[n][vocab] and/or
 * last_logits[vocab] when not NULL (host memory). Blocking. Errors:
 * moe_fn's status, or DEVICE after a CUDA failure (mb_fwd_cuda_error
 * says which). */
mb_status mb_fwd_cuda_chunk(mb_fwd_cuda *fc, const int32_t *ids, uint32_t n, uint32_t pos, int decode,
                            mb_moe_fn moe_fn, void *moe_ctx, float *logits, float *last_logits);

/* Device time of the chunks since the last call (CUDA events read after
 * each chunk), then zero. */
uint64_t mb_fwd_cuda_take_device_ns(mb_fwd_cuda *fc);

/* Experts on this device (broker/device/local_moe_cuda.h), computed from
 * the forward's own buffers in chunks of at most max_tokens tokens
 * (larger chunks still call moe_fn). Takes lm (destroyed with fc). Call
 * before the first step. */
struct mb_cuda_local_moe;
mb_status mb_fwd_cuda_set_local(mb_fwd_cuda *fc, struct mb_cuda_local_moe *lm, uint32_t max_tokens);

/* The dtype the experts' links carry activations in (f32, f16 or bf16;
 * f32 until called). The routed tokens' rows then reach the host in it,
 * written there by the norm's kernel (rounded as the CPU's
 * mb_dtype_encode_f32), and the layer's mb_moe_work carries them as
 * x_wire, with x NULL (MB_CUDA_FUSE=0 or MB_CUDA_WIRE=0: as f32 in x,
 * converted by the dispatcher). Drops the captured
 * graphs when it changes. INVALID_ARG for another dtype. */
mb_status mb_fwd_cuda_set_wire(mb_fwd_cuda *fc, mb_dtype wire);

/* Device time of the local experts since the last call (CUDA events), then
 * zero. Not part of mb_fwd_cuda_take_device_ns. */
uint64_t mb_fwd_cuda_take_local_ns(mb_fwd_cuda *fc);

/* Pairs the local experts computed per (layer, expert) ([n_layers]
 * [n_experts], summed over steps; the caller may zero it), or NULL
 * without local experts. */
uint64_t *mb_fwd_cuda_routed(mb_fwd_cuda *fc);

/* The local experts' device time per layer ([n_layers], summed over steps;
 * the caller may zero it), or NULL without local experts. */
uint64_t *mb_fwd_cuda_local_layer_ns(mb_fwd_cuda *fc);

/* The last CUDA failure's message ("" when none). */
const char *mb_fwd_cuda_error(const mb_fwd_cuda *fc);

#endif
