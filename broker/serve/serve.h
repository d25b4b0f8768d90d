/* `moe-broker serve`: an OpenAI-compatible HTTP server (chat completions,
 * completions, models, health, Prometheus metrics) over one loaded model.
 * The model is loaded and the backends started once; requests queue for the
 * single generation slot (one sequence, one KV cache) and are answered in
 * order. Layout: http.c (libmicrohttpd glue and routes), request.c (JSON
 * body -> request), reply.c (request -> reply JSON and server-sent events),
 * queue.c (the queue and its jobs), generate.c (a job's prefill and
 * sampling), metrics.c (/metrics), serve.c (start and stop). */
#ifndef MB_BROKER_SERVE_H
#define MB_BROKER_SERVE_H

#include "broker/model.h"
#include "broker/options.h"

/* Serves model until SIGINT or SIGTERM, then stops the workers and writes
 * the statistics asked for. Blocking. Returns the exit code: 0 after a
 * signal (the normal way to stop a server), 1 when it cannot start. */
int mb_serve(const mb_options *opt, const mb_model *model, int progress);

#endif
