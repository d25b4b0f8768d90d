/* AVX-512 inner loops of the ceilings: a read stream with four independent
 * integer accumulators, and 12 independent FMA chains (enough to cover
 * FMA latency times throughput on current x86 cores). */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

uint64_t mb_bench_read_avx512(const void *p, size_t bytes)
{
    const __m512i *q = p;
    __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
    size_t n = bytes / 64;
    for (size_t i = 0; i + 4 <= n; i += 4) {
        a = _mm512_add_epi64(a, _mm512_load_si512(q + i));
        b = _mm512_add_epi64(b, _mm512_load_si512(q + i + 1));
        c = _mm512_add_epi64(c, _mm512_load_si512(q + i + 2));
        d = _mm512_add_epi64(d, _mm512_load_si512(q + i + 3));
    }
    return (uint64_t)_mm512_reduce_add_epi64(
        _mm512_add_epi64(_mm512_add_epi64(a, b), _mm512_add_epi64(c, d)));
}

double mb_bench_fma_avx512(uint64_t iters)
{
    __m512 acc[12];
    for (int j = 0; j < 12; j++)
        acc[j] = _mm512_set1_ps(1.0f + (float)j * 1e-3f);
    const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
    for (uint64_t i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++)
            acc[j] = _mm512_fmadd_ps(acc[j], m, c);
    }
    __m512 s = acc[0];
    for (int j = 1; j < 12; j++)
        s = _mm512_add_ps(s, acc[j]);
    return _mm512_reduce_add_ps(s);
}
