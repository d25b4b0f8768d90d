/* Routing counts per (layer, expert) and the replica records: the
 * measurement a later run's --hotness reads back, and what --replicas did
 * with it. Counting is on the dispatch hot path (one addition per routed
 * pair); the records and reports are not. */
#include "broker/stats.h"
#include "broker/stats_impl.h"

#include <stdlib.h>
#include <string.h>

void mb_stats_routing_free_(mb_stats *s)
{
    free(s->routed);
    free(s->route_group);
    cJSON_Delete(s->replicas);
    s->routed = NULL;
    s->route_group = NULL;
    s->replicas = NULL;
    s->route_layers = s->route_experts = 0;
}

void mb_stats_routing_reset_(mb_stats *s)
{
    if (s->routed)
        memset(s->routed, 0, (size_t)s->route_layers * s->route_experts * sizeof *s->routed);
}

mb_status mb_stats_track_routing(mb_stats *s, uint32_t n_layers, uint32_t n_experts,
                                 const uint16_t *group)
{
    if (!s || n_layers == 0 || n_experts == 0 || n_layers > MB_STATS_MAX_LAYERS ||
        n_experts > 65536)
        return MB_STATUS_INVALID_ARG;
    const size_t n = (size_t)n_layers * n_experts;
    for (size_t i = 0; group && i < n; i++)
        if (group[i] >= s->n_backends) return MB_STATUS_INVALID_ARG;
    uint64_t *routed = calloc(n, sizeof *routed);
    uint16_t *g = group ? malloc(n * sizeof *g) : NULL;
    if (!routed || (group && !g)) {
        free(routed);
        free(g);
        return MB_STATUS_NOMEM;
    }
    if (group) memcpy(g, group, n * sizeof *g);
    free(s->routed);
    free(s->route_group);
    s->routed = routed;
    s->route_group = g;
    s->route_layers = n_layers;
    s->route_experts = n_experts;
    return MB_STATUS_OK;
}

mb_status mb_stats_record_routing(mb_stats *s, uint32_t layer, const int32_t *expert_ids,
                                  size_t n_ids)
{
    if (!s || !s->routed) return MB_STATUS_OK;
    if (layer >= s->route_layers || (n_ids && !expert_ids)) return MB_STATUS_INVALID_ARG;
    uint64_t *row = s->routed + (size_t)layer * s->route_experts;
    for (size_t i = 0; i < n_ids; i++)
        if (expert_ids[i] >= 0 && (uint32_t)expert_ids[i] < s->route_experts) row[expert_ids[i]]++;
    return MB_STATUS_OK;
}

mb_status mb_stats_add_routed(mb_stats *s, uint32_t layer, const uint64_t *counts)
{
    if (!s || !s->routed) return MB_STATUS_OK;
    if (layer >= s->route_layers || !counts) return MB_STATUS_INVALID_ARG;
    uint64_t *row = s->routed + (size_t)layer * s->route_experts;
    for (uint32_t e = 0; e < s->route_experts; e++) row[e] += counts[e];
    return MB_STATUS_OK;
}

uint64_t mb_stats_routed(const mb_stats *s, uint32_t layer, uint32_t expert)
{
    if (!s || !s->routed || layer >= s->route_layers || expert >= s->route_experts) return 0;
    return s->routed[(size_t)layer * s->route_experts + expert];
}

uint64_t mb_stats_routed_to_group(const mb_stats *s, uint32_t backend)
{
    if (!s || !s->routed || !s->route_group) return 0;
    uint64_t sum = 0;
    for (size_t i = 0; i < (size_t)s->route_layers * s->route_experts; i++)
        if (s->route_group[i] == backend) sum += s->routed[i];
    return sum;
}

static uint64_t mb_stats_routed_total(const mb_stats *s)
{
    uint64_t sum = 0;
    for (size_t i = 0; s->routed && i < (size_t)s->route_layers * s->route_experts; i++)
        sum += s->routed[i];
    return sum;
}

mb_status mb_stats_record_replica(mb_stats *s, const mb_stats_replica *r)
{
    if (!s || !r || r->backend >= s->n_backends || (r->n_copies && !r->copies))
        return MB_STATUS_INVALID_ARG;
    for (uint32_t k = 0; k < r->n_copies; k++)
        if (r->copies[k] >= s->n_backends) return MB_STATUS_INVALID_ARG;
    if (!s->replicas && !(s->replicas = cJSON_CreateArray())) return MB_STATUS_NOMEM;
    cJSON *o = cJSON_CreateObject();
    cJSON *copies = cJSON_CreateArray();
    int ok = o && copies && cJSON_AddNumberToObject(o, "backend", r->backend) &&
             cJSON_AddStringToObject(o, "name", s->names[r->backend]) &&
             cJSON_AddNumberToObject(o, "experts", r->experts) &&
             cJSON_AddNumberToObject(o, "rank", r->rank) &&
             cJSON_AddNumberToObject(o, "wanted", r->wanted);
    for (uint32_t k = 0; ok && k < r->n_copies; k++) {
        cJSON *name = cJSON_CreateString(s->names[r->copies[k]]);
        ok = name && cJSON_AddItemToArray(copies, name);
        if (!ok) cJSON_Delete(name);
    }
    ok = ok && cJSON_AddItemToObject(o, "copies", copies);
    if (!ok) cJSON_Delete(copies);
    copies = NULL;
    ok = ok && (r->short_why ? cJSON_AddStringToObject(o, "short", r->short_why) != NULL
                             : cJSON_AddNullToObject(o, "short") != NULL);
    ok = ok && (!r->hotness_known ||
                cJSON_AddNumberToObject(o, "hotness_pairs", (double)r->hotness_pairs));
    ok = ok && (!r->detail || cJSON_AddStringToObject(o, "detail", r->detail));
    if (!ok || !cJSON_AddItemToArray(s->replicas, o)) {
        cJSON_Delete(o);
        return MB_STATUS_NOMEM;
    }
    return MB_STATUS_OK;
}

void mb_stats_routing_print_(const mb_stats *s, FILE *f)
{
    if (cJSON_GetArraySize(s->replicas) == 0) return;
    const cJSON *order = cJSON_GetObjectItemCaseSensitive(s->config, "replica_order");
    fprintf(f, "\nreplicas (whole copies of a worker's experts; chosen %s)\n",
            cJSON_IsString(order) ? order->valuestring : "in worker order");
    const uint64_t total = mb_stats_routed_total(s);
    const cJSON *r;
    cJSON_ArrayForEach(r, s->replicas)
    {
        const cJSON *detail = cJSON_GetObjectItemCaseSensitive(r, "detail");
        const cJSON *backend = cJSON_GetObjectItemCaseSensitive(r, "backend");
        fprintf(f, "  %s", cJSON_IsString(detail) ? detail->valuestring : "?");
        if (total && s->route_group && cJSON_IsNumber(backend))
            fprintf(f, "; this run: %.1f%% of routed pairs",
                    100.0 * (double)mb_stats_routed_to_group(s, (uint32_t)backend->valuedouble) /
                        (double)total);
        fprintf(f, "\n");
    }
}

static cJSON *mb_stats_routing_counts_json(const mb_stats *s)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *rows = cJSON_CreateArray();
    int ok = o && rows && cJSON_AddNumberToObject(o, "n_layers", s->route_layers) &&
             cJSON_AddNumberToObject(o, "n_experts", s->route_experts) &&
             cJSON_AddItemToObject(o, "counts", rows);
    if (!ok) {
        cJSON_Delete(rows);
        cJSON_Delete(o);
        return NULL;
    }
    for (uint32_t l = 0; l < s->route_layers; l++) {
        cJSON *row = cJSON_CreateArray();
        if (!row || !cJSON_AddItemToArray(rows, row)) {
            cJSON_Delete(row);
            cJSON_Delete(o);
            return NULL;
        }
        for (uint32_t e = 0; e < s->route_experts; e++) {
            cJSON *n = cJSON_CreateNumber((double)s->routed[(size_t)l * s->route_experts + e]);
            if (!n || !cJSON_AddItemToArray(row, n)) {
                cJSON_Delete(n);
                cJSON_Delete(o);
                return NULL;
            }
        }
    }
    return o;
}

void mb_stats_routing_json_(const mb_stats *s, cJSON *root, int *failed)
{
    if (s->routed) {
        cJSON *o = mb_stats_routing_counts_json(s);
        if (!o || !cJSON_AddItemToObject(root, "routing", o)) {
            cJSON_Delete(o);
            *failed = 1;
        }
    }
    if (!s->replicas) return;
    cJSON *reps = cJSON_Duplicate(s->replicas, 1);
    if (!reps || !cJSON_AddItemToObject(root, "replicas", reps)) {
        cJSON_Delete(reps);
        *failed = 1;
        return;
    }
    cJSON *r;
    cJSON_ArrayForEach(r, reps)
    {
        const cJSON *backend = cJSON_GetObjectItemCaseSensitive(r, "backend");
        if (s->route_group && cJSON_IsNumber(backend) &&
            !cJSON_AddNumberToObject(
                r, "routed_pairs",
                (double)mb_stats_routed_to_group(s, (uint32_t)backend->valuedouble)))
            *failed = 1;
    }
}
