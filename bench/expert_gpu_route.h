/* The routings bench_expert_gpu measures: top-k distinct experts a token,
 * uniform, from one seeded generator (which also makes the benchmark's
 * random weights and activations, so a run is reproducible), kept on the
 * host and copied to the device, with the host plan the CUDA backend makes
 * for its cuBLAS path. Built only when nvcc is found (device copies). */
#ifndef MB_BENCH_EXPERT_GPU_ROUTE_H
#define MB_BENCH_EXPERT_GPU_ROUTE_H

#include <stdint.h>

#include "bench/expert_gpu_report.h"
#include "protocol/message.h"

/* The benchmark's generator (xorshift64*, fixed seed). */
uint64_t mb_egpu_rand(void);

/* One routing of n_tokens: host arrays and their device copies. */
typedef struct {
    uint32_t n_tokens, n_pairs, n_distinct;
    uint16_t *counts;
    mb_proto_pair *pairs;
    void *d_counts, *d_pairs;
    /* The host plan the CUDA backend makes for the cuBLAS path: experts in
     * ascending slot order, their pair counts, and on the device the slots
     * then the first rows. */
    uint32_t plan_n;
    int32_t *plan_slot, *plan_count;
    void *d_plan;
} mb_egpu_route;

/* Draws a routing of n_tokens for model m and copies it to the current
 * device. Returns 0, or -1 when out of host or device memory (free r
 * either way). */
int mb_egpu_route_make(mb_egpu_route *r, const mb_egpu_model *m, uint32_t n_tokens);
void mb_egpu_route_free(mb_egpu_route *r);

#endif
