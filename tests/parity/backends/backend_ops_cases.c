/* test_backend_ops's cases: the bump allocator over registered host
 * memory, random experts (element or quantized) and their double-precision
 * reference, requests built from them with uniform, skewed, sparse or
 * empty routing, and the two ways a request runs (submit/poll/fetch with
 * inputs poisoned once consumed, and mb_backend_run). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/parity/backends/backend_ops.h"
#include "tests/expert_testutil.h"
#include "tests/quant_testutil.h"
#include "tests/testutil.h"

static const char *const bo_routing_name[] = {"uniform", "skewed", "sparse", "empty"};

bo_arena_t bo_arena;

/* Allocations are 8-aligned, as activations in a message are, and spaced
 * so that most are not 16- or 64-aligned. */
void *bo_alloc(size_t bytes)
{
    if (!bo_arena.base) {
        void *p = malloc(bytes ? bytes : 1);
        REQUIRE(p);
        return p;
    }
    size_t at = ((bo_arena.used + 7) & ~(size_t)7) + 8;
    REQUIRE(at <= BO_ARENA_BYTES && bytes <= BO_ARENA_BYTES - at);
    bo_arena.used = at + bytes;
    bo_arena.live++;
    return bo_arena.base + at;
}

void bo_free(void *p)
{
    if (!bo_arena.base || (uint8_t *)p < bo_arena.base ||
        (uint8_t *)p >= bo_arena.base + BO_ARENA_BYTES) {
        free(p);
        return;
    }
    if (--bo_arena.live == 0) bo_arena.used = 0;
}

/* ---- experts and the reference ---- */

void bo_expert_init(bo_expert *e, mb_dtype wd, uint32_t d_model, uint32_t d_ff,
                    unsigned long long *seed)
{
    e->d_model = d_model;
    e->d_ff = d_ff;
    e->wd[0] = e->wd[1] = e->wd[2] = wd;
    mb_test_expert_weights(wd, d_model, d_ff, seed, e->w, e->wr);
}

/* Random quantized blocks of types wd (trained-sized scales) and their
 * exact dequantization. */
void bo_expert_init_quant(bo_expert *e, const mb_dtype wd[3], uint32_t d_model, uint32_t d_ff,
                          unsigned long long *seed)
{
    e->d_model = d_model;
    e->d_ff = d_ff;
    for (int m = 0; m < 3; m++) {
        const size_t rows = m == 2 ? d_model : d_ff, cols = m == 2 ? d_ff : d_model;
        e->wd[m] = wd[m];
        e->w[m] =
            mb_test_quant_blocks((int)wd[m], rows * cols / mb_dtype_block_elems(wd[m]), 0, seed);
        e->wr[m] = mb_test_quant_dequant((int)wd[m], e->w[m], rows, cols);
    }
}

void bo_expert_fini(bo_expert *e)
{
    for (int m = 0; m < 3; m++) {
        free(e->w[m]);
        free(e->wr[m]);
    }
}

mb_status bo_load(mb_backend *b, const bo_expert *e, uint32_t layer, uint32_t slot)
{
    mb_expert_weights w = {layer,      slot,    slot,
                           e->d_model, e->d_ff, {e->wd[0], e->wd[1], e->wd[2]},
                           e->w[0],    e->w[1], e->w[2]};
    return mb_backend_load_expert(b, &w);
}

/* Four partial sums: the reference stays exact enough and runs a few times
 * faster than one dependent chain. */
double bo_dot(const double *a, const double *b, size_t n)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++)
        s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

/* y[d_model] += g * down(silu(gate x) * (up x)); h is scratch [d_ff]. */
void bo_ref_add(const bo_expert *e, const double *x, double g, double *h, double *y)
{
    size_t dm = e->d_model, df = e->d_ff;
    for (size_t f = 0; f < df; f++) {
        double a = bo_dot(e->wr[0] + f * dm, x, dm), u = bo_dot(e->wr[1] + f * dm, x, dm);
        h[f] = a / (1.0 + exp(-a)) * u;
    }
    for (size_t c = 0; c < dm; c++)
        y[c] += g * bo_dot(e->wr[2] + c * df, h, df);
}

/* ---- cases ---- */

/* Picks k distinct experts of [0, n) into ids, hot first when hot >= 0. */
void bo_pick(uint32_t *ids, uint32_t k, uint32_t n, int hot, unsigned long long *seed)
{
    uint32_t got = 0;
    if (hot >= 0) ids[got++] = (uint32_t)hot;
    while (got < k) {
        uint32_t e = (uint32_t)(mb_test_rand_u64(seed) % n), dup = 0;
        for (uint32_t i = 0; i < got; i++)
            dup |= ids[i] == e;
        if (!dup) ids[got++] = e;
    }
    /* The hot expert moves to a random position so that request order varies. */
    uint32_t j = (uint32_t)(mb_test_rand_u64(seed) % k), t = ids[0];
    ids[0] = ids[j];
    ids[j] = t;
}

/* Builds a request of layer on experts ex (shape s), in payload pd, and its
 * reference (none when ex is NULL: requests meant to fail). Uniform: top_k random distinct experts
 * a token. Skewed: one expert in every token. Sparse: only the first half of the experts, a third
 * of the tokens without any, others 1..top_k. Empty: no pairs. */
void bo_case_init(bo_case *c, const bo_shape *s, const bo_expert *ex, uint32_t layer, mb_dtype pd,
                  const bo_case_spec *cs, unsigned long long *seed)
{
    memset(c, 0, sizeof *c);
    uint32_t nt = cs->n_tokens, dm = s->d_model, k = s->top_k;
    size_t n_act = (size_t)nt * dm;
    c->counts = calloc(nt, sizeof *c->counts);
    c->pairs = calloc((size_t)nt * k + 1, sizeof *c->pairs);
    c->pairs_keep = calloc((size_t)nt * k + 1, sizeof *c->pairs_keep);
    c->act_bytes = n_act * mb_dtype_size(pd);
    c->act = bo_alloc(c->act_bytes);
    c->act_keep = malloc(c->act_bytes);
    c->out_async = bo_alloc(c->act_bytes);
    c->out_sync = bo_alloc(c->act_bytes);
    size_t n_ref = ex ? n_act : 1;
    c->ref = calloc(n_ref, sizeof *c->ref);
    double *x = malloc(n_ref * sizeof *x), *h = malloc(s->d_ff * sizeof *h);
    float *tmp = malloc(n_act * sizeof *tmp);
    REQUIRE(c->counts && c->pairs && c->pairs_keep && c->act && c->act_keep && c->out_async &&
            c->out_sync && c->ref && x && h && tmp);
    for (size_t i = 0; i < n_act; i++)
        tmp[i] = mb_test_rand_f32(seed) * 2.0f;
    mb_dtype_encode_f32(pd, c->act, tmp, n_act);
    mb_dtype_decode_f32(pd, tmp, c->act, n_act);
    for (size_t i = 0; ex && i < n_act; i++)
        x[i] = tmp[i];
    memcpy(c->act_keep, c->act, c->act_bytes);

    int hot = cs->routing == BO_SKEWED ? (int)(mb_test_rand_u64(seed) % s->n_experts) : -1;
    uint32_t span = cs->routing == BO_SPARSE ? (s->n_experts + 1) / 2 : s->n_experts;
    uint32_t q = 0, ids[16];
    for (uint32_t t = 0; t < nt; t++) {
        uint32_t n = k;
        if (cs->routing == BO_EMPTY) n = 0;
        if (cs->routing == BO_SPARSE)
            n = t % 3 == 1 ? 0 : 1 + (uint32_t)(mb_test_rand_u64(seed) % (k < span ? k : span));
        c->counts[t] = (uint16_t)n;
        if (n == 0) continue;
        bo_pick(ids, n, span, hot, seed);
        for (uint32_t i = 0; i < n; i++, q++) {
            c->pairs[q].slot = bo_slot(layer, ids[i]);
            c->pairs[q].gate = 0.1f + 0.9f * fabsf(mb_test_rand_f32(seed));
            if (ex)
                bo_ref_add(&ex[ids[i]], x + (size_t)t * dm, c->pairs[q].gate, h,
                           c->ref + (size_t)t * dm);
        }
    }
    memcpy(c->pairs_keep, c->pairs, ((size_t)q + 1) * sizeof *c->pairs);
    c->req = (mb_proto_expert_req){layer, nt, dm, pd, q, c->counts, c->pairs, c->act};
    snprintf(c->label, sizeof c->label, "%-8s %5u %-7s %5u", s->name, nt,
             bo_routing_name[cs->routing], q);
    /* Outputs poisoned with all-ones bytes: NaN in every dtype. */
    memset(c->out_async, 0xff, c->act_bytes);
    memset(c->out_sync, 0xff, c->act_bytes);
    free(x);
    free(h);
    free(tmp);
}

void bo_case_fini(bo_case *c)
{
    free(c->counts);
    free(c->pairs);
    free(c->pairs_keep);
    bo_free(c->act);
    free(c->act_keep);
    free(c->ref);
    bo_free(c->out_async);
    bo_free(c->out_sync);
}

/* Once CONSUMED, the backend must not read the inputs again: make any late
 * read show as NaN. */
void bo_case_poison_inputs(bo_case *c)
{
    memset(c->act, 0xff, c->act_bytes);
    for (uint32_t i = 0; i < c->req.n_pairs; i++)
        c->pairs[i].gate = NAN;
}

void bo_case_restore_inputs(bo_case *c)
{
    memcpy(c->act, c->act_keep, c->act_bytes);
    memcpy(c->pairs, c->pairs_keep, (size_t)c->req.n_pairs * sizeof *c->pairs);
}

/* max |out - ref| / max |ref|; NaN counts as infinite. An all-zero ref
 * (no pairs) must give exact zeros. */
double bo_norm_err(const mb_proto_expert_req *req, const void *out, const double *ref)
{
    size_t n = (size_t)req->n_tokens * req->d_model;
    float *o = malloc(sizeof(float) * n);
    REQUIRE(o);
    mb_dtype_decode_f32(req->dtype, o, out, n);
    double maxref = 0, maxdiff = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)o[i] - ref[i]);
        if (!(d <= maxdiff)) maxdiff = isnan(d) ? INFINITY : d;
        if (fabs(ref[i]) > maxref) maxref = fabs(ref[i]);
    }
    free(o);
    return maxref > 0 ? maxdiff / maxref : maxdiff > 0 ? INFINITY : 0;
}

/* ---- the two paths ---- */

/* Submits every case with up to max_inflight outstanding, polls, poisons
 * inputs at CONSUMED, fetches each DONE into out_async. */
void bo_run_async(mb_backend *b, uint32_t max_inflight, bo_case *cs, size_t n)
{
    size_t next = 0, finished = 0;
    uint32_t outstanding = 0;
    while (finished < n) {
        while (next < n && outstanding < max_inflight) {
            mb_status st = mb_backend_submit(b, next, &cs[next].req);
            if (st == MB_STATUS_AGAIN) break;
            CHECK_MSG(st == MB_STATUS_OK, "%s: submit: %s", cs[next].label, mb_status_str(st));
            if (st == MB_STATUS_OK) {
                cs[next].submitted = 1;
                outstanding++;
            } else {
                finished++;
            }
            next++;
        }
        if (finished == n) break;
        REQUIRE(outstanding > 0); /* AGAIN with nothing outstanding: no progress possible */
        CHECK_EQ(mb_backend_outstanding(b), outstanding);
        mb_backend_event ev;
        mb_status st = mb_backend_poll(b, BO_POLL_TIMEOUT_NS, &ev);
        if (st != MB_STATUS_OK) {
            fprintf(stderr, "poll: %s with %u outstanding\n", mb_status_str(st), outstanding);
            exit(1);
        }
        REQUIRE(ev.tag < next && cs[ev.tag].submitted && !cs[ev.tag].done);
        bo_case *c = &cs[ev.tag];
        if (ev.kind == MB_BACKEND_EVENT_CONSUMED) {
            CHECK_MSG(!c->consumed, "%s: CONSUMED twice", c->label);
            c->consumed = 1;
            bo_case_poison_inputs(c);
            continue;
        }
        REQUIRE(ev.kind == MB_BACKEND_EVENT_DONE);
        if (!c->consumed) bo_case_poison_inputs(c);
        c->consumed = c->done = 1;
        outstanding--;
        finished++;
        CHECK_MSG(ev.status == MB_STATUS_OK, "%s: DONE with %s", c->label,
                  mb_status_str(ev.status));
        if (ev.status != MB_STATUS_OK) continue;
        st = mb_backend_fetch(b, ev.tag, c->out_async);
        CHECK_MSG(st == MB_STATUS_OK, "%s: fetch: %s", c->label, mb_status_str(st));
        c->ok = st == MB_STATUS_OK;
    }
    CHECK_EQ(mb_backend_outstanding(b), 0);
}

/* The same requests through mb_backend_run: identical bytes expected. */
void bo_run_sync(mb_backend *b, bo_case *cs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bo_case *c = &cs[i];
        bo_case_restore_inputs(c);
        mb_status st = mb_backend_run(b, &c->req, c->out_sync, NULL);
        CHECK_MSG(st == MB_STATUS_OK, "%s: run: %s", c->label, mb_status_str(st));
        if (st != MB_STATUS_OK) c->ok = 0;
        CHECK_MSG(st != MB_STATUS_OK || memcmp(c->out_sync, c->out_async, c->act_bytes) == 0,
                  "%s: run and submit/fetch results differ (not deterministic)", c->label);
    }
}
