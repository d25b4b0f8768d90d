// Dequantization of a whole quantized matrix into f32 (exactly the CPU's
// values; the tests compare them bit for bit) or f16 (the cuBLAS path's
// scratch matrix, rounded to nearest even). One thread per run of 16
// weights: two 16-byte loads in, 64 (f32) or 32 (f16) bytes out.
//   out[r][c] = dequant(W)[r][c]
#include "kernels/cuda/moe_quant.cuh"

template <int Q, typename O>
__global__ void mb_kcuda_qdequant_kernel(const void *__restrict__ w, O *__restrict__ out, int rows, int k)
{
    const int runs_row = k / 16;
    const size_t n = (size_t)rows * runs_row;
    const mb_qmat m = mb_qmat_make(Q, w, rows, k);
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int row = (int)(i / runs_row), c = (int)(i % runs_row) * 16;
        float v[16];
        mb_qdeq<Q>(mb_qload<Q>(m, row, c), v);
        O *o = out + (size_t)row * k + c;
        if constexpr (sizeof(O) == 4) {
#pragma unroll
            for (int j = 0; j < 16; j += 4)
                *reinterpret_cast<float4 *>(o + j) = make_float4(v[j], v[j + 1], v[j + 2], v[j + 3]);
        } else {
            uint32_t u[8];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const __half lo = __float2half_rn(v[2 * j]), hi = __float2half_rn(v[2 * j + 1]);
                u[j] = (uint32_t)__half_as_ushort(lo) | ((uint32_t)__half_as_ushort(hi) << 16);
            }
            reinterpret_cast<uint4 *>(o)[0] = make_uint4(u[0], u[1], u[2], u[3]);
            reinterpret_cast<uint4 *>(o)[1] = make_uint4(u[4], u[5], u[6], u[7]);
        }
    }
}

template <int Q>
static void mb_qdequant_typed(const void *w, int rows, int k, int out_dtype, void *out, cudaStream_t stream)
{
    const size_t n = (size_t)rows * (k / 16);
    const unsigned blocks = (unsigned)((n + 255) / 256 < 8192 ? (n + 255) / 256 : 8192);
    if (out_dtype == MB_KCUDA_F32)
        mb_kcuda_qdequant_kernel<Q, float><<<blocks, 256, 0, stream>>>(w, (float *)out, rows, k);
    else
        mb_kcuda_qdequant_kernel<Q, __half><<<blocks, 256, 0, stream>>>(w, (__half *)out, rows, k);
}

cudaError_t mb_kcuda_qdequant_launch(int q, const void *w, int rows, int k, int out_dtype, void *out,
                                     cudaStream_t stream)
{
    if (!mb_kcuda_quant_supported(q) || k <= 0 || rows <= 0 || k % (int)mb_kcuda_qblock_elems(q) ||
        (out_dtype != MB_KCUDA_F32 && out_dtype != MB_KCUDA_F16))
        return cudaErrorInvalidValue;
    switch (q) {
    case MB_KCUDA_Q8_0: mb_qdequant_typed<MB_KCUDA_Q8_0>(w, rows, k, out_dtype, out, stream); break;
    case MB_KCUDA_Q4_K: mb_qdequant_typed<MB_KCUDA_Q4_K>(w, rows, k, out_dtype, out, stream); break;
    default: mb_qdequant_typed<MB_KCUDA_Q6_K>(w, rows, k, out_dtype, out, stream); break;
    }
    return cudaGetLastError();
}

extern "C" int mb_kcuda_dequant(int wdtype, const void *w, size_t rows, size_t k, int out_dtype, void *out,
                                void *stream)
{
    if (rows == 0 || k == 0) return 0;
    if (rows > 0x7fffffff || k > 0x7fffffff) return (int)cudaErrorInvalidValue;
    return (int)mb_kcuda_qdequant_launch(wdtype, w, (int)rows, (int)k, out_dtype, out, (cudaStream_t)stream);
}
