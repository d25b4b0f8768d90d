/* The worker's serving loop: answers HELLO, LOAD_EXPERT, EXPERT_REQ, PING and
 * SHUTDOWN arriving on one transport, running expert work on one backend.
 * Used by moe-worker and by tests that serve from a thread. */
#ifndef MB_BACKENDS_WORKER_H
#define MB_BACKENDS_WORKER_H

#include <signal.h>
#include <stdint.h>

#include "backends/backend.h"
#include "protocol/transport.h"

typedef struct {
    mb_backend *backend;          /* borrowed */
    mb_transport *transport;      /* borrowed */
    /* Folders a LOAD_EXPERT with a FILE source may read from, each already
     * resolved with realpath (mb_worker_root_resolve); borrowed. None: file
     * weights are refused (UNSUPPORTED). A file counts as inside a root when
     * its own realpath lies below it, so a symlink in a root that leads out
     * of every root is refused. Every refused path (missing, outside,
     * unreadable, not a regular file) gets the same NOT_FOUND: a peer learns
     * nothing about files it may not read. */
    const char *const *model_roots;
    unsigned n_model_roots;
    /* Expert weight bytes one session may hold; a LOAD_EXPERT beyond it is
     * refused with NOMEM. 0: no cap. */
    uint64_t max_memory_bytes;
    /* A session whose peer has sent nothing for this long, with no request
     * left in the backend, is ended (mb_worker_serve returns TIMEOUT), so a
     * coordinator that went silent does not hold the worker. The clock
     * starts at the session's first message. 0: never. */
    int64_t idle_timeout_ns;
    const volatile sig_atomic_t *stop; /* set asynchronously to end the loop; may be NULL */
    const char *name;             /* for messages, e.g. "moe-worker[cpu:0]" */
} mb_worker_config;

typedef struct mb_worker mb_worker;

/* Consecutive messages the transport rejects (framing, size) after which a
 * session is taken to be hostile or broken rather than hit by one bad
 * message, and is ended. */
#define MB_WORKER_MAX_BAD_IN_A_ROW 16

/* Creates the request handler for cfg (borrowed; must outlive the worker).
 * Reads the backend's capabilities once. */
mb_status mb_worker_create(const mb_worker_config *cfg, mb_worker **out);
void mb_worker_destroy(mb_worker *w);

/* Handles one received message (len bytes, 8-aligned): the reply, if any, is
 * sent on cfg->transport. Returns OK to go on, CLOSED after SHUTDOWN, or a
 * transport failure; malformed messages are answered, not returned. */
mb_status mb_worker_handle(mb_worker *w, const void *msg, size_t len);

/* Serves one session: until SHUTDOWN (returns OK), *stop becomes non-zero
 * (OK), the peer stays silent past cfg->idle_timeout_ns (TIMEOUT), or the
 * peer dies or the transport fails (that status). A message
 * that decodes badly is answered with a STATUS reply carrying the decoder's
 * error and the loop goes on; MB_WORKER_MAX_BAD_IN_A_ROW messages the
 * transport itself rejects, one after another, end the session (PROTOCOL):
 * the caller drops that peer and serves the next one. Blocking. */
mb_status mb_worker_serve(const mb_worker_config *cfg);

/* Resolves a --model-root folder with realpath into a malloc'd string the
 * caller frees. NOT_FOUND when it does not resolve, INVALID_ARG when it is
 * not a folder. */
mb_status mb_worker_root_resolve(const char *dir, char **out);

/* Reads MemAvailable from /proc/meminfo: what the host can spare now, the
 * default per-session memory cap. 0 when unknown. */
uint64_t mb_worker_mem_available_bytes(void);

#endif
