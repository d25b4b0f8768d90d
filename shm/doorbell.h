/* Waking a sleeping peer across processes, and knowing whether it still
 * lives. A doorbell is a futex word in the segment plus a "sleeping" flag, so
 * the notifier makes a syscall only when the waiter said it might sleep.
 * Waits spin briefly, then sleep in bounded slices so that a dead peer is
 * noticed (pidfd, or kill/proc as fallback) instead of waited on forever.
 * Private to shm/. */
#ifndef MB_SHM_DOORBELL_H
#define MB_SHM_DOORBELL_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "protocol/status.h"

/* Lives in the segment. One waiter per doorbell (SPSC); a hostile peer can
 * only cause spurious or late wake-ups, which the bounded sleep absorbs. */
typedef struct {
    _Atomic uint32_t seq;      /* the futex word: bumped by every ring that wakes */
    _Atomic uint32_t sleeping; /* 1 while the waiter may be asleep */
} mb_shm_bell;

/* Slice of one futex sleep: the period at which a dead peer is noticed. */
#define MB_SHM_SLEEP_SLICE_NS 50000000ll

/* Wakes the waiter if it announced that it sleeps. Call after publishing the
 * state the waiter waits for. Cannot fail; never blocks. */
void mb_shm_bell_ring(mb_shm_bell *bell);

/* One attempt at the operation being waited for: MB_STATUS_AGAIN to keep
 * waiting, anything else ends the wait with that status. */
typedef mb_status (*mb_shm_try_fn)(void *ctx);

/* Waits until try_fn returns something other than AGAIN. Spins up to spin_ns
 * (with a pause instruction), then sleeps on bell in slices of at most
 * MB_SHM_SLEEP_SLICE_NS; before each slice alive_fn (OK: peer alive) is
 * asked, and its failure ends the wait after one last try. timeout_ns < 0
 * waits forever, 0 tries once. Returns try_fn's result, TIMEOUT, or
 * alive_fn's failure. */
mb_status mb_shm_bell_wait(mb_shm_bell *bell, mb_shm_try_fn try_fn, mb_shm_try_fn alive_fn,
                           void *ctx, int64_t timeout_ns, int64_t spin_ns);

/* Monotonic clock in nanoseconds. */
int64_t mb_shm_now_ns(void);

/* A process being watched. */
typedef struct {
    pid_t pid; /* 0: none known */
    int pidfd; /* -1: not available (old kernel): kill(0) and /proc are used */
} mb_shm_peer;

/* No peer known. Cannot fail. */
void mb_shm_peer_init(mb_shm_peer *peer);

/* Starts watching pid (a pidfd where the kernel has them). PEER_DEAD if it
 * is already gone, INVALID_ARG for pid <= 0, IO on other failures. Replaces
 * a previous watch only on success. */
mb_status mb_shm_peer_watch(mb_shm_peer *peer, pid_t pid);

/* OK while the peer (if any is known) lives, PEER_DEAD once it exited, even
 * if it is an unreaped zombie. One poll() syscall; never blocks. */
mb_status mb_shm_peer_check(const mb_shm_peer *peer);

/* Closes the pidfd. Cannot fail. */
void mb_shm_peer_fini(mb_shm_peer *peer);

#endif
