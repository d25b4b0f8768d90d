/* Machine ceilings that benchmarks report their ratios against, measured in
 * the same run: STREAM-style read bandwidth over a buffer far larger than
 * the caches, memcpy bandwidth, and peak f32 FMA throughput from a
 * register-only kernel, all with the benchmark's thread count. */
#ifndef MB_BENCH_CEILING_H
#define MB_BENCH_CEILING_H

#include <stddef.h>

typedef struct {
    int n_threads;
    double read_gbs;          /* all threads reading disjoint slices */
    double memcpy_gbs;        /* one thread, bytes copied (read + write = 2x traffic) */
    double fma_gflops;        /* all threads, 2 flops per FMA lane */
    double fma_gflops_thread; /* one thread alone */
    const char *isa;          /* "avx512", "avx2" or "scalar" */
} mb_bench_ceilings;

/* Monotonic clock in seconds. */
double mb_bench_now(void);

/* Best-of-reps read bandwidth in GB/s (1e9 bytes/s) of n_threads threads
 * each reading its slice of a bytes-sized buffer (first touched by its
 * reader). Returns 0 when out of memory. Blocking. */
double mb_bench_read_gbs(int n_threads, size_t bytes, int reps);

/* Best-of-reps memcpy bandwidth in GB/s of bytes copied, one thread. */
double mb_bench_memcpy_gbs(size_t bytes, int reps);

/* Peak FMA throughput in GFLOP/s of n_threads threads running a
 * register-only kernel with independent accumulators for about seconds. */
double mb_bench_fma_gflops(int n_threads, double seconds);

/* A read-bandwidth probe with a persistent buffer (first touched once), for
 * measuring the ceiling right next to each benchmark call when neighbours
 * make the machine's bandwidth drift. NULL when out of memory. */
typedef struct mb_bench_reader mb_bench_reader;
mb_bench_reader *mb_bench_reader_create(int n_threads, size_t bytes);
/* One pass over the buffer by all threads; GB/s. Blocking. */
double mb_bench_reader_gbs(mb_bench_reader *r);
void mb_bench_reader_destroy(mb_bench_reader *r);

/* All of the above with defaults sized for a quick run (buffer 512 MiB, or
 * 128 MiB when quick is set). */
void mb_bench_ceilings_measure(int n_threads, int quick, mb_bench_ceilings *out);

#endif
