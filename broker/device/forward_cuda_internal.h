/* What the files of the dense layers on a CUDA device share (creation,
 * the layer loop, the decode profile): the forward pass's state and the
 * helpers more than one of them calls. Only with MB_HAVE_CUDA. */
#ifndef MB_BROKER_DEVICE_FORWARD_CUDA_INTERNAL_H
#define MB_BROKER_DEVICE_FORWARD_CUDA_INTERNAL_H

#include "broker/device/forward_cuda.h"

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

/* fc->err from a printf format. */
void mb_fwdc_set_err(mb_fwd_cuda *fc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* cudaMalloc'd bytes, kept for destroy. */
cudaError_t mb_fwdc_dev_alloc(mb_fwd_cuda *fc, size_t bytes, void **out);

/* The kernels' code (MB_KCUDA_*) for a payload dtype; -1 for another. */
int mb_fwdc_kcuda_dtype(mb_dtype d);

/* The decode profile (MB_CUDA_PROFILE, forward_cuda_profile.c): a mark
 * after each operation enqueued, the gaps summed after the step's sync,
 * the table printed at destroy. */
void mb_fwdc_prof_mark(mb_fwd_cuda *fc, const char *label);
void mb_fwdc_prof_collect(mb_fwd_cuda *fc);
void mb_fwdc_prof_print(const mb_fwd_cuda *fc);

#endif
