/* Private to broker/serve/: the job a request becomes, the queue that hands
 * jobs to the generation thread, the engine that runs them, and the server
 * state the HTTP handlers see.
 *
 * Threads: libmicrohttpd runs one thread per connection (handlers may
 * block); one generation thread owns the session, the KV cache and the
 * engine; the main thread starts and stops everything. queue.mu guards the
 * queue, every job's shared fields and the counters; session_mu is held over
 * each forward step, so /metrics reads the statistics between steps. */
#ifndef MB_BROKER_SERVE_INTERNAL_H
#define MB_BROKER_SERVE_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/sampler.h"
#include "broker/serve/request.h"
#include "broker/session.h"
#include "broker/text.h"

/* ---- a growing byte buffer (replies, events, metrics) ---- */

typedef struct {
    char *data; /* NUL-terminated when not NULL */
    size_t len, cap;
    int failed; /* an append ran out of memory: the content is incomplete */
} mb_serve_buf;

void mb_serve_buf_put(mb_serve_buf *b, const char *s, size_t n);
void mb_serve_buf_printf(mb_serve_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mb_serve_buf_free(mb_serve_buf *b);

/* ---- jobs ---- */

typedef enum {
    MB_SERVE_JOB_QUEUED = 0,
    MB_SERVE_JOB_RUNNING = 1,
    MB_SERVE_JOB_DONE = 2,
} mb_serve_job_state;

typedef enum {
    MB_SERVE_FINISH_NONE = 0, /* not finished, or cancelled */
    MB_SERVE_FINISH_STOP,     /* an end-of-sequence token or a stop sequence */
    MB_SERVE_FINISH_LENGTH,   /* max_tokens or the context limit */
    MB_SERVE_FINISH_ERROR,    /* generation failed: error says why */
} mb_serve_finish;

typedef struct mb_serve_job {
    /* Written by the HTTP thread before submit; read-only afterwards. */
    mb_serve_request req;
    int32_t *ids; /* [n_ids]: the prompt's tokens, each in the vocabulary */
    size_t n_ids;
    uint32_t max_tokens; /* most tokens to generate */
    mb_sampler_params sampling;
    char id[40]; /* "chatcmpl-..." / "cmpl-..." */
    int64_t created; /* unix seconds */

    /* Shared, under queue.mu. */
    mb_serve_job_state state;
    mb_serve_buf text;      /* the reply so far: only text no stop sequence can still claim */
    mb_serve_finish finish; /* set with state DONE */
    uint32_t n_completion;  /* tokens sampled (an end-of-sequence token excluded) */
    uint32_t n_cached;      /* prompt tokens found in the KV cache */
    int cancelled;          /* the client went away or the server stops */
    char error[256];        /* MB_SERVE_FINISH_ERROR */
    int refs;               /* the HTTP side and, once taken, the generator */
    pthread_cond_t changed; /* text grew or the state changed */
    struct mb_serve_job *next;
} mb_serve_job;

/* ---- the queue ---- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t work; /* a job was queued, or stopping */
    mb_serve_job *head, *tail;
    uint32_t n_queued;
    uint32_t limit;      /* most jobs waiting (the running one not counted) */
    mb_serve_job *running;
    int stopping;
    /* Counters for /metrics. */
    uint64_t n_accepted, n_rejected_full, n_completed, n_cancelled, n_failed;
    uint64_t prompt_tokens, cached_tokens, completion_tokens;
} mb_serve_queue;

mb_status mb_serve_queue_init(mb_serve_queue *q, uint32_t limit);
void mb_serve_queue_fini(mb_serve_queue *q);

/* A new job owning req (moved in: *req is zeroed), with one reference for
 * the caller. NULL when out of memory (req is then freed). */
mb_serve_job *mb_serve_job_create(mb_serve_request *req);

/* Queues job (the queue takes its own reference). Errors: MB_STATUS_FULL
 * (limit jobs already wait), MB_STATUS_CLOSED (the server stops). */
mb_status mb_serve_queue_submit(mb_serve_queue *q, mb_serve_job *job);

/* The generation thread's wait for the next job, which becomes running.
 * NULL once the queue stops. Blocking. */
mb_serve_job *mb_serve_queue_take(mb_serve_queue *q);

/* The generator adds reply text / ends the job (and drops its reference). */
void mb_serve_job_append(mb_serve_queue *q, mb_serve_job *job, const char *s, size_t n);
void mb_serve_job_finish(mb_serve_queue *q, mb_serve_job *job, mb_serve_finish finish, const char *error);

/* 1 when the job should stop (read under the lock). */
int mb_serve_job_cancelled(mb_serve_queue *q, mb_serve_job *job);

/* The HTTP side lets go of a job: a job not yet done is cancelled (a queued
 * one leaves the queue at once, a running one stops at its next token).
 * Frees the job with its last reference. NULL is a no-op. */
void mb_serve_job_release(mb_serve_queue *q, mb_serve_job *job);

/* Cancels every job and wakes every waiter; take returns NULL from now on. */
void mb_serve_queue_stop(mb_serve_queue *q);

/* ---- the engine: one generation at a time over the session ---- */

typedef struct {
    mb_session *sess;
    const mb_text *text;
    uint32_t max_ctx;
    uint32_t chunk;           /* prefill tokens per step */
    pthread_mutex_t *session_mu;
    int32_t *cache_ids;       /* [max_ctx]: the tokens whose keys and values the cache holds */
    uint32_t n_cache;
    float *last;              /* [vocab]: logits after the last token fed */
    mb_tokenizer_stream *stream;
} mb_serve_engine;

mb_status mb_serve_engine_init(mb_serve_engine *e, mb_session *sess, const mb_text *text, uint32_t max_ctx,
                               uint32_t chunk, pthread_mutex_t *session_mu);
void mb_serve_engine_fini(mb_serve_engine *e);

/* Runs one job to its end (or cancellation) and finishes it. Generation
 * thread only. */
void mb_serve_engine_run(mb_serve_engine *e, mb_serve_queue *q, mb_serve_job *job);

/* ---- the server as the handlers see it ---- */

typedef struct {
    const mb_options *opt;
    const mb_text *text;
    mb_session *sess;
    mb_serve_queue queue;
    pthread_mutex_t session_mu;
    uint32_t max_ctx;
    uint64_t max_body_bytes;
    char model_name[256];
    int64_t started;     /* unix seconds */
    uint64_t n_requests; /* HTTP requests seen (under queue.mu): job ids and default seeds */
} mb_serve_server;

/* Turns a parsed request into a job ready to queue: renders the chat
 * template, tokenizes, checks the context limit, resolves the sampling
 * settings. On failure returns the HTTP status (400 or 500) with err set;
 * *req is consumed either way. */
int mb_serve_job_prepare(mb_serve_server *s, mb_serve_request *req, mb_serve_job **out, mb_serve_error *err);

/* The reply bodies (reply.c). Each appends to b. */
void mb_serve_reply_error(mb_serve_buf *b, const char *message, const char *type, const char *param,
                          const char *code);
void mb_serve_reply_complete(mb_serve_buf *b, const mb_serve_server *s, const mb_serve_job *job);
/* One server-sent event with the text delta (NULL: the first event, with
 * the role; or the last, with finish set), or the usage event. */
void mb_serve_reply_event(mb_serve_buf *b, const mb_serve_server *s, const mb_serve_job *job,
                          const char *delta, size_t delta_len, mb_serve_finish finish);
void mb_serve_reply_usage_event(mb_serve_buf *b, const mb_serve_server *s, const mb_serve_job *job);
void mb_serve_reply_models(mb_serve_buf *b, const mb_serve_server *s);

/* The Prometheus text of /metrics (metrics.c). */
void mb_serve_metrics(mb_serve_buf *b, mb_serve_server *s);

/* Starts / stops the HTTP daemon (http.c). Start prints the address it
 * listens on; err says why it cannot. */
struct MHD_Daemon;
mb_status mb_serve_http_start(mb_serve_server *s, struct MHD_Daemon **out, char *err, size_t err_cap);
void mb_serve_http_stop(struct MHD_Daemon *d);

#endif
