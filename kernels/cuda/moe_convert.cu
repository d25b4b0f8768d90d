// Activations from the payload dtype into the weights' 16-bit type for the
// WMMA path's tensor cores (the GEMV path reads payloads in place), split
// into a high half and the rounding remainder (low half) when the payload
// carries more precision than one 16-bit value holds.
#include "kernels/cuda/moe_internal.cuh"

template <typename P, typename T>
__global__ void mb_kcuda_to16_kernel(const P *__restrict__ in, T *__restrict__ hi, T *__restrict__ lo, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float v = mb_to_f32<P>(in[i]);
        const T h = mb_from_f32<T>(v);
        hi[i] = h;
        if (lo) lo[i] = mb_from_f32<T>(v - mb_to_f32<T>(h));
    }
}

template <typename P>
static cudaError_t mb_convert_from(const mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int split,
                                   cudaStream_t stream)
{
    const size_t n = (size_t)p->n_tokens * p->d_model;
    const unsigned blocks = (unsigned)((n + 255) / 256 < 4096 ? (n + 255) / 256 : 4096);
    const P *in = (const P *)p->act;
    if (p->wdtype == MB_KCUDA_BF16) {
        __nv_bfloat16 *hi = (__nv_bfloat16 *)ws->x;
        mb_kcuda_to16_kernel<P, __nv_bfloat16><<<blocks, 256, 0, stream>>>(in, hi, split ? hi + n : nullptr, n);
    } else {
        __half *hi = (__half *)ws->x;
        mb_kcuda_to16_kernel<P, __half><<<blocks, 256, 0, stream>>>(in, hi, split ? hi + n : nullptr, n);
    }
    return cudaGetLastError();
}

cudaError_t mb_kcuda_convert_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int split, cudaStream_t stream)
{
    switch (p->payload) {
    case MB_KCUDA_F32: return mb_convert_from<float>(ws, p, split, stream);
    case MB_KCUDA_F16: return mb_convert_from<__half>(ws, p, split, stream);
    case MB_KCUDA_BF16: return mb_convert_from<__nv_bfloat16>(ws, p, split, stream);
    default: return cudaErrorInvalidValue;
    }
}

// The cuBLAS path's A operand: row pos of xperm is token perm_token[pos]'s
// activations, in the weights' 16-bit type (high half, and low half when
// split), so each expert's rows are contiguous.
template <typename P, typename T>
__global__ void mb_kcuda_gather_kernel(const P *__restrict__ in, const int32_t *__restrict__ perm_token,
                                       T *__restrict__ hi, T *__restrict__ lo, int d_model)
{
    const int pos = blockIdx.x;
    const P *src = in + (size_t)perm_token[pos] * d_model;
    T *h = hi + (size_t)pos * d_model;
    T *l = lo ? lo + (size_t)pos * d_model : nullptr;
    for (int c = threadIdx.x; c < d_model; c += blockDim.x) {
        const float v = mb_to_f32<P>(src[c]);
        const T t = mb_from_f32<T>(v);
        h[c] = t;
        if (l) l[c] = mb_from_f32<T>(v - mb_to_f32<T>(t));
    }
}

template <typename P>
static cudaError_t mb_gather_from(const mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int split,
                                  cudaStream_t stream)
{
    const size_t n = (size_t)p->n_pairs * p->d_model;
    const P *in = (const P *)p->act;
    const unsigned threads = p->d_model >= 256 ? 256 : 64;
    if (p->wdtype == MB_KCUDA_BF16) {
        __nv_bfloat16 *hi = (__nv_bfloat16 *)ws->x;
        mb_kcuda_gather_kernel<P, __nv_bfloat16><<<p->n_pairs, threads, 0, stream>>>(
            in, ws->perm_token, hi, split ? hi + n : nullptr, (int)p->d_model);
    } else {
        __half *hi = (__half *)ws->x;
        mb_kcuda_gather_kernel<P, __half><<<p->n_pairs, threads, 0, stream>>>(in, ws->perm_token, hi,
                                                                             split ? hi + n : nullptr,
                                                                             (int)p->d_model);
    }
    return cudaGetLastError();
}

cudaError_t mb_kcuda_gather_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int split, cudaStream_t stream)
{
    switch (p->payload) {
    case MB_KCUDA_F32: return mb_gather_from<float>(ws, p, split, stream);
    case MB_KCUDA_F16: return mb_gather_from<__half>(ws, p, split, stream);
    case MB_KCUDA_BF16: return mb_gather_from<__nv_bfloat16>(ws, p, split, stream);
    default: return cudaErrorInvalidValue;
    }
}
