/* A read-only GGUF reader (versions 2 and 3): maps a file, validates its
 * header against the file (every count, string length, tensor shape, type,
 * offset and size checked with overflow-checked arithmetic; offsets aligned;
 * no overlapping tensors) and looks metadata and tensors up by name. It
 * never reads tensor data, so mapping a checkpoint costs no page faults
 * beyond the header. */
#ifndef MB_BROKER_GGUF_H
#define MB_BROKER_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "protocol/dtype.h"
#include "protocol/status.h"

/* Metadata value types as GGUF numbers them. */
typedef enum {
    MB_GGUF_U8 = 0,
    MB_GGUF_I8 = 1,
    MB_GGUF_U16 = 2,
    MB_GGUF_I16 = 3,
    MB_GGUF_U32 = 4,
    MB_GGUF_I32 = 5,
    MB_GGUF_F32 = 6,
    MB_GGUF_BOOL = 7,
    MB_GGUF_STRING = 8,
    MB_GGUF_ARRAY = 9,
    MB_GGUF_U64 = 10,
    MB_GGUF_I64 = 11,
    MB_GGUF_F64 = 12,
    MB_GGUF_TYPE_COUNT_
} mb_gguf_type;

#define MB_GGUF_MAX_DIMS 4
/* Longest key or tensor name accepted (ggml's own limit is 64 for names). */
#define MB_GGUF_MAX_NAME 256u
/* Longest single string value (tokenizer vocabularies are arrays of short
 * strings; chat templates are a few kB). */
#define MB_GGUF_MAX_STRING (16u << 20)

/* One metadata entry. Scalars are decoded; strings and arrays point into
 * the mapping (validated to lie inside it). */
typedef struct {
    const char *key;       /* NUL-terminated copy */
    mb_gguf_type type;
    union {
        uint64_t u;        /* unsigned integers and bool */
        int64_t i;         /* signed integers */
        double f;          /* F32 and F64 */
    } v;
    const char *str;       /* STRING: bytes (not NUL-terminated) */
    uint64_t str_len;
    mb_gguf_type elem_type; /* ARRAY: element type (never ARRAY) */
    uint64_t n_elems;       /* ARRAY: count */
    const uint8_t *elems;   /* ARRAY: first element's encoding */
    uint64_t elems_bytes;   /* ARRAY: bytes of all elements */
} mb_gguf_kv;

/* One tensor. ne is ggml's order (ne[0] is the row length, contiguous);
 * bytes = ne[0] / block elems * block bytes * ne[1] * ne[2] * ne[3], and
 * [file_offset, file_offset + bytes) lies inside the file. */
typedef struct {
    const char *name;      /* NUL-terminated copy */
    uint32_t n_dims;       /* 1..4 */
    uint64_t ne[MB_GGUF_MAX_DIMS]; /* 1 past n_dims */
    uint32_t ggml_type;    /* GGUF's type number */
    int dtype;             /* the mb_dtype it maps to, -1 when unsupported */
    uint64_t file_offset;  /* absolute */
    uint64_t bytes;
    const void *data;      /* base + file_offset, aligned to the file's alignment */
} mb_gguf_tensor;

typedef struct mb_gguf mb_gguf;

/* The ggml type's name ("Q4_K", "IQ2_XS", ...); "?" when unknown. */
const char *mb_gguf_type_name(uint32_t ggml_type);

/* Opens and maps path read-only (MAP_PRIVATE, only touched pages are read)
 * and validates the header. On success *out owns the descriptor and the
 * mapping; close with mb_gguf_close. Errors (message in err naming path and
 * the field): IO (open/stat/mmap, not a regular file), FORMAT (bad magic,
 * truncated header, a count or length past the end, a bad value type,
 * misaligned or overlapping tensors, data outside the file, duplicate
 * names), UNSUPPORTED (version other than 2 or 3), BAD_DTYPE (a tensor type
 * ggml does not define), BAD_SHAPE (a dimension of 0, a row not a whole
 * number of blocks), OVERFLOW, NOMEM. Blocks on reading the header pages. */
mb_status mb_gguf_open(const char *path, mb_gguf **out, char *err, size_t err_cap);

/* Parses an image already in memory (fuzzing, tests). buf is borrowed and
 * must outlive the handle; label names it in messages. Errors as open,
 * less IO. */
mb_status mb_gguf_parse(const void *buf, uint64_t bytes, const char *label, mb_gguf **out,
                        char *err, size_t err_cap);

/* Unmaps, closes and frees. NULL is a no-op. */
void mb_gguf_close(mb_gguf *g);

uint32_t mb_gguf_version(const mb_gguf *g);
uint64_t mb_gguf_alignment(const mb_gguf *g);
const char *mb_gguf_path(const mb_gguf *g);
const void *mb_gguf_base(const mb_gguf *g, uint64_t *bytes);
int mb_gguf_fd(const mb_gguf *g); /* -1 for parsed images */

uint64_t mb_gguf_kv_count(const mb_gguf *g);
const mb_gguf_kv *mb_gguf_kv_at(const mb_gguf *g, uint64_t i);
/* Exact key; NULL when absent. */
const mb_gguf_kv *mb_gguf_kv_find(const mb_gguf *g, const char *key);

/* Typed getters. Integers of any GGUF integer type are accepted when the
 * value fits; floats from F32 or F64. Errors: NOT_FOUND (absent key; *out
 * untouched, so callers may preset a default), CONFIG (wrong type or out of
 * range), each naming the key in err. */
mb_status mb_gguf_get_u32(const mb_gguf *g, const char *key, uint32_t *out, char *err,
                          size_t err_cap);
mb_status mb_gguf_get_f32(const mb_gguf *g, const char *key, float *out, char *err, size_t err_cap);
/* *out is a NUL-terminated copy the caller frees. */
mb_status mb_gguf_get_str(const mb_gguf *g, const char *key, char **out, char *err,
                          size_t err_cap);

uint64_t mb_gguf_tensor_count(const mb_gguf *g);
const mb_gguf_tensor *mb_gguf_tensor_at(const mb_gguf *g, uint64_t i);
/* Exact name (binary search); NULL when absent. */
const mb_gguf_tensor *mb_gguf_tensor_find(const mb_gguf *g, const char *name);

#endif
