/* IPC statistics reports: the human table (per backend and phase, the step
 * summary with the IPC time and the coordinator's IPC share, per layer) and the JSON file built with cJSON.
 * Both only read the counters, so they run after the dispatch thread stops
 * or on it. */
#include "broker/stats.h"
#include "broker/stats_impl.h"

#include <string.h>

#define NS_PER_MS 1e6
#define BYTES_PER_MIB (1024.0 * 1024.0)

static double ms(uint64_t ns)
{
    return (double)ns / NS_PER_MS;
}

static double mib(uint64_t bytes)
{
    return (double)bytes / BYTES_PER_MIB;
}

/* Time these calls spent on IPC rather than on expert work: the
 * coordinator's packing, sending and unpacking, plus the part of each wait
 * the worker did not spend decoding, computing or encoding (transfer,
 * wake-ups, queueing). */
static uint64_t ipc_ns(const mb_stats_counters *c)
{
    uint64_t worker = c->worker_decode_ns + c->worker_compute_ns + c->worker_encode_ns;
    uint64_t idle = c->wait_ns > worker ? c->wait_ns - worker : 0;
    return c->pack_ns + c->send_ns + c->unpack_ns + idle;
}

static void counters_accumulate(mb_stats_counters *t, const mb_stats_counters *c)
{
    t->calls += c->calls;
#define MB_STATS_ACC_(name, doc) t->name += c->name;
    MB_STATS_CALL_FIELDS(MB_STATS_ACC_)
#undef MB_STATS_ACC_
}

static void print_backends(const mb_stats *s, FILE *f)
{
    int w = (int)strlen("backend");
    for (uint32_t b = 0; b < s->n_backends; b++) {
        int len = (int)strlen(s->names[b]);
        w = len > w ? len : w;
    }
    fprintf(f, "%-*s  %-7s %8s %10s %10s %10s %10s %10s %10s %10s %10s %10s\n", w, "backend",
            "phase", "calls", "tokens", "pairs", "MiB sent", "MiB recv", "pack ms", "send ms",
            "wait ms", "unpack ms", "compute ms");
    int rows = 0;
    for (uint32_t b = 0; b < s->n_backends; b++) {
        for (int p = 0; p < MB_STATS_PHASE_COUNT_; p++) {
            const mb_stats_counters *c = mb_stats_total_at_(s, b, p);
            if (c->calls == 0) continue;
            rows++;
            fprintf(f,
                    "%-*s  %-7s %8llu %10llu %10llu %10.2f %10.2f %10.3f %10.3f %10.3f %10.3f "
                    "%10.3f\n",
                    w, s->names[b], mb_stats_phase_name(p), (unsigned long long)c->calls,
                    (unsigned long long)c->tokens, (unsigned long long)c->pairs, mib(c->bytes_sent),
                    mib(c->bytes_received), ms(c->pack_ns), ms(c->send_ns), ms(c->wait_ns),
                    ms(c->unpack_ns), ms(c->worker_compute_ns));
        }
    }
    if (rows == 0) fprintf(f, "(no dispatch calls recorded)\n");
}

/* Per phase: the IPC on the steps' critical path (each dispatch call's
 * wall time less its slowest backend's compute) as a share of the step
 * time; the IPC summed over backends against the step time (a ratio, not a
 * share: backends wait at the same time, so it passes 1 when their IPC
 * overlaps); and the coordinator's own IPC work (pack + send + unpack, done
 * one call after another on the dispatch thread) as a share of the step
 * time. */
static void print_steps(const mb_stats *s, FILE *f)
{
    fprintf(f, "\n%-7s %8s %10s %12s %12s %12s %12s %9s %12s %9s %10s\n", "phase", "steps",
            "tokens", "step ms", "dispatch ms", "wait ms", "crit ipc ms", "crit ipc", "ipc ms",
            "ipc/step", "coord ipc");
    for (int p = 0; p < MB_STATS_PHASE_COUNT_; p++) {
        const mb_stats_steps *t = &s->steps[p];
        uint64_t ipc = 0, coord = 0;
        for (uint32_t b = 0; b < s->n_backends; b++) {
            const mb_stats_counters *c = mb_stats_total_at_(s, b, p);
            ipc += ipc_ns(c);
            coord += c->pack_ns + c->send_ns + c->unpack_ns;
        }
        if (t->count == 0 && ipc == 0) continue;
        const uint64_t crit = mb_stats_crit_ipc_ns(t->dispatch_ns, t->critical_ns);
        char ratio[16] = "-", share[16] = "-", crit_share[16] = "-";
        if (t->time_ns > 0) {
            snprintf(ratio, sizeof ratio, "%.2fx", (double)ipc / (double)t->time_ns);
            double frac = (double)coord / (double)t->time_ns;
            snprintf(share, sizeof share, "%.1f%%", 100.0 * (frac < 1.0 ? frac : 1.0));
            frac = (double)crit / (double)t->time_ns;
            snprintf(crit_share, sizeof crit_share, "%.2f%%", 100.0 * (frac < 1.0 ? frac : 1.0));
        }
        fprintf(f, "%-7s %8llu %10llu %12.3f %12.3f %12.3f %12.3f %9s %12.3f %9s %10s\n",
                mb_stats_phase_name(p), (unsigned long long)t->count, (unsigned long long)t->tokens,
                ms(t->time_ns), ms(t->dispatch_ns), ms(t->wait_ns), ms(crit), crit_share, ms(ipc),
                ratio, share);
    }
    for (int p = 0; p < MB_STATS_PHASE_COUNT_; p++) {
        const mb_stats_steps *t = &s->steps[p];
        if (t->device_ns && t->time_ns)
            fprintf(f, "%-7s coordinator GPU busy %.3f ms (%.1f%% of step time)\n", mb_stats_phase_name(p),
                    ms(t->device_ns), 100.0 * (double)t->device_ns / (double)t->time_ns);
    }
    fprintf(f, "(crit ipc ms = dispatch ms - each call's slowest backend's compute: the IPC\n"
               " on the step's critical path; crit ipc = its share of step time;\n"
               " ipc ms = pack + send + unpack + (wait - worker time), summed over backends;\n"
               " ipc/step = ipc ms / step ms, above 1x when backends' IPC overlaps;\n"
               " coord ipc = the share of step time the coordinator spent packing, sending\n"
               " and unpacking)\n");
}

static void print_layers(const mb_stats *s, FILE *f)
{
    fprintf(f, "\nper layer, summed over backends\n%5s  %-7s %8s %10s %10s %10s %10s %10s %10s\n",
            "layer", "phase", "calls", "tokens", "pairs", "MiB sent", "MiB recv", "wait ms",
            "ipc ms");
    for (uint32_t l = 0; l < s->n_layers; l++) {
        for (int p = 0; p < MB_STATS_PHASE_COUNT_; p++) {
            mb_stats_counters sum;
            memset(&sum, 0, sizeof sum);
            for (uint32_t b = 0; b < s->n_backends; b++)
                counters_accumulate(&sum, mb_stats_layer_at_(s, b, l, p));
            if (sum.calls == 0) continue;
            fprintf(f, "%5u  %-7s %8llu %10llu %10llu %10.2f %10.2f %10.3f %10.3f\n", l,
                    mb_stats_phase_name(p), (unsigned long long)sum.calls,
                    (unsigned long long)sum.tokens, (unsigned long long)sum.pairs,
                    mib(sum.bytes_sent), mib(sum.bytes_received), ms(sum.wait_ns),
                    ms(ipc_ns(&sum)));
        }
    }
}

mb_status mb_stats_print_table(const mb_stats *s, FILE *f)
{
    if (!s || !f) return MB_STATUS_INVALID_ARG;
    fprintf(f, "IPC statistics\n");
    print_backends(s, f);
    print_steps(s, f);
    if (s->layers) print_layers(s, f);
    mb_stats_routing_print_(s, f);
    if (cJSON_GetArraySize(s->events) > 0) fprintf(f, "\nbackend events\n");
    const cJSON *e;
    cJSON_ArrayForEach(e, s->events)
    {
        const cJSON *moved = cJSON_GetObjectItemCaseSensitive(e, "moved_to");
        const cJSON *detail = cJSON_GetObjectItemCaseSensitive(e, "detail");
        fprintf(f, "  %8.3f s  step %-5.0f %-16s %-24s %s%s%s (%.1f ms)\n",
                cJSON_GetObjectItemCaseSensitive(e, "at_s")->valuedouble,
                cJSON_GetObjectItemCaseSensitive(e, "step")->valuedouble,
                cJSON_GetObjectItemCaseSensitive(e, "event")->valuestring,
                cJSON_GetObjectItemCaseSensitive(e, "name")->valuestring,
                cJSON_IsString(detail) ? detail->valuestring : "", cJSON_IsString(moved) ? "; experts now on " : "",
                cJSON_IsString(moved) ? moved->valuestring : "",
                cJSON_GetObjectItemCaseSensitive(e, "recover_ms")->valuedouble);
    }
    return ferror(f) ? MB_STATUS_IO : MB_STATUS_OK;
}

/* ---- JSON ---- */

/* Adds a number, remembering any allocation failure in *failed so the
 * builders stay linear; cJSON keeps the parent valid either way. */
static void add_num(cJSON *o, const char *key, uint64_t v, int *failed)
{
    if (!o || !cJSON_AddNumberToObject(o, key, (double)v)) *failed = 1;
}

static cJSON *counters_json(const mb_stats_counters *c, int *failed)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        *failed = 1;
        return NULL;
    }
    add_num(o, "calls", c->calls, failed);
#define MB_STATS_JSON_(name, doc) add_num(o, #name, c->name, failed);
    MB_STATS_CALL_FIELDS(MB_STATS_JSON_)
#undef MB_STATS_JSON_
    return o;
}

/* Adds child under key; a NULL child or a failed add marks failure. */
static void add_obj(cJSON *parent, const char *key, cJSON *child, int *failed)
{
    if (!child || !cJSON_AddItemToObject(parent, key, child)) {
        cJSON_Delete(child);
        *failed = 1;
    }
}

static void add_arr(cJSON *arr, cJSON *child, int *failed)
{
    if (!child || !cJSON_AddItemToArray(arr, child)) {
        cJSON_Delete(child);
        *failed = 1;
    }
}

/* {"prefill":{..},"decode":{..}} members added to o from a phase-indexed pair. */
static void add_phases(cJSON *o, const mb_stats_counters *by_phase, int *failed)
{
    for (int p = 0; p < MB_STATS_PHASE_COUNT_; p++)
        add_obj(o, mb_stats_phase_name(p), counters_json(&by_phase[p], failed), failed);
}

static cJSON *backend_json(const mb_stats *s, uint32_t b, int *failed)
{
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "name", s->names[b])) {
        cJSON_Delete(o);
        *failed = 1;
        return NULL;
    }
    add_phases(o, mb_stats_total_at_(s, b, 0), failed);
    if (!s->layers) return o;
    cJSON *layers = cJSON_CreateArray();
    add_obj(o, "layers", layers, failed);
    for (uint32_t l = 0; layers && l < s->n_layers && !*failed; l++) {
        cJSON *lo = cJSON_CreateObject();
        add_num(lo, "layer", l, failed);
        if (lo) add_phases(lo, mb_stats_layer_at_(s, b, l, 0), failed);
        add_arr(layers, lo, failed);
    }
    return o;
}

static cJSON *steps_json(const mb_stats *s, int *failed)
{
    cJSON *o = cJSON_CreateObject();
    for (int p = 0; o && p < MB_STATS_PHASE_COUNT_; p++) {
        const mb_stats_steps *t = &s->steps[p];
        cJSON *po = cJSON_CreateObject();
        add_num(po, "count", t->count, failed);
        add_num(po, "tokens", t->tokens, failed);
        add_num(po, "time_ns", t->time_ns, failed);
        add_num(po, "dispatch_ns", t->dispatch_ns, failed);
        add_num(po, "wait_ns", t->wait_ns, failed);
        add_num(po, "critical_ns", t->critical_ns, failed);
        add_num(po, "device_ns", t->device_ns, failed);
        add_obj(o, mb_stats_phase_name(p), po, failed);
    }
    if (!o) *failed = 1;
    return o;
}

static mb_status write_text(const char *path, const char *text)
{
    int to_stdout = strcmp(path, "-") == 0;
    FILE *f = to_stdout ? stdout : fopen(path, "w");
    if (!f) return MB_STATUS_IO;
    int failed = fputs(text, f) < 0 || fputc('\n', f) == EOF;
    failed |= to_stdout ? fflush(f) != 0 : fclose(f) != 0;
    return failed ? MB_STATUS_IO : MB_STATUS_OK;
}

mb_status mb_stats_write_json(const mb_stats *s, const char *path)
{
    if (!s || !path || !path[0]) return MB_STATUS_INVALID_ARG;
    int failed = 0;
    mb_status st = MB_STATUS_NOMEM;
    char *text = NULL;
    cJSON *root = cJSON_CreateObject();
    cJSON *backends = cJSON_CreateArray();
    if (!root || !backends) {
        cJSON_Delete(backends);
        goto done;
    }
    add_obj(root, "backends", backends, &failed);
    for (uint32_t b = 0; b < s->n_backends && !failed; b++)
        add_arr(backends, backend_json(s, b, &failed), &failed);
    add_obj(root, "steps", steps_json(s, &failed), &failed);
    add_obj(root, "config", cJSON_Duplicate(s->config, 1), &failed);
    add_obj(root, "events", cJSON_Duplicate(s->events, 1), &failed);
    mb_stats_routing_json_(s, root, &failed);
    if (failed) goto done;
    text = cJSON_Print(root);
    if (!text) goto done;
    st = write_text(path, text);
done:
    cJSON_free(text);
    cJSON_Delete(root);
    return st;
}
