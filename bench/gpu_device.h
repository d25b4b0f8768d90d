/* Device plumbing the GPU benchmarks need from C, so that their .c files
 * include no CUDA header: memory, streams, ordered timing marks, and a
 * spin kernel that holds a stream while the host queues work behind it.
 * Every int-returning function returns 0 or a CUDA error code (print it
 * with mb_kcuda_error_str). Built only when nvcc is found. */
#ifndef MB_BENCH_GPU_DEVICE_H
#define MB_BENCH_GPU_DEVICE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Makes device the calling thread's current device. */
int mb_gpu_set_device(int device);

/* Device memory on the current device; free NULL is a no-op. */
int mb_gpu_alloc(void **ptr, size_t bytes);
void mb_gpu_free(void *ptr);

/* Synchronous copies between host (pageable) and device memory. */
int mb_gpu_upload(void *dst, const void *src, size_t bytes);
int mb_gpu_download(void *dst, const void *src, size_t bytes);

/* A non-blocking stream (a cudaStream_t) and waiting for it. */
int mb_gpu_stream_create(void **stream);
void mb_gpu_stream_destroy(void *stream);
int mb_gpu_stream_sync(void *stream);

/* n timing events, recorded in order on one stream; elapsed between two of
 * them once both completed (after mb_gpu_stream_sync). */
typedef struct mb_gpu_marks mb_gpu_marks;
int mb_gpu_marks_create(size_t n, mb_gpu_marks **out);
void mb_gpu_marks_destroy(mb_gpu_marks *m);
int mb_gpu_marks_record(mb_gpu_marks *m, size_t i, void *stream);
/* The i-th mark's cudaEvent_t (for kernels/cuda/moe.h's phase_marks). */
void *mb_gpu_marks_event(mb_gpu_marks *m, size_t i);
int mb_gpu_marks_elapsed_s(const mb_gpu_marks *m, size_t from, size_t to, double *seconds);

/* Enqueues a one-thread kernel that spins for about us microseconds: the
 * launches queued behind it then run back to back, so the time between two
 * marks is device time, not host launch latency. Non-blocking. */
int mb_gpu_spin(void *stream, double us);

#ifdef __cplusplus
}
#endif

#endif
