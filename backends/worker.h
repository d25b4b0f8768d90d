/* The worker's serving loop: answers HELLO, LOAD_EXPERT, EXPERT_REQ, PING and
 * SHUTDOWN arriving on one transport, running expert work on one backend.
 * Used by moe-worker and by tests that serve from a thread. */
#ifndef MB_BACKENDS_WORKER_H
#define MB_BACKENDS_WORKER_H

#include <signal.h>

#include "backends/backend.h"
#include "protocol/transport.h"

typedef struct {
    mb_backend *backend;          /* borrowed */
    mb_transport *transport;      /* borrowed */
    int allow_file_weights;       /* accept LOAD_EXPERT with a FILE source */
    const volatile sig_atomic_t *stop; /* set asynchronously to end the loop; may be NULL */
    const char *name;             /* for messages, e.g. "moe-worker[cpu:0]" */
} mb_worker_config;

typedef struct mb_worker mb_worker;

/* Creates the request handler for cfg (borrowed; must outlive the worker).
 * Reads the backend's capabilities once. */
mb_status mb_worker_create(const mb_worker_config *cfg, mb_worker **out);
void mb_worker_destroy(mb_worker *w);

/* Handles one received message (len bytes, 8-aligned): the reply, if any, is
 * sent on cfg->transport. Returns OK to go on, CLOSED after SHUTDOWN, or a
 * transport failure; malformed messages are answered, not returned. */
mb_status mb_worker_handle(mb_worker *w, const void *msg, size_t len);

/* Serves until SHUTDOWN (returns OK), *stop becomes non-zero (OK), or the
 * peer dies or the transport fails (that status). Malformed messages are
 * answered with a STATUS reply carrying the decoder's error and the loop goes
 * on. Blocking. */
mb_status mb_worker_serve(const mb_worker_config *cfg);

#endif
