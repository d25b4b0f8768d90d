/* Helpers the MoE benchmarks (bench_dispatch, bench_e2e) share: finding
 * moe-worker, argument parsing, emitting JSON, memory and CPU plumbing for
 * making one worker slow, synthetic routing, and JSON pieces. Nothing here knows what is
 * being measured. */
#ifndef MB_BENCH_MOE_BENCH_H
#define MB_BENCH_MOE_BENCH_H

#include <stdint.h>
#include <sys/types.h>

#include <cjson/cJSON.h>

#include "broker/stats.h"
#include "protocol/status.h"

/* Routing and activations for a run of n_total tokens per layer. */
typedef struct {
    uint32_t n_total, top_k, d_model;
    int32_t *ids; /* [layers][n_total][top_k], distinct experts per token */
    float *gate;  /* [layers][n_total][top_k], each token's gates sum to 1 */
    float *x;     /* [n_total][d_model] uniform in [-1, 1] */
} mb_bench_routing;

/* Router-like routing from seed: logits ~ N(0, 1) plus a per-expert
 * popularity bias -skew * log(rank + 1) (ranks a random permutation per
 * layer; skew 0: uniform), the top_k experts by logit, gates the softmax
 * over those k. Allocates r's arrays (mb_bench_routing_free); NOMEM leaves
 * nothing allocated. */
mb_status mb_bench_routing_make(mb_bench_routing *r, uint32_t layers, uint32_t n_total,
                                uint32_t n_experts, uint32_t top_k, uint32_t d_model, double skew,
                                uint64_t seed);
void mb_bench_routing_free(mb_bench_routing *r);

struct mb_link;

/* Round trip of n PINGs on a link, each after idle_us microseconds of
 * silence (0: back to back, the worker still spinning; a few ms: the worker
 * asleep, as between decode steps). Writes the median and 99th percentile
 * in microseconds. Blocking. Returns the first failure's status. */
mb_status mb_bench_link_ping(struct mb_link *l, uint32_t n, uint32_t idle_us, double *median_us,
                             double *p99_us);

/* c as a JSON object: "calls" and every mb_stats_call field. */
cJSON *mb_bench_counters_json(const mb_stats_counters *c);

/* Adds {"value", "goal", "met"} under name to goals and returns it. */
cJSON *mb_bench_goal(cJSON *goals, const char *name, double value, const char *goal, int met);

/* Sets MB_WORKER_BIN to <this executable's folder>/../bin/moe-worker (where
 * the build puts it) unless the variable is set or that file is missing. */
void mb_bench_find_worker(void);

/* Parses a decimal in [lo, hi] into *out. Returns 0, or -1 (out untouched). */
int mb_bench_parse_u32(const char *text, uint32_t lo, uint32_t hi, uint32_t *out);

/* Parses a comma-separated list of names[0..n): on[i] = 1 for each named,
 * 0 otherwise. Returns -1 on an unknown name or a list over 255 chars. */
int mb_bench_parse_list(const char *text, const char *const *names, int n, int *on);

/* Prints text to stdout and, when path is not NULL, writes it to path.
 * Returns 0, or -1 with a message on stderr naming prog and path. */
int mb_bench_emit_json(const char *text, const char *path, const char *prog);

/* MemAvailable from /proc/meminfo in bytes, 0 when unknown. */
uint64_t mb_bench_mem_available(void);

/* The first and last CPU this process may run on. */
void mb_bench_cpu_range(int *first, int *last);

/* Pins every thread of process pid to cpu. Returns 0 when all were pinned. */
int mb_bench_pin_process(pid_t pid, int cpu);

/* Sets the nice value of every thread of process pid. Returns 0 when all
 * were set. */
int mb_bench_nice_process(pid_t pid, int nice_value);

/* Forks a process that spins on cpu until killed (and dies with its
 * parent): the load that makes a process sharing that core slow. Returns
 * its pid, or 0 when fork failed. Stop it with mb_bench_hog_stop. */
pid_t mb_bench_hog_start(int cpu);
void mb_bench_hog_stop(pid_t pid);

#endif
