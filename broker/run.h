/* `moe-broker run`: load a checkpoint (or generate the embedded default),
 * start the backends, prefill, decode teacher-forced input and generate
 * greedily, then report. */
#ifndef MB_BROKER_RUN_H
#define MB_BROKER_RUN_H

#include "broker/options.h"

/* Runs opt end to end; returns the process exit code (0 ok, 1 failure) and
 * prints errors to stderr. */
int mb_run(const mb_options *opt);

/* Writes a safetensors file holding one f32 tensor `name` [rows][cols]. */
mb_status mb_write_f32_safetensors(const char *path, const char *name, const float *data, uint64_t rows,
                                   uint64_t cols);

#endif
