/* The benchmarks' random numbers: xorshift64* on a caller's state (any
 * nonzero seed), so each benchmark's inputs are the same from run to run. */
#ifndef MB_BENCH_BENCH_RAND_H
#define MB_BENCH_BENCH_RAND_H

#include <stdint.h>

static inline uint64_t mb_bench_rand(unsigned long long *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 0x2545F4914F6CDD1DULL;
}

/* Uniform in [-1, 1). */
static inline float mb_bench_randf(unsigned long long *state)
{
    return (float)((double)(mb_bench_rand(state) >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

#endif
