/* A fixed thread pool for CPU kernels: the calling thread takes part, so a
 * pool of n threads runs n-1 workers. Threads may be pinned to a NUMA node's
 * CPUs. One caller at a time per pool. */
#ifndef MB_KERNELS_CPU_POOL_H
#define MB_KERNELS_CPU_POOL_H

#include <stddef.h>

typedef struct mb_kcpu_pool mb_kcpu_pool;

/* Body of a parallel loop: called once per task index in [0, n_tasks) with
 * the index of the thread running it (0..n_threads-1). */
typedef void (*mb_kcpu_task_fn)(void *ctx, size_t task, int thread);

/* Creates a pool of n_threads (>= 1; 0 means every CPU the process may use).
 * numa_node >= 0 pins the workers to that node's CPUs. Returns NULL on
 * failure (out of memory or threads). */
mb_kcpu_pool *mb_kcpu_pool_create(int n_threads, int numa_node);
void mb_kcpu_pool_destroy(mb_kcpu_pool *pool);
int mb_kcpu_pool_threads(const mb_kcpu_pool *pool);

/* Runs fn for every task in [0, n_tasks), tasks handed out dynamically, and
 * returns when all are done. pool may be NULL (runs inline). Blocking. */
void mb_kcpu_pool_run(mb_kcpu_pool *pool, size_t n_tasks, mb_kcpu_task_fn fn, void *ctx);

#endif
