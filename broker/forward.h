/* The coordinator's forward pass over a loaded MoE checkpoint: embeddings,
 * attention with RoPE and a KV cache, routing, the Qwen2-MoE shared expert,
 * final norm and lm_head. The routed experts are not computed here: each
 * layer hands its routed tokens to a callback (the dispatcher) and adds
 * what it returns. One mb_forward is one sequence; not thread-safe. */
#ifndef MB_BROKER_FORWARD_H
#define MB_BROKER_FORWARD_H

#include <stdint.h>

#include "broker/model.h"
#include "kernels/cpu/pool.h"
#include "protocol/dtype.h"
#include "protocol/status.h"

/* Longest run of tokens pushed through the layers at once; longer steps are
 * cut into chunks so scratch memory stays bounded. */
#define MB_FORWARD_CHUNK_DEFAULT 512u

/* One layer's routed-expert work, valid only during the callback. */
typedef struct {
    uint32_t layer;    /* 0..n_layers-1 */
    uint32_t n_tokens; /* rows in this chunk: 1..the chunk size (<= MB_FORWARD_CHUNK_DEFAULT) */
    uint32_t top_k;    /* experts per token */
    int decode;        /* 1 when the step is a single token */
    const int32_t *expert_ids; /* [n_tokens][top_k], each in [0, n_experts) */
    const float *gate;         /* [n_tokens][top_k] routing weights */
    const float *x;            /* [n_tokens][d_model] post-attention-norm input, or NULL
                                * when x_wire holds it (a callback must take either) */
    const void *x_wire;        /* NULL, or the same rows already in x_wire_dtype (the
                                * experts' payload dtype; a GPU wrote them so) */
    mb_dtype x_wire_dtype;
    float *out;                /* [n_tokens][d_model]: the callback overwrites it with
                                * sum_k gate[t][k] * FFN_{expert_ids[t][k]}(x[t]) */
} mb_moe_work;

/* Computes the routed experts of one layer. Blocking: returns when out is
 * written. A status other than OK aborts the step, which returns it. */
typedef mb_status (*mb_moe_fn)(void *ctx, const mb_moe_work *w);

typedef struct mb_forward mb_forward;

/* Creates a forward pass for model m with room for max_ctx positions:
 * checks every non-expert tensor's presence, dtype and shape against
 * m->cfg, and allocates the KV cache, RoPE tables and all scratch now, so
 * steps allocate nothing. m, pool (may be NULL: single-threaded) and
 * moe_ctx are borrowed and must outlive the result. Memory: the f32 KV
 * cache, 2 * n_layers * n_kv_heads * head_dim * max_ctx floats, dominates.
 * Errors: INVALID_ARG (NULL m or moe_fn, max_ctx 0), UNSUPPORTED (an
 * architecture this pass does not know), BAD_SHAPE / BAD_DTYPE / CONFIG (the
 * model does not fit its config, or a required tensor is missing),
 * OVERFLOW, NOMEM. */
mb_status mb_forward_create(const mb_model *m, uint32_t max_ctx, mb_kcpu_pool *pool,
                            mb_moe_fn moe_fn, void *moe_ctx, mb_forward **out);

/* Where the dense part runs. */
typedef struct {
    int cuda_device; /* -1: the CPU (on pool); N >= 0: CUDA GPU N (broker/device/forward_cuda.h) */
    int progress;    /* a loading line on a terminal while weights go to the GPU */
} mb_forward_place;

/* As mb_forward_create, with the dense part where place says. On a GPU the
 * dense weights are uploaded and the KV cache allocated on the device now,
 * and pool is unused. On failure err (may be NULL) says why: no such
 * device, a build without CUDA (UNSUPPORTED), a dense weight type the GPU
 * path does not take (BAD_DTYPE), not enough device memory (NOMEM). */
mb_status mb_forward_create_on(const mb_model *m, uint32_t max_ctx, mb_kcpu_pool *pool,
                               const mb_forward_place *place, mb_moe_fn moe_fn, void *moe_ctx,
                               mb_forward **out, char *err, size_t err_cap);

/* Device time of the steps since the last call (0 on the CPU), then zero. */
uint64_t mb_forward_take_device_ns(mb_forward *f);

/* The dense part on a GPU (broker/device/forward_cuda.h), NULL on the CPU. */
struct mb_fwd_cuda;
struct mb_fwd_cuda *mb_forward_cuda(mb_forward *f);

/* The message of the last step's device failure ("" when none). */
const char *mb_forward_error(const mb_forward *f);

/* Frees everything create allocated. NULL is a no-op. */
void mb_forward_destroy(mb_forward *f);

/* Forgets the sequence: the next step starts at position 0. Cannot fail. */
void mb_forward_reset(mb_forward *f);

/* Keeps the first pos positions of the sequence and forgets the rest (a
 * no-op when pos >= the current position): the next step starts at pos.
 * A server reuses a cached prompt prefix this way. Cannot fail. */
void mb_forward_truncate(mb_forward *f, uint32_t pos);

/* Sets the chunk size for later steps: 1..the size chosen at create
 * (min(MB_FORWARD_CHUNK_DEFAULT, max_ctx)). Errors: INVALID_ARG. */
mb_status mb_forward_set_chunk(mb_forward *f, uint32_t chunk_tokens);

/* Position the next token will take (tokens in the KV cache). */
uint32_t mb_forward_pos(const mb_forward *f);

/* Appends n_tokens tokens at the current position and runs them through
 * the model (a prefill when n_tokens > 1, a decode step when 1), in chunks
 * of at most the chunk size. Writes logits[n_tokens][vocab] for every new
 * position when logits is not NULL, and the last position's logits into
 * last_logits[vocab] when that is not NULL (either or both may be NULL;
 * with only last_logits, lm_head runs for the last token alone). Blocking:
 * calls moe_fn once per layer per chunk.
 * Errors, leaving the position unchanged: INVALID_ARG (NULL f or ids,
 * n_tokens 0, an id outside [0, vocab)), FULL (the context would exceed
 * max_ctx), or moe_fn's status. After an error the contents of logits and
 * last_logits are unspecified. */
mb_status mb_forward_step(mb_forward *f, const int32_t *ids, uint32_t n_tokens, float *logits,
                          float *last_logits);

#endif
