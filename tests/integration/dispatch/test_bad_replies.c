/* A worker that answers badly: an error status, a stale tag, the wrong
 * token count or dtype, a truncated or garbage message, or no answer at all.
 * The dispatcher must return an error naming the worker, never crash, hang
 * or write a partial result as if it were whole. A reply that is whole but
 * claims absurd compute times (more than half of 2^64 ns each, so two would
 * wrap) is accepted, and the call's critical compute stays its wall time. The fake worker is a
 * handler behind the in-process transport, so each reply is exactly what
 * the test wrote. */
#include <stdint.h>
#include <string.h>

#include "broker/dispatch.h"
#include "protocol/inproc.h"
#include "tests/testutil.h"

enum { D_MODEL = 16, N_EXPERTS = 4, TOP_K = 2, N_TOK = 5 };

typedef enum {
    REPLY_OK,
    REPLY_STATUS_ERROR,
    REPLY_STALE_TAG,
    REPLY_WRONG_TOKENS,
    REPLY_WRONG_DTYPE,
    REPLY_TRUNCATED,
    REPLY_GARBAGE,
    REPLY_NONE,
    REPLY_BOGUS_TIMINGS,
    REPLY_COUNT_
} reply_kind;

static const char *const kind_names[] = {"ok",           "status error", "stale tag",
                                         "wrong tokens", "wrong dtype",  "truncated",
                                         "garbage",      "no reply",     "bogus timings"};

typedef struct {
    reply_kind kind;
    mb_transport *reply_end;
} fake_worker;

static mb_status fake_handle(void *ctx, const void *msg, size_t len)
{
    fake_worker *fw = ctx;
    mb_proto_limits lim = {.max_slots = N_EXPERTS};
    mb_proto_expert_req req;
    REQUIRE(mb_proto_decode_expert_req(msg, len, &lim, &req) == MB_STATUS_OK);
    uint64_t tag;
    memcpy(&tag, (const unsigned char *)msg + 8, sizeof tag);
    if (fw->kind == REPLY_NONE) return MB_STATUS_OK;
    uint32_t n = req.n_tokens + (fw->kind == REPLY_WRONG_TOKENS);
    mb_dtype dt = fw->kind == REPLY_WRONG_DTYPE ? MB_DTYPE_F16 : req.dtype;
    if (fw->kind == REPLY_STALE_TAG) tag += 1000;
    size_t bytes = 0;
    REQUIRE(mb_proto_expert_reply_size(n, req.d_model, dt, &bytes) == MB_STATUS_OK);
    void *buf = NULL;
    REQUIRE(mb_transport_send_reserve(fw->reply_end, bytes, -1, &buf) == MB_STATUS_OK);
    if (fw->kind == REPLY_STATUS_ERROR) {
        size_t b = 0;
        mb_proto_encode_empty(buf, bytes, MB_OP_STATUS, tag, MB_STATUS_NOT_LOADED, &b);
        return mb_transport_send_commit(fw->reply_end, b);
    }
    void *out = NULL;
    size_t b = 0;
    REQUIRE(mb_proto_encode_expert_reply(buf, bytes, tag, n, req.d_model, dt, &out, &b) == MB_STATUS_OK);
    memset(out, 0, (size_t)n * req.d_model * mb_dtype_size(dt));
    if (fw->kind == REPLY_BOGUS_TIMINGS) {
        const mb_proto_timings t = {
            .decode_ns = UINT64_MAX, .compute_ns = UINT64_MAX / 2 + 1, .encode_ns = UINT64_MAX};
        mb_proto_expert_reply_set_timings(buf, &t);
    }
    if (fw->kind == REPLY_TRUNCATED) b -= 8;
    if (fw->kind == REPLY_GARBAGE) memset(buf, 0xa5, b);
    return mb_transport_send_commit(fw->reply_end, b);
}

int main(void)
{
    mb_place table[N_EXPERTS];
    uint32_t slots_used = N_EXPERTS;
    uint64_t bytes_placed = 0;
    for (uint32_t e = 0; e < N_EXPERTS; e++) table[e] = (mb_place){.link = 0, .slot = e};
    mb_placement pl = {.n_layers = 1, .n_experts = N_EXPERTS, .n_links = 1, .table = table,
                       .slots_used = &slots_used, .bytes_placed = &bytes_placed};
    int32_t ids[N_TOK * TOP_K];
    float gate[N_TOK * TOP_K], x[N_TOK * D_MODEL], out[N_TOK * D_MODEL];
    for (int i = 0; i < N_TOK * TOP_K; i++) {
        ids[i] = i % N_EXPERTS;
        gate[i] = 0.5f;
    }
    for (int i = 0; i < N_TOK * D_MODEL; i++) x[i] = (float)i;

    for (int kind = 0; kind < REPLY_COUNT_; kind++) {
        mb_link link;
        memset(&link, 0, sizeof link);
        link.kind = MB_LINK_INPROC;
        link.next_tag = 1;
        snprintf(link.name, sizeof link.name, "fake-worker");
        fake_worker fw = {.kind = (reply_kind)kind, .reply_end = &link.handler_end};
        REQUIRE(mb_inproc_transport_create(&link.transport, &link.handler_end) == MB_STATUS_OK);
        mb_inproc_transport_set_handler(&link.transport, fake_handle, &fw);
        /* Bogus timings in several replies (slices of 4 tokens). */
        const mb_ipc_mode mode =
            kind == REPLY_BOGUS_TIMINGS ? MB_IPC_MODE_STREAM : MB_IPC_MODE_BATCHED;
        mb_dispatch_config dc = {.links = &link,
                                 .n_links = 1,
                                 .placement = &pl,
                                 .mode = mode,
                                 .batch_capacity = 64,
                                 .stream_slice = 4,
                                 .payload = MB_DTYPE_F32,
                                 .d_model = D_MODEL,
                                 .top_k = TOP_K,
                                 .max_tokens = N_TOK,
                                 .timeout_ns = 50000000};
        mb_dispatch *d = NULL;
        REQUIRE(mb_dispatch_create(&dc, &d) == MB_STATUS_OK);
        mb_moe_work w = {.layer = 0, .n_tokens = N_TOK, .top_k = TOP_K, .expert_ids = ids, .gate = gate, .x = x,
                         .out = out};
        mb_status st = mb_dispatch_moe(d, &w);
        const char *msg = mb_dispatch_error(d);
        printf("%-13s -> %s: %s\n", kind_names[kind], mb_status_name(st), msg);
        if (kind == REPLY_OK || kind == REPLY_BOGUS_TIMINGS) {
            CHECK_EQ(st, MB_STATUS_OK);
            for (int i = 0; i < N_TOK * D_MODEL; i++) CHECK(out[i] == 0.0f);
            uint64_t disp = 0, crit = 0;
            mb_dispatch_take_times(d, &disp, NULL, &crit);
            CHECK_MSG(kind == REPLY_OK ? crit == 0 : crit == disp && disp > 0,
                      "%s: critical compute %llu of a %llu ns call", kind_names[kind],
                      (unsigned long long)crit, (unsigned long long)disp);
        } else {
            CHECK_MSG(st != MB_STATUS_OK, "%s accepted", kind_names[kind]);
            CHECK_MSG(strstr(msg, "fake-worker") != NULL, "%s: message does not name the worker", kind_names[kind]);
        }
        if (kind == REPLY_STATUS_ERROR) CHECK_EQ(st, MB_STATUS_NOT_LOADED);
        if (kind == REPLY_NONE) CHECK_EQ(st, MB_STATUS_TIMEOUT);
        mb_dispatch_destroy(d);
        mb_transport_destroy(&link.transport);
    }
    return mb_test_finish("test_bad_replies");
}
