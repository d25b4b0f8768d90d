// One token's routing by one warp (mb_route_row), shared by the kernels
// that route (dense_route.cu). Private to kernels/cuda/.
#pragma once

#include <climits>

#include "kernels/cuda/dense_internal.cuh"

// Whether this block is the last of its grid to get here, counted on done
// (0 before the launch; the last block puts it back). What every block
// wrote before the call is visible to the last block's loads after it
// (through L2: __ldcg). Every thread of the block calls it.
static __device__ __forceinline__ bool mb_route_last_block(unsigned *done)
{
    __shared__ int last;
    __threadfence(); // this block's writes are visible device-wide before it counts itself done
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return false;
    __threadfence(); // every other block's writes are visible to the loads that follow
    return true;
}

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

// Pair i (token i / top_k, choice i % top_k) of the routing table as the
// expert kernels read it: expert e's slot on this device and its gate g;
// routed (or nullptr) counts the choice.
static __device__ __forceinline__ void mb_local_pair(uint32_t i, int32_t e, float g,
                                                     const int32_t *slot_of, uint2 *pairs,
                                                     uint32_t *routed)
{
    pairs[i] = make_uint2((uint32_t)slot_of[e], __float_as_uint(g));
    if (routed) atomicAdd(&routed[e], 1u);
}

// One token's routing by one warp: row holds its n_experts logits, p is
// the warp's n_experts floats of shared memory (p may equal row: each lane
// reads an element before it writes it). ids_t and gate_t get top_k
// entries; with loc (or nullptr), token t's pairs for the experts on this
// device too (mb_local_pair's, from the lanes' own choices).
static __device__ __forceinline__ void mb_route_row(const float *row, float *p, int ne, int top_k,
                                                    int renorm, int32_t *__restrict__ ids_t,
                                                    float *__restrict__ gate_t, int lane,
                                                    const mb_kcuda_route_local *loc = nullptr,
                                                    uint32_t t = 0)
{
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
    // lane j keeps it. Taken entries become -1 (probabilities are >= 0). A
    // NaN (a NaN or infinite logit makes the whole row NaN) ranks below
    // every probability and above a taken entry, so every round still
    // takes an untaken expert, the lowest NaN first, as broker/router.c
    // does; its gate stays NaN. The ranks are unsigned keys: a taken entry
    // 0, a NaN 1, a probability its bits + 2 (non-negative floats order as
    // their bits), so that from sm_80 two warp reductions (redux.sync) find
    // the round's winner where a butterfly of ten shuffles did.
    float my_g = 0.0f;
    int my_id = 0;
    for (int j = 0; j < top_k; j++) {
        unsigned bk = 0; // some lane finds an untaken entry: top_k <= ne
        int bi = INT_MAX;
        for (int e = lane; e < ne; e += 32) {
            const float v = p[e];
            const unsigned key = v < 0.0f ? 0u : v == v ? __float_as_uint(v) + 2u : 1u;
            if (key > bk) { // e ascends: a tie keeps the lower index
                bk = key;
                bi = e;
            }
        }
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
        const unsigned mk = __reduce_max_sync(0xffffffffu, bk);
        bi = (int)__reduce_min_sync(0xffffffffu, bk == mk ? (unsigned)bi : 0xffffffffu);
        bk = mk;
#else
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const unsigned ok = __shfl_xor_sync(0xffffffffu, bk, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ok > bk || (ok == bk && oi < bi)) {
                bk = ok;
                bi = oi;
            }
        }
#endif
        if (lane == j) {
            my_g = bk == 1u ? NAN : __uint_as_float(bk - 2u);
            my_id = bi;
        }
        if (lane == 0) p[bi] = -1.0f;
        __syncwarp();
    }
    // The renormalising sum in slot order, as the CPU adds them.
    float ksum = 0.0f;
    for (int j = 0; j < top_k; j++)
        ksum += __shfl_sync(0xffffffffu, my_g, j);
    if (lane < top_k) {
        const float g = renorm ? my_g / ksum : my_g;
        ids_t[lane] = my_id;
        gate_t[lane] = g;
        if (loc) {
            if (lane == 0) loc->counts[t] = (uint16_t)top_k;
            mb_local_pair(t * (uint32_t)top_k + (uint32_t)lane, my_id, g, loc->slot_of,
                          reinterpret_cast<uint2 *>(loc->pairs), loc->routed);
        }
    }
}
