/* A fixed thread pool for CPU kernels: the calling thread takes part, so a
 * pool of n threads runs n-1 workers. Threads may be pinned to a NUMA node's
 * CPUs. One caller at a time per pool, and no nested runs from a task.
 * Idle workers spin for a while (1 ms by default, yielding the CPU to any
 * other runnable thread every few microseconds) and then sleep, so
 * back-to-back dispatches cost microseconds and an idle pool costs no CPU. */
#ifndef MB_KERNELS_CPU_POOL_H
#define MB_KERNELS_CPU_POOL_H

#include <stddef.h>

typedef struct mb_kcpu_pool mb_kcpu_pool;

/* Body of a parallel loop: called once per task index in [0, n_tasks) with
 * the index of the thread running it (0..n_threads-1). */
typedef void (*mb_kcpu_task_fn)(void *ctx, size_t task, int thread);

/* Creates a pool of n_threads (>= 1; 0 means every CPU the process may use,
 * or of the node when numa_node >= 0). numa_node >= 0 pins the workers (not
 * the caller) to that node's CPUs, read from sysfs; pinning failures leave
 * them unpinned. Returns NULL on failure (out of memory or threads). */
mb_kcpu_pool *mb_kcpu_pool_create(int n_threads, int numa_node);
void mb_kcpu_pool_destroy(mb_kcpu_pool *pool);
/* Threads of the pool (1 for NULL). */
int mb_kcpu_pool_threads(const mb_kcpu_pool *pool);

/* How long an idle worker spins before sleeping unless set below. On the
 * development VM a call that found the other worker asleep after a 5 ms
 * pause ran ~35% slower (2 threads, decode), so the window should cover
 * the usual gap between dispatches (one layer's other work); spinning
 * yields the CPU every few microseconds. */
#define MB_KCPU_POOL_SPIN_US_DEFAULT 1000u

/* How long idle workers spin before sleeping (0: sleep at once). Longer
 * windows keep dispatches after a pause fast (a sleeping thread can take
 * about a millisecond to wake on a virtual machine) at the price of CPU
 * burnt while idle. Takes effect from the workers' next idle period. */
void mb_kcpu_pool_set_spin_us(mb_kcpu_pool *pool, unsigned spin_us);

/* Runs fn for every task in [0, n_tasks), tasks handed out dynamically, and
 * returns when all are done. pool may be NULL (runs inline). Blocking. */
void mb_kcpu_pool_run(mb_kcpu_pool *pool, size_t n_tasks, mb_kcpu_task_fn fn, void *ctx);

#endif
