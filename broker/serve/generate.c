/* A job's generation: the prompt's tokens (with the longest prefix the KV
 * cache already holds reused), then sampling token by token until an
 * end-of-sequence token, a stop sequence, max_tokens or the context limit,
 * handing text to the job as it becomes final. Also the preparation that
 * turns a parsed request into those tokens, on the connection's thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker/serve/serve_internal.h"

/* ---- preparing a job (connection thread) ---- */

static int prepare_fail(mb_serve_error *err, int http, const char *param, const char *code, const char *msg)
{
    snprintf(err->message, sizeof err->message, "%s", msg);
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    snprintf(err->code, sizeof err->code, "%s", code ? code : "");
    return http;
}

/* The prompt's tokens: the chat template's rendering of the messages (no
 * BOS added: the template has it), or the raw prompt with the tokenizer's
 * BOS, as `run --chat` and `run --prompt` do. */
static int prepare_tokens(mb_serve_server *s, mb_serve_job *job, mb_serve_error *err)
{
    const mb_serve_request *r = &job->req;
    char why[256] = "", *rendered = NULL;
    size_t bytes = 0;
    const char *text = r->prompt;
    if (r->kind == MB_SERVE_KIND_CHAT) {
        mb_status st = mb_chat_render(&s->text->tmpl, r->messages, r->n_messages, 1, &rendered, &bytes, why,
                                      sizeof why);
        if (st != MB_STATUS_OK)
            return prepare_fail(err, st == MB_STATUS_NOMEM ? 500 : 400, "messages", "invalid_messages",
                                why[0] ? why : mb_status_str(st));
        text = rendered;
    } else {
        bytes = strlen(text);
    }
    mb_status st = mb_text_encode(s->text, text, bytes, r->kind == MB_SERVE_KIND_COMPLETION, &job->ids,
                                  &job->n_ids, why, sizeof why);
    free(rendered);
    if (st != MB_STATUS_OK) return prepare_fail(err, 500, NULL, NULL, why);
    if (job->n_ids == 0)
        return prepare_fail(err, 400, r->kind == MB_SERVE_KIND_CHAT ? "messages" : "prompt", "empty_prompt",
                            "the prompt is empty");
    return 0;
}

/* OpenAI's rule: the prompt plus the completion asked for must fit the
 * context; without max_tokens, the prompt must leave room for one token. */
static int prepare_context(mb_serve_server *s, mb_serve_job *job, mb_serve_error *err)
{
    uint64_t asked = (job->req.given & MB_SERVE_GIVEN_MAX_TOKENS) ? job->req.max_tokens : 1;
    if ((uint64_t)job->n_ids + asked <= s->max_ctx) return 0;
    char msg[256];
    snprintf(msg, sizeof msg,
             "This model's maximum context length is %u tokens. However, you requested %llu tokens (%zu "
             "in the %s, %llu in the completion).",
             s->max_ctx, (unsigned long long)(job->n_ids + asked), job->n_ids,
             job->req.kind == MB_SERVE_KIND_CHAT ? "messages" : "prompt", (unsigned long long)asked);
    return prepare_fail(err, 400, job->req.kind == MB_SERVE_KIND_CHAT ? "messages" : "prompt",
                        "context_length_exceeded", msg);
}

/* The request's sampling fields over the server's flags; without a seed,
 * each request draws from --seed advanced by the request's number, so that
 * two identical requests need not give the same text but a server started
 * the same way answers the same sequence of requests the same way. */
static void prepare_sampling(mb_serve_server *s, mb_serve_job *job, uint64_t number)
{
    const mb_serve_request *r = &job->req;
    const mb_options *o = s->opt;
    mb_sampler_params *p = &job->sampling;
    *p = (mb_sampler_params){.temperature = o->temperature, .top_k = o->top_k, .top_p = o->top_p,
                             .min_p = o->min_p, .repeat_penalty = o->repeat_penalty,
                             .repeat_last_n = o->repeat_last_n, .seed = o->seed + number};
    if (r->given & MB_SERVE_GIVEN_TEMPERATURE) p->temperature = r->temperature;
    if (r->given & MB_SERVE_GIVEN_TOP_P) p->top_p = r->top_p;
    if (r->given & MB_SERVE_GIVEN_TOP_K) p->top_k = r->top_k;
    if (r->given & MB_SERVE_GIVEN_MIN_P) p->min_p = r->min_p;
    if (r->given & MB_SERVE_GIVEN_REPEAT_PENALTY) p->repeat_penalty = r->repeat_penalty;
    if (r->given & MB_SERVE_GIVEN_SEED) p->seed = r->seed;
    /* Without max_tokens: --gen when given, else until the context is full. */
    job->max_tokens = (r->given & MB_SERVE_GIVEN_MAX_TOKENS) ? r->max_tokens
                      : mb_options_given(o, MB_OPTION_GEN)  ? o->gen
                                                            : s->max_ctx;
}

int mb_serve_job_prepare(mb_serve_server *s, mb_serve_request *req, mb_serve_job **out, mb_serve_error *err)
{
    mb_serve_job *job = mb_serve_job_create(req);
    if (!job) return prepare_fail(err, 500, NULL, NULL, "out of memory");
    pthread_mutex_lock(&s->queue.mu);
    uint64_t number = ++s->n_requests;
    pthread_mutex_unlock(&s->queue.mu);
    int http = prepare_tokens(s, job, err);
    if (http == 0) http = prepare_context(s, job, err);
    if (http != 0) {
        mb_serve_job_release(&s->queue, job);
        return http;
    }
    prepare_sampling(s, job, number);
    snprintf(job->id, sizeof job->id, "%s%llx%08llx", job->req.kind == MB_SERVE_KIND_CHAT ? "chatcmpl-" : "cmpl-",
             (unsigned long long)s->started, (unsigned long long)number);
    job->created = (int64_t)time(NULL);
    *out = job;
    return 0;
}

/* ---- the engine (generation thread) ---- */

mb_status mb_serve_engine_init(mb_serve_engine *e, mb_session *sess, const mb_text *text, uint32_t max_ctx,
                               uint32_t chunk, pthread_mutex_t *session_mu)
{
    *e = (mb_serve_engine){.sess = sess, .text = text, .max_ctx = max_ctx, .chunk = chunk,
                           .session_mu = session_mu};
    e->cache_ids = malloc((size_t)max_ctx * sizeof *e->cache_ids);
    e->last = malloc((size_t)text->vocab * sizeof *e->last);
    if (!e->cache_ids || !e->last || mb_tokenizer_stream_create(text->tok, 1, &e->stream) != MB_STATUS_OK) {
        mb_serve_engine_fini(e);
        return MB_STATUS_NOMEM;
    }
    return MB_STATUS_OK;
}

void mb_serve_engine_fini(mb_serve_engine *e)
{
    free(e->cache_ids);
    free(e->last);
    mb_tokenizer_stream_destroy(e->stream);
    memset(e, 0, sizeof *e);
}

/* Feeds ids at the cache's end, one step under the session lock. */
static mb_status engine_feed(mb_serve_engine *e, const int32_t *ids, uint32_t n, char *err, size_t err_cap)
{
    pthread_mutex_lock(e->session_mu);
    mb_status st = mb_session_step(e->sess, ids, n, NULL, e->last, err, err_cap);
    pthread_mutex_unlock(e->session_mu);
    if (st != MB_STATUS_OK) {
        /* The cache's end is unknown after a failed step: start over next time. */
        mb_forward_reset(e->sess->fwd);
        e->n_cache = 0;
        return st;
    }
    memcpy(e->cache_ids + e->n_cache, ids, (size_t)n * sizeof *ids);
    e->n_cache += n;
    return MB_STATUS_OK;
}

/* Keeps the longest prefix of the prompt the cache already holds (at least
 * the last prompt token is fed again: its logits start the reply) and feeds
 * the rest in chunks, checking for cancellation between them. */
static mb_status engine_prefill(mb_serve_engine *e, mb_serve_queue *q, mb_serve_job *job, char *err, size_t cap)
{
    uint32_t keep = 0;
    while (keep < e->n_cache && keep + 1 < job->n_ids && e->cache_ids[keep] == job->ids[keep])
        keep++;
    mb_forward_truncate(e->sess->fwd, keep);
    e->n_cache = keep;
    job->n_cached = keep;
    for (size_t done = keep; done < job->n_ids;) {
        if (mb_serve_job_cancelled(q, job)) return MB_STATUS_CLOSED;
        uint32_t n = job->n_ids - done < e->chunk ? (uint32_t)(job->n_ids - done) : e->chunk;
        mb_status st = engine_feed(e, job->ids + done, n, err, cap);
        if (st != MB_STATUS_OK) return st;
        done += n;
    }
    return MB_STATUS_OK;
}

/* The reply's text before it reaches the job: a stop sequence may still
 * begin in its last bytes, which are held back until it cannot. */
typedef struct {
    mb_serve_buf all;  /* everything decoded so far */
    size_t committed;  /* bytes handed to the job */
    int stopped;       /* a stop sequence matched: all ends before it */
} reply_text;

/* Bytes at the end of all (past committed) that are a proper prefix of a
 * stop sequence. */
static size_t stop_holdback(const reply_text *rt, const mb_serve_request *r)
{
    size_t open = rt->all.len - rt->committed, best = 0;
    for (size_t i = 0; i < r->n_stop; i++) {
        size_t stop_len = strlen(r->stop[i]);
        for (size_t k = stop_len - 1 < open ? stop_len - 1 : open; k > best; k--) {
            if (memcmp(rt->all.data + rt->all.len - k, r->stop[i], k) == 0) {
                best = k;
                break;
            }
        }
    }
    return best;
}

/* Adds a decoded piece, cuts the text at the first stop sequence, and
 * hands the job what no stop sequence can claim any more. */
static void reply_add(reply_text *rt, mb_serve_queue *q, mb_serve_job *job, const char *s, size_t n, int final)
{
    mb_serve_buf_put(&rt->all, s, n);
    if (rt->all.failed || rt->all.len == rt->committed) return;
    const mb_serve_request *r = &job->req;
    size_t end = rt->all.len;
    for (size_t i = 0; i < r->n_stop; i++) {
        const char *hit = memmem(rt->all.data + rt->committed, rt->all.len - rt->committed, r->stop[i],
                                 strlen(r->stop[i]));
        if (hit && (size_t)(hit - rt->all.data) < end) {
            end = (size_t)(hit - rt->all.data);
            rt->stopped = 1;
        }
    }
    if (!rt->stopped && !final) end -= stop_holdback(rt, r);
    mb_serve_job_append(q, job, rt->all.data + rt->committed, end - rt->committed);
    rt->committed = end;
    if (rt->stopped) rt->all.len = end;
}

/* Samples until the reply ends; returns how it ended. */
static mb_serve_finish engine_sample(mb_serve_engine *e, mb_serve_queue *q, mb_serve_job *job,
                                     mb_sampler *sampler, reply_text *rt, char *err, size_t cap)
{
    for (uint32_t g = 0; g < job->max_tokens; g++) {
        if (mb_serve_job_cancelled(q, job)) return MB_SERVE_FINISH_NONE;
        int32_t id = mb_sampler_sample(sampler, e->last);
        if (mb_text_is_eos(e->text, id)) return MB_SERVE_FINISH_STOP;
        job->n_completion++;
        const char *piece;
        size_t n = 0;
        if (mb_tokenizer_stream_push(e->stream, id, &piece, &n) == MB_STATUS_OK) reply_add(rt, q, job, piece, n, 0);
        if (rt->stopped) return MB_SERVE_FINISH_STOP;
        /* The last token asked for, or one the cache has no room for, is not fed. */
        if (g + 1 == job->max_tokens || e->n_cache >= e->max_ctx) return MB_SERVE_FINISH_LENGTH;
        if (engine_feed(e, &id, 1, err, cap) != MB_STATUS_OK) return MB_SERVE_FINISH_ERROR;
    }
    return MB_SERVE_FINISH_LENGTH;
}

void mb_serve_engine_run(mb_serve_engine *e, mb_serve_queue *q, mb_serve_job *job)
{
    char err[256] = "";
    mb_sampler *sampler = NULL;
    reply_text rt = {.committed = 0};
    mb_serve_finish finish = MB_SERVE_FINISH_ERROR;
    mb_status st = mb_sampler_create(&job->sampling, e->text->vocab, &sampler);
    if (st != MB_STATUS_OK) {
        snprintf(err, sizeof err, "sampler: %s", mb_status_str(st));
    } else if ((st = engine_prefill(e, q, job, err, sizeof err)) == MB_STATUS_OK) {
        for (size_t i = 0; i < job->n_ids; i++)
            mb_sampler_accept(sampler, job->ids[i]);
        finish = job->max_tokens ? engine_sample(e, q, job, sampler, &rt, err, sizeof err) : MB_SERVE_FINISH_LENGTH;
    } else if (st == MB_STATUS_CLOSED) {
        finish = MB_SERVE_FINISH_NONE; /* cancelled during the prefill */
    } else if (!err[0]) {
        snprintf(err, sizeof err, "%s", mb_status_str(st));
    }
    /* The decoder's held-back bytes end the text (and reset it for the next job). */
    const char *tail;
    size_t n = 0;
    if (mb_tokenizer_stream_finish(e->stream, &tail, &n) == MB_STATUS_OK && !rt.stopped &&
        finish != MB_SERVE_FINISH_ERROR)
        reply_add(&rt, q, job, tail, n, 1);
    else if (!rt.stopped)
        reply_add(&rt, q, job, "", 0, 1);
    if (rt.stopped && finish == MB_SERVE_FINISH_LENGTH) finish = MB_SERVE_FINISH_STOP; /* in the tail */
    if (rt.all.failed && finish != MB_SERVE_FINISH_ERROR) {
        finish = MB_SERVE_FINISH_ERROR;
        snprintf(err, sizeof err, "out of memory for the reply");
    }
    mb_serve_buf_free(&rt.all);
    mb_sampler_destroy(sampler);
    mb_serve_job_finish(q, job, finish, finish == MB_SERVE_FINISH_ERROR ? (err[0] ? err : "generation failed") : NULL);
}
