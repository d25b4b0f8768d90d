/* The bare baseline for the shared-memory transport: two single-producer/
 * single-consumer byte rings in one MAP_SHARED anonymous mapping, made before
 * fork and used by parent and child. The same layout idea as shm/ (free-
 * running head/tail on their own lines, a descriptor per slot, contiguous
 * 8-aligned messages that restart at offset 0 when the ring is empty), minus
 * everything that makes a transport safe: no validation of the peer, no
 * futex, no peer-death check. Waits busy-poll with a pause instruction and
 * give up only after a long stall. Trusts its peer: benchmarks only. */
#ifndef MB_BENCH_SPIN_RING_H
#define MB_BENCH_SPIN_RING_H

#include <stddef.h>
#include <stdint.h>

#include "protocol/status.h"

/* The shared mapping: both rings, created before fork. */
typedef struct mb_bench_spin_chan mb_bench_spin_chan;

/* A waiting side gives up (TIMEOUT) after this long without progress. */
#define MB_BENCH_SPIN_STALL_NS (60ll * 1000000000ll)

/* Maps the channel: n_slots (power of two >= 2) messages in flight and
 * ring_bytes (multiple of 8, >= 64) of payload per direction. Pages are
 * touched lazily. INVALID_ARG, NOMEM. The caller owns *out; both processes
 * unmap their copy with mb_bench_spin_chan_destroy. */
mb_status mb_bench_spin_chan_create(uint32_t n_slots, size_t ring_bytes, mb_bench_spin_chan **out);

/* Unmaps this process's view. Cannot fail. */
void mb_bench_spin_chan_destroy(mb_bench_spin_chan *c);

/* One process's endpoint: side 0 produces on ring 0 and consumes ring 1,
 * side 1 the other way round. Private state lives here; the caller owns it. */
typedef struct {
    struct mb_bench_spin_ctrl *tx, *rx;           /* shared head/tail of each ring */
    struct mb_bench_spin_desc *tx_desc, *rx_desc; /* shared [n_slots] */
    unsigned char *tx_payload, *rx_payload;       /* shared [payload_bytes] */
    uint64_t payload_bytes;
    uint32_t mask;
    /* Producer, private. */
    uint64_t tail, head_seen, write_off, used_bytes;
    uint64_t res_off, res_pad;
    uint64_t *cost; /* [n_slots] bytes each unreleased message holds */
    /* Consumer, private. */
    uint64_t head;
} mb_bench_spin_end;

/* Binds *e to side (0 or 1) of c. INVALID_ARG, NOMEM. */
mb_status mb_bench_spin_end_init(mb_bench_spin_end *e, mb_bench_spin_chan *c, int side);
void mb_bench_spin_end_fini(mb_bench_spin_end *e);

/* Spins until bytes (32 .. ring capacity) fit, then returns the space in
 * *buf (8-aligned). FULL if it can never fit, TIMEOUT after a stall. */
mb_status mb_bench_spin_reserve(mb_bench_spin_end *e, size_t bytes, void **buf);

/* Publishes the reserved message. Cannot fail. */
void mb_bench_spin_commit(mb_bench_spin_end *e, size_t bytes);

/* Spins until a message arrives; *buf stays valid until release. TIMEOUT
 * after a stall. */
mb_status mb_bench_spin_recv(mb_bench_spin_end *e, const void **buf, size_t *bytes);

/* Hands the received message's space back. Cannot fail. */
void mb_bench_spin_release(mb_bench_spin_end *e);

#endif
