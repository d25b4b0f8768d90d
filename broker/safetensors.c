/* The safetensors reader: header validation, tensor table and lookup, and the
 * reference-file reader built on it. A file is untrusted input: every number
 * in the header is range-checked before it is used, and tensor data is never
 * read here (only the reference reader copies its three small tensors). */
#include "broker/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct mb_safetensors {
    char *path;
    const uint8_t *base; /* whole image */
    uint64_t bytes;
    int fd;              /* -1 for a borrowed image */
    int mapped;          /* base is our mapping */
    mb_st_tensor *tensors; /* [n], sorted by name */
    uint32_t n;
    char *names;         /* one block holding every name */
};

static const struct {
    const char *name;
    size_t size;
} st_dtypes[MB_ST_DTYPE_COUNT_] = {
    [MB_ST_DTYPE_F32] = {"F32", 4}, [MB_ST_DTYPE_F16] = {"F16", 2},
    [MB_ST_DTYPE_BF16] = {"BF16", 2}, [MB_ST_DTYPE_I32] = {"I32", 4},
    [MB_ST_DTYPE_I64] = {"I64", 8},
};

static void set_err(char *err, size_t cap, const char *fmt, ...)
{
    if (!err || cap == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

size_t mb_st_dtype_size(int dtype)
{
    return dtype >= 0 && dtype < MB_ST_DTYPE_COUNT_ ? st_dtypes[dtype].size : 0;
}

const char *mb_st_dtype_name(int dtype)
{
    return dtype >= 0 && dtype < MB_ST_DTYPE_COUNT_ ? st_dtypes[dtype].name : "?";
}

mb_status mb_st_dtype_to_weight(mb_st_dtype st, mb_dtype *out)
{
    switch (st) {
    case MB_ST_DTYPE_F32: *out = MB_DTYPE_F32; return MB_STATUS_OK;
    case MB_ST_DTYPE_F16: *out = MB_DTYPE_F16; return MB_STATUS_OK;
    case MB_ST_DTYPE_BF16: *out = MB_DTYPE_BF16; return MB_STATUS_OK;
    default: return MB_STATUS_BAD_DTYPE;
    }
}

/* A JSON number that is an exact integer in [0, 2^53], the range a double
 * holds without rounding; anything else (negative, fractional, huge, NaN)
 * is refused. */
static int json_u53(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return 0;
    double d = v->valuedouble;
    if (!(d >= 0.0 && d <= 9007199254740992.0) || d != floor(d))
        return 0;
    *out = (uint64_t)d;
    return 1;
}

/* Fills t from one header entry; data_bytes bounds the offsets. */
static mb_status parse_entry(const cJSON *e, uint64_t data_bytes, mb_st_tensor *t,
                             const char *label, char *err, size_t cap)
{
    const char *name = e->string;
    if (!cJSON_IsObject(e)) {
        set_err(err, cap, "%s: header entry '%s' is not an object", label, name);
        return MB_STATUS_FORMAT;
    }
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs)) {
        set_err(err, cap, "%s: tensor '%s' lacks a string dtype, a shape array or a "
                "data_offsets array", label, name);
        return MB_STATUS_FORMAT;
    }
    int dtype = -1;
    for (int i = 0; i < MB_ST_DTYPE_COUNT_; i++)
        if (strcmp(dt->valuestring, st_dtypes[i].name) == 0)
            dtype = i;
    if (dtype < 0) {
        set_err(err, cap, "%s: tensor '%s' has unsupported dtype '%.32s'", label, name,
                dt->valuestring);
        return MB_STATUS_BAD_DTYPE;
    }
    t->dtype = (mb_st_dtype)dtype;

    int n_dims = cJSON_GetArraySize(shape);
    if (n_dims > MB_ST_MAX_DIMS) {
        set_err(err, cap, "%s: tensor '%s' has %d dimensions (at most %d)", label, name, n_dims,
                MB_ST_MAX_DIMS);
        return MB_STATUS_FORMAT;
    }
    t->n_dims = (uint32_t)n_dims;
    uint64_t n_elems = 1;
    int overflow = 0;
    for (int i = 0; i < n_dims; i++) {
        if (!json_u53(cJSON_GetArrayItem(shape, i), &t->shape[i])) {
            set_err(err, cap, "%s: tensor '%s' dimension %d is not a non-negative integer",
                    label, name, i);
            return MB_STATUS_FORMAT;
        }
        overflow |= __builtin_mul_overflow(n_elems, t->shape[i], &n_elems);
    }
    uint64_t bytes = 0;
    overflow |= __builtin_mul_overflow(n_elems, (uint64_t)st_dtypes[dtype].size, &bytes);
    if (overflow) {
        set_err(err, cap, "%s: tensor '%s' shape overflows 64-bit sizes", label, name);
        return MB_STATUS_OVERFLOW;
    }
    t->n_elems = n_elems;
    t->bytes = bytes;

    uint64_t begin, end;
    if (cJSON_GetArraySize(offs) != 2 || !json_u53(cJSON_GetArrayItem(offs, 0), &begin) ||
        !json_u53(cJSON_GetArrayItem(offs, 1), &end)) {
        set_err(err, cap, "%s: tensor '%s' data_offsets is not two non-negative integers",
                label, name);
        return MB_STATUS_FORMAT;
    }
    if (begin > end || end > data_bytes) {
        set_err(err, cap, "%s: tensor '%s' data_offsets [%llu, %llu] outside the data area of "
                "%llu bytes (file truncated?)", label, name, (unsigned long long)begin,
                (unsigned long long)end, (unsigned long long)data_bytes);
        return MB_STATUS_FORMAT;
    }
    if (end - begin != bytes) {
        set_err(err, cap, "%s: tensor '%s' spans %llu bytes but its %s shape needs %llu", label,
                name, (unsigned long long)(end - begin), st_dtypes[dtype].name,
                (unsigned long long)bytes);
        return MB_STATUS_FORMAT;
    }
    t->file_offset = begin; /* made absolute by the caller */
    return MB_STATUS_OK;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const mb_st_tensor *)a)->name, ((const mb_st_tensor *)b)->name);
}

static int cmp_offset(const void *a, const void *b)
{
    const mb_st_tensor *x = *(const mb_st_tensor *const *)a, *y = *(const mb_st_tensor *const *)b;
    return x->file_offset < y->file_offset ? -1 : x->file_offset > y->file_offset;
}

/* Rejects duplicate names (cJSON keeps both) and overlapping byte ranges.
 * tensors must already be sorted by name. */
static mb_status check_table(mb_safetensors *f, char *err, size_t cap)
{
    for (uint32_t i = 1; i < f->n; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
            set_err(err, cap, "%s: tensor '%s' appears twice in the header", f->path,
                    f->tensors[i].name);
            return MB_STATUS_FORMAT;
        }
    if (f->n < 2)
        return MB_STATUS_OK;
    const mb_st_tensor **by_off = malloc(f->n * sizeof(*by_off));
    if (!by_off)
        return MB_STATUS_NOMEM;
    uint32_t m = 0;
    for (uint32_t i = 0; i < f->n; i++)
        if (f->tensors[i].bytes > 0) /* empty tensors own no bytes */
            by_off[m++] = &f->tensors[i];
    qsort(by_off, m, sizeof(*by_off), cmp_offset);
    mb_status st = MB_STATUS_OK;
    for (uint32_t i = 1; i < m; i++) {
        const mb_st_tensor *a = by_off[i - 1], *b = by_off[i];
        if (a->file_offset + a->bytes > b->file_offset) {
            set_err(err, cap, "%s: tensors '%s' and '%s' overlap", f->path, a->name, b->name);
            st = MB_STATUS_FORMAT;
            break;
        }
    }
    free(by_off);
    return st;
}

/* Validates the image in f->base/f->bytes and builds the sorted table. */
static mb_status parse_image(mb_safetensors *f, char *err, size_t cap)
{
    if (f->bytes < 8) {
        set_err(err, cap, "%s: file truncated: %llu bytes, shorter than the 8-byte header length",
                f->path, (unsigned long long)f->bytes);
        return MB_STATUS_FORMAT;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | f->base[i];
    if (hlen > MB_ST_MAX_HEADER_BYTES) {
        set_err(err, cap, "%s: header length %llu exceeds the %u-byte limit (corrupt file?)",
                f->path, (unsigned long long)hlen, MB_ST_MAX_HEADER_BYTES);
        return MB_STATUS_FORMAT;
    }
    if (hlen > f->bytes - 8) {
        set_err(err, cap, "%s: file truncated: header needs %llu bytes, %llu present", f->path,
                (unsigned long long)hlen, (unsigned long long)(f->bytes - 8));
        return MB_STATUS_FORMAT;
    }
    if (hlen < 2) {
        set_err(err, cap, "%s: header of %llu bytes cannot hold a JSON object", f->path,
                (unsigned long long)hlen);
        return MB_STATUS_FORMAT;
    }
    /* cJSON wants a terminated string; copying also keeps it off the map. */
    char *text = malloc(hlen + 1);
    if (!text)
        return MB_STATUS_NOMEM;
    memcpy(text, f->base + 8, hlen);
    text[hlen] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, hlen, &end, 0);
    mb_status st = MB_STATUS_OK;
    if (!root) {
        long at = end ? (long)(end - text) : -1;
        set_err(err, cap, "%s: header JSON malformed near byte %ld", f->path, at);
        st = MB_STATUS_FORMAT;
        goto out;
    }
    /* The writer pads the header with spaces; anything else after the
     * object (including a NUL) means a corrupt or hostile header. */
    for (const char *p = end; p < text + hlen; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            set_err(err, cap, "%s: unexpected bytes after the header JSON at byte %ld", f->path,
                    (long)(p - text));
            st = MB_STATUS_FORMAT;
            goto out;
        }
    if (!cJSON_IsObject(root)) {
        set_err(err, cap, "%s: header JSON is not an object", f->path);
        st = MB_STATUS_FORMAT;
        goto out;
    }
    size_t n = 0, name_bytes = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0)
            continue;
        n++;
        name_bytes += strlen(e->string) + 1; /* bounded by hlen */
    }
    if (n > UINT32_MAX) {
        set_err(err, cap, "%s: header lists too many tensors", f->path);
        st = MB_STATUS_FORMAT;
        goto out;
    }
    f->tensors = calloc(n ? n : 1, sizeof(*f->tensors));
    f->names = malloc(name_bytes ? name_bytes : 1);
    if (!f->tensors || !f->names) {
        st = MB_STATUS_NOMEM;
        goto out;
    }
    const uint64_t data_start = 8 + hlen, data_bytes = f->bytes - data_start;
    char *np = f->names;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0)
            continue;
        mb_st_tensor *t = &f->tensors[f->n];
        size_t len = strlen(e->string) + 1;
        memcpy(np, e->string, len);
        t->name = np;
        np += len;
        st = parse_entry(e, data_bytes, t, f->path, err, cap);
        if (st != MB_STATUS_OK)
            goto out;
        t->file_offset += data_start;
        t->data = f->base + t->file_offset;
        f->n++;
    }
    qsort(f->tensors, f->n, sizeof(*f->tensors), cmp_name);
    st = check_table(f, err, cap);
out:
    cJSON_Delete(root);
    free(text);
    return st;
}

void mb_safetensors_close(mb_safetensors *f)
{
    if (!f)
        return;
    if (f->mapped)
        munmap((void *)f->base, f->bytes);
    if (f->fd >= 0)
        close(f->fd);
    free(f->tensors);
    free(f->names);
    free(f->path);
    free(f);
}

static mb_safetensors *handle_new(const char *path)
{
    mb_safetensors *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->fd = -1;
    f->path = strdup(path ? path : "(memory)");
    if (!f->path) {
        free(f);
        return NULL;
    }
    return f;
}

mb_status mb_safetensors_parse(const void *buf, uint64_t bytes, const char *label,
                               mb_safetensors **out, char *err, size_t err_cap)
{
    if (!out || (!buf && bytes))
        return MB_STATUS_INVALID_ARG;
    mb_safetensors *f = handle_new(label);
    if (!f)
        return MB_STATUS_NOMEM;
    f->base = buf;
    f->bytes = bytes;
    mb_status st = parse_image(f, err, err_cap);
    if (st != MB_STATUS_OK) {
        mb_safetensors_close(f);
        return st;
    }
    *out = f;
    return MB_STATUS_OK;
}

mb_status mb_safetensors_open(const char *path, mb_safetensors **out, char *err, size_t err_cap)
{
    if (!path || !out)
        return MB_STATUS_INVALID_ARG;
    mb_safetensors *f = handle_new(path);
    if (!f)
        return MB_STATUS_NOMEM;
    mb_status st = MB_STATUS_IO;
    struct stat sb;
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) {
        set_err(err, err_cap, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    if (fstat(f->fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        set_err(err, err_cap, "%s: not a regular file", path);
        goto fail;
    }
    f->bytes = (uint64_t)sb.st_size;
    if (f->bytes < 8) { /* also avoids mmap of length 0 */
        st = parse_image(f, err, err_cap);
        goto fail;
    }
    /* Default advice on purpose: readahead only follows pages that are
     * touched, and the coordinator touches none of the expert tensors, so
     * they are never read; attention weights it does read benefit from it. */
    void *map = mmap(NULL, f->bytes, PROT_READ, MAP_PRIVATE, f->fd, 0);
    if (map == MAP_FAILED) {
        set_err(err, err_cap, "%s: mmap of %llu bytes failed: %s", path,
                (unsigned long long)f->bytes, strerror(errno));
        goto fail;
    }
    f->base = map;
    f->mapped = 1;
    st = parse_image(f, err, err_cap);
    if (st != MB_STATUS_OK)
        goto fail;
    *out = f;
    return MB_STATUS_OK;
fail:
    mb_safetensors_close(f);
    return st;
}

const mb_st_tensor *mb_safetensors_find(const mb_safetensors *f, const char *name)
{
    if (!f || !name)
        return NULL;
    mb_st_tensor key = {.name = name};
    return bsearch(&key, f->tensors, f->n, sizeof(*f->tensors), cmp_name);
}

uint32_t mb_safetensors_count(const mb_safetensors *f)
{
    return f ? f->n : 0;
}

const mb_st_tensor *mb_safetensors_at(const mb_safetensors *f, uint32_t i)
{
    return f && i < f->n ? &f->tensors[i] : NULL;
}

const char *mb_safetensors_path(const mb_safetensors *f)
{
    return f ? f->path : NULL;
}

const void *mb_safetensors_base(const mb_safetensors *f, uint64_t *bytes)
{
    if (bytes)
        *bytes = f ? f->bytes : 0;
    return f ? f->base : NULL;
}

int mb_safetensors_fd(const mb_safetensors *f)
{
    return f ? f->fd : -1;
}

mb_status mb_safetensors_expect(const mb_safetensors *f, const char *name, mb_st_dtype dtype,
                                uint32_t n_dims, const mb_st_tensor **out, char *err,
                                size_t err_cap)
{
    const mb_st_tensor *t = mb_safetensors_find(f, name);
    if (!t) {
        set_err(err, err_cap, "%s: tensor '%s' not found", f ? f->path : "?", name);
        return MB_STATUS_NOT_FOUND;
    }
    if (t->dtype != dtype) {
        set_err(err, err_cap, "%s: tensor '%s' is %s, expected %s", f->path, name,
                mb_st_dtype_name(t->dtype), mb_st_dtype_name(dtype));
        return MB_STATUS_BAD_DTYPE;
    }
    if (t->n_dims != n_dims) {
        set_err(err, err_cap, "%s: tensor '%s' has %u dimensions, expected %u", f->path, name,
                t->n_dims, n_dims);
        return MB_STATUS_BAD_SHAPE;
    }
    *out = t;
    return MB_STATUS_OK;
}

void mb_reference_fini(mb_reference *ref)
{
    if (!ref)
        return;
    free(ref->input_ids);
    free(ref->logits);
    memset(ref, 0, sizeof(*ref));
}

mb_status mb_reference_init(mb_reference *ref, const char *path, char *err, size_t err_cap)
{
    if (!ref || !path)
        return MB_STATUS_INVALID_ARG;
    memset(ref, 0, sizeof(*ref));
    mb_safetensors *f = NULL;
    const mb_st_tensor *ids, *plen, *logits;
    mb_status st = mb_safetensors_open(path, &f, err, err_cap);
    if (st != MB_STATUS_OK)
        return st;
    if ((st = mb_safetensors_expect(f, "input_ids", MB_ST_DTYPE_I32, 1, &ids, err, err_cap)) ||
        (st = mb_safetensors_expect(f, "prompt_len", MB_ST_DTYPE_I32, 1, &plen, err, err_cap)) ||
        (st = mb_safetensors_expect(f, "logits", MB_ST_DTYPE_F32, 2, &logits, err, err_cap)))
        goto out;
    const uint64_t n_tok = ids->shape[0], vocab = logits->shape[1];
    if (n_tok == 0 || n_tok > UINT32_MAX || vocab == 0 || vocab > INT32_MAX ||
        logits->shape[0] != n_tok || plen->shape[0] != 1) {
        set_err(err, err_cap, "%s: expected input_ids [T], prompt_len [1], logits [T][vocab] "
                "with T, vocab > 0; got [%llu], [%llu], [%llu][%llu]", path,
                (unsigned long long)n_tok, (unsigned long long)plen->shape[0],
                (unsigned long long)logits->shape[0], (unsigned long long)vocab);
        st = MB_STATUS_BAD_SHAPE;
        goto out;
    }
    int32_t prompt_len;
    memcpy(&prompt_len, plen->data, sizeof(prompt_len));
    if (prompt_len < 1 || (uint64_t)prompt_len > n_tok) {
        set_err(err, err_cap, "%s: prompt_len %d outside [1, %llu]", path, prompt_len,
                (unsigned long long)n_tok);
        st = MB_STATUS_FORMAT;
        goto out;
    }
    ref->input_ids = malloc(ids->bytes);
    ref->logits = malloc(logits->bytes);
    if (!ref->input_ids || !ref->logits) {
        st = MB_STATUS_NOMEM;
        goto out;
    }
    memcpy(ref->input_ids, ids->data, ids->bytes);
    memcpy(ref->logits, logits->data, logits->bytes);
    for (uint64_t i = 0; i < n_tok; i++)
        if (ref->input_ids[i] < 0 || (uint64_t)ref->input_ids[i] >= vocab) {
            set_err(err, err_cap, "%s: input_ids[%llu] = %d outside [0, %llu)", path,
                    (unsigned long long)i, ref->input_ids[i], (unsigned long long)vocab);
            st = MB_STATUS_FORMAT;
            goto out;
        }
    ref->n_tokens = (uint32_t)n_tok;
    ref->prompt_len = (uint32_t)prompt_len;
    ref->vocab = (uint32_t)vocab;
out:
    if (st != MB_STATUS_OK)
        mb_reference_fini(ref);
    mb_safetensors_close(f);
    return st;
}
