/* The asynchronous backend interface with a fake backend defined here: it
 * reads a request's inputs only some polls after submit (then reports
 * CONSUMED), finishes the newest consumed request first (so DONEs come out
 * of order), refuses to start a request of layer 99 and fails one of layer
 * 98 after starting it. Driven (a) through the mb_backend_* wrappers (tag
 * tracking, AGAIN, run amid other outstanding requests) and (b) through
 * mb_worker_serve over the in-process transport with several requests in
 * flight: every reply must carry its own tag and its own sums, and since
 * the transport scribbles over a request once released, a worker that
 * released it before CONSUMED would send garbage. */
#include <string.h>

#include "backends/backend.h"
#include "backends/worker.h"
#include "protocol/inproc.h"
#include "protocol/message.h"
#include "tests/testutil.h"

enum { FAKE_SLOTS = 8, FAKE_INFLIGHT = 4, D_MODEL = 16, MAX_TOK = 8 };

/* ---- the fake backend: out[t] = sum over pairs g * scale[slot] * act[t] ---- */

typedef struct {
    int used;
    uint64_t tag;
    uint64_t seq;
    mb_proto_expert_req req; /* a view: the caller keeps it valid until CONSUMED */
    int consumed, done;
    uint64_t submit_clock;
    float result[MAX_TOK * D_MODEL];
} fake_req;

typedef struct {
    float scale[FAKE_SLOTS];
    int loaded[FAKE_SLOTS];
    fake_req reqs[FAKE_INFLIGHT];
    uint64_t clock, seq;
    uint32_t n_out, max_out;
} fake_state;

static fake_state *fake_last; /* the state the test inspects */

static mb_status fake_open(const mb_backend_config *cfg, void **state)
{
    fake_state *s = calloc(1, sizeof *s);
    if (!s) return MB_STATUS_NOMEM;
    fake_last = s;
    *state = s;
    return MB_STATUS_OK;
}

static void fake_close(void *state)
{
    free(state);
}

static mb_status fake_caps(void *state, mb_backend_caps *caps)
{
    snprintf(caps->name, sizeof caps->name, "fake");
    snprintf(caps->device, sizeof caps->device, "test double");
    caps->mem_total_bytes = caps->mem_free_bytes = 1u << 20;
    caps->payload_dtype_mask = MB_DTYPE_MASK(MB_DTYPE_F32);
    caps->weight_dtype_mask = MB_DTYPE_MASK(MB_DTYPE_F32);
    caps->preferred_batch = 4;
    caps->max_slots = FAKE_SLOTS;
    caps->max_inflight = FAKE_INFLIGHT;
    return MB_STATUS_OK;
}

static mb_status fake_load(void *state, const mb_expert_weights *w)
{
    fake_state *s = state;
    s->scale[w->slot] = ((const float *)w->gate)[0];
    s->loaded[w->slot] = 1;
    return MB_STATUS_OK;
}

static mb_status fake_submit(void *state, uint64_t tag, const mb_proto_expert_req *req)
{
    fake_state *s = state;
    if (req->layer == 99) return MB_STATUS_NOT_LOADED;
    if (req->n_tokens > MAX_TOK || req->d_model != D_MODEL) return MB_STATUS_FULL;
    fake_req *r = NULL;
    for (int i = 0; i < FAKE_INFLIGHT && !r; i++)
        if (!s->reqs[i].used) r = &s->reqs[i];
    if (!r) return MB_STATUS_AGAIN;
    memset(r, 0, sizeof *r);
    r->used = 1;
    r->tag = tag;
    r->seq = s->seq++;
    r->req = *req;
    r->submit_clock = s->clock;
    s->n_out++;
    if (s->n_out > s->max_out) s->max_out = s->n_out;
    return MB_STATUS_OK;
}

/* Reads the request's inputs now (they must still be intact). */
static void fake_compute(fake_state *s, fake_req *r)
{
    const mb_proto_expert_req *q = &r->req;
    const float *act = q->act;
    uint32_t i = 0;
    for (uint32_t t = 0; t < q->n_tokens; t++) {
        float *o = r->result + (size_t)t * D_MODEL;
        for (uint32_t j = 0; j < D_MODEL; j++)
            o[j] = 0;
        for (uint16_t c = 0; c < q->pair_counts[t]; c++, i++) {
            float g = q->pairs[i].gate * s->scale[q->pairs[i].slot % FAKE_SLOTS];
            for (uint32_t j = 0; j < D_MODEL; j++)
                o[j] += g * act[(size_t)t * D_MODEL + j];
        }
    }
}

/* One step of the fake device; returns 1 with an event. */
static int fake_step(fake_state *s, mb_backend_event *ev)
{
    s->clock++;
    fake_req *oldest_new = NULL, *newest_consumed = NULL;
    int n_consumed = 0, n_unconsumed = 0;
    for (int i = 0; i < FAKE_INFLIGHT; i++) {
        fake_req *r = &s->reqs[i];
        if (!r->used || r->done) continue;
        if (!r->consumed) {
            n_unconsumed++;
            if (s->clock >= r->submit_clock + 2 && (!oldest_new || r->seq < oldest_new->seq)) oldest_new = r;
        } else {
            n_consumed++;
            if (!newest_consumed || r->seq > newest_consumed->seq) newest_consumed = r;
        }
    }
    memset(ev, 0, sizeof *ev);
    if (oldest_new) {
        fake_compute(s, oldest_new);
        oldest_new->consumed = 1;
        ev->kind = MB_BACKEND_EVENT_CONSUMED;
        ev->tag = oldest_new->tag;
        return 1;
    }
    if (newest_consumed && (n_consumed >= 2 || n_unconsumed == 0)) {
        fake_req *r = newest_consumed;
        ev->kind = MB_BACKEND_EVENT_DONE;
        ev->tag = r->tag;
        ev->status = r->req.layer == 98 ? MB_STATUS_BACKEND : MB_STATUS_OK;
        ev->compute_ns = 1000 + r->seq;
        r->done = 1;
        if (ev->status != MB_STATUS_OK) {
            r->used = 0;
            s->n_out--;
        }
        return 1;
    }
    return 0;
}

static mb_status fake_poll(void *state, int64_t timeout_ns, mb_backend_event *ev)
{
    fake_state *s = state;
    int steps = timeout_ns == 0 ? 1 : 8;
    for (int i = 0; i < steps; i++)
        if (fake_step(s, ev)) return MB_STATUS_OK;
    return MB_STATUS_TIMEOUT;
}

static mb_status fake_fetch(void *state, uint64_t tag, void *out)
{
    fake_state *s = state;
    for (int i = 0; i < FAKE_INFLIGHT; i++) {
        fake_req *r = &s->reqs[i];
        if (!r->used || r->tag != tag) continue;
        if (!r->done) return MB_STATUS_INVALID_ARG;
        memcpy(out, r->result, (size_t)r->req.n_tokens * D_MODEL * sizeof(float));
        r->used = 0;
        s->n_out--;
        return MB_STATUS_OK;
    }
    return MB_STATUS_INVALID_ARG;
}

static const mb_backend_ops fake_ops = {
    .abi_version = MB_BACKEND_ABI_VERSION,
    .name = "fake",
    .open = fake_open,
    .close = fake_close,
    .caps = fake_caps,
    .load_expert = fake_load,
    .submit = fake_submit,
    .poll = fake_poll,
    .fetch = fake_fetch,
};

/* ---- requests the test owns ---- */

typedef struct {
    mb_proto_expert_req req;
    uint16_t counts[MAX_TOK];
    mb_proto_pair pairs[MAX_TOK * 2];
    float act[MAX_TOK * D_MODEL];
    float want[MAX_TOK * D_MODEL];
} test_req;

static const float slot_scale[FAKE_SLOTS] = {1, 2, 3, 4, 5, 6, 7, 8};

/* Request i: i % MAX_TOK + 1 tokens, token t with (t + i) % 3 pairs. */
static void test_req_make(test_req *r, uint32_t i, uint32_t layer)
{
    memset(r, 0, sizeof *r);
    uint32_t n = i % MAX_TOK + 1, np = 0;
    for (uint32_t t = 0; t < n; t++) {
        r->counts[t] = (uint16_t)((t + i) % 3);
        for (uint16_t c = 0; c < r->counts[t]; c++)
            r->pairs[np++] = (mb_proto_pair){(t * 3 + c + i) % 4, 0.5f + 0.25f * (float)c};
        for (uint32_t j = 0; j < D_MODEL; j++)
            r->act[t * D_MODEL + j] = (float)(i + 1) * 0.125f + (float)j - (float)t;
    }
    r->req = (mb_proto_expert_req){layer, n, D_MODEL, MB_DTYPE_F32, np, r->counts, r->pairs, r->act};
    uint32_t k = 0;
    for (uint32_t t = 0; t < n; t++) {
        for (uint16_t c = 0; c < r->counts[t]; c++, k++) {
            float g = r->pairs[k].gate * slot_scale[r->pairs[k].slot];
            for (uint32_t j = 0; j < D_MODEL; j++)
                r->want[t * D_MODEL + j] += g * r->act[t * D_MODEL + j];
        }
    }
}

static int same_floats(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof *a) == 0;
}

static void load_slots(mb_backend *b)
{
    for (uint32_t s = 0; s < 4; s++) {
        float w[1] = {slot_scale[s]};
        mb_expert_weights ew = {0, s, s, D_MODEL, 4, {MB_DTYPE_F32, MB_DTYPE_F32, MB_DTYPE_F32}, w, w, w};
        REQUIRE(mb_backend_load_expert(b, &ew) == MB_STATUS_OK);
    }
}

/* ---- (a) the wrappers ---- */

static void test_table_checks(void)
{
    mb_backend_config cfg = {.device = -1};
    mb_backend *b = NULL;
    mb_backend_ops ops = fake_ops;
    ops.poll = NULL; /* two of three */
    CHECK_EQ(mb_backend_open(&ops, &cfg, &b), MB_STATUS_INVALID_ARG);
    ops = fake_ops;
    ops.submit = NULL;
    ops.poll = NULL;
    ops.fetch = NULL; /* neither run nor the trio */
    CHECK_EQ(mb_backend_open(&ops, &cfg, &b), MB_STATUS_INVALID_ARG);
    ops = fake_ops;
    ops.abi_version = 1;
    CHECK_EQ(mb_backend_open(&ops, &cfg, &b), MB_STATUS_BAD_VERSION);

    /* The registry lists this build's backends, cpu among them. */
    int has_cpu = 0;
    CHECK(mb_backend_count() >= 1);
    for (size_t i = 0; i < mb_backend_count(); i++) {
        REQUIRE(mb_backend_at(i) != NULL);
        has_cpu |= strcmp(mb_backend_at(i)->name, "cpu") == 0;
    }
    CHECK(has_cpu);
    CHECK(mb_backend_at(mb_backend_count()) == NULL);
}

static void test_wrappers(void)
{
    mb_backend_config cfg = {.device = -1};
    mb_backend *b = NULL;
    REQUIRE(mb_backend_open(&fake_ops, &cfg, &b) == MB_STATUS_OK);
    CHECK(mb_backend_is_async(b));
    mb_backend_caps caps;
    REQUIRE(mb_backend_caps_get(b, &caps) == MB_STATUS_OK);
    CHECK_EQ(caps.max_inflight, FAKE_INFLIGHT);
    char why[200] = "";
    CHECK_EQ(mb_backend_caps_check(&caps, MB_DTYPE_MASK(MB_DTYPE_F32), MB_DTYPE_F32, why, sizeof why), MB_STATUS_OK);
    CHECK_EQ(mb_backend_caps_check(&caps, MB_DTYPE_MASK(MB_DTYPE_BF16), MB_DTYPE_F32, why, sizeof why), MB_STATUS_BAD_DTYPE);
    CHECK_MSG(strstr(why, "bf16") && strstr(why, "weights") && strstr(why, "fake"), "%s", why);
    CHECK_EQ(mb_backend_caps_check(&caps, MB_DTYPE_MASK(MB_DTYPE_F32), MB_DTYPE_F16, why, sizeof why), MB_STATUS_BAD_DTYPE);
    CHECK_MSG(strstr(why, "f16") && strstr(why, "payload"), "%s", why);
    /* No device view (only the CUDA backend has one): refused, not a crash. */
    mb_backend_device_view view;
    CHECK_EQ(mb_backend_device_layer(b, 0, &view), MB_STATUS_UNSUPPORTED);
    CHECK_EQ(mb_backend_device_layer(b, 0, NULL), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_backend_device_layer(NULL, 0, &view), MB_STATUS_INVALID_ARG);
    load_slots(b);

    /* Four in flight, the fifth refused until one is fetched. */
    static test_req rq[8];
    for (uint32_t i = 0; i < 8; i++)
        test_req_make(&rq[i], i + 1, 0);
    for (uint32_t i = 0; i < FAKE_INFLIGHT; i++)
        CHECK_EQ(mb_backend_submit(b, 10 + i, &rq[i].req), MB_STATUS_OK);
    CHECK_EQ(mb_backend_outstanding(b), FAKE_INFLIGHT);
    CHECK_EQ(mb_backend_submit(b, 10, &rq[4].req), MB_STATUS_INVALID_ARG); /* tag in use */
    CHECK_EQ(mb_backend_submit(b, 14, &rq[4].req), MB_STATUS_AGAIN);
    CHECK_EQ(mb_backend_fetch(b, 10, rq[4].act), MB_STATUS_INVALID_ARG); /* not done yet */
    CHECK_EQ(mb_backend_fetch(b, 999, rq[4].act), MB_STATUS_INVALID_ARG); /* unknown */
    mb_proto_pair far = {FAKE_SLOTS, 1.0f};
    uint16_t one = 1;
    mb_proto_expert_req bad = {0, 1, D_MODEL, MB_DTYPE_F32, 1, &one, &far, rq[0].act};
    CHECK_EQ(mb_backend_submit(b, 50, &bad), MB_STATUS_SLOT_RANGE);

    /* Every tag: CONSUMED before DONE, DONE not in submission order. */
    int consumed[4] = {0}, done[4] = {0}, n_done = 0, in_order = 1;
    float out[MAX_TOK * D_MODEL];
    while (n_done < FAKE_INFLIGHT) {
        mb_backend_event ev;
        mb_status st = mb_backend_poll(b, 1000000, &ev);
        REQUIRE(st == MB_STATUS_OK);
        REQUIRE(ev.tag >= 10 && ev.tag < 10 + FAKE_INFLIGHT);
        int i = (int)(ev.tag - 10);
        if (ev.kind == MB_BACKEND_EVENT_CONSUMED) {
            CHECK(!consumed[i] && !done[i]);
            consumed[i] = 1;
            continue;
        }
        CHECK_EQ(ev.kind, MB_BACKEND_EVENT_DONE);
        CHECK(consumed[i]);
        CHECK_EQ(ev.status, MB_STATUS_OK);
        if (i != n_done) in_order = 0;
        done[i] = 1;
        n_done++;
        memset(out, 0xff, sizeof out);
        CHECK_EQ(mb_backend_fetch(b, ev.tag, out), MB_STATUS_OK);
        CHECK(same_floats(out, rq[i].want, (size_t)rq[i].req.n_tokens * D_MODEL));
        CHECK_EQ(mb_backend_fetch(b, ev.tag, out), MB_STATUS_INVALID_ARG); /* forgotten */
    }
    CHECK(!in_order);
    CHECK_EQ(mb_backend_outstanding(b), 0);

    /* run amid two outstanding requests: their events are kept for poll. */
    CHECK_EQ(mb_backend_submit(b, 20, &rq[5].req), MB_STATUS_OK);
    CHECK_EQ(mb_backend_submit(b, 21, &rq[6].req), MB_STATUS_OK);
    uint64_t ns = 0;
    memset(out, 0xff, sizeof out);
    CHECK_EQ(mb_backend_run(b, &rq[7].req, out, &ns), MB_STATUS_OK);
    CHECK(same_floats(out, rq[7].want, (size_t)rq[7].req.n_tokens * D_MODEL));
    CHECK(ns >= 1000);
    CHECK_EQ(mb_backend_outstanding(b), 2);
    int got_done = 0, got_consumed = 0;
    while (got_done < 2) {
        mb_backend_event ev;
        REQUIRE(mb_backend_poll(b, 1000000, &ev) == MB_STATUS_OK);
        REQUIRE(ev.tag == 20 || ev.tag == 21);
        if (ev.kind == MB_BACKEND_EVENT_CONSUMED) {
            got_consumed++;
            continue;
        }
        const test_req *r = &rq[ev.tag == 20 ? 5 : 6];
        memset(out, 0xff, sizeof out);
        CHECK_EQ(mb_backend_fetch(b, ev.tag, out), MB_STATUS_OK);
        CHECK(same_floats(out, r->want, (size_t)r->req.n_tokens * D_MODEL));
        got_done++;
    }
    CHECK_EQ(got_consumed, 2);

    /* A request that cannot start leaves nothing outstanding; one that
     * fails later is forgotten on its DONE. */
    test_req refused, failing;
    test_req_make(&refused, 3, 99);
    test_req_make(&failing, 4, 98);
    CHECK_EQ(mb_backend_submit(b, 30, &refused.req), MB_STATUS_NOT_LOADED);
    CHECK_EQ(mb_backend_outstanding(b), 0);
    CHECK_EQ(mb_backend_submit(b, 30, &failing.req), MB_STATUS_OK);
    mb_backend_event ev;
    do {
        REQUIRE(mb_backend_poll(b, 1000000, &ev) == MB_STATUS_OK);
    } while (ev.kind != MB_BACKEND_EVENT_DONE);
    CHECK_EQ(ev.tag, 30);
    CHECK_EQ(ev.status, MB_STATUS_BACKEND);
    CHECK_EQ(mb_backend_outstanding(b), 0);
    CHECK_EQ(mb_backend_fetch(b, 30, out), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_backend_poll(b, 0, &ev), MB_STATUS_TIMEOUT);

    /* Closing with requests outstanding abandons them. */
    CHECK_EQ(mb_backend_submit(b, 40, &rq[0].req), MB_STATUS_OK);
    mb_backend_close(b);
}

/* ---- (b) mb_worker_serve pipelining over the in-process transport ---- */

static void send_req(mb_transport *t, uint64_t tag, const test_req *r)
{
    size_t bytes = 0;
    REQUIRE(mb_proto_expert_req_size(r->req.n_tokens, D_MODEL, MB_DTYPE_F32, r->req.n_pairs, &bytes) ==
            MB_STATUS_OK);
    void *buf = NULL;
    REQUIRE(mb_transport_send_reserve(t, bytes, -1, &buf) == MB_STATUS_OK);
    mb_proto_expert_req_writer wr;
    REQUIRE(mb_proto_encode_expert_req(buf, bytes, tag, 0, r->req.layer, r->req.n_tokens, D_MODEL, MB_DTYPE_F32,
                                       r->req.n_pairs, &wr) == MB_STATUS_OK);
    memcpy(wr.pair_counts, r->counts, r->req.n_tokens * sizeof *r->counts);
    memcpy(wr.pairs, r->pairs, r->req.n_pairs * sizeof *r->pairs);
    memcpy(wr.act, r->act, (size_t)r->req.n_tokens * D_MODEL * sizeof(float));
    REQUIRE(mb_transport_send_commit(t, wr.bytes) == MB_STATUS_OK);
}

static void send_empty(mb_transport *t, mb_proto_opcode op, uint64_t tag)
{
    unsigned char msg[MB_PROTO_HEADER_BYTES] __attribute__((aligned(8)));
    size_t len = 0;
    REQUIRE(mb_proto_encode_empty(msg, sizeof msg, op, tag, MB_STATUS_OK, &len) == MB_STATUS_OK);
    REQUIRE(mb_transport_send_copy(t, msg, len, -1) == MB_STATUS_OK);
}

static void test_worker_pipeline(void)
{
    enum { N = 12 };
    mb_backend_config cfg = {.device = -1};
    mb_backend *b = NULL;
    REQUIRE(mb_backend_open(&fake_ops, &cfg, &b) == MB_STATUS_OK);
    load_slots(b);
    mb_transport caller, handler;
    REQUIRE(mb_inproc_transport_create(&caller, &handler) == MB_STATUS_OK);

    /* Requests with repeating peer tags across two "sessions" would be
     * legal; here tags are distinct so each reply can be matched. Tag
     * 103 cannot start, 107 fails in the backend, a PING goes between. */
    static test_req rq[N];
    for (uint32_t i = 0; i < N; i++) {
        test_req_make(&rq[i], i, i == 3 ? 99 : i == 7 ? 98 : 0);
        send_req(&caller, 100 + i, &rq[i]);
        if (i == 5) send_empty(&caller, MB_OP_PING, 500);
    }
    send_empty(&caller, MB_OP_SHUTDOWN, 900);

    mb_worker_config wc = {.backend = b, .transport = &handler, .name = "test-worker"};
    CHECK_EQ(mb_worker_serve(&wc), MB_STATUS_OK);
    CHECK_MSG(fake_last->max_out >= 2, "at most %u requests were in flight", fake_last->max_out);
    CHECK_EQ(mb_backend_outstanding(b), 0);

    int seen[N] = {0}, pong = 0, shutdown_last = 0, n_replies = 0, in_order = 1;
    int64_t last_ok = -1;
    for (;;) {
        const void *msg = NULL;
        size_t len = 0;
        mb_status st = mb_transport_recv(&caller, 0, &msg, &len);
        if (st == MB_STATUS_TIMEOUT) break;
        REQUIRE(st == MB_STATUS_OK);
        mb_proto_header h;
        REQUIRE(mb_proto_decode_header(msg, len, &h) == MB_STATUS_OK);
        n_replies++;
        shutdown_last = 0;
        if (h.tag == 500) {
            CHECK_EQ(h.opcode, MB_OP_PONG);
            pong++;
        } else if (h.tag == 900) {
            CHECK_EQ(h.opcode, MB_OP_STATUS);
            CHECK_EQ(h.status, MB_STATUS_OK);
            shutdown_last = 1;
        } else {
            REQUIRE(h.tag >= 100 && h.tag < 100 + N);
            uint32_t i = (uint32_t)(h.tag - 100);
            CHECK(!seen[i]);
            seen[i] = 1;
            if (i == 3 || i == 7) {
                CHECK_EQ(h.opcode, MB_OP_STATUS);
                CHECK_EQ(h.status, i == 3 ? MB_STATUS_NOT_LOADED : MB_STATUS_BACKEND);
            } else {
                mb_proto_expert_reply r;
                CHECK_EQ(mb_proto_decode_expert_reply(msg, len, &r), MB_STATUS_OK);
                CHECK_EQ(r.n_tokens, rq[i].req.n_tokens);
                CHECK_MSG(same_floats(r.out, rq[i].want, (size_t)r.n_tokens * D_MODEL), "tag %u: wrong sums",
                          (unsigned)h.tag);
                CHECK(r.timings.compute_ns >= 1000);
                if ((int64_t)i < last_ok) in_order = 0;
                last_ok = i;
            }
        }
        mb_transport_recv_release(&caller);
    }
    for (int i = 0; i < N; i++)
        CHECK_MSG(seen[i], "no reply for tag %d", 100 + i);
    CHECK_EQ(pong, 1);
    CHECK(shutdown_last);
    CHECK_EQ(n_replies, N + 2);
    CHECK(!in_order);
    mb_transport_destroy(&caller);
    mb_backend_close(b);
}

int main(void)
{
    test_table_checks();
    test_wrappers();
    test_worker_pipeline();
    return mb_test_finish("test_backend_async");
}
