/* Helpers for the CPU backend parity and error tests: experts with random
 * weights stored in their dtype (plus exact double copies for the
 * reference), requests built as decoded views, and the double-precision
 * reference out[t] = sum over pairs g * down(silu(gate x) * up x) computed
 * from the same dtype-rounded activations the backend sees. */
#ifndef MB_TESTS_PARITY_CPU_BACKEND_CPU_TEST_H
#define MB_TESTS_PARITY_CPU_BACKEND_CPU_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backend.h"
#include "protocol/dtype.h"
#include "tests/expert_testutil.h"
#include "tests/testutil.h"

typedef struct {
    uint32_t d_model, d_ff;
    mb_dtype wd;
    void *w[3];    /* gate, up [d_ff][d_model]; down [d_model][d_ff] in wd */
    double *wr[3]; /* the same values as doubles */
} ct_expert;

static inline void ct_expert_init(ct_expert *e, mb_dtype wd, uint32_t d_model, uint32_t d_ff,
                                  unsigned long long *seed)
{
    e->d_model = d_model;
    e->d_ff = d_ff;
    e->wd = wd;
    mb_test_expert_weights(wd, d_model, d_ff, seed, e->w, e->wr);
}

static inline void ct_expert_fini(ct_expert *e)
{
    for (int m = 0; m < 3; m++) {
        free(e->w[m]);
        free(e->wr[m]);
    }
}

static inline mb_status ct_load(mb_backend *b, const ct_expert *e, uint32_t layer, uint32_t slot)
{
    mb_expert_weights w = {layer,   slot + 1000u, slot,    e->d_model, e->d_ff, {e->wd, e->wd, e->wd},
                           e->w[0], e->w[1],      e->w[2]};
    return mb_backend_load_expert(b, &w);
}

/* y[d_model] += g * FFN_e(x) in double. */
static inline void ct_ref_add(const ct_expert *e, const double *x, double g, double *y)
{
    size_t dm = e->d_model, df = e->d_ff;
    double *h = malloc(sizeof(double) * df);
    REQUIRE(h);
    for (size_t f = 0; f < df; f++) {
        const double *gr = e->wr[0] + f * dm, *ur = e->wr[1] + f * dm;
        double a = 0, b = 0;
        for (size_t i = 0; i < dm; i++) {
            a += gr[i] * x[i];
            b += ur[i] * x[i];
        }
        h[f] = a / (1.0 + exp(-a)) * b;
    }
    for (size_t c = 0; c < dm; c++) {
        const double *dr = e->wr[2] + c * df;
        double s = 0;
        for (size_t f = 0; f < df; f++)
            s += dr[f] * h[f];
        y[c] += g * s;
    }
    free(h);
}

/* A request's arrays, owned by the test. */
typedef struct {
    mb_proto_expert_req req;
    uint16_t *counts;
    mb_proto_pair *pairs;
    void *act;
    double *act_ref; /* [n_tokens][d_model] decoded payload values */
} ct_req;

/* Random activations in dtype; token t gets counts[t] pairs from slots[]
 * (caller fills pairs afterwards through r->pairs). */
static inline void ct_req_init(ct_req *r, uint32_t layer, uint32_t n_tokens, uint32_t d_model,
                               mb_dtype dt, uint32_t n_pairs, unsigned long long *seed)
{
    memset(r, 0, sizeof *r);
    size_t n = (size_t)n_tokens * d_model;
    r->counts = calloc(n_tokens + 1, sizeof *r->counts);
    r->pairs = calloc(n_pairs + 1, sizeof *r->pairs);
    r->act = malloc(n * mb_dtype_size(dt) + 8);
    r->act_ref = malloc(sizeof(double) * n + 8);
    float *tmp = malloc(sizeof(float) * n + 4);
    REQUIRE(r->counts && r->pairs && r->act && r->act_ref && tmp);
    for (size_t i = 0; i < n; i++)
        tmp[i] = mb_test_rand_f32(seed) * 2.0f;
    mb_dtype_encode_f32(dt, r->act, tmp, n);
    mb_dtype_decode_f32(dt, tmp, r->act, n);
    for (size_t i = 0; i < n; i++)
        r->act_ref[i] = tmp[i];
    free(tmp);
    r->req =
        (mb_proto_expert_req){layer, n_tokens, d_model, dt, n_pairs, r->counts, r->pairs, r->act};
}

static inline void ct_req_fini(ct_req *r)
{
    free(r->counts);
    free(r->pairs);
    free(r->act);
    free(r->act_ref);
}

/* Output buffer poisoned with all-ones bytes: NaN in f32, f16 and bf16. */
static inline void *ct_out_poisoned(const mb_proto_expert_req *req)
{
    size_t bytes = (size_t)req->n_tokens * req->d_model * mb_dtype_size(req->dtype);
    void *out = malloc(bytes + 8);
    REQUIRE(out);
    memset(out, 0xff, bytes + 8);
    return out;
}

/* max |out - ref| / max |ref| over the request's output; NaN counts as inf. */
static inline double ct_norm_err(const mb_proto_expert_req *req, const void *out, const double *ref)
{
    size_t n = (size_t)req->n_tokens * req->d_model;
    float *o = malloc(sizeof(float) * n + 4);
    REQUIRE(o);
    mb_dtype_decode_f32(req->dtype, o, out, n);
    double maxref = 1e-30, maxdiff = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)o[i] - ref[i]);
        if (!(d <= maxdiff)) maxdiff = isnan(d) ? INFINITY : d;
        if (fabs(ref[i]) > maxref) maxref = fabs(ref[i]);
    }
    free(o);
    return maxdiff / maxref;
}

/* Normalised-error thresholds by payload dtype: f32 accumulation only for
 * f32; f16 / bf16 outputs are rounded to 11 / 8 significant bits, i.e. up
 * to 2^-11 / 2^-8 of an element's magnitude, so allow twice that. */
static inline double ct_threshold(mb_dtype payload)
{
    return payload == MB_DTYPE_F32 ? 1e-5 : payload == MB_DTYPE_F16 ? 1e-3 : 8e-3;
}

#endif
