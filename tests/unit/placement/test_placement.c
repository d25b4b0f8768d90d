/* Placement: every expert of every layer placed exactly once, slots dense
 * per link, shares following the weights, the in-process link taking its
 * quota, memory and slot caps respected, and a clear error when the experts
 * do not fit. Links are described by hand (no processes). */
#include <string.h>

#include "broker/placement.h"
#include "tests/testutil.h"

static void make_cfg(mb_model_config *c, uint32_t layers, uint32_t experts)
{
    memset(c, 0, sizeof *c);
    c->n_layers = layers;
    c->n_experts = experts;
    c->d_model = 64;
    c->d_ff_expert = 32;
    c->top_k = 2;
    c->dtype = MB_DTYPE_BF16;
}

static void make_link(mb_link *l, double weight, uint64_t mem, uint32_t slots, mb_link_kind kind)
{
    memset(l, 0, sizeof *l);
    l->weight = weight;
    l->kind = kind;
    l->caps.mem_free_bytes = mem;
    l->caps.max_slots = slots;
    snprintf(l->name, sizeof l->name, "link");
}

/* Every (layer, expert) has a link in range and slots are a permutation of
 * 0..slots_used-1 on each link. */
static void check_exact(const mb_placement *p)
{
    uint32_t total = 0;
    for (uint32_t i = 0; i < p->n_links; i++) {
        uint32_t n = p->slots_used[i];
        unsigned char *seen = calloc(n ? n : 1, 1);
        for (uint32_t l = 0; l < p->n_layers; l++)
            for (uint32_t e = 0; e < p->n_experts; e++) {
                const mb_place *pl = mb_placement_at(p, l, e);
                CHECK(pl->link < p->n_links);
                if (pl->link != i) continue;
                CHECK(pl->slot < n);
                if (pl->slot < n) {
                    CHECK(!seen[pl->slot]);
                    seen[pl->slot] = 1;
                }
            }
        for (uint32_t s = 0; s < n; s++) CHECK(seen[s]);
        free(seen);
        total += n;
    }
    CHECK_EQ(total, p->n_layers * p->n_experts);
}

int main(void)
{
    mb_model_config cfg;
    char err[256];
    mb_placement p;
    mb_link links[3];
    const uint64_t big = 1ull << 40;

    /* Equal weights: an even split per layer, interleaved. */
    make_cfg(&cfg, 3, 8);
    make_link(&links[0], 1, big, 4096, MB_LINK_SPAWNED_SHM);
    make_link(&links[1], 1, big, 4096, MB_LINK_SPAWNED_SHM);
    REQUIRE(mb_placement_plan(&cfg, links, 2, -1, 0, 0, &p, err, sizeof err) == MB_STATUS_OK);
    check_exact(&p);
    CHECK_EQ(p.slots_used[0], 12);
    CHECK_EQ(p.slots_used[1], 12);
    CHECK(mb_placement_at(&p, 0, 0)->link != mb_placement_at(&p, 0, 1)->link);
    CHECK_EQ(p.bytes_placed[0], 12 * mb_expert_bytes(&cfg));
    mb_placement_free(&p);

    /* Weights 3:1 over 128 experts. */
    make_cfg(&cfg, 2, 128);
    make_link(&links[0], 3, big, 4096, MB_LINK_SPAWNED_SHM);
    make_link(&links[1], 1, big, 4096, MB_LINK_REMOTE);
    REQUIRE(mb_placement_plan(&cfg, links, 2, -1, 0, 0, &p, err, sizeof err) == MB_STATUS_OK);
    check_exact(&p);
    CHECK_EQ(p.slots_used[0], 2 * 96);
    CHECK_EQ(p.slots_used[1], 2 * 32);
    mb_placement_free(&p);

    /* An in-process link takes exactly its quota per layer. */
    make_cfg(&cfg, 4, 16);
    make_link(&links[0], 1, big, 4096, MB_LINK_SPAWNED_SHM);
    make_link(&links[1], 1, big, 4096, MB_LINK_SPAWNED_SHM);
    make_link(&links[2], 1, big, 4096, MB_LINK_INPROC);
    REQUIRE(mb_placement_plan(&cfg, links, 3, 2, 4, 0, &p, err, sizeof err) == MB_STATUS_OK);
    check_exact(&p);
    for (uint32_t l = 0; l < 4; l++) {
        uint32_t local = 0;
        for (uint32_t e = 0; e < 16; e++) local += mb_placement_at(&p, l, e)->link == 2;
        CHECK_EQ(local, 4);
    }
    mb_placement_free(&p);
    /* ... limited by its byte budget: room for 2 experts per layer. */
    REQUIRE(mb_placement_plan(&cfg, links, 3, 2, 4, 2 * 4 * mb_expert_bytes(&cfg), &p, err, sizeof err) ==
            MB_STATUS_OK);
    check_exact(&p);
    CHECK_EQ(p.slots_used[2], 8);
    mb_placement_free(&p);

    /* Memory caps move experts to the link with room. */
    make_cfg(&cfg, 2, 8);
    make_link(&links[0], 1, 3 * mb_expert_bytes(&cfg), 4096, MB_LINK_SPAWNED_SHM);
    make_link(&links[1], 1, big, 4096, MB_LINK_SPAWNED_SHM);
    REQUIRE(mb_placement_plan(&cfg, links, 2, -1, 0, 0, &p, err, sizeof err) == MB_STATUS_OK);
    check_exact(&p);
    CHECK_EQ(p.slots_used[0], 3);
    CHECK_EQ(p.slots_used[1], 13);
    mb_placement_free(&p);

    /* Slot caps too; and when nothing has room, a clear error. */
    make_link(&links[0], 1, big, 5, MB_LINK_SPAWNED_SHM);
    make_link(&links[1], 1, big, 5, MB_LINK_SPAWNED_SHM);
    err[0] = '\0';
    CHECK_EQ(mb_placement_plan(&cfg, links, 2, -1, 0, 0, &p, err, sizeof err), MB_STATUS_CONFIG);
    CHECK(strstr(err, "fits on no backend") != NULL);

    /* Only an in-process link with too small a quota: refused. */
    make_link(&links[0], 1, big, 4096, MB_LINK_INPROC);
    CHECK_EQ(mb_placement_plan(&cfg, links, 1, 0, 4, 0, &p, err, sizeof err), MB_STATUS_CONFIG);
    /* ... with every expert local: fine. */
    REQUIRE(mb_placement_plan(&cfg, links, 1, 0, 8, 0, &p, err, sizeof err) == MB_STATUS_OK);
    check_exact(&p);
    mb_placement_free(&p);
    /* Capabilities: every link must hold the checkpoint's weight dtype and
     * take the payload dtype; the refusal names the link and the dtype. */
    for (int i = 0; i < 3; i++) {
        make_link(&links[i], 1, big, 4096, MB_LINK_SPAWNED_SHM);
        snprintf(links[i].name, sizeof links[i].name, "w%d gpu", i);
        snprintf(links[i].caps.backend, sizeof links[i].caps.backend, "cuda");
        links[i].caps.weight_dtype_mask = MB_DTYPE_MASK_ALL;
        links[i].caps.payload_dtype_mask = MB_DTYPE_MASK_ALL;
    }
    CHECK_EQ(mb_placement_check_caps(links, 3, MB_DTYPE_MASK(MB_DTYPE_BF16), MB_DTYPE_F16, err, sizeof err), MB_STATUS_OK);
    links[1].caps.weight_dtype_mask = MB_DTYPE_MASK(MB_DTYPE_F16) | MB_DTYPE_MASK(MB_DTYPE_F32);
    err[0] = '\0';
    CHECK_EQ(mb_placement_check_caps(links, 3, MB_DTYPE_MASK(MB_DTYPE_BF16), MB_DTYPE_F16, err, sizeof err), MB_STATUS_BAD_DTYPE);
    CHECK_MSG(strstr(err, "w1 gpu") && strstr(err, "bf16") && strstr(err, "weights"), "%s", err);
    CHECK_EQ(mb_placement_check_caps(links, 3, MB_DTYPE_MASK(MB_DTYPE_F16), MB_DTYPE_F16, err, sizeof err), MB_STATUS_OK);
    links[2].caps.payload_dtype_mask = MB_DTYPE_MASK(MB_DTYPE_F32);
    err[0] = '\0';
    CHECK_EQ(mb_placement_check_caps(links, 3, MB_DTYPE_MASK(MB_DTYPE_F16), MB_DTYPE_BF16, err, sizeof err), MB_STATUS_BAD_DTYPE);
    CHECK_MSG(strstr(err, "w2 gpu") && strstr(err, "bf16") && strstr(err, "payload"), "%s", err);
    /* A checkpoint without a weight dtype checks the payload alone. */
    CHECK_EQ(mb_placement_check_caps(links, 2, 0, MB_DTYPE_F32, err, sizeof err), MB_STATUS_OK);
    /* A Q4_K_M checkpoint (Q4_K and Q6_K experts) on a backend that takes
     * element dtypes only: refused, naming each type it lacks. */
    const uint32_t q4km = MB_DTYPE_MASK(MB_DTYPE_Q4_K) | MB_DTYPE_MASK(MB_DTYPE_Q6_K);
    err[0] = '\0';
    CHECK_EQ(mb_placement_check_caps(links, 1, q4km, MB_DTYPE_F32, err, sizeof err), MB_STATUS_BAD_DTYPE);
    CHECK_MSG(strstr(err, "w0 gpu") && strstr(err, "q4_k, q6_k weights") && strstr(err, "takes f32, f16, bf16"),
              "%s", err);
    links[0].caps.weight_dtype_mask |= MB_DTYPE_MASK(MB_DTYPE_Q4_K);
    CHECK_EQ(mb_placement_check_caps(links, 1, q4km, MB_DTYPE_F32, err, sizeof err), MB_STATUS_BAD_DTYPE);
    CHECK_MSG(strstr(err, "no q6_k weights"), "%s", err);
    links[0].caps.weight_dtype_mask |= MB_DTYPE_MASK(MB_DTYPE_Q6_K);
    CHECK_EQ(mb_placement_check_caps(links, 1, q4km, MB_DTYPE_F32, err, sizeof err), MB_STATUS_OK);

    return mb_test_finish("test_placement");
}
