// The cuBLAS path for prefill: both projections as cuBLAS grouped GEMMs, one
// group per (expert, matrix), with the group sizes from the host's plan of
// the request (the host holds the routing anyway, so no device result is
// read back). cuBLAS is loaded with dlopen on first use, so binaries run
// where only the driver is installed; without it the WMMA path serves.
//   gate|up: g[pos][0:d_ff] = x[pos] . W_gate^T, g[pos][d_ff:2 d_ff] = x[pos] . W_up^T
//   h[pos] = silu(g[pos][0:d_ff]) * g[pos][d_ff:]
//   down:    y[pos] = h[pos] . W_down^T
// cuBLAS is column-major: a row-major [rows][cols] matrix is its transpose,
// so C^T = W . X^T is computed with op(A) = T on the weights.
#include <cublas_api.h>
#include <cstdio>
#include <dlfcn.h>
#include <mutex>

#include "kernels/cuda/moe_internal.cuh"

typedef cublasStatus_t (*mb_cublas_create_fn)(cublasHandle_t *);
typedef cublasStatus_t (*mb_cublas_destroy_fn)(cublasHandle_t);
typedef cublasStatus_t (*mb_cublas_stream_fn)(cublasHandle_t, cudaStream_t);
typedef cublasStatus_t (*mb_cublas_grouped_fn)(cublasHandle_t, const cublasOperation_t[], const cublasOperation_t[],
                                               const int[], const int[], const int[], const void *,
                                               const void *const[], cudaDataType_t, const int[],
                                               const void *const[], cudaDataType_t, const int[], const void *,
                                               void *const[], cudaDataType_t, const int[], int, const int[],
                                               cublasComputeType_t);

static struct {
    std::once_flag once;
    mb_cublas_create_fn create;
    mb_cublas_destroy_fn destroy;
    mb_cublas_stream_fn set_stream;
    mb_cublas_grouped_fn grouped;
} mb_cublas;

static void mb_cublas_load()
{
    static const char *const names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};
    for (const char *n : names) {
        void *h = dlopen(n, RTLD_NOW | RTLD_LOCAL);
        if (!h) continue;
        mb_cublas.create = (mb_cublas_create_fn)dlsym(h, "cublasCreate_v2");
        mb_cublas.destroy = (mb_cublas_destroy_fn)dlsym(h, "cublasDestroy_v2");
        mb_cublas.set_stream = (mb_cublas_stream_fn)dlsym(h, "cublasSetStream_v2");
        mb_cublas.grouped = (mb_cublas_grouped_fn)dlsym(h, "cublasGemmGroupedBatchedEx");
        if (mb_cublas.create && mb_cublas.destroy && mb_cublas.set_stream && mb_cublas.grouped) return;
        mb_cublas.grouped = nullptr;
        dlclose(h);
    }
}

extern "C" int mb_kcuda_cublas_available(void)
{
    std::call_once(mb_cublas.once, mb_cublas_load);
    return mb_cublas.grouped != nullptr;
}

void mb_kcuda_cublas_ws_free(mb_kcuda_moe_ws *ws)
{
    if (ws->cublas && mb_cublas.destroy) mb_cublas.destroy((cublasHandle_t)ws->cublas);
    ws->cublas = nullptr;
    cudaFree(ws->ptrs);
    ws->ptrs = nullptr;
    free(ws->host_args);
    ws->host_args = nullptr;
    ws->cap_groups = 0;
}

// Fills the device pointer arrays of both grouped GEMMs from the route
// kernel's expert list (one thread per expert). Layout, n = experts:
//   [0,2n) A1 weights (gate then up)  [2n,4n) B1 x hi  [4n,6n) C1 g
//   [6n,8n) B1 x lo  [8n,9n) A2 down  [9n,10n) B2 h hi  [10n,11n) C2 y  [11n,12n) B2 h lo
template <typename T>
__global__ void mb_kcuda_cublas_ptrs_kernel(const mb_kcuda_expert *__restrict__ slots,
                                            const int32_t *__restrict__ expert_slot,
                                            const int32_t *__restrict__ expert_off, void **ptrs, int n,
                                            const T *xhi, const T *xlo, float *g, const T *hhi, const T *hlo,
                                            float *y, int d_model, int d_ff)
{
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    const mb_kcuda_expert ex = slots[expert_slot[e]];
    const size_t off = (size_t)expert_off[e];
    ptrs[e] = (void *)ex.gate;
    ptrs[n + e] = (void *)ex.up;
    ptrs[2 * n + e] = ptrs[3 * n + e] = (void *)(xhi + off * d_model);
    ptrs[4 * n + e] = g + off * 2 * d_ff;
    ptrs[5 * n + e] = g + off * 2 * d_ff + d_ff;
    ptrs[6 * n + e] = ptrs[7 * n + e] = (void *)(xlo ? xlo + off * d_model : nullptr);
    ptrs[8 * n + e] = (void *)ex.down;
    ptrs[9 * n + e] = (void *)(hhi + off * d_ff);
    ptrs[10 * n + e] = y + off * d_model;
    ptrs[11 * n + e] = (void *)(hlo ? hlo + off * d_ff : nullptr);
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

static int mb_cublas_grow(mb_kcuda_moe_ws *ws, size_t groups)
{
    if (groups <= ws->cap_groups) return 0;
    size_t cap = ws->cap_groups ? ws->cap_groups : 64;
    while (cap < groups)
        cap *= 2;
    cudaFree(ws->ptrs);
    free(ws->host_args);
    ws->ptrs = nullptr;
    ws->host_args = (int *)malloc(11 * 2 * cap * sizeof(int));
    ws->cap_groups = 0;
    if (!ws->host_args) return (int)cudaErrorMemoryAllocation;
    cudaError_t e = cudaMalloc(&ws->ptrs, 12 * cap * sizeof(void *));
    if (e != cudaSuccess) return (int)e;
    ws->cap_groups = cap;
    return 0;
}

template <typename T>
static cudaError_t mb_cublas_typed(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int split_x, int split_h,
                                   cudaStream_t stream, cudaDataType_t dt)
{
    const int n = (int)p->plan_experts, dm = (int)p->d_model, dff = (int)p->d_ff;
    const size_t np = p->n_pairs;
    // The pointer arrays and host arguments must not change under a GEMM
    // that is still queued: requests on one workspace run in stream order,
    // and the host arrays are consumed by cuBLAS at call time.
    if (mb_cublas_grow(ws, (size_t)n)) return cudaErrorMemoryAllocation;
    const T *xhi = (const T *)ws->x, *xlo = split_x ? xhi + np * dm : nullptr;
    T *hhi = (T *)ws->h, *hlo = split_h ? hhi + np * dff : nullptr;
    float *g = ws->y, *y = ws->y;
    mb_kcuda_cublas_ptrs_kernel<T><<<(n + 127) / 128, 128, 0, stream>>>(p->slots, ws->expert_slot, ws->expert_off,
                                                                       ws->ptrs, n, xhi, xlo, g, hhi, hlo, y, dm,
                                                                       dff);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;

    // Host arguments: gate and up groups then down groups share arrays.
    int *a = ws->host_args;
    const size_t G = 2 * (size_t)n;
    int *m1 = a, *n1 = a + G, *k1 = a + 2 * G, *lda1 = a + 3 * G, *ldb1 = a + 4 * G, *ldc1 = a + 5 * G;
    int *ones = a + 6 * G;
    int *m2 = a + 7 * G, *k2 = a + 8 * G, *lda2 = a + 9 * G, *ldc2 = a + 10 * G;
    for (int i = 0; i < 2 * n; i++) {
        m1[i] = dff;
        n1[i] = p->plan_count[i % n];
        k1[i] = dm;
        lda1[i] = dm;
        ldb1[i] = dm;
        ldc1[i] = 2 * dff;
        ones[i] = 1;
        m2[i] = dm;
        k2[i] = dff;
        lda2[i] = dff;
        ldc2[i] = dm;
    }
    // Fixed-size scratch on the stack for the small per-group arrays that
    // cuBLAS takes by value type; groups beyond it go in further calls.
    enum { CHUNK = 512 };
    cublasOperation_t ta[CHUNK], tb[CHUNK];
    float alpha[CHUNK], beta0[CHUNK], beta1[CHUNK];
    for (int i = 0; i < CHUNK; i++) {
        ta[i] = CUBLAS_OP_T;
        tb[i] = CUBLAS_OP_N;
        alpha[i] = 1.0f;
        beta0[i] = 0.0f;
        beta1[i] = 1.0f;
    }
    cublasHandle_t h = (cublasHandle_t)ws->cublas;
    if (mb_cublas.set_stream(h, stream) != CUBLAS_STATUS_SUCCESS) return cudaErrorUnknown;
    void **P = ws->ptrs;
    auto gemm = [&](int g0, int count, int *mm, int *nn, int *kk, int *la, int *lb, int *lc, void **A, void **B,
                    void **C, float *beta) -> cudaError_t {
        for (int i = 0; i < count; i += CHUNK) {
            const int c = count - i < CHUNK ? count - i : CHUNK;
            cublasStatus_t s = mb_cublas.grouped(h, ta, tb, mm + g0 + i, nn + g0 + i, kk + g0 + i, alpha,
                                                 (const void *const *)(A + i), dt, la + g0 + i,
                                                 (const void *const *)(B + i), dt, lb + g0 + i, beta,
                                                 (void *const *)(C + i), CUDA_R_32F, lc + g0 + i, c, ones,
                                                 CUBLAS_COMPUTE_32F);
            if (s != CUBLAS_STATUS_SUCCESS) {
                fprintf(stderr, "cuda kernels: cublasGemmGroupedBatchedEx(%d groups, m %d n %d k %d, type %d) "
                                "returned status %d\n", c, mm[g0 + i], nn[g0 + i], kk[g0 + i], (int)dt, (int)s);
                return cudaErrorNotSupported;
            }
        }
        return cudaSuccess;
    };
    // gate and up of every expert: 2n groups, B pointers [2n,4n), C [4n,6n).
    e = gemm(0, 2 * n, m1, n1, k1, lda1, ldb1, ldc1, P, P + 2 * n, P + 4 * n, beta0);
    if (e == cudaSuccess && split_x) e = gemm(0, 2 * n, m1, n1, k1, lda1, ldb1, ldc1, P, P + 6 * n, P + 4 * n, beta1);
    if (e != cudaSuccess) return e;
    mb_kcuda_silu_mul_kernel<T><<<(unsigned)np, dff >= 256 ? 256 : 64, 0, stream>>>(g, hhi, hlo, dff);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
    // down: n groups; n1 (counts) for the first n groups serve again.
    e = gemm(0, n, m2, n1, k2, lda2, lda2, ldc2, P + 8 * n, P + 9 * n, P + 10 * n, beta0);
    if (e == cudaSuccess && split_h) e = gemm(0, n, m2, n1, k2, lda2, lda2, ldc2, P + 8 * n, P + 11 * n, P + 10 * n, beta1);
    return e;
}

cudaError_t mb_kcuda_cublas_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int split_x, int split_h,
                                   cudaStream_t stream)
{
    if (!mb_kcuda_cublas_available() || !p->plan_experts) return cudaErrorNotSupported;
    if (!ws->cublas) {
        cublasHandle_t h = nullptr;
        if (mb_cublas.create(&h) != CUBLAS_STATUS_SUCCESS) return cudaErrorNotSupported;
        ws->cublas = h;
    }
    switch (p->wdtype) {
    case MB_KCUDA_F16: return mb_cublas_typed<__half>(ws, p, split_x, split_h, stream, CUDA_R_16F);
    case MB_KCUDA_BF16: return mb_cublas_typed<__nv_bfloat16>(ws, p, split_x, split_h, stream, CUDA_R_16BF);
    default: return cudaErrorInvalidValue;
    }
}
