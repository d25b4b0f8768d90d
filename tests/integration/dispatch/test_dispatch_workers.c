/* Expert work through real worker processes over shm, ZeroMQ ipc:// and
 * tcp://127.0.0.1, in every IPC mode and payload dtype, against the same
 * placement served in-process: f32 payloads bit-identical, f16/bf16 within
 * the dtype's rounding. Also checks that the reported calls, tokens, pairs
 * and bytes equal what the routing and placement imply, computed here from
 * the documented message layout. */
#include <math.h>
#include <string.h>

#include "broker/dispatch.h"
#include "broker/link.h"
#include "broker/placement.h"
#include "broker/session.h"
#include "broker/synthetic.h"
#include "tests/integration/worker_util.h"
#include "tests/testutil.h"

#define N_LINKS 2
#define N_PREFILL 37

static mb_model *model;

static void tiny_config(mb_model_config *c)
{
    mb_synthetic_default_config(c);
    c->n_layers = 2;
    c->d_model = 64;
    c->n_heads = 4;
    c->n_kv_heads = 2;
    c->head_dim = 16;
    c->vocab = 128;
    c->n_experts = 8;
    c->top_k = 3;
    c->d_ff_expert = 48;
}

static uint64_t align8(uint64_t v)
{
    return (v + 7) & ~7ull;
}

/* EXPERT_REQ and EXPERT_REPLY sizes from message.h's documented layout. */
static uint64_t req_bytes(uint64_t n, uint64_t pairs, uint64_t d, uint64_t es)
{
    return align8(32 + 24 + align8(2 * n) + 8 * pairs + n * d * es);
}

static uint64_t rep_bytes(uint64_t n, uint64_t d, uint64_t es)
{
    return align8(32 + 40 + n * d * es);
}

typedef struct {
    uint32_t n;
    int32_t ids[N_PREFILL * 3];
    float gate[N_PREFILL * 3];
    float x[N_PREFILL * 64];
} routing;

static void make_routing(routing *r, uint32_t n, unsigned long long seed)
{
    r->n = n;
    for (uint32_t t = 0; t < n; t++) {
        /* top_k distinct experts per token */
        for (uint32_t k = 0; k < 3; k++) {
            int32_t e;
            int dup;
            do {
                e = (int32_t)(mb_test_rand_u64(&seed) % 8);
                dup = 0;
                for (uint32_t j = 0; j < k; j++) dup |= r->ids[t * 3 + j] == e;
            } while (dup);
            r->ids[t * 3 + k] = e;
            r->gate[t * 3 + k] = 0.2f + 0.3f * (mb_test_rand_f32(&seed) + 1.0f);
        }
    }
    for (uint32_t i = 0; i < n * 64; i++) r->x[i] = mb_test_rand_f32(&seed);
}

/* One layer through the dispatcher. wire: the activations handed over
 * already encoded in the payload dtype (x_wire, as a coordinator on a GPU
 * hands them), 2: in another dtype than the payload's, 3: none at all
 * (both refused). */
static mb_status run(mb_link *links, const mb_placement *pl, mb_ipc_mode mode, mb_dtype dt,
                     const routing *r, uint32_t layer, int wire, float *out, mb_stats **stats_out)
{
    const char *names[N_LINKS] = {links[0].name, links[1].name};
    mb_stats *stats = NULL;
    REQUIRE(mb_stats_create(N_LINKS, names, 2, 0, &stats) == MB_STATUS_OK);
    /* Every other call polls the busy links for up to 1 ms before blocking
     * (as a coordinator on a GPU does): the same results either way. */
    static unsigned calls;
    mb_dispatch_config dc = {.links = links,
                             .n_links = N_LINKS,
                             .placement = pl,
                             .mode = mode,
                             .batch_capacity = 16,
                             .stream_slice = 4,
                             .payload = dt,
                             .d_model = 64,
                             .top_k = 3,
                             .max_tokens = N_PREFILL,
                             .stats = stats,
                             .poll_spin_ns = calls++ % 2 ? 1000000 : 0};
    mb_dispatch *d = NULL;
    REQUIRE(mb_dispatch_create(&dc, &d) == MB_STATUS_OK);
    mb_moe_work w = {.layer = layer, .n_tokens = r->n, .top_k = 3, .decode = r->n == 1, .expert_ids = r->ids,
                     .gate = r->gate, .x = r->x, .out = out};
    static unsigned char enc[N_PREFILL * 64 * 4];
    if (wire) {
        w.x_wire_dtype = wire == 2 ? (dt == MB_DTYPE_F32 ? MB_DTYPE_BF16 : MB_DTYPE_F32) : dt;
        mb_dtype_encode_f32(w.x_wire_dtype, enc, r->x, (size_t)r->n * 64);
        w.x_wire = wire == 3 ? NULL : enc;
        w.x = NULL;
    }
    for (uint32_t i = 0; i < r->n * 64; i++) out[i] = NAN;
    mb_status st = mb_dispatch_moe(d, &w);
    if (st != MB_STATUS_OK) fprintf(stderr, "dispatch: %s\n", mb_dispatch_error(d));
    /* The call's critical path: its slowest link's compute, as the workers
     * reported it, within the call's wall time; only successful calls. */
    uint64_t disp = 0, wait = 0, crit = 1, slowest = 0;
    mb_dispatch_take_times(d, &disp, &wait, &crit);
    for (uint32_t li = 0; li < N_LINKS; li++) {
        mb_stats_counters c;
        REQUIRE(mb_stats_get(stats, li, w.decode ? MB_STATS_PHASE_DECODE : MB_STATS_PHASE_PREFILL,
                             &c) == MB_STATUS_OK);
        if (c.worker_compute_ns > slowest) slowest = c.worker_compute_ns;
    }
    CHECK_EQ(crit, st == MB_STATUS_OK ? slowest : 0);
    CHECK(crit <= disp && wait <= disp);
    mb_dispatch_take_times(d, &disp, &wait, &crit);
    CHECK(disp == 0 && wait == 0 && crit == 0);
    mb_dispatch_destroy(d);
    *stats_out = stats;
    return st;
}

/* Checks the statistics of link li against routing r under placement pl. */
static void check_stats(const mb_stats *stats, const mb_placement *pl, uint32_t li, mb_ipc_mode mode, mb_dtype dt,
                        const routing *r, uint32_t layer)
{
    /* Which tokens visit this link and with how many pairs. */
    uint32_t tok_pairs[N_PREFILL], n_tok = 0, n_pairs = 0;
    for (uint32_t t = 0; t < r->n; t++) {
        uint32_t c = 0;
        for (uint32_t k = 0; k < 3; k++) c += mb_placement_at(pl, layer, (uint32_t)r->ids[t * 3 + k])->link == li;
        if (c) tok_pairs[n_tok++] = c;
        n_pairs += c;
    }
    mb_stats_counters got;
    REQUIRE(mb_stats_get(stats, li, r->n == 1 ? MB_STATS_PHASE_DECODE : MB_STATS_PHASE_PREFILL, &got) ==
            MB_STATUS_OK);
    CHECK_EQ(got.tokens, n_tok);
    CHECK_EQ(got.pairs, n_pairs);
    if (mode == MB_IPC_MODE_AUTO) return; /* slicing depends on measurements */
    uint32_t slice = mode == MB_IPC_MODE_STREAM ? 4 : 16;
    uint64_t calls = 0, sent = 0, recv = 0, es = mb_dtype_size(dt);
    for (uint32_t i = 0; i < n_tok; i += slice) {
        uint32_t n = n_tok - i < slice ? n_tok - i : slice, p = 0;
        for (uint32_t j = 0; j < n; j++) p += tok_pairs[i + j];
        calls++;
        sent += req_bytes(n, p, 64, es);
        recv += rep_bytes(n, 64, es);
    }
    CHECK_EQ(got.calls, calls);
    CHECK_EQ(got.bytes_sent, sent);
    CHECK_EQ(got.bytes_received, recv);
}

static mb_status open_links(int kind, mb_link *links, pid_t *pids)
{
    char err[256];
    mb_link_spec spec = {.backend = "cpu", .device = -1, .threads = 1, .weight = 1, .max_slots = 64};
    for (int i = 0; i < N_LINKS; i++) {
        mb_status st;
        pids[i] = 0;
        if (kind == 0) st = mb_link_open_inproc(&spec, i, &links[i], err, sizeof err);
        else if (kind == 1) st = mb_link_spawn(&spec, MB_LINK_SPAWNED_SHM, i, 10000000000LL, &links[i], err, sizeof err);
        else if (kind == 2) st = mb_link_spawn(&spec, MB_LINK_SPAWNED_ZMQ, i, 10000000000LL, &links[i], err, sizeof err);
        else {
            char ep[256];
            pids[i] = mb_test_start_worker("tcp://127.0.0.1:*", 1, ep, sizeof ep);
            if (pids[i] < 0) {
                fprintf(stderr, "cannot start a tcp worker\n");
                return MB_STATUS_IO;
            }
            spec.endpoint = ep;
            st = mb_link_connect(&spec, i, 10000000000LL, &links[i], err, sizeof err);
        }
        if (st != MB_STATUS_OK) {
            fprintf(stderr, "link %d (kind %d): %s\n", i, kind, err);
            return st;
        }
    }
    return MB_STATUS_OK;
}

int main(void)
{
    mb_model_config cfg;
    tiny_config(&cfg);
    char err[256];
    REQUIRE(mb_synthetic_create(&cfg, 7, 0, &model, err, sizeof err) == MB_STATUS_OK);

    /* The reference: the same placement served in-process. */
    mb_link ref_links[N_LINKS];
    pid_t ref_pids[N_LINKS];
    memset(ref_links, 0, sizeof ref_links);
    REQUIRE(open_links(0, ref_links, ref_pids) == MB_STATUS_OK);
    mb_placement pl;
    REQUIRE(mb_placement_plan(&cfg, ref_links, N_LINKS, -1, 0, 0, &pl, err, sizeof err) == MB_STATUS_OK);
    for (uint32_t li = 0; li < N_LINKS; li++) CHECK(pl.slots_used[li] == cfg.n_layers * cfg.n_experts / N_LINKS);
    REQUIRE(mb_experts_load(model, ref_links, &pl, 0, err, sizeof err) == MB_STATUS_OK);

    static routing r_prefill, r_decode;
    make_routing(&r_prefill, N_PREFILL, 11);
    make_routing(&r_decode, 1, 12);
    static float ref[N_PREFILL * 64], got[N_PREFILL * 64];
    const char *kinds[] = {"inproc", "shm", "zmq ipc", "zmq tcp"};
    for (int kind = 1; kind <= 3; kind++) {
        mb_link links[N_LINKS];
        pid_t pids[N_LINKS];
        memset(links, 0, sizeof links);
        if (open_links(kind, links, pids) != MB_STATUS_OK) {
            CHECK_MSG(0, "cannot open %s links", kinds[kind]);
            continue;
        }
        REQUIRE(mb_experts_load(model, links, &pl, 0, err, sizeof err) == MB_STATUS_OK);
        for (int mode = 0; mode < 3; mode++) {
            for (int dt = 0; dt < 3; dt++) {
                for (int which = 0; which < 2; which++) {
                    const routing *r = which ? &r_decode : &r_prefill;
                    for (uint32_t layer = 0; layer < 2; layer++) {
                        mb_stats *s_ref = NULL, *s_got = NULL;
                        CHECK(run(ref_links, &pl, (mb_ipc_mode)mode, (mb_dtype)dt, r, layer, 0, ref,
                                  &s_ref) == MB_STATUS_OK);
                        CHECK(run(links, &pl, (mb_ipc_mode)mode, (mb_dtype)dt, r, layer, 0, got,
                                  &s_got) == MB_STATUS_OK);
                        /* Rows handed over already encoded: the same bytes sent, so
                         * the same sums bit for bit, and the same statistics. */
                        static float got_wire[N_PREFILL * 64];
                        mb_stats *s_wire = NULL;
                        CHECK(run(links, &pl, (mb_ipc_mode)mode, (mb_dtype)dt, r, layer, 1,
                                  got_wire, &s_wire) == MB_STATUS_OK);
                        CHECK_MSG(memcmp(got_wire, got, r->n * 64 * sizeof(float)) == 0,
                                  "%s mode %d dtype %d: encoded rows gave other sums", kinds[kind],
                                  mode, dt);
                        for (uint32_t li = 0; li < N_LINKS; li++)
                            check_stats(s_wire, &pl, li, (mb_ipc_mode)mode, (mb_dtype)dt, r, layer);
                        mb_stats_destroy(s_wire);
                        double max_ref = 0, max_diff = 0;
                        int nan = 0;
                        for (uint32_t i = 0; i < r->n * 64; i++) {
                            nan |= isnan(got[i]) || isnan(ref[i]);
                            max_ref = fmax(max_ref, fabs(ref[i]));
                            max_diff = fmax(max_diff, fabs((double)got[i] - ref[i]));
                        }
                        CHECK_MSG(!nan, "%s mode %d dtype %d: unwritten output", kinds[kind], mode, dt);
                        if (dt == MB_DTYPE_F32)
                            CHECK_MSG(memcmp(got, ref, r->n * 64 * sizeof(float)) == 0,
                                      "%s mode %d: f32 not bit-identical (max diff %g)", kinds[kind], mode, max_diff);
                        else
                            CHECK_MSG(max_diff <= (dt == MB_DTYPE_F32 ? 1e-5 : 2e-2) * max_ref,
                                      "%s mode %d dtype %d: max diff %g of %g", kinds[kind], mode, dt, max_diff,
                                      max_ref);
                        for (uint32_t li = 0; li < N_LINKS; li++) {
                            check_stats(s_got, &pl, li, (mb_ipc_mode)mode, (mb_dtype)dt, r, layer);
                            check_stats(s_ref, &pl, li, (mb_ipc_mode)mode, (mb_dtype)dt, r, layer);
                        }
                        mb_stats_destroy(s_ref);
                        mb_stats_destroy(s_got);
                    }
                }
            }
        }
        /* Rows in another dtype than the links carry, or none: refused
         * before anything is sent, and the links still answer after. */
        for (int wire = 2; wire <= 3; wire++) {
            mb_stats *s_bad = NULL;
            CHECK(run(links, &pl, MB_IPC_MODE_BATCHED, MB_DTYPE_F16, &r_decode, 0, wire, got,
                      &s_bad) == MB_STATUS_INVALID_ARG);
            mb_stats_destroy(s_bad);
        }
        mb_stats *s_after = NULL;
        CHECK(run(links, &pl, MB_IPC_MODE_BATCHED, MB_DTYPE_F16, &r_decode, 1, 1, got, &s_after) ==
              MB_STATUS_OK);
        mb_stats_destroy(s_after);
        for (int i = 0; i < N_LINKS; i++) {
            mb_link_close(&links[i]);
            mb_test_stop_worker(pids[i]);
        }
        printf("%s: ok\n", kinds[kind]);
    }
    for (int i = 0; i < N_LINKS; i++) mb_link_close(&ref_links[i]);
    mb_placement_free(&pl);
    mb_model_destroy(model);
    return mb_test_finish("test_dispatch_workers");
}
