// Device plumbing for the GPU benchmarks (gpu_device.h): thin wrappers of
// the CUDA runtime, timing marks and the spin kernel.
#include <cuda_runtime_api.h>
#include <cstdint>
#include <cstdlib>

#include "bench/gpu_device.h"

extern "C" int mb_gpu_set_device(int device) { return (int)cudaSetDevice(device); }

extern "C" int mb_gpu_alloc(void **ptr, size_t bytes) { return (int)cudaMalloc(ptr, bytes ? bytes : 1); }

extern "C" void mb_gpu_free(void *ptr)
{
    if (ptr) cudaFree(ptr);
}

extern "C" int mb_gpu_upload(void *dst, const void *src, size_t bytes)
{
    return (int)cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
}

extern "C" int mb_gpu_download(void *dst, const void *src, size_t bytes)
{
    return (int)cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost);
}

extern "C" int mb_gpu_stream_create(void **stream)
{
    cudaStream_t s = nullptr;
    cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    if (e == cudaSuccess) *stream = s;
    return (int)e;
}

extern "C" void mb_gpu_stream_destroy(void *stream)
{
    if (stream) cudaStreamDestroy((cudaStream_t)stream);
}

extern "C" int mb_gpu_stream_sync(void *stream) { return (int)cudaStreamSynchronize((cudaStream_t)stream); }

struct mb_gpu_marks {
    size_t n;
    cudaEvent_t ev[1]; // [n]
};

extern "C" int mb_gpu_marks_create(size_t n, mb_gpu_marks **out)
{
    if (n == 0) return (int)cudaErrorInvalidValue;
    mb_gpu_marks *m = (mb_gpu_marks *)calloc(1, sizeof *m + (n - 1) * sizeof(cudaEvent_t));
    if (!m) return (int)cudaErrorMemoryAllocation;
    cudaError_t e = cudaSuccess;
    for (size_t i = 0; i < n && e == cudaSuccess; i++) {
        e = cudaEventCreate(&m->ev[i]);
        if (e == cudaSuccess) m->n = i + 1;
    }
    if (e != cudaSuccess) {
        mb_gpu_marks_destroy(m);
        return (int)e;
    }
    *out = m;
    return 0;
}

extern "C" void mb_gpu_marks_destroy(mb_gpu_marks *m)
{
    if (!m) return;
    for (size_t i = 0; i < m->n; i++)
        cudaEventDestroy(m->ev[i]);
    free(m);
}

extern "C" int mb_gpu_marks_record(mb_gpu_marks *m, size_t i, void *stream)
{
    if (i >= m->n) return (int)cudaErrorInvalidValue;
    return (int)cudaEventRecord(m->ev[i], (cudaStream_t)stream);
}

extern "C" void *mb_gpu_marks_event(mb_gpu_marks *m, size_t i) { return i < m->n ? (void *)m->ev[i] : nullptr; }

extern "C" int mb_gpu_marks_elapsed_s(const mb_gpu_marks *m, size_t from, size_t to, double *seconds)
{
    if (from >= m->n || to >= m->n) return (int)cudaErrorInvalidValue;
    float ms = 0;
    cudaError_t e = cudaEventElapsedTime(&ms, m->ev[from], m->ev[to]);
    if (e == cudaSuccess) *seconds = (double)ms * 1e-3;
    return (int)e;
}

// The global timer counts nanoseconds whatever the SM clock does.
__global__ void mb_gpu_spin_kernel(unsigned long long ns)
{
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}

extern "C" int mb_gpu_spin(void *stream, double us)
{
    mb_gpu_spin_kernel<<<1, 1, 0, (cudaStream_t)stream>>>((unsigned long long)(us * 1e3));
    return (int)cudaGetLastError();
}
