/* What the files of test_backend_ops share: the shapes and cases a
 * backend runs, the experts with their double-precision reference, the
 * requests built from them and the two ways a request runs (cases in
 * backend_ops_cases.c, the groups, errors and main in test_backend_ops.c). */
#ifndef MB_TESTS_PARITY_BACKEND_OPS_H
#define MB_TESTS_PARITY_BACKEND_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "backends/backend.h"
#include "protocol/dtype.h"
#include "protocol/message.h"

#define BO_POLL_TIMEOUT_NS 60000000000LL /* a hung backend fails, not hangs */
#define BO_SLOTS_PER_LAYER 8u
#define BO_ARENA_BYTES ((size_t)128 << 20)

typedef enum { BO_UNIFORM, BO_SKEWED, BO_SPARSE, BO_EMPTY } bo_routing;

/* A request size and routing; heavy cases run only for some dtype pairs
 * (bo_heavy_pair) to keep the reference's time down. */
typedef struct {
    uint32_t n_tokens;
    bo_routing routing;
    int heavy;
} bo_case_spec;

typedef struct {
    const char *name;
    uint32_t d_model, d_ff, n_experts, top_k;
    int not_cpu;  /* skipped on CPU devices (bo_cpu_device): the reference
                     and the device would be slow */
    int optional; /* a backend may refuse the shape at load (BAD_SHAPE) */
    const bo_case_spec *cases;
    size_t n_cases;
} bo_shape;

static inline uint32_t bo_slot(uint32_t layer, uint32_t e)
{
    return layer * BO_SLOTS_PER_LAYER + e;
}

/* A bump allocator over one shared mapping, emptied whenever nothing in it
 * is live; NULL base: plain malloc. */
typedef struct {
    uint8_t *base;
    size_t used;
    unsigned live;
} bo_arena_t;
extern bo_arena_t bo_arena;

void *bo_alloc(size_t bytes);
void bo_free(void *p);

typedef struct {
    uint32_t d_model, d_ff;
    mb_dtype wd[3]; /* of gate, up, down: one element dtype, or quantized ones */
    void *w[3];     /* gate, up [d_ff][d_model]; down [d_model][d_ff], in wd */
    double *wr[3];  /* the same values as doubles */
} bo_expert;

void bo_expert_init(bo_expert *e, mb_dtype wd, uint32_t d_model, uint32_t d_ff,
                    unsigned long long *seed);
void bo_expert_init_quant(bo_expert *e, const mb_dtype wd[3], uint32_t d_model, uint32_t d_ff,
                          unsigned long long *seed);
void bo_expert_fini(bo_expert *e);
mb_status bo_load(mb_backend *b, const bo_expert *e, uint32_t layer, uint32_t slot);

typedef struct {
    char label[80];
    mb_proto_expert_req req;
    uint16_t *counts;
    mb_proto_pair *pairs, *pairs_keep; /* keep: pristine copies to restore */
    void *act, *act_keep;
    double *ref;                /* [n_tokens][d_model] */
    void *out_async, *out_sync; /* [n_tokens][d_model] in the payload dtype */
    size_t act_bytes;
    int submitted, consumed, done, ok;
    double err;
} bo_case;

void bo_case_init(bo_case *c, const bo_shape *s, const bo_expert *ex, uint32_t layer, mb_dtype pd,
                  const bo_case_spec *cs, unsigned long long *seed);
void bo_case_fini(bo_case *c);
double bo_norm_err(const mb_proto_expert_req *req, const void *out, const double *ref);
void bo_run_async(mb_backend *b, uint32_t max_inflight, bo_case *cs, size_t n);
void bo_run_sync(mb_backend *b, bo_case *cs, size_t n);

#endif
