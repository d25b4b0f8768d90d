/* Private state of the worker, shared by worker.c (message handlers, the
 * inline path for synchronous backends) and worker_serve.c (the serving
 * loop and the pipeline for asynchronous backends). */
#ifndef MB_BACKENDS_WORKER_INTERNAL_H
#define MB_BACKENDS_WORKER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "backends/worker.h"
#include "protocol/message.h"

#define MB_WORKER_MAX_FILES 64

typedef struct {
    char *path;
    const unsigned char *map;
    uint64_t bytes;
    int registered; /* mb_backend_register_host accepted it */
} mb_worker_file;

/* One request submitted to an asynchronous backend. The backend knows it by
 * a tag unique in this process (wtag); the reply carries the peer's tag,
 * which may repeat across sessions. */
typedef struct {
    int used;
    int consumed;     /* the backend read its inputs */
    uint64_t wtag;
    uint64_t peer_tag;
    uint32_t n_tokens;
    uint32_t d_model;
    mb_dtype dtype;
    size_t reply_bytes;
    uint64_t decode_ns;
} mb_worker_pending;

struct mb_worker {
    const mb_worker_config *cfg;
    /* Private copies of a request's pair arrays: the request itself sits in
     * memory the peer can still write, and the backend reads these arrays
     * more than once. One copy suffices: the pipeline holds at most one
     * request whose inputs are not consumed yet. */
    uint16_t *counts;
    mb_proto_pair *pairs;
    size_t counts_cap, pairs_cap;
    mb_backend_caps caps;
    mb_proto_limits limits;
    mb_worker_file files[MB_WORKER_MAX_FILES];
    unsigned n_files;
    /* The session's memory: weight bytes loaded into each slot (allocated
     * with the first load), and their sum, checked against
     * cfg->max_memory_bytes. */
    uint64_t *slot_bytes;
    uint64_t loaded_bytes;
    mb_worker_pending pending[MB_BACKEND_MAX_INFLIGHT];
    uint32_t n_pending;
    /* The transport's shared segment, registered with the backend so a
     * GPU backend may read activations and write results in place; NULL
     * when the transport has none or the backend declined. */
    void *shared_base;
};

uint64_t mb_worker_now_ns(void);

/* Sends a body-less reply (STATUS or PONG) with tag. Blocking while the
 * channel is full; returns the transport's failure. */
mb_status mb_worker_reply_empty(mb_worker *w, mb_proto_opcode op, uint64_t tag, mb_status status);

/* Copies req's pair arrays into the worker's own (see mb_worker) and
 * re-checks their counts; req then points at the copies. */
mb_status mb_worker_snapshot_pairs(mb_worker *w, mb_proto_expert_req *req);

#endif
