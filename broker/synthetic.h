/* Synthetic MoE models generated in memory from a seed: the embedded default
 * that `moe-broker run` uses without --model, and the large shapes the
 * benchmarks need. The weights live in a memfd that local workers map by
 * path (/proc/<pid>/fd/<n>), exactly as they map a checkpoint's files. */
#ifndef MB_BROKER_SYNTHETIC_H
#define MB_BROKER_SYNTHETIC_H

#include <stdint.h>

#include "broker/model.h"

/* The embedded default: Qwen3-MoE architecture, 4 layers, d_model 1024,
 * 16 heads (4 KV heads, head_dim 64), 32 experts top-4 of d_ff 512, vocab
 * 8192, bf16 weights (~440 MiB of experts). */
void mb_synthetic_default_config(mb_model_config *cfg);

/* Qwen3-30B-A3B shapes (d_model 2048, 32 heads / 4 KV heads of 128, 128
 * experts top-8 of d_ff 768, vocab 151936 cut to 32768) with n_layers
 * layers. */
void mb_synthetic_qwen3_30b_config(mb_model_config *cfg, uint32_t n_layers);

/* Generates a model for cfg (arch must be Qwen3-MoE or Mixtral) from seed.
 * Blocking; shows progress on a terminal when progress is non-zero. Free
 * the result with mb_model_destroy (its memfd is an ordinary model file). */
mb_status mb_synthetic_create(const mb_model_config *cfg, uint64_t seed, int progress, mb_model **out, char *err,
                              size_t err_cap);

#endif
