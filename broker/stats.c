/* IPC statistics storage and recording: creation (every counter allocated up
 * front), the hot-path record functions, the step-timing JSON-lines file,
 * config entries and the readers. Reports are in stats_report.c. */
#include "broker/stats.h"
#include "broker/stats_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* stdio buffer for the step-timing file: a flush every few hundred steps. */
#define STEP_FILE_BUFFER_BYTES (64u << 10)

const char *mb_stats_phase_name(int phase)
{
    switch (phase) {
    case MB_STATS_PHASE_PREFILL:
        return "prefill";
    case MB_STATS_PHASE_DECODE:
        return "decode";
    default:
        return "?";
    }
}

mb_status mb_stats_create(uint32_t n_backends, const char *const names[], uint32_t n_layers,
                          int per_layer, mb_stats **out)
{
    if (!out || n_backends == 0 || n_backends > MB_STATS_MAX_BACKENDS ||
        (per_layer && (n_layers == 0 || n_layers > MB_STATS_MAX_LAYERS)))
        return MB_STATUS_INVALID_ARG;
    /* The limits keep every product below well under SIZE_MAX:
     * 1024 * 4096 * 2 * sizeof(mb_stats_counters) is about 800 MiB at most. */
    size_t n_totals = (size_t)n_backends * MB_STATS_PHASE_COUNT_;
    size_t n_layer_counters = per_layer ? n_totals * n_layers : 0;

    mb_stats *s = calloc(1, sizeof *s);
    if (!s) return MB_STATUS_NOMEM;
    s->n_backends = n_backends;
    s->n_layers = per_layer ? n_layers : 0;
    s->names = calloc(n_backends, sizeof *s->names);
    s->totals = calloc(n_totals, sizeof *s->totals);
    s->config = cJSON_CreateObject();
    s->events = cJSON_CreateArray();
    if (!s->names || !s->totals || !s->config || !s->events) goto nomem;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    s->created_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    if (per_layer) {
        s->layers = calloc(n_layer_counters, sizeof *s->layers);
        if (!s->layers) goto nomem;
    }
    for (uint32_t i = 0; i < n_backends; i++) {
        char fallback[16];
        const char *name = names ? names[i] : NULL;
        if (!name) {
            snprintf(fallback, sizeof fallback, "b%u", i);
            name = fallback;
        }
        s->names[i] = strdup(name);
        if (!s->names[i]) goto nomem;
    }
    *out = s;
    return MB_STATUS_OK;
nomem:
    mb_stats_destroy(s);
    return MB_STATUS_NOMEM;
}

void mb_stats_destroy(mb_stats *s)
{
    if (!s) return;
    (void)mb_stats_close_step_timing(s);
    if (s->names) {
        for (uint32_t i = 0; i < s->n_backends; i++)
            free(s->names[i]);
    }
    free(s->names);
    free(s->totals);
    free(s->layers);
    cJSON_Delete(s->config);
    cJSON_Delete(s->events);
    mb_stats_routing_free_(s);
    free(s);
}

mb_status mb_stats_record_event(mb_stats *s, const mb_stats_event *e)
{
    if (!s || !e || !e->event || e->backend >= s->n_backends) return MB_STATUS_INVALID_ARG;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    uint64_t step = s->steps[0].count + s->steps[1].count;
    cJSON *o = cJSON_CreateObject();
    int ok = o && cJSON_AddStringToObject(o, "event", e->event) &&
             cJSON_AddNumberToObject(o, "backend", e->backend) &&
             cJSON_AddStringToObject(o, "name", s->names[e->backend]) &&
             cJSON_AddNumberToObject(o, "at_s", (double)(now - s->created_ns) / 1e9) &&
             cJSON_AddNumberToObject(o, "step", (double)step) &&
             cJSON_AddStringToObject(o, "phase", e->phase >= 0 ? mb_stats_phase_name(e->phase) : "between steps") &&
             cJSON_AddNumberToObject(o, "layer", e->layer) &&
             (!e->detail || cJSON_AddStringToObject(o, "detail", e->detail)) &&
             (!e->moved_to || cJSON_AddStringToObject(o, "moved_to", e->moved_to)) &&
             cJSON_AddNumberToObject(o, "recover_ms", e->recover_ms);
    if (!ok || !cJSON_AddItemToArray(s->events, o)) {
        cJSON_Delete(o);
        return MB_STATUS_NOMEM;
    }
    return MB_STATUS_OK;
}

uint32_t mb_stats_count_events(const mb_stats *s, const char *event)
{
    uint32_t n = 0;
    const cJSON *e;
    if (!s || !event) return 0;
    cJSON_ArrayForEach(e, s->events)
    {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "event");
        if (cJSON_IsString(name) && !strcmp(name->valuestring, event)) n++;
    }
    return n;
}

void mb_stats_reset(mb_stats *s)
{
    if (!s) return;
    memset(s->totals, 0, (size_t)s->n_backends * MB_STATS_PHASE_COUNT_ * sizeof *s->totals);
    if (s->layers)
        memset(s->layers, 0,
               (size_t)s->n_backends * s->n_layers * MB_STATS_PHASE_COUNT_ * sizeof *s->layers);
    memset(s->steps, 0, sizeof s->steps);
    mb_stats_routing_reset_(s);
}

static inline void counters_add(mb_stats_counters *t, const mb_stats_call *c)
{
    t->calls++;
#define MB_STATS_ADD_(name, doc) t->name += c->name;
    MB_STATS_CALL_FIELDS(MB_STATS_ADD_)
#undef MB_STATS_ADD_
}

mb_status mb_stats_record_call(mb_stats *s, uint32_t backend, uint32_t layer, mb_stats_phase phase,
                               const mb_stats_call *c)
{
    if (!s) return MB_STATUS_OK;
    if (!c || backend >= s->n_backends || (unsigned)phase >= MB_STATS_PHASE_COUNT_ ||
        (s->layers && layer >= s->n_layers))
        return MB_STATUS_INVALID_ARG;
    counters_add(mb_stats_total_at_(s, backend, phase), c);
    if (s->layers) counters_add(mb_stats_layer_at_(s, backend, layer, phase), c);
    return MB_STATUS_OK;
}

mb_status mb_stats_record_step(mb_stats *s, mb_stats_phase phase, uint64_t n_tokens,
                               uint64_t step_ns, uint64_t dispatch_ns, uint64_t wait_ns,
                               uint64_t critical_ns)
{
    if (!s) return MB_STATUS_OK;
    if ((unsigned)phase >= MB_STATS_PHASE_COUNT_) return MB_STATUS_INVALID_ARG;
    mb_stats_steps *t = &s->steps[phase];
    t->count++;
    t->tokens += n_tokens;
    t->time_ns += step_ns;
    t->dispatch_ns += dispatch_ns;
    t->wait_ns += wait_ns;
    t->critical_ns += critical_ns;
    if (s->step_file) {
        const uint64_t ipc_ns = mb_stats_crit_ipc_ns(dispatch_ns, critical_ns);
        int n = fprintf(s->step_file,
                        "{\"step\":%llu,\"phase\":\"%s\",\"tokens\":%llu,\"step_ms\":%.6f,"
                        "\"dispatch_ms\":%.6f,\"wait_ms\":%.6f,\"crit_ipc_ms\":%.6f}\n",
                        (unsigned long long)s->step_index, mb_stats_phase_name(phase),
                        (unsigned long long)n_tokens, (double)step_ns / 1e6,
                        (double)dispatch_ns / 1e6, (double)wait_ns / 1e6, (double)ipc_ns / 1e6);
        if (n < 0) s->step_file_error = 1;
    }
    s->step_index++;
    return MB_STATUS_OK;
}

mb_status mb_stats_record_device(mb_stats *s, mb_stats_phase phase, uint64_t device_ns)
{
    if (!s) return MB_STATUS_OK;
    if ((unsigned)phase >= MB_STATS_PHASE_COUNT_) return MB_STATUS_INVALID_ARG;
    s->steps[phase].device_ns += device_ns;
    return MB_STATUS_OK;
}

mb_status mb_stats_open_step_timing(mb_stats *s, const char *path)
{
    if (!s || !path || !path[0]) return MB_STATUS_INVALID_ARG;
    (void)mb_stats_close_step_timing(s);
    if (strcmp(path, "-") == 0) {
        s->step_file = stdout;
        s->step_file_is_stdout = 1;
        return MB_STATUS_OK;
    }
    FILE *f = fopen(path, "w");
    if (!f) return MB_STATUS_IO;
    /* Full buffering in a buffer of our own (glibc ignores the size when
     * setvbuf gets NULL): one write(2) per 64 KiB, not per line. Without the
     * buffer stdio's default one still works, only with more writes. */
    s->step_buf = malloc(STEP_FILE_BUFFER_BYTES);
    if (s->step_buf) (void)setvbuf(f, s->step_buf, _IOFBF, STEP_FILE_BUFFER_BYTES);
    s->step_file = f;
    s->step_file_is_stdout = 0;
    s->step_file_error = 0;
    return MB_STATUS_OK;
}

mb_status mb_stats_close_step_timing(mb_stats *s)
{
    if (!s || !s->step_file) return MB_STATUS_OK;
    int failed = s->step_file_error;
    if (s->step_file_is_stdout)
        failed |= fflush(s->step_file) != 0;
    else
        failed |= fclose(s->step_file) != 0;
    free(s->step_buf); /* only after fclose, which may still write from it */
    s->step_buf = NULL;
    s->step_file = NULL;
    s->step_file_is_stdout = 0;
    s->step_file_error = 0;
    return failed ? MB_STATUS_IO : MB_STATUS_OK;
}

static mb_status config_put(mb_stats *s, const char *key, cJSON *item)
{
    if (!item) return MB_STATUS_NOMEM;
    int ok = cJSON_GetObjectItemCaseSensitive(s->config, key)
                 ? cJSON_ReplaceItemInObjectCaseSensitive(s->config, key, item)
                 : cJSON_AddItemToObject(s->config, key, item);
    if (!ok) {
        cJSON_Delete(item);
        return MB_STATUS_NOMEM;
    }
    return MB_STATUS_OK;
}

mb_status mb_stats_set_config(mb_stats *s, const char *key, const char *value)
{
    if (!s || !key || !value) return MB_STATUS_INVALID_ARG;
    return config_put(s, key, cJSON_CreateString(value));
}

mb_status mb_stats_set_config_int(mb_stats *s, const char *key, int64_t value)
{
    if (!s || !key) return MB_STATUS_INVALID_ARG;
    return config_put(s, key, cJSON_CreateNumber((double)value));
}

uint32_t mb_stats_n_backends(const mb_stats *s)
{
    return s ? s->n_backends : 0;
}

uint32_t mb_stats_n_layers(const mb_stats *s)
{
    return s ? s->n_layers : 0;
}

const char *mb_stats_backend_name(const mb_stats *s, uint32_t backend)
{
    return s && backend < s->n_backends ? s->names[backend] : NULL;
}

mb_status mb_stats_get(const mb_stats *s, uint32_t backend, mb_stats_phase phase,
                       mb_stats_counters *out)
{
    if (!s || !out || backend >= s->n_backends || (unsigned)phase >= MB_STATS_PHASE_COUNT_)
        return MB_STATUS_INVALID_ARG;
    *out = *mb_stats_total_at_(s, backend, phase);
    return MB_STATUS_OK;
}

mb_status mb_stats_get_layer(const mb_stats *s, uint32_t backend, uint32_t layer,
                             mb_stats_phase phase, mb_stats_counters *out)
{
    if (!s || !out || backend >= s->n_backends || (unsigned)phase >= MB_STATS_PHASE_COUNT_)
        return MB_STATUS_INVALID_ARG;
    if (!s->layers) return MB_STATUS_UNSUPPORTED;
    if (layer >= s->n_layers) return MB_STATUS_INVALID_ARG;
    *out = *mb_stats_layer_at_(s, backend, layer, phase);
    return MB_STATUS_OK;
}

mb_status mb_stats_get_steps(const mb_stats *s, mb_stats_phase phase, mb_stats_steps *out)
{
    if (!s || !out || (unsigned)phase >= MB_STATS_PHASE_COUNT_) return MB_STATUS_INVALID_ARG;
    *out = s->steps[phase];
    return MB_STATUS_OK;
}
