/* The CPU kernels' thread pool: n-1 pthread workers plus the calling thread
 * share the tasks of one parallel loop. Wakeups spin for a short while and
 * then sleep on a condition variable, so back-to-back dispatches (one per
 * layer) cost microseconds while an idle pool costs no CPU.
 *
 * Synchronisation: one 64-bit counter holds (generation << 32 | next task).
 * The caller writes the job fields, resets `done` and then publishes a new
 * generation with a release store; a thread claims a task with a CAS that
 * succeeds only while the generation is unchanged, so a late thread can
 * never run a task of a later job with fields of an earlier one. The caller
 * returns when `done` reaches n_tasks; it does not wait for sleeping
 * workers to wake up. */
#include "kernels/cpu/pool.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How long a caller waiting for straggling tasks spins before yielding. */
#define MB_POOL_WAIT_SPIN_NS 200000ull

#define MB_POOL_CACHE_LINE 64

struct mb_kcpu_pool {
    /* Written by the caller only, before publishing a generation. */
    mb_kcpu_task_fn fn;
    void *ctx;
    /* Task count of each generation, by parity. A thread holding a stale
     * counter value reads the slot of its generation; the caller only
     * writes the slot of the next one, and by the time it writes this one
     * again the counter has moved on, so the claim's CAS fails. */
    _Atomic uint64_t n_tasks[2];
    int n_threads;
    pthread_t *threads;
    int n_started;

    _Alignas(MB_POOL_CACHE_LINE) _Atomic uint64_t counter; /* gen << 32 | next task */
    _Alignas(MB_POOL_CACHE_LINE) _Atomic uint64_t done;    /* tasks finished this gen */
    _Alignas(MB_POOL_CACHE_LINE) _Atomic int sleepers;     /* workers in cond_wait */
    _Atomic int stop;
    _Atomic uint64_t spin_ns;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

typedef struct {
    mb_kcpu_pool *pool;
    int index;
    int n_cpus;
    int *cpus; /* owned; NULL: no pinning */
} mb_pool_worker_arg;

static inline void mb_pool_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

static uint64_t mb_pool_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Claims and runs tasks of generation gen until none are left. */
static void mb_pool_drain(mb_kcpu_pool *p, uint32_t gen, int thread)
{
    uint64_t v = atomic_load_explicit(&p->counter, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(v >> 32) != gen) return;
        /* Fields are stable while gen is current and a task is unclaimed:
         * the caller rewrites them only after every task is done. */
        uint64_t idx = v & 0xffffffffull;
        if (idx >= atomic_load_explicit(&p->n_tasks[gen & 1u], memory_order_relaxed)) return;
        if (atomic_compare_exchange_weak_explicit(&p->counter, &v, v + 1, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            p->fn(p->ctx, (size_t)idx, thread);
            atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
            v = atomic_load_explicit(&p->counter, memory_order_acquire);
        }
    }
}

static void *mb_pool_worker_main(void *argp)
{
    mb_pool_worker_arg *arg = argp;
    mb_kcpu_pool *p = arg->pool;
    int index = arg->index;
    if (arg->cpus && arg->n_cpus > 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        for (int i = 0; i < arg->n_cpus; i++)
            if (arg->cpus[i] >= 0 && arg->cpus[i] < CPU_SETSIZE) CPU_SET(arg->cpus[i], &set);
        /* Pinning is a placement hint: a failure leaves the thread unpinned. */
        (void)sched_setaffinity(0, sizeof set, &set);
    }
    free(arg->cpus);
    free(arg);

    uint32_t seen = (uint32_t)(atomic_load_explicit(&p->counter, memory_order_acquire) >> 32);
    for (;;) {
        uint64_t t0 = mb_pool_now_ns();
        unsigned spins = 0;
        uint32_t gen;
        for (;;) {
            gen = (uint32_t)(atomic_load_explicit(&p->counter, memory_order_acquire) >> 32);
            if (gen != seen || atomic_load_explicit(&p->stop, memory_order_acquire)) break;
            mb_pool_cpu_relax();
            if ((++spins & 63u) != 0) continue;
            /* Spin politely: let any other runnable thread of this CPU (a
             * coordinator sharing the host, say) go first. */
            sched_yield();
            if (mb_pool_now_ns() - t0 <= atomic_load_explicit(&p->spin_ns, memory_order_relaxed))
                continue;
            pthread_mutex_lock(&p->mu);
            /* seq_cst pairs with the caller's seq_cst publish and load of
             * sleepers: one of the two sees the other. */
            atomic_fetch_add(&p->sleepers, 1);
            while ((uint32_t)(atomic_load(&p->counter) >> 32) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
            t0 = mb_pool_now_ns();
        }
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
        seen = gen;
        mb_pool_drain(p, gen, index);
    }
    return NULL;
}

/* Reads the CPU list of a NUMA node from sysfs ("0-3,8-11"), keeps the CPUs
 * this process may run on, and returns how many were found (0 on error). */
static int mb_pool_node_cpus(int node, int **out)
{
    char path[96];
    snprintf(path, sizeof path, "/sys/devices/system/node/node%d/cpulist", node);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char buf[4096];
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';

    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return 0;
    int *cpus = malloc(sizeof(int) * CPU_SETSIZE);
    if (!cpus) return 0;
    int n = 0;
    const char *s = buf;
    while (*s) {
        char *end;
        long a = strtol(s, &end, 10);
        if (end == s) break;
        long b = a;
        s = end;
        if (*s == '-') {
            b = strtol(s + 1, &end, 10);
            if (end == s + 1) break;
            s = end;
        }
        for (long c = a; c <= b && c < CPU_SETSIZE; c++)
            if (c >= 0 && CPU_ISSET((int)c, &allowed)) cpus[n++] = (int)c;
        while (*s == ',' || *s == '\n' || *s == ' ')
            s++;
    }
    if (n == 0) {
        free(cpus);
        return 0;
    }
    *out = cpus;
    return n;
}

static int mb_pool_allowed_cpus(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    int n = CPU_COUNT(&set);
    return n > 0 ? n : 1;
}

mb_kcpu_pool *mb_kcpu_pool_create(int n_threads, int numa_node)
{
    if (n_threads < 0) return NULL;
    int *node_cpus = NULL;
    int n_node_cpus = numa_node >= 0 ? mb_pool_node_cpus(numa_node, &node_cpus) : 0;
    if (n_threads == 0) n_threads = n_node_cpus > 0 ? n_node_cpus : mb_pool_allowed_cpus();

    mb_kcpu_pool *p = calloc(1, sizeof *p);
    if (!p) goto fail;
    p->n_threads = n_threads;
    atomic_init(&p->counter, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->spin_ns, MB_KCPU_POOL_SPIN_US_DEFAULT * 1000ull);
    atomic_init(&p->n_tasks[0], 0);
    atomic_init(&p->n_tasks[1], 0);
    if (pthread_mutex_init(&p->mu, NULL) != 0) goto fail_free;
    if (pthread_cond_init(&p->cv, NULL) != 0) goto fail_mutex;
    if (n_threads > 1) {
        p->threads = calloc((size_t)n_threads - 1, sizeof *p->threads);
        if (!p->threads) goto fail_cond;
    }
    for (int i = 1; i < n_threads; i++) {
        mb_pool_worker_arg *arg = calloc(1, sizeof *arg);
        if (!arg) goto fail_threads;
        arg->pool = p;
        arg->index = i;
        if (n_node_cpus > 0) {
            arg->cpus = malloc(sizeof(int) * (size_t)n_node_cpus);
            if (!arg->cpus) {
                free(arg);
                goto fail_threads;
            }
            memcpy(arg->cpus, node_cpus, sizeof(int) * (size_t)n_node_cpus);
            arg->n_cpus = n_node_cpus;
        }
        if (pthread_create(&p->threads[i - 1], NULL, mb_pool_worker_main, arg) != 0) {
            free(arg->cpus);
            free(arg);
            goto fail_threads;
        }
        p->n_started++;
    }
    free(node_cpus);
    return p;

fail_threads:
    mb_kcpu_pool_destroy(p);
    free(node_cpus);
    return NULL;
fail_cond:
    pthread_cond_destroy(&p->cv);
fail_mutex:
    pthread_mutex_destroy(&p->mu);
fail_free:
    free(p);
fail:
    free(node_cpus);
    return NULL;
}

void mb_kcpu_pool_destroy(mb_kcpu_pool *pool)
{
    if (!pool) return;
    pthread_mutex_lock(&pool->mu);
    atomic_store(&pool->stop, 1);
    pthread_cond_broadcast(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 0; i < pool->n_started; i++)
        pthread_join(pool->threads[i], NULL);
    free(pool->threads);
    pthread_cond_destroy(&pool->cv);
    pthread_mutex_destroy(&pool->mu);
    free(pool);
}

void mb_kcpu_pool_set_spin_us(mb_kcpu_pool *pool, unsigned spin_us)
{
    if (pool)
        atomic_store_explicit(&pool->spin_ns, (uint64_t)spin_us * 1000u, memory_order_relaxed);
}

int mb_kcpu_pool_threads(const mb_kcpu_pool *pool)
{
    return pool ? pool->n_threads : 1;
}

void mb_kcpu_pool_run(mb_kcpu_pool *pool, size_t n_tasks, mb_kcpu_task_fn fn, void *ctx)
{
    if (n_tasks == 0) return;
    if (!pool || pool->n_started == 0 || n_tasks == 1 || n_tasks > 0xffffffffull) {
        for (size_t i = 0; i < n_tasks; i++)
            fn(ctx, i, 0);
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    atomic_store_explicit(&pool->done, 0, memory_order_relaxed);
    uint64_t old = atomic_load_explicit(&pool->counter, memory_order_relaxed);
    uint32_t gen = (uint32_t)(old >> 32) + 1u;
    atomic_store_explicit(&pool->n_tasks[gen & 1u], n_tasks, memory_order_relaxed);
    /* seq_cst: the publish must be ordered before the load of sleepers. */
    atomic_store(&pool->counter, (uint64_t)gen << 32);
    if (atomic_load(&pool->sleepers) > 0) {
        pthread_mutex_lock(&pool->mu);
        pthread_cond_broadcast(&pool->cv);
        pthread_mutex_unlock(&pool->mu);
    }
    mb_pool_drain(pool, gen, 0);

    /* Wait for tasks other threads still run; yield after a while so a
     * preempted worker on a shared machine gets the CPU back. */
    uint64_t t0 = 0;
    unsigned spins = 0;
    while (atomic_load_explicit(&pool->done, memory_order_acquire) < n_tasks) {
        mb_pool_cpu_relax();
        if ((++spins & 255u) == 0) {
            if (t0 == 0)
                t0 = mb_pool_now_ns();
            else if (mb_pool_now_ns() - t0 > MB_POOL_WAIT_SPIN_NS)
                sched_yield();
        }
    }
}
