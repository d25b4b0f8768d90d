/* The clock, sample sets, pinning and memcpy figure of bench/timing.h. */
#include "bench/timing.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t mb_bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

mb_status mb_bench_samples_add(mb_bench_samples *s, int64_t ns)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4096;
        if (cap > SIZE_MAX / sizeof(*s->ns)) return MB_STATUS_NOMEM;
        int64_t *p = realloc(s->ns, cap * sizeof(*p));
        if (!p) return MB_STATUS_NOMEM;
        s->ns = p;
        s->cap = cap;
    }
    s->ns[s->n++] = ns;
    return MB_STATUS_OK;
}

static int mb_bench_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int64_t mb_bench_samples_quantile(mb_bench_samples *s, double q)
{
    if (s->n == 0) return 0;
    qsort(s->ns, s->n, sizeof(*s->ns), mb_bench_cmp_i64);
    if (q <= 0) return s->ns[0];
    if (q >= 1) return s->ns[s->n - 1];
    size_t rank = (size_t)(q * (double)s->n); /* nearest rank, 0-based */
    if (rank >= s->n) rank = s->n - 1;
    return s->ns[rank];
}

void mb_bench_samples_fini(mb_bench_samples *s)
{
    free(s->ns);
    memset(s, 0, sizeof(*s));
}

int mb_bench_cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
    int n = CPU_COUNT(&set);
    return n > 0 ? n : 1;
}

int mb_bench_cpu_nth(int index)
{
    cpu_set_t set;
    if (index < 0 || sched_getaffinity(0, sizeof(set), &set) != 0) return -1;
    int n = CPU_COUNT(&set);
    if (n <= 0) return -1;
    int want = index % n, seen = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &set) && seen++ == want) return cpu;
    return -1;
}

int mb_bench_pin_to_cpu(int cpu)
{
    if (cpu < 0 || cpu >= CPU_SETSIZE) return -1;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    return sched_setaffinity(0, sizeof(one), &one) == 0 ? cpu : -1;
}

mb_status mb_bench_memcpy_gbps(size_t bytes, int64_t duration_ns, double *gbps)
{
    if (bytes == 0 || !gbps) return MB_STATUS_INVALID_ARG;
    unsigned char *src = malloc(bytes), *dst = malloc(bytes);
    mb_bench_samples batches = {0};
    mb_status st = MB_STATUS_NOMEM;
    if (!src || !dst) goto out;
    memset(src, 0x5a, bytes);
    memset(dst, 0, bytes);
    memcpy(dst, src, bytes); /* warm both buffers */
    /* The median batch, so that a preemption on a shared machine does not
     * count as slow copying. */
    enum { COPIES_PER_BATCH = 4 };
    uint64_t copies = 0;
    int64_t start = mb_bench_now_ns(), t0 = start;
    while (t0 - start < duration_ns) {
        for (int i = 0; i < COPIES_PER_BATCH; i++) {
            src[copies % bytes] ^= 1; /* keep the copies from being merged */
            memcpy(dst, src, bytes);
            copies++;
        }
        int64_t t1 = mb_bench_now_ns();
        st = mb_bench_samples_add(&batches, t1 - t0);
        if (st != MB_STATUS_OK) goto out;
        t0 = t1;
    }
    /* Read dst so the stores are live. */
    volatile unsigned char sink = dst[bytes / 2];
    (void)sink;
    int64_t median = mb_bench_samples_quantile(&batches, 0.5);
    *gbps = median > 0 ? (double)COPIES_PER_BATCH * (double)bytes / (double)median : 0;
    st = MB_STATUS_OK;
out:
    mb_bench_samples_fini(&batches);
    free(src);
    free(dst);
    return st;
}
