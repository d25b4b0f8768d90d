// The combine: out[t][c] = sum over token t's pairs j, in request order, of
// gate_j * y[pos_j][c], encoded to the payload dtype. A fixed order and no
// atomics keep the result bit-identical from run to run; a token without
// pairs gets zeros.
#include "kernels/cuda/moe_internal.cuh"

template <typename P>
__global__ void mb_kcuda_combine_kernel(const int32_t *__restrict__ tok_off, const mb_kcuda_pair *__restrict__ pairs,
                                        const int32_t *__restrict__ pair_pos, const float *__restrict__ y,
                                        P *__restrict__ out, int d_model)
{
    const int t = blockIdx.x;
    const int j0 = tok_off[t], j1 = tok_off[t + 1];
    P *o = out + (size_t)t * d_model;
    for (int c = threadIdx.x; c < d_model; c += blockDim.x) {
        float acc = 0.0f;
        for (int j = j0; j < j1; j++)
            acc += pairs[j].gate * y[(size_t)pair_pos[j] * d_model + c];
        o[c] = mb_from_f32<P>(acc);
    }
}

cudaError_t mb_kcuda_combine_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, cudaStream_t stream)
{
    const unsigned threads = p->d_model >= 512 ? 512 : ((p->d_model + 31) / 32) * 32;
    const mb_kcuda_pair *pairs = (const mb_kcuda_pair *)p->pairs;
    const int dm = (int)p->d_model;
    switch (p->payload) {
    case MB_KCUDA_F32:
        mb_kcuda_combine_kernel<float><<<p->n_tokens, threads, 0, stream>>>(ws->tok_off, pairs, ws->pair_pos, ws->y,
                                                                           (float *)p->out, dm);
        break;
    case MB_KCUDA_F16:
        mb_kcuda_combine_kernel<__half><<<p->n_tokens, threads, 0, stream>>>(ws->tok_off, pairs, ws->pair_pos, ws->y,
                                                                            (__half *)p->out, dm);
        break;
    case MB_KCUDA_BF16:
        mb_kcuda_combine_kernel<__nv_bfloat16><<<p->n_tokens, threads, 0, stream>>>(
            ws->tok_off, pairs, ws->pair_pos, ws->y, (__nv_bfloat16 *)p->out, dm);
        break;
    default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}
