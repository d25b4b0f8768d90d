/* Synthetic model generation: lays every tensor out in one memfd, fills it
 * with seeded uniform noise scaled so activations keep unit variance, and
 * describes it with the same mb_model views a checkpoint gets. */
#include "broker/synthetic.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void mb_synthetic_default_config(mb_model_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->arch = MB_ARCH_QWEN3_MOE;
    cfg->n_layers = 4;
    cfg->d_model = 1024;
    cfg->n_heads = 16;
    cfg->n_kv_heads = 4;
    cfg->head_dim = 64;
    cfg->vocab = 8192;
    cfg->n_experts = 32;
    cfg->top_k = 4;
    cfg->d_ff_expert = 512;
    cfg->max_positions = 4096;
    cfg->rms_eps = 1e-6f;
    cfg->rope_theta = 1000000.0f;
    cfg->norm_topk_prob = 1;
    cfg->qk_norm = 1;
    cfg->dtype = MB_DTYPE_BF16;
}

void mb_synthetic_qwen3_30b_config(mb_model_config *cfg, uint32_t n_layers)
{
    mb_synthetic_default_config(cfg);
    cfg->n_layers = n_layers;
    cfg->d_model = 2048;
    cfg->n_heads = 32;
    cfg->n_kv_heads = 4;
    cfg->head_dim = 128;
    cfg->vocab = 32768;
    cfg->n_experts = 128;
    cfg->top_k = 8;
    cfg->d_ff_expert = 768;
    cfg->max_positions = 8192;
}

typedef struct {
    unsigned char *base;
    uint64_t used;
    uint64_t cap;
    int counting; /* first pass: only sum the sizes */
} mb_layout;

/* Places a [rows][cols] tensor at the next 64-byte boundary. */
static mb_tensor mb_place_tensor(mb_layout *L, uint64_t rows, uint64_t cols, mb_dtype dt)
{
    mb_tensor t = {.dtype = dt, .rows = rows, .cols = cols, .file = 0};
    L->used = (L->used + 63) & ~63ull;
    t.file_offset = L->used;
    t.data = L->counting ? NULL : L->base + L->used;
    L->used += rows * cols * mb_dtype_size(dt);
    return t;
}

static uint64_t mb_splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Fills t with uniform noise in [center - scale, center + scale]. */
static void mb_fill(const mb_tensor *t, uint64_t seed, float center, float scale)
{
    uint64_t n = t->rows * t->cols, s = seed;
    if (t->dtype == MB_DTYPE_BF16 || t->dtype == MB_DTYPE_F16) {
        uint16_t *p = (uint16_t *)t->data;
        for (uint64_t i = 0; i < n; i += 4) {
            uint64_t r = mb_splitmix(&s);
            for (uint64_t j = 0; j < 4 && i + j < n; j++) {
                float u = (float)((r >> (16 * j)) & 0xffff) * (2.0f / 65535.0f) - 1.0f;
                float v = center + scale * u;
                p[i + j] = t->dtype == MB_DTYPE_BF16 ? mb_f32_to_bf16(v) : mb_f32_to_f16(v);
            }
        }
    } else {
        float *p = (float *)t->data;
        for (uint64_t i = 0; i < n; i++) {
            float u = (float)(mb_splitmix(&s) >> 40) * (2.0f / 16777215.0f) - 1.0f;
            p[i] = center + scale * u;
        }
    }
}

/* Lays out (or, when not counting, also fills) every tensor of the model. */
static void mb_synthetic_layout(mb_layout *L, mb_model *m, uint64_t seed, int progress)
{
    const mb_model_config *c = &m->cfg;
    const mb_dtype dt = c->dtype;
    const uint32_t q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    uint64_t tensor_seed = seed * 0x100000001b3ull;
#define MB_T(field, rows, cols, center, scale)                                                                         \
    do {                                                                                                              \
        field = mb_place_tensor(L, rows, cols, dt);                                                                  \
        if (!L->counting) mb_fill(&field, tensor_seed, center, scale);                                               \
        tensor_seed += 0x9e3779b97f4a7c15ull;                                                                         \
    } while (0)
    const float sd = 1.7320508f / sqrtf((float)c->d_model); /* uniform with variance 1/k */
    MB_T(m->embed, c->vocab, c->d_model, 0.0f, 1.0f);
    MB_T(m->final_norm, 1, c->d_model, 1.0f, 0.1f);
    MB_T(m->lm_head, c->vocab, c->d_model, 0.0f, sd);
    for (uint32_t l = 0; l < c->n_layers; l++) {
        mb_layer_weights *w = &m->layers[l];
        MB_T(w->attn_norm, 1, c->d_model, 1.0f, 0.1f);
        MB_T(w->wq, q_dim, c->d_model, 0.0f, sd);
        MB_T(w->wk, kv_dim, c->d_model, 0.0f, sd);
        MB_T(w->wv, kv_dim, c->d_model, 0.0f, sd);
        MB_T(w->wo, c->d_model, q_dim, 0.0f, 1.7320508f / sqrtf((float)q_dim));
        if (c->qk_norm) {
            MB_T(w->q_norm, 1, c->head_dim, 1.0f, 0.1f);
            MB_T(w->k_norm, 1, c->head_dim, 1.0f, 0.1f);
        }
        MB_T(w->ffn_norm, 1, c->d_model, 1.0f, 0.1f);
        MB_T(w->router, c->n_experts, c->d_model, 0.0f, 4.0f * sd);
        for (uint32_t e = 0; e < c->n_experts; e++) {
            mb_expert_tensors *x = &w->experts[e];
            MB_T(x->gate, c->d_ff_expert, c->d_model, 0.0f, sd);
            MB_T(x->up, c->d_ff_expert, c->d_model, 0.0f, sd);
            MB_T(x->down, c->d_model, c->d_ff_expert, 0.0f, 1.7320508f / sqrtf((float)c->d_ff_expert));
        }
        if (progress && !L->counting) {
            fprintf(stderr, "\rgenerating synthetic weights: layer %u/%u", l + 1, c->n_layers);
            fflush(stderr);
        }
    }
    if (progress && !L->counting) fprintf(stderr, "\n");
#undef MB_T
}

mb_status mb_synthetic_create(const mb_model_config *cfg, uint64_t seed, int progress, mb_model **out, char *err,
                              size_t err_cap)
{
    if (!cfg || !out) return MB_STATUS_INVALID_ARG;
    if (cfg->arch != MB_ARCH_QWEN3_MOE && cfg->arch != MB_ARCH_MIXTRAL) {
        snprintf(err, err_cap, "synthetic models are Qwen3-MoE or Mixtral");
        return MB_STATUS_UNSUPPORTED;
    }
    if (!cfg->n_layers || !cfg->d_model || !cfg->n_heads || !cfg->n_kv_heads || !cfg->head_dim || !cfg->vocab ||
        !cfg->n_experts || !cfg->top_k || cfg->top_k > cfg->n_experts || !cfg->d_ff_expert ||
        cfg->n_heads % cfg->n_kv_heads) {
        snprintf(err, err_cap, "synthetic model: inconsistent configuration");
        return MB_STATUS_CONFIG;
    }
    mb_model *m = calloc(1, sizeof *m);
    if (!m) return MB_STATUS_NOMEM;
    m->cfg = *cfg;
    m->layers = calloc(cfg->n_layers, sizeof *m->layers);
    m->files = calloc(1, sizeof *m->files);
    if (!m->layers || !m->files) goto nomem;
    m->n_files = 1;
    m->files[0].fd = -1;
    for (uint32_t l = 0; l < cfg->n_layers; l++) {
        m->layers[l].experts = calloc(cfg->n_experts, sizeof *m->layers[l].experts);
        if (!m->layers[l].experts) goto nomem;
    }
    mb_layout L = {.counting = 1};
    mb_synthetic_layout(&L, m, seed, 0);
    int fd = memfd_create("moe-broker-synthetic", 0);
    if (fd < 0 || ftruncate(fd, (off_t)L.used) != 0) {
        if (fd >= 0) close(fd);
        snprintf(err, err_cap, "synthetic model: cannot create a %.2f GiB memfd", (double)L.used / (1 << 30));
        mb_model_destroy(m);
        return MB_STATUS_NOMEM;
    }
    m->files[0].fd = fd;
    void *base = mmap(NULL, L.used, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        snprintf(err, err_cap, "synthetic model: cannot map %.2f GiB", (double)L.used / (1 << 30));
        mb_model_destroy(m);
        return MB_STATUS_NOMEM;
    }
    m->files[0].map = base;
    m->files[0].bytes = L.used;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)getpid(), fd);
    m->files[0].path = strdup(path);
    if (!m->files[0].path) goto nomem;
    mb_layout fill = {.base = base, .cap = L.used};
    mb_synthetic_layout(&fill, m, seed, progress);
    *out = m;
    return MB_STATUS_OK;
nomem:
    mb_model_destroy(m);
    return MB_STATUS_NOMEM;
}
