/* Thread pool: every task runs exactly once per dispatch, thread indices are
 * in range, back-to-back dispatches (spinning workers) and dispatches after
 * the workers went to sleep both complete, and a NULL pool runs inline. */
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/pool.h"
#include "tests/testutil.h"

typedef struct {
    _Atomic int *hits;
    int n_threads;
    _Atomic int bad_thread;
} pool_ctx;

static void count_task(void *ctx, size_t task, int thread)
{
    pool_ctx *c = ctx;
    atomic_fetch_add(&c->hits[task], 1);
    if (thread < 0 || thread >= c->n_threads) atomic_store(&c->bad_thread, 1);
}

static void run_and_check(mb_kcpu_pool *pool, int n_threads, size_t n_tasks)
{
    static _Atomic int hits[5000];
    for (size_t i = 0; i < n_tasks; i++)
        atomic_store(&hits[i], 0);
    pool_ctx c = {hits, n_threads, 0};
    mb_kcpu_pool_run(pool, n_tasks, count_task, &c);
    int wrong = 0;
    int first_bad = -1;
    for (size_t i = 0; i < n_tasks; i++) {
        int h = atomic_load(&hits[i]);
        if (h != 1 && first_bad < 0) first_bad = (int)i * 100 + h;
        wrong += h != 1;
    }
    CHECK_MSG(wrong == 0, "threads %d tasks %zu: %d tasks not run exactly once (first bad %d)",
              n_threads, n_tasks, wrong, first_bad);
    CHECK_EQ(atomic_load(&c.bad_thread), 0);
}

int main(void)
{
    /* Inline. */
    run_and_check(NULL, 1, 100);

    for (int nt = 1; nt <= 4; nt++) {
        mb_kcpu_pool *pool = mb_kcpu_pool_create(nt, -1);
        REQUIRE(pool != NULL);
        CHECK_EQ(mb_kcpu_pool_threads(pool), nt);
        run_and_check(pool, nt, 0);
        run_and_check(pool, nt, 1);
        for (int rep = 0; rep < 2000; rep++)
            run_and_check(pool, nt, (size_t)(rep % 37) + 1);
        run_and_check(pool, nt, 5000);
        /* Let the workers fall asleep, then wake them. */
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
        run_and_check(pool, nt, 64);
        mb_kcpu_pool_destroy(pool);
    }

    /* Pinned to node 0 (present on every Linux machine with sysfs), and all CPUs. */
    mb_kcpu_pool *pool = mb_kcpu_pool_create(0, 0);
    REQUIRE(pool != NULL);
    CHECK(mb_kcpu_pool_threads(pool) >= 1);
    run_and_check(pool, mb_kcpu_pool_threads(pool), 333);
    mb_kcpu_pool_destroy(pool);
    mb_kcpu_pool_destroy(NULL);
    CHECK(mb_kcpu_pool_create(-1, -1) == NULL);
    return mb_test_finish("test_pool");
}
