/* The run command: inputs, the prefill / teacher-forced decode / greedy
 * generation loop, logits output and reports. */
#include "broker/run.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker/session.h"
#include "broker/synthetic.h"

mb_status mb_write_f32_safetensors(const char *path, const char *name, const float *data, uint64_t rows,
                                   uint64_t cols)
{
    uint64_t bytes = rows * cols * sizeof(float);
    char header[512];
    int n = snprintf(header, sizeof header,
                     "{\"%s\":{\"dtype\":\"F32\",\"shape\":[%llu,%llu],\"data_offsets\":[0,%llu]}}", name,
                     (unsigned long long)rows, (unsigned long long)cols, (unsigned long long)bytes);
    if (n < 0 || (size_t)n >= sizeof header - 8) return MB_STATUS_INVALID_ARG;
    while (n % 8) header[n++] = ' '; /* the data area starts 8-aligned */
    FILE *f = fopen(path, "wb");
    if (!f) return MB_STATUS_IO;
    uint64_t hlen = (uint64_t)n;
    int ok = fwrite(&hlen, 8, 1, f) == 1 && fwrite(header, 1, (size_t)n, f) == (size_t)n &&
             (bytes == 0 || fwrite(data, 1, bytes, f) == bytes);
    ok = (fclose(f) == 0) && ok;
    return ok ? MB_STATUS_OK : MB_STATUS_IO;
}

static uint32_t mb_argmax(const float *v, uint32_t n)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

static uint64_t mb_rand_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* SIGINT / SIGTERM: the run stops after the current step, stops its workers
 * (their segments and socket files go with them), writes the statistics it
 * was asked for and exits 128 + the signal. */
static volatile sig_atomic_t mb_run_signal;

static void mb_run_on_signal(int sig)
{
    mb_run_signal = sig;
}

static void mb_run_catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = mb_run_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

int mb_run(const mb_options *opt)
{
    char err[512] = "";
    int progress = !opt->quiet && isatty(STDERR_FILENO);
    int embedded = opt->model_dir == NULL;
    mb_model *model = NULL;
    mb_status st;
    if (embedded) {
        mb_model_config cfg;
        mb_synthetic_default_config(&cfg);
        if (!opt->quiet) fprintf(stderr, "moe-broker: no --model given: running the embedded default (synthetic Qwen3-MoE, "
                                         "%u layers, d_model %u, %u experts top-%u, d_ff %u)\n",
                                 cfg.n_layers, cfg.d_model, cfg.n_experts, cfg.top_k, cfg.d_ff_expert);
        st = mb_synthetic_create(&cfg, opt->seed, progress, &model, err, sizeof err);
    } else {
        if (progress) fprintf(stderr, "loading %s\n", opt->model_dir);
        st = mb_model_load(opt->model_dir, &model, err, sizeof err);
    }
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker: %s\n", err[0] ? err : mb_status_str(st));
        return 1;
    }
    const mb_model_config *c = &model->cfg;

    /* Inputs: given ids, or a random prompt. */
    uint32_t n_in = 0, prefill = 0, gen = opt->gen;
    int32_t *ids = NULL;
    if (opt->input_ids) {
        n_in = (uint32_t)opt->n_input_ids;
        prefill = mb_options_given(opt, MB_OPTION_PREFILL) ? opt->prefill : n_in;
    } else {
        n_in = opt->prompt_len ? opt->prompt_len : (embedded ? 64 : 16);
        prefill = n_in;
        if (embedded && !mb_options_given(opt, MB_OPTION_GEN)) gen = 16;
    }
    if (prefill > n_in || n_in == 0) {
        fprintf(stderr, "moe-broker: --prefill %u exceeds the %u input ids\n", prefill, n_in);
        goto fail_model;
    }
    uint64_t total64 = (uint64_t)n_in + gen;
    uint32_t max_ctx = opt->max_ctx ? opt->max_ctx : (uint32_t)(total64 > 0 ? total64 : 1);
    if (total64 > max_ctx || (c->max_positions && total64 > c->max_positions && !opt->max_ctx)) {
        if (total64 > max_ctx) {
            fprintf(stderr, "moe-broker: %llu positions exceed the context limit %u\n", (unsigned long long)total64,
                    max_ctx);
            goto fail_model;
        }
    }
    ids = calloc(total64 ? total64 : 1, sizeof *ids);
    if (!ids) goto fail_model;
    if (opt->input_ids) {
        for (uint32_t i = 0; i < n_in; i++) {
            if (opt->input_ids[i] < 0 || (uint32_t)opt->input_ids[i] >= c->vocab) {
                fprintf(stderr, "moe-broker: input id %d at position %u is outside the vocabulary (0..%u)\n",
                        opt->input_ids[i], i, c->vocab - 1);
                goto fail_ids;
            }
            ids[i] = opt->input_ids[i];
        }
    } else {
        uint64_t s = opt->seed;
        for (uint32_t i = 0; i < n_in; i++) ids[i] = (int32_t)(mb_rand_next(&s) % c->vocab);
    }

    mb_session *sess = NULL;
    mb_run_catch_signals();
    st = mb_session_open(opt, model, max_ctx,
                         opt->quiet ? MB_SESSION_QUIET : progress ? MB_SESSION_PROGRESS : MB_SESSION_INFO, &sess, err,
                         sizeof err);
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker: %s\n", err[0] ? err : mb_status_str(st));
        if (mb_run_signal) {
            free(ids);
            mb_model_destroy(model);
            return 128 + mb_run_signal;
        }
        goto fail_ids;
    }
    mb_dispatch_set_cancel(sess->dispatch, &mb_run_signal);
    float *logits = NULL, *last = malloc((size_t)c->vocab * sizeof *last);
    if (opt->logits_out) logits = malloc((size_t)total64 * c->vocab * sizeof *logits);
    if (!last || (opt->logits_out && !logits)) {
        fprintf(stderr, "moe-broker: out of memory for logits\n");
        goto fail_session;
    }
    uint64_t t0 = mb_now_ns();
    /* Prefill in chunks so progress shows on long prompts. */
    uint32_t chunk = opt->chunk ? opt->chunk : 512;
    for (uint32_t pos = 0; pos < prefill;) {
        uint32_t n = prefill - pos < chunk ? prefill - pos : chunk;
        if (mb_run_signal) goto interrupted;
        st = mb_session_step(sess, ids + pos, n, logits ? logits + (size_t)pos * c->vocab : NULL, last, err,
                             sizeof err);
        if (st != MB_STATUS_OK) goto fail_step;
        pos += n;
        if (progress && prefill > chunk) {
            fprintf(stderr, "\rprefill: %u/%u tokens", pos, prefill);
            fflush(stderr);
        }
    }
    if (progress && prefill > chunk) fprintf(stderr, "\n");
    uint64_t t1 = mb_now_ns();
    /* Teacher-forced decode of the remaining input ids. */
    for (uint32_t pos = prefill; pos < n_in; pos++) {
        if (mb_run_signal) goto interrupted;
        st = mb_session_step(sess, ids + pos, 1, logits ? logits + (size_t)pos * c->vocab : NULL, last, err,
                             sizeof err);
        if (st != MB_STATUS_OK) goto fail_step;
    }
    /* Greedy generation. */
    for (uint32_t g = 0; g < gen; g++) {
        uint32_t pos = n_in + g;
        if (mb_run_signal) goto interrupted;
        ids[pos] = (int32_t)mb_argmax(last, c->vocab);
        st = mb_session_step(sess, ids + pos, 1, logits ? logits + (size_t)pos * c->vocab : NULL, last, err,
                             sizeof err);
        if (st != MB_STATUS_OK) goto fail_step;
    }
    uint64_t t2 = mb_now_ns();
    if (!opt->quiet) {
        if (gen) {
            printf("generated:");
            for (uint32_t g = 0; g < gen; g++) printf(" %d", ids[n_in + g]);
            printf("\n");
        }
        uint32_t n_dec = (n_in - prefill) + gen;
        printf("prefill: %u tokens in %.3f s (%.1f tok/s); decode: %u steps in %.3f s (%.2f tok/s)\n", prefill,
               (double)(t1 - t0) / 1e9, prefill ? prefill / ((double)(t1 - t0) / 1e9) : 0.0, n_dec,
               (double)(t2 - t1) / 1e9, n_dec ? n_dec / ((double)(t2 - t1) / 1e9) : 0.0);
    }
    if (opt->logits_out) {
        st = mb_write_f32_safetensors(opt->logits_out, "logits", logits, total64, c->vocab);
        if (st != MB_STATUS_OK) {
            fprintf(stderr, "moe-broker: cannot write %s: %s\n", opt->logits_out, mb_status_str(st));
            goto fail_session;
        }
    }
    if (opt->stats || (embedded && !mb_options_given(opt, MB_OPTION_STATS))) mb_stats_print_table(sess->stats, stdout);
    if (opt->stats_json && mb_stats_write_json(sess->stats, opt->stats_json) != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker: cannot write %s\n", opt->stats_json);
        goto fail_session;
    }
    mb_stats_close_step_timing(sess->stats);
    free(logits);
    free(last);
    mb_session_close(sess);
    free(ids);
    mb_model_destroy(model);
    return 0;

interrupted:
    fprintf(stderr, "moe-broker: %s: stopping the workers\n", mb_run_signal == SIGINT ? "interrupted (SIGINT)"
                                                                                     : "terminated (SIGTERM)");
    if (opt->stats) mb_stats_print_table(sess->stats, stdout);
    if (opt->stats_json && mb_stats_write_json(sess->stats, opt->stats_json) != MB_STATUS_OK)
        fprintf(stderr, "moe-broker: cannot write %s\n", opt->stats_json);
    mb_stats_close_step_timing(sess->stats);
    free(logits);
    free(last);
    mb_session_close(sess);
    free(ids);
    mb_model_destroy(model);
    return 128 + mb_run_signal;

fail_step:
    if (mb_run_signal) goto interrupted;
    fprintf(stderr, "moe-broker: %s\n", err[0] ? err : mb_status_str(st));
fail_session:
    free(logits);
    free(last);
    mb_session_close(sess);
fail_ids:
    free(ids);
fail_model:
    mb_model_destroy(model);
    return 1;
}
