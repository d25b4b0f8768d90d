/* Hotness: how many (token, expert) pairs the router sent to each expert of
 * each layer, as an earlier run measured it. A run with --stats-json writes
 * its counts as the report's "routing" member; --hotness reads them back so
 * that --replicas serves the hottest workers' experts first when memory
 * cannot hold a copy of everything. The file comes from the user: every
 * field is checked, and a file for another model's shape is refused. */
#ifndef MB_BROKER_HOTNESS_H
#define MB_BROKER_HOTNESS_H

#include <stddef.h>
#include <stdint.h>

#include "protocol/status.h"

/* Largest hotness file read (a stats report with per-layer tables fits). */
#define MB_HOTNESS_MAX_FILE_BYTES (64u << 20)

typedef struct {
    uint32_t n_layers;
    uint32_t n_experts;
    uint64_t *counts; /* [n_layers][n_experts] routed pairs, owned */
    uint64_t total;   /* sum of counts (saturating) */
} mb_hotness;

/* Parses text (len bytes, no terminator needed): a JSON object whose
 * "routing" member is {"n_layers": L, "n_experts": E, "counts": [[c, ...
 * E of them], ... L rows]} with every c an integer 0..2^53, and L and E
 * equal to n_layers and n_experts. what names the source in messages.
 * Writes *out only on success (free with mb_hotness_free). CONFIG with one
 * line in err naming what is wrong (bad JSON, a missing or mistyped member,
 * another model's shape, a row of the wrong length, a bad count); NOMEM. */
mb_status mb_hotness_parse(const char *text, size_t len, const char *what, uint32_t n_layers,
                           uint32_t n_experts, mb_hotness *out, char *err, size_t err_cap);

/* Reads path (a regular file of at most MB_HOTNESS_MAX_FILE_BYTES) and
 * parses it as mb_hotness_parse. IO when it cannot be read, CONFIG, NOMEM;
 * err names the path. Blocking. */
mb_status mb_hotness_load(const char *path, uint32_t n_layers, uint32_t n_experts, mb_hotness *out,
                          char *err, size_t err_cap);

/* Frees the counts and zeroes *h. NULL or zeroed: no-op. */
void mb_hotness_free(mb_hotness *h);

#endif
