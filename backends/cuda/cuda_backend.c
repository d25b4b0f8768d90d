/* The CUDA backend's function table: open (device, streams, slot tables),
 * close and capabilities. Weights are in cuda_weights.c, requests in
 * cuda_run.c, the arithmetic in kernels/cuda/. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backends/cuda/cuda_internal.h"
#include "kernels/cuda/device_query.h"

uint64_t mb_cuda_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

mb_status mb_cuda_fail(const char *what, cudaError_t e)
{
    fprintf(stderr, "cuda backend: %s: %s\n", what, cudaGetErrorString(e));
    cudaGetLastError(); /* clear a non-sticky error */
    switch (e) {
    case cudaErrorMemoryAllocation: return MB_STATUS_NOMEM;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice:
    case cudaErrorDevicesUnavailable:
    case cudaErrorLaunchFailure:
    case cudaErrorIllegalAddress:
    case cudaErrorECCUncorrectable:
        return MB_STATUS_DEVICE;
    default: return MB_STATUS_BACKEND;
    }
}

static void mb_cuda_close(void *state)
{
    mb_cuda_backend *be = state;
    if (!be) return;
    cudaSetDevice(be->device);
    /* Abandon whatever is in flight: wait for the device, then free. */
    cudaDeviceSynchronize();
    for (unsigned i = 0; i < MB_BACKEND_MAX_INFLIGHT; i++)
        mb_cuda_req_free(&be->reqs[i]);
    mb_cuda_weights_free(be);
    for (int i = 0; i < MB_CUDA_UPLOAD_BUFS; i++) {
        if (be->up_buf[i]) cudaFreeHost(be->up_buf[i]);
        if (be->up_ev[i]) cudaEventDestroy(be->up_ev[i]);
    }
    if (be->upload) cudaStreamDestroy(be->upload);
    if (be->h_slots) cudaFreeHost(be->h_slots);
    if (be->d_slots) cudaFree(be->d_slots);
    free(be->slot_mem);
    free(be->plan_by_slot);
    free(be->plan_slot);
    free(be->plan_count);
    free(be->layer_experts);
    mb_route_table_fini(&be->table);
    cudaGetLastError();
    free(be);
}

static mb_status mb_cuda_open(const mb_backend_config *cfg, void **state)
{
    if (!cfg || !state) return MB_STATUS_INVALID_ARG;
    const mb_backend_gpu_options *opt = cfg->options;
    mb_backend_gpu_options o = {.staging_bytes = MB_CUDA_DEFAULT_STAGING, .max_inflight = 2, .progress = 1};
    if (opt) {
        if (opt->staging_bytes) o.staging_bytes = opt->staging_bytes;
        if (opt->max_inflight) o.max_inflight = opt->max_inflight;
        o.progress = opt->progress;
    }
    if (o.max_inflight > MB_BACKEND_MAX_INFLIGHT || o.staging_bytes < 4096) return MB_STATUS_CONFIG;
    const uint32_t max_slots = cfg->max_slots ? cfg->max_slots : MB_CUDA_DEFAULT_SLOTS;
    if (max_slots > MB_CUDA_MAX_SLOTS) return MB_STATUS_CONFIG;
    const int device = cfg->device < 0 ? 0 : cfg->device;
    const int n_dev = mb_cuda_device_count();
    if (n_dev <= 0) {
        fprintf(stderr, "cuda backend: no CUDA device (the driver reports none)\n");
        return MB_STATUS_DEVICE;
    }
    if (device >= n_dev) {
        fprintf(stderr, "cuda backend: no CUDA device %d (the driver reports %d)\n", device, n_dev);
        return MB_STATUS_DEVICE;
    }

    mb_cuda_backend *be = calloc(1, sizeof *be);
    if (!be) return MB_STATUS_NOMEM;
    be->device = device;
    be->max_slots = max_slots;
    be->max_inflight = o.max_inflight;
    be->staging_max = o.staging_bytes;
    /* A request's device scratch (about n_pairs * (2 d_ff + d_model) * 8
     * bytes at most): an eighth of the card, at least 2 GiB. */
    {
        size_t fr = 0, tot = 0;
        cudaSetDevice(device);
        if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) cudaGetLastError();
        be->ws_max = tot / 8 > ((uint64_t)2 << 30) ? tot / 8 : ((uint64_t)2 << 30);
    }
    be->progress = o.progress;
    const char *g = getenv("MB_CUDA_GRAPHS");
    be->use_graphs = !(g && g[0] == '0');
    const char *path = getenv("MB_CUDA_PATH");
    be->path = path && !strcmp(path, "gemv")     ? MB_KCUDA_PATH_GEMV
               : path && !strcmp(path, "gemm")   ? MB_KCUDA_PATH_GEMM
               : path && !strcmp(path, "cublas") ? MB_KCUDA_PATH_CUBLAS
                                                 : MB_KCUDA_PATH_AUTO;
    be->upload_status = MB_STATUS_OK;
    mb_status st = mb_route_table_init(&be->table, max_slots);
    if (st != MB_STATUS_OK) {
        free(be);
        return st;
    }
    be->slot_mem = calloc(max_slots, sizeof *be->slot_mem);
    be->plan_by_slot = calloc(max_slots, sizeof *be->plan_by_slot);
    if (!be->slot_mem || !be->plan_by_slot) {
        mb_cuda_close(be);
        return MB_STATUS_NOMEM;
    }
    unsigned long long tot = 0, fr = 0;
    if (mb_cuda_device_describe(device, be->device_name, sizeof be->device_name, &tot, &fr) != 0)
        snprintf(be->device_name, sizeof be->device_name, "CUDA device %d", device);
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&be->upload, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaMalloc((void **)&be->d_slots, (size_t)max_slots * sizeof(mb_kcuda_expert));
    if (e == cudaSuccess) e = cudaMemset(be->d_slots, 0, (size_t)max_slots * sizeof(mb_kcuda_expert));
    if (e == cudaSuccess)
        e = cudaHostAlloc((void **)&be->h_slots, (size_t)max_slots * sizeof(mb_kcuda_expert), cudaHostAllocDefault);
    if (e == cudaSuccess) memset(be->h_slots, 0, (size_t)max_slots * sizeof(mb_kcuda_expert));
    for (int i = 0; e == cudaSuccess && i < MB_CUDA_UPLOAD_BUFS; i++) {
        e = cudaHostAlloc(&be->up_buf[i], MB_CUDA_UPLOAD_BYTES, cudaHostAllocWriteCombined);
        if (e == cudaSuccess) e = cudaEventCreateWithFlags(&be->up_ev[i], cudaEventDisableTiming);
    }
    if (e != cudaSuccess) {
        st = mb_cuda_fail("open", e);
        mb_cuda_close(be);
        return st;
    }
    *state = be;
    return MB_STATUS_OK;
}

static mb_status mb_cuda_caps(void *state, mb_backend_caps *caps)
{
    mb_cuda_backend *be = state;
    if (!be || !caps) return MB_STATUS_INVALID_ARG;
    size_t fr = 0, tot = 0;
    cudaSetDevice(be->device);
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) cudaGetLastError();
    mb_backend_gpu_caps(caps, "cuda", be->device_name, tot, fr, be->max_slots, be->max_inflight,
                        be->staging_max);
    return MB_STATUS_OK;
}

const mb_backend_ops mb_backend_cuda_ops = {
    .abi_version = MB_BACKEND_ABI_VERSION,
    .name = "cuda",
    .open = mb_cuda_open,
    .close = mb_cuda_close,
    .caps = mb_cuda_caps,
    .load_expert = mb_cuda_load_expert,
    .load_finish = mb_cuda_load_finish,
    .reserve_layer = mb_cuda_reserve_layer,
    .register_host = NULL,
    .unregister_host = NULL,
    .run = NULL,
    .submit = mb_cuda_submit,
    .poll = mb_cuda_poll,
    .fetch = mb_cuda_fetch,
    .device_layer = mb_cuda_device_layer,
};
