/* One single-producer/single-consumer message ring in the segment: free-
 * running 64-bit head/tail counters (producer owns tail, consumer owns head,
 * each on its own line), a power-of-two slot array of descriptors, and a
 * payload byte ring where each message is contiguous and 8-aligned (a message
 * that would wrap pads to the end and starts at 0), so both sides encode and
 * decode in place. Each process keeps its own private state; the shared
 * counters and descriptors it reads from the peer are validated before use.
 * Private to shm/. */
#ifndef MB_SHM_RING_H
#define MB_SHM_RING_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol/status.h"
#include "shm/doorbell.h"
#include "shm/segment.h"

/* The shared control block: 4 lines. */
typedef struct {
    _Alignas(MB_SHM_LINE_BYTES) _Atomic uint64_t tail; /* producer: messages published */
    _Alignas(MB_SHM_LINE_BYTES) _Atomic uint64_t head; /* consumer: messages released */
    _Alignas(MB_SHM_LINE_BYTES) mb_shm_bell data;      /* the consumer sleeps here for tail */
    _Alignas(MB_SHM_LINE_BYTES) mb_shm_bell space;     /* the producer sleeps here for head */
} mb_shm_ring_ctrl;

/* One descriptor, written by the producer before it publishes tail. */
typedef struct {
    _Atomic uint64_t offset;   /* message start in the payload area, 8-aligned */
    _Atomic uint64_t length;   /* message bytes, >= MB_SHM_MIN_MESSAGE_BYTES */
    _Atomic uint64_t tag;      /* the message's sequence number (its tail value) */
    _Atomic uint64_t reserved; /* 0 */
} mb_shm_slot;

/* One process's view of one ring, as producer or consumer. */
typedef struct {
    mb_shm_ring_ctrl *ctrl; /* in the segment */
    mb_shm_slot *slots;     /* [n_slots] in the segment */
    uint8_t *payload;       /* [payload_bytes] in the segment */
    uint64_t payload_bytes;
    uint32_t n_slots;
    uint32_t mask;

    /* Producer, private. */
    uint64_t tail;       /* next sequence number to publish */
    uint64_t head_seen;  /* last validated consumer head */
    uint64_t write_off;  /* where the next message goes when it fits */
    uint64_t used_bytes; /* payload held by unreleased messages, padding included */
    uint64_t *cost;      /* [n_slots] payload bytes each in-flight message holds */
    int reserving;
    uint64_t res_off, res_pad, res_bytes;

    /* Consumer, private. */
    uint64_t head;      /* next sequence number to read */
    uint64_t tail_seen; /* last validated producer tail */
    int holding;        /* a message is out between peek and release */
} mb_shm_ring;

/* Binds r to ring l of seg, which holds a validated header; counters start
 * at 0 (one producer and one consumer per segment lifetime). NOMEM. */
mb_status mb_shm_ring_init(mb_shm_ring *r, const mb_shm_segment *seg, const mb_shm_ring_layout *l);
void mb_shm_ring_fini(mb_shm_ring *r);

/* Producer: finds contiguous space for bytes (MIN_MESSAGE_BYTES..capacity,
 * checked by the caller) and a free slot. AGAIN when the consumer must first
 * release something, CORRUPT when its head is inconsistent. Never blocks. */
mb_status mb_shm_ring_reserve(mb_shm_ring *r, size_t bytes, void **buf);

/* Producer: publishes the reserved message as bytes long (<= reserved). The
 * caller rings ctrl->data afterwards. Cannot fail. */
void mb_shm_ring_commit(mb_shm_ring *r, size_t bytes);

/* Consumer: the next message, validated (sequence tag, offset and length in
 * the payload area, offset 8-aligned). AGAIN when empty, CORRUPT when a
 * counter or descriptor fails validation. Never blocks. */
mb_status mb_shm_ring_peek(mb_shm_ring *r, const void **buf, size_t *bytes);

/* Consumer: hands the peeked message back. The caller rings ctrl->space
 * afterwards. Cannot fail. */
void mb_shm_ring_release(mb_shm_ring *r);

#endif
