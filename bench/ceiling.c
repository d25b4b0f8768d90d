/* Ceiling measurements (see ceiling.h): thread plumbing, timing and the
 * portable loops; the AVX-512 / AVX2 inner loops are in ceiling_avx512.c
 * and ceiling_avx2.c, chosen at run time. */
#include "bench/ceiling.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Inner loops: sum of 64-byte lines over [p, p + bytes), and FMA iterations. */
uint64_t mb_bench_read_avx512(const void *p, size_t bytes);
uint64_t mb_bench_read_avx2(const void *p, size_t bytes);
double mb_bench_fma_avx512(uint64_t iters);
double mb_bench_fma_avx2(uint64_t iters);

/* FMA lanes per iteration of each kernel: accumulators x lanes. */
#define MB_BENCH_FMA512_FLOPS_PER_ITER (12.0 * 16.0 * 2.0)
#define MB_BENCH_FMA256_FLOPS_PER_ITER (10.0 * 8.0 * 2.0)
#define MB_BENCH_FMA1_FLOPS_PER_ITER (8.0 * 2.0)

double mb_bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int mb_bench_isa(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
    return 0;
}

static uint64_t mb_bench_read_scalar(const void *p, size_t bytes)
{
    const uint64_t *q = p;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i + 4 <= bytes / 8; i += 4) {
        a += q[i];
        b += q[i + 1];
        c += q[i + 2];
        d += q[i + 3];
    }
    return a + b + c + d;
}

static double mb_bench_fma_scalar(uint64_t iters)
{
    float a[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    const float m = 0.9999999f, c = 1e-7f;
    for (uint64_t i = 0; i < iters; i++)
        for (int j = 0; j < 8; j++)
            a[j] = a[j] * m + c;
    return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

static uint64_t mb_bench_read(const void *p, size_t bytes)
{
    switch (mb_bench_isa()) {
    case 2:
        return mb_bench_read_avx512(p, bytes);
    case 1:
        return mb_bench_read_avx2(p, bytes);
    default:
        return mb_bench_read_scalar(p, bytes);
    }
}

/* ---- threads with a start barrier ---- */

typedef struct {
    pthread_barrier_t start, end;
    char *buf;
    size_t slice;
    int reps;
    uint64_t iters;
    double *t_rep; /* [reps] time of each rep, measured by thread 0 */
    double *t_start; /* [reps][n_threads] each reader's start of each rep */
    int n_threads;
    volatile uint64_t sink;
    volatile double fsink;
} mb_bench_shared;

typedef struct {
    mb_bench_shared *s;
    int index;
} mb_bench_arg;

static void *mb_bench_read_thread(void *argp)
{
    mb_bench_arg *a = argp;
    mb_bench_shared *s = a->s;
    char *mine = s->buf + (size_t)a->index * s->slice;
    memset(mine, 1, s->slice); /* first touch by the reader */
    for (int r = 0; r < s->reps; r++) {
        pthread_barrier_wait(&s->start);
        s->t_start[(size_t)r * (size_t)s->n_threads + (size_t)a->index] = mb_bench_now();
        uint64_t v = mb_bench_read(mine, s->slice);
        pthread_barrier_wait(&s->end);
        if (a->index == 0) {
            /* From the earliest reader's start: thread 0 may have been
             * scheduled late while the others already read. */
            double t0 = s->t_start[(size_t)r * (size_t)s->n_threads];
            for (int i = 1; i < s->n_threads; i++)
                if (s->t_start[(size_t)r * (size_t)s->n_threads + (size_t)i] < t0)
                    t0 = s->t_start[(size_t)r * (size_t)s->n_threads + (size_t)i];
            s->t_rep[r] = mb_bench_now() - t0;
        }
        s->sink += v;
    }
    return NULL;
}

static void *mb_bench_fma_thread(void *argp)
{
    mb_bench_arg *a = argp;
    mb_bench_shared *s = a->s;
    pthread_barrier_wait(&s->start);
    double t0 = mb_bench_now();
    int isa = mb_bench_isa();
    double v = isa == 2   ? mb_bench_fma_avx512(s->iters)
               : isa == 1 ? mb_bench_fma_avx2(s->iters)
                          : mb_bench_fma_scalar(s->iters);
    pthread_barrier_wait(&s->end);
    if (a->index == 0) s->t_rep[0] = mb_bench_now() - t0;
    s->fsink += v;
    return NULL;
}

/* Runs fn on n threads (the caller is thread 0). Returns -1 on failure. */
static int mb_bench_run_threads(int n, mb_bench_shared *s, void *(*fn)(void *))
{
    pthread_t *th = calloc((size_t)n, sizeof *th);
    mb_bench_arg *args = calloc((size_t)n, sizeof *args);
    if (!th || !args) {
        free(th);
        free(args);
        return -1;
    }
    pthread_barrier_init(&s->start, NULL, (unsigned)n);
    pthread_barrier_init(&s->end, NULL, (unsigned)n);
    int started = 1;
    for (int i = 1; i < n; i++) {
        args[i] = (mb_bench_arg){s, i};
        if (pthread_create(&th[i], NULL, fn, &args[i]) != 0) break;
        started++;
    }
    if (started != n) {
        /* Cannot happen in practice; the barrier would hang, so bail out hard. */
        abort();
    }
    args[0] = (mb_bench_arg){s, 0};
    fn(&args[0]);
    for (int i = 1; i < n; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&s->start);
    pthread_barrier_destroy(&s->end);
    free(th);
    free(args);
    return 0;
}

double mb_bench_read_gbs(int n_threads, size_t bytes, int reps)
{
    if (n_threads < 1) n_threads = 1;
    if (reps < 1) reps = 1;
    mb_bench_shared s = {0};
    s.slice = bytes / (size_t)n_threads / 4096 * 4096;
    s.reps = reps;
    s.buf = aligned_alloc(4096, s.slice * (size_t)n_threads);
    s.t_rep = calloc((size_t)reps, sizeof *s.t_rep);
    s.t_start = calloc((size_t)reps * (size_t)n_threads, sizeof *s.t_start);
    s.n_threads = n_threads;
    double best = 0;
    if (s.buf && s.t_rep && s.t_start &&
        mb_bench_run_threads(n_threads, &s, mb_bench_read_thread) == 0)
        for (int r = 0; r < reps; r++) {
            double gbs = (double)(s.slice * (size_t)n_threads) / s.t_rep[r] * 1e-9;
            if (gbs > best) best = gbs;
        }
    free(s.buf);
    free(s.t_rep);
    free(s.t_start);
    return best;
}

struct mb_bench_reader {
    int n_threads;
    size_t slice;
    char *buf;
};

typedef struct {
    const mb_bench_reader *r;
    int index;
    pthread_barrier_t *start;
    uint64_t sum;
    double t0, t1; /* this reader's own start and end */
} mb_bench_probe_arg;

static void *mb_bench_probe_thread(void *argp)
{
    mb_bench_probe_arg *a = argp;
    pthread_barrier_wait(a->start);
    a->t0 = mb_bench_now();
    a->sum = mb_bench_read(a->r->buf + (size_t)a->index * a->r->slice, a->r->slice);
    a->t1 = mb_bench_now();
    return NULL;
}

mb_bench_reader *mb_bench_reader_create(int n_threads, size_t bytes)
{
    if (n_threads < 1) n_threads = 1;
    mb_bench_reader *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->n_threads = n_threads;
    r->slice = bytes / (size_t)n_threads / 4096 * 4096;
    r->buf = aligned_alloc(4096, r->slice * (size_t)n_threads);
    if (!r->buf || r->slice == 0) {
        mb_bench_reader_destroy(r);
        return NULL;
    }
    memset(r->buf, 1, r->slice * (size_t)n_threads);
    return r;
}

double mb_bench_reader_gbs(mb_bench_reader *r)
{
    enum { MAX_T = 256 };
    int n = r->n_threads < MAX_T ? r->n_threads : MAX_T;
    pthread_t th[MAX_T];
    mb_bench_probe_arg args[MAX_T];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)n + 1);
    int started = 0;
    for (int i = 0; i < n; i++) {
        args[i] = (mb_bench_probe_arg){r, i, &start, 0, 0, 0};
        if (pthread_create(&th[i], NULL, mb_bench_probe_thread, &args[i]) != 0) abort();
        started++;
    }
    pthread_barrier_wait(&start);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    /* From the first reader's start to the last one's end, as the readers
     * timed themselves: a clock read by this thread after the barrier would
     * miss the reading done while it waited to be scheduled (on a loaded
     * machine that made a probe report several times the real bandwidth). */
    double first = args[0].t0, last = args[0].t1;
    for (int i = 1; i < started; i++) {
        if (args[i].t0 < first) first = args[i].t0;
        if (args[i].t1 > last) last = args[i].t1;
    }
    pthread_barrier_destroy(&start);
    return (double)(r->slice * (size_t)n) / (last - first) * 1e-9;
}

void mb_bench_reader_destroy(mb_bench_reader *r)
{
    if (!r) return;
    free(r->buf);
    free(r);
}

double mb_bench_memcpy_gbs(size_t bytes, int reps)
{
    char *a = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096),
         *b = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    double best = 0;
    if (a && b) {
        memset(a, 1, bytes);
        memset(b, 2, bytes);
        for (int r = 0; r < reps; r++) {
            double t0 = mb_bench_now();
            memcpy(b, a, bytes);
            double t = mb_bench_now() - t0;
            if ((double)bytes / t * 1e-9 > best) best = (double)bytes / t * 1e-9;
            a[r % bytes] = b[(r * 7) % bytes];
        }
    }
    free(a);
    free(b);
    return best;
}

double mb_bench_fma_gflops(int n_threads, double seconds)
{
    if (n_threads < 1) n_threads = 1;
    int isa = mb_bench_isa();
    double per_iter = isa == 2   ? MB_BENCH_FMA512_FLOPS_PER_ITER
                      : isa == 1 ? MB_BENCH_FMA256_FLOPS_PER_ITER
                                 : MB_BENCH_FMA1_FLOPS_PER_ITER;
    /* Calibrate on one thread, then size the run to the requested time. */
    mb_bench_shared s = {0};
    double t_rep = 0;
    s.t_rep = &t_rep;
    s.iters = 1u << 20;
    double best = 0;
    for (;;) {
        if (mb_bench_run_threads(1, &s, mb_bench_fma_thread) != 0) return 0;
        if (t_rep > 0.02) break;
        s.iters *= 4;
    }
    s.iters = (uint64_t)((double)s.iters * seconds / t_rep) + 1;
    for (int rep = 0; rep < 3; rep++) {
        if (mb_bench_run_threads(n_threads, &s, mb_bench_fma_thread) != 0) return 0;
        double g = per_iter * (double)s.iters * n_threads / t_rep * 1e-9;
        if (g > best) best = g;
    }
    return best;
}

void mb_bench_ceilings_measure(int n_threads, int quick, mb_bench_ceilings *out)
{
    int isa = mb_bench_isa();
    out->n_threads = n_threads;
    out->isa = isa == 2 ? "avx512" : isa == 1 ? "avx2" : "scalar";
    out->read_gbs = mb_bench_read_gbs(n_threads, (quick ? 128u : 512u) << 20, quick ? 3 : 5);
    out->memcpy_gbs = mb_bench_memcpy_gbs((quick ? 64u : 256u) << 20, 3);
    out->fma_gflops_thread = mb_bench_fma_gflops(1, quick ? 0.1 : 0.3);
    out->fma_gflops =
        n_threads > 1 ? mb_bench_fma_gflops(n_threads, quick ? 0.1 : 0.3) : out->fma_gflops_thread;
}
