/* Private state of the CPU backend, shared by its files: cpu_backend.c
 * (open, close, caps), cpu_weights.c (NUMA-placed expert slots) and
 * cpu_run.c (a request through the expert FFN kernel). */
#ifndef MB_BACKENDS_CPU_CPU_INTERNAL_H
#define MB_BACKENDS_CPU_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "backends/backend.h"
#include "backends/route_plan.h"
#include "kernels/cpu/expert_ffn.h"
#include "kernels/cpu/pool.h"

#define MB_CPU_DEFAULT_SLOTS 4096u
#define MB_CPU_MAX_SLOTS (1u << 22)

/* How a slot's memory was obtained, so it is freed the same way. */
typedef enum {
    MB_CPU_MEM_NONE = 0,
    MB_CPU_MEM_ALIGNED = 1, /* aligned_alloc */
    MB_CPU_MEM_NUMA = 2,    /* numa_alloc_onnode / numa_alloc_interleaved */
} mb_cpu_mem_kind;

/* One loaded expert's memory: gate and up [d_ff][ld_in], down
 * [d_model][ld_ff] in one allocation, rows padded to 64 bytes (padding
 * zeroed). What the slot holds (layer, shapes) is in the route table. */
typedef struct {
    size_t ld_in, ld_ff;
    void *mem;
    size_t mem_bytes;
    mb_cpu_mem_kind mem_kind;
    const void *gate, *up, *down;
} mb_cpu_slot;

typedef struct {
    mb_numa_policy numa;
    int numa_ok; /* libnuma usable on this machine */
    int node;    /* NUMA node of the threads and BIND memory, or -1 */
    mb_kcpu_pool *pool;
    int n_threads;
    uint32_t max_slots;
    mb_cpu_slot *slots;    /* [max_slots] memory of each slot */
    mb_route_table table;  /* what each slot holds */
    uint64_t weight_bytes; /* sum of loaded slots' mem_bytes */
    char device[MB_PROTO_NAME_BYTES];

    /* Run scratch, grown on demand and reused (never zeroed wholesale). */
    mb_kcpu_moe_ws *ws;
    mb_route_plan plan;      /* the request's pairs grouped by expert */
    mb_kcpu_expert *experts; /* [experts_cap] */
    size_t experts_cap;
    float *out_f32; /* [out_cap] result before conversion */
    size_t out_cap;
} mb_cpu_backend;

/* cpu_weights.c */
mb_status mb_cpu_load_expert(void *state, const mb_expert_weights *w);
void mb_cpu_slot_free(mb_cpu_backend *be, mb_cpu_slot *s);

/* cpu_run.c */
mb_status mb_cpu_run(void *state, const mb_proto_expert_req *req, void *out, uint64_t *compute_ns);

#endif
