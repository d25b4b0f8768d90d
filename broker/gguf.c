/* GGUF header parsing and validation. The header is read once, front to
 * back, through a bounds-checked cursor; every count is checked against the
 * bytes left before anything is allocated for it, every size product is
 * overflow-checked, and tensors are checked against the file (aligned, whole
 * blocks, inside the data area, not overlapping). Nothing past the tensor
 * infos is read. */
#include "broker/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_MAX_ALIGNMENT (1u << 20)

struct mb_gguf {
    char *path;
    const uint8_t *base;
    uint64_t bytes;
    int fd;
    int mapped;
    uint32_t version;
    uint64_t alignment;
    mb_gguf_kv *kv;         /* [n_kv] in file order */
    const mb_gguf_kv **kv_sorted; /* [n_kv] by key */
    uint64_t n_kv;
    mb_gguf_tensor *t;      /* [n_t] by name */
    uint64_t n_t;
};

/* ggml's types: name, elements and bytes per block. Unsupported ones are
 * listed so files using them are measured correctly and refused by name. */
static const struct {
    const char *name;
    uint32_t blck, size;
    int dtype; /* mb_dtype, -1 when this build cannot compute it */
} ggml_types[] = {
    [0] = {"F32", 1, 4, MB_DTYPE_F32},       [1] = {"F16", 1, 2, MB_DTYPE_F16},
    [2] = {"Q4_0", 32, 18, MB_DTYPE_Q4_0},   [3] = {"Q4_1", 32, 20, -1},
    [6] = {"Q5_0", 32, 22, -1},              [7] = {"Q5_1", 32, 24, -1},
    [8] = {"Q8_0", 32, 34, MB_DTYPE_Q8_0},   [9] = {"Q8_1", 32, 36, -1},
    [10] = {"Q2_K", 256, 84, -1},            [11] = {"Q3_K", 256, 110, -1},
    [12] = {"Q4_K", 256, 144, MB_DTYPE_Q4_K}, [13] = {"Q5_K", 256, 176, MB_DTYPE_Q5_K},
    [14] = {"Q6_K", 256, 210, MB_DTYPE_Q6_K}, [15] = {"Q8_K", 256, 292, -1},
    [16] = {"IQ2_XXS", 256, 66, -1},         [17] = {"IQ2_XS", 256, 74, -1},
    [18] = {"IQ3_XXS", 256, 98, -1},         [19] = {"IQ1_S", 256, 50, -1},
    [20] = {"IQ4_NL", 32, 18, -1},           [21] = {"IQ3_S", 256, 110, -1},
    [22] = {"IQ2_S", 256, 82, -1},           [23] = {"IQ4_XS", 256, 136, -1},
    [24] = {"I8", 1, 1, -1},                 [25] = {"I16", 1, 2, -1},
    [26] = {"I32", 1, 4, -1},                [27] = {"I64", 1, 8, -1},
    [28] = {"F64", 1, 8, -1},                [29] = {"IQ1_M", 256, 56, -1},
    [30] = {"BF16", 1, 2, MB_DTYPE_BF16},    [34] = {"TQ1_0", 256, 54, -1},
    [35] = {"TQ2_0", 256, 66, -1},           [39] = {"MXFP4", 32, 17, -1},
};
#define N_GGML_TYPES (sizeof(ggml_types) / sizeof(ggml_types[0]))

const char *mb_gguf_type_name(uint32_t t)
{
    return t < N_GGML_TYPES && ggml_types[t].name ? ggml_types[t].name : "?";
}

/* Bytes of one value of a fixed-size metadata type; 0 for STRING/ARRAY. */
static uint64_t scalar_bytes(uint32_t type)
{
    static const uint8_t sz[MB_GGUF_TYPE_COUNT_] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return type < MB_GGUF_TYPE_COUNT_ ? sz[type] : 0;
}

static void set_err(char *err, size_t cap, const char *fmt, ...)
{
    if (!err || cap == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

/* ---- cursor ------------------------------------------------------------ */

typedef struct {
    const uint8_t *p;
    uint64_t off, end;
    const char *label;
    char *err;
    size_t cap;
} cursor;

static uint64_t left(const cursor *c)
{
    return c->end - c->off;
}

static mb_status trunc_err(cursor *c, const char *what)
{
    set_err(c->err, c->cap, "%s: truncated at byte %llu reading %s", c->label,
            (unsigned long long)c->off, what);
    return MB_STATUS_FORMAT;
}

static mb_status take(cursor *c, uint64_t n, const uint8_t **out, const char *what)
{
    if (n > left(c)) return trunc_err(c, what);
    *out = c->p + c->off;
    c->off += n;
    return MB_STATUS_OK;
}

static mb_status rd32(cursor *c, uint32_t *v, const char *what)
{
    const uint8_t *p;
    mb_status st = take(c, 4, &p, what);
    if (st == MB_STATUS_OK) memcpy(v, p, 4);
    return st;
}

static mb_status rd64(cursor *c, uint64_t *v, const char *what)
{
    const uint8_t *p;
    mb_status st = take(c, 8, &p, what);
    if (st == MB_STATUS_OK) memcpy(v, p, 8);
    return st;
}

/* A length-prefixed string of at most max bytes. */
static mb_status rd_str(cursor *c, uint64_t max, const char **s, uint64_t *len, const char *what)
{
    mb_status st = rd64(c, len, what);
    if (st != MB_STATUS_OK) return st;
    if (*len > max) {
        set_err(c->err, c->cap, "%s: %s at byte %llu is %llu bytes long (at most %llu)", c->label,
                what, (unsigned long long)c->off, (unsigned long long)*len,
                (unsigned long long)max);
        return MB_STATUS_FORMAT;
    }
    return take(c, *len, (const uint8_t **)s, what);
}

/* A NUL-terminated copy of a name, refusing embedded NULs. */
static mb_status copy_name(cursor *c, const char *s, uint64_t len, char **out, const char *what)
{
    if (len == 0 || memchr(s, 0, len)) {
        set_err(c->err, c->cap, "%s: %s before byte %llu is empty or holds a NUL byte", c->label,
                what, (unsigned long long)c->off);
        return MB_STATUS_FORMAT;
    }
    char *n = malloc(len + 1);
    if (!n) return MB_STATUS_NOMEM;
    memcpy(n, s, len);
    n[len] = '\0';
    *out = n;
    return MB_STATUS_OK;
}

/* ---- metadata ---------------------------------------------------------- */

static mb_status read_scalar(cursor *c, uint32_t type, mb_gguf_kv *kv)
{
    const uint8_t *p;
    mb_status st = take(c, scalar_bytes(type), &p, kv->key);
    if (st != MB_STATUS_OK) return st;
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    float f32;
    switch (type) {
    case MB_GGUF_U8: kv->v.u = p[0]; break;
    case MB_GGUF_BOOL:
        if (p[0] > 1) {
            set_err(c->err, c->cap, "%s: key '%s': bool value %u", c->label, kv->key, p[0]);
            return MB_STATUS_FORMAT;
        }
        kv->v.u = p[0];
        break;
    case MB_GGUF_I8: memcpy(&u8, p, 1); kv->v.i = (int8_t)u8; break;
    case MB_GGUF_U16: memcpy(&u16, p, 2); kv->v.u = u16; break;
    case MB_GGUF_I16: memcpy(&u16, p, 2); kv->v.i = (int16_t)u16; break;
    case MB_GGUF_U32: memcpy(&u32, p, 4); kv->v.u = u32; break;
    case MB_GGUF_I32: memcpy(&u32, p, 4); kv->v.i = (int32_t)u32; break;
    case MB_GGUF_F32: memcpy(&f32, p, 4); kv->v.f = f32; break;
    case MB_GGUF_U64: memcpy(&u64, p, 8); kv->v.u = u64; break;
    case MB_GGUF_I64: memcpy(&u64, p, 8); kv->v.i = (int64_t)u64; break;
    case MB_GGUF_F64: memcpy(&kv->v.f, p, 8); break;
    default: break;
    }
    return MB_STATUS_OK;
}

static mb_status read_array(cursor *c, mb_gguf_kv *kv)
{
    uint32_t et;
    uint64_t n;
    mb_status st;
    if ((st = rd32(c, &et, kv->key)) || (st = rd64(c, &n, kv->key))) return st;
    if (et >= MB_GGUF_TYPE_COUNT_ || et == MB_GGUF_ARRAY) {
        set_err(c->err, c->cap, "%s: key '%s': array element type %u is not supported", c->label,
                kv->key, et);
        return MB_STATUS_FORMAT;
    }
    kv->elem_type = (mb_gguf_type)et;
    kv->n_elems = n;
    const uint64_t start = c->off;
    const uint64_t esz = scalar_bytes(et);
    if (esz) {
        if (n > left(c) / esz) return trunc_err(c, kv->key);
        c->off += n * esz;
    } else {
        /* Strings: each takes at least its 8-byte length. */
        if (n > left(c) / 8) return trunc_err(c, kv->key);
        for (uint64_t i = 0; i < n; i++) {
            const char *s;
            uint64_t len;
            if ((st = rd_str(c, MB_GGUF_MAX_STRING, &s, &len, kv->key))) return st;
        }
    }
    kv->elems = c->p + start;
    kv->elems_bytes = c->off - start;
    return MB_STATUS_OK;
}

static mb_status read_kv(cursor *c, mb_gguf_kv *kv)
{
    const char *key;
    uint64_t len;
    uint32_t type;
    mb_status st;
    if ((st = rd_str(c, MB_GGUF_MAX_NAME, &key, &len, "metadata key")) ||
        (st = copy_name(c, key, len, (char **)&kv->key, "metadata key")) ||
        (st = rd32(c, &type, kv->key)))
        return st;
    if (type >= MB_GGUF_TYPE_COUNT_) {
        set_err(c->err, c->cap, "%s: key '%s' has value type %u (not a GGUF type)", c->label,
                kv->key, type);
        return MB_STATUS_FORMAT;
    }
    kv->type = (mb_gguf_type)type;
    if (type == MB_GGUF_STRING) return rd_str(c, MB_GGUF_MAX_STRING, &kv->str, &kv->str_len, kv->key);
    if (type == MB_GGUF_ARRAY) return read_array(c, kv);
    return read_scalar(c, type, kv);
}

static int cmp_kv(const void *a, const void *b)
{
    return strcmp((*(const mb_gguf_kv *const *)a)->key, (*(const mb_gguf_kv *const *)b)->key);
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const mb_gguf_tensor *)a)->name, ((const mb_gguf_tensor *)b)->name);
}

static int cmp_tensor_off(const void *a, const void *b)
{
    const mb_gguf_tensor *x = a, *y = b;
    return x->file_offset < y->file_offset ? -1 : x->file_offset > y->file_offset;
}

/* ---- tensors ----------------------------------------------------------- */

static mb_status read_tensor_info(cursor *c, mb_gguf_tensor *t)
{
    const char *name;
    uint64_t len;
    mb_status st;
    if ((st = rd_str(c, MB_GGUF_MAX_NAME, &name, &len, "tensor name")) ||
        (st = copy_name(c, name, len, (char **)&t->name, "tensor name")) ||
        (st = rd32(c, &t->n_dims, t->name)))
        return st;
    if (t->n_dims == 0 || t->n_dims > MB_GGUF_MAX_DIMS) {
        set_err(c->err, c->cap, "%s: tensor '%s' has %u dimensions (1 to %d)", c->label, t->name,
                t->n_dims, MB_GGUF_MAX_DIMS);
        return MB_STATUS_BAD_SHAPE;
    }
    for (int i = 0; i < MB_GGUF_MAX_DIMS; i++)
        t->ne[i] = 1;
    for (uint32_t i = 0; i < t->n_dims; i++) {
        if ((st = rd64(c, &t->ne[i], t->name))) return st;
        if (t->ne[i] == 0 || t->ne[i] > (uint64_t)INT64_MAX) {
            set_err(c->err, c->cap, "%s: tensor '%s' dimension %u is %llu", c->label, t->name, i,
                    (unsigned long long)t->ne[i]);
            return MB_STATUS_BAD_SHAPE;
        }
    }
    if ((st = rd32(c, &t->ggml_type, t->name)) || (st = rd64(c, &t->file_offset, t->name)))
        return st;
    if (t->ggml_type >= N_GGML_TYPES || !ggml_types[t->ggml_type].name) {
        set_err(c->err, c->cap, "%s: tensor '%s' has type %u, which ggml does not define",
                c->label, t->name, t->ggml_type);
        return MB_STATUS_BAD_DTYPE;
    }
    const uint32_t blck = ggml_types[t->ggml_type].blck;
    t->dtype = ggml_types[t->ggml_type].dtype;
    if (t->ne[0] % blck) {
        set_err(c->err, c->cap, "%s: tensor '%s': row of %llu elements is not a whole number of "
                "%s blocks of %u", c->label, t->name, (unsigned long long)t->ne[0],
                ggml_types[t->ggml_type].name, blck);
        return MB_STATUS_BAD_SHAPE;
    }
    uint64_t n = t->ne[0] / blck * ggml_types[t->ggml_type].size, elems = t->ne[0];
    for (int i = 1; i < MB_GGUF_MAX_DIMS; i++)
        if (__builtin_mul_overflow(n, t->ne[i], &n) ||
            __builtin_mul_overflow(elems, t->ne[i], &elems) || elems > (uint64_t)INT64_MAX) {
            set_err(c->err, c->cap, "%s: tensor '%s': size overflows", c->label, t->name);
            return MB_STATUS_OVERFLOW;
        }
    t->bytes = n;
    return MB_STATUS_OK;
}

/* Places every tensor in the data area and checks bounds and overlaps. */
static mb_status place_tensors(mb_gguf *g, uint64_t header_end, char *err, size_t cap)
{
    const char *label = g->path;
    uint64_t data0;
    if (__builtin_add_overflow(header_end, g->alignment - 1, &data0)) return MB_STATUS_OVERFLOW;
    data0 &= ~(g->alignment - 1);
    if (g->n_t && data0 > g->bytes) {
        set_err(err, cap, "%s: data area starts at %llu, past the end of the file (%llu bytes)",
                label, (unsigned long long)data0, (unsigned long long)g->bytes);
        return MB_STATUS_FORMAT;
    }
    for (uint64_t i = 0; i < g->n_t; i++) {
        mb_gguf_tensor *t = &g->t[i];
        uint64_t abs, end;
        if (t->file_offset % g->alignment) {
            set_err(err, cap, "%s: tensor '%s' at data offset %llu is not aligned to %llu", label,
                    t->name, (unsigned long long)t->file_offset,
                    (unsigned long long)g->alignment);
            return MB_STATUS_MISALIGNED;
        }
        if (__builtin_add_overflow(data0, t->file_offset, &abs) ||
            __builtin_add_overflow(abs, t->bytes, &end) || end > g->bytes) {
            set_err(err, cap, "%s: tensor '%s' (data offset %llu, %llu bytes) extends past the "
                    "end of the file (%llu bytes)", label, t->name,
                    (unsigned long long)t->file_offset, (unsigned long long)t->bytes,
                    (unsigned long long)g->bytes);
            return MB_STATUS_FORMAT;
        }
        t->file_offset = abs;
        t->data = g->base + abs;
    }
    qsort(g->t, g->n_t, sizeof(*g->t), cmp_tensor_off);
    for (uint64_t i = 1; i < g->n_t; i++)
        if (g->t[i - 1].file_offset + g->t[i - 1].bytes > g->t[i].file_offset) {
            set_err(err, cap, "%s: tensors '%s' and '%s' overlap", label, g->t[i - 1].name,
                    g->t[i].name);
            return MB_STATUS_FORMAT;
        }
    qsort(g->t, g->n_t, sizeof(*g->t), cmp_tensor_name);
    for (uint64_t i = 1; i < g->n_t; i++)
        if (strcmp(g->t[i - 1].name, g->t[i].name) == 0) {
            set_err(err, cap, "%s: tensor '%s' appears twice", label, g->t[i].name);
            return MB_STATUS_FORMAT;
        }
    return MB_STATUS_OK;
}

static mb_status read_alignment(mb_gguf *g, char *err, size_t cap)
{
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const mb_gguf_kv *kv = mb_gguf_kv_find(g, "general.alignment");
    if (!kv) return MB_STATUS_OK;
    if (kv->type != MB_GGUF_U32 || kv->v.u == 0 || (kv->v.u & (kv->v.u - 1)) ||
        kv->v.u > GGUF_MAX_ALIGNMENT) {
        set_err(err, cap, "%s: general.alignment must be a u32 power of two up to %u", g->path,
                GGUF_MAX_ALIGNMENT);
        return MB_STATUS_FORMAT;
    }
    g->alignment = kv->v.u;
    return MB_STATUS_OK;
}

static mb_status parse_image(mb_gguf *g, char *err, size_t cap)
{
    cursor c = {g->base, 0, g->bytes, g->path, err, cap};
    uint32_t magic;
    uint64_t n_t, n_kv;
    mb_status st;
    if ((st = rd32(&c, &magic, "magic"))) return st;
    if (magic != GGUF_MAGIC) {
        set_err(err, cap, "%s: not a GGUF file (bad magic)", g->path);
        return MB_STATUS_FORMAT;
    }
    if ((st = rd32(&c, &g->version, "version"))) return st;
    if (g->version != 2 && g->version != 3) {
        set_err(err, cap, "%s: GGUF version %u is not supported (2 or 3)", g->path, g->version);
        return MB_STATUS_UNSUPPORTED;
    }
    if ((st = rd64(&c, &n_t, "tensor count")) || (st = rd64(&c, &n_kv, "metadata count")))
        return st;
    /* A key-value pair takes at least 13 bytes, a tensor info 32: counts the
     * file cannot hold are refused before anything is allocated. */
    if (n_kv > left(&c) / 13) {
        set_err(err, cap, "%s: metadata count %llu does not fit the file", g->path,
                (unsigned long long)n_kv);
        return MB_STATUS_FORMAT;
    }
    g->kv = calloc(n_kv ? n_kv : 1, sizeof(*g->kv));
    g->kv_sorted = calloc(n_kv ? n_kv : 1, sizeof(*g->kv_sorted));
    if (!g->kv || !g->kv_sorted) return MB_STATUS_NOMEM;
    for (; g->n_kv < n_kv; g->n_kv++) {
        if ((st = read_kv(&c, &g->kv[g->n_kv]))) {
            g->n_kv++; /* its key, if copied, is freed with the rest */
            return st;
        }
        g->kv_sorted[g->n_kv] = &g->kv[g->n_kv];
    }
    qsort(g->kv_sorted, g->n_kv, sizeof(*g->kv_sorted), cmp_kv);
    for (uint64_t i = 1; i < g->n_kv; i++)
        if (strcmp(g->kv_sorted[i - 1]->key, g->kv_sorted[i]->key) == 0) {
            set_err(err, cap, "%s: metadata key '%s' appears twice", g->path, g->kv_sorted[i]->key);
            return MB_STATUS_FORMAT;
        }
    if ((st = read_alignment(g, err, cap))) return st;
    if (n_t > left(&c) / 32) {
        set_err(err, cap, "%s: tensor count %llu does not fit the file", g->path,
                (unsigned long long)n_t);
        return MB_STATUS_FORMAT;
    }
    g->t = calloc(n_t ? n_t : 1, sizeof(*g->t));
    if (!g->t) return MB_STATUS_NOMEM;
    for (; g->n_t < n_t; g->n_t++)
        if ((st = read_tensor_info(&c, &g->t[g->n_t]))) {
            g->n_t++; /* its name, if copied, is freed with the rest */
            return st;
        }
    return place_tensors(g, c.off, err, cap);
}

/* ---- handles ----------------------------------------------------------- */

static mb_gguf *handle_new(const char *label)
{
    mb_gguf *g = calloc(1, sizeof(*g));
    if (!g) return NULL;
    g->fd = -1;
    g->path = strdup(label ? label : "?");
    if (!g->path) {
        free(g);
        return NULL;
    }
    return g;
}

void mb_gguf_close(mb_gguf *g)
{
    if (!g) return;
    for (uint64_t i = 0; g->kv && i < g->n_kv; i++)
        free((char *)g->kv[i].key);
    for (uint64_t i = 0; g->t && i < g->n_t; i++)
        free((char *)g->t[i].name);
    free(g->kv);
    free(g->kv_sorted);
    free(g->t);
    if (g->mapped) munmap((void *)g->base, g->bytes);
    if (g->fd >= 0) close(g->fd);
    free(g->path);
    free(g);
}

mb_status mb_gguf_parse(const void *buf, uint64_t bytes, const char *label, mb_gguf **out,
                        char *err, size_t err_cap)
{
    if ((!buf && bytes) || !out) return MB_STATUS_INVALID_ARG;
    mb_gguf *g = handle_new(label);
    if (!g) return MB_STATUS_NOMEM;
    g->base = buf;
    g->bytes = bytes;
    mb_status st = parse_image(g, err, err_cap);
    if (st != MB_STATUS_OK) {
        if (st == MB_STATUS_NOMEM) set_err(err, err_cap, "%s: out of memory", g->path);
        mb_gguf_close(g);
        return st;
    }
    *out = g;
    return MB_STATUS_OK;
}

mb_status mb_gguf_open(const char *path, mb_gguf **out, char *err, size_t err_cap)
{
    if (!path || !out) return MB_STATUS_INVALID_ARG;
    mb_gguf *g = handle_new(path);
    if (!g) return MB_STATUS_NOMEM;
    mb_status st = MB_STATUS_IO;
    struct stat sb;
    g->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (g->fd < 0) {
        st = errno == ENOENT ? MB_STATUS_NOT_FOUND : MB_STATUS_IO;
        set_err(err, err_cap, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    if (fstat(g->fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        set_err(err, err_cap, "%s: not a regular file", path);
        goto fail;
    }
    g->bytes = (uint64_t)sb.st_size;
    if (g->bytes > 0) {
        /* Default advice: only touched pages are read, and the coordinator
         * touches no expert tensor it does not compute. */
        void *map = mmap(NULL, g->bytes, PROT_READ, MAP_PRIVATE, g->fd, 0);
        if (map == MAP_FAILED) {
            set_err(err, err_cap, "%s: mmap of %llu bytes failed: %s", path,
                    (unsigned long long)g->bytes, strerror(errno));
            goto fail;
        }
        g->base = map;
        g->mapped = 1;
    }
    st = parse_image(g, err, err_cap);
    if (st != MB_STATUS_OK) {
        if (st == MB_STATUS_NOMEM) set_err(err, err_cap, "%s: out of memory", path);
        goto fail;
    }
    *out = g;
    return MB_STATUS_OK;
fail:
    mb_gguf_close(g);
    return st;
}

/* ---- lookups ----------------------------------------------------------- */

uint32_t mb_gguf_version(const mb_gguf *g) { return g ? g->version : 0; }
uint64_t mb_gguf_alignment(const mb_gguf *g) { return g ? g->alignment : 0; }
const char *mb_gguf_path(const mb_gguf *g) { return g ? g->path : NULL; }
int mb_gguf_fd(const mb_gguf *g) { return g ? g->fd : -1; }
uint64_t mb_gguf_kv_count(const mb_gguf *g) { return g ? g->n_kv : 0; }
uint64_t mb_gguf_tensor_count(const mb_gguf *g) { return g ? g->n_t : 0; }

const void *mb_gguf_base(const mb_gguf *g, uint64_t *bytes)
{
    if (bytes) *bytes = g ? g->bytes : 0;
    return g ? g->base : NULL;
}

const mb_gguf_kv *mb_gguf_kv_at(const mb_gguf *g, uint64_t i)
{
    return g && i < g->n_kv ? &g->kv[i] : NULL;
}

const mb_gguf_tensor *mb_gguf_tensor_at(const mb_gguf *g, uint64_t i)
{
    return g && i < g->n_t ? &g->t[i] : NULL;
}

const mb_gguf_kv *mb_gguf_kv_find(const mb_gguf *g, const char *key)
{
    if (!g || !key || !g->n_kv) return NULL;
    mb_gguf_kv k = {.key = key};
    const mb_gguf_kv *kp = &k;
    const mb_gguf_kv *const *r = bsearch(&kp, g->kv_sorted, g->n_kv, sizeof(*g->kv_sorted), cmp_kv);
    return r ? *r : NULL;
}

const mb_gguf_tensor *mb_gguf_tensor_find(const mb_gguf *g, const char *name)
{
    if (!g || !name || !g->n_t) return NULL;
    mb_gguf_tensor k = {.name = name};
    return bsearch(&k, g->t, g->n_t, sizeof(*g->t), cmp_tensor_name);
}

static int is_unsigned(mb_gguf_type t)
{
    return t == MB_GGUF_U8 || t == MB_GGUF_U16 || t == MB_GGUF_U32 || t == MB_GGUF_U64;
}

static int is_signed(mb_gguf_type t)
{
    return t == MB_GGUF_I8 || t == MB_GGUF_I16 || t == MB_GGUF_I32 || t == MB_GGUF_I64;
}

mb_status mb_gguf_get_u32(const mb_gguf *g, const char *key, uint32_t *out, char *err,
                          size_t err_cap)
{
    const mb_gguf_kv *kv = mb_gguf_kv_find(g, key);
    if (!kv) {
        set_err(err, err_cap, "%s: metadata key '%s' is missing", mb_gguf_path(g), key);
        return MB_STATUS_NOT_FOUND;
    }
    if ((is_unsigned(kv->type) && kv->v.u <= UINT32_MAX) ||
        (is_signed(kv->type) && kv->v.i >= 0 && kv->v.i <= (int64_t)UINT32_MAX)) {
        *out = is_unsigned(kv->type) ? (uint32_t)kv->v.u : (uint32_t)kv->v.i;
        return MB_STATUS_OK;
    }
    set_err(err, err_cap, "%s: metadata key '%s' must be an integer in [0, 2^32)", g->path, key);
    return MB_STATUS_CONFIG;
}

mb_status mb_gguf_get_f32(const mb_gguf *g, const char *key, float *out, char *err, size_t err_cap)
{
    const mb_gguf_kv *kv = mb_gguf_kv_find(g, key);
    if (!kv) {
        set_err(err, err_cap, "%s: metadata key '%s' is missing", mb_gguf_path(g), key);
        return MB_STATUS_NOT_FOUND;
    }
    if (kv->type != MB_GGUF_F32 && kv->type != MB_GGUF_F64) {
        set_err(err, err_cap, "%s: metadata key '%s' must be a float", g->path, key);
        return MB_STATUS_CONFIG;
    }
    *out = (float)kv->v.f;
    return MB_STATUS_OK;
}

mb_status mb_gguf_get_str(const mb_gguf *g, const char *key, char **out, char *err, size_t err_cap)
{
    const mb_gguf_kv *kv = mb_gguf_kv_find(g, key);
    if (!kv) {
        set_err(err, err_cap, "%s: metadata key '%s' is missing", mb_gguf_path(g), key);
        return MB_STATUS_NOT_FOUND;
    }
    if (kv->type != MB_GGUF_STRING) {
        set_err(err, err_cap, "%s: metadata key '%s' must be a string", g->path, key);
        return MB_STATUS_CONFIG;
    }
    char *s = malloc(kv->str_len + 1);
    if (!s) return MB_STATUS_NOMEM;
    memcpy(s, kv->str, kv->str_len);
    s[kv->str_len] = '\0';
    *out = s;
    return MB_STATUS_OK;
}
