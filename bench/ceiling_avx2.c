/* AVX2+FMA inner loops of the ceilings (see ceiling_avx512.c). */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

uint64_t mb_bench_read_avx2(const void *p, size_t bytes)
{
    const __m256i *q = p;
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    size_t n = bytes / 32;
    for (size_t i = 0; i + 4 <= n; i += 4) {
        a = _mm256_add_epi64(a, _mm256_load_si256(q + i));
        b = _mm256_add_epi64(b, _mm256_load_si256(q + i + 1));
        c = _mm256_add_epi64(c, _mm256_load_si256(q + i + 2));
        d = _mm256_add_epi64(d, _mm256_load_si256(q + i + 3));
    }
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
    uint64_t out[4];
    _mm256_storeu_si256((__m256i *)out, s);
    return out[0] + out[1] + out[2] + out[3];
}

double mb_bench_fma_avx2(uint64_t iters)
{
    __m256 acc[10];
    for (int j = 0; j < 10; j++)
        acc[j] = _mm256_set1_ps(1.0f + (float)j * 1e-3f);
    const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
    for (uint64_t i = 0; i < iters; i++) {
#pragma GCC unroll 10
        for (int j = 0; j < 10; j++)
            acc[j] = _mm256_fmadd_ps(acc[j], m, c);
    }
    __m256 s = acc[0];
    for (int j = 1; j < 10; j++)
        s = _mm256_add_ps(s, acc[j]);
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}
