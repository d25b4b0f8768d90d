/* The SPSC ring's reserve/commit (producer) and peek/release (consumer).
 * Each side trusts only its own private counters; what it reads of the
 * peer's (head, tail, descriptors) is loaded once and validated. */
#include "shm/ring.h"

#include <stdlib.h>
#include <string.h>

mb_status mb_shm_ring_init(mb_shm_ring *r, const mb_shm_segment *seg, const mb_shm_ring_layout *l)
{
    memset(r, 0, sizeof(*r));
    r->cost = calloc(l->n_slots, sizeof(*r->cost));
    if (!r->cost) return MB_STATUS_NOMEM;
    r->ctrl = (mb_shm_ring_ctrl *)(void *)(seg->base + l->ctrl_offset);
    r->slots = (mb_shm_slot *)(void *)(seg->base + l->slots_offset);
    r->payload = seg->base + l->payload_offset;
    r->payload_bytes = l->payload_bytes;
    r->n_slots = l->n_slots;
    r->mask = l->n_slots - 1;
    return MB_STATUS_OK;
}

void mb_shm_ring_fini(mb_shm_ring *r)
{
    free(r->cost);
    memset(r, 0, sizeof(*r));
}

/* Producer: frees the payload of every message the consumer released since
 * the last look. The consumer's head must lie in [head_seen, tail]. */
static mb_status mb_shm_ring_collect(mb_shm_ring *r)
{
    /* acquire: the consumer's reads of released payload happen before we overwrite it. */
    uint64_t head = atomic_load_explicit(&r->ctrl->head, memory_order_acquire);
    if (head - r->head_seen > r->tail - r->head_seen) return MB_STATUS_CORRUPT;
    for (; r->head_seen != head; r->head_seen++)
        r->used_bytes -= r->cost[r->head_seen & r->mask];
    /* Empty: restart at 0 so that any message up to the capacity fits. */
    if (r->head_seen == r->tail) r->write_off = 0;
    return MB_STATUS_OK;
}

mb_status mb_shm_ring_reserve(mb_shm_ring *r, size_t bytes, void **buf)
{
    uint64_t need = ((uint64_t)bytes + 7) & ~(uint64_t)7; /* bytes <= capacity: no wrap */
    mb_status st = mb_shm_ring_collect(r);
    if (st != MB_STATUS_OK) return st;
    if (r->tail - r->head_seen >= r->n_slots) return MB_STATUS_AGAIN;

    uint64_t off = r->write_off, pad = 0;
    if (need > r->payload_bytes - off) { /* would wrap: skip the tail end */
        pad = r->payload_bytes - off;
        off = 0;
    }
    if (pad + need > r->payload_bytes - r->used_bytes) return MB_STATUS_AGAIN;
    r->reserving = 1;
    r->res_off = off;
    r->res_pad = pad;
    r->res_bytes = bytes;
    *buf = r->payload + off;
    return MB_STATUS_OK;
}

void mb_shm_ring_commit(mb_shm_ring *r, size_t bytes)
{
    uint64_t used = ((uint64_t)bytes + 7) & ~(uint64_t)7;
    mb_shm_slot *s = &r->slots[r->tail & r->mask];
    atomic_store_explicit(&s->offset, r->res_off, memory_order_relaxed);
    atomic_store_explicit(&s->length, bytes, memory_order_relaxed);
    atomic_store_explicit(&s->tag, r->tail, memory_order_relaxed);
    r->cost[r->tail & r->mask] = r->res_pad + used;
    r->used_bytes += r->res_pad + used;
    r->write_off = r->res_off + used;
    r->reserving = 0;
    r->tail++;
    /* release: the payload and the descriptor are visible before the new tail. */
    atomic_store_explicit(&r->ctrl->tail, r->tail, memory_order_release);
}

mb_status mb_shm_ring_peek(mb_shm_ring *r, const void **buf, size_t *bytes)
{
    if (r->head == r->tail_seen) {
        /* acquire: pairs with the producer's release; descriptor and payload reads follow it. */
        uint64_t tail = atomic_load_explicit(&r->ctrl->tail, memory_order_acquire);
        if (tail - r->head > r->n_slots) return MB_STATUS_CORRUPT; /* also catches tail < head */
        r->tail_seen = tail;
        if (tail == r->head) return MB_STATUS_AGAIN;
    }
    /* Each field loaded once into a local; only the locals are used. */
    const mb_shm_slot *s = &r->slots[r->head & r->mask];
    uint64_t off = atomic_load_explicit(&s->offset, memory_order_relaxed);
    uint64_t len = atomic_load_explicit(&s->length, memory_order_relaxed);
    uint64_t tag = atomic_load_explicit(&s->tag, memory_order_relaxed);
    if (tag != r->head || off % 8 != 0 || off >= r->payload_bytes ||
        len < MB_SHM_MIN_MESSAGE_BYTES || len > r->payload_bytes - off || len > (uint64_t)SIZE_MAX)
        return MB_STATUS_CORRUPT;
    r->holding = 1;
    *buf = r->payload + off;
    *bytes = (size_t)len;
    return MB_STATUS_OK;
}

void mb_shm_ring_release(mb_shm_ring *r)
{
    r->holding = 0;
    r->head++;
    /* release: our reads of the message happen before the producer may reuse its space. */
    atomic_store_explicit(&r->ctrl->head, r->head, memory_order_release);
}
