/* The GPU ceilings that bench_expert_gpu reports its ratios against,
 * measured in the same run on the same device: device-to-device copy
 * bandwidth (what streaming weights can hope for) and cuBLAS's dense bf16
 * GEMM throughput (what the prefill GEMMs can hope for). C-callable; built
 * only when nvcc is found. */
#ifndef MB_BENCH_GPU_CEILING_H
#define MB_BENCH_GPU_CEILING_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cudaMemcpyAsync device to device of a bytes-sized buffer on the current
 * device, the fastest of the copies made in about seconds. *copied_gbs
 * receives bytes copied per second / 1e9; the memory traffic is twice that
 * (every byte read once and written once), which is the figure a kernel
 * that only reads should be compared with. Returns 0 or a CUDA error code.
 * Blocking. */
int mb_gpu_copy_gbs(size_t bytes, double seconds, double *copied_gbs);

/* cuBLAS (loaded with dlopen, so the benchmark runs where cuBLAS is not
 * installed) C[m][n] = A[m][k] B[k][n] with bf16 A, B and C and f32
 * compute, the fastest mean over batches in about seconds: *tflops
 * receives 2*m*n*k / time / 1e12. Returns 0; -1 with why filled when cuBLAS
 * cannot be loaded or fails; or a CUDA error code. Blocking. */
int mb_gpu_gemm_tflops(int m, int n, int k, double seconds, double *tflops, char *why, size_t why_cap);

#ifdef __cplusplus
}
#endif

#endif
