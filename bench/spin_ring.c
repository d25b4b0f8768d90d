/* The bare spin ring of bench/spin_ring.h: the mapping's layout, reserve/
 * commit on the producer side, recv/release on the consumer side. */
#include "bench/spin_ring.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "bench/timing.h"

#define MB_BENCH_SPIN_LINE 64u
#define MB_BENCH_SPIN_PAGE 4096u

struct mb_bench_spin_ctrl {
    _Alignas(MB_BENCH_SPIN_LINE) _Atomic uint64_t tail; /* producer: messages published */
    _Alignas(MB_BENCH_SPIN_LINE) _Atomic uint64_t head; /* consumer: messages released */
};

struct mb_bench_spin_desc {
    uint64_t offset; /* in the payload area, 8-aligned */
    uint64_t length;
};

/* The mapping's first bytes; the rest is laid out at the recorded offsets. */
struct mb_bench_spin_chan {
    uint32_t n_slots;
    uint64_t ring_bytes;
    size_t map_bytes;
    size_t desc_offset[2];
    size_t payload_offset[2];
    _Alignas(MB_BENCH_SPIN_LINE) struct mb_bench_spin_ctrl ctrl[2];
};

static size_t mb_bench_spin_align(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}

mb_status mb_bench_spin_chan_create(uint32_t n_slots, size_t ring_bytes, mb_bench_spin_chan **out)
{
    if (!out || n_slots < 2 || (n_slots & (n_slots - 1)) != 0 || ring_bytes < 64 ||
        ring_bytes % 8 != 0 || ring_bytes > ((size_t)1 << 40))
        return MB_STATUS_INVALID_ARG;
    size_t off = mb_bench_spin_align(sizeof(mb_bench_spin_chan), MB_BENCH_SPIN_LINE);
    size_t desc_offset[2], payload_offset[2];
    for (int r = 0; r < 2; r++) {
        desc_offset[r] = off;
        off = mb_bench_spin_align(off + n_slots * sizeof(struct mb_bench_spin_desc),
                                  MB_BENCH_SPIN_LINE);
    }
    for (int r = 0; r < 2; r++) {
        off = mb_bench_spin_align(off, MB_BENCH_SPIN_PAGE);
        payload_offset[r] = off;
        off += ring_bytes;
    }
    void *base = mmap(NULL, off, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return MB_STATUS_NOMEM;
    mb_bench_spin_chan *c = base; /* zero-filled: counters start at 0 */
    c->n_slots = n_slots;
    c->ring_bytes = ring_bytes;
    c->map_bytes = off;
    memcpy(c->desc_offset, desc_offset, sizeof(desc_offset));
    memcpy(c->payload_offset, payload_offset, sizeof(payload_offset));
    *out = c;
    return MB_STATUS_OK;
}

void mb_bench_spin_chan_destroy(mb_bench_spin_chan *c)
{
    if (c) munmap(c, c->map_bytes);
}

mb_status mb_bench_spin_end_init(mb_bench_spin_end *e, mb_bench_spin_chan *c, int side)
{
    if (!e || !c || (side != 0 && side != 1)) return MB_STATUS_INVALID_ARG;
    memset(e, 0, sizeof(*e));
    e->cost = calloc(c->n_slots, sizeof(*e->cost));
    if (!e->cost) return MB_STATUS_NOMEM;
    unsigned char *base = (unsigned char *)c;
    int tx = side, rx = 1 - side;
    e->tx = &c->ctrl[tx];
    e->rx = &c->ctrl[rx];
    e->tx_desc = (struct mb_bench_spin_desc *)(void *)(base + c->desc_offset[tx]);
    e->rx_desc = (struct mb_bench_spin_desc *)(void *)(base + c->desc_offset[rx]);
    e->tx_payload = base + c->payload_offset[tx];
    e->rx_payload = base + c->payload_offset[rx];
    e->payload_bytes = c->ring_bytes;
    e->mask = c->n_slots - 1;
    return MB_STATUS_OK;
}

void mb_bench_spin_end_fini(mb_bench_spin_end *e)
{
    free(e->cost);
    memset(e, 0, sizeof(*e));
}

static inline void mb_bench_spin_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* One reserve attempt; 1 when the space is ours. */
static int mb_bench_spin_try_reserve(mb_bench_spin_end *e, uint64_t need, void **buf)
{
    /* acquire: the consumer's reads of released payload happen before we reuse it. */
    uint64_t head = atomic_load_explicit(&e->tx->head, memory_order_acquire);
    for (; e->head_seen != head; e->head_seen++)
        e->used_bytes -= e->cost[e->head_seen & e->mask];
    if (e->head_seen == e->tail) e->write_off = 0;  /* empty: restart at 0 */
    if (e->tail - e->head_seen > e->mask) return 0; /* every slot in flight */
    uint64_t off = e->write_off, pad = 0;
    if (need > e->payload_bytes - off) { /* would wrap: skip the end */
        pad = e->payload_bytes - off;
        off = 0;
    }
    if (pad + need > e->payload_bytes - e->used_bytes) return 0;
    e->res_off = off;
    e->res_pad = pad;
    *buf = e->tx_payload + off;
    return 1;
}

mb_status mb_bench_spin_reserve(mb_bench_spin_end *e, size_t bytes, void **buf)
{
    uint64_t need = ((uint64_t)bytes + 7) & ~(uint64_t)7;
    if (bytes < 32 || need > e->payload_bytes) return MB_STATUS_FULL;
    int64_t since = 0;
    for (unsigned i = 1;; i++) {
        if (mb_bench_spin_try_reserve(e, need, buf)) return MB_STATUS_OK;
        mb_bench_spin_pause();
        if ((i & 4095) == 0) {
            int64_t now = mb_bench_now_ns();
            if (!since)
                since = now;
            else if (now - since > MB_BENCH_SPIN_STALL_NS)
                return MB_STATUS_TIMEOUT;
        }
    }
}

void mb_bench_spin_commit(mb_bench_spin_end *e, size_t bytes)
{
    uint64_t used = ((uint64_t)bytes + 7) & ~(uint64_t)7;
    struct mb_bench_spin_desc *d = &e->tx_desc[e->tail & e->mask];
    d->offset = e->res_off;
    d->length = bytes;
    e->cost[e->tail & e->mask] = e->res_pad + used;
    e->used_bytes += e->res_pad + used;
    e->write_off = e->res_off + used;
    e->tail++;
    /* release: payload and descriptor are visible before the new tail. */
    atomic_store_explicit(&e->tx->tail, e->tail, memory_order_release);
}

mb_status mb_bench_spin_recv(mb_bench_spin_end *e, const void **buf, size_t *bytes)
{
    int64_t since = 0;
    for (unsigned i = 1;; i++) {
        /* acquire: pairs with the producer's release of tail. */
        if (atomic_load_explicit(&e->rx->tail, memory_order_acquire) != e->head) break;
        mb_bench_spin_pause();
        if ((i & 4095) == 0) {
            int64_t now = mb_bench_now_ns();
            if (!since)
                since = now;
            else if (now - since > MB_BENCH_SPIN_STALL_NS)
                return MB_STATUS_TIMEOUT;
        }
    }
    const struct mb_bench_spin_desc *d = &e->rx_desc[e->head & e->mask];
    *buf = e->rx_payload + d->offset;
    *bytes = (size_t)d->length;
    return MB_STATUS_OK;
}

void mb_bench_spin_release(mb_bench_spin_end *e)
{
    e->head++;
    /* release: our reads of the message happen before the producer reuses it. */
    atomic_store_explicit(&e->rx->head, e->head, memory_order_release);
}
