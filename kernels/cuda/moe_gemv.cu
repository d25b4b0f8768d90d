// The decode path: for each expert with pairs, every weight row is read once
// and dotted with all of that expert's rows of input (NT at a time), so a
// routed expert's weights stream from memory once per request whatever its
// token count. One warp per weight row, 16-byte loads, f32 math.
//   gate/up: h[pos][r] = silu(W_gate[r] . x[token(pos)]) * (W_up[r] . x[token(pos)])
//   down:    y[pos][n] = W_down[n] . h[pos]
#include "kernels/cuda/moe_internal.cuh"

#define MB_GEMV_WARPS 8
#define MB_GEMV_NT 4

template <typename W> struct mb_vec16 {
    static constexpr int n = 16 / sizeof(W);
};

// Converts 16 bytes of W into floats.
template <typename W> __device__ __forceinline__ void mb_unpack16(const uint4 &v, float *f);
template <> __device__ __forceinline__ void mb_unpack16<float>(const uint4 &v, float *f)
{
    f[0] = __uint_as_float(v.x);
    f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z);
    f[3] = __uint_as_float(v.w);
}
template <> __device__ __forceinline__ void mb_unpack16<__half>(const uint4 &v, float *f)
{
    const __half2 *h = reinterpret_cast<const __half2 *>(&v);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __half22float2(h[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}
template <> __device__ __forceinline__ void mb_unpack16<__nv_bfloat16>(const uint4 &v, float *f)
{
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

__device__ __forceinline__ float mb_warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// PAIRED: gate and up rows together with the SiLU product (writes h);
// otherwise the down rows (writes y). VEC: K and the row starts allow
// 16-byte loads.
template <typename W, bool PAIRED, bool VEC>
__global__ void __launch_bounds__(MB_GEMV_WARPS * 32)
mb_kcuda_gemv_kernel(const mb_kcuda_expert *__restrict__ slots, const int32_t *__restrict__ scalars,
                     const int32_t *__restrict__ expert_slot, const int32_t *__restrict__ expert_off,
                     const int32_t *__restrict__ perm_token, const float *__restrict__ xin, float *__restrict__ out,
                     int K, int N)
{
    const int e = blockIdx.y;
    if (e >= scalars[0]) return;
    const int row = blockIdx.x * MB_GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= N) return;
    const int lane = threadIdx.x & 31;
    const mb_kcuda_expert ex = slots[expert_slot[e]];
    const W *wa = (const W *)(PAIRED ? ex.gate : ex.down) + (size_t)row * K;
    const W *wb = PAIRED ? (const W *)ex.up + (size_t)row * K : nullptr;
    const int p0 = expert_off[e], p1 = expert_off[e + 1];
    constexpr int V = mb_vec16<W>::n;

    for (int c0 = p0; c0 < p1; c0 += MB_GEMV_NT) {
        const int nt = min(MB_GEMV_NT, p1 - c0);
        const float *xr[MB_GEMV_NT];
#pragma unroll
        for (int i = 0; i < MB_GEMV_NT; i++) {
            const int pos = c0 + (i < nt ? i : 0);
            xr[i] = xin + (size_t)(PAIRED ? perm_token[pos] : pos) * K;
        }
        float acc_a[MB_GEMV_NT] = {}, acc_b[MB_GEMV_NT] = {};
        if (VEC) {
            for (int k = lane * V; k < K; k += 32 * V) {
                float fa[V], fb[V];
                mb_unpack16<W>(__ldg(reinterpret_cast<const uint4 *>(wa + k)), fa);
                if (PAIRED) mb_unpack16<W>(__ldg(reinterpret_cast<const uint4 *>(wb + k)), fb);
#pragma unroll
                for (int i = 0; i < MB_GEMV_NT; i++) {
                    if (i >= nt) break;
#pragma unroll
                    for (int v = 0; v < V; v += 4) {
                        const float4 x4 = __ldg(reinterpret_cast<const float4 *>(xr[i] + k + v));
                        acc_a[i] += fa[v] * x4.x + fa[v + 1] * x4.y + fa[v + 2] * x4.z + fa[v + 3] * x4.w;
                        if (PAIRED)
                            acc_b[i] += fb[v] * x4.x + fb[v + 1] * x4.y + fb[v + 2] * x4.z + fb[v + 3] * x4.w;
                    }
                }
            }
        } else {
            for (int k = lane; k < K; k += 32) {
                const float fa = mb_to_f32<W>(wa[k]);
                const float fb = PAIRED ? mb_to_f32<W>(wb[k]) : 0.0f;
#pragma unroll
                for (int i = 0; i < MB_GEMV_NT; i++) {
                    if (i >= nt) break;
                    const float x = xr[i][k];
                    acc_a[i] += fa * x;
                    if (PAIRED) acc_b[i] += fb * x;
                }
            }
        }
#pragma unroll
        for (int i = 0; i < MB_GEMV_NT; i++) {
            if (i >= nt) break;
            const float a = mb_warp_sum(acc_a[i]);
            const float b = PAIRED ? mb_warp_sum(acc_b[i]) : 0.0f;
            if (lane == 0) out[(size_t)(c0 + i) * N + row] = PAIRED ? mb_silu(a) * b : a;
        }
    }
}

template <typename W>
static cudaError_t mb_gemv_typed(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, cudaStream_t stream)
{
    const int dm = (int)p->d_model, dff = (int)p->d_ff;
    constexpr int V = mb_vec16<W>::n;
    const bool vec_in = dm % V == 0 && dm % 4 == 0, vec_ff = dff % V == 0 && dff % 4 == 0;
    const unsigned ne = mb_kcuda_max_experts(p);
    const float *x = (const float *)ws->x;
    float *h = (float *)ws->h;
    dim3 g1((dff + MB_GEMV_WARPS - 1) / MB_GEMV_WARPS, ne), g2((dm + MB_GEMV_WARPS - 1) / MB_GEMV_WARPS, ne);
    if (vec_in)
        mb_kcuda_gemv_kernel<W, true, true><<<g1, MB_GEMV_WARPS * 32, 0, stream>>>(
            p->slots, ws->scalars, ws->expert_slot, ws->expert_off, ws->perm_token, x, h, dm, dff);
    else
        mb_kcuda_gemv_kernel<W, true, false><<<g1, MB_GEMV_WARPS * 32, 0, stream>>>(
            p->slots, ws->scalars, ws->expert_slot, ws->expert_off, ws->perm_token, x, h, dm, dff);
    if (vec_ff)
        mb_kcuda_gemv_kernel<W, false, true><<<g2, MB_GEMV_WARPS * 32, 0, stream>>>(
            p->slots, ws->scalars, ws->expert_slot, ws->expert_off, ws->perm_token, h, ws->y, dff, dm);
    else
        mb_kcuda_gemv_kernel<W, false, false><<<g2, MB_GEMV_WARPS * 32, 0, stream>>>(
            p->slots, ws->scalars, ws->expert_slot, ws->expert_off, ws->perm_token, h, ws->y, dff, dm);
    return cudaGetLastError();
}

cudaError_t mb_kcuda_gemv_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, cudaStream_t stream)
{
    switch (p->wdtype) {
    case MB_KCUDA_F32: return mb_gemv_typed<float>(ws, p, stream);
    case MB_KCUDA_F16: return mb_gemv_typed<__half>(ws, p, stream);
    case MB_KCUDA_BF16: return mb_gemv_typed<__nv_bfloat16>(ws, p, stream);
    default: return cudaErrorInvalidValue;
    }
}
