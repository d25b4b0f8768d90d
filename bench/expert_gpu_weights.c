/* bench_expert_gpu's expert weights (expert_gpu_weights.h). */
#include "bench/expert_gpu_weights.h"

#include <stdlib.h>
#include <string.h>

#include "bench/expert_gpu_route.h"
#include "kernels/cuda/quant_layout.h"
#include "protocol/dtype.h"

int mb_egpu_weights_parse(const char *name)
{
    static const struct {
        const char *name;
        int wdtype;
    } t[] = {{"bf16", MB_KCUDA_BF16}, {"q8_0", MB_KCUDA_Q8_0}, {"q4_k", MB_KCUDA_Q4_K}, {"q6_k", MB_KCUDA_Q6_K}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(name, t[i].name)) return t[i].wdtype;
    return -1;
}

/* Random blocks, a random 1 MiB tiled over each matrix, then per block an
 * f16 scale (and min) of 2^-12 to 2^-10 (Q8_0), 2^-13 to 2^-11 (Q4_K),
 * 2^-14 to 2^-12 (Q6_K): weights of trained size, no inf or NaN. */
static int mb_egpu_make_quant(mb_egpu_weights *w, const mb_egpu_model *m)
{
    const int t = w->wdtype;
    const size_t be = mb_kcuda_qblock_elems(t), bb = mb_kq_block_bytes(t);
    const size_t nb = (size_t)m->d_model * m->d_ff / be, mat = nb * bb, chunk = (size_t)1 << 20;
    if (m->d_model % be || m->d_ff % be) return -1;
    const size_t stride = (mat + 255) & ~(size_t)255;
    uint8_t *blocks = malloc(3 * mat), *rnd = malloc(chunk);
    w->host = malloc(3 * stride);
    if (!blocks || !rnd || !w->host) {
        free(blocks);
        free(rnd);
        free(w->host);
        w->host = NULL;
        return -1;
    }
    const unsigned e0 = t == MB_KCUDA_Q8_0 ? 3u : t == MB_KCUDA_Q4_K ? 2u : 1u;
    for (size_t i = 0; i < chunk; i++)
        rnd[i] = (uint8_t)mb_egpu_rand();
    for (int i = 0; i < 3; i++) {
        uint8_t *mb = blocks + (size_t)i * mat;
        for (size_t o = 0; o < mat; o += chunk)
            memcpy(mb + o, rnd, mat - o < chunk ? mat - o : chunk);
        for (size_t b = 0; b < nb; b++) {
            const uint64_t r = mb_egpu_rand();
            const uint16_t d = (uint16_t)((e0 + (unsigned)(r % 3)) << 10 | ((r >> 8) & 0x3ff));
            const uint16_t dmin = (uint16_t)((e0 + (unsigned)((r >> 20) % 3)) << 10 | ((r >> 24) & 0x3ff));
            uint8_t *blk = mb + b * bb;
            memcpy(t == MB_KCUDA_Q6_K ? blk + 208 : blk, &d, 2);
            if (t == MB_KCUDA_Q4_K) memcpy(blk + 2, &dmin, 2);
        }
        w->off[i] = (size_t)i * stride;
        w->raw_off[i] = (size_t)i * mat;
        mb_kq_layout_pack(t, mb, nb, (char *)w->host + w->off[i]);
    }
    w->raw = w->raw_own = blocks;
    free(rnd);
    w->span = 3 * stride;
    w->bytes = 3 * mat;
    return 0;
}

int mb_egpu_weights_make(mb_egpu_weights *w, const mb_egpu_model *m, int wdtype)
{
    memset(w, 0, sizeof *w);
    w->wdtype = wdtype;
    w->name = mb_dtype_name(wdtype);
    return mb_kcuda_quant_supported(wdtype) ? mb_egpu_make_quant(w, m) : -1;
}

void mb_egpu_weights_free(mb_egpu_weights *w)
{
    free(w->host);
    free(w->raw_own);
    memset(w, 0, sizeof *w);
}
