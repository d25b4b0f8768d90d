/* Placement: every expert of every layer placed exactly once, slots dense
 * per link, shares following the weights, the in-process link taking its
 * quota, memory and slot caps respected, and a clear error when the experts
 * do not fit. Replicas: whole copies of a worker's experts where memory
 * allows, every worker's first copy before anyone's second, the hottest
 * workers' experts first when hotness is given, and the reason for each
 * missing copy. Links are described by hand (no processes). */
#include <stdlib.h>
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

/* Routed pairs per (layer, expert): 1000 for the experts placement p puts
 * on link hot_link, 1 for the others. */
static uint64_t *heat_for(const mb_placement *p, uint32_t hot_link)
{
    uint64_t *h = calloc((size_t)p->n_layers * p->n_experts, sizeof *h);
    for (size_t i = 0; h && i < (size_t)p->n_layers * p->n_experts; i++) h[i] = p->table[i].link == hot_link ? 1000 : 1;
    return h;
}

/* The copies of group g are whole and take fresh slots on their links. */
static void check_copies(const mb_placement *p, const mb_link *links, uint64_t eb)
{
    for (uint32_t g = 0; g < p->n_links; g++)
        for (uint32_t k = 0; k < p->n_copies[g]; k++) {
            const mb_replica *r = &p->copies[(size_t)g * p->max_copies + k];
            CHECK(r->link != g && r->link < p->n_links);
            for (uint32_t s = 0; s < p->primary_slots[g]; s++)
                CHECK(r->slot[s] >= p->primary_slots[r->link] && r->slot[s] < p->slots_used[r->link]);
        }
    for (uint32_t i = 0; i < p->n_links; i++) {
        CHECK_EQ(p->bytes_placed[i], (uint64_t)p->slots_used[i] * eb);
        CHECK(p->bytes_placed[i] <= links[i].caps.mem_free_bytes);
    }
}

/* Replicas when memory holds only some: three workers, w0 and w1 with
 * room for their own experts alone, w2 for its own and one other group. */
static void test_replicas(void)
{
    mb_model_config cfg;
    mb_link links[4];
    char err[256], line[512];
    mb_placement p;
    make_cfg(&cfg, 2, 7);
    const uint64_t eb = mb_expert_bytes(&cfg);
    /* Weights 2:1:1 (exact in binary): 2 x (3, 2, 2) experts. */
    for (int i = 0; i < 3; i++) {
        make_link(&links[i], i ? 1 : 2, 1ull << 40, 4096, MB_LINK_SPAWNED_SHM);
        snprintf(links[i].name, sizeof links[i].name, "w%d", i);
    }
    REQUIRE(mb_placement_plan(&cfg, links, 3, -1, 0, 0, &p, err, sizeof err) == MB_STATUS_OK);
    uint32_t own[3] = {p.slots_used[0], p.slots_used[1], p.slots_used[2]};
    uint64_t *hot1 = heat_for(&p, 1);
    mb_placement_free(&p);
    REQUIRE(hot1 != NULL);
    CHECK(own[0] == 6 && own[1] == 4 && own[2] == 4);
    links[0].caps.mem_free_bytes = own[0] * eb;
    links[1].caps.mem_free_bytes = own[1] * eb + eb / 2;
    links[2].caps.mem_free_bytes = (own[2] + own[0]) * eb;

    /* No hotness: worker order; group 0 takes w2's room. */
    REQUIRE(mb_placement_plan(&cfg, links, 3, -1, 0, 0, &p, err, sizeof err) == MB_STATUS_OK);
    REQUIRE(mb_placement_add_replicas(&p, &cfg, links, -1, 2, NULL) == MB_STATUS_OK);
    for (uint32_t i = 0; i < 3; i++) CHECK_EQ(p.primary_slots[i], own[i]);
    CHECK(!p.heat_known);
    CHECK_EQ(p.n_copies[0], 1);
    CHECK_EQ(p.copies[0].link, 2);
    CHECK_EQ(p.n_copies[1], 0);
    CHECK_EQ(p.n_copies[2], 0);
    CHECK_EQ(p.short_why[1], MB_REPLICA_SHORT_MEMORY);
    CHECK_EQ(p.short_why[2], MB_REPLICA_SHORT_MEMORY);
    CHECK(p.rank[0] == 0 && p.rank[1] == 1 && p.rank[2] == 2);
    check_copies(&p, links, eb);
    mb_placement_describe_replicas(&p, links, 0, line, sizeof line);
    CHECK_MSG(strstr(line, "w0's") && strstr(line, "copy on w2"), "%s", line);
    mb_placement_describe_replicas(&p, links, 1, line, sizeof line);
    CHECK_MSG(strstr(line, "no copy") && strstr(line, "memory"), "%s", line);
    mb_placement_free(&p);

    /* Group 1 hot: it is served first and takes w2's room instead. */
    REQUIRE(mb_placement_plan(&cfg, links, 3, -1, 0, 0, &p, err, sizeof err) == MB_STATUS_OK);
    REQUIRE(mb_placement_add_replicas(&p, &cfg, links, -1, 2, hot1) == MB_STATUS_OK);
    CHECK(p.heat_known);
    CHECK_EQ(p.heat[1], 1000ull * own[1]);
    CHECK_EQ(p.heat[0], (uint64_t)own[0]);
    CHECK_EQ(p.heat_total, 1000ull * own[1] + own[0] + own[2]);
    CHECK(p.rank[1] == 0 && p.rank[0] == 1 && p.rank[2] == 2); /* 4000, then 6 and 4 */
    CHECK_EQ(p.n_copies[1], 1);
    CHECK_EQ(p.copies[(size_t)1 * p.max_copies].link, 2);
    CHECK_EQ(p.n_copies[0], 0);
    CHECK_EQ(p.short_why[0], MB_REPLICA_SHORT_MEMORY);
    check_copies(&p, links, eb);
    mb_placement_describe_replicas(&p, links, 1, line, sizeof line);
    CHECK_MSG(strstr(line, "w1's") && strstr(line, "% of the --hotness pairs") && strstr(line, "copy on w2"), "%s",
              line);
    mb_placement_free(&p);
    free(hot1);

    /* Rounds: with room for one other group each and 3 homes wanted,
     * every group gets its first copy (one after the other would leave
     * the last group none), and all three say memory kept the second. */
    for (int i = 0; i < 3; i++) links[i].caps.mem_free_bytes = (own[i] + own[0]) * eb;
    REQUIRE(mb_placement_plan(&cfg, links, 3, -1, 0, 0, &p, err, sizeof err) == MB_STATUS_OK);
    REQUIRE(mb_placement_add_replicas(&p, &cfg, links, -1, 3, NULL) == MB_STATUS_OK);
    for (uint32_t g = 0; g < 3; g++) {
        CHECK_EQ(p.n_copies[g], 1);
        CHECK_EQ(p.short_why[g], MB_REPLICA_SHORT_MEMORY);
        CHECK_EQ(p.copies[(size_t)g * p.max_copies].link, (g + 1) % 3);
    }
    check_copies(&p, links, eb);
    mb_placement_describe_replicas(&p, links, 2, line, sizeof line);
    CHECK_MSG(strstr(line, "copy on w0 (1 of 2 wanted)"), "%s", line);
    mb_placement_free(&p);

    /* Plenty of memory, 3 homes over 3 workers: every group on every
     * worker; 4 homes: one short for want of workers. The in-process link
     * neither gets nor gives copies. */
    for (int i = 0; i < 3; i++) links[i].caps.mem_free_bytes = 1ull << 40;
    make_link(&links[3], 1, 1ull << 40, 4096, MB_LINK_INPROC);
    snprintf(links[3].name, sizeof links[3].name, "local");
    REQUIRE(mb_placement_plan(&cfg, links, 4, 3, 2, 0, &p, err, sizeof err) == MB_STATUS_OK);
    REQUIRE(mb_placement_add_replicas(&p, &cfg, links, 3, 4, NULL) == MB_STATUS_OK);
    for (uint32_t g = 0; g < 3; g++) {
        CHECK_EQ(p.n_copies[g], 2);
        CHECK_EQ(p.short_why[g], MB_REPLICA_SHORT_WORKERS);
        for (uint32_t k = 0; k < 2; k++) CHECK(p.copies[(size_t)g * p.max_copies + k].link != 3);
    }
    CHECK_EQ(p.n_copies[3], 0);
    CHECK_EQ(p.rank[3], UINT32_MAX);
    CHECK_EQ(p.slots_used[3], p.primary_slots[3]);
    check_copies(&p, links, eb);
    mb_placement_describe_replicas(&p, links, 3, line, sizeof line);
    CHECK_MSG(strstr(line, "in-process"), "%s", line);
    mb_placement_free(&p);

    /* --replicas 1: nothing copied, nothing to explain. */
    REQUIRE(mb_placement_plan(&cfg, links, 3, -1, 0, 0, &p, err, sizeof err) == MB_STATUS_OK);
    REQUIRE(mb_placement_add_replicas(&p, &cfg, links, -1, 1, NULL) == MB_STATUS_OK);
    for (uint32_t g = 0; g < 3; g++) CHECK(p.n_copies[g] == 0 && p.short_why[g] == MB_REPLICA_SHORT_NONE);
    CHECK_EQ(mb_placement_add_replicas(&p, &cfg, links, -1, 2, NULL), MB_STATUS_INVALID_ARG); /* twice */
    mb_placement_free(&p);
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

    test_replicas();
    return mb_test_finish("test_placement");
}
