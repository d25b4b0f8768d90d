/* GET /metrics: the queue, the requests and tokens served, and the IPC
 * statistics of every backend and phase, in Prometheus' text format. The
 * statistics are read under the session lock, between forward steps, since
 * only the generation thread writes them. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "broker/serve/serve_internal.h"

static void metric_head(mb_serve_buf *b, const char *name, const char *type, const char *help)
{
    mb_serve_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metric(mb_serve_buf *b, const char *name, const char *type, const char *help, double value)
{
    metric_head(b, name, type, help);
    mb_serve_buf_printf(b, "%s %.15g\n", name, value);
}

/* A label value with \, " and newlines escaped, as the format asks. */
static void put_label(mb_serve_buf *b, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            mb_serve_buf_printf(b, "\\%c", *v);
        else if (*v == '\n')
            mb_serve_buf_put(b, "\\n", 2);
        else
            mb_serve_buf_put(b, v, 1);
    }
}

static void queue_metrics(mb_serve_buf *b, mb_serve_server *s)
{
    mb_serve_queue *q = &s->queue;
    pthread_mutex_lock(&q->mu);
    mb_serve_queue c = *q; /* the numbers at one instant */
    pthread_mutex_unlock(&q->mu);
    metric(b, "mb_queue_length", "gauge", "Requests waiting for the generation slot.", c.n_queued);
    metric(b, "mb_queue_limit", "gauge", "Most requests that may wait (--queue-max); more get 503.", c.limit);
    metric(b, "mb_generation_slots", "gauge", "Generations run at once (one sequence, one KV cache).", 1);
    metric(b, "mb_requests_running", "gauge", "Requests generating now.", c.running ? 1 : 0);
    metric(b, "mb_context_limit_tokens", "gauge", "Positions of the KV cache (--max-ctx).", s->max_ctx);
    metric(b, "mb_max_body_bytes", "gauge", "Largest request body accepted (--max-body); more get 413.",
           (double)s->max_body_bytes);
    metric_head(b, "mb_requests_total", "counter", "Generation requests by outcome.");
    mb_serve_buf_printf(b, "mb_requests_total{outcome=\"completed\"} %llu\n", (unsigned long long)c.n_completed);
    mb_serve_buf_printf(b, "mb_requests_total{outcome=\"cancelled\"} %llu\n", (unsigned long long)c.n_cancelled);
    mb_serve_buf_printf(b, "mb_requests_total{outcome=\"failed\"} %llu\n", (unsigned long long)c.n_failed);
    mb_serve_buf_printf(b, "mb_requests_total{outcome=\"queue_full\"} %llu\n",
                        (unsigned long long)c.n_rejected_full);
    metric(b, "mb_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.", (double)c.prompt_tokens);
    metric(b, "mb_prompt_tokens_cached_total", "counter", "Prompt tokens found in the KV cache, not recomputed.",
           (double)c.cached_tokens);
    metric(b, "mb_completion_tokens_total", "counter", "Tokens generated.", (double)c.completion_tokens);
}

/* One counter family over every backend and phase. Fields in nanoseconds
 * are reported in seconds, as Prometheus names them. */
static void ipc_family(mb_serve_buf *b, const mb_stats *st, const char *field, size_t offset, const char *help)
{
    size_t n = strlen(field);
    int ns = n > 3 && strcmp(field + n - 3, "_ns") == 0;
    char name[96];
    snprintf(name, sizeof name, "mb_ipc_%.*s%s_total", (int)(ns ? n - 3 : n), field, ns ? "_seconds" : "");
    metric_head(b, name, "counter", help);
    for (uint32_t be = 0; be < mb_stats_n_backends(st); be++) {
        for (int ph = 0; ph < MB_STATS_PHASE_COUNT_; ph++) {
            mb_stats_counters c;
            if (mb_stats_get(st, be, (mb_stats_phase)ph, &c) != MB_STATUS_OK) continue;
            uint64_t v = *(const uint64_t *)((const char *)&c + offset);
            mb_serve_buf_printf(b, "%s{backend=\"", name);
            put_label(b, mb_stats_backend_name(st, be));
            mb_serve_buf_printf(b, "\",phase=\"%s\"} ", mb_stats_phase_name(ph));
            if (ns)
                mb_serve_buf_printf(b, "%.9f\n", (double)v / 1e9);
            else
                mb_serve_buf_printf(b, "%llu\n", (unsigned long long)v);
        }
    }
}

static void ipc_metrics(mb_serve_buf *b, const mb_stats *st)
{
    ipc_family(b, st, "calls", offsetof(mb_stats_counters, calls), "Dispatch calls to the backend.");
#define MB_SERVE_IPC_FAMILY_(field, doc) ipc_family(b, st, #field, offsetof(mb_stats_counters, field), doc ".");
    MB_STATS_CALL_FIELDS(MB_SERVE_IPC_FAMILY_)
#undef MB_SERVE_IPC_FAMILY_
    metric_head(b, "mb_steps_total", "counter", "Forward steps by phase.");
    mb_stats_steps steps[MB_STATS_PHASE_COUNT_];
    for (int ph = 0; ph < MB_STATS_PHASE_COUNT_; ph++) {
        memset(&steps[ph], 0, sizeof steps[ph]);
        mb_stats_get_steps(st, (mb_stats_phase)ph, &steps[ph]);
        mb_serve_buf_printf(b, "mb_steps_total{phase=\"%s\"} %llu\n", mb_stats_phase_name(ph),
                            (unsigned long long)steps[ph].count);
    }
    metric_head(b, "mb_step_tokens_total", "counter", "Tokens through forward steps by phase.");
    for (int ph = 0; ph < MB_STATS_PHASE_COUNT_; ph++)
        mb_serve_buf_printf(b, "mb_step_tokens_total{phase=\"%s\"} %llu\n", mb_stats_phase_name(ph),
                            (unsigned long long)steps[ph].tokens);
    metric_head(b, "mb_step_seconds_total", "counter", "Wall time of forward steps by phase.");
    for (int ph = 0; ph < MB_STATS_PHASE_COUNT_; ph++)
        mb_serve_buf_printf(b, "mb_step_seconds_total{phase=\"%s\"} %.9f\n", mb_stats_phase_name(ph),
                            (double)steps[ph].time_ns / 1e9);
}

void mb_serve_metrics(mb_serve_buf *b, mb_serve_server *s)
{
    queue_metrics(b, s);
    pthread_mutex_lock(&s->session_mu);
    ipc_metrics(b, s->sess->stats);
    pthread_mutex_unlock(&s->session_mu);
}
