/* The ZeroMQ transport's send buffers: 64-byte aligned blocks handed to
 * libzmq as zero-copy frames and returned by libzmq's free callback, possibly
 * on its I/O thread. A few returned blocks are cached so that large messages
 * do not cost a malloc (and the page faults of a fresh mapping) each. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "protocol/zmq_impl.h"

_Static_assert(sizeof(mb_zmq_buf) == 64, "the buffer header keeps data 64-byte aligned");

/* Cache limits: enough for a handful of large messages in flight. */
#define MB_ZMQ_POOL_MAX_FREE 8u
#define MB_ZMQ_POOL_MAX_FREE_BYTES ((size_t)256 << 20)

struct mb_zmq_pool {
    pthread_mutex_t lock; /* guards free, n_free, free_bytes, closing */
    mb_zmq_buf *free;
    unsigned n_free;
    size_t free_bytes;
    int closing;
    /* One reference for the owner plus one per buffer out of the cache. */
    atomic_size_t refs;
};

mb_status mb_zmq_pool_create(mb_zmq_pool **out)
{
    mb_zmq_pool *p = calloc(1, sizeof *p);
    if (!p) return MB_STATUS_NOMEM;
    if (pthread_mutex_init(&p->lock, NULL) != 0) {
        free(p);
        return MB_STATUS_NOMEM;
    }
    atomic_init(&p->refs, 1);
    *out = p;
    return MB_STATUS_OK;
}

static void mb_zmq_pool_unref(mb_zmq_pool *p)
{
    /* acq_rel: the last owner must see every other owner's writes before it
     * destroys the pool. */
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) != 1) return;
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* Size classes: 4 KiB steps up to 64 KiB, then eight steps per power of two
 * (at most 12.5% slack), so messages of similar size share buffers. */
static size_t mb_zmq_pool_round(size_t bytes)
{
    size_t step = 4096;
    if (bytes > ((size_t)64 << 10)) {
        size_t pow2 = (size_t)64 << 10;
        while (pow2 < bytes / 2 && pow2 <= SIZE_MAX / 4)
            pow2 *= 2;
        step = pow2 / 8;
    }
    if (bytes > SIZE_MAX - step) return 0;
    return (bytes + step - 1) / step * step;
}

mb_zmq_buf *mb_zmq_pool_get(mb_zmq_pool *p, size_t bytes)
{
    mb_zmq_buf *b = NULL;
    pthread_mutex_lock(&p->lock);
    mb_zmq_buf **best = NULL;
    for (mb_zmq_buf **it = &p->free; *it; it = &(*it)->next)
        if ((*it)->cap >= bytes && (!best || (*it)->cap < (*best)->cap)) best = it;
    if (best) {
        b = *best;
        *best = b->next;
        p->n_free--;
        p->free_bytes -= b->cap;
    }
    pthread_mutex_unlock(&p->lock);

    if (!b) {
        size_t cap = mb_zmq_pool_round(bytes);
        if (cap == 0 || cap > SIZE_MAX - sizeof(mb_zmq_buf)) return NULL;
        b = aligned_alloc(64, sizeof(mb_zmq_buf) + cap);
        if (!b) return NULL;
        b->pool = p;
        b->cap = cap;
        atomic_init(&b->handed, 0);
    }
    b->next = NULL;
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return b;
}

void mb_zmq_pool_put(mb_zmq_buf *b)
{
    mb_zmq_pool *p = b->pool;
    int cached = 0;
    pthread_mutex_lock(&p->lock);
    if (!p->closing && p->n_free < MB_ZMQ_POOL_MAX_FREE &&
        b->cap <= MB_ZMQ_POOL_MAX_FREE_BYTES - p->free_bytes) {
        b->next = p->free;
        p->free = b;
        p->n_free++;
        p->free_bytes += b->cap;
        cached = 1;
    }
    pthread_mutex_unlock(&p->lock);
    if (!cached) free(b);
    mb_zmq_pool_unref(p);
}

void mb_zmq_pool_hand_over(mb_zmq_buf *b)
{
    atomic_store_explicit(&b->handed, 1, memory_order_release);
}

void mb_zmq_pool_free_frame(void *data, void *hint)
{
    (void)data; /* points inside hint's block */
    mb_zmq_buf *b = hint;
    /* acquire: pairs with mb_zmq_pool_hand_over on the sending thread. */
    (void)atomic_load_explicit(&b->handed, memory_order_acquire);
    mb_zmq_pool_put(b);
}

void mb_zmq_pool_release(mb_zmq_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    p->closing = 1;
    mb_zmq_buf *list = p->free;
    p->free = NULL;
    p->n_free = 0;
    p->free_bytes = 0;
    pthread_mutex_unlock(&p->lock);
    while (list) {
        mb_zmq_buf *next = list->next;
        free(list);
        list = next;
    }
    mb_zmq_pool_unref(p);
}
