// GPU ceilings (gpu_ceiling.h): device-to-device copy bandwidth through the
// runtime, and cuBLAS bf16 GEMM throughput through a dlopen'ed cuBLAS (the
// benchmark must start where only the driver is installed; cuBLAS has no
// static library in every toolkit).
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <cstdio>
#include <ctime>

#include "bench/gpu_ceiling.h"

static double mb_gpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

extern "C" int mb_gpu_copy_gbs(size_t bytes, double seconds, double *copied_gbs)
{
    void *src = nullptr, *dst = nullptr;
    cudaStream_t s = nullptr;
    cudaEvent_t a = nullptr, b = nullptr;
    cudaError_t e = cudaMalloc(&src, bytes);
    if (e == cudaSuccess) e = cudaMalloc(&dst, bytes);
    if (e == cudaSuccess) e = cudaMemset(src, 1, bytes);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaEventCreate(&a);
    if (e == cudaSuccess) e = cudaEventCreate(&b);
    // One copy to warm up, then copies until seconds have passed (at least 5).
    if (e == cudaSuccess) e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    double best = 1e30;
    const double t_end = mb_gpu_now() + seconds;
    for (int i = 0; e == cudaSuccess && (i < 5 || mb_gpu_now() < t_end); i++) {
        e = cudaEventRecord(a, s);
        if (e == cudaSuccess) e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s);
        if (e == cudaSuccess) e = cudaEventRecord(b, s);
        if (e == cudaSuccess) e = cudaEventSynchronize(b);
        float ms = 0;
        if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, a, b);
        if (e == cudaSuccess && ms > 0 && ms * 1e-3 < best) best = ms * 1e-3;
    }
    if (e == cudaSuccess) *copied_gbs = (double)bytes / best * 1e-9;
    if (a) cudaEventDestroy(a);
    if (b) cudaEventDestroy(b);
    if (s) cudaStreamDestroy(s);
    cudaFree(src);
    cudaFree(dst);
    return (int)e;
}

// The few cuBLAS entry points used, resolved by name.
typedef cublasStatus_t (*mb_cublas_create_fn)(cublasHandle_t *);
typedef cublasStatus_t (*mb_cublas_destroy_fn)(cublasHandle_t);
typedef cublasStatus_t (*mb_cublas_gemm_ex_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                               const void *, const void *, cudaDataType, int, const void *,
                                               cudaDataType, int, const void *, void *, cudaDataType, int,
                                               cublasComputeType_t, cublasGemmAlgo_t);

extern "C" int mb_gpu_gemm_tflops(int m, int n, int k, double seconds, double *tflops, char *why, size_t why_cap)
{
    static const char *const names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};
    void *lib = nullptr;
    for (const char *name : names)
        if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
    if (!lib) {
        snprintf(why, why_cap, "cuBLAS not found (%s)", dlerror());
        return -1;
    }
    mb_cublas_create_fn create = (mb_cublas_create_fn)dlsym(lib, "cublasCreate_v2");
    mb_cublas_destroy_fn destroy = (mb_cublas_destroy_fn)dlsym(lib, "cublasDestroy_v2");
    mb_cublas_gemm_ex_fn gemm = (mb_cublas_gemm_ex_fn)dlsym(lib, "cublasGemmEx");
    cublasHandle_t h = nullptr;
    if (!create || !destroy || !gemm || create(&h) != CUBLAS_STATUS_SUCCESS) {
        snprintf(why, why_cap, "cuBLAS could not be initialised");
        dlclose(lib);
        return -1;
    }
    // Column-major C[m][n] = A[m][k] B[k][n]; the layout does not change the work.
    void *A = nullptr, *B = nullptr, *C = nullptr;
    cudaError_t e = cudaMalloc(&A, (size_t)m * k * 2);
    if (e == cudaSuccess) e = cudaMalloc(&B, (size_t)k * n * 2);
    if (e == cudaSuccess) e = cudaMalloc(&C, (size_t)m * n * 2);
    // Every element 0x3c3c (bf16, about 0.0115): sums stay finite.
    if (e == cudaSuccess) e = cudaMemset(A, 0x3c, (size_t)m * k * 2);
    if (e == cudaSuccess) e = cudaMemset(B, 0x3c, (size_t)k * n * 2);
    const float alpha = 1.0f, beta = 0.0f;
    int rc = (int)e;
    auto run = [&]() {
        return gemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, A, CUDA_R_16BF, m, B, CUDA_R_16BF, k, &beta, C,
                    CUDA_R_16BF, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    };
    if (rc == 0) {
        // Warm-up (heuristics, clocks), then batches timed on the host around
        // a device-wide sync: cuBLAS may run on its own runtime's streams.
        for (int i = 0; i < 3 && rc == 0; i++)
            if (run() != CUBLAS_STATUS_SUCCESS) rc = -1;
        if (rc == 0) rc = (int)cudaDeviceSynchronize();
        double best = 1e30;
        const double t_end = mb_gpu_now() + seconds;
        for (int b = 0; rc == 0 && (b < 3 || mb_gpu_now() < t_end); b++) {
            const int reps = 10;
            double t0 = mb_gpu_now();
            for (int i = 0; i < reps && rc == 0; i++)
                if (run() != CUBLAS_STATUS_SUCCESS) rc = -1;
            if (rc == 0) rc = (int)cudaDeviceSynchronize();
            double t = (mb_gpu_now() - t0) / reps;
            if (t < best) best = t;
        }
        if (rc == 0) *tflops = 2.0 * m * n * (double)k / best * 1e-12;
        if (rc == -1) snprintf(why, why_cap, "cublasGemmEx failed");
    }
    cudaFree(A);
    cudaFree(B);
    cudaFree(C);
    destroy(h);
    dlclose(lib);
    return rc;
}
