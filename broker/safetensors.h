/* A read-only safetensors reader: maps a file, validates its header against
 * the file (every offset, shape and size checked with overflow-checked
 * arithmetic, no overlapping regions) and looks tensors up by name. It never
 * reads tensor data, so mapping a checkpoint costs no page faults beyond the
 * header. Also the reader for transformers reference files (token ids and
 * logits) used by the parity tests and the CLI. */
#ifndef MB_BROKER_SAFETENSORS_H
#define MB_BROKER_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "protocol/dtype.h"
#include "protocol/status.h"

/* Element types this reader accepts; a header naming any other is rejected
 * with MB_STATUS_BAD_DTYPE. */
typedef enum {
    MB_ST_DTYPE_F32 = 0,
    MB_ST_DTYPE_F16 = 1,
    MB_ST_DTYPE_BF16 = 2,
    MB_ST_DTYPE_I32 = 3,
    MB_ST_DTYPE_I64 = 4,
    MB_ST_DTYPE_COUNT_
} mb_st_dtype;

#define MB_ST_MAX_DIMS 8
/* Headers larger than this are refused before any allocation. */
#define MB_ST_MAX_HEADER_BYTES (100u * 1024u * 1024u)

/* One tensor of a parsed file. All fields are validated: n_elems is the
 * product of shape, bytes = n_elems * element size, and
 * [file_offset, file_offset + bytes) lies inside the file's data area. */
typedef struct {
    const char *name;     /* NUL-terminated, owned by the mb_safetensors */
    mb_st_dtype dtype;
    uint32_t n_dims;      /* 0 for a scalar */
    uint64_t shape[MB_ST_MAX_DIMS];
    uint64_t n_elems;
    uint64_t bytes;
    uint64_t file_offset; /* absolute: 8 + header bytes + data_offsets[0] */
    const void *data;     /* base + file_offset; may be unaligned for its dtype */
} mb_st_tensor;

typedef struct mb_safetensors mb_safetensors;

/* Bytes per element of a safetensors dtype; 0 for an invalid value. */
size_t mb_st_dtype_size(int dtype);
/* The header spelling ("F32", "BF16", ...); "?" for an invalid value. */
const char *mb_st_dtype_name(int dtype);
/* Maps F32/F16/BF16 onto the weight dtypes; MB_STATUS_BAD_DTYPE otherwise. */
mb_status mb_st_dtype_to_weight(mb_st_dtype st, mb_dtype *out);

/* Opens and maps path read-only (MAP_PRIVATE, default readahead: only pages
 * that are touched are ever read) and validates the header. On success *out
 * owns the descriptor and the mapping; close with mb_safetensors_close.
 * Errors (message in err, naming path): IO (open/stat/mmap failed, not a
 * regular file), FORMAT (short file, bad header length, malformed JSON, bad
 * entry, offsets outside the data area, size mismatch, overlap, duplicate
 * name), OVERFLOW (shape product or byte size overflows), BAD_DTYPE, NOMEM.
 * Blocks on file I/O for the header only. The file must not shrink while
 * mapped (that would raise SIGBUS on access, as for any mapping). */
mb_status mb_safetensors_open(const char *path, mb_safetensors **out, char *err, size_t err_cap);

/* Parses and validates a safetensors image already in memory (for fuzzing
 * and tests). buf is borrowed and must outlive the handle; label names the
 * image in messages. Errors as mb_safetensors_open, less IO. */
mb_status mb_safetensors_parse(const void *buf, uint64_t bytes, const char *label,
                               mb_safetensors **out, char *err, size_t err_cap);

/* Unmaps, closes and frees. NULL is a no-op. Tensor pointers die with it. */
void mb_safetensors_close(mb_safetensors *f);

/* Finds a tensor by exact name (binary search); NULL when absent. */
const mb_st_tensor *mb_safetensors_find(const mb_safetensors *f, const char *name);

/* Number of tensors (the __metadata__ entry is not one) and the i-th in
 * name order, for enumerating a file; NULL when i is out of range. */
uint32_t mb_safetensors_count(const mb_safetensors *f);
const mb_st_tensor *mb_safetensors_at(const mb_safetensors *f, uint32_t i);

/* The path given to open (the label for parsed images), the whole mapping
 * and its size, and the open descriptor (-1 for parsed images). */
const char *mb_safetensors_path(const mb_safetensors *f);
const void *mb_safetensors_base(const mb_safetensors *f, uint64_t *bytes);
int mb_safetensors_fd(const mb_safetensors *f);

/* Finds name and checks its dtype and rank (n_dims); on success *out points
 * at the tensor. Errors: NOT_FOUND, BAD_DTYPE, BAD_SHAPE, each naming the
 * file and the tensor. */
mb_status mb_safetensors_expect(const mb_safetensors *f, const char *name, mb_st_dtype dtype,
                                uint32_t n_dims, const mb_st_tensor **out, char *err,
                                size_t err_cap);

/* A transformers reference run: input_ids int32 [T], prompt_len int32 [1],
 * logits f32 [T][vocab]. The arrays are copies (aligned, caller-owned
 * through mb_reference_fini), so the file is closed once read. */
typedef struct {
    int32_t *input_ids; /* [n_tokens], each in [0, vocab) */
    float *logits;      /* [n_tokens][vocab] */
    uint32_t n_tokens;
    uint32_t prompt_len; /* 1 <= prompt_len <= n_tokens */
    uint32_t vocab;
} mb_reference;

/* Reads a reference file into *ref (caller-owned struct, zeroed on failure).
 * Errors: those of mb_safetensors_open, NOT_FOUND/BAD_DTYPE/BAD_SHAPE for a
 * missing or mis-shaped tensor, FORMAT for ids or prompt_len out of range,
 * NOMEM. Blocks reading the file. */
mb_status mb_reference_init(mb_reference *ref, const char *path, char *err, size_t err_cap);

/* Frees the arrays and zeroes *ref. Safe on a zeroed or failed struct. */
void mb_reference_fini(mb_reference *ref);

#endif
