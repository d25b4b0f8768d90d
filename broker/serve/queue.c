/* The generation queue: requests wait here, first come first served, for
 * the one generation slot; each job carries its reply from the generation
 * thread to the connection that asked. Also the byte buffer the replies are
 * built in. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/serve/serve_internal.h"

/* ---- buffer ---- */

static int buf_reserve(mb_serve_buf *b, size_t more)
{
    if (b->failed) return -1;
    if (more > SIZE_MAX / 2 - b->len) {
        b->failed = 1;
        return -1;
    }
    if (b->len + more + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) {
        b->failed = 1;
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

void mb_serve_buf_put(mb_serve_buf *b, const char *s, size_t n)
{
    if (buf_reserve(b, n) != 0) return;
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void mb_serve_buf_printf(mb_serve_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n) != 0) return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void mb_serve_buf_free(mb_serve_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* ---- jobs ---- */

mb_serve_job *mb_serve_job_create(mb_serve_request *req)
{
    mb_serve_job *job = calloc(1, sizeof *job);
    if (!job || pthread_cond_init(&job->changed, NULL) != 0) {
        free(job);
        mb_serve_request_free(req);
        return NULL;
    }
    job->req = *req;
    memset(req, 0, sizeof *req);
    job->refs = 1;
    return job;
}

static void job_destroy(mb_serve_job *job)
{
    mb_serve_request_free(&job->req);
    free(job->ids);
    mb_serve_buf_free(&job->text);
    pthread_cond_destroy(&job->changed);
    free(job);
}

/* Drops one reference; the last frees. Called with q->mu held. */
static void job_unref_locked(mb_serve_job *job)
{
    if (--job->refs == 0) job_destroy(job);
}

/* ---- queue ---- */

mb_status mb_serve_queue_init(mb_serve_queue *q, uint32_t limit)
{
    memset(q, 0, sizeof *q);
    q->limit = limit;
    if (pthread_mutex_init(&q->mu, NULL) != 0) return MB_STATUS_NOMEM;
    if (pthread_cond_init(&q->work, NULL) != 0) {
        pthread_mutex_destroy(&q->mu);
        return MB_STATUS_NOMEM;
    }
    return MB_STATUS_OK;
}

void mb_serve_queue_fini(mb_serve_queue *q)
{
    pthread_cond_destroy(&q->work);
    pthread_mutex_destroy(&q->mu);
}

mb_status mb_serve_queue_submit(mb_serve_queue *q, mb_serve_job *job)
{
    mb_status st = MB_STATUS_OK;
    pthread_mutex_lock(&q->mu);
    if (q->stopping) {
        st = MB_STATUS_CLOSED;
    } else if (q->n_queued >= q->limit) {
        q->n_rejected_full++;
        st = MB_STATUS_FULL;
    } else {
        job->refs++;
        job->state = MB_SERVE_JOB_QUEUED;
        if (q->tail)
            q->tail->next = job;
        else
            q->head = job;
        q->tail = job;
        q->n_queued++;
        q->n_accepted++;
        q->prompt_tokens += job->n_ids;
        pthread_cond_signal(&q->work);
    }
    pthread_mutex_unlock(&q->mu);
    return st;
}

/* Takes job out of the waiting list. Called with q->mu held. */
static void unlink_locked(mb_serve_queue *q, mb_serve_job *job)
{
    mb_serve_job **p = &q->head, *prev = NULL;
    while (*p && *p != job) {
        prev = *p;
        p = &(*p)->next;
    }
    if (!*p) return;
    *p = job->next;
    if (q->tail == job) q->tail = prev;
    job->next = NULL;
    q->n_queued--;
}

mb_serve_job *mb_serve_queue_take(mb_serve_queue *q)
{
    pthread_mutex_lock(&q->mu);
    while (!q->stopping && !q->head)
        pthread_cond_wait(&q->work, &q->mu);
    mb_serve_job *job = NULL;
    if (!q->stopping) {
        job = q->head;
        unlink_locked(q, job);
        job->state = MB_SERVE_JOB_RUNNING;
        q->running = job;
        pthread_cond_broadcast(&job->changed);
    }
    pthread_mutex_unlock(&q->mu);
    return job;
}

void mb_serve_job_append(mb_serve_queue *q, mb_serve_job *job, const char *s, size_t n)
{
    if (n == 0) return;
    pthread_mutex_lock(&q->mu);
    mb_serve_buf_put(&job->text, s, n);
    pthread_cond_broadcast(&job->changed);
    pthread_mutex_unlock(&q->mu);
}

void mb_serve_job_finish(mb_serve_queue *q, mb_serve_job *job, mb_serve_finish finish, const char *error)
{
    pthread_mutex_lock(&q->mu);
    if (job->text.failed && finish != MB_SERVE_FINISH_ERROR) {
        finish = MB_SERVE_FINISH_ERROR;
        error = "out of memory for the reply";
    }
    job->finish = job->cancelled ? MB_SERVE_FINISH_NONE : finish;
    if (error) snprintf(job->error, sizeof job->error, "%s", error);
    job->state = MB_SERVE_JOB_DONE;
    if (q->running == job) q->running = NULL;
    q->completion_tokens += job->n_completion;
    q->cached_tokens += job->n_cached;
    if (job->cancelled)
        q->n_cancelled++;
    else if (job->finish == MB_SERVE_FINISH_ERROR)
        q->n_failed++;
    else
        q->n_completed++;
    pthread_cond_broadcast(&job->changed);
    job_unref_locked(job);
    pthread_mutex_unlock(&q->mu);
}

int mb_serve_job_cancelled(mb_serve_queue *q, mb_serve_job *job)
{
    pthread_mutex_lock(&q->mu);
    int c = job->cancelled;
    pthread_mutex_unlock(&q->mu);
    return c;
}

void mb_serve_job_release(mb_serve_queue *q, mb_serve_job *job)
{
    if (!job) return;
    pthread_mutex_lock(&q->mu);
    if (job->state == MB_SERVE_JOB_QUEUED && job->refs > 1) { /* in the queue, never started */
        unlink_locked(q, job);
        job->cancelled = 1;
        job->state = MB_SERVE_JOB_DONE;
        q->n_cancelled++;
        job_unref_locked(job); /* the queue's reference */
    } else if (job->state != MB_SERVE_JOB_DONE) {
        job->cancelled = 1; /* the generator sees it at its next token */
    }
    job_unref_locked(job);
    pthread_mutex_unlock(&q->mu);
}

void mb_serve_queue_stop(mb_serve_queue *q)
{
    pthread_mutex_lock(&q->mu);
    q->stopping = 1;
    while (q->head) {
        mb_serve_job *job = q->head;
        unlink_locked(q, job);
        job->cancelled = 1;
        job->state = MB_SERVE_JOB_DONE;
        snprintf(job->error, sizeof job->error, "the server is shutting down");
        job->finish = MB_SERVE_FINISH_ERROR;
        q->n_cancelled++;
        pthread_cond_broadcast(&job->changed);
        job_unref_locked(job);
    }
    if (q->running) {
        q->running->cancelled = 1;
        pthread_cond_broadcast(&q->running->changed);
    }
    pthread_cond_broadcast(&q->work);
    pthread_mutex_unlock(&q->mu);
}
