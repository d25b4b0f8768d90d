/* Private to the options module (options.c, options_values.c): the text-to-
 * value parsers every knob shares. Nothing outside broker/options*.c calls
 * these. */
#ifndef MB_BROKER_OPTIONS_INTERNAL_H
#define MB_BROKER_OPTIONS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "protocol/status.h"

/* Most token ids --input-ids accepts, and the largest file it reads. */
#define MB_OPTIONS_MAX_INPUT_IDS (1u << 24)
#define MB_OPTIONS_MAX_IDS_FILE_BYTES (256u << 20)

/* Writes one formatted line into err when err_cap > 0; never overflows. */
void mb_options_errf(char *err, size_t err_cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Plain decimal (digits only: no sign, space, or base prefix) within
 * [min, max]. Returns 0 and writes *out on success, -1 otherwise. */
int mb_options_text_to_u64(const char *text, uint64_t min, uint64_t max, uint64_t *out);

/* Decimal bytes with an optional K, M, G or T suffix (powers of 1024, any
 * case, optionally followed by "iB" or "B"). Returns 0 or -1. */
int mb_options_text_to_bytes(const char *text, uint64_t *out);

/* A finite decimal number (strtod syntax, no hex, inf or nan) within
 * [min, max]. Returns 0 or -1. */
int mb_options_text_to_f64(const char *text, double min, double max, double *out);

/* 1/0, true/false, yes/no, on/off in any case. Returns 0 or -1. */
int mb_options_text_to_bool(const char *text, int *out);

/* --input-ids: the name of an existing file holds the list; any other text
 * is the list itself. A list is ids 0..INT32_MAX separated by one comma
 * and/or whitespace ("1,2,3", "1 2\n3"); an empty entry ("1,,3", a leading
 * or trailing comma), a sign or any other character is an error that names
 * the byte. what names the source ("--input-ids" or a variable) for
 * messages. On success *ids is a malloc'd array the caller frees. Errors:
 * MB_STATUS_CONFIG (malformed, empty, an id above INT32_MAX, too many ids, a
 * file larger than MB_OPTIONS_MAX_IDS_FILE_BYTES), MB_STATUS_IO (file
 * unreadable), MB_STATUS_NOMEM. */
mb_status mb_options_ids_parse(const char *text, const char *what, int32_t **ids, size_t *n_ids,
                               char *err, size_t err_cap);

#endif
