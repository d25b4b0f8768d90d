// Device discovery for the CUDA backend: how many devices the driver offers
// and a one-line description of each. C linkage so C code can call it.
#include <cstdio>
#include <cuda_runtime.h>

#include "kernels/cuda/device_query.h"

extern "C" int mb_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky "no driver / no device" error
        return 0;
    }
    return n;
}

extern "C" int mb_cuda_device_describe(int device, char *buf, unsigned long cap, unsigned long long *mem_total,
                                       unsigned long long *mem_free)
{
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, device) != cudaSuccess) return -1;
    size_t free_b = 0, total_b = 0;
    if (cudaSetDevice(device) != cudaSuccess || cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return -1;
    std::snprintf(buf, cap, "%s (sm_%d%d, %d SMs)", p.name, p.major, p.minor, p.multiProcessorCount);
    *mem_total = total_b;
    *mem_free = free_b;
    return 0;
}
