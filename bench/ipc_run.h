/* The IPC benchmark's processes and timing loops: starting one forked echo
 * child per variant (a project transport or its bare baseline) with the
 * parent's end of the channel, parking a busy-polling child while another
 * variant runs, and the two measurements, ping-pong round trips and a
 * windowed one-way stream with small acks. */
#ifndef MB_BENCH_IPC_RUN_H
#define MB_BENCH_IPC_RUN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "bench/ipc_chan.h"
#include "bench/timing.h"

typedef enum {
    MB_BENCH_IPC_SPIN = 0,     /* bare spin ring (baseline of shm) */
    MB_BENCH_IPC_SHM,          /* shm transport */
    MB_BENCH_IPC_ZMQ_BARE_IPC, /* bare libzmq over ipc:// */
    MB_BENCH_IPC_ZMQ_IPC,      /* zmq transport over ipc:// */
    MB_BENCH_IPC_ZMQ_BARE_TCP, /* bare libzmq over tcp://127.0.0.1 */
    MB_BENCH_IPC_ZMQ_TCP,      /* zmq transport over tcp://127.0.0.1 */
    MB_BENCH_IPC_KIND_COUNT_
} mb_bench_ipc_kind;

/* "spin_ring", "shm", "zmq_bare_ipc", ... Cannot fail. */
const char *mb_bench_ipc_kind_name(mb_bench_ipc_kind kind);

/* A running echo child and the parent's end of its channel. */
typedef struct {
    mb_bench_ipc_kind kind;
    pid_t pid;
    mb_bench_chan chan;       /* after connect */
    mb_bench_spin_chan *spin; /* the spin ring's mapping (SPIN only) */
    mb_transport shm;         /* the parent's shm end until connect (SHM only) */
    int report_fd;            /* where a ZeroMQ child reports its endpoint */
    char ipc_path[128];       /* ipc:// socket file to remove at the end */
    int park_when_idle;       /* the child busy-polls: stop it between rounds */
    int parked;
    uint64_t tag; /* next request tag */
} mb_bench_ipc_peer;

/* Forks the echo child of kind, pinned to CPU child_cpu (-1: not pinned).
 * shm_spin_ns is the shm transport's spin_ns option (0: its default). Fork
 * every child before connecting any: a child forked while the parent runs
 * libzmq threads may inherit a lock held by one of them. The child serves
 * until SHUTDOWN. IO, NOMEM or the transport's status on failure. */
mb_status mb_bench_ipc_peer_spawn(mb_bench_ipc_kind kind, int child_cpu, int64_t shm_spin_ns,
                                  mb_bench_ipc_peer *out);

/* Opens the parent's end of the channel to a spawned child. Blocks until a
 * ZeroMQ child reported its endpoint. On failure the child is killed and
 * reaped. */
mb_status mb_bench_ipc_peer_connect(mb_bench_ipc_peer *p);

/* Stops (SIGSTOP, waited for) or resumes a child that busy-polls; no-op for
 * the others. Call park only when no request is outstanding. IO. */
mb_status mb_bench_ipc_peer_park(mb_bench_ipc_peer *p);
mb_status mb_bench_ipc_peer_unpark(mb_bench_ipc_peer *p);

/* Sends SHUTDOWN, waits for the ack, hangs up and waits for the child's
 * exit. OK only if the child exited 0. Always frees everything and reaps
 * the child (killing it after a failure); no-op once stopped. */
mb_status mb_bench_ipc_peer_stop(mb_bench_ipc_peer *p);

/* Round trips of PING/PONG messages of bytes each: warm-up for warm_ns (2
 * trips at least), then one sample per round trip appended to out until
 * run_ns passed (10 samples at least). The
 * body is copied from body[bytes - 32]. PROTOCOL if a reply is out of
 * order or of the wrong size; the channel's status on failure. */
mb_status mb_bench_ipc_pingpong(mb_bench_ipc_peer *p, size_t bytes, const void *body,
                                int64_t warm_ns, int64_t run_ns, mb_bench_samples *out);

/* What streams measured, accumulated over calls. Zero-initialise. */
typedef struct {
    uint64_t bytes;         /* acknowledged */
    int64_t ns;             /* taken, drains included */
    uint64_t batch_msgs;    /* messages per batch sample */
    mb_bench_samples batch; /* time between every batch_msgs-th ack */
} mb_bench_stream_acc;

/* One-way stream: EXPERT_REQ messages of bytes with up to window
 * unacknowledged, each acked by a 64-byte STATUS. Warm-up for warm_ns and
 * at least warm_msgs messages (so every page of a ring is touched), then
 * sends for run_ns (two batches at least) and drains, adding to *acc (acc->batch_msgs, nonzero,
 * set by the caller). Errors as for pingpong. */
mb_status mb_bench_ipc_stream(mb_bench_ipc_peer *p, size_t bytes, const void *body, unsigned window,
                              uint64_t warm_msgs, int64_t warm_ns, int64_t run_ns,
                              mb_bench_stream_acc *acc);

#endif
