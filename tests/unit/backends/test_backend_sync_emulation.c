/* The tagged calls on the CPU backend, which implements only run: submit
 * runs at once into the wrapper's buffer, poll reports CONSUMED then DONE
 * per tag in submission order, fetch returns bit-for-bit what run writes.
 * Also the bookkeeping: AGAIN past MB_BACKEND_MAX_INFLIGHT, duplicate and
 * unknown tags, a request that fails in submit leaves nothing outstanding,
 * and a poll with nothing outstanding returns TIMEOUT at once. */
#include <string.h>

#include "backends/backend.h"
#include "tests/testutil.h"

enum { D_MODEL = 64, D_FF = 32, N_SLOTS = 4, MAX_TOK = 6 };

typedef struct {
    mb_proto_expert_req req;
    uint16_t counts[MAX_TOK];
    mb_proto_pair pairs[MAX_TOK * 2];
    float act[MAX_TOK * D_MODEL];
} req_buf;

static void make_req(req_buf *r, uint32_t i, unsigned long long *seed)
{
    memset(r, 0, sizeof *r);
    uint32_t n = i % MAX_TOK + 1, np = 0;
    for (uint32_t t = 0; t < n; t++) {
        r->counts[t] = (uint16_t)(1 + (t + i) % 2);
        for (uint16_t c = 0; c < r->counts[t]; c++)
            r->pairs[np++] = (mb_proto_pair){(t + c + i) % N_SLOTS, 0.25f + 0.5f * (float)c};
        for (uint32_t j = 0; j < D_MODEL; j++)
            r->act[t * D_MODEL + j] = mb_test_rand_f32(seed);
    }
    r->req = (mb_proto_expert_req){0, n, D_MODEL, MB_DTYPE_F32, np, r->counts, r->pairs, r->act};
}

int main(void)
{
    const mb_backend_ops *ops = mb_backend_find("cpu");
    REQUIRE(ops);
    mb_backend_cpu_options opt = {.n_threads = 2, .numa = MB_NUMA_DEFAULT};
    mb_backend_config cfg = {.device = -1, .max_slots = 16, .options = &opt};
    mb_backend *b = NULL;
    REQUIRE(mb_backend_open(ops, &cfg, &b) == MB_STATUS_OK);
    CHECK(!mb_backend_is_async(b));
    mb_backend_caps caps;
    REQUIRE(mb_backend_caps_get(b, &caps) == MB_STATUS_OK);
    CHECK_EQ(caps.max_inflight, 1);

    unsigned long long seed = 7;
    static float w[3][D_MODEL * D_FF];
    for (uint32_t s = 0; s < N_SLOTS; s++) {
        for (int m = 0; m < 3; m++)
            for (size_t k = 0; k < D_MODEL * D_FF; k++)
                w[m][k] = mb_test_rand_f32(&seed) * 0.2f;
        mb_expert_weights ew = {0, s, s, D_MODEL, D_FF, {MB_DTYPE_F32, MB_DTYPE_F32, MB_DTYPE_F32}, w[0], w[1], w[2]};
        REQUIRE(mb_backend_load_expert(b, &ew) == MB_STATUS_OK);
    }

    /* Nothing outstanding: poll does not wait. */
    mb_backend_event ev;
    CHECK_EQ(mb_backend_poll(b, -1, &ev), MB_STATUS_TIMEOUT);

    enum { N = MB_BACKEND_MAX_INFLIGHT };
    static req_buf rq[N + 1];
    static float want[N][MAX_TOK * D_MODEL], out[MAX_TOK * D_MODEL];
    for (uint32_t i = 0; i <= N; i++)
        make_req(&rq[i], i, &seed);
    for (uint32_t i = 0; i < N; i++)
        REQUIRE(mb_backend_run(b, &rq[i].req, want[i], NULL) == MB_STATUS_OK);

    for (uint32_t i = 0; i < N; i++)
        CHECK_EQ(mb_backend_submit(b, 1000 + i, &rq[i].req), MB_STATUS_OK);
    CHECK_EQ(mb_backend_outstanding(b), N);
    CHECK_EQ(mb_backend_submit(b, 2000, &rq[N].req), MB_STATUS_AGAIN);
    CHECK_EQ(mb_backend_submit(b, 1000, &rq[N].req), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_backend_fetch(b, 1000, out), MB_STATUS_INVALID_ARG); /* DONE not reported yet */
    CHECK_EQ(mb_backend_fetch(b, 77, out), MB_STATUS_INVALID_ARG);

    /* Events in submission order; fetch straight after each DONE. The
     * inputs may be scribbled over once submit returned. */
    for (uint32_t i = 0; i < N; i++)
        memset(rq[i].act, 0xdd, sizeof rq[i].act);
    for (uint32_t i = 0; i < N; i++) {
        REQUIRE(mb_backend_poll(b, 0, &ev) == MB_STATUS_OK);
        CHECK_EQ(ev.kind, MB_BACKEND_EVENT_CONSUMED);
        CHECK_EQ(ev.tag, 1000 + i);
        REQUIRE(mb_backend_poll(b, 0, &ev) == MB_STATUS_OK);
        CHECK_EQ(ev.kind, MB_BACKEND_EVENT_DONE);
        CHECK_EQ(ev.tag, 1000 + i);
        CHECK_EQ(ev.status, MB_STATUS_OK);
        memset(out, 0xff, sizeof out);
        CHECK_EQ(mb_backend_fetch(b, ev.tag, out), MB_STATUS_OK);
        CHECK(memcmp(out, want[i], (size_t)rq[i].req.n_tokens * D_MODEL * sizeof(float)) == 0);
    }
    CHECK_EQ(mb_backend_outstanding(b), 0);
    CHECK_EQ(mb_backend_poll(b, 0, &ev), MB_STATUS_TIMEOUT);

    /* A request the backend refuses fails in submit; its tag stays free. */
    req_buf r;
    make_req(&r, 1, &seed);
    r.req.layer = 5;
    CHECK_EQ(mb_backend_submit(b, 3000, &r.req), MB_STATUS_NOT_LOADED);
    CHECK_EQ(mb_backend_outstanding(b), 0);
    r.req.layer = 0;
    r.pairs[0].slot = 100;
    CHECK_EQ(mb_backend_submit(b, 3000, &r.req), MB_STATUS_SLOT_RANGE);
    r.pairs[0].slot = 0;
    CHECK_EQ(mb_backend_submit(b, 3000, &r.req), MB_STATUS_OK);
    /* Tags may be fetched in any order once DONE; all DONEs come out. */
    CHECK_EQ(mb_backend_submit(b, 3001, &rq[0].req), MB_STATUS_OK);
    int dones = 0;
    while (mb_backend_poll(b, 0, &ev) == MB_STATUS_OK)
        dones += ev.kind == MB_BACKEND_EVENT_DONE;
    CHECK_EQ(dones, 2);
    CHECK_EQ(mb_backend_fetch(b, 3001, out), MB_STATUS_OK);
    CHECK_EQ(mb_backend_fetch(b, 3000, out), MB_STATUS_OK);
    CHECK_EQ(mb_backend_outstanding(b), 0);

    /* Closing with a request outstanding frees its buffer. */
    CHECK_EQ(mb_backend_submit(b, 4000, &rq[1].req), MB_STATUS_OK);
    mb_backend_close(b);
    return mb_test_finish("test_backend_sync_emulation");
}
