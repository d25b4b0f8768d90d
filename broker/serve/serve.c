/* Starting and stopping the server: the tokenizer and chat template, the
 * session (backends started and experts placed once), the generation
 * thread and the HTTP daemon; then, on SIGINT or SIGTERM, the same in
 * reverse, with the statistics asked for written at the end. */
#include "broker/serve/serve.h"

#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker/run_internal.h"
#include "broker/serve/serve_internal.h"

typedef struct {
    mb_serve_server *s;
    mb_serve_engine engine;
} generator;

/* The generation thread: one job at a time, until the queue stops. */
static void *generate_loop(void *arg)
{
    generator *g = arg;
    mb_serve_job *job;
    while ((job = mb_serve_queue_take(&g->s->queue)))
        mb_serve_engine_run(&g->engine, &g->s->queue, job);
    return NULL;
}

/* The name /v1/models lists and replies carry: the model folder's name. */
static void model_name(const mb_options *opt, char *out, size_t cap)
{
    if (!opt->model_dir) {
        snprintf(out, cap, "moe-broker-embedded");
        return;
    }
    size_t n = strlen(opt->model_dir);
    while (n > 1 && opt->model_dir[n - 1] == '/')
        n--;
    size_t start = n;
    while (start > 0 && opt->model_dir[start - 1] != '/')
        start--;
    snprintf(out, cap, "%.*s", (int)(n - start), opt->model_dir + start);
}

static int open_session(mb_serve_server *s, const mb_model *model, int progress)
{
    char err[512] = "";
    const mb_options *opt = s->opt;
    mb_run_catch_signals();
    mb_status st = mb_session_open(opt, model, s->max_ctx,
                                   opt->quiet ? MB_SESSION_QUIET
                                   : progress ? MB_SESSION_PROGRESS
                                              : MB_SESSION_INFO,
                                   &s->sess, err, sizeof err);
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker: %s\n", err[0] ? err : mb_status_str(st));
        return -1;
    }
    /* A signal also cuts short a step that waits on workers. */
    mb_dispatch_set_cancel(s->sess->dispatch, &mb_run_signal);
    return 0;
}

/* Serves until a signal; returns 0, or -1 when something cannot start. */
static int serve_until_signal(mb_serve_server *s)
{
    generator g = {.s = s};
    char err[512] = "";
    mb_status st = mb_serve_engine_init(&g.engine, s->sess, s->text, s->max_ctx, s->opt->chunk ? s->opt->chunk : 512,
                                        &s->session_mu);
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker: %s\n", mb_status_str(st));
        return -1;
    }
    pthread_t thread;
    if (pthread_create(&thread, NULL, generate_loop, &g) != 0) {
        fprintf(stderr, "moe-broker: cannot start the generation thread\n");
        mb_serve_engine_fini(&g.engine);
        return -1;
    }
    struct MHD_Daemon *d = NULL;
    st = mb_serve_http_start(s, &d, err, sizeof err);
    if (st != MB_STATUS_OK) fprintf(stderr, "moe-broker: %s\n", err);
    /* The handler only sets a flag, and may run on any thread: look at it
     * every 50 ms. */
    while (st == MB_STATUS_OK && !__atomic_load_n(&mb_run_signal, __ATOMIC_RELAXED)) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (mb_run_signal) mb_run_say_interrupted();
    mb_serve_queue_stop(&s->queue); /* waiting and streaming clients get their ends */
    mb_serve_http_stop(d);
    pthread_join(thread, NULL);
    mb_serve_engine_fini(&g.engine);
    return st == MB_STATUS_OK ? 0 : -1;
}

static int write_stats(const mb_options *opt, mb_stats *stats)
{
    int rc = 0;
    if (mb_run_stats_wanted(opt)) mb_stats_print_table(stats, stderr);
    if (opt->stats_json && mb_stats_write_json(stats, opt->stats_json) != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker: cannot write %s\n", opt->stats_json);
        rc = -1;
    }
    if (mb_stats_close_step_timing(stats) != MB_STATUS_OK) rc = -1;
    return rc;
}

int mb_serve(const mb_options *opt, const mb_model *model, int progress)
{
    mb_text text;
    if (mb_text_open(&text, opt, model, 1) != 0) return 1;
    mb_serve_server s = {.opt = opt, .text = &text, .max_ctx = mb_run_text_context(opt, &model->cfg),
                         .max_body_bytes = opt->max_body_bytes, .started = (int64_t)time(NULL)};
    model_name(opt, s.model_name, sizeof s.model_name);
    int rc = 1;
    if (mb_serve_queue_init(&s.queue, opt->queue_max) != MB_STATUS_OK) goto close_text;
    if (pthread_mutex_init(&s.session_mu, NULL) != 0) goto close_queue;
    if (open_session(&s, model, progress) != 0) goto close_mutex;
    rc = serve_until_signal(&s) == 0 && write_stats(opt, s.sess->stats) == 0 ? 0 : 1;
    mb_session_close(s.sess);
close_mutex:
    pthread_mutex_destroy(&s.session_mu);
close_queue:
    mb_serve_queue_fini(&s.queue);
close_text:
    mb_text_close(&text);
    return rc;
}
