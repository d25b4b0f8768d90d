/* The dense layers on a CUDA device, in a build without CUDA: every entry
 * point refuses (or returns nothing), and creation says why. */
#include "broker/device/forward_cuda.h"

#include <stdio.h>

#ifndef MB_HAVE_CUDA

struct mb_fwd_cuda {
    int unused;
};

int mb_fwd_cuda_built(void)
{
    return 0;
}

mb_status mb_fwd_cuda_create(const mb_model *m, uint32_t max_ctx, uint32_t chunk_cap, int device, int progress,
                             mb_fwd_cuda **out, char *err, size_t err_cap)
{
    (void)m, (void)max_ctx, (void)chunk_cap, (void)progress, (void)out;
    snprintf(err, err_cap, "--device cuda:%d: this build has no CUDA support (nvcc was not found)", device);
    return MB_STATUS_UNSUPPORTED;
}

void mb_fwd_cuda_destroy(mb_fwd_cuda *fc)
{
    (void)fc;
}

mb_status mb_fwd_cuda_chunk(mb_fwd_cuda *fc, const int32_t *ids, uint32_t n, uint32_t pos, int decode,
                            mb_moe_fn moe_fn, void *moe_ctx, float *logits, float *last_logits)
{
    (void)fc, (void)ids, (void)n, (void)pos, (void)decode, (void)moe_fn, (void)moe_ctx, (void)logits,
        (void)last_logits;
    return MB_STATUS_UNSUPPORTED;
}

uint64_t mb_fwd_cuda_take_device_ns(mb_fwd_cuda *fc)
{
    (void)fc;
    return 0;
}

const char *mb_fwd_cuda_error(const mb_fwd_cuda *fc)
{
    (void)fc;
    return "";
}

mb_status mb_fwd_cuda_set_local(mb_fwd_cuda *fc, struct mb_cuda_local_moe *lm, uint32_t max_tokens)
{
    (void)fc, (void)lm, (void)max_tokens;
    return MB_STATUS_UNSUPPORTED;
}

mb_status mb_fwd_cuda_set_wire(mb_fwd_cuda *fc, mb_dtype wire)
{
    (void)fc, (void)wire;
    return MB_STATUS_UNSUPPORTED;
}

uint64_t mb_fwd_cuda_take_local_ns(mb_fwd_cuda *fc)
{
    (void)fc;
    return 0;
}

uint64_t *mb_fwd_cuda_routed(mb_fwd_cuda *fc)
{
    (void)fc;
    return NULL;
}

uint64_t *mb_fwd_cuda_local_layer_ns(mb_fwd_cuda *fc)
{
    (void)fc;
    return NULL;
}

#endif
