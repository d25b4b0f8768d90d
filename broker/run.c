/* The run command: checks, model loading, and the token-id form (given or
 * random ids: prefill, teacher-forced decode, sampled generation, logits
 * output and reports). Text prompts and chat live in run_text.c. */
#include "broker/run.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <errno.h>
#include <sys/stat.h>

#include "broker/run_internal.h"
#include "broker/sampler.h"
#include "broker/serve/serve.h"
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
volatile sig_atomic_t mb_run_signal;

static void mb_run_on_signal(int sig)
{
    /* Atomic: the handler may run on any thread (serve's HTTP and
     * generation threads too) while another reads the flag. A lock-free
     * int store is async-signal-safe. */
    __atomic_store_n(&mb_run_signal, sig, __ATOMIC_RELAXED);
}

void mb_run_say_interrupted(void)
{
    fprintf(stderr, "moe-broker: %s: stopping the workers\n",
            mb_run_signal == SIGINT ? "interrupted (SIGINT)" : "terminated (SIGTERM)");
}

/* No SA_RESTART: a blocking read (the chat's stdin) returns EINTR and the
 * loop around it sees the flag. */
void mb_run_catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = mb_run_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* An output file must be creatable before hours of work go into it: its
 * folder exists and is writable, and the file itself, when present, is a
 * writable regular file. Nothing is created here. */
static int check_output_path(const char *path, const char *flag)
{
    if (!path) return 0;
    if (strcmp(path, "-") == 0 && strcmp(flag, "--stats-json") == 0) return 0; /* stdout */
    struct stat sb;
    if (stat(path, &sb) == 0) {
        if (S_ISDIR(sb.st_mode)) {
            fprintf(stderr, "moe-broker: %s '%s' is a directory\n", flag, path);
            return -1;
        }
        if (access(path, W_OK) != 0) {
            fprintf(stderr, "moe-broker: cannot write %s '%s': %s\n", flag, path, strerror(errno));
            return -1;
        }
        return 0;
    }
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        fprintf(stderr, "moe-broker: cannot write %s '%s': no directory '%s'\n", flag, path, dir);
        return -1;
    }
    if (access(dir, W_OK) != 0) {
        fprintf(stderr, "moe-broker: cannot write %s '%s': directory '%s': %s\n", flag, path, dir,
                strerror(errno));
        return -1;
    }
    return 0;
}

int mb_run_check_outputs(const mb_options *opt)
{
    return check_output_path(opt->logits_out, "--logits-out") ||
                   check_output_path(opt->stats_json, "--stats-json") ||
                   check_output_path(opt->step_timing, "--step-timing")
               ? -1
               : 0;
}

int mb_run_context_limit(const mb_options *opt, const mb_model_config *c, uint64_t positions,
                         const char *what)
{
    uint32_t limit = opt->max_ctx ? opt->max_ctx : c->max_positions;
    if (limit && positions > limit) {
        if (opt->max_ctx)
            fprintf(stderr, "moe-broker: %s needs %llu positions, more than --max-ctx %u\n", what,
                    (unsigned long long)positions, limit);
        else
            fprintf(stderr,
                    "moe-broker: %s needs %llu positions, more than the model's context "
                    "(max_position_embeddings %u); --max-ctx N overrides it\n",
                    what, (unsigned long long)positions, limit);
        return -1;
    }
    return 0;
}

uint32_t mb_run_text_context(const mb_options *opt, const mb_model_config *c)
{
    uint32_t limit = opt->max_ctx ? opt->max_ctx : c->max_positions;
    return opt->max_ctx || (limit && limit < MB_RUN_TEXT_DEFAULT_CTX) ? limit : MB_RUN_TEXT_DEFAULT_CTX;
}

int mb_run_stats_wanted(const mb_options *opt)
{
    if (mb_options_given(opt, MB_OPTION_STATS)) return opt->stats;
    return opt->model_dir == NULL && !opt->quiet;
}

int mb_run_load_model(const mb_options *opt, int progress, mb_model **out)
{
    char err[512] = "";
    mb_status st;
    if (opt->model_dir == NULL) {
        mb_model_config cfg;
        mb_synthetic_default_config(&cfg);
        if (!opt->quiet)
            fprintf(stderr,
                    "moe-broker: no --model given: running the embedded default (synthetic "
                    "Qwen3-MoE, %u layers, d_model %u, %u experts top-%u, d_ff %u)\n",
                    cfg.n_layers, cfg.d_model, cfg.n_experts, cfg.top_k, cfg.d_ff_expert);
        st = mb_synthetic_create(&cfg, opt->seed, progress, out, err, sizeof err);
    } else {
        if (progress) fprintf(stderr, "loading %s\n", opt->model_dir);
        st = mb_model_load(opt->model_dir, out, err, sizeof err);
    }
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker: %s\n", err[0] ? err : mb_status_str(st));
        return -1;
    }
    return 0;
}

void mb_run_sampler_params(const mb_options *opt, mb_sampler_params *p)
{
    *p = (mb_sampler_params){.temperature = opt->temperature, .top_k = opt->top_k,
                             .top_p = opt->top_p, .min_p = opt->min_p,
                             .repeat_penalty = opt->repeat_penalty,
                             .repeat_last_n = opt->repeat_last_n, .seed = opt->seed};
}

/* The token-id form: --input-ids, or a random prompt of --prompt-len ids. */
static int run_ids(const mb_options *opt, mb_model *model, int progress)
{
    char err[512] = "";
    mb_status st;
    int embedded = opt->model_dir == NULL;
    const mb_model_config *c = &model->cfg;
    uint32_t n_in = 0, prefill = 0, gen = opt->gen;
    int32_t *ids = NULL;
    mb_sampler *sampler = NULL;
    if (opt->input_ids) {
        n_in = (uint32_t)opt->n_input_ids;
        prefill = mb_options_given(opt, MB_OPTION_PREFILL) ? opt->prefill : n_in;
    } else {
        n_in = mb_options_given(opt, MB_OPTION_PROMPT_LEN) ? opt->prompt_len : embedded ? 64 : 16;
        prefill = n_in;
        if (embedded && !mb_options_given(opt, MB_OPTION_GEN)) gen = 16;
    }
    if (prefill > n_in) {
        fprintf(stderr, "moe-broker: --prefill %u exceeds the %u input ids\n", prefill, n_in);
        return 1;
    }
    uint64_t total64 = (uint64_t)n_in + gen;
    if (mb_run_context_limit(opt, c, total64, "the prompt plus --gen") != 0) return 1;
    uint32_t max_ctx = (uint32_t)total64;
    ids = calloc(total64, sizeof *ids);
    if (!ids) return 1;
    if (opt->input_ids) {
        for (uint32_t i = 0; i < n_in; i++) {
            if (opt->input_ids[i] < 0 || (uint32_t)opt->input_ids[i] >= c->vocab) {
                fprintf(stderr, "moe-broker: input id %d at position %u is outside the vocabulary (0..%u)\n",
                        opt->input_ids[i], i, c->vocab - 1);
                free(ids);
                return 1;
            }
            ids[i] = opt->input_ids[i];
        }
    } else {
        uint64_t s = opt->seed;
        for (uint32_t i = 0; i < n_in; i++) ids[i] = (int32_t)(mb_rand_next(&s) % c->vocab);
    }
    mb_sampler_params sp;
    mb_run_sampler_params(opt, &sp);
    if (mb_sampler_create(&sp, c->vocab, &sampler) != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker: cannot create the sampler\n");
        free(ids);
        return 1;
    }
    for (uint32_t i = 0; i < n_in; i++) mb_sampler_accept(sampler, ids[i]);

    mb_session *sess = NULL;
    mb_run_catch_signals();
    st = mb_session_open(opt, model, max_ctx,
                         opt->quiet ? MB_SESSION_QUIET : progress ? MB_SESSION_PROGRESS : MB_SESSION_INFO, &sess, err,
                         sizeof err);
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker: %s\n", err[0] ? err : mb_status_str(st));
        if (mb_run_signal) {
            mb_sampler_destroy(sampler);
            free(ids);
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
    /* Generation with the sampler (greedy at --temperature 0). */
    for (uint32_t g = 0; g < gen; g++) {
        uint32_t pos = n_in + g;
        if (mb_run_signal) goto interrupted;
        ids[pos] = mb_sampler_sample(sampler, last);
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
    if (mb_run_stats_wanted(opt)) mb_stats_print_table(sess->stats, stdout);
    if (opt->stats_json && mb_stats_write_json(sess->stats, opt->stats_json) != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker: cannot write %s\n", opt->stats_json);
        goto fail_session;
    }
    mb_stats_close_step_timing(sess->stats);
    free(logits);
    free(last);
    mb_session_close(sess);
    mb_sampler_destroy(sampler);
    free(ids);
    return 0;

interrupted:
    mb_run_say_interrupted();
    if (mb_run_stats_wanted(opt)) mb_stats_print_table(sess->stats, stdout);
    if (opt->stats_json && mb_stats_write_json(sess->stats, opt->stats_json) != MB_STATUS_OK)
        fprintf(stderr, "moe-broker: cannot write %s\n", opt->stats_json);
    mb_stats_close_step_timing(sess->stats);
    free(logits);
    free(last);
    mb_session_close(sess);
    mb_sampler_destroy(sampler);
    free(ids);
    return 128 + mb_run_signal;

fail_step:
    if (mb_run_signal) goto interrupted;
    fprintf(stderr, "moe-broker: %s\n", err[0] ? err : mb_status_str(st));
fail_session:
    free(logits);
    free(last);
    mb_session_close(sess);
fail_ids:
    mb_sampler_destroy(sampler);
    free(ids);
    return 1;
}

int mb_run(const mb_options *opt)
{
    if (mb_run_check_outputs(opt) != 0) return 1;
    int progress = !opt->quiet && isatty(STDERR_FILENO);
    mb_model *model = NULL;
    if (mb_run_load_model(opt, progress, &model) != 0) return 1;
    int text = opt->command == MB_COMMAND_CHAT || opt->prompt || opt->chat;
    int rc = opt->command == MB_COMMAND_SERVE ? mb_serve(opt, model, progress)
             : text                           ? mb_run_text(opt, model, progress)
                                              : run_ids(opt, model, progress);
    mb_model_destroy(model);
    return rc;
}
