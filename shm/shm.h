/* The shared-memory transport: the same-host fast path between the
 * coordinator and one worker process. One sealed memfd segment holds two
 * single-producer/single-consumer rings (requests coordinator->worker,
 * replies worker->coordinator); messages are encoded and decoded in place,
 * a waiting side spins briefly then sleeps on a futex, and a dead peer is
 * reported as MB_STATUS_PEER_DEAD instead of being waited on. Everything read
 * from the segment is validated: a corrupt peer yields MB_STATUS_CORRUPT,
 * never a crash or a hang. Implements protocol/transport.h. */
#ifndef MB_SHM_SHM_H
#define MB_SHM_SHM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "protocol/status.h"
#include "protocol/transport.h"

typedef struct {
    uint32_t n_slots; /* messages in flight per direction, power of two in [2, 65536]; 0: 64 */
    uint64_t
        request_bytes;    /* coordinator->worker payload ring, multiple of 8, >= 4096; 0: 64 MiB */
    uint64_t reply_bytes; /* worker->coordinator payload ring, likewise; 0: 64 MiB */
    int64_t spin_ns;      /* busy-wait before sleeping, <= 20 ms; 0: 30 us; < 0: never spin */
    int peer_fd_inheritable; /* nonzero: *fd_for_peer comes without FD_CLOEXEC */
} mb_shm_options;

#define MB_SHM_DEFAULT_SLOTS 64u
#define MB_SHM_DEFAULT_RING_BYTES                                                                  \
    (64ull << 20) /* a 4096 x 2048 x f32 prefill chunk (32 MiB) fits */
#define MB_SHM_DEFAULT_SPIN_NS 30000

/* One pause of a spin-wait (the rings' and the dispatcher's): the sibling
 * hyperthread keeps the core meanwhile. */
static inline void mb_shm_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Coordinator side: creates the segment (a sealed memfd, mode 0600, counted
 * against memory only as pages are touched) and the transport on it.
 * opt may be NULL for the defaults. *fd_for_peer is a new fd for the
 * segment, owned by the caller: hand it to the worker, then close it. It is
 * FD_CLOEXEC unless opt->peer_fd_inheritable; to pass it across exec either
 * set that, or dup2() it onto the worker's fd number in the child (dup2
 * clears FD_CLOEXEC on the copy), or clear the flag in the child after fork.
 * Outputs are written only on success. Never blocks. INVALID_ARG for bad
 * options, OVERFLOW, NOMEM, IO. On either endpoint, max_message_bytes is the
 * largest message it can send (its outgoing ring's bytes); what it can
 * receive is the peer's. After fork, a child must not destroy its parent's
 * endpoint (that would hang up for the parent): it attaches its own. */
mb_status mb_shm_transport_create(const mb_shm_options *opt, mb_transport *out, int *fd_for_peer);

/* Coordinator side: after spawning the worker, watch it (a pidfd) so that
 * waits return PEER_DEAD once it exits. PEER_DEAD if it already exited and
 * was reaped; INVALID_ARG if t is not a coordinator-side shm transport or
 * pid <= 0; IO. Until this is called, only a worker's clean hang-up (its
 * destroy) is noticed. Never blocks. */
mb_status mb_shm_transport_set_peer_pid(mb_transport *t, pid_t pid);

/* Coordinator side: also declare the worker lost (PEER_DEAD, for good) once
 * its heartbeat, which a thread of the attached worker bumps every 50 ms
 * whatever it is doing, has not moved for timeout_ns: a frozen (SIGSTOP) or
 * hung process, not a busy one. 0 turns the watch off (the default). The
 * watch starts with the first beat, so a worker still starting is not
 * judged. Messages the worker published before are still delivered; once
 * none is left every wait returns PEER_DEAD. INVALID_ARG for a worker-side
 * transport or timeout_ns < 0. */
mb_status mb_shm_transport_set_peer_timeout(mb_transport *t, int64_t timeout_ns);

/* Worker side: maps the segment of fd (inherited or received) after
 * validating its header against the file: magic (BAD_MAGIC), ABI version
 * (BAD_VERSION), sizes, offsets, alignment, overlaps and seals (CORRUPT).
 * Watches the coordinator whose pid the header records (PEER_DEAD if it is
 * gone) and starts the heartbeat thread (stopped by destroy). Does not take ownership of fd: the caller may close it at once. A
 * segment serves one worker: attach once per segment. Setting
 * prctl(PR_SET_PDEATHSIG) is left to the worker's main. Never blocks. */
mb_status mb_shm_transport_attach(int fd, mb_transport *out);

/* Either side: how long a receive spins before it sleeps, in ns, as the
 * coordinator set it in the segment (0: never); -1 if t is not an shm
 * transport. A worker's other idle threads can follow it. */
int64_t mb_shm_transport_spin_ns(const mb_transport *t);

#endif
