// Shared pieces of the CUDA MoE kernels (kernels/cuda/moe_*.cu): the
// workspace layout, element conversions and launch declarations. Private to
// kernels/cuda/.
#pragma once

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/moe.h"

// Rows of one grouped-GEMM tile: the route kernel lays out the tile schedule
// in units of this many pairs of one expert.
#define MB_KCUDA_GEMM_BM 64

// One wire pair: the slot and its gate weight.
struct mb_kcuda_pair {
    uint32_t slot;
    float gate;
};

// One tile of the grouped GEMMs: expert index and first row within it.
struct mb_kcuda_tile {
    int32_t expert;
    int32_t row0;
};

struct mb_kcuda_moe_ws {
    uint32_t max_slots;
    int32_t *slot_cnt;   // [max_slots], zero between requests
    int32_t *slot_eidx;  // [max_slots], valid for active slots during a request
    int32_t *scalars;    // [0] experts with pairs, [1] tiles
    // Grown on demand:
    size_t cap_tokens, cap_pairs, cap_x_bytes, cap_h_bytes, cap_y_bytes;
    int32_t *tok_off;       // [cap_tokens + 1] first pair of each token
    int32_t *expert_slot;   // [cap_pairs] slot of each active expert
    int32_t *expert_off;    // [cap_pairs + 1] first grouped row of each expert
    int32_t *pair_pos;      // [cap_pairs] grouped row of each pair (rank during route)
    int32_t *perm_token;    // [cap_pairs] token of each grouped row
    mb_kcuda_tile *tiles;   // [cap_pairs / BM + cap_pairs + 1]
    void *x;                // activations for the math: f32, or 16-bit hi then lo
    void *h;                // [n_pairs][d_ff]: f32, or 16-bit hi then lo
    float *y;               // [n_pairs][d_model] each pair's down projection (cuBLAS path:
                            // first gate|up [n_pairs][2 d_ff], then y)
    void *wq;               // quantized weights on the cuBLAS path: one expert's gate|up
    size_t cap_wq_bytes;    // (or down) dequantized to f16, [2 d_ff][d_model]
    size_t bytes;
    uint64_t gen;           // bumped whenever grown buffers are freed (graphs hold their addresses)
    void *cublas;           // cuBLAS path: its handle
};

template <typename T> __device__ __forceinline__ float mb_to_f32(T v);
template <> __device__ __forceinline__ float mb_to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float mb_to_f32<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float mb_to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T mb_from_f32(float v);
template <> __device__ __forceinline__ float mb_from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half mb_from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 mb_from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float mb_silu(float g) { return g / (1.0f + __expf(-g)); }

// Elements of type W in 16 bytes: the width of one vectorised load.
template <typename W> struct mb_vec16 {
    static constexpr int n = 16 / sizeof(W);
};

// Converts 8 16-bit values (16 bytes) into floats.
template <typename T> __device__ __forceinline__ void mb_unpack8(const uint4 &v, float *f);
template <> __device__ __forceinline__ void mb_unpack8<__half>(const uint4 &v, float *f)
{
    const __half2 *h = reinterpret_cast<const __half2 *>(&v);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __half22float2(h[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}
template <> __device__ __forceinline__ void mb_unpack8<__nv_bfloat16>(const uint4 &v, float *f)
{
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

// Loads V consecutive elements of type T at p (16-byte aligned when VEC)
// as floats; V = elements per 16 bytes of the weight type.
template <typename T, int V, bool VEC> __device__ __forceinline__ void mb_loadv(const T *p, float *f)
{
    if constexpr (!VEC) {
#pragma unroll
        for (int i = 0; i < V; i++)
            f[i] = mb_to_f32<T>(p[i]);
    } else if constexpr (sizeof(T) == 4) {
#pragma unroll
        for (int i = 0; i < V; i += 4) {
            const float4 a = __ldg(reinterpret_cast<const float4 *>(p + i));
            f[i] = a.x, f[i + 1] = a.y, f[i + 2] = a.z, f[i + 3] = a.w;
        }
    } else if constexpr (V == 8) {
        mb_unpack8<T>(__ldg(reinterpret_cast<const uint4 *>(p)), f);
    } else { // 16-bit data, 4 values (8 bytes)
        const uint2 u = __ldg(reinterpret_cast<const uint2 *>(p));
        float t[8];
        mb_unpack8<T>(make_uint4(u.x, u.y, 0u, 0u), t);
#pragma unroll
        for (int i = 0; i < V; i++)
            f[i] = t[i];
    }
}

__device__ __forceinline__ float mb_warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float mb_warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Grid upper bounds the host can compute without reading device results.
static inline uint32_t mb_kcuda_max_experts(const mb_kcuda_moe_problem *p)
{
    uint32_t e = p->n_pairs;
    if (p->layer_experts && p->layer_experts < e) e = p->layer_experts;
    return e ? e : 1;
}
static inline uint32_t mb_kcuda_max_tiles(const mb_kcuda_moe_problem *p)
{
    return (p->n_pairs + MB_KCUDA_GEMM_BM - 1) / MB_KCUDA_GEMM_BM + mb_kcuda_max_experts(p);
}

// Launchers (each one file), all asynchronous on stream.
cudaError_t mb_kcuda_route_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, cudaStream_t stream);
cudaError_t mb_kcuda_convert_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int split, cudaStream_t stream);
// fused: the down projection adds each token's pairs itself (writes p->out,
// no combine launch); otherwise it writes ws->y for the combine kernel.
cudaError_t mb_kcuda_gemv_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int fused, cudaStream_t stream);
cudaError_t mb_kcuda_gemm_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int split_x, int split_h,
                                 cudaStream_t stream);
cudaError_t mb_kcuda_gather_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int split,
                                   cudaStream_t stream);
cudaError_t mb_kcuda_cublas_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int split_x, int split_h,
                                   cudaStream_t stream);
void mb_kcuda_cublas_ws_free(mb_kcuda_moe_ws *ws);
cudaError_t mb_kcuda_combine_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, cudaStream_t stream);
