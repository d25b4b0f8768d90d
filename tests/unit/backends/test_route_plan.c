/* The routing plan: every class of load and request error (slot range,
 * shape, dtype, pair counts, not loaded, wrong layer, wrong d_model), the
 * table left as it was after an error, and the grouping: experts in
 * first-seen order, each expert's pairs with tokens ascending and their
 * gates, scratch reused without reallocation for smaller requests. */
#include <string.h>

#include "backends/route_plan.h"
#include "tests/testutil.h"

enum { SLOTS = 16, D_MODEL = 8, D_FF = 4 };

static mb_expert_weights weights(uint32_t layer, uint32_t slot, uint32_t d_model, uint32_t d_ff, mb_dtype wd)
{
    static const float dummy[4];
    return (mb_expert_weights){layer, 100 + slot, slot, d_model, d_ff, {wd, wd, wd}, dummy, dummy, dummy};
}

static mb_proto_expert_req request(uint32_t layer, uint32_t n_tokens, uint32_t d_model, const uint16_t *counts,
                                   const mb_proto_pair *pairs, uint32_t n_pairs)
{
    static const float act[64];
    return (mb_proto_expert_req){layer, n_tokens, d_model, MB_DTYPE_F32, n_pairs, counts, pairs, act};
}

/* slot_to_expert is all -1 outside a build. */
static int table_clean(const mb_route_table *t)
{
    for (uint32_t i = 0; i < t->max_slots; i++)
        if (t->slot_to_expert[i] != -1) return 0;
    return 1;
}

int main(void)
{
    mb_route_table t;
    REQUIRE(mb_route_table_init(&t, SLOTS) == MB_STATUS_OK);
    CHECK(table_clean(&t));

    /* Loads: range, zero shapes, dtype, and one shape per layer. */
    mb_expert_weights w = weights(0, SLOTS, D_MODEL, D_FF, MB_DTYPE_BF16);
    CHECK_EQ(mb_route_table_check_load(&t, &w), MB_STATUS_SLOT_RANGE);
    w = weights(0, 1, 0, D_FF, MB_DTYPE_BF16);
    CHECK_EQ(mb_route_table_check_load(&t, &w), MB_STATUS_BAD_SHAPE);
    w = weights(0, 1, D_MODEL, 0, MB_DTYPE_BF16);
    CHECK_EQ(mb_route_table_check_load(&t, &w), MB_STATUS_BAD_SHAPE);
    w = weights(0, 1, D_MODEL, D_FF, (mb_dtype)99);
    CHECK_EQ(mb_route_table_check_load(&t, &w), MB_STATUS_BAD_DTYPE);
    for (uint32_t s = 0; s < 4; s++) {
        w = weights(0, s, D_MODEL, D_FF, MB_DTYPE_BF16);
        CHECK_EQ(mb_route_table_check_load(&t, &w), MB_STATUS_OK);
        mb_route_table_set(&t, &w);
    }
    /* Layer 1 may differ from layer 0, but not within itself. */
    w = weights(1, 8, D_MODEL, 2 * D_FF, MB_DTYPE_F16);
    CHECK_EQ(mb_route_table_check_load(&t, &w), MB_STATUS_OK);
    mb_route_table_set(&t, &w);
    w = weights(1, 9, D_MODEL, D_FF, MB_DTYPE_F16);
    CHECK_EQ(mb_route_table_check_load(&t, &w), MB_STATUS_BAD_SHAPE);
    w = weights(1, 9, D_MODEL, 2 * D_FF, MB_DTYPE_BF16);
    CHECK_EQ(mb_route_table_check_load(&t, &w), MB_STATUS_BAD_SHAPE);
    w = weights(0, 12, D_MODEL + 1, D_FF, MB_DTYPE_BF16); /* found above slot 12 too */
    CHECK_EQ(mb_route_table_check_load(&t, &w), MB_STATUS_BAD_SHAPE);
    /* Reloading a slot with a new shape is judged against the others. */
    w = weights(1, 8, D_MODEL, 3 * D_FF, MB_DTYPE_F16);
    CHECK_EQ(mb_route_table_check_load(&t, &w), MB_STATUS_OK);
    /* Each matrix's dtype counts: a layer whose down is Q6_K beside Q4_K
     * gate/up (Q4_K_M) takes only experts typed the same way. */
    w = weights(2, 13, D_MODEL, D_FF, MB_DTYPE_Q4_K);
    w.wdtype[MB_PROTO_MAT_DOWN] = MB_DTYPE_Q6_K;
    CHECK_EQ(mb_route_table_check_load(&t, &w), MB_STATUS_OK);
    mb_route_table_set(&t, &w);
    w = weights(2, 14, D_MODEL, D_FF, MB_DTYPE_Q4_K);
    CHECK_EQ(mb_route_table_check_load(&t, &w), MB_STATUS_BAD_SHAPE);
    w.wdtype[MB_PROTO_MAT_DOWN] = MB_DTYPE_Q6_K;
    CHECK_EQ(mb_route_table_check_load(&t, &w), MB_STATUS_OK);
    w.wdtype[MB_PROTO_MAT_UP] = (mb_dtype)99;
    CHECK_EQ(mb_route_table_check_load(&t, &w), MB_STATUS_BAD_DTYPE);

    uint32_t d_ff = 77;
    mb_dtype wd[MB_PROTO_MATS] = {MB_DTYPE_COUNT_, MB_DTYPE_COUNT_, MB_DTYPE_COUNT_};
    /* Request errors, one class at a time. */
    uint16_t counts[4] = {1, 2, 0, 1};
    mb_proto_pair pairs[4] = {{2, 0.5f}, {0, 0.25f}, {2, 1.0f}, {1, 2.0f}};
    mb_proto_expert_req r = request(0, 4, D_MODEL, counts, pairs, 4);
    CHECK_EQ(mb_route_validate(&t, &r, &d_ff, wd), MB_STATUS_OK);
    CHECK_EQ(d_ff, D_FF);
    for (int i = 0; i < MB_PROTO_MATS; i++)
        CHECK_EQ(wd[i], MB_DTYPE_BF16);
    r = request(0, 4, D_MODEL, counts, pairs, 3);
    CHECK_EQ(mb_route_validate(&t, &r, NULL, NULL), MB_STATUS_PAIR_COUNT);
    r = request(0, 0, D_MODEL, counts, pairs, 4);
    CHECK_EQ(mb_route_validate(&t, &r, NULL, NULL), MB_STATUS_PAIR_COUNT);
    r = request(0, 4, 0, counts, pairs, 4);
    CHECK_EQ(mb_route_validate(&t, &r, NULL, NULL), MB_STATUS_BAD_SHAPE);
    mb_proto_pair bad[4];
    memcpy(bad, pairs, sizeof bad);
    bad[3].slot = SLOTS;
    r = request(0, 4, D_MODEL, counts, bad, 4);
    CHECK_EQ(mb_route_validate(&t, &r, NULL, NULL), MB_STATUS_SLOT_RANGE);
    bad[3].slot = 5; /* never loaded */
    CHECK_EQ(mb_route_validate(&t, &r, NULL, NULL), MB_STATUS_NOT_LOADED);
    bad[3].slot = 8; /* loaded, but layer 1 */
    CHECK_EQ(mb_route_validate(&t, &r, NULL, NULL), MB_STATUS_NOT_LOADED);
    r = request(0, 4, D_MODEL * 2, counts, pairs, 4);
    CHECK_EQ(mb_route_validate(&t, &r, NULL, NULL), MB_STATUS_BAD_SHAPE);
    /* No tokens and no pairs: nothing to do, the empty shape. */
    r = request(0, 0, D_MODEL, counts, pairs, 0);
    CHECK_EQ(mb_route_validate(&t, &r, &d_ff, wd), MB_STATUS_OK);
    CHECK_EQ(d_ff, 0);
    CHECK_EQ(wd[MB_PROTO_MAT_DOWN], MB_DTYPE_F32);

    /* Build errors leave the table as it was. */
    mb_route_plan p;
    mb_route_plan_init(&p);
    bad[3].slot = 5;
    r = request(0, 4, D_MODEL, counts, bad, 4);
    CHECK_EQ(mb_route_plan_build(&t, &r, &p), MB_STATUS_NOT_LOADED);
    CHECK(table_clean(&t));
    r = request(0, 4, D_MODEL, counts, pairs, 3);
    CHECK_EQ(mb_route_plan_build(&t, &r, &p), MB_STATUS_PAIR_COUNT);
    CHECK(table_clean(&t));

    /* Grouping: experts in first-seen order (2, 0, 1), tokens ascending. */
    r = request(0, 4, D_MODEL, counts, pairs, 4);
    REQUIRE(mb_route_plan_build(&t, &r, &p) == MB_STATUS_OK);
    CHECK(table_clean(&t));
    CHECK_EQ(p.n_experts, 3);
    CHECK_EQ(p.d_ff, D_FF);
    CHECK_EQ(p.wdtype[MB_PROTO_MAT_DOWN], MB_DTYPE_BF16);
    CHECK_EQ(p.expert_slot[0], 2);
    CHECK_EQ(p.expert_slot[1], 0);
    CHECK_EQ(p.expert_slot[2], 1);
    CHECK_EQ(p.expert_pair0[0], 0);
    CHECK_EQ(p.expert_pair0[1], 2);
    CHECK_EQ(p.expert_pair0[2], 3);
    CHECK_EQ(p.expert_pair0[3], 4);
    const uint32_t want_tok[4] = {0, 1, 1, 3};
    const float want_gate[4] = {0.5f, 1.0f, 0.25f, 2.0f};
    for (int i = 0; i < 4; i++) {
        CHECK_EQ(p.pair_token[i], want_tok[i]);
        CHECK(p.pair_gate[i] == want_gate[i]);
    }

    /* A larger request: many tokens on few experts stays stable; then a
     * smaller one reuses the scratch. */
    enum { N = 300 };
    uint16_t c2[N];
    mb_proto_pair p2[2 * N];
    for (uint32_t i = 0; i < N; i++) {
        c2[i] = 2;
        p2[2 * i] = (mb_proto_pair){(i * 7) % 4, (float)i};
        p2[2 * i + 1] = (mb_proto_pair){(i * 7 + 1) % 4, -(float)i};
    }
    static const float act_big[N * D_MODEL];
    mb_proto_expert_req big = {0, N, D_MODEL, MB_DTYPE_F32, 2 * N, c2, p2, act_big};
    REQUIRE(mb_route_plan_build(&t, &big, &p) == MB_STATUS_OK);
    CHECK_EQ(p.n_experts, 4);
    CHECK_EQ(p.expert_pair0[4], 2 * N);
    for (size_t e = 0; e < p.n_experts; e++)
        for (size_t i = p.expert_pair0[e]; i < p.expert_pair0[e + 1]; i++) {
            uint32_t tok = p.pair_token[i];
            CHECK(tok < N);
            if (i > p.expert_pair0[e]) CHECK(tok > p.pair_token[i - 1]);
            float g = p.pair_gate[i];
            CHECK(g == (float)tok || g == -(float)tok);
        }
    const size_t cap = p.cap;
    const uint32_t *keep = p.pair_token;
    r = request(0, 4, D_MODEL, counts, pairs, 4);
    REQUIRE(mb_route_plan_build(&t, &r, &p) == MB_STATUS_OK);
    CHECK_EQ(p.cap, cap);
    CHECK(p.pair_token == keep);
    CHECK_EQ(p.n_experts, 3);

    /* Cleared slots are no longer routable. */
    mb_route_table_clear(&t, 1);
    CHECK_EQ(mb_route_validate(&t, &r, NULL, NULL), MB_STATUS_NOT_LOADED);

    mb_route_plan_fini(&p);
    mb_route_table_fini(&t);
    return mb_test_finish("test_route_plan");
}
