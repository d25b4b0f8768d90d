/* The GGUF reader and loader: a valid image parses with every field as
 * written; each kind of damage (truncation anywhere, bad magic or version,
 * counts and lengths past the end, bad value types, nested arrays, absurd
 * dimensions, unknown types, misaligned, out-of-file or overlapping data,
 * duplicates) is refused with a status and a message, never a crash; the
 * fixtures load from a file and from a folder; unsupported architectures and
 * tensor types are refused by name. */
#include <string.h>
#include <unistd.h>

#include "broker/gguf.h"
#include "broker/model.h"
#include "tests/testutil.h"
#include "tests/unit/model/gguf_testutil.h"

static mb_status parse(const tg_buf *b, char *err, size_t cap)
{
    mb_gguf *g = NULL;
    mb_status st = mb_gguf_parse(b->buf, b->len, "img", &g, err, cap);
    if (st == MB_STATUS_OK) {
        /* Accepted: every tensor lies inside the image. */
        for (uint64_t i = 0; i < mb_gguf_tensor_count(g); i++) {
            const mb_gguf_tensor *t = mb_gguf_tensor_at(g, i);
            REQUIRE(t->file_offset <= b->len && t->bytes <= b->len - t->file_offset);
        }
        mb_gguf_close(g);
    }
    return st;
}

static void test_valid(void)
{
    tg_layout L;
    tg_buf b = tg_valid(&L);
    mb_gguf *g = NULL;
    char err[256] = "";
    mb_status st = mb_gguf_parse(b.buf, b.len, "img", &g, err, sizeof err);
    CHECK_MSG(st == MB_STATUS_OK, "%s", err);
    REQUIRE(g);
    CHECK_EQ(mb_gguf_version(g), 3);
    CHECK_EQ(mb_gguf_alignment(g), 32);
    CHECK_EQ(mb_gguf_kv_count(g), 3);
    CHECK_EQ(mb_gguf_tensor_count(g), 2);
    char *arch = NULL;
    CHECK_EQ(mb_gguf_get_str(g, "general.architecture", &arch, err, sizeof err), MB_STATUS_OK);
    CHECK(arch && strcmp(arch, "qwen3moe") == 0);
    free(arch);
    uint32_t v = 7;
    CHECK_EQ(mb_gguf_get_u32(g, "missing", &v, err, sizeof err), MB_STATUS_NOT_FOUND);
    CHECK_EQ(v, 7);
    CHECK_EQ(mb_gguf_get_u32(g, "general.architecture", &v, err, sizeof err), MB_STATUS_CONFIG);
    const mb_gguf_kv *kv = mb_gguf_kv_find(g, "tokenizer.ggml.tokens");
    REQUIRE(kv);
    CHECK_EQ(kv->type, MB_GGUF_ARRAY);
    CHECK_EQ(kv->elem_type, MB_GGUF_STRING);
    CHECK_EQ(kv->n_elems, 2);
    const mb_gguf_tensor *a = mb_gguf_tensor_find(g, "a"), *bt = mb_gguf_tensor_find(g, "b");
    REQUIRE(a && bt);
    CHECK_EQ(a->dtype, MB_DTYPE_F32);
    CHECK_EQ(a->ne[0], 4);
    CHECK_EQ(a->ne[1], 2);
    CHECK_EQ(a->bytes, 32);
    CHECK_EQ(a->file_offset, L.data_at);
    CHECK_EQ(bt->dtype, MB_DTYPE_Q8_0);
    CHECK_EQ(bt->bytes, 34);
    CHECK_EQ(bt->file_offset, L.data_at + 32);
    CHECK(mb_gguf_tensor_find(g, "c") == NULL);
    mb_gguf_close(g);
    free(b.buf);
}

static void test_truncations(void)
{
    tg_buf b = tg_valid(NULL);
    const size_t full = b.len;
    for (size_t n = 0; n < full; n++) {
        tg_buf t = {b.buf, n, n};
        char err[256] = "";
        mb_status st = parse(&t, err, sizeof err);
        CHECK_MSG(st != MB_STATUS_OK, "truncated to %zu bytes was accepted", n);
        CHECK_MSG(err[0], "truncated to %zu bytes: no message", n);
    }
    free(b.buf);
}

typedef void (*damage_fn)(tg_buf *b, const tg_layout *L);

static void d_magic(tg_buf *b, const tg_layout *L) { (void)L; b->buf[0] = 'X'; }
static void d_version(tg_buf *b, const tg_layout *L) { (void)L; tg_set32(b, 4, 1); }
static void d_n_kv(tg_buf *b, const tg_layout *L) { tg_set64(b, L->n_kv_at, 1ull << 60); }
static void d_n_kv_more(tg_buf *b, const tg_layout *L) { tg_set64(b, L->n_kv_at, 4); }
static void d_n_t(tg_buf *b, const tg_layout *L) { tg_set64(b, L->n_tensors_at, ~0ull); }
static void d_keylen(tg_buf *b, const tg_layout *L) { tg_set64(b, L->key0_len_at, ~0ull - 3); }
static void d_valtype(tg_buf *b, const tg_layout *L)
{
    tg_set32(b, L->key0_len_at + 8 + strlen("general.architecture"), 13);
}
static void d_nested(tg_buf *b, const tg_layout *L) { tg_set32(b, L->arr_count_at - 4, 9); }
static void d_arr_count(tg_buf *b, const tg_layout *L) { tg_set64(b, L->arr_count_at, 1ull << 61); }
static void d_ndims(tg_buf *b, const tg_layout *L) { tg_set32(b, L->a_ndims_at, 5); }
static void d_dim0(tg_buf *b, const tg_layout *L) { tg_set64(b, L->a_ne0_at, 0); }
static void d_dim_huge(tg_buf *b, const tg_layout *L) { tg_set64(b, L->a_ne0_at + 8, 1ull << 62); }
static void d_type(tg_buf *b, const tg_layout *L) { tg_set32(b, L->a_type_at, 99); }
static void d_blocks(tg_buf *b, const tg_layout *L) { tg_set32(b, L->a_type_at, 8); } /* ne0 4 */
static void d_misaligned(tg_buf *b, const tg_layout *L) { tg_set64(b, L->b_off_at, 33); }
static void d_outside(tg_buf *b, const tg_layout *L) { tg_set64(b, L->b_off_at, 64); }
static void d_off_huge(tg_buf *b, const tg_layout *L) { tg_set64(b, L->b_off_at, ~0ull - 31); }
static void d_overlap(tg_buf *b, const tg_layout *L) { tg_set64(b, L->b_off_at, 0); }
static void d_dup_name(tg_buf *b, const tg_layout *L)
{
    b->buf[L->a_ndims_at - 1] = 'b'; /* tensor "a" becomes "b" */
}
static void d_key_nul(tg_buf *b, const tg_layout *L) { b->buf[L->key0_len_at + 8 + 3] = '\0'; }
static void d_align(tg_buf *b, const tg_layout *L)
{
    const size_t at = L->key0_len_at + 8 + 20 + 4 + 8 + 8 + 8 + 17 + 4;
    tg_set32(b, at, 24);
}

static void test_dup_key(void)
{
    tg_buf b = {0};
    tg_u32(&b, 0x46554747u);
    tg_u32(&b, 3);
    tg_u64(&b, 0);
    tg_u64(&b, 2);
    for (int i = 0; i < 2; i++) {
        tg_str(&b, "general.name");
        tg_u32(&b, 4);
        tg_u32(&b, 1);
    }
    char err[256] = "";
    CHECK_EQ(parse(&b, err, sizeof err), MB_STATUS_FORMAT);
    CHECK(strstr(err, "twice") != NULL);
    free(b.buf);
}

static void test_damage(void)
{
    static const struct {
        const char *what;
        damage_fn fn;
    } cases[] = {
        {"bad magic", d_magic},
        {"version 1", d_version},
        {"metadata count past the end", d_n_kv},
        {"one metadata entry too many", d_n_kv_more},
        {"tensor count 2^64-1", d_n_t},
        {"key length near 2^64", d_keylen},
        {"unknown value type", d_valtype},
        {"array of arrays", d_nested},
        {"array count past the end", d_arr_count},
        {"5 dimensions", d_ndims},
        {"dimension 0", d_dim0},
        {"dimension product overflows", d_dim_huge},
        {"unknown tensor type", d_type},
        {"row not whole blocks", d_blocks},
        {"misaligned offset", d_misaligned},
        {"data past the end", d_outside},
        {"offset near 2^64", d_off_huge},
        {"overlapping tensors", d_overlap},
        {"duplicate tensor name", d_dup_name},
        {"key with a NUL", d_key_nul},
        {"alignment 24", d_align},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tg_layout L;
        tg_buf b = tg_valid(&L);
        cases[i].fn(&b, &L);
        char err[256] = "";
        mb_status st = parse(&b, err, sizeof err);
        CHECK_MSG(st != MB_STATUS_OK, "%s: accepted", cases[i].what);
        CHECK_MSG(err[0] != '\0', "%s: no message", cases[i].what);
        if (st != MB_STATUS_OK) printf("%-30s -> %s: %s\n", cases[i].what, mb_status_name(st), err);
        free(b.buf);
    }
}

/* ---- whole checkpoints ---------------------------------------------------- */

static char *fixture(const char *name, const char *file)
{
    const char *root = getenv("MB_TEST_DATA");
    if (!root) MB_TEST_SKIP("MB_TEST_DATA not set (run through ctest)");
    char *p = malloc(4096);
    REQUIRE(p);
    snprintf(p, 4096, "%s/gguf/%s%s%s", root, name, file ? "/" : "", file ? file : "");
    return p;
}

static uint8_t *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    REQUIRE(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*n);
    REQUIRE(b && fread(b, 1, *n, f) == *n);
    fclose(f);
    return b;
}

static void write_all(const char *path, const uint8_t *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    REQUIRE(f && fwrite(b, 1, n, f) == n);
    fclose(f);
}

static void test_load(void)
{
    char err[512] = "";
    char *dir = fixture("qwen3moe-q4_k_m", NULL), *file = fixture("qwen3moe-q4_k_m", "model.gguf");
    mb_model *m = NULL;
    mb_status st = mb_model_load(dir, &m, err, sizeof err);
    CHECK_MSG(st == MB_STATUS_OK, "folder: %s", err);
    if (m) {
        CHECK_EQ(m->cfg.arch, MB_ARCH_QWEN3_MOE);
        CHECK_EQ(m->cfg.n_layers, 2);
        CHECK_EQ(m->cfg.d_model, 256);
        CHECK_EQ(m->cfg.n_experts, 3);
        CHECK_EQ(m->cfg.top_k, 2);
        CHECK_EQ(m->cfg.norm_topk_prob, 1);
        CHECK_EQ(m->cfg.rope_interleaved, 0);
        CHECK_EQ(m->layers[0].experts[1].gate.dtype, MB_DTYPE_Q4_K);
        CHECK_EQ(m->layers[1].experts[2].down.dtype, MB_DTYPE_Q6_K);
        CHECK_EQ(m->lm_head.dtype, MB_DTYPE_Q6_K);
        /* 3 matrices of 256 x 256 Q4_K (144 bytes per 256) in layer 0. */
        CHECK_EQ(mb_model_expert_bytes(m, 0), 3ull * 256 * 144);
        mb_model_destroy(m);
        m = NULL;
    }
    st = mb_model_load(file, &m, err, sizeof err);
    CHECK_MSG(st == MB_STATUS_OK, "file: %s", err);
    mb_model_destroy(m);
    m = NULL;

    char *lf = fixture("llama-q8_0", "model.gguf");
    st = mb_model_load(lf, &m, err, sizeof err);
    CHECK_MSG(st == MB_STATUS_OK, "llama: %s", err);
    if (m) {
        CHECK_EQ(m->cfg.arch, MB_ARCH_MIXTRAL);
        CHECK_EQ(m->cfg.rope_interleaved, 1);
        CHECK_EQ(m->cfg.norm_topk_prob, 1);
    }
    mb_model_destroy(m);
    m = NULL;

    /* Damaged copies of a real file, in a temporary folder. */
    size_t n;
    uint8_t *img = read_all(file, &n);
    char tmpl[] = "/tmp/mb_gguf_XXXXXX";
    REQUIRE(mkdtemp(tmpl));
    char path[600];
    snprintf(path, sizeof path, "%s/bad.gguf", tmpl);

    uint8_t *arch = memmem(img, n, "qwen3moe", 8);
    REQUIRE(arch);
    memcpy(arch, "qwen9moe", 8);
    write_all(path, img, n);
    st = mb_model_load(path, &m, err, sizeof err);
    CHECK_EQ(st, MB_STATUS_UNSUPPORTED);
    CHECK_MSG(strstr(err, "qwen9moe") != NULL, "%s", err);
    memcpy(arch, "qwen3moe", 8);

    /* The type of token_embd (Q4_K, 12) becomes Q3_K (11, same block of
     * 256, 110 bytes: smaller, so the layout still fits). */
    mb_gguf *g = NULL;
    REQUIRE(mb_gguf_parse(img, n, "img", &g, err, sizeof err) == MB_STATUS_OK);
    const mb_gguf_tensor *emb = mb_gguf_tensor_find(g, "token_embd.weight");
    REQUIRE(emb && emb->ggml_type == 12);
    mb_gguf_close(g);
    uint8_t *name = memmem(img, n, "token_embd.weight", 17);
    REQUIRE(name);
    uint32_t nd;
    memcpy(&nd, name + 17, 4);
    REQUIRE(nd == 2);
    tg_buf tb = {img, n, n};
    tg_set32(&tb, (size_t)(name - img) + 17 + 4 + 16, 11);
    write_all(path, img, n);
    st = mb_model_load(path, &m, err, sizeof err);
    CHECK_EQ(st, MB_STATUS_UNSUPPORTED);
    CHECK_MSG(strstr(err, "Q3_K") && strstr(err, "token_embd.weight"), "%s", err);

    /* Truncated in the data area. */
    uint8_t *whole = read_all(file, &n);
    write_all(path, whole, n / 2);
    free(whole);
    st = mb_model_load(path, &m, err, sizeof err);
    CHECK_EQ(st, MB_STATUS_FORMAT);
    printf("truncated file -> %s\n", err);

    unlink(path);
    rmdir(tmpl);
    free(img);
    free(dir);
    free(file);
    free(lf);
}

int main(void)
{
    test_valid();
    test_truncations();
    test_damage();
    test_dup_key();
    test_load();
    return mb_test_finish("test_gguf");
}
