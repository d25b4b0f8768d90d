/* Private to the stats module (stats.c, stats_report.c): the layout of an
 * mb_stats object. Counters are flat arrays indexed by
 * [backend][phase] and [backend][layer][phase] so a record touches two
 * contiguous structs. */
#ifndef MB_BROKER_STATS_IMPL_H
#define MB_BROKER_STATS_IMPL_H

#include <stdio.h>

#include <cjson/cJSON.h>

#include "broker/stats.h"

struct mb_stats {
    uint32_t n_backends;
    uint32_t n_layers;         /* 0 unless per-layer */
    char **names;              /* [n_backends], owned */
    mb_stats_counters *totals; /* [n_backends][MB_STATS_PHASE_COUNT_] */
    mb_stats_counters *layers; /* [n_backends][n_layers][MB_STATS_PHASE_COUNT_] or NULL */
    mb_stats_steps steps[MB_STATS_PHASE_COUNT_];
    uint64_t step_index;     /* next "step" number in the step-timing file */
    FILE *step_file;         /* NULL when closed */
    int step_file_is_stdout; /* "-": flushed, never closed */
    char *step_buf;          /* its stdio buffer, owned; NULL for stdout */
    int step_file_error;     /* a line failed to write */
    cJSON *config;           /* object of mb_stats_set_config entries */
    cJSON *events;           /* array of mb_stats_record_event entries */
    uint64_t created_ns;     /* monotonic, for event times */
    /* Routing counts (stats_routing.c); NULL until tracked. */
    uint32_t route_layers, route_experts;
    uint64_t *routed;        /* [route_layers][route_experts] */
    uint16_t *route_group;   /* [route_layers][route_experts] backend indices, or NULL */
    cJSON *replicas;         /* array of mb_stats_record_replica entries, or NULL */
};

/* stats_routing.c's share of mb_stats_destroy, mb_stats_reset and the
 * reports. */
void mb_stats_routing_free_(mb_stats *s);
void mb_stats_routing_reset_(mb_stats *s);
void mb_stats_routing_print_(const mb_stats *s, FILE *f);
/* Adds "routing" and "replicas" to the JSON report's root; sets *failed on
 * an allocation failure. */
void mb_stats_routing_json_(const mb_stats *s, cJSON *root, int *failed);

/* The arrays are the object's own, so a const object still yields writable
 * counters; only stats.c's record functions write through them. */
static inline mb_stats_counters *mb_stats_total_at_(const mb_stats *s, uint32_t backend, int phase)
{
    return &s->totals[(size_t)backend * MB_STATS_PHASE_COUNT_ + (size_t)phase];
}

static inline mb_stats_counters *mb_stats_layer_at_(const mb_stats *s, uint32_t backend,
                                                    uint32_t layer, int phase)
{
    return &s->layers[((size_t)backend * s->n_layers + layer) * MB_STATS_PHASE_COUNT_ +
                      (size_t)phase];
}

#endif
