// The cuBLAS path for prefill: each routed expert's projections as cuBLAS
// GEMMs on its contiguous block of rows (the host's plan of the request
// gives every size and pointer, so no device result is read back). Gate
// and up go as one GEMM when they sit side by side in memory. Results
// accumulate in f32; a split operand (high and low 16-bit halves) is a
// second GEMM added with beta = 1. cuBLAS is loaded with dlopen on first
// use, so binaries run where only the driver is installed; without it the
// WMMA path serves. (cublasGemmGroupedBatchedEx would take one call, but
// it refuses 16-bit inputs with f32 outputs: status NOT_SUPPORTED on CUDA 13.)
// Quantized weights: before each expert's GEMM, its gate|up (then its down)
// is dequantized into one f16 scratch matrix on the same stream, which the
// next expert's dequantization overwrites once the GEMM has read it.
//   gate|up: g[pos][0:d_ff] = x[pos] . W_gate^T, g[pos][d_ff:2 d_ff] = x[pos] . W_up^T
//   h[pos] = silu(g[pos][0:d_ff]) * g[pos][d_ff:]
//   down:    y[pos] = h[pos] . W_down^T
// cuBLAS is column-major: a row-major [rows][cols] matrix is its transpose,
// so C^T = W . X^T is computed with op(A) = T on the weights.
#include <cstdio>
#include <cublas_api.h>
#include <dlfcn.h>
#include <mutex>

#include "kernels/cuda/moe_quant.cuh"

typedef cublasStatus_t (*mb_cublas_create_fn)(cublasHandle_t *);
typedef cublasStatus_t (*mb_cublas_destroy_fn)(cublasHandle_t);
typedef cublasStatus_t (*mb_cublas_stream_fn)(cublasHandle_t, cudaStream_t);
typedef cublasStatus_t (*mb_cublas_gemm_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                            const void *, const void *, cudaDataType_t, int, const void *,
                                            cudaDataType_t, int, const void *, void *, cudaDataType_t, int,
                                            cublasComputeType_t, cublasGemmAlgo_t);

static struct {
    std::once_flag once;
    mb_cublas_create_fn create;
    mb_cublas_destroy_fn destroy;
    mb_cublas_stream_fn set_stream;
    mb_cublas_gemm_fn gemm;
} mb_cublas;

static void mb_cublas_load()
{
    static const char *const names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so",
                                        "/usr/local/cuda/lib64/libcublas.so"};
    for (const char *n : names) {
        void *h = dlopen(n, RTLD_NOW | RTLD_LOCAL);
        if (!h) continue;
        mb_cublas.create = (mb_cublas_create_fn)dlsym(h, "cublasCreate_v2");
        mb_cublas.destroy = (mb_cublas_destroy_fn)dlsym(h, "cublasDestroy_v2");
        mb_cublas.set_stream = (mb_cublas_stream_fn)dlsym(h, "cublasSetStream_v2");
        mb_cublas.gemm = (mb_cublas_gemm_fn)dlsym(h, "cublasGemmEx");
        if (mb_cublas.create && mb_cublas.destroy && mb_cublas.set_stream && mb_cublas.gemm) return;
        mb_cublas.gemm = nullptr;
        dlclose(h);
    }
}

extern "C" int mb_kcuda_cublas_available(void)
{
    std::call_once(mb_cublas.once, mb_cublas_load);
    return mb_cublas.gemm != nullptr;
}

void mb_kcuda_cublas_ws_free(mb_kcuda_moe_ws *ws)
{
    if (ws->cublas && mb_cublas.destroy) mb_cublas.destroy((cublasHandle_t)ws->cublas);
    ws->cublas = nullptr;
}

// h = silu(gate) * up from the f32 gate|up rows, as 16-bit high (and low) halves.
template <typename T>
__global__ void mb_kcuda_silu_mul_kernel(const float *__restrict__ g, T *__restrict__ hhi, T *__restrict__ hlo,
                                         int d_ff)
{
    const size_t pos = blockIdx.x;
    const float *gr = g + pos * 2 * d_ff;
    for (int j = threadIdx.x; j < d_ff; j += blockDim.x) {
        const float v = mb_silu(gr[j]) * gr[d_ff + j];
        const T t = mb_from_f32<T>(v);
        hhi[pos * d_ff + j] = t;
        if (hlo) hlo[pos * d_ff + j] = mb_from_f32<T>(v - mb_to_f32<T>(t));
    }
}

template <typename T>
static cudaError_t mb_cublas_typed(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int split_x, int split_h,
                                   cudaStream_t stream, cudaDataType_t dt)
{
    const int dm = (int)p->d_model, dff = (int)p->d_ff;
    const size_t np = p->n_pairs;
    const T *xhi = (const T *)ws->x, *xlo = split_x ? xhi + np * dm : nullptr;
    T *hhi = (T *)ws->h, *hlo = split_h ? hhi + np * dff : nullptr;
    float *g = ws->y, *y = ws->y; // g is dead once h is made; y reuses it
    cublasHandle_t h = (cublasHandle_t)ws->cublas;
    if (mb_cublas.set_stream(h, stream) != CUBLAS_STATUS_SUCCESS) return cudaErrorNotSupported;
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
    auto gemm = [&](int m, int n, int k, const void *A, int lda, const void *B, int ldb, float *C, int ldc,
                    const float *beta) {
        if (s == CUBLAS_STATUS_SUCCESS)
            s = mb_cublas.gemm(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, A, dt, lda, B, dt, ldb, beta, C,
                               CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    };
    const size_t wmat = (size_t)dm * dff; // elements of one weight matrix
    size_t off = 0;
    for (uint32_t e = 0; e < p->plan_experts; e++) {
        const mb_kcuda_expert ex = p->slots_host[p->plan_slot[e]];
        const int n = p->plan_count[e];
        const T *wg = (const T *)ex.gate, *wu = (const T *)ex.up;
        float *ge = g + off * 2 * dff;
        for (int part = 0; part < 1 + split_x; part++) {
            const T *xe = (part ? xlo : xhi) + off * dm;
            const float *beta = part ? &one : &zero;
            if (wu == wg + wmat) {
                gemm(2 * dff, n, dm, wg, dm, xe, dm, ge, 2 * dff, beta);
            } else {
                gemm(dff, n, dm, wg, dm, xe, dm, ge, 2 * dff, beta);
                gemm(dff, n, dm, wu, dm, xe, dm, ge + dff, 2 * dff, beta);
            }
        }
        off += (size_t)n;
    }
    if (s != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cuda kernels: cublasGemmEx (type %d) returned status %d\n", (int)dt, (int)s);
        return cudaErrorNotSupported;
    }
    mb_kcuda_silu_mul_kernel<T><<<(unsigned)np, dff >= 256 ? 256 : 64, 0, stream>>>(g, hhi, hlo, dff);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    off = 0;
    for (uint32_t x = 0; x < p->plan_experts; x++) {
        const mb_kcuda_expert ex = p->slots_host[p->plan_slot[x]];
        const int n = p->plan_count[x];
        for (int part = 0; part < 1 + split_h; part++)
            gemm(dm, n, dff, ex.down, dff, (part ? hlo : hhi) + off * dff, dff, y + off * dm, dm,
                 part ? &one : &zero);
        off += (size_t)n;
    }
    if (s != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cuda kernels: cublasGemmEx (type %d) returned status %d\n", (int)dt, (int)s);
        return cudaErrorNotSupported;
    }
    return cudaSuccess;
}

// Bytes of f16 scratch the quantized cuBLAS path needs: one expert's gate|up.
size_t mb_kcuda_cublas_quant_scratch(const mb_kcuda_moe_problem *p)
{
    return (size_t)2 * p->d_ff * p->d_model * sizeof(__half);
}

// The quantized weights' version of mb_cublas_typed: the same GEMMs, each on
// an expert's matrices dequantized to f16 just before (ws->wq).
static cudaError_t mb_cublas_quant(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int split_x, int split_h,
                                   cudaStream_t stream)
{
    const int dm = (int)p->d_model, dff = (int)p->d_ff;
    const size_t np = p->n_pairs;
    if (ws->cap_wq_bytes < mb_kcuda_cublas_quant_scratch(p)) return cudaErrorNotSupported;
    const __half *xhi = (const __half *)ws->x, *xlo = split_x ? xhi + np * dm : nullptr;
    __half *hhi = (__half *)ws->h, *hlo = split_h ? hhi + np * dff : nullptr;
    __half *wq = (__half *)ws->wq;
    float *g = ws->y, *y = ws->y; // g is dead once h is made; y reuses it
    cublasHandle_t h = (cublasHandle_t)ws->cublas;
    if (mb_cublas.set_stream(h, stream) != CUBLAS_STATUS_SUCCESS) return cudaErrorNotSupported;
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
    cudaError_t e = cudaSuccess;
    auto gemm = [&](int m, int n, int k, const void *A, int lda, const void *B, int ldb, float *C, int ldc,
                    const float *beta) {
        if (s == CUBLAS_STATUS_SUCCESS && e == cudaSuccess)
            s = mb_cublas.gemm(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, A, CUDA_R_16F, lda, B, CUDA_R_16F, ldb,
                               beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    };
    auto dequant = [&](int q, const void *w, int rows, int k, __half *dst) {
        if (e == cudaSuccess && s == CUBLAS_STATUS_SUCCESS)
            e = mb_kcuda_qdequant_launch(q, w, rows, k, MB_KCUDA_F16, dst, stream);
    };
    size_t off = 0;
    for (uint32_t x = 0; x < p->plan_experts; x++) {
        const mb_kcuda_expert ex = p->slots_host[p->plan_slot[x]];
        const int n = p->plan_count[x];
        dequant(p->wdtype, ex.gate, dff, dm, wq);
        dequant(p->wdtype_up, ex.up, dff, dm, wq + (size_t)dff * dm);
        for (int part = 0; part < 1 + split_x; part++)
            gemm(2 * dff, n, dm, wq, dm, (part ? xlo : xhi) + off * dm, dm, g + off * 2 * dff, 2 * dff,
                 part ? &one : &zero);
        off += (size_t)n;
    }
    if (e == cudaSuccess && s == CUBLAS_STATUS_SUCCESS) {
        mb_kcuda_silu_mul_kernel<__half><<<(unsigned)np, dff >= 256 ? 256 : 64, 0, stream>>>(g, hhi, hlo, dff);
        e = cudaGetLastError();
    }
    off = 0;
    for (uint32_t x = 0; x < p->plan_experts; x++) {
        const mb_kcuda_expert ex = p->slots_host[p->plan_slot[x]];
        const int n = p->plan_count[x];
        dequant(p->wdtype_down, ex.down, dm, dff, wq);
        for (int part = 0; part < 1 + split_h; part++)
            gemm(dm, n, dff, wq, dff, (part ? hlo : hhi) + off * dff, dff, y + off * dm, dm, part ? &one : &zero);
        off += (size_t)n;
    }
    if (e != cudaSuccess) return e;
    if (s != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cuda kernels: cublasGemmEx (f16, quantized weights) returned status %d\n", (int)s);
        return cudaErrorNotSupported;
    }
    return cudaSuccess;
}

cudaError_t mb_kcuda_cublas_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int split_x, int split_h,
                                   cudaStream_t stream)
{
    if (!mb_kcuda_cublas_available() || !p->plan_experts || !p->plan_slot || !p->slots_host)
        return cudaErrorNotSupported;
    if (!ws->cublas) {
        cublasHandle_t h = nullptr;
        if (mb_cublas.create(&h) != CUBLAS_STATUS_SUCCESS) return cudaErrorNotSupported;
        ws->cublas = h;
    }
    switch (p->wdtype) {
    case MB_KCUDA_F16: return mb_cublas_typed<__half>(ws, p, split_x, split_h, stream, CUDA_R_16F);
    case MB_KCUDA_BF16: return mb_cublas_typed<__nv_bfloat16>(ws, p, split_x, split_h, stream, CUDA_R_16BF);
    case MB_KCUDA_Q8_0:
    case MB_KCUDA_Q4_K:
    case MB_KCUDA_Q6_K: return mb_cublas_quant(ws, p, split_x, split_h, stream);
    default: return cudaErrorInvalidValue;
    }
}
