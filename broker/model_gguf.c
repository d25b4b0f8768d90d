/* mb_model_load_gguf: a GGUF checkpoint -> mb_model. Finds the file (or
 * split parts), reads the configuration from the metadata as llama.cpp does
 * for each architecture, and binds every tensor by its GGUF name with its
 * own type. Nothing is dequantized or copied: every view points into the
 * mappings, so expert pages are never touched here. */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "broker/gguf.h"
#include "broker/model.h"

#define MAX_LAYERS 4096u
#define MAX_DIM (1u << 20)
#define MAX_EXPERTS 65536u
#define MAX_SPLITS 1024u

typedef struct {
    mb_model *m;
    const char *arch_name; /* general.architecture (arch below) */
    char arch[64];
    char *err;
    size_t cap;
} gloader;

static mb_status fail(gloader *L, mb_status st, const char *fmt, ...)
{
    if (L->err && L->cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(L->err, L->cap, fmt, ap);
        va_end(ap);
    }
    return st;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* ---- finding the files -------------------------------------------------- */

/* "NAME-00001-of-00003.gguf": *stem_len = strlen("NAME"), *count = 3.
 * Returns 1 when path names a split part with index 1. */
static int split_first(const char *path, size_t *stem_len, uint32_t *count)
{
    size_t n = strlen(path);
    if (n < 20 || !ends_with(path, ".gguf")) return 0;
    const char *t = path + n - 20; /* "-00001-of-00003.gguf" */
    unsigned idx, cnt;
    char tail[8];
    if (t[0] != '-' || sscanf(t, "-%5u-of-%5u%7s", &idx, &cnt, tail) != 3 ||
        strcmp(tail, ".gguf") != 0 || idx != 1 || cnt == 0)
        return 0;
    *stem_len = (size_t)(t - path);
    *count = cnt;
    return 1;
}

/* A folder must hold exactly one model: one .gguf file, or one set of
 * split parts (its first part is chosen). */
static mb_status pick_in_folder(gloader *L, const char *dir, char **out)
{
    DIR *d = opendir(dir);
    if (!d) return fail(L, MB_STATUS_IO, "%s: cannot read folder: %s", dir, strerror(errno));
    char *single = NULL, *first = NULL;
    int n_single = 0, n_first = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !ends_with(e->d_name, ".gguf")) continue;
        size_t stem;
        uint32_t cnt;
        char **slot = NULL;
        if (split_first(e->d_name, &stem, &cnt)) {
            n_first++;
            slot = &first;
        } else if (!strstr(e->d_name, "-of-")) {
            n_single++;
            slot = &single;
        }
        if (slot && !*slot) *slot = strdup(e->d_name);
    }
    closedir(d);
    mb_status st = MB_STATUS_OK;
    const char *name = NULL;
    if (n_single + n_first == 0)
        st = fail(L, MB_STATUS_NOT_FOUND, "%s: no .gguf file in the folder", dir);
    else if (n_single + n_first > 1)
        st = fail(L, MB_STATUS_CONFIG, "%s: holds %d GGUF models; name the file with --model",
                  dir, n_single + n_first);
    else
        name = single ? single : first;
    if (name && !(*out = malloc(strlen(dir) + strlen(name) + 2))) st = MB_STATUS_NOMEM;
    if (st == MB_STATUS_OK) sprintf(*out, "%s/%s", dir, name);
    free(single);
    free(first);
    return st;
}

static mb_status open_files(gloader *L, const char *path)
{
    mb_model *m = L->m;
    size_t stem = 0;
    uint32_t count = 1;
    const int split = split_first(path, &stem, &count);
    if (count > MAX_SPLITS)
        return fail(L, MB_STATUS_UNSUPPORTED, "%s: %u split parts (at most %u)", path, count,
                    MAX_SPLITS);
    if (!(m->files = calloc(count, sizeof(*m->files)))) return MB_STATUS_NOMEM;
    for (uint32_t i = 0; i < count; i++)
        m->files[i].fd = -1;
    m->n_files = count;
    for (uint32_t i = 0; i < count; i++) {
        mb_model_file *f = &m->files[i];
        if (!(f->path = malloc(stem + 32 + (split ? 0 : strlen(path))))) return MB_STATUS_NOMEM;
        if (split)
            sprintf(f->path, "%.*s-%05u-of-%05u.gguf", (int)stem, path, i + 1, count);
        else
            strcpy(f->path, path);
        mb_status st = mb_gguf_open(f->path, &f->gguf, L->err, L->cap);
        if (st != MB_STATUS_OK) return st;
        f->map = mb_gguf_base(f->gguf, &f->bytes);
        f->fd = mb_gguf_fd(f->gguf);
    }
    /* The parts must agree with the name: split.count in the first part. */
    uint32_t declared = 1;
    mb_status st = mb_gguf_get_u32(m->files[0].gguf, "split.count", &declared, L->err, L->cap);
    if (st != MB_STATUS_OK && st != MB_STATUS_NOT_FOUND) return st;
    if (declared == 0) declared = 1;
    if (declared != count)
        return fail(L, MB_STATUS_FORMAT, "%s: split.count is %u but the file name says %u parts%s",
                    path, declared, count,
                    count == 1 ? " (open split files by their first part, -00001-of-N)" : "");
    return MB_STATUS_OK;
}

/* ---- configuration ------------------------------------------------------ */

static const char *key(gloader *L, char *buf, size_t cap, const char *suffix)
{
    snprintf(buf, cap, "%s.%s", L->arch_name, suffix);
    return buf;
}

/* A required (dflt NULL) or optional integer in [lo, hi]. */
static mb_status get_u32(gloader *L, const char *suffix, uint32_t lo, uint32_t hi,
                         const uint32_t *dflt, uint32_t *out)
{
    char k[160];
    const mb_gguf *g = L->m->files[0].gguf;
    uint32_t v = dflt ? *dflt : 0;
    mb_status st = mb_gguf_get_u32(g, key(L, k, sizeof k, suffix), &v, L->err, L->cap);
    if (st == MB_STATUS_NOT_FOUND && dflt) st = MB_STATUS_OK;
    if (st == MB_STATUS_NOT_FOUND) st = MB_STATUS_CONFIG;
    if (st != MB_STATUS_OK) return st;
    if (v < lo || v > hi)
        return fail(L, MB_STATUS_CONFIG, "%s: metadata %s = %u is outside [%u, %u]",
                    L->m->files[0].path, k, v, lo, hi);
    *out = v;
    return MB_STATUS_OK;
}

static mb_status get_pos_f32(gloader *L, const char *suffix, const float *dflt, float *out)
{
    char k[160];
    float v = dflt ? *dflt : 0.0f;
    mb_status st = mb_gguf_get_f32(L->m->files[0].gguf, key(L, k, sizeof k, suffix), &v, L->err,
                                   L->cap);
    if (st == MB_STATUS_NOT_FOUND && dflt) st = MB_STATUS_OK;
    if (st == MB_STATUS_NOT_FOUND) st = MB_STATUS_CONFIG;
    if (st != MB_STATUS_OK) return st;
    if (!(v > 0.0f && v < 1e30f))
        return fail(L, MB_STATUS_CONFIG, "%s: metadata %s must be a positive number",
                    L->m->files[0].path, k);
    *out = v;
    return MB_STATUS_OK;
}

/* Settings that would make llama.cpp compute something this build does
 * not: rope scaling, partial rope, a gating function other than softmax. */
static mb_status check_limits(gloader *L, const mb_model_config *c)
{
    const mb_gguf *g = L->m->files[0].gguf;
    const char *path = L->m->files[0].path;
    char k[160];
    char *s = NULL;
    mb_status st = mb_gguf_get_str(g, key(L, k, sizeof k, "rope.scaling.type"), &s, L->err, L->cap);
    if (st == MB_STATUS_OK) {
        int ok = strcmp(s, "none") == 0;
        st = ok ? MB_STATUS_OK
                : fail(L, MB_STATUS_UNSUPPORTED, "%s: rope scaling '%.40s' is not supported", path, s);
        free(s);
        if (st != MB_STATUS_OK) return st;
    } else if (st != MB_STATUS_NOT_FOUND) {
        return st;
    }
    uint32_t v = c->head_dim;
    if ((st = get_u32(L, "rope.dimension_count", 0, MAX_DIM, &c->head_dim, &v))) return st;
    if (v != c->head_dim)
        return fail(L, MB_STATUS_UNSUPPORTED, "%s: rope over %u of %u head dimensions is not "
                    "supported", path, v, c->head_dim);
    const uint32_t softmax = 1;
    if ((st = get_u32(L, "expert_gating_func", 0, 16, &softmax, &v))) return st;
    if (v != softmax)
        return fail(L, MB_STATUS_UNSUPPORTED, "%s: expert gating function %u is not supported "
                    "(only softmax)", path, v);
    uint32_t lead = 0;
    if ((st = get_u32(L, "leading_dense_block_count", 0, MAX_LAYERS, &lead, &v))) return st;
    if (v)
        return fail(L, MB_STATUS_UNSUPPORTED, "%s: dense leading layers are not supported", path);
    return MB_STATUS_OK;
}

static mb_status read_config(gloader *L)
{
    mb_model *m = L->m;
    mb_model_config *c = &m->cfg;
    const mb_gguf *g = m->files[0].gguf;
    const char *path = m->files[0].path;
    const mb_gguf_kv *kv = mb_gguf_kv_find(g, "general.architecture");
    if (!kv || kv->type != MB_GGUF_STRING)
        return fail(L, MB_STATUS_CONFIG, "%s: metadata general.architecture is missing", path);
    char *arch = L->arch;
    snprintf(arch, sizeof L->arch, "%.*s", (int)(kv->str_len < 63 ? kv->str_len : 63), kv->str);
    L->arch_name = arch;
    memset(c, 0, sizeof(*c));
    if (strcmp(arch, "qwen3moe") == 0) {
        c->arch = MB_ARCH_QWEN3_MOE;
        c->qk_norm = 1;
        c->norm_topk_prob = 1; /* llama.cpp: LLM_ARCH_QWEN3MOE renormalises */
    } else if (strcmp(arch, "qwen2moe") == 0) {
        c->arch = MB_ARCH_QWEN2_MOE;
        c->qkv_bias = 1;
        c->norm_topk_prob = 0; /* llama.cpp: LLM_ARCH_QWEN2MOE does not */
    } else if (strcmp(arch, "llama") == 0) {
        c->arch = MB_ARCH_MIXTRAL;
        c->norm_topk_prob = 1;
        c->rope_interleaved = 1; /* LLAMA_ROPE_TYPE_NORM */
    } else {
        return fail(L, MB_STATUS_UNSUPPORTED, "%s: architecture '%s' is not supported (supported: "
                    "qwen3moe, qwen2moe, llama with experts)", path, arch);
    }
    const uint32_t zero = 0;
    float theta_dflt = 10000.0f;
    mb_status st;
    if ((st = get_u32(L, "block_count", 1, MAX_LAYERS, NULL, &c->n_layers)) ||
        (st = get_u32(L, "embedding_length", 1, MAX_DIM, NULL, &c->d_model)) ||
        (st = get_u32(L, "attention.head_count", 1, 4096, NULL, &c->n_heads)) ||
        (st = get_u32(L, "attention.head_count_kv", 1, 4096, &c->n_heads, &c->n_kv_heads)) ||
        (st = get_u32(L, "expert_count", 0, MAX_EXPERTS, &zero, &c->n_experts)) ||
        (st = get_u32(L, "context_length", 1, 1u << 24, NULL, &c->max_positions)) ||
        (st = get_pos_f32(L, "attention.layer_norm_rms_epsilon", NULL, &c->rms_eps)) ||
        (st = get_pos_f32(L, "rope.freq_base", &theta_dflt, &c->rope_theta)))
        return st;
    if (c->n_experts == 0)
        return fail(L, MB_STATUS_UNSUPPORTED, "%s: architecture '%s' without experts (a dense "
                    "model) is not supported", path, arch);
    if ((st = get_u32(L, "expert_used_count", 1, c->n_experts, NULL, &c->top_k))) return st;
    const uint32_t hd = c->d_model % c->n_heads ? 0 : c->d_model / c->n_heads;
    uint32_t vdim;
    if ((st = get_u32(L, "attention.key_length", 1, MAX_DIM, hd ? &hd : NULL, &c->head_dim)) ||
        (st = get_u32(L, "attention.value_length", 1, MAX_DIM, &c->head_dim, &vdim)))
        return st;
    if (vdim != c->head_dim)
        return fail(L, MB_STATUS_UNSUPPORTED, "%s: value_length %u differs from key_length %u",
                    path, vdim, c->head_dim);
    if (c->arch == MB_ARCH_MIXTRAL)
        st = get_u32(L, "feed_forward_length", 1, MAX_DIM, NULL, &c->d_ff_expert);
    else
        st = get_u32(L, "expert_feed_forward_length", 1, MAX_DIM, NULL, &c->d_ff_expert);
    if (st) return st;
    if (c->arch == MB_ARCH_QWEN2_MOE) {
        /* The shared expert's width: the key when present, else its tensor. */
        const mb_gguf_tensor *t = mb_gguf_tensor_find(g, "blk.0.ffn_gate_shexp.weight");
        const uint32_t from_t = t && t->n_dims == 2 && t->ne[1] <= MAX_DIM ? (uint32_t)t->ne[1] : 0;
        if ((st = get_u32(L, "expert_shared_feed_forward_length", 1, MAX_DIM,
                          from_t ? &from_t : NULL, &c->d_ff_shared)))
            return st;
    }
    if (c->n_heads % c->n_kv_heads || c->n_kv_heads > c->n_heads || c->head_dim % 2 ||
        (uint64_t)c->n_heads * c->head_dim > MAX_DIM)
        return fail(L, MB_STATUS_CONFIG, "%s: %u heads, %u kv heads of %u dimensions do not fit "
                    "together", path, c->n_heads, c->n_kv_heads, c->head_dim);
    const mb_gguf_tensor *emb = mb_gguf_tensor_find(g, "token_embd.weight");
    if (!emb || emb->n_dims != 2 || emb->ne[0] != c->d_model || emb->ne[1] > (1u << 24))
        return fail(L, MB_STATUS_NOT_FOUND, "%s: tensor 'token_embd.weight' [%u, vocab] is "
                    "missing or mis-shaped", path, c->d_model);
    c->vocab = (uint32_t)emb->ne[1];
    c->tie_embeddings = 0;
    return check_limits(L, c);
}

/* ---- binding ------------------------------------------------------------ */

static mb_status find(gloader *L, const char *name, uint32_t *file, const mb_gguf_tensor **t)
{
    for (uint32_t i = 0; i < L->m->n_files; i++)
        if ((*t = mb_gguf_tensor_find(L->m->files[i].gguf, name))) {
            *file = i;
            return MB_STATUS_OK;
        }
    return fail(L, MB_STATUS_NOT_FOUND, "%s: tensor '%s' not found", L->m->files[0].path, name);
}

/* Binds name with ggml shape ne[0..n_dims) (ne0 = row length); for a 3-D
 * expert tensor, out receives ne[2] views of [ne1][ne0] through stride. */
static mb_status bind(gloader *L, const char *name, uint32_t n_dims, uint64_t ne0, uint64_t ne1,
                      uint64_t ne2, mb_tensor *out, size_t stride)
{
    uint32_t file = 0;
    const mb_gguf_tensor *t = NULL;
    mb_status st = find(L, name, &file, &t);
    if (st != MB_STATUS_OK) return st;
    const char *path = L->m->files[file].path;
    const uint64_t want[3] = {ne0, ne1, ne2};
    /* A 1-D tensor may be stored as [n, 1] (ffn_gate_inp_shexp). */
    int ok = t->n_dims == n_dims || (n_dims == 1 && t->n_dims == 2 && t->ne[1] == 1);
    for (uint32_t i = 0; ok && i < n_dims; i++)
        ok = t->ne[i] == want[i];
    if (!ok)
        return fail(L, MB_STATUS_BAD_SHAPE, "%s: tensor '%s' has ggml shape [%llu, %llu, %llu] "
                    "(%u dims), expected [%llu, %llu, %llu] (%u dims)", path, name,
                    (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                    (unsigned long long)t->ne[2], t->n_dims, (unsigned long long)ne0,
                    (unsigned long long)(n_dims > 1 ? ne1 : 1),
                    (unsigned long long)(n_dims > 2 ? ne2 : 1), n_dims);
    if (t->dtype < 0)
        return fail(L, MB_STATUS_UNSUPPORTED, "%s: tensor '%s' is %s, which this build cannot "
                    "compute (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K)", path, name,
                    mb_gguf_type_name(t->ggml_type));
    if (n_dims == 1 && mb_dtype_is_quant(t->dtype))
        return fail(L, MB_STATUS_UNSUPPORTED, "%s: tensor '%s' is %s; norms, biases and gates "
                    "must be F32, F16 or BF16", path, name, mb_gguf_type_name(t->ggml_type));
    uint64_t row_bytes;
    if (mb_dtype_row_bytes(t->dtype, ne0, &row_bytes) != MB_STATUS_OK)
        return fail(L, MB_STATUS_BAD_SHAPE, "%s: tensor '%s': bad row", path, name);
    const uint64_t rows = n_dims == 1 ? 1 : ne1, n = n_dims == 3 ? ne2 : 1;
    for (uint64_t e = 0; e < n; e++) {
        const uint64_t off = e * rows * row_bytes; /* < t->bytes, checked by the reader */
        mb_tensor *o = (mb_tensor *)((char *)out + e * stride);
        *o = (mb_tensor){.dtype = (mb_dtype)t->dtype,
                         .data = (const char *)t->data + off,
                         .rows = rows,
                         .cols = ne0,
                         .file = (int)file,
                         .file_offset = t->file_offset + off};
    }
    return MB_STATUS_OK;
}

#define BLK(buf, i, s) (snprintf(buf, sizeof buf, "blk.%u." s, i), buf)

static mb_status bind_layer(gloader *L, uint32_t i, mb_layer_weights *lw)
{
    const mb_model_config *c = &L->m->cfg;
    const uint64_t d = c->d_model, q = (uint64_t)c->n_heads * c->head_dim,
                   kv = (uint64_t)c->n_kv_heads * c->head_dim, E = c->n_experts,
                   ff = c->d_ff_expert, sh = c->d_ff_shared;
    char n[96];
    mb_status st;
    if ((st = bind(L, BLK(n, i, "attn_norm.weight"), 1, d, 0, 0, &lw->attn_norm, 0)) ||
        (st = bind(L, BLK(n, i, "attn_q.weight"), 2, d, q, 0, &lw->wq, 0)) ||
        (st = bind(L, BLK(n, i, "attn_k.weight"), 2, d, kv, 0, &lw->wk, 0)) ||
        (st = bind(L, BLK(n, i, "attn_v.weight"), 2, d, kv, 0, &lw->wv, 0)) ||
        (st = bind(L, BLK(n, i, "attn_output.weight"), 2, q, d, 0, &lw->wo, 0)) ||
        (st = bind(L, BLK(n, i, "ffn_norm.weight"), 1, d, 0, 0, &lw->ffn_norm, 0)) ||
        (st = bind(L, BLK(n, i, "ffn_gate_inp.weight"), 2, d, E, 0, &lw->router, 0)))
        return st;
    if (c->qkv_bias &&
        ((st = bind(L, BLK(n, i, "attn_q.bias"), 1, q, 0, 0, &lw->bq, 0)) ||
         (st = bind(L, BLK(n, i, "attn_k.bias"), 1, kv, 0, 0, &lw->bk, 0)) ||
         (st = bind(L, BLK(n, i, "attn_v.bias"), 1, kv, 0, 0, &lw->bv, 0))))
        return st;
    if (c->qk_norm &&
        ((st = bind(L, BLK(n, i, "attn_q_norm.weight"), 1, c->head_dim, 0, 0, &lw->q_norm, 0)) ||
         (st = bind(L, BLK(n, i, "attn_k_norm.weight"), 1, c->head_dim, 0, 0, &lw->k_norm, 0))))
        return st;
    if (sh &&
        ((st = bind(L, BLK(n, i, "ffn_gate_shexp.weight"), 2, d, sh, 0, &lw->shared.gate, 0)) ||
         (st = bind(L, BLK(n, i, "ffn_up_shexp.weight"), 2, d, sh, 0, &lw->shared.up, 0)) ||
         (st = bind(L, BLK(n, i, "ffn_down_shexp.weight"), 2, sh, d, 0, &lw->shared.down, 0)) ||
         (st = bind(L, BLK(n, i, "ffn_gate_inp_shexp.weight"), 1, d, 0, 0, &lw->shared_gate, 0))))
        return st;
    if (sh) lw->shared_gate.rows = 1; /* [1][d_model]: one gate logit per token */
    if (!(lw->experts = calloc(E, sizeof(*lw->experts)))) return MB_STATUS_NOMEM;
    const size_t stride = sizeof(*lw->experts);
    if ((st = bind(L, BLK(n, i, "ffn_gate_exps.weight"), 3, d, ff, E, &lw->experts[0].gate, stride)) ||
        (st = bind(L, BLK(n, i, "ffn_up_exps.weight"), 3, d, ff, E, &lw->experts[0].up, stride)) ||
        (st = bind(L, BLK(n, i, "ffn_down_exps.weight"), 3, ff, d, E, &lw->experts[0].down, stride)))
        return st;
    if (lw->experts[0].gate.dtype != lw->experts[0].up.dtype)
        return fail(L, MB_STATUS_UNSUPPORTED, "%s: layer %u: expert gate is %s but up is %s; they "
                    "must share a type", L->m->files[0].path, i,
                    mb_dtype_name(lw->experts[0].gate.dtype), mb_dtype_name(lw->experts[0].up.dtype));
    return MB_STATUS_OK;
}

static mb_status bind_all(gloader *L)
{
    mb_model *m = L->m;
    const mb_model_config *c = &m->cfg;
    mb_status st;
    if ((st = bind(L, "token_embd.weight", 2, c->d_model, c->vocab, 0, &m->embed, 0)) ||
        (st = bind(L, "output_norm.weight", 1, c->d_model, 0, 0, &m->final_norm, 0)))
        return st;
    uint32_t file;
    const mb_gguf_tensor *t;
    if (find(L, "output.weight", &file, &t) == MB_STATUS_OK) {
        if ((st = bind(L, "output.weight", 2, c->d_model, c->vocab, 0, &m->lm_head, 0))) return st;
    } else {
        m->cfg.tie_embeddings = 1; /* llama.cpp falls back to token_embd */
        m->lm_head = m->embed;
    }
    if (L->err && L->cap) L->err[0] = '\0';
    if (!(m->layers = calloc(c->n_layers, sizeof(*m->layers)))) return MB_STATUS_NOMEM;
    for (uint32_t i = 0; i < c->n_layers; i++)
        if ((st = bind_layer(L, i, &m->layers[i]))) return st;
    m->cfg.dtype = m->layers[0].experts[0].gate.dtype;
    for (uint32_t i = 0; i < c->n_layers; i++) {
        const uint64_t bytes = mb_model_expert_bytes(m, i);
        if (bytes > m->cfg.expert_bytes) m->cfg.expert_bytes = bytes;
    }
    return MB_STATUS_OK;
}

mb_status mb_model_load_gguf(const char *path, mb_model **out, char *err, size_t err_cap)
{
    if (!path || !out) return MB_STATUS_INVALID_ARG;
    gloader L = {.err = err, .cap = err_cap};
    mb_model *m = calloc(1, sizeof(*m));
    if (!m) return MB_STATUS_NOMEM;
    L.m = m;
    char *file = NULL;
    mb_status st;
    struct stat sb;
    if (stat(path, &sb) != 0) {
        st = fail(&L, errno == ENOENT ? MB_STATUS_NOT_FOUND : MB_STATUS_IO, "%s: %s", path,
                  strerror(errno));
        goto out;
    }
    if (S_ISDIR(sb.st_mode)) {
        if ((st = pick_in_folder(&L, path, &file))) goto out;
    } else if (!(file = strdup(path))) {
        st = MB_STATUS_NOMEM;
        goto out;
    }
    char *abs = realpath(file, NULL);
    if (!abs) {
        st = fail(&L, MB_STATUS_IO, "%s: cannot resolve: %s", file, strerror(errno));
        goto out;
    }
    free(file);
    file = abs;
    if ((st = open_files(&L, file)) || (st = read_config(&L)) || (st = bind_all(&L))) goto out;
    /* The folder holding the file, as mb_model.dir for a Hugging Face one. */
    char *slash = strrchr(file, '/');
    if (slash) *slash = '\0';
    m->dir = file;
    file = NULL;
out:
    if (st == MB_STATUS_NOMEM) fail(&L, st, "%s: out of memory while loading", path);
    free(file);
    if (st != MB_STATUS_OK) {
        mb_model_destroy(m);
        return st;
    }
    *out = m;
    return MB_STATUS_OK;
}

uint64_t mb_model_expert_bytes(const mb_model *m, uint32_t layer)
{
    if (!m || !m->layers || layer >= m->cfg.n_layers || !m->layers[layer].experts) return 0;
    const mb_expert_tensors *x = &m->layers[layer].experts[0];
    const mb_tensor *t[3] = {&x->gate, &x->up, &x->down};
    uint64_t sum = 0;
    for (int i = 0; i < 3; i++) {
        uint64_t rb = 0;
        if (mb_dtype_row_bytes(t[i]->dtype, t[i]->cols, &rb) != MB_STATUS_OK) return 0;
        sum += rb * t[i]->rows;
    }
    return sum;
}

uint32_t mb_model_expert_dtypes(const mb_model *m)
{
    uint32_t mask = 0;
    for (uint32_t i = 0; m && m->layers && i < m->cfg.n_layers; i++) {
        const mb_expert_tensors *x = m->layers[i].experts;
        if (!x) continue;
        /* The experts of a layer share their fused tensors' types. */
        const mb_tensor *t[3] = {&x->gate, &x->up, &x->down};
        for (int k = 0; k < 3; k++)
            if (mb_dtype_weight_valid(t[k]->dtype)) mask |= MB_DTYPE_MASK(t[k]->dtype);
    }
    return mask;
}
