/* mb_model_load: a Hugging Face checkpoint folder -> mb_model. Reads
 * config.json, maps model.safetensors or the shards of
 * model.safetensors.index.json (each once), and binds every weight the
 * family needs by name, checking dtype, shape and alignment. Tensor data is
 * never read here: binding only does pointer arithmetic on the mappings. */
#include "broker/model.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker/gguf.h"
#include "broker/model_names.h"
#include "broker/safetensors.h"

#define MAX_CONFIG_BYTES (16u << 20)
#define MAX_INDEX_BYTES (256u << 20)

typedef struct {
    const char *tensor; /* borrowed from the index JSON */
    const char *shard;
    uint32_t file;      /* index into m->files */
} index_entry;

typedef struct {
    const char *dir;      /* resolved folder */
    mb_model *m;
    char *index_path;     /* NULL for a single file */
    cJSON *index_json;
    index_entry *index;   /* [n_index], sorted by tensor name */
    size_t n_index;
    const char *dtype_from; /* the tensor that fixed cfg.dtype */
    char *err;
    size_t cap;
} loader;

static mb_status fail(loader *L, mb_status st, const char *fmt, ...)
{
    if (L->err && L->cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(L->err, L->cap, fmt, ap);
        va_end(ap);
    }
    return st;
}

static char *path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (p) {
        memcpy(p, dir, a);
        p[a] = '/';
        memcpy(p + a + 1, name, b + 1);
    }
    return p;
}

static int is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* A GGUF checkpoint: a file (any name: GGUF has a magic), or a folder with
 * no config.json that holds a .gguf file. */
static int is_gguf_path(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0) return 0;
    if (S_ISREG(sb.st_mode)) return 1;
    if (!S_ISDIR(sb.st_mode)) return 0;
    char *cfg = path_join(path, "config.json");
    int hf = cfg && is_file(cfg);
    free(cfg);
    if (hf) return 0;
    DIR *d = opendir(path);
    int found = 0;
    for (struct dirent *e; d && !found && (e = readdir(d));) {
        size_t n = strlen(e->d_name);
        found = n > 5 && strcmp(e->d_name + n - 5, ".gguf") == 0;
    }
    if (d) closedir(d);
    return found;
}

/* Reads a whole small text file, NUL-terminated, refusing more than max. */
static mb_status read_text(loader *L, const char *path, size_t max, char **out)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return fail(L, errno == ENOENT ? MB_STATUS_NOT_FOUND : MB_STATUS_IO,
                    "%s: cannot open: %s", path, strerror(errno));
    mb_status st = MB_STATUS_OK;
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t got = fread(buf + len, 1, cap - len, fp);
        len += got;
        if (len < cap)
            break;
        if (cap >= max) {
            st = fail(L, MB_STATUS_FORMAT, "%s: larger than %zu bytes", path, max);
            break;
        }
        char *bigger = realloc(buf, cap * 2 + 1);
        if (!bigger) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    if (!buf)
        st = MB_STATUS_NOMEM;
    else if (st == MB_STATUS_OK && ferror(fp))
        st = fail(L, MB_STATUS_IO, "%s: read error", path);
    fclose(fp);
    if (st != MB_STATUS_OK) {
        free(buf);
        return st;
    }
    buf[len] = '\0';
    *out = buf;
    return MB_STATUS_OK;
}

static mb_status load_config(loader *L)
{
    char *path = path_join(L->dir, "config.json"), *text = NULL;
    if (!path)
        return MB_STATUS_NOMEM;
    mb_status st = read_text(L, path, MAX_CONFIG_BYTES, &text);
    if (st == MB_STATUS_OK) {
        char msg[512] = "";
        st = mb_model_config_parse(text, &L->m->cfg, msg, sizeof(msg));
        if (st != MB_STATUS_OK)
            fail(L, st, "%s: %s", path, msg);
    }
    free(text);
    free(path);
    return st;
}

static int cmp_entry_shard(const void *a, const void *b)
{
    return strcmp(((const index_entry *)a)->shard, ((const index_entry *)b)->shard);
}

static int cmp_entry_tensor(const void *a, const void *b)
{
    return strcmp(((const index_entry *)a)->tensor, ((const index_entry *)b)->tensor);
}

/* A shard name must stay inside the checkpoint folder. */
static int shard_name_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n < 256 && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* Parses the index's weight_map and gives each distinct shard a slot in
 * m->files (paths only; mapped by open_files). */
static mb_status load_index(loader *L)
{
    char *text = NULL;
    mb_status st = read_text(L, L->index_path, MAX_INDEX_BYTES, &text);
    if (st != MB_STATUS_OK)
        return st;
    L->index_json = cJSON_Parse(text);
    free(text);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(L->index_json, "weight_map");
    if (!cJSON_IsObject(map) || !map->child)
        return fail(L, MB_STATUS_FORMAT, "%s: malformed JSON or no 'weight_map' object",
                    L->index_path);
    size_t n = 0;
    for (const cJSON *e = map->child; e; e = e->next) {
        if (!cJSON_IsString(e) || !shard_name_ok(e->valuestring))
            return fail(L, MB_STATUS_FORMAT, "%s: weight_map entry '%.200s' does not name a file "
                        "in the checkpoint folder", L->index_path, e->string);
        n++;
    }
    L->index = calloc(n, sizeof(*L->index));
    if (!L->index)
        return MB_STATUS_NOMEM;
    for (const cJSON *e = map->child; e; e = e->next, L->n_index++)
        L->index[L->n_index] = (index_entry){e->string, e->valuestring, 0};
    /* Sorting by shard gives each distinct file one slot in one pass. */
    qsort(L->index, n, sizeof(*L->index), cmp_entry_shard);
    uint32_t n_files = 0;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && strcmp(L->index[i].shard, L->index[i - 1].shard) != 0)
            n_files++;
        L->index[i].file = n_files;
    }
    n_files++;
    mb_model *m = L->m;
    m->files = calloc(n_files, sizeof(*m->files));
    if (!m->files)
        return MB_STATUS_NOMEM;
    m->n_files = n_files;
    for (uint32_t i = 0; i < n_files; i++)
        m->files[i].fd = -1;
    for (size_t i = 0; i < n; i++) {
        mb_model_file *f = &m->files[L->index[i].file];
        if (!f->path && !(f->path = path_join(L->dir, L->index[i].shard)))
            return MB_STATUS_NOMEM;
    }
    qsort(L->index, n, sizeof(*L->index), cmp_entry_tensor);
    for (size_t i = 1; i < n; i++)
        if (strcmp(L->index[i].tensor, L->index[i - 1].tensor) == 0)
            return fail(L, MB_STATUS_FORMAT, "%s: tensor '%.200s' listed twice in weight_map",
                        L->index_path, L->index[i].tensor);
    return MB_STATUS_OK;
}

static mb_status open_files(loader *L)
{
    for (uint32_t i = 0; i < L->m->n_files; i++) {
        mb_model_file *f = &L->m->files[i];
        mb_status st = mb_safetensors_open(f->path, &f->st, L->err, L->cap);
        if (st != MB_STATUS_OK)
            return st;
        f->map = mb_safetensors_base(f->st, &f->bytes);
        f->fd = mb_safetensors_fd(f->st);
    }
    return MB_STATUS_OK;
}

/* Finds a tensor across the files. *t is NULL when the checkpoint has no
 * such name; an index that points at a shard lacking it is an error. */
static mb_status lookup(loader *L, const char *name, uint32_t *file, const mb_st_tensor **t)
{
    *t = NULL;
    *file = 0;
    if (L->index) {
        index_entry key = {.tensor = name};
        const index_entry *e = bsearch(&key, L->index, L->n_index, sizeof(key), cmp_entry_tensor);
        if (!e)
            return MB_STATUS_OK;
        *file = e->file;
        *t = mb_safetensors_find(L->m->files[e->file].st, name);
        if (!*t)
            return fail(L, MB_STATUS_FORMAT, "%s: weight_map puts tensor '%s' in %s, which has "
                        "no such tensor", L->index_path, name, L->m->files[e->file].path);
        return MB_STATUS_OK;
    }
    *t = mb_safetensors_find(L->m->files[0].st, name);
    return MB_STATUS_OK;
}

static mb_status not_found(loader *L, const char *name)
{
    return fail(L, MB_STATUS_NOT_FOUND, "%s: tensor '%s' not found",
                L->index ? L->index_path : L->m->files[0].path, name);
}

/* Checks a found tensor against the expected shape (n_dims of dims), the
 * checkpoint's one weight dtype, and element alignment. */
static mb_status check_tensor(loader *L, uint32_t file, const mb_st_tensor *t, uint32_t n_dims,
                              const uint64_t *dims)
{
    const char *path = L->m->files[file].path;
    mb_dtype dt;
    if (mb_st_dtype_to_weight(t->dtype, &dt) != MB_STATUS_OK)
        return fail(L, MB_STATUS_BAD_DTYPE, "%s: tensor '%s' is %s; weights must be F32, F16 "
                    "or BF16", path, t->name, mb_st_dtype_name(t->dtype));
    if (!L->dtype_from) {
        L->m->cfg.dtype = dt;
        L->dtype_from = t->name;
    } else if (dt != L->m->cfg.dtype) {
        return fail(L, MB_STATUS_BAD_DTYPE, "%s: tensor '%s' is %s but '%s' is %s; all weights "
                    "must share one dtype", path, t->name, mb_st_dtype_name(t->dtype),
                    L->dtype_from, mb_dtype_name(L->m->cfg.dtype));
    }
    int ok = t->n_dims == n_dims;
    for (uint32_t i = 0; ok && i < n_dims; i++)
        ok = t->shape[i] == dims[i];
    if (!ok) {
        char got[160] = "", want[160] = "";
        size_t g = 0, w = 0;
        for (uint32_t i = 0; i < t->n_dims && g < sizeof(got); i++)
            g += (size_t)snprintf(got + g, sizeof(got) - g, "%s%llu", i ? ", " : "",
                                  (unsigned long long)t->shape[i]);
        for (uint32_t i = 0; i < n_dims && w < sizeof(want); i++)
            w += (size_t)snprintf(want + w, sizeof(want) - w, "%s%llu", i ? ", " : "",
                                  (unsigned long long)dims[i]);
        return fail(L, MB_STATUS_BAD_SHAPE, "%s: tensor '%s' has shape [%s], expected [%s]", path,
                    t->name, got, want);
    }
    if (t->file_offset % mb_dtype_size(dt))
        return fail(L, MB_STATUS_MISALIGNED, "%s: tensor '%s' data at offset %llu is not aligned "
                    "to its %zu-byte elements", path, t->name,
                    (unsigned long long)t->file_offset, mb_dtype_size(dt));
    return MB_STATUS_OK;
}

/* A view of rows x cols elements starting elem_offset elements into t. */
static mb_tensor view(const loader *L, uint32_t file, const mb_st_tensor *t, uint64_t elem_offset,
                      uint64_t rows, uint64_t cols)
{
    uint64_t off = elem_offset * mb_dtype_size(L->m->cfg.dtype);
    return (mb_tensor){
        .dtype = L->m->cfg.dtype,
        .data = (const char *)t->data + off,
        .rows = rows,
        .cols = cols,
        .file = (int)file,
        .file_offset = t->file_offset + off,
    };
}

/* Binds a required 1-D (rows == 0) or 2-D weight. */
static mb_status bind(loader *L, mb_weight_role role, uint32_t layer, uint32_t expert,
                      uint64_t rows, uint64_t cols, mb_tensor *out)
{
    char name[256];
    if (mb_model_weight_name(L->m->cfg.arch, role, layer, expert, name, sizeof(name)) != 0)
        return fail(L, MB_STATUS_INVALID_ARG, "internal: no name for weight %d", (int)role);
    uint32_t file;
    const mb_st_tensor *t;
    mb_status st = lookup(L, name, &file, &t);
    if (st != MB_STATUS_OK)
        return st;
    if (!t)
        return not_found(L, name);
    const uint64_t dims[2] = {rows ? rows : cols, cols};
    if ((st = check_tensor(L, file, t, rows ? 2 : 1, dims)) != MB_STATUS_OK)
        return st;
    *out = view(L, file, t, 0, rows ? rows : 1, cols);
    return MB_STATUS_OK;
}

/* The fused 3-D layout: gate_up [E][2*d_ff][d_model] (gate rows first) and
 * down [E][d_model][d_ff]; each expert's matrices are sub-regions. */
static mb_status bind_fused(loader *L, uint32_t layer, uint32_t gu_file, const mb_st_tensor *gu,
                            mb_layer_weights *lw)
{
    const mb_model_config *c = &L->m->cfg;
    const uint64_t E = c->n_experts, dff = c->d_ff_expert, d = c->d_model;
    const uint64_t gu_dims[3] = {E, 2 * dff, d}, down_dims[3] = {E, d, dff};
    mb_status st = check_tensor(L, gu_file, gu, 3, gu_dims);
    if (st != MB_STATUS_OK)
        return st;
    char name[256];
    uint32_t down_file;
    const mb_st_tensor *down;
    if (mb_model_weight_name(c->arch, MB_WEIGHT_FUSED_DOWN, layer, 0, name, sizeof(name)) != 0)
        return MB_STATUS_INVALID_ARG;
    if ((st = lookup(L, name, &down_file, &down)) != MB_STATUS_OK)
        return st;
    if (!down)
        return not_found(L, name);
    if ((st = check_tensor(L, down_file, down, 3, down_dims)) != MB_STATUS_OK)
        return st;
    for (uint64_t e = 0; e < E; e++) {
        lw->experts[e].gate = view(L, gu_file, gu, e * 2 * dff * d, dff, d);
        lw->experts[e].up = view(L, gu_file, gu, (e * 2 + 1) * dff * d, dff, d);
        lw->experts[e].down = view(L, down_file, down, e * d * dff, d, dff);
    }
    return MB_STATUS_OK;
}

/* Router and routed experts: per-expert hub names, else the fused layout. */
static mb_status bind_moe(loader *L, uint32_t layer, mb_layer_weights *lw)
{
    const mb_model_config *c = &L->m->cfg;
    char name[256], alt[256];
    uint32_t file;
    const mb_st_tensor *t;
    mb_status st;
    if (mb_model_weight_name(c->arch, MB_WEIGHT_ROUTER, layer, 0, name, sizeof(name)) ||
        mb_model_weight_name(c->arch, MB_WEIGHT_ROUTER_ALT, layer, 0, alt, sizeof(alt)))
        return MB_STATUS_INVALID_ARG;
    if ((st = lookup(L, name, &file, &t)) != MB_STATUS_OK)
        return st;
    mb_weight_role router = MB_WEIGHT_ROUTER;
    if (!t) {
        if ((st = lookup(L, alt, &file, &t)) != MB_STATUS_OK)
            return st;
        if (!t)
            return not_found(L, name);
        router = MB_WEIGHT_ROUTER_ALT;
    }
    if ((st = bind(L, router, layer, 0, c->n_experts, c->d_model, &lw->router)) != MB_STATUS_OK)
        return st;

    lw->experts = calloc(c->n_experts, sizeof(*lw->experts));
    if (!lw->experts)
        return MB_STATUS_NOMEM;
    if (mb_model_weight_name(c->arch, MB_WEIGHT_EXPERT_GATE, layer, 0, name, sizeof(name)) ||
        mb_model_weight_name(c->arch, MB_WEIGHT_FUSED_GATE_UP, layer, 0, alt, sizeof(alt)))
        return MB_STATUS_INVALID_ARG;
    if ((st = lookup(L, name, &file, &t)) != MB_STATUS_OK)
        return st;
    if (!t) {
        if ((st = lookup(L, alt, &file, &t)) != MB_STATUS_OK)
            return st;
        if (!t)
            return fail(L, MB_STATUS_NOT_FOUND, "%s: tensor '%s' not found (nor the fused '%s')",
                        L->index ? L->index_path : L->m->files[0].path, name, alt);
        return bind_fused(L, layer, file, t, lw);
    }
    for (uint32_t e = 0; e < c->n_experts; e++) {
        mb_expert_tensors *x = &lw->experts[e];
        if ((st = bind(L, MB_WEIGHT_EXPERT_GATE, layer, e, c->d_ff_expert, c->d_model, &x->gate)) ||
            (st = bind(L, MB_WEIGHT_EXPERT_UP, layer, e, c->d_ff_expert, c->d_model, &x->up)) ||
            (st = bind(L, MB_WEIGHT_EXPERT_DOWN, layer, e, c->d_model, c->d_ff_expert, &x->down)))
            return st;
    }
    return MB_STATUS_OK;
}

static mb_status bind_layer(loader *L, uint32_t i, mb_layer_weights *lw)
{
    const mb_model_config *c = &L->m->cfg;
    const uint64_t d = c->d_model, q = (uint64_t)c->n_heads * c->head_dim;
    const uint64_t kv = (uint64_t)c->n_kv_heads * c->head_dim;
    mb_status st;
    if ((st = bind(L, MB_WEIGHT_ATTN_NORM, i, 0, 0, d, &lw->attn_norm)) ||
        (st = bind(L, MB_WEIGHT_WQ, i, 0, q, d, &lw->wq)) ||
        (st = bind(L, MB_WEIGHT_WK, i, 0, kv, d, &lw->wk)) ||
        (st = bind(L, MB_WEIGHT_WV, i, 0, kv, d, &lw->wv)) ||
        (st = bind(L, MB_WEIGHT_WO, i, 0, d, q, &lw->wo)) ||
        (st = bind(L, MB_WEIGHT_FFN_NORM, i, 0, 0, d, &lw->ffn_norm)))
        return st;
    if (c->qkv_bias &&
        ((st = bind(L, MB_WEIGHT_BQ, i, 0, 0, q, &lw->bq)) ||
         (st = bind(L, MB_WEIGHT_BK, i, 0, 0, kv, &lw->bk)) ||
         (st = bind(L, MB_WEIGHT_BV, i, 0, 0, kv, &lw->bv))))
        return st;
    if (c->qk_norm &&
        ((st = bind(L, MB_WEIGHT_Q_NORM, i, 0, 0, c->head_dim, &lw->q_norm)) ||
         (st = bind(L, MB_WEIGHT_K_NORM, i, 0, 0, c->head_dim, &lw->k_norm))))
        return st;
    if (c->d_ff_shared &&
        ((st = bind(L, MB_WEIGHT_SHARED_GATE, i, 0, c->d_ff_shared, d, &lw->shared.gate)) ||
         (st = bind(L, MB_WEIGHT_SHARED_UP, i, 0, c->d_ff_shared, d, &lw->shared.up)) ||
         (st = bind(L, MB_WEIGHT_SHARED_DOWN, i, 0, d, c->d_ff_shared, &lw->shared.down)) ||
         (st = bind(L, MB_WEIGHT_SHARED_SCALE, i, 0, 1, d, &lw->shared_gate))))
        return st;
    return bind_moe(L, i, lw);
}

static mb_status bind_all(loader *L)
{
    mb_model *m = L->m;
    const mb_model_config *c = &m->cfg;
    mb_status st;
    /* The embedding is bound first, so it fixes the checkpoint's dtype; the
     * stored dtype wins over whatever the config claims. */
    if ((st = bind(L, MB_WEIGHT_EMBED, 0, 0, c->vocab, c->d_model, &m->embed)) ||
        (st = bind(L, MB_WEIGHT_FINAL_NORM, 0, 0, 0, c->d_model, &m->final_norm)))
        return st;
    if (c->tie_embeddings)
        m->lm_head = m->embed;
    else if ((st = bind(L, MB_WEIGHT_LM_HEAD, 0, 0, c->vocab, c->d_model, &m->lm_head)))
        return st;
    m->layers = calloc(c->n_layers, sizeof(*m->layers));
    if (!m->layers)
        return MB_STATUS_NOMEM;
    for (uint32_t i = 0; i < c->n_layers; i++)
        if ((st = bind_layer(L, i, &m->layers[i])) != MB_STATUS_OK)
            return st;
    return MB_STATUS_OK;
}

static mb_status find_weights(loader *L)
{
    mb_model *m = L->m;
    char *single = path_join(L->dir, "model.safetensors");
    if (!single)
        return MB_STATUS_NOMEM;
    /* transformers prefers the single file when both exist; so do we. */
    if (is_file(single)) {
        m->files = calloc(1, sizeof(*m->files));
        if (!m->files) {
            free(single);
            return MB_STATUS_NOMEM;
        }
        m->files[0].path = single;
        m->files[0].fd = -1;
        m->n_files = 1;
        return MB_STATUS_OK;
    }
    free(single);
    if (!(L->index_path = path_join(L->dir, "model.safetensors.index.json")))
        return MB_STATUS_NOMEM;
    if (!is_file(L->index_path))
        return fail(L, MB_STATUS_NOT_FOUND, "%s: neither model.safetensors nor "
                    "model.safetensors.index.json is present", L->dir);
    return load_index(L);
}

mb_status mb_model_load(const char *dir, mb_model **out, char *err, size_t err_cap)
{
    if (!dir || !out)
        return MB_STATUS_INVALID_ARG;
    if (is_gguf_path(dir))
        return mb_model_load_gguf(dir, out, err, err_cap);
    loader L = {.err = err, .cap = err_cap};
    mb_status st;
    mb_model *m = calloc(1, sizeof(*m));
    if (!m)
        return MB_STATUS_NOMEM;
    L.m = m;
    m->dir = realpath(dir, NULL);
    if (!m->dir) {
        st = fail(&L, errno == ENOENT ? MB_STATUS_NOT_FOUND : MB_STATUS_IO,
                  "%s: cannot resolve checkpoint folder: %s", dir, strerror(errno));
        goto out;
    }
    L.dir = m->dir;
    if ((st = load_config(&L)) || (st = find_weights(&L)) || (st = open_files(&L)) ||
        (st = bind_all(&L)))
        goto out;
out:
    if (st == MB_STATUS_NOMEM)
        fail(&L, st, "%s: out of memory while loading", dir);
    cJSON_Delete(L.index_json);
    free(L.index);
    free(L.index_path);
    if (st != MB_STATUS_OK) {
        mb_model_destroy(m);
        return st;
    }
    *out = m;
    return MB_STATUS_OK;
}

void mb_model_destroy(mb_model *m)
{
    if (!m)
        return;
    if (m->layers)
        for (uint32_t i = 0; i < m->cfg.n_layers; i++)
            free(m->layers[i].experts);
    free(m->layers);
    for (uint32_t i = 0; m->files && i < m->n_files; i++) {
        mb_model_file *f = &m->files[i];
        if (f->st) {
            mb_safetensors_close(f->st); /* owns map and fd */
        } else if (f->gguf) {
            mb_gguf_close(f->gguf); /* likewise */
        } else {
            if (f->map)
                munmap((void *)f->map, f->bytes);
            if (f->fd >= 0)
                close(f->fd);
        }
        free(f->path);
    }
    free(m->files);
    free(m->owned);
    free(m->dir);
    free(m);
}
