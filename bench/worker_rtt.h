/* A spawned moe-worker holding one layer of identical random experts, and
 * the round trip of one EXPERT_REQ to it over shared memory: what a
 * backend costs the coordinator once process, transport and staging are
 * counted. Any backend the worker takes; the weights reach it as a FILE
 * LOAD_EXPERT from a memfd, as the coordinator loads a checkpoint. */
#ifndef MB_BENCH_WORKER_RTT_H
#define MB_BENCH_WORKER_RTT_H

#include <stdint.h>

#include "broker/link.h"
#include "protocol/dtype.h"
#include "protocol/message.h"

typedef struct {
    mb_link link;
    int memfd;
    uint64_t tag;
} mb_bench_worker;

/* Spawns moe-worker --backend backend[:device] over shared memory and
 * loads slots [0, n_experts) of layer with the bf16 expert gate, up
 * [d_ff][d_model], down [d_model][d_ff]. Blocking (seconds for large
 * experts). On failure writes why into err and leaves nothing running. */
mb_status mb_bench_worker_start(mb_bench_worker *w, const char *backend, int device, uint32_t layer,
                                uint32_t n_experts, uint32_t d_model, uint32_t d_ff,
                                const uint16_t *gate, const uint16_t *up, const uint16_t *down,
                                char *err, size_t err_cap);

/* One EXPERT_REQ built in place in the transport's buffer, sent, and its
 * EXPERT_REPLY received: *ns receives the whole round trip, *compute_ns
 * the worker's compute time from the reply. The worker's refusal comes
 * back as its status. Blocking (up to 60 s). */
mb_status mb_bench_worker_rtt(mb_bench_worker *w, const mb_proto_expert_req *req, int64_t *ns,
                              uint64_t *compute_ns);

/* Stops the worker and frees everything; also safe after a failed start. */
void mb_bench_worker_stop(mb_bench_worker *w);

#endif
