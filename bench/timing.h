/* Measurement helpers shared by the benchmarks: a monotonic clock, a growable
 * sample set with percentiles, CPU pinning, and a memcpy bandwidth figure.
 * Nothing here knows what is being measured. */
#ifndef MB_BENCH_TIMING_H
#define MB_BENCH_TIMING_H

#include <stddef.h>
#include <stdint.h>

#include "protocol/status.h"

/* Monotonic clock in nanoseconds (vDSO, about 20 ns). Cannot fail. */
int64_t mb_bench_now_ns(void);

/* A set of durations in nanoseconds, owned by the caller. Zero-initialise. */
typedef struct {
    int64_t *ns;
    size_t n;
    size_t cap;
} mb_bench_samples;

/* Appends one sample, growing the array. NOMEM (the set is unchanged). */
mb_status mb_bench_samples_add(mb_bench_samples *s, int64_t ns);

/* The q-quantile (0 <= q <= 1, nearest rank) in nanoseconds; sorts the set
 * in place. 0 for an empty set. */
int64_t mb_bench_samples_quantile(mb_bench_samples *s, double q);

/* Frees the array; the set is empty and reusable afterwards. */
void mb_bench_samples_fini(mb_bench_samples *s);

/* CPUs this process may run on (sched_getaffinity), at least 1. */
int mb_bench_cpu_count(void);

/* The number of the index-th CPU this process may run on (index modulo the
 * count), or -1 when the affinity mask cannot be read. Ask before pinning:
 * a pinned process (and a child forked after) may run on one CPU only. */
int mb_bench_cpu_nth(int index);

/* Pins the calling process to CPU cpu. Returns cpu, or -1 when the kernel
 * refused (the process then runs where it did). */
int mb_bench_pin_to_cpu(int cpu);

/* Single-thread memcpy bandwidth in GB/s (1e9 bytes copied per second)
 * between two warm buffers of bytes, from the median of short batches over
 * about duration_ns, so preemptions do not count. NOMEM. */
mb_status mb_bench_memcpy_gbps(size_t bytes, int64_t duration_ns, double *gbps);

#endif
