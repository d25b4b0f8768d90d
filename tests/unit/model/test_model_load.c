/* mb_model_load on the three fixtures (shapes checked against each config,
 * views checked against the file's own header, expert pages never touched),
 * the same checkpoints resharded and rewritten into the fused 3-D layout
 * (identical data), and damaged copies: truncated files, unknown
 * architecture, missing tensors, wrong shape or dtype, misaligned data,
 * hostile index files. Every refusal must name the file and the culprit. */
#include "broker/model.h"
#include "broker/model_names.h"
#include "broker/safetensors.h"

#include <stdint.h>
#include <unistd.h>

#include "tests/unit/model/st_testutil.h"

static const char *fixtures[] = {"mixtral-a", "qwen2moe-a", "qwen3moe-a"};
#define N_FIXTURES 3
static char err[1024];

/* ---- walking a model ---------------------------------------------------- */

#define MAX_VIEWS 4096
typedef struct {
    const mb_tensor *t[MAX_VIEWS];
    int role[MAX_VIEWS];
    uint32_t layer[MAX_VIEWS], expert[MAX_VIEWS];
    size_t n;
} views;

static void add_view(views *v, const mb_tensor *t, int role, uint32_t layer, uint32_t expert)
{
    REQUIRE(v->n < MAX_VIEWS);
    v->t[v->n] = t;
    v->role[v->n] = role;
    v->layer[v->n] = layer;
    v->expert[v->n] = expert;
    v->n++;
}

/* Every view the model holds, with the role it was bound for. Views the
 * family lacks are included too (their data must then be NULL). */
static void collect(const mb_model *m, views *v)
{
    v->n = 0;
    add_view(v, &m->embed, MB_WEIGHT_EMBED, 0, 0);
    add_view(v, &m->final_norm, MB_WEIGHT_FINAL_NORM, 0, 0);
    add_view(v, &m->lm_head, MB_WEIGHT_LM_HEAD, 0, 0);
    for (uint32_t i = 0; i < m->cfg.n_layers; i++) {
        const mb_layer_weights *l = &m->layers[i];
        const mb_tensor *ts[] = {&l->attn_norm, &l->wq, &l->wk, &l->wv, &l->bq, &l->bk,
                                 &l->bv, &l->q_norm, &l->k_norm, &l->wo, &l->ffn_norm,
                                 &l->router, &l->shared.gate, &l->shared.up, &l->shared.down,
                                 &l->shared_gate};
        const int roles[] = {MB_WEIGHT_ATTN_NORM, MB_WEIGHT_WQ, MB_WEIGHT_WK, MB_WEIGHT_WV,
                             MB_WEIGHT_BQ, MB_WEIGHT_BK, MB_WEIGHT_BV, MB_WEIGHT_Q_NORM,
                             MB_WEIGHT_K_NORM, MB_WEIGHT_WO, MB_WEIGHT_FFN_NORM, MB_WEIGHT_ROUTER,
                             MB_WEIGHT_SHARED_GATE, MB_WEIGHT_SHARED_UP, MB_WEIGHT_SHARED_DOWN,
                             MB_WEIGHT_SHARED_SCALE};
        for (size_t k = 0; k < sizeof(ts) / sizeof(ts[0]); k++)
            add_view(v, ts[k], roles[k], i, 0);
        for (uint32_t e = 0; e < m->cfg.n_experts; e++) {
            add_view(v, &l->experts[e].gate, MB_WEIGHT_EXPERT_GATE, i, e);
            add_view(v, &l->experts[e].up, MB_WEIGHT_EXPERT_UP, i, e);
            add_view(v, &l->experts[e].down, MB_WEIGHT_EXPERT_DOWN, i, e);
        }
    }
}

/* Expected [rows][cols] of a role from the config alone; rows 0 when the
 * family does not have it. */
static void expected_shape(const mb_model_config *c, int role, uint64_t *rows, uint64_t *cols)
{
    const uint64_t d = c->d_model, q = (uint64_t)c->n_heads * c->head_dim,
                   kv = (uint64_t)c->n_kv_heads * c->head_dim;
    *rows = 1;
    switch (role) {
    case MB_WEIGHT_EMBED: case MB_WEIGHT_LM_HEAD: *rows = c->vocab; *cols = d; break;
    case MB_WEIGHT_FINAL_NORM: case MB_WEIGHT_ATTN_NORM: case MB_WEIGHT_FFN_NORM: *cols = d; break;
    case MB_WEIGHT_WQ: *rows = q; *cols = d; break;
    case MB_WEIGHT_WK: case MB_WEIGHT_WV: *rows = kv; *cols = d; break;
    case MB_WEIGHT_WO: *rows = d; *cols = q; break;
    case MB_WEIGHT_BQ: *cols = q; *rows = c->qkv_bias; break;
    case MB_WEIGHT_BK: case MB_WEIGHT_BV: *cols = kv; *rows = c->qkv_bias; break;
    case MB_WEIGHT_Q_NORM: case MB_WEIGHT_K_NORM: *cols = c->head_dim; *rows = c->qk_norm; break;
    case MB_WEIGHT_ROUTER: *rows = c->n_experts; *cols = d; break;
    case MB_WEIGHT_EXPERT_GATE: case MB_WEIGHT_EXPERT_UP: *rows = c->d_ff_expert; *cols = d; break;
    case MB_WEIGHT_EXPERT_DOWN: *rows = d; *cols = c->d_ff_expert; break;
    case MB_WEIGHT_SHARED_GATE: case MB_WEIGHT_SHARED_UP:
        *rows = c->d_ff_shared; *cols = d; break;
    case MB_WEIGHT_SHARED_DOWN: *rows = c->d_ff_shared ? d : 0; *cols = c->d_ff_shared; break;
    case MB_WEIGHT_SHARED_SCALE: *rows = c->d_ff_shared ? 1 : 0; *cols = d; break;
    default: *rows = 0; *cols = 0;
    }
}

static int views_equal(const mb_tensor *a, const mb_tensor *b)
{
    if (!a->data || !b->data)
        return a->data == b->data;
    return a->rows == b->rows && a->cols == b->cols && a->dtype == b->dtype &&
           memcmp(a->data, b->data, a->rows * a->cols * mb_dtype_size(a->dtype)) == 0;
}

/* Resident bytes of the mapping that starts at addr (from /proc/self/smaps),
 * or -1 when that cannot be read. */
static long resident_kb(const void *addr)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return -1;
    char line[512];
    int in = 0;
    long kb = -1;
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) { /* a mapping's first line */
            in = lo == (unsigned long)(uintptr_t)addr;
            continue;
        }
        if (in && sscanf(line, "Rss: %ld kB", &kb) == 1)
            break;
    }
    fclose(f);
    return kb;
}

/* ---- fixtures load --------------------------------------------------------- */

static void check_fixture(const char *name)
{
    const char *dir = tst_fixture(name);
    mb_model *m = NULL;
    mb_status st = mb_model_load(dir, &m, err, sizeof(err));
    CHECK_MSG(st == MB_STATUS_OK, "%s: %s", name, err);
    if (st != MB_STATUS_OK)
        return;
    const mb_model_config *c = &m->cfg;
    CHECK_EQ(m->n_files, 1);
    CHECK(m->dir && m->dir[0] == '/');
    CHECK(m->files[0].path && tst_contains(m->files[0].path, "model.safetensors"));
    CHECK(m->files[0].fd >= 0 && m->files[0].map && m->files[0].st);

    /* The config as the test reads it independently. */
    size_t len;
    char *cfg_path = tst_path(dir, "config.json");
    char *text = (char *)tst_read(cfg_path, &len);
    cJSON *cfg = cJSON_Parse(text);
    REQUIRE(cfg);
    CHECK_EQ(c->n_layers, cJSON_GetObjectItem(cfg, "num_hidden_layers")->valueint);
    CHECK_EQ(c->d_model, cJSON_GetObjectItem(cfg, "hidden_size")->valueint);
    CHECK_EQ(c->vocab, cJSON_GetObjectItem(cfg, "vocab_size")->valueint);
    CHECK_EQ(c->top_k, cJSON_GetObjectItem(cfg, "num_experts_per_tok")->valueint);
    cJSON_Delete(cfg);
    free(text);
    free(cfg_path);

    /* Each view: shape from the config, placement from the file's header. */
    mb_safetensors *f = NULL;
    REQUIRE(mb_safetensors_open(m->files[0].path, &f, err, sizeof(err)) == MB_STATUS_OK);
    const mb_st_tensor *emb = mb_safetensors_find(f, "model.embed_tokens.weight");
    REQUIRE(emb);
    mb_dtype stored;
    REQUIRE(mb_st_dtype_to_weight(emb->dtype, &stored) == MB_STATUS_OK);
    CHECK_EQ(c->dtype, stored);
    static views v;
    collect(m, &v);
    for (size_t i = 0; i < v.n; i++) {
        const mb_tensor *t = v.t[i];
        uint64_t rows, cols;
        expected_shape(c, v.role[i], &rows, &cols);
        char tname[256];
        int has_name = mb_model_weight_name(c->arch, v.role[i], v.layer[i], v.expert[i], tname,
                                            sizeof(tname)) == 0;
        if (rows == 0) {
            CHECK_MSG(t->data == NULL, "%s: role %d layer %u should be absent", name, v.role[i],
                      v.layer[i]);
            continue;
        }
        REQUIRE(has_name);
        CHECK_MSG(t->rows == rows && t->cols == cols, "%s: %s is [%llu][%llu], config says "
                  "[%llu][%llu]", name, tname, (unsigned long long)t->rows,
                  (unsigned long long)t->cols, (unsigned long long)rows, (unsigned long long)cols);
        CHECK_EQ(t->dtype, stored);
        CHECK_EQ(t->file, 0);
        const mb_st_tensor *h = mb_safetensors_find(f, tname);
        CHECK_MSG(h != NULL, "%s: %s not in the header", name, tname);
        if (!h)
            continue;
        CHECK_EQ(t->file_offset, h->file_offset);
        CHECK(t->data == (const char *)m->files[0].map + t->file_offset);
        CHECK_EQ(h->n_elems, rows * cols);
        CHECK_EQ(t->file_offset % mb_dtype_size(t->dtype), 0);
    }
    CHECK_EQ(m->lm_head.data == m->embed.data, c->tie_embeddings);
    mb_safetensors_close(f);

    /* Only headers were touched: the expert pages were never faulted in. */
    long kb = resident_kb(m->files[0].map);
    printf("%s: %ld kB of the %llu-byte mapping resident after load\n", name, kb,
           (unsigned long long)m->files[0].bytes);
    if (kb >= 0 && m->files[0].bytes > (1u << 20))
        CHECK_MSG(kb < 256, "%s: %ld kB of a %llu-byte mapping resident after load", name, kb,
                  (unsigned long long)m->files[0].bytes);
    mb_model_destroy(m);
}

/* ---- helpers to damage copies --------------------------------------------- */

/* A temporary copy of a fixture (config.json and model.safetensors). */
static char *copy_fixture(const char *name)
{
    char *tmp = tst_tmpdir();
    tst_copy(tst_fixture(name), tmp, "config.json");
    tst_copy(tst_fixture(name), tmp, "model.safetensors");
    return tmp;
}

typedef struct {
    const char *tensor;
    const char *dtype;   /* set_dtype */
    int flatten;         /* set the shape to [n] or [1][n] */
} edit_arg;

static void edit_header(cJSON *root, void *ctx)
{
    const edit_arg *a = ctx;
    if (!a->tensor)
        return; /* re-serialise only */
    cJSON *e = cJSON_GetObjectItemCaseSensitive(root, a->tensor);
    REQUIRE(e);
    if (!a->dtype && !a->flatten) {
        cJSON_DeleteItemFromObjectCaseSensitive(root, a->tensor);
        return;
    }
    if (a->dtype)
        cJSON_ReplaceItemInObjectCaseSensitive(e, "dtype", cJSON_CreateString(a->dtype));
    if (a->flatten) {
        cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
        double n = 1;
        int dims = cJSON_GetArraySize(shape);
        for (cJSON *d = shape->child; d; d = d->next)
            n *= d->valuedouble;
        cJSON *s = cJSON_CreateArray();
        if (dims == 1)
            cJSON_AddItemToArray(s, cJSON_CreateNumber(1));
        cJSON_AddItemToArray(s, cJSON_CreateNumber(n));
        cJSON_ReplaceItemInObjectCaseSensitive(e, "shape", s);
    }
}

/* Writes tmp/model.safetensors: the fixture image rewritten by edit_header. */
static void damage(const unsigned char *img, size_t len, const char *tmp, const edit_arg *a,
                   int pad_odd)
{
    static const edit_arg none = {NULL, NULL, 0};
    size_t out_len;
    unsigned char *out = tst_rewrite(img, len, edit_header, (void *)(a ? a : &none), pad_odd,
                                     &out_len);
    tst_write_in(tmp, "model.safetensors", out, out_len);
    free(out);
}

static void edit_config(const char *tmp, const char *key, const char *json)
{
    char *p = tst_path(tmp, "config.json");
    size_t len;
    char *text = (char *)tst_read(p, &len);
    cJSON *root = cJSON_Parse(text);
    REQUIRE(root);
    cJSON *v = cJSON_Parse(json);
    REQUIRE(v);
    cJSON_DeleteItemFromObjectCaseSensitive(root, key);
    cJSON_AddItemToObject(root, key, v);
    char *out = cJSON_Print(root);
    tst_write(p, out, strlen(out));
    free(out);
    cJSON_Delete(root);
    free(text);
    free(p);
}

static mb_status load_tmp(const char *tmp)
{
    mb_model *m = NULL;
    err[0] = 0;
    mb_status st = mb_model_load(tmp, &m, err, sizeof(err));
    if (st == MB_STATUS_OK)
        mb_model_destroy(m);
    else
        CHECK(m == NULL);
    return st;
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* ---- damaged checkpoints -------------------------------------------------- */

static void test_truncated(void)
{
    char *tmp = copy_fixture("qwen3moe-a");
    char *path = tst_path(tmp, "model.safetensors");
    size_t len;
    unsigned char *img = tst_read(path, &len);
    const size_t hlen = (size_t)tst_header_len(img);
    const size_t cuts[] = {0, 4, 8, 8 + hlen / 2, 8 + hlen - 1, 8 + hlen, 8 + hlen + 1000,
                           len / 2, len - 1};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        tst_write(path, img, cuts[i]);
        mb_status st = load_tmp(tmp);
        CHECK_MSG(st == MB_STATUS_FORMAT, "cut at %zu: %s (%s)", cuts[i], mb_status_name(st),
                  err);
        CHECK_MSG(tst_contains(err, "model.safetensors") && tst_contains(err, base_name(tmp)),
                  "cut at %zu: message does not name the file: %s", cuts[i], err);
    }
    tst_write(path, img, len);
    CHECK_EQ(load_tmp(tmp), MB_STATUS_OK);
    free(img);
    free(path);
    tst_rmdir(tmp);
}

static void test_config_errors(void)
{
    char *tmp = copy_fixture("mixtral-a");
    edit_config(tmp, "architectures", "[\"DeepseekV3ForCausalLM\"]");
    CHECK_EQ(load_tmp(tmp), MB_STATUS_UNSUPPORTED);
    CHECK(tst_contains(err, "DeepseekV3ForCausalLM") && tst_contains(err, "config.json"));
    tst_copy(tst_fixture("mixtral-a"), tmp, "config.json");
    edit_config(tmp, "num_hidden_layers", "\"four\"");
    CHECK_EQ(load_tmp(tmp), MB_STATUS_CONFIG);
    CHECK(tst_contains(err, "num_hidden_layers") && tst_contains(err, "config.json"));
    /* More layers than the file holds: the first missing tensor is named. */
    edit_config(tmp, "num_hidden_layers", "5");
    CHECK_EQ(load_tmp(tmp), MB_STATUS_NOT_FOUND);
    CHECK(tst_contains(err, "model.layers.4."));
    /* A config that disagrees with the shapes in the file. */
    edit_config(tmp, "num_hidden_layers", "4");
    edit_config(tmp, "intermediate_size", "128");
    CHECK_EQ(load_tmp(tmp), MB_STATUS_BAD_SHAPE);
    CHECK(tst_contains(err, "experts.0.w1.weight"));
    tst_rmdir(tmp);

    /* Missing files. */
    tmp = tst_tmpdir();
    CHECK_EQ(load_tmp(tmp), MB_STATUS_NOT_FOUND);
    CHECK(tst_contains(err, "config.json"));
    tst_copy(tst_fixture("mixtral-a"), tmp, "config.json");
    CHECK_EQ(load_tmp(tmp), MB_STATUS_NOT_FOUND);
    CHECK(tst_contains(err, "model.safetensors"));
    char *gone = tst_path(tmp, "nope");
    CHECK_EQ(load_tmp(gone), MB_STATUS_NOT_FOUND);
    free(gone);
    tst_rmdir(tmp);
}

static void test_missing_tensors(void)
{
    const int roles[] = {MB_WEIGHT_FINAL_NORM, MB_WEIGHT_WK, MB_WEIGHT_EXPERT_DOWN, MB_WEIGHT_BV,
                         MB_WEIGHT_K_NORM, MB_WEIGHT_SHARED_SCALE, MB_WEIGHT_LM_HEAD};
    for (int fx = 0; fx < N_FIXTURES; fx++) {
        mb_model *m = NULL;
        REQUIRE(mb_model_load(tst_fixture(fixtures[fx]), &m, err, sizeof(err)) == MB_STATUS_OK);
        const mb_model_config c = m->cfg;
        mb_model_destroy(m);
        char *tmp = copy_fixture(fixtures[fx]);
        char *src = tst_path(tmp, "model.safetensors");
        size_t len;
        unsigned char *img = tst_read(src, &len);
        free(src);
        for (size_t r = 0; r < sizeof(roles) / sizeof(roles[0]); r++) {
            char name[256];
            if (mb_model_weight_name(c.arch, roles[r], c.n_layers - 1, c.n_experts - 1, name,
                                     sizeof(name)))
                continue;
            const edit_arg a = {name, NULL, 0};
            damage(img, len, tmp, &a, 0);
            CHECK_EQ(load_tmp(tmp), MB_STATUS_NOT_FOUND);
            CHECK_MSG(tst_contains(err, name) && tst_contains(err, "model.safetensors"),
                      "%s without %s: %s", fixtures[fx], name, err);
        }
        /* Wrong shape (same bytes, flattened) and wrong dtype (same size). */
        const int shaped[] = {MB_WEIGHT_ATTN_NORM, MB_WEIGHT_WQ, MB_WEIGHT_EXPERT_UP};
        for (size_t r = 0; r < 3; r++) {
            char name[256];
            REQUIRE(mb_model_weight_name(c.arch, shaped[r], 0, 1, name, sizeof(name)) == 0);
            const edit_arg a = {name, NULL, 1};
            damage(img, len, tmp, &a, 0);
            CHECK_EQ(load_tmp(tmp), MB_STATUS_BAD_SHAPE);
            CHECK_MSG(tst_contains(err, name), "%s: %s", fixtures[fx], err);
        }
        char name[256];
        REQUIRE(mb_model_weight_name(c.arch, MB_WEIGHT_FFN_NORM, c.n_layers - 1, 0, name,
                                     sizeof(name)) == 0);
        const char *other = c.dtype == MB_DTYPE_BF16 ? "F16" : c.dtype == MB_DTYPE_F16 ? "BF16"
                                                                                        : "I32";
        const edit_arg a = {name, other, 0};
        damage(img, len, tmp, &a, 0);
        CHECK_EQ(load_tmp(tmp), MB_STATUS_BAD_DTYPE);
        CHECK_MSG(tst_contains(err, name), "%s: %s", fixtures[fx], err);
        /* Data starting at an odd offset cannot hold 2- or 4-byte elements. */
        damage(img, len, tmp, NULL, 1);
        CHECK_EQ(load_tmp(tmp), MB_STATUS_MISALIGNED);
        CHECK(tst_contains(err, "model.embed_tokens.weight"));
        /* Tied embeddings need no lm_head. */
        REQUIRE(mb_model_weight_name(c.arch, MB_WEIGHT_LM_HEAD, 0, 0, name, sizeof(name)) == 0);
        const edit_arg no_head = {name, NULL, 0};
        damage(img, len, tmp, &no_head, 0);
        edit_config(tmp, "tie_word_embeddings", "true");
        m = NULL;
        CHECK_EQ(mb_model_load(tmp, &m, err, sizeof(err)), MB_STATUS_OK);
        if (m)
            CHECK(m->lm_head.data == m->embed.data && m->lm_head.rows == c.vocab);
        mb_model_destroy(m);
        free(img);
        tst_rmdir(tmp);
    }
}

/* ---- resharded and fused layouts ----------------------------------------- */

/* Writes the tensors [from, to) of src (name order) as one shard file. */
static void write_shard(const mb_safetensors *src, uint32_t from, uint32_t to, const char *path,
                        cJSON *weight_map, const char *shard_name)
{
    cJSON *hdr = cJSON_CreateObject();
    size_t total = 0;
    for (uint32_t i = from; i < to; i++)
        total += mb_safetensors_at(src, i)->bytes;
    unsigned char *data = malloc(total + 1);
    REQUIRE(hdr && data);
    size_t at = 0;
    for (uint32_t i = from; i < to; i++) {
        const mb_st_tensor *t = mb_safetensors_at(src, i);
        tst_add_entry(hdr, t->name, mb_st_dtype_name(t->dtype), (int)t->n_dims, t->shape, at,
                      at + t->bytes);
        memcpy(data + at, t->data, t->bytes);
        at += t->bytes;
        cJSON_AddStringToObject(weight_map, t->name, shard_name);
    }
    char *text = cJSON_PrintUnformatted(hdr);
    size_t len;
    unsigned char *img = tst_image(text, data, total, 0, &len);
    tst_write(path, img, len);
    free(img);
    free(text);
    free(data);
    cJSON_Delete(hdr);
}

static void write_index(const char *tmp, cJSON *weight_map)
{
    cJSON *idx = cJSON_CreateObject();
    cJSON_AddItemToObject(idx, "metadata", cJSON_CreateObject());
    cJSON_AddItemReferenceToObject(idx, "weight_map", weight_map);
    char *text = cJSON_Print(idx);
    tst_write_in(tmp, "model.safetensors.index.json", text, strlen(text));
    free(text);
    cJSON_Delete(idx);
}

static void compare_models(const char *what, const mb_model *a, const mb_model *b)
{
    static views va, vb;
    collect(a, &va);
    collect(b, &vb);
    REQUIRE(va.n == vb.n);
    for (size_t i = 0; i < va.n; i++)
        CHECK_MSG(views_equal(va.t[i], vb.t[i]), "%s: view %zu (role %d layer %u expert %u) "
                  "differs", what, i, va.role[i], va.layer[i], va.expert[i]);
}

static void test_sharded(void)
{
    for (int fx = 0; fx < N_FIXTURES; fx++) {
        mb_model *orig = NULL, *sh = NULL;
        REQUIRE(mb_model_load(tst_fixture(fixtures[fx]), &orig, err, sizeof(err)) ==
                MB_STATUS_OK);
        char *tmp = tst_tmpdir();
        tst_copy(tst_fixture(fixtures[fx]), tmp, "config.json");
        const mb_safetensors *src = orig->files[0].st;
        const uint32_t n = mb_safetensors_count(src);
        const char *names[2] = {"model-00001-of-00002.safetensors",
                                "model-00002-of-00002.safetensors"};
        cJSON *wm = cJSON_CreateObject();
        for (int s = 0; s < 2; s++) {
            char *p = tst_path(tmp, names[s]);
            write_shard(src, s ? n / 2 : 0, s ? n : n / 2, p, wm, names[s]);
            free(p);
        }
        write_index(tmp, wm);
        mb_status st = mb_model_load(tmp, &sh, err, sizeof(err));
        CHECK_MSG(st == MB_STATUS_OK, "%s sharded: %s", fixtures[fx], err);
        if (sh) {
            CHECK_EQ(sh->n_files, 2);
            compare_models(fixtures[fx], orig, sh);
            int used[2] = {0, 0};
            static views v;
            collect(sh, &v);
            for (size_t i = 0; i < v.n; i++)
                if (v.t[i]->data && v.t[i]->file >= 0 && v.t[i]->file < 2) {
                    used[v.t[i]->file] = 1;
                    CHECK(v.t[i]->data ==
                          (const char *)sh->files[v.t[i]->file].map + v.t[i]->file_offset);
                }
            CHECK(used[0] && used[1]);
        }
        mb_model_destroy(sh);

        /* Hostile indexes: path escape, missing shard, wrong shard. */
        const char *first = mb_safetensors_at(src, 0)->name;
        const char *last = mb_safetensors_at(src, n - 1)->name;
        cJSON_ReplaceItemInObjectCaseSensitive(wm, first, cJSON_CreateString("../evil"));
        write_index(tmp, wm);
        CHECK_EQ(load_tmp(tmp), MB_STATUS_FORMAT);
        CHECK(tst_contains(err, "index.json") && tst_contains(err, first));
        cJSON_ReplaceItemInObjectCaseSensitive(wm, first, cJSON_CreateString("gone.safetensors"));
        write_index(tmp, wm);
        CHECK_EQ(load_tmp(tmp), MB_STATUS_IO);
        CHECK(tst_contains(err, "gone.safetensors"));
        cJSON_ReplaceItemInObjectCaseSensitive(wm, first, cJSON_CreateString(names[0]));
        cJSON_ReplaceItemInObjectCaseSensitive(wm, last, cJSON_CreateString(names[0]));
        write_index(tmp, wm);
        CHECK_EQ(load_tmp(tmp), MB_STATUS_FORMAT);
        CHECK(tst_contains(err, last) && tst_contains(err, names[0]));
        tst_write_in(tmp, "model.safetensors.index.json", "{\"weight_map\":", 14);
        CHECK_EQ(load_tmp(tmp), MB_STATUS_FORMAT);
        CHECK(tst_contains(err, "model.safetensors.index.json"));
        cJSON_Delete(wm);
        mb_model_destroy(orig);
        tst_rmdir(tmp);
    }
}

/* Rewrites a fixture with transformers 5's fused expert tensors (and, for
 * Mixtral, the mlp.gate router name); the loaded views must hold the same
 * bytes as the per-expert original. */
static void test_fused(void)
{
    for (int fx = 0; fx < N_FIXTURES; fx++) {
        mb_model *orig = NULL, *fu = NULL;
        REQUIRE(mb_model_load(tst_fixture(fixtures[fx]), &orig, err, sizeof(err)) ==
                MB_STATUS_OK);
        const mb_model_config *c = &orig->cfg;
        const mb_safetensors *src = orig->files[0].st;
        const size_t esz = mb_dtype_size(c->dtype);
        const uint64_t mat = (uint64_t)c->d_ff_expert * c->d_model * esz;
        size_t total = 0;
        for (uint32_t i = 0; i < mb_safetensors_count(src); i++)
            total += mb_safetensors_at(src, i)->bytes;
        unsigned char *data = malloc(total);
        cJSON *hdr = cJSON_CreateObject();
        REQUIRE(data && hdr);
        size_t at = 0;
        for (uint32_t i = 0; i < mb_safetensors_count(src); i++) {
            const mb_st_tensor *t = mb_safetensors_at(src, i);
            if (strstr(t->name, ".experts."))
                continue; /* per-expert: replaced below */
            const char *name = t->name;
            char alt[256];
            if (strstr(name, "block_sparse_moe.gate.weight")) {
                unsigned layer = 0;
                REQUIRE(sscanf(name, "model.layers.%u.", &layer) == 1);
                snprintf(alt, sizeof(alt), "model.layers.%u.mlp.gate.weight", layer);
                name = alt;
            }
            tst_add_entry(hdr, name, mb_st_dtype_name(t->dtype), (int)t->n_dims, t->shape, at,
                          at + t->bytes);
            memcpy(data + at, t->data, t->bytes);
            at += t->bytes;
        }
        for (uint32_t l = 0; l < c->n_layers; l++) {
            char name[256];
            const uint64_t gu[3] = {c->n_experts, 2ull * c->d_ff_expert, c->d_model};
            const uint64_t dn[3] = {c->n_experts, c->d_model, c->d_ff_expert};
            REQUIRE(!mb_model_weight_name(c->arch, MB_WEIGHT_FUSED_GATE_UP, l, 0, name, 256));
            tst_add_entry(hdr, name, mb_st_dtype_name(mb_safetensors_at(src, 0)->dtype), 3, gu,
                          at, at + 2 * mat * c->n_experts);
            for (uint32_t e = 0; e < c->n_experts; e++) {
                memcpy(data + at, orig->layers[l].experts[e].gate.data, mat);
                memcpy(data + at + mat, orig->layers[l].experts[e].up.data, mat);
                at += 2 * mat;
            }
            REQUIRE(!mb_model_weight_name(c->arch, MB_WEIGHT_FUSED_DOWN, l, 0, name, 256));
            tst_add_entry(hdr, name, mb_st_dtype_name(mb_safetensors_at(src, 0)->dtype), 3, dn,
                          at, at + mat * c->n_experts);
            for (uint32_t e = 0; e < c->n_experts; e++, at += mat)
                memcpy(data + at, orig->layers[l].experts[e].down.data, mat);
        }
        REQUIRE(at == total);
        char *tmp = tst_tmpdir();
        tst_copy(tst_fixture(fixtures[fx]), tmp, "config.json");
        char *text = cJSON_PrintUnformatted(hdr);
        size_t len;
        unsigned char *img = tst_image(text, data, total, 0, &len);
        tst_write_in(tmp, "model.safetensors", img, len);
        mb_status st = mb_model_load(tmp, &fu, err, sizeof(err));
        CHECK_MSG(st == MB_STATUS_OK, "%s fused: %s", fixtures[fx], err);
        if (fu) {
            compare_models(fixtures[fx], orig, fu);
            const mb_expert_tensors *x = &fu->layers[0].experts[1];
            CHECK_EQ(x->up.file_offset, x->gate.file_offset + mat); /* gate rows first */
        }
        mb_model_destroy(fu);
        free(img);
        free(text);
        free(data);
        cJSON_Delete(hdr);
        mb_model_destroy(orig);
        tst_rmdir(tmp);
    }
}

int main(void)
{
    for (int i = 0; i < N_FIXTURES; i++)
        check_fixture(fixtures[i]);
    test_truncated();
    test_config_errors();
    test_missing_tensors();
    test_sharded();
    test_fused();
    return mb_test_finish("test_model_load");
}
