/* CUDA device discovery, callable from C. Built only when nvcc is found. */
#ifndef MB_KERNELS_CUDA_DEVICE_QUERY_H
#define MB_KERNELS_CUDA_DEVICE_QUERY_H

#ifdef __cplusplus
extern "C" {
#endif

/* Number of CUDA devices; 0 when there is no driver or no device. */
int mb_cuda_device_count(void);

/* Writes "NAME (sm_XY, N SMs)" and the device memory; -1 on failure. */
int mb_cuda_device_describe(int device, char *buf, unsigned long cap, unsigned long long *mem_total,
                            unsigned long long *mem_free);

#ifdef __cplusplus
}
#endif

#endif
