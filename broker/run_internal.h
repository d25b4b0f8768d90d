/* Private to the commands that run a model (run.c, run_text.c, serve/): the
 * checks and setup they share. Each prints its own one-line error to
 * stderr. */
#ifndef MB_BROKER_RUN_INTERNAL_H
#define MB_BROKER_RUN_INTERNAL_H

#include <signal.h>
#include <stdint.h>

#include "broker/model.h"
#include "broker/options.h"
#include "broker/sampler.h"

/* 0 when every output path (--logits-out, --stats-json, --step-timing) can
 * be written, else -1 after naming the first that cannot. Creates nothing. */
int mb_run_check_outputs(const mb_options *opt);

/* 0 when positions fit the context limit (--max-ctx, else the model's
 * max_position_embeddings), else -1; what names the demand in the message. */
int mb_run_context_limit(const mb_options *opt, const mb_model_config *c, uint64_t positions,
                         const char *what);

/* Positions of the KV cache for text without --gen: --max-ctx, else the
 * model's max_position_embeddings up to MB_RUN_TEXT_DEFAULT_CTX. */
#define MB_RUN_TEXT_DEFAULT_CTX 4096u
uint32_t mb_run_text_context(const mb_options *opt, const mb_model_config *c);

/* 1 when the statistics table is to be printed: --stats / MB_STATS when
 * given, else on for the embedded model unless --quiet. */
int mb_run_stats_wanted(const mb_options *opt);

/* Loads --model, or builds the embedded model. 0 or -1. */
int mb_run_load_model(const mb_options *opt, int progress, mb_model **out);

/* The sampler settings of opt. Cannot fail. */
void mb_run_sampler_params(const mb_options *opt, mb_sampler_params *p);

/* SIGINT / SIGTERM: the signal that asked the run to stop, 0 until one
 * does. mb_run_catch_signals installs the handler that sets it; runs check it
 * between steps and hand it to the dispatcher as its cancel flag, then stop
 * the workers (their segments and socket files go with them), write the
 * statistics asked for and exit 128 + the signal. */
extern volatile sig_atomic_t mb_run_signal;
void mb_run_catch_signals(void);

/* "moe-broker: interrupted (SIGINT): stopping the workers" on stderr. */
void mb_run_say_interrupted(void);

/* --prompt, --chat and the chat command (run_text.c). Returns the exit code. */
int mb_run_text(const mb_options *opt, const mb_model *model, int progress);

#endif
