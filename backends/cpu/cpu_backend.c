/* The CPU backend's function table: open (thread pool on a NUMA node, slot
 * table), close and capabilities. Weights are in cpu_weights.c, requests in
 * cpu_run.c, the arithmetic in kernels/cpu/. */
#include <numa.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/cpu_internal.h"
#include "kernels/cpu/gemm.h"

/* First "model name" of /proc/cpuinfo, or "CPU". */
static void mb_cpu_model_name(char *buf, size_t cap)
{
    snprintf(buf, cap, "CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        const char *v = strchr(line, ':');
        if (!v) break;
        v++;
        while (*v == ' ' || *v == '\t')
            v++;
        size_t n = strcspn(v, "\n");
        snprintf(buf, cap, "%.*s", (int)n, v);
        break;
    }
    fclose(f);
}

/* MemTotal and MemAvailable from /proc/meminfo, in bytes (0 if unknown). */
static void mb_cpu_meminfo(uint64_t *total, uint64_t *avail)
{
    *total = *avail = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        unsigned long long kb;
        if (sscanf(line, "MemTotal: %llu kB", &kb) == 1)
            *total = (uint64_t)kb * 1024u;
        else if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
            *avail = (uint64_t)kb * 1024u;
    }
    fclose(f);
}

static void mb_cpu_close(void *state)
{
    mb_cpu_backend *be = state;
    if (!be) return;
    if (be->slots)
        for (uint32_t i = 0; i < be->max_slots; i++)
            mb_cpu_slot_free(be, &be->slots[i]);
    mb_kcpu_pool_destroy(be->pool);
    mb_kcpu_moe_ws_destroy(be->ws);
    free(be->slots);
    mb_route_table_fini(&be->table);
    mb_route_plan_fini(&be->plan);
    free(be->experts);
    free(be->out_f32);
    free(be);
}

/* Pins the calling thread to node's CPUs (BIND only: the caller runs a
 * share of every kernel). Failure leaves it unpinned. */
static void mb_cpu_pin_caller(int node)
{
    struct bitmask *cpus = numa_allocate_cpumask();
    if (!cpus) return;
    if (numa_node_to_cpus(node, cpus) == 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        for (unsigned c = 0; c < cpus->size && c < CPU_SETSIZE; c++)
            if (numa_bitmask_isbitset(cpus, c)) CPU_SET(c, &set);
        if (CPU_COUNT(&set) > 0) (void)sched_setaffinity(0, sizeof set, &set);
    }
    numa_free_cpumask(cpus);
}

static mb_status mb_cpu_open(const mb_backend_config *cfg, void **state)
{
    if (!cfg || !state) return MB_STATUS_INVALID_ARG;
    /* No options: every CPU the process may use, weights bound to the node
     * when one was named. */
    mb_backend_cpu_options opt = {.n_threads = 0, .numa = cfg->device >= 0 ? MB_NUMA_BIND : MB_NUMA_DEFAULT};
    if (cfg->options) opt = *(const mb_backend_cpu_options *)cfg->options;
    if (opt.n_threads < 0 || opt.numa < MB_NUMA_DEFAULT || opt.numa > MB_NUMA_INTERLEAVE) return MB_STATUS_CONFIG;
    uint32_t max_slots = cfg->max_slots ? cfg->max_slots : MB_CPU_DEFAULT_SLOTS;
    if (max_slots > MB_CPU_MAX_SLOTS) return MB_STATUS_CONFIG;

    mb_status st = MB_STATUS_NOMEM;
    mb_cpu_backend *be = calloc(1, sizeof *be);
    if (!be) return MB_STATUS_NOMEM;
    be->numa = opt.numa;
    be->max_slots = max_slots;
    be->numa_ok = numa_available() >= 0;
    be->node = cfg->device;
    long long node_free = 0;
    if (be->node >= 0) {
        /* A node that does not exist (or has no memory) is a missing device. */
        if (be->numa_ok
                ? (be->node > numa_max_node() || numa_node_size64(be->node, &node_free) <= 0)
                : be->node != 0) {
            st = MB_STATUS_DEVICE;
            goto fail;
        }
    }
    if (!be->numa_ok && be->node == 0) be->node = -1; /* one node: nothing to pin */

    mb_route_plan_init(&be->plan);
    be->slots = calloc(max_slots, sizeof *be->slots);
    be->ws = mb_kcpu_moe_ws_create();
    if (!be->slots || !be->ws || mb_route_table_init(&be->table, max_slots) != MB_STATUS_OK) goto fail;

    be->pool = mb_kcpu_pool_create(opt.n_threads, be->node);
    if (!be->pool) goto fail;
    be->n_threads = mb_kcpu_pool_threads(be->pool);
    if (opt.idle_spin_us) mb_kcpu_pool_set_spin_us(be->pool, opt.idle_spin_us);
    if (opt.numa == MB_NUMA_BIND && be->numa_ok && be->node >= 0) mb_cpu_pin_caller(be->node);

    char model[48];
    mb_cpu_model_name(model, sizeof model);
    char node[24] = "";
    if (be->node >= 0) snprintf(node, sizeof node, " node %d", be->node);
    /* A long model name is cut; the tail (threads, ISA) matters less. */
    int n = snprintf(be->device, sizeof be->device, "%s%s, %d threads, %s", model, node,
                     be->n_threads, mb_kcpu_isa_name());
    (void)n;
    *state = be;
    return MB_STATUS_OK;

fail:
    mb_cpu_close(be);
    return st;
}

static mb_status mb_cpu_caps(void *state, mb_backend_caps *caps)
{
    mb_cpu_backend *be = state;
    if (!be || !caps) return MB_STATUS_INVALID_ARG;
    memset(caps, 0, sizeof *caps);
    snprintf(caps->name, sizeof caps->name, "cpu");
    snprintf(caps->device, sizeof caps->device, "%s", be->device);
    uint64_t total = 0, avail = 0;
    if (be->numa_ok && be->node >= 0) {
        long long free_b = 0, tot = numa_node_size64(be->node, &free_b);
        if (tot > 0) total = (uint64_t)tot;
        if (free_b > 0) avail = (uint64_t)free_b;
    } else {
        mb_cpu_meminfo(&total, &avail);
    }
    caps->mem_total_bytes = total;
    caps->mem_free_bytes = avail;
    caps->payload_dtype_mask = MB_DTYPE_MASK_ALL;
    caps->weight_dtype_mask = MB_DTYPE_MASK_WEIGHTS; /* quantized experts too */
    caps->preferred_batch = 256;
    caps->n_threads = (uint32_t)be->n_threads;
    caps->max_slots = be->max_slots;
    caps->max_inflight = 1; /* synchronous: one request at a time */
    caps->max_request_bytes = 0;
    return MB_STATUS_OK;
}

const mb_backend_ops mb_backend_cpu_ops = {
    .abi_version = MB_BACKEND_ABI_VERSION,
    .name = "cpu",
    .open = mb_cpu_open,
    .close = mb_cpu_close,
    .caps = mb_cpu_caps,
    .load_expert = mb_cpu_load_expert,
    .load_finish = NULL,   /* loads copy synchronously */
    .reserve_layer = NULL, /* one allocation per slot, NUMA-placed */
    .register_host = NULL,
    .unregister_host = NULL,
    .run = mb_cpu_run,
    .submit = NULL, /* synchronous: the wrappers emulate the tagged calls */
    .poll = NULL,
    .fetch = NULL,
};
