/* The HTTP side of the server, on libmicrohttpd with a thread per
 * connection (so a handler may block while its request waits or
 * generates): routes, the API key, the body with its size limit, and the
 * answers, whole or streamed as server-sent events. A client that goes
 * away cancels its job: a streamed one is noticed at the next write (a
 * keep-alive comment goes out every second while nothing else does), a
 * waiting one by polling its socket. */
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "broker/serve/serve_internal.h"

/* How often a waiting handler looks at its client, and how long a stream
 * may stay silent before a keep-alive comment. */
#define POLL_CLIENT_MS 200
#define KEEPALIVE_MS 1000
#define MAX_CONNECTIONS 256
#define IDLE_TIMEOUT_S 120

typedef enum {
    ROUTE_NONE = 0,
    ROUTE_HEALTH,
    ROUTE_MODELS,
    ROUTE_METRICS,
    ROUTE_CHAT,
    ROUTE_COMPLETIONS,
} route;

static const struct {
    const char *url;
    route r;
    int post; /* 1: POST only; 0: GET (and HEAD) only */
} routes[] = {
    {"/health", ROUTE_HEALTH, 0},
    {"/v1/models", ROUTE_MODELS, 0},
    {"/metrics", ROUTE_METRICS, 0},
    {"/v1/chat/completions", ROUTE_CHAT, 1},
    {"/v1/completions", ROUTE_COMPLETIONS, 1},
};

/* What a POST collects between the handler's calls. */
typedef struct {
    route r;
    mb_serve_buf body;
    int too_big; /* the body passed --max-body: the rest is read and dropped */
} request_ctx;

/* ---- answers ---- */

static enum MHD_Result answer(struct MHD_Connection *c, unsigned status, const char *type, const char *body,
                              size_t len)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == MHD_HTTP_UNAUTHORIZED) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    enum MHD_Result r = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return r;
}

static enum MHD_Result answer_buf(struct MHD_Connection *c, unsigned status, const char *type,
                                  mb_serve_buf *b)
{
    enum MHD_Result r = b->failed ? MHD_NO : answer(c, status, type, b->data ? b->data : "", b->len);
    mb_serve_buf_free(b);
    return r;
}

/* An OpenAI-style error object. */
static enum MHD_Result answer_error(struct MHD_Connection *c, unsigned status, const char *message,
                                    const char *param, const char *code)
{
    mb_serve_buf b = {0};
    const char *type = status >= 500                       ? "server_error"
                       : status == MHD_HTTP_UNAUTHORIZED   ? "authentication_error"
                       : status == MHD_HTTP_NOT_FOUND      ? "not_found_error"
                                                           : "invalid_request_error";
    mb_serve_reply_error(&b, message, type, param, code);
    return answer_buf(c, status, "application/json", &b);
}

/* ---- checks before the body ---- */

static route find_route(const char *url, const char *method, int *method_ok)
{
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strcmp(url, routes[i].url) != 0) continue;
        *method_ok = routes[i].post ? strcmp(method, MHD_HTTP_METHOD_POST) == 0
                                    : strcmp(method, MHD_HTTP_METHOD_GET) == 0 ||
                                          strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
        return routes[i].r;
    }
    return ROUTE_NONE;
}

/* Compares without an early exit, so the time taken says nothing of where
 * a guessed key first differs. */
static int same_secret(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);
    for (size_t i = 0; i < la; i++)
        diff |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
    return diff == 0;
}

static int authorized(const mb_serve_server *s, struct MHD_Connection *c, route r)
{
    if (!s->opt->api_key || r == ROUTE_HEALTH) return 1; /* health stays open for load balancers */
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    return h && strncmp(h, "Bearer ", 7) == 0 && same_secret(h + 7, s->opt->api_key);
}

/* 1 when the client closed its side or the connection failed. */
static int client_gone(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!info) return 0;
    struct pollfd p = {.fd = info->connect_fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

/* ---- GET routes ---- */

static enum MHD_Result answer_get(mb_serve_server *s, struct MHD_Connection *c, route r)
{
    mb_serve_buf b = {0};
    if (r == ROUTE_HEALTH) {
        mb_serve_buf_printf(&b, "{\"status\":\"ok\"}");
        return answer_buf(c, MHD_HTTP_OK, "application/json", &b);
    }
    if (r == ROUTE_MODELS) {
        mb_serve_reply_models(&b, s);
        return answer_buf(c, MHD_HTTP_OK, "application/json", &b);
    }
    mb_serve_metrics(&b, s);
    return answer_buf(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", &b);
}

/* ---- streamed answers ---- */

typedef struct {
    mb_serve_server *s;
    mb_serve_job *job;
    mb_serve_buf out; /* event bytes not yet handed over: out.data[out_pos..out.len) */
    size_t out_pos;
    size_t sent;      /* bytes of the job's text already in events */
    int started, ended;
} sse_stream;

static void deadline_after(struct timespec *ts, long ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* The job's end as events: an error object, or the finish chunk (and the
 * usage chunk when asked), then [DONE]. Called with the queue lock held. */
static void sse_end(sse_stream *st)
{
    mb_serve_job *job = st->job;
    if (job->finish == MB_SERVE_FINISH_ERROR || job->cancelled) {
        mb_serve_buf_put(&st->out, "data: ", 6);
        mb_serve_reply_error(&st->out, job->error[0] ? job->error : "generation cancelled", "server_error", NULL,
                             NULL);
        mb_serve_buf_put(&st->out, "\n\n", 2);
    } else {
        mb_serve_reply_event(&st->out, st->s, job, NULL, 0, job->finish);
        if (job->req.include_usage) mb_serve_reply_usage_event(&st->out, st->s, job);
    }
    mb_serve_buf_put(&st->out, "data: [DONE]\n\n", 14);
    st->ended = 1;
}

/* Waits (at most KEEPALIVE_MS) for more text or the job's end and turns
 * what came into events; a keep-alive comment when nothing did. */
static void sse_next(sse_stream *st)
{
    mb_serve_queue *q = &st->s->queue;
    mb_serve_job *job = st->job;
    struct timespec deadline;
    deadline_after(&deadline, KEEPALIVE_MS);
    pthread_mutex_lock(&q->mu);
    int timed_out = 0;
    while (job->text.len == st->sent && job->state != MB_SERVE_JOB_DONE && !timed_out)
        timed_out = pthread_cond_timedwait(&job->changed, &q->mu, &deadline) == ETIMEDOUT;
    if (job->text.len > st->sent) {
        mb_serve_reply_event(&st->out, st->s, job, job->text.data + st->sent, job->text.len - st->sent,
                             MB_SERVE_FINISH_NONE);
        st->sent = job->text.len;
    }
    if (job->state == MB_SERVE_JOB_DONE) sse_end(st);
    pthread_mutex_unlock(&q->mu);
    if (st->out.len == 0) mb_serve_buf_put(&st->out, ": keep-alive\n\n", 14);
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    sse_stream *st = cls;
    (void)pos;
    if (st->out_pos == st->out.len) {
        if (st->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        st->out.len = st->out_pos = 0;
        if (!st->started && st->job->req.kind == MB_SERVE_KIND_CHAT) /* the role first, as OpenAI does */
            mb_serve_reply_event(&st->out, st->s, st->job, NULL, 0, MB_SERVE_FINISH_NONE);
        else
            sse_next(st);
        st->started = 1;
        if (st->out.failed) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = st->out.len - st->out_pos < max ? st->out.len - st->out_pos : max;
    memcpy(buf, st->out.data + st->out_pos, n);
    st->out_pos += n;
    return (ssize_t)n;
}

/* The response is gone (sent, or the client left): a job not done is
 * cancelled and its slot freed. */
static void sse_free(void *cls)
{
    sse_stream *st = cls;
    mb_serve_job_release(&st->s->queue, st->job);
    mb_serve_buf_free(&st->out);
    free(st);
}

static enum MHD_Result answer_stream(mb_serve_server *s, struct MHD_Connection *c, mb_serve_job *job)
{
    sse_stream *st = calloc(1, sizeof *st);
    if (!st) {
        mb_serve_job_release(&s->queue, job);
        return answer_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory", NULL, NULL);
    }
    st->s = s;
    st->job = job;
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, st, sse_free);
    if (!resp) {
        sse_free(st);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    enum MHD_Result r = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return r;
}

/* ---- whole answers ---- */

static enum MHD_Result answer_whole(mb_serve_server *s, struct MHD_Connection *c, mb_serve_job *job)
{
    mb_serve_queue *q = &s->queue;
    pthread_mutex_lock(&q->mu);
    while (job->state != MB_SERVE_JOB_DONE) {
        struct timespec deadline;
        deadline_after(&deadline, POLL_CLIENT_MS);
        pthread_cond_timedwait(&job->changed, &q->mu, &deadline);
        if (job->state != MB_SERVE_JOB_DONE && client_gone(c)) {
            pthread_mutex_unlock(&q->mu);
            mb_serve_job_release(q, job); /* cancels it */
            return MHD_NO;
        }
    }
    pthread_mutex_unlock(&q->mu);
    /* Done: the generator no longer writes the job. */
    enum MHD_Result r;
    if (job->finish == MB_SERVE_FINISH_ERROR || job->cancelled) {
        int stopping = job->cancelled;
        r = answer_error(c, stopping ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_INTERNAL_SERVER_ERROR,
                         job->error[0] ? job->error : "generation cancelled", NULL, NULL);
    } else {
        mb_serve_buf b = {0};
        mb_serve_reply_complete(&b, s, job);
        r = answer_buf(c, MHD_HTTP_OK, "application/json", &b);
    }
    mb_serve_job_release(q, job);
    return r;
}

/* ---- POST routes ---- */

static enum MHD_Result answer_generation(mb_serve_server *s, struct MHD_Connection *c, request_ctx *ctx)
{
    if (ctx->too_big) {
        char msg[128];
        snprintf(msg, sizeof msg, "the request body is larger than %llu bytes (--max-body)",
                 (unsigned long long)s->max_body_bytes);
        return answer_error(c, MHD_HTTP_CONTENT_TOO_LARGE, msg, NULL, "request_too_large");
    }
    if (ctx->body.failed) return answer_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory", NULL, NULL);
    mb_serve_request req;
    mb_serve_error err;
    mb_serve_kind kind = ctx->r == ROUTE_CHAT ? MB_SERVE_KIND_CHAT : MB_SERVE_KIND_COMPLETION;
    mb_status st = mb_serve_request_parse(kind, ctx->body.data ? ctx->body.data : "", ctx->body.len, &req, &err);
    if (st != MB_STATUS_OK)
        return answer_error(c, st == MB_STATUS_NOMEM ? 500 : MHD_HTTP_BAD_REQUEST, err.message, err.param, err.code);
    mb_serve_job *job = NULL;
    int http = mb_serve_job_prepare(s, &req, &job, &err);
    if (http != 0) return answer_error(c, (unsigned)http, err.message, err.param, err.code);
    st = mb_serve_queue_submit(&s->queue, job);
    if (st != MB_STATUS_OK) {
        mb_serve_job_release(&s->queue, job);
        return answer_error(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                            st == MB_STATUS_FULL ? "too many requests are waiting: try again later (--queue-max)"
                                                 : "the server is shutting down",
                            NULL, st == MB_STATUS_FULL ? "queue_full" : "shutting_down");
    }
    return job->req.stream ? answer_stream(s, c, job) : answer_whole(s, c, job);
}

/* The first call for a request: route, method, key and declared size are
 * checked before any body is read. */
static enum MHD_Result on_headers(mb_serve_server *s, struct MHD_Connection *c, const char *url,
                                  const char *method, void **con_cls)
{
    int method_ok = 0;
    route r = find_route(url, method, &method_ok);
    if (r == ROUTE_NONE) return answer_error(c, MHD_HTTP_NOT_FOUND, "no such route", NULL, "not_found");
    if (!method_ok) return answer_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed here", NULL, NULL);
    if (!authorized(s, c, r))
        return answer_error(c, MHD_HTTP_UNAUTHORIZED, "a valid API key is required (Authorization: Bearer KEY)",
                            NULL, "invalid_api_key");
    if (r != ROUTE_CHAT && r != ROUTE_COMPLETIONS) return answer_get(s, c, r);
    request_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return MHD_NO;
    ctx->r = r;
    const char *len = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (len && strtoull(len, NULL, 10) > s->max_body_bytes) ctx->too_big = 1;
    *con_cls = ctx;
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_bytes, void **con_cls)
{
    mb_serve_server *s = cls;
    (void)version;
    request_ctx *ctx = *con_cls;
    if (!ctx) return on_headers(s, c, url, method, con_cls);
    if (*upload_bytes) {
        if (ctx->too_big || ctx->body.len + *upload_bytes > s->max_body_bytes)
            ctx->too_big = 1;
        else
            mb_serve_buf_put(&ctx->body, upload, *upload_bytes);
        *upload_bytes = 0;
        return MHD_YES;
    }
    return answer_generation(s, c, ctx);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)c, (void)toe;
    request_ctx *ctx = *con_cls;
    if (!ctx) return;
    mb_serve_buf_free(&ctx->body);
    free(ctx);
    *con_cls = NULL;
}

/* ---- the daemon ---- */

mb_status mb_serve_http_start(mb_serve_server *s, struct MHD_Daemon **out, char *err, size_t err_cap)
{
    const char *host = s->opt->host ? s->opt->host : "127.0.0.1";
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    int gai = getaddrinfo(host, NULL, &hints, &ai);
    if (gai != 0) {
        snprintf(err, err_cap, "--host %s: %s", host, gai_strerror(gai));
        return MB_STATUS_CONFIG;
    }
    struct sockaddr_storage addr;
    memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    int v6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);
    uint16_t port = (uint16_t)s->opt->port;
    if (v6)
        ((struct sockaddr_in6 *)&addr)->sin6_port = htons(port);
    else
        ((struct sockaddr_in *)&addr)->sin_port = htons(port);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | (v6 ? MHD_USE_IPv6 : 0);
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_CONNECTION_LIMIT, (unsigned)MAX_CONNECTIONS,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S, MHD_OPTION_END);
    if (!d) {
        snprintf(err, err_cap, "cannot listen on %s port %u: %s", host, (unsigned)port, strerror(errno));
        return MB_STATUS_IO;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    fprintf(stderr, "moe-broker: serving %s on http://%s%s%s:%u/v1 (%s)\n", s->model_name, v6 ? "[" : "", host,
            v6 ? "]" : "", info ? (unsigned)info->port : (unsigned)port,
            s->opt->api_key ? "API key required" : "no API key");
    *out = d;
    return MB_STATUS_OK;
}

void mb_serve_http_stop(struct MHD_Daemon *d)
{
    if (d) MHD_stop_daemon(d);
}
