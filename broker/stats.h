/* IPC statistics: counters per backend and phase (and optionally per layer)
 * for every dispatch call, per-step timing with an optional JSON-lines log,
 * and the reports (a human table, a JSON file). Recording is built for the
 * dispatch hot path: all storage is allocated at create, and a record is a
 * few plain additions, with no lock, syscall or allocation.
 *
 * Threading: one writer. Only the single dispatch thread records; reports,
 * getters and reset run on that thread, or after it has stopped (joined).
 * Timestamps are the caller's (clock_gettime(CLOCK_MONOTONIC) differences). */
#ifndef MB_BROKER_STATS_H
#define MB_BROKER_STATS_H

#include <stdint.h>
#include <stdio.h>

#include "protocol/status.h"

typedef enum {
    MB_STATS_PHASE_PREFILL = 0,
    MB_STATS_PHASE_DECODE = 1,
    MB_STATS_PHASE_COUNT_
} mb_stats_phase;

/* The per-call quantities, in one list so that the structs, the additions and
 * the JSON keys cannot drift apart. X(field, description). */
#define MB_STATS_CALL_FIELDS(X)                                                                    \
    X(tokens, "tokens sent")                                                                       \
    X(pairs, "token-expert pairs")                                                                 \
    X(bytes_sent, "bytes the coordinator sent")                                                    \
    X(bytes_received, "bytes the coordinator received")                                            \
    X(pack_ns, "gathering and encoding the request")                                               \
    X(send_ns, "handing the request to the transport")                                             \
    X(wait_ns, "waiting for the reply")                                                            \
    X(unpack_ns, "decoding and scattering the reply")                                              \
    X(worker_compute_ns, "expert compute, as the worker reports it")                               \
    X(worker_decode_ns, "request decoding in the worker")                                          \
    X(worker_encode_ns, "reply encoding in the worker")

/* One dispatch call to one backend, filled by the caller. */
typedef struct {
#define MB_STATS_FIELD_(name, doc) uint64_t name;
    MB_STATS_CALL_FIELDS(MB_STATS_FIELD_)
#undef MB_STATS_FIELD_
} mb_stats_call;

/* Sums over calls; calls counts them. */
typedef struct {
    uint64_t calls;
#define MB_STATS_FIELD_(name, doc) uint64_t name;
    MB_STATS_CALL_FIELDS(MB_STATS_FIELD_)
#undef MB_STATS_FIELD_
} mb_stats_counters;

/* Per-phase forward-step totals (mb_stats_record_step). */
typedef struct {
    uint64_t count;       /* steps */
    uint64_t tokens;      /* tokens over those steps */
    uint64_t time_ns;     /* step wall time */
    uint64_t dispatch_ns; /* time inside expert dispatch */
    uint64_t wait_ns;     /* time the dispatcher waited on workers */
    uint64_t critical_ns; /* per dispatch call, the slowest backend's expert compute (a compute
                             time): dispatch_ns - critical_ns is the IPC on the critical path */
    uint64_t device_ns;   /* the coordinator's GPU busy (CUDA events; its waits for the experts excluded; 0 on the CPU) */
} mb_stats_steps;

/* The IPC on the critical path of steps that spent dispatch_ns in dispatch
 * calls whose slowest backends computed critical_ns (as mb_stats_steps
 * holds them): the difference, 0 if critical is the larger. */
static inline uint64_t mb_stats_crit_ipc_ns(uint64_t dispatch_ns, uint64_t critical_ns)
{
    return dispatch_ns > critical_ns ? dispatch_ns - critical_ns : 0;
}

typedef struct mb_stats mb_stats;

/* Most backends and layers a stats object holds. */
#define MB_STATS_MAX_BACKENDS 1024u
#define MB_STATS_MAX_LAYERS 4096u

/* Allocates all counters: n_backends (1..MB_STATS_MAX_BACKENDS) with names
 * (copied; names or any entry may be NULL for "b<i>"), and when per_layer,
 * n_layers (1..MB_STATS_MAX_LAYERS) per backend. Errors:
 * MB_STATUS_INVALID_ARG (counts out of range, out NULL), MB_STATUS_NOMEM.
 * *out is written only on success; release with mb_stats_destroy. */
mb_status mb_stats_create(uint32_t n_backends, const char *const names[], uint32_t n_layers,
                          int per_layer, mb_stats **out);

/* Closes the step-timing file (ignoring its errors; call
 * mb_stats_close_step_timing first to see them) and frees everything.
 * NULL is a no-op. */
void mb_stats_destroy(mb_stats *s);

/* Zeroes every counter and step total (e.g. after warm-up). Keeps names,
 * config and the step-timing file, whose step numbers go on. */
void mb_stats_reset(mb_stats *s);

/* Hot path: adds one call to backend's phase totals and, when per-layer, to
 * the layer's. s == NULL (statistics off) is a no-op returning OK. Returns
 * MB_STATUS_INVALID_ARG and records nothing for a backend, phase or (when
 * per-layer) layer out of range, or c NULL. Cannot block; no allocation. */
mb_status mb_stats_record_call(mb_stats *s, uint32_t backend, uint32_t layer, mb_stats_phase phase,
                               const mb_stats_call *c);

/* Adds one forward step to phase's totals (the times as
 * mb_dispatch_take_times gives them) and, when a step-timing file is open,
 * appends one JSON line to its stdio buffer (no flush per line):
 * {"step":N,"phase":"prefill","tokens":T,"step_ms":..,"dispatch_ms":..,"wait_ms":..,"crit_ipc_ms":..}
 * where crit_ipc_ms is dispatch less critical (the IPC on the critical path).
 * N counts steps from 0 over both phases. s == NULL is a no-op returning OK;
 * MB_STATUS_INVALID_ARG for a bad phase. A write error surfaces at
 * mb_stats_close_step_timing. */
mb_status mb_stats_record_step(mb_stats *s, mb_stats_phase phase, uint64_t n_tokens,
                               uint64_t step_ns, uint64_t dispatch_ns, uint64_t wait_ns,
                               uint64_t critical_ns);

/* Adds the coordinator's own device time (CUDA events, read after the
 * step) to phase's totals. s == NULL is a no-op; INVALID_ARG for a bad
 * phase. */
mb_status mb_stats_record_device(mb_stats *s, mb_stats_phase phase, uint64_t device_ns);

/* Opens (truncates) path for the per-step JSON lines; "-" is stdout. A file
 * already open is closed first. Errors: MB_STATUS_IO (with errno),
 * MB_STATUS_INVALID_ARG. */
mb_status mb_stats_open_step_timing(mb_stats *s, const char *path);

/* Flushes and closes the step-timing file. Returns MB_STATUS_IO if any line
 * failed to reach it; OK when none was open. */
mb_status mb_stats_close_step_timing(mb_stats *s);

/* Adds or replaces a "config" entry of the JSON report (a string, or an
 * integer for the _int form): run settings worth keeping next to the
 * numbers. Not for the hot path: allocates. Errors: MB_STATUS_INVALID_ARG,
 * MB_STATUS_NOMEM. */
mb_status mb_stats_set_config(mb_stats *s, const char *key, const char *value);

/* Something that happened to a backend mid-run (not on the hot path): a
 * worker lost ("worker_lost": detail says how, moved_to where its experts
 * went) or back ("worker_rejoined"). Kept in order with the time since
 * creation and the step it happened in; listed under the table and in the
 * JSON's "events". NOMEM; INVALID_ARG. */
typedef struct {
    const char *event;    /* "worker_lost", "worker_rejoined" */
    uint32_t backend;     /* index, as in the table */
    const char *detail;   /* may be NULL */
    const char *moved_to; /* may be NULL */
    int phase;            /* mb_stats_phase of the step, -1 between steps */
    int32_t layer;        /* -1 when not in a layer */
    double recover_ms;    /* time spent rerouting / reloading */
} mb_stats_event;

mb_status mb_stats_record_event(mb_stats *s, const mb_stats_event *e);

/* Events recorded so far with that event name. */
uint32_t mb_stats_count_events(const mb_stats *s, const char *event);
mb_status mb_stats_set_config_int(mb_stats *s, const char *key, int64_t value);

/* Routing counts: how many (token, expert) pairs the router sent to each
 * expert of each layer, the measurement a later run's --hotness reads
 * back (the JSON report's "routing" member). Track allocates the counts
 * (not on the hot path; a second call replaces them); group, when not
 * NULL, is [n_layers][n_experts] backend indices (the backend whose
 * experts each is, copied) so the reports can sum each backend's share.
 * Record is the hot path: adds one per id of the layer (ids outside
 * 0..n_experts-1 are skipped), no allocation; a no-op when s is NULL or
 * nothing is tracked. INVALID_ARG; NOMEM. */
mb_status mb_stats_track_routing(mb_stats *s, uint32_t n_layers, uint32_t n_experts, const uint16_t *group);
mb_status mb_stats_record_routing(mb_stats *s, uint32_t layer, const int32_t *expert_ids, size_t n_ids);
/* As mb_stats_record_routing, from counts already made: counts[e] pairs
 * routed to expert e of layer (n_experts of them; the GPU coordinator's
 * local experts count on the device). */
mb_status mb_stats_add_routed(mb_stats *s, uint32_t layer, const uint64_t *counts);

/* Pairs routed to (layer, expert) so far; 0 when not tracked or out of
 * range. */
uint64_t mb_stats_routed(const mb_stats *s, uint32_t layer, uint32_t expert);

/* Pairs routed to the experts the group array of mb_stats_track_routing
 * gives backend; 0 without one. */
uint64_t mb_stats_routed_to_group(const mb_stats *s, uint32_t backend);

/* One worker's experts and their copies (--replicas), as placed at start:
 * listed under the table with this run's share of routed pairs, and in the
 * JSON's "replicas". Not for the hot path. INVALID_ARG; NOMEM. */
typedef struct {
    uint32_t backend;       /* whose experts: index, as in the table */
    uint32_t experts;       /* how many */
    int32_t rank;           /* when its copies were chosen, 0 first; -1: never (in-process, none placed) */
    int hotness_known;      /* hotness_pairs comes from a --hotness file */
    uint64_t hotness_pairs; /* the routed pairs that file gave these experts */
    uint32_t wanted;        /* copies --replicas asked for */
    uint32_t n_copies;
    const uint32_t *copies; /* [n_copies] backend indices holding a copy */
    const char *short_why;  /* why fewer than wanted: "memory", "workers"; NULL: none missing */
    const char *detail;     /* one line saying it all (mb_placement_describe_replicas) */
} mb_stats_replica;

mb_status mb_stats_record_replica(mb_stats *s, const mb_stats_replica *r);

/* Readers. Each writes *out only on success; MB_STATUS_INVALID_ARG for an
 * index out of range, MB_STATUS_UNSUPPORTED for a layer without per-layer
 * statistics. */
uint32_t mb_stats_n_backends(const mb_stats *s);
uint32_t mb_stats_n_layers(const mb_stats *s); /* 0 unless per-layer */
const char *mb_stats_backend_name(const mb_stats *s, uint32_t backend);
mb_status mb_stats_get(const mb_stats *s, uint32_t backend, mb_stats_phase phase,
                       mb_stats_counters *out);
mb_status mb_stats_get_layer(const mb_stats *s, uint32_t backend, uint32_t layer,
                             mb_stats_phase phase, mb_stats_counters *out);
mb_status mb_stats_get_steps(const mb_stats *s, mb_stats_phase phase, mb_stats_steps *out);

/* "prefill", "decode"; "?" otherwise. */
const char *mb_stats_phase_name(int phase);

/* Prints the human table: a row per backend and phase with calls, tokens,
 * MiB sent and received, and pack/send/wait/unpack/worker-compute ms; per
 * phase, step time, dispatch and wait time, the IPC on the critical path
 * (dispatch less each call's slowest backend's compute) and its share of the
 * step time ("crit ipc"), the IPC time (pack+send+unpack+(wait-worker)
 * summed over backends), its ratio to the step time ("ipc/step": above 1x when backends
 * overlap) and the coordinator's pack+send+unpack as a true share of the
 * step time ("coord ipc"); and,
 * when per-layer, a row per layer and phase summed over backends. Rows with
 * no calls are left out. Errors: MB_STATUS_INVALID_ARG, MB_STATUS_IO. */
mb_status mb_stats_print_table(const mb_stats *s, FILE *f);

/* Writes the JSON report to path ("-" = stdout):
 * {"backends":[{"name":..,"prefill":{"calls":..,"tokens":.., ...every
 *   mb_stats_call field..},"decode":{..},"layers":[{"layer":0,"prefill":{..},
 *   "decode":{..}},..] (per-layer only)}],
 *  "steps":{"prefill":{"count","tokens","time_ns","dispatch_ns","wait_ns",
 *   "critical_ns" (the slowest backend's compute per call, summed),"device_ns"},
 *   "decode":{..}}, "config":{..}, "events":[..],
 *  "routing":{"n_layers":L,"n_experts":E,"counts":[[pairs per expert]..]}
 *   (when tracked: what --hotness reads), "replicas":[{"backend":..,"name":..,
 *   "experts":..,"rank":..,"wanted":..,"copies":[names],"short":..,
 *   "hotness_pairs":..,"routed_pairs":.. (this run),"detail":..}] (when recorded)}
 * Numbers are JSON doubles: exact below 2^53. Errors: MB_STATUS_IO,
 * MB_STATUS_NOMEM, MB_STATUS_INVALID_ARG. */
mb_status mb_stats_write_json(const mb_stats *s, const char *path);

#endif
