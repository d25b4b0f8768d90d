/* Round trips of expert requests to a spawned worker (worker_rtt.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench/timing.h"
#include "bench/worker_rtt.h"

#define MB_RTT_TIMEOUT_NS 60000000000LL

/* Writes the three matrices back to back into a memfd. */
static mb_status mb_rtt_write_memfd(int fd, const void *const *m, size_t bytes)
{
    for (int i = 0; i < 3; i++) {
        const char *p = m[i];
        size_t left = bytes;
        while (left) {
            ssize_t n = write(fd, p, left);
            if (n <= 0) return MB_STATUS_IO;
            p += n;
            left -= (size_t)n;
        }
    }
    return MB_STATUS_OK;
}

mb_status mb_bench_worker_start(mb_bench_worker *w, const char *backend, int device, uint32_t layer,
                                uint32_t n_experts, uint32_t d_model, uint32_t d_ff,
                                const uint16_t *gate, const uint16_t *up, const uint16_t *down,
                                char *err, size_t err_cap)
{
    memset(w, 0, sizeof *w);
    w->memfd = -1;
    w->tag = 1u << 20;
    const size_t bytes = (size_t)d_model * d_ff * 2;
    const void *const m[3] = {gate, up, down};
    w->memfd = memfd_create("bench-expert", 0);
    if (w->memfd < 0) {
        snprintf(err, err_cap, "memfd_create failed");
        return MB_STATUS_IO;
    }
    mb_status st = mb_rtt_write_memfd(w->memfd, m, bytes);
    if (st != MB_STATUS_OK) {
        snprintf(err, err_cap, "writing the expert memfd failed");
        mb_bench_worker_stop(w);
        return st;
    }
    mb_link_spec spec = {.backend = backend, .device = device, .max_slots = n_experts};
    st = mb_link_spawn(&spec, MB_LINK_SPAWNED_SHM, 0, 30000000000LL, &w->link, err, err_cap);
    if (st != MB_STATUS_OK) {
        close(w->memfd);
        w->memfd = -1;
        return st;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)getpid(), w->memfd);
    mb_proto_load_expert le = {.layer = layer, .d_model = d_model, .d_ff = d_ff,
                               .wdtype = {MB_DTYPE_BF16, MB_DTYPE_BF16, MB_DTYPE_BF16}, .source = MB_WEIGHTS_FILE,
                               .offset = {0, bytes, 2 * bytes}, .bytes = {bytes, bytes, bytes},
                               .path = path, .path_len = (uint32_t)strlen(path)};
    unsigned char msg[512] __attribute__((aligned(8)));
    for (uint32_t e = 0; e < n_experts && st == MB_STATUS_OK; e++) {
        le.expert_id = le.slot = e;
        size_t len = 0;
        st = mb_proto_encode_load_expert(msg, sizeof msg, w->tag++, &le, &len);
        if (st == MB_STATUS_OK) st = mb_link_call(&w->link, msg, len, MB_RTT_TIMEOUT_NS, err, err_cap);
        else snprintf(err, err_cap, "encoding LOAD_EXPERT: %s", mb_status_str(st));
    }
    if (st != MB_STATUS_OK) mb_bench_worker_stop(w);
    return st;
}

mb_status mb_bench_worker_rtt(mb_bench_worker *w, const mb_proto_expert_req *req, int64_t *ns,
                              uint64_t *compute_ns)
{
    mb_transport *t = &w->link.transport;
    const size_t act_bytes = (size_t)req->n_tokens * req->d_model * mb_dtype_size(req->dtype);
    size_t bytes = 0;
    mb_status st = mb_proto_expert_req_size(req->n_tokens, req->d_model, req->dtype, req->n_pairs, &bytes);
    if (st != MB_STATUS_OK) return st;
    const uint64_t tag = w->tag++;
    const int64_t t0 = mb_bench_now_ns();
    void *buf = NULL;
    st = mb_transport_send_reserve(t, bytes, MB_RTT_TIMEOUT_NS, &buf);
    if (st != MB_STATUS_OK) return st;
    mb_proto_expert_req_writer wr;
    st = mb_proto_encode_expert_req(buf, bytes, tag, 0, req->layer, req->n_tokens, req->d_model,
                                    req->dtype, req->n_pairs, &wr);
    if (st != MB_STATUS_OK) return st; /* nothing committed: the reservation lapses */
    memcpy(wr.pair_counts, req->pair_counts, (size_t)req->n_tokens * sizeof *wr.pair_counts);
    memcpy(wr.pairs, req->pairs, (size_t)req->n_pairs * sizeof *wr.pairs);
    memcpy(wr.act, req->act, act_bytes);
    st = mb_transport_send_commit(t, wr.bytes);
    while (st == MB_STATUS_OK) {
        const void *rep = NULL;
        size_t len = 0;
        st = mb_transport_recv(t, MB_RTT_TIMEOUT_NS, &rep, &len);
        if (st != MB_STATUS_OK) break;
        mb_proto_header h;
        st = mb_proto_decode_header(rep, len, &h);
        const int mine = st == MB_STATUS_OK && h.tag == tag;
        if (mine && h.opcode != MB_OP_EXPERT_REPLY)
            st = h.status != MB_STATUS_OK ? (mb_status)h.status : MB_STATUS_PROTOCOL;
        mb_proto_expert_reply er;
        if (mine && st == MB_STATUS_OK) st = mb_proto_decode_expert_reply(rep, len, &er);
        if (mine && st == MB_STATUS_OK) *compute_ns = er.timings.compute_ns;
        mb_transport_recv_release(t);
        if (mine || st != MB_STATUS_OK) break;
    }
    *ns = mb_bench_now_ns() - t0;
    return st;
}

void mb_bench_worker_stop(mb_bench_worker *w)
{
    mb_link_close(&w->link);
    if (w->memfd >= 0) close(w->memfd);
    w->memfd = -1;
}
