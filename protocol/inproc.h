/* The in-process transport: a loopback for experts the coordinator computes
 * itself. Sending a message calls a handler synchronously (the worker's
 * request handler wrapped around an in-process backend), whose replies queue
 * for recv. The same dispatch code then drives local and remote backends, and
 * an in-process run is bit-identical to a run over a real transport. */
#ifndef MB_PROTOCOL_INPROC_H
#define MB_PROTOCOL_INPROC_H

#include "protocol/transport.h"

/* Handles one message; replies through the handler end of the pair. */
typedef mb_status (*mb_inproc_handler)(void *ctx, const void *msg, size_t len);

/* Creates the two ends: *caller_end sends requests and receives replies,
 * *handler_end is what the handler replies on. Destroy caller_end only (it
 * owns both). Up to 64 replies may wait unreceived. Until a handler is set,
 * requests queue instead (up to 64; FULL beyond) and the handler end
 * receives them with recv (TIMEOUT when none is queued), so a serving loop
 * such as mb_worker_serve can run on the handler end in the same thread;
 * a released request's buffer is overwritten. */
mb_status mb_inproc_transport_create(mb_transport *caller_end, mb_transport *handler_end);

/* Sets the handler that send_commit on the caller end calls. */
void mb_inproc_transport_set_handler(mb_transport *caller_end, mb_inproc_handler fn, void *ctx);

#endif
