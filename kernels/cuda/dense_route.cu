// Routing in one kernel (dense.h mb_kcuda_route_topk): a warp per token
// computes the softmax of its logits row into shared memory, then takes the
// top k by k rounds of a warp-wide arg-max (ties: the lower index), and
// renormalises in the CPU's order. Softmax sums use a fixed butterfly, so
// probabilities can differ from broker/router.c by f32 rounding, never the
// order of distinct values.
#include <climits>

#include "kernels/cuda/dense_internal.cuh"

#define MB_ROUTE_WARPS 4
#define MB_ROUTE_MAX_EXPERTS 1024
#define MB_ROUTE_MAX_K 32

static __device__ __forceinline__ float mb_warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// p: this warp's n_experts floats of shared memory.
__global__ void __launch_bounds__(MB_ROUTE_WARPS * 32)
mb_kcuda_route_topk_kernel(const float *__restrict__ logits, uint32_t n, uint32_t n_experts, uint32_t top_k,
                           int renorm, int32_t *__restrict__ ids, float *__restrict__ gate)
{
    extern __shared__ float mb_route_smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const size_t t = (size_t)blockIdx.x * MB_ROUTE_WARPS + warp;
    if (t >= n) return; // whole warps leave; no block-wide sync below
    float *p = mb_route_smem + (size_t)warp * n_experts;
    const float *row = logits + t * n_experts;
    const int ne = (int)n_experts;

    float mx = -INFINITY;
    for (int e = lane; e < ne; e += 32)
        mx = fmaxf(mx, row[e]);
    mx = mb_warp_max(mx);
    float sum = 0.0f;
    for (int e = lane; e < ne; e += 32) {
        const float v = expf(row[e] - mx);
        p[e] = v;
        sum += v;
    }
    sum = mb_warp_sum(sum);
    for (int e = lane; e < ne; e += 32)
        p[e] = p[e] / sum;
    __syncwarp();

    // Round j: the largest remaining probability, lowest index on ties;
    // lane j keeps it. Taken entries become -1 (probabilities are >= 0).
    float my_g = 0.0f;
    int my_id = 0;
    for (int j = 0; j < (int)top_k; j++) {
        float bv = -1.0f;
        int bi = INT_MAX;
        for (int e = lane; e < ne; e += 32) {
            const float v = p[e];
            if (v > bv) { // e ascends: a tie keeps the lower index
                bv = v;
                bi = e;
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) {
                bv = ov;
                bi = oi;
            }
        }
        if (lane == j) {
            my_g = bv;
            my_id = bi;
        }
        if (lane == 0) p[bi] = -1.0f;
        __syncwarp();
    }
    // The renormalising sum in slot order, as the CPU adds them.
    float ksum = 0.0f;
    for (int j = 0; j < (int)top_k; j++)
        ksum += __shfl_sync(0xffffffffu, my_g, j);
    if (lane < (int)top_k) {
        ids[t * top_k + lane] = my_id;
        gate[t * top_k + lane] = renorm ? my_g / ksum : my_g;
    }
}

extern "C" int mb_kcuda_route_topk(void *stream, const float *logits, uint32_t n, uint32_t n_experts, uint32_t top_k,
                                   int renorm, int32_t *ids, float *gate)
{
    if (!logits || !ids || !gate || n == 0 || n_experts == 0 || n_experts > MB_ROUTE_MAX_EXPERTS || top_k == 0 ||
        top_k > MB_ROUTE_MAX_K || top_k > n_experts)
        return (int)cudaErrorInvalidValue;
    const size_t smem = (size_t)MB_ROUTE_WARPS * n_experts * sizeof(float);
    const unsigned blocks = (unsigned)mb_dense_cdiv(n, MB_ROUTE_WARPS);
    mb_kcuda_route_topk_kernel<<<blocks, MB_ROUTE_WARPS * 32, smem, mb_dense_stream(stream)>>>(
        logits, n, n_experts, top_k, renorm, ids, gate);
    return mb_dense_launched();
}
