/* CPU backend contracts: capabilities; open on a missing NUMA node fails
 * with DEVICE; BIND and INTERLEAVE placements compute what DEFAULT does;
 * load_expert rejects a shape that differs from its layer's; run rejects an
 * unloaded slot, a slot of another layer, a wrong d_model and inconsistent
 * pair counts, leaving the output untouched; reloading a slot replaces it;
 * an empty request succeeds; a first request without pairs gives zeros;
 * misaligned f32 activations and output give the aligned result. */
#include <stdio.h>

#include "cpu_test.h"

static int out_untouched(const void *out, size_t bytes)
{
    const unsigned char *p = out;
    for (size_t i = 0; i < bytes; i++)
        if (p[i] != 0xff) return 0;
    return 1;
}

/* One token, pairs with the given slots and gate 1; returns the run status
 * and checks the output stays poisoned on failure. */
static mb_status run_slots(mb_backend *b, uint32_t layer, uint32_t d_model, const uint32_t *slots,
                           uint32_t n, void **out_keep, unsigned long long *seed)
{
    ct_req r;
    ct_req_init(&r, layer, 1, d_model, MB_DTYPE_F32, n, seed);
    r.counts[0] = (uint16_t)n;
    for (uint32_t i = 0; i < n; i++)
        r.pairs[i] = (mb_proto_pair){slots[i], 1.0f};
    void *out = ct_out_poisoned(&r.req);
    mb_status st = mb_backend_run(b, &r.req, out, NULL);
    if (st != MB_STATUS_OK) CHECK(out_untouched(out, d_model * sizeof(float)));
    if (out_keep)
        *out_keep = out;
    else
        free(out);
    ct_req_fini(&r);
    return st;
}

int main(void)
{
    const mb_backend_ops *ops = mb_backend_find("cpu");
    REQUIRE(ops != NULL);
    unsigned long long seed = 99;
    mb_backend *b = NULL;

    /* A node that cannot exist. */
    mb_backend_cpu_options one = {.n_threads = 1};
    mb_backend_config bad = {.device = 4000, .options = &one};
    CHECK_EQ(mb_backend_open(ops, &bad, &b), MB_STATUS_DEVICE);
    mb_backend_cpu_options negative = {.n_threads = -3};
    mb_backend_config bad2 = {.device = -1, .options = &negative};
    CHECK_EQ(mb_backend_open(ops, &bad2, &b), MB_STATUS_CONFIG);
    mb_backend_cpu_options bad_numa = {.n_threads = 1, .numa = (mb_numa_policy)7};
    mb_backend_config bad3 = {.device = -1, .options = &bad_numa};
    CHECK_EQ(mb_backend_open(ops, &bad3, &b), MB_STATUS_CONFIG);

    mb_backend_cpu_options two = {.n_threads = 2, .numa = MB_NUMA_DEFAULT};
    mb_backend_config cfg = {.device = -1, .max_slots = 0, .options = &two};
    REQUIRE(mb_backend_open(ops, &cfg, &b) == MB_STATUS_OK);
    mb_backend_caps caps;
    CHECK_EQ(mb_backend_caps_get(b, &caps), MB_STATUS_OK);
    CHECK(strcmp(caps.name, "cpu") == 0);
    CHECK(caps.device[0] != '\0');
    CHECK_EQ(caps.max_slots, 4096);
    CHECK_EQ(caps.n_threads, 2);
    CHECK_EQ(caps.payload_dtype_mask, MB_DTYPE_MASK_ALL);
    CHECK_EQ(caps.weight_dtype_mask, MB_DTYPE_MASK_WEIGHTS); /* quantized experts too */
    CHECK(caps.preferred_batch > 0);
    CHECK(caps.mem_total_bytes > 0 && caps.mem_free_bytes <= caps.mem_total_bytes);
    printf("device: %s, mem %llu MiB\n", caps.device,
           (unsigned long long)(caps.mem_total_bytes >> 20));

    ct_expert e1, e2, e_other;
    ct_expert_init(&e1, MB_DTYPE_BF16, 64, 40, &seed);
    ct_expert_init(&e2, MB_DTYPE_BF16, 64, 40, &seed);
    ct_expert_init(&e_other, MB_DTYPE_BF16, 64, 48, &seed);
    CHECK_EQ(ct_load(b, &e1, 5, 0), MB_STATUS_OK);
    CHECK_EQ(ct_load(b, &e2, 5, 1), MB_STATUS_OK);
    CHECK_EQ(ct_load(b, &e1, 6, 2), MB_STATUS_OK);
    /* Same layer, different d_ff: refused; another layer: fine. */
    CHECK_EQ(ct_load(b, &e_other, 5, 3), MB_STATUS_BAD_SHAPE);
    CHECK_EQ(ct_load(b, &e_other, 7, 3), MB_STATUS_OK);
    CHECK_EQ(ct_load(b, &e1, 5, 4096), MB_STATUS_SLOT_RANGE);
    mb_expert_weights bad_dt = {5, 0, 9, 64, 40, {MB_DTYPE_BF16, MB_DTYPE_BF16, MB_DTYPE_COUNT_},
                                e1.w[0], e1.w[1], e1.w[2]};
    CHECK_EQ(mb_backend_load_expert(b, &bad_dt), MB_STATUS_BAD_DTYPE);
    /* Element dtypes are one for all three matrices, and never beside a
     * quantized one. */
    bad_dt.wdtype[2] = MB_DTYPE_F16;
    CHECK_EQ(mb_backend_load_expert(b, &bad_dt), MB_STATUS_BAD_DTYPE);
    bad_dt.wdtype[2] = MB_DTYPE_Q8_0;
    CHECK_EQ(mb_backend_load_expert(b, &bad_dt), MB_STATUS_BAD_DTYPE);
    /* Quantized: d_model 64 is two Q8_0 blocks but d_ff 40 is not whole
     * blocks, which only down's rows need. */
    bad_dt.wdtype[0] = bad_dt.wdtype[1] = bad_dt.wdtype[2] = MB_DTYPE_Q8_0;
    CHECK_EQ(mb_backend_load_expert(b, &bad_dt), MB_STATUS_BAD_SHAPE);

    uint32_t ok_slots[2] = {0, 1};
    CHECK_EQ(run_slots(b, 5, 64, ok_slots, 2, NULL, &seed), MB_STATUS_OK);
    uint32_t unloaded[2] = {0, 17};
    CHECK_EQ(run_slots(b, 5, 64, unloaded, 2, NULL, &seed), MB_STATUS_NOT_LOADED);
    uint32_t other_layer[2] = {1, 2};
    CHECK_EQ(run_slots(b, 5, 64, other_layer, 2, NULL, &seed), MB_STATUS_NOT_LOADED);
    CHECK_EQ(run_slots(b, 5, 32, ok_slots, 2, NULL, &seed), MB_STATUS_BAD_SHAPE);
    uint32_t out_of_range[1] = {5000};
    CHECK_EQ(run_slots(b, 5, 64, out_of_range, 1, NULL, &seed), MB_STATUS_SLOT_RANGE);
    /* A failed run leaves no state behind: the next good one is right. */
    CHECK_EQ(run_slots(b, 5, 64, ok_slots, 2, NULL, &seed), MB_STATUS_OK);

    /* Inconsistent pair counts. */
    {
        ct_req r;
        ct_req_init(&r, 5, 2, 64, MB_DTYPE_F32, 2, &seed);
        r.counts[0] = 1;
        r.counts[1] = 2;
        r.pairs[0] = (mb_proto_pair){0, 1.0f};
        r.pairs[1] = (mb_proto_pair){1, 1.0f};
        void *out = ct_out_poisoned(&r.req);
        CHECK_EQ(mb_backend_run(b, &r.req, out, NULL), MB_STATUS_PAIR_COUNT);
        CHECK(out_untouched(out, 2 * 64 * sizeof(float)));
        /* No tokens at all. */
        r.req.n_tokens = 0;
        r.req.n_pairs = 0;
        CHECK_EQ(mb_backend_run(b, &r.req, out, NULL), MB_STATUS_OK);
        free(out);
        ct_req_fini(&r);
    }

    /* Reloading slot 0 with e2 makes it compute e2. */
    {
        ct_req r;
        ct_req_init(&r, 5, 1, 64, MB_DTYPE_F32, 1, &seed);
        r.counts[0] = 1;
        r.pairs[0] = (mb_proto_pair){0, 0.5f};
        double ref[64] = {0};
        ct_ref_add(&e2, r.act_ref, 0.5, ref);
        CHECK_EQ(ct_load(b, &e2, 5, 0), MB_STATUS_OK);
        void *out = ct_out_poisoned(&r.req);
        CHECK_EQ(mb_backend_run(b, &r.req, out, NULL), MB_STATUS_OK);
        CHECK(ct_norm_err(&r.req, out, ref) <= 1e-5);
        free(out);
        ct_req_fini(&r);
    }
    mb_backend_close(b);

    /* A fresh backend whose first request has tokens but no pairs: zeros. */
    {
        mb_backend *fb = NULL;
        REQUIRE(mb_backend_open(ops, &cfg, &fb) == MB_STATUS_OK);
        ct_req r;
        ct_req_init(&r, 0, 2, 64, MB_DTYPE_BF16, 0, &seed);
        void *out = ct_out_poisoned(&r.req);
        CHECK_EQ(mb_backend_run(fb, &r.req, out, NULL), MB_STATUS_OK);
        const uint16_t *o = out;
        int nonzero = 0;
        for (int i = 0; i < 2 * 64; i++)
            nonzero += o[i] != 0;
        CHECK_EQ(nonzero, 0);
        free(out);
        ct_req_fini(&r);
        mb_backend_close(fb);
    }

    /* f32 activations and output at misaligned addresses take the decode /
     * encode paths and give the same bits as aligned buffers. */
    {
        mb_backend *ab = NULL;
        REQUIRE(mb_backend_open(ops, &cfg, &ab) == MB_STATUS_OK);
        CHECK_EQ(ct_load(ab, &e1, 0, 0), MB_STATUS_OK);
        CHECK_EQ(ct_load(ab, &e2, 0, 1), MB_STATUS_OK);
        ct_req r;
        ct_req_init(&r, 0, 3, 64, MB_DTYPE_F32, 4, &seed);
        r.counts[0] = 2, r.counts[1] = 0, r.counts[2] = 2;
        r.pairs[0] = (mb_proto_pair){0, 0.5f};
        r.pairs[1] = (mb_proto_pair){1, 0.25f};
        r.pairs[2] = (mb_proto_pair){1, 1.0f};
        r.pairs[3] = (mb_proto_pair){0, 0.75f};
        size_t bytes = 3 * 64 * sizeof(float);
        void *out = ct_out_poisoned(&r.req);
        CHECK_EQ(mb_backend_run(ab, &r.req, out, NULL), MB_STATUS_OK);
        unsigned char *act_mis = malloc(bytes + 2), *out_mis = malloc(bytes + 2);
        REQUIRE(act_mis && out_mis);
        memcpy(act_mis + 1, r.act, bytes);
        memset(out_mis, 0xff, bytes + 2);
        mb_proto_expert_req mis = r.req;
        mis.act = act_mis + 1;
        CHECK_EQ(mb_backend_run(ab, &mis, out_mis + 1, NULL), MB_STATUS_OK);
        CHECK(memcmp(out, out_mis + 1, bytes) == 0);
        CHECK(out_mis[0] == 0xff && out_mis[bytes + 1] == 0xff);
        free(act_mis);
        free(out_mis);
        free(out);
        ct_req_fini(&r);
        mb_backend_close(ab);
    }

    /* Placements: BIND and INTERLEAVE on node 0 give the DEFAULT result. */
    const mb_numa_policy pols[3] = {MB_NUMA_DEFAULT, MB_NUMA_BIND, MB_NUMA_INTERLEAVE};
    ct_req r;
    ct_req_init(&r, 1, 3, 64, MB_DTYPE_BF16, 3, &seed);
    for (int t = 0; t < 3; t++) {
        r.counts[t] = 1;
        r.pairs[t] = (mb_proto_pair){(uint32_t)t % 2, 0.25f * (float)(t + 1)};
    }
    void *first = NULL;
    for (int i = 0; i < 3; i++) {
        mb_backend_cpu_options po = {.n_threads = 2, .numa = pols[i]};
        mb_backend_config pc = {.device = i == 0 ? -1 : 0, .max_slots = 8, .options = &po};
        mb_backend *pb = NULL;
        REQUIRE(mb_backend_open(ops, &pc, &pb) == MB_STATUS_OK);
        CHECK_EQ(ct_load(pb, &e1, 1, 0), MB_STATUS_OK);
        CHECK_EQ(ct_load(pb, &e2, 1, 1), MB_STATUS_OK);
        void *out = ct_out_poisoned(&r.req);
        CHECK_EQ(mb_backend_run(pb, &r.req, out, NULL), MB_STATUS_OK);
        if (!first)
            first = out;
        else {
            CHECK(memcmp(first, out, 3 * 64 * 2) == 0);
            free(out);
        }
        mb_backend_close(pb);
    }
    free(first);
    ct_req_fini(&r);
    ct_expert_fini(&e1);
    ct_expert_fini(&e2);
    ct_expert_fini(&e_other);
    return mb_test_finish("test_cpu_backend_errors");
}
