/* The figures bench_dispatch collects per scenario and mode, and its report
 * (dispatch_report.c): table rows, JSON, goals and ceilings. Only
 * bench_dispatch uses this. */
#ifndef MB_BENCH_DISPATCH_REPORT_H
#define MB_BENCH_DISPATCH_REPORT_H

#include <stdint.h>
#include <sys/types.h>

#include <cjson/cJSON.h>

#include "bench/ceiling.h"
#include "broker/link.h"
#include "broker/model.h"
#include "broker/options.h"
#include "broker/placement.h"
#include "broker/stats.h"

#define BD_MAX_LINKS 2
#define BD_MODES 3

typedef enum { BD_SLOW_HOG = 0, BD_SLOW_THREADS = 1 } bd_slow_kind;

typedef struct {
    uint32_t layers, prefill_tokens, decode_steps, chunk, batch_capacity, stream_slice, repeat;
    double budget_s; /* prefill measured this long at most, then extrapolated */
    double skew;     /* expert popularity skew (0: uniform) */
    uint64_t seed;
    mb_dtype payload;
    int quick, no_ceilings;
    int mode_on[BD_MODES];         /* indexed by mb_ipc_mode */
    int even, split, slow, inproc; /* scenarios */
    bd_slow_kind slow_kind;
    const char *json_path;
} bd_args;

/* The backends of one scenario. */
typedef struct {
    const char *name;
    const char *note;
    mb_link links[BD_MAX_LINKS];
    uint32_t n_links;
    uint32_t threads[BD_MAX_LINKS];
    mb_placement pl;
    char link_name[BD_MAX_LINKS][96]; /* kept after the links close */
    uint32_t experts[BD_MAX_LINKS];   /* experts per layer on each link */
    double weight[BD_MAX_LINKS];
    double ping_us[BD_MAX_LINKS][2]; /* PING round trip median: back to back, after 3 ms idle */
    pid_t hog;                       /* CPU hog sharing the slow worker's core, 0 if none */
} bd_setup;

typedef struct {
    mb_ipc_mode mode;
    uint32_t prefill_measured; /* tokens actually run */
    double prefill_s_measured; /* mean over repeats */
    double prefill_s_first;    /* the first repeat */
    double scale;              /* prefill_tokens / prefill_measured */
    double cscale;             /* for counters summed over repeats: scale / repeats */
    double coord_cpu_s; /* the dispatching thread's CPU time in prefill, per repeat, scaled */
    double decode_s;
    double decode_median_ms; /* per step; robust to other load on the machine */
    mb_stats_counters pre[BD_MAX_LINKS], dec[BD_MAX_LINKS];
    uint32_t slice_pre[BD_MAX_LINKS], slice_dec[BD_MAX_LINKS];
    double max_diff; /* vs the first mode of the scenario, -1: not compared */
} bd_result;

typedef struct {
    bd_setup setup;
    bd_result res[BD_MODES];
    int ran[BD_MODES];
} bd_scenario;

/* Prefill seconds for the whole prompt (extrapolated when cut short). */
double bd_prefill_s(const bd_result *r);

/* Prefill calls per run (extrapolated) or decode calls, summed over links. */
double bd_calls(const bd_result *r, int decode, uint32_t n_links);

/* Prints one row of the main table to stdout. */
void mb_bench_dispatch_print_row(const bd_args *a, const bd_setup *s, const bd_result *r);

/* One run as a JSON object (the caller owns it). */
cJSON *mb_bench_dispatch_result_json(const bd_args *a, const bd_setup *s, const bd_result *r);

/* Prints the goals (sc: even, split, slow, inproc; any may not have run)
 * and adds them to goals. */
void mb_bench_dispatch_goals(const bd_args *a, const bd_scenario sc[4], cJSON *goals);

/* Prints each batched run's ratio to the read-bandwidth and FMA ceilings
 * and adds the floors to cj. */
void mb_bench_dispatch_ceilings(const bd_args *a, const mb_model_config *cfg,
                                const mb_bench_ceilings *ceil, const bd_scenario sc[4], cJSON *cj);

#endif
