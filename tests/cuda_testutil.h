/* Helpers for the tests that drive CUDA kernels directly
 * (tests/unit/cuda_dense, tests/unit/cuda_quant): a failed CUDA call ends
 * the test with its name, device buffers from host data and back. Also
 * built through the CPU emulator (tests/unit/cuda_dense/emu). */
#ifndef MB_TESTS_CUDA_TESTUTIL_H
#define MB_TESTS_CUDA_TESTUTIL_H

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/cuda/moe.h" /* mb_kcuda_error_str */
#include "tests/testutil.h"

#define CU(call)                                                                                   \
    do {                                                                                           \
        int e_ = (int)(call);                                                                      \
        if (e_ != 0) {                                                                             \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, mb_kcuda_error_str(e_)); \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* Launch then wait, so an asynchronous fault is blamed on its kernel. */
#define RUN(call)                                                                                  \
    do {                                                                                           \
        CU(call);                                                                                  \
        CU(cudaDeviceSynchronize());                                                               \
    } while (0)

static inline void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    REQUIRE(p);
    return p;
}

static inline void *dev_alloc(size_t bytes)
{
    void *p = NULL;
    CU(cudaMalloc(&p, bytes ? bytes : 1));
    return p;
}

static inline void *dev_upload(const void *src, size_t bytes)
{
    void *p = dev_alloc(bytes);
    if (bytes) CU(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice));
    return p;
}

static inline void dev_download(void *dst, const void *src, size_t bytes)
{
    CU(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

#endif
