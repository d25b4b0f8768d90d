/* Spin-then-sleep waiting on a cross-process futex word, with bounded sleeps
 * so the caller can check its peer's liveness between them. */
#include "shm/doorbell.h"
#include "shm/shm.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int64_t mb_shm_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* Not FUTEX_PRIVATE: the word is shared with another process. */
static void mb_shm_futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ll),
                          .tv_nsec = (long)(ns % 1000000000ll)};
    /* EAGAIN (word changed), EINTR and ETIMEDOUT all mean: look again. */
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, &ts, NULL, 0);
}

/* Every access to "sleeping" is an RMW, so the waiter's and the ringer's are
 * totally ordered on that word and each release sequence stays unbroken:
 * either the ringer's RMW comes first, and the waiter's later RMW acquires
 * from it and so sees the published state on its re-check; or the waiter's
 * comes first, and the ringer reads 1 and wakes it. No lost wake-up, and no
 * fences (which ThreadSanitizer does not model). */
void mb_shm_bell_ring(mb_shm_bell *bell)
{
    /* acq_rel RMW: releases the state published before it (see above). */
    if (atomic_fetch_or_explicit(&bell->sleeping, 0, memory_order_acq_rel)) {
        /* release: a waiter that reads the new seq also sees what we published. */
        atomic_fetch_add_explicit(&bell->seq, 1, memory_order_release);
        syscall(SYS_futex, (uint32_t *)&bell->seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    }
}

/* Announces that the waiter may sleep and returns the futex value to sleep
 * on; the caller must re-check its condition afterwards. */
static uint32_t mb_shm_bell_prepare(mb_shm_bell *bell)
{
    /* acquire: seq is read before the announcement, so a ringer that sees the
     * announcement bumps seq past it (then FUTEX_WAIT returns at once). */
    uint32_t seq = atomic_load_explicit(&bell->seq, memory_order_acquire);
    /* acq_rel RMW: acquires from any earlier ring, so the re-check sees its state. */
    atomic_exchange_explicit(&bell->sleeping, 1, memory_order_acq_rel);
    return seq;
}

mb_status mb_shm_bell_wait(mb_shm_bell *bell, mb_shm_try_fn try_fn, mb_shm_try_fn alive_fn,
                           void *ctx, int64_t timeout_ns, int64_t spin_ns)
{
    mb_status st = try_fn(ctx);
    if (st != MB_STATUS_AGAIN) return st;
    if (timeout_ns == 0) {
        st = alive_fn(ctx);
        return st != MB_STATUS_OK ? st : MB_STATUS_TIMEOUT;
    }
    int64_t now = mb_shm_now_ns();
    int64_t deadline =
        (timeout_ns < 0 || timeout_ns > INT64_MAX - now) ? INT64_MAX : now + timeout_ns;

    /* Spin: a reply usually comes within microseconds, cheaper than a sleep. */
    if (spin_ns > 0) {
        int64_t spin_end = spin_ns < deadline - now ? now + spin_ns : deadline;
        for (unsigned i = 1;; i++) {
            mb_shm_cpu_relax();
            st = try_fn(ctx);
            if (st != MB_STATUS_AGAIN) return st;
            if ((i & 63) == 0 && mb_shm_now_ns() >= spin_end) break;
        }
    }

    for (;;) {
        st = alive_fn(ctx);
        if (st != MB_STATUS_OK) {
            /* The peer may have published its last message before it left. */
            mb_status last = try_fn(ctx);
            return last != MB_STATUS_AGAIN ? last : st;
        }
        now = mb_shm_now_ns();
        if (now >= deadline) return MB_STATUS_TIMEOUT;
        uint32_t seq = mb_shm_bell_prepare(bell);
        st = try_fn(ctx);
        if (st == MB_STATUS_AGAIN) {
            int64_t slice =
                deadline - now < MB_SHM_SLEEP_SLICE_NS ? deadline - now : MB_SHM_SLEEP_SLICE_NS;
            mb_shm_futex_wait(&bell->seq, seq, slice);
            st = try_fn(ctx);
        }
        /* An RMW too, to keep the ringer's release sequence intact. */
        atomic_exchange_explicit(&bell->sleeping, 0, memory_order_acq_rel);
        if (st != MB_STATUS_AGAIN) return st;
    }
}
