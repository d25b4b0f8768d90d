/* The Vulkan backend's paths, asserted from its own counters (the test
 * drives the backend's function table directly to read its state): a
 * request whose activations lie in registered host memory is read in place
 * where VK_EXT_external_memory_host exists (the device copies from the
 * imported mapping, CONSUMED only after that copy) and its result is
 * copied by the device straight into registered memory; ranges outside
 * the registered part, a fetch into private memory, MB_VULKAN_HOST_IMPORT=0
 * and an unregistered range fall back to staging; every path gives the same
 * bytes as staging. Also the decode path's command count: two dispatches
 * and no copies for one token, the command buffer reused for the next
 * request of the same shape. Exits 77 without a Vulkan device or without
 * the extension. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "backends/backend.h"
#include "backends/vulkan/vk_internal.h"
#include "tests/testutil.h"
#include "tests/unit/vulkan/vk_testutil.h"

#define HI_D_MODEL 256u
#define HI_D_FF 128u
#define HI_EXPERTS 8u
#define HI_TOP_K 2u
#define HI_MAP_BYTES ((size_t)8 << 20)
#define HI_WAIT_NS 60000000000LL

static const mb_backend_ops *hi_ops;

/* Random weights for the layer's experts, in bf16, loaded into slots 0..7. */
static void hi_load(void *be)
{
    unsigned long long seed = 0x5eedull;
    const size_t n = (size_t)HI_D_MODEL * HI_D_FF;
    float *f = malloc(n * sizeof *f);
    uint16_t *w[3];
    REQUIRE(f);
    for (int m = 0; m < 3; m++) {
        w[m] = malloc(n * sizeof(uint16_t));
        REQUIRE(w[m]);
    }
    for (uint32_t e = 0; e < HI_EXPERTS; e++) {
        for (int m = 0; m < 3; m++) {
            for (size_t i = 0; i < n; i++)
                f[i] = mb_test_rand_f32(&seed) * 0.1f;
            mb_dtype_encode_f32(MB_DTYPE_BF16, w[m], f, n);
        }
        const mb_expert_weights ew = {0, e, e, HI_D_MODEL, HI_D_FF, {MB_DTYPE_BF16, MB_DTYPE_BF16, MB_DTYPE_BF16},
                                      w[0], w[1], w[2]};
        REQUIRE(hi_ops->load_expert(be, &ew) == MB_STATUS_OK);
    }
    REQUIRE(hi_ops->load_finish(be) == MB_STATUS_OK);
    free(f);
    for (int m = 0; m < 3; m++)
        free(w[m]);
}

/* A request of n_tokens bf16 tokens (top-2 of 8 experts) whose activations
 * are written at act. */
typedef struct {
    mb_proto_expert_req req;
    uint16_t counts[512];
    mb_proto_pair pairs[1024];
} hi_req;

static void hi_req_init(hi_req *r, uint32_t n_tokens, void *act, unsigned long long seed)
{
    REQUIRE(n_tokens <= 512);
    memset(r, 0, sizeof *r);
    const size_t n = (size_t)n_tokens * HI_D_MODEL;
    float *f = malloc(n * sizeof *f);
    REQUIRE(f);
    for (size_t i = 0; i < n; i++)
        f[i] = mb_test_rand_f32(&seed);
    mb_dtype_encode_f32(MB_DTYPE_BF16, act, f, n);
    free(f);
    uint32_t q = 0;
    for (uint32_t t = 0; t < n_tokens; t++) {
        r->counts[t] = HI_TOP_K;
        const uint32_t e0 = (uint32_t)(mb_test_rand_u64(&seed) % HI_EXPERTS);
        for (uint32_t k = 0; k < HI_TOP_K; k++, q++)
            r->pairs[q] = (mb_proto_pair){.slot = (e0 + 3 * k) % HI_EXPERTS, .gate = 0.25f + 0.5f * (float)k};
    }
    r->req = (mb_proto_expert_req){0, n_tokens, HI_D_MODEL, MB_DTYPE_BF16, q, r->counts, r->pairs, act};
}

/* Submits, polls to DONE (checking that CONSUMED comes first and then
 * poisoning the activations, which the device must not read again), and
 * fetches into out. */
static void hi_run(void *be, hi_req *r, void *out)
{
    REQUIRE(hi_ops->submit(be, 7, &r->req) == MB_STATUS_OK);
    int consumed = 0;
    for (;;) {
        mb_backend_event ev;
        REQUIRE(hi_ops->poll(be, HI_WAIT_NS, &ev) == MB_STATUS_OK);
        REQUIRE(ev.tag == 7);
        if (ev.kind == MB_BACKEND_EVENT_CONSUMED) {
            CHECK(!consumed);
            consumed = 1;
            memset((void *)r->req.act, 0xff, (size_t)r->req.n_tokens * HI_D_MODEL * 2);
            continue;
        }
        CHECK(consumed);
        CHECK_EQ(ev.status, MB_STATUS_OK);
        break;
    }
    CHECK_EQ(hi_ops->fetch(be, 7, out), MB_STATUS_OK);
}

/* The same request, activations from private memory: the reference bytes. */
static void hi_reference(void *be, uint32_t n_tokens, unsigned long long seed, void *ref)
{
    void *act = malloc((size_t)n_tokens * HI_D_MODEL * 2);
    REQUIRE(act);
    hi_req r;
    hi_req_init(&r, n_tokens, act, seed);
    hi_run(be, &r, ref);
    free(act);
}

static void *hi_open(const char *import_env)
{
    setenv("MB_VULKAN_HOST_IMPORT", import_env, 1);
    return mb_vk_test_open(hi_ops, 64, 64, NULL);
}

/* Imported in and out, for a decode-sized and a prefill-sized request,
 * against staging's bytes; then the fallbacks. */
static void hi_import_paths(mb_vk_backend *be, uint8_t *map)
{
    const size_t page = (size_t)be->ctx.host_import_align;
    /* Registered: page 1 up to 1 MiB past it, starting off the import
     * alignment so the backend rounds it inward. */
    uint8_t *reg = map + page + 24;
    const size_t reg_bytes = (size_t)1 << 20;
    REQUIRE(hi_ops->register_host(be, reg, reg_bytes) == MB_STATUS_OK);
    CHECK_EQ(hi_ops->register_host(be, reg, reg_bytes), MB_STATUS_INVALID_ARG);

    const uint32_t sizes[2] = {4, 300}; /* GEMV (fused), tiled */
    for (int i = 0; i < 2; i++) {
        const uint32_t nt = sizes[i];
        const size_t bytes = (size_t)nt * HI_D_MODEL * 2;
        uint8_t *ref = malloc(bytes), *priv = malloc(bytes);
        REQUIRE(ref && priv);
        hi_reference(be, nt, 100 + i, ref);

        hi_req r;
        uint8_t *act = map + 2 * page + 8, *out = map + 2 * page + 8 + bytes + 40;
        REQUIRE(out + bytes <= reg + reg_bytes);
        hi_req_init(&r, nt, act, 100 + i);
        mb_vk_stats s0 = be->stats;
        hi_run(be, &r, out);
        CHECK_EQ(be->stats.in_imported, s0.in_imported + 1);
        CHECK_EQ(be->stats.out_imported, s0.out_imported + 1);
        CHECK_MSG(memcmp(out, ref, bytes) == 0, "%u tokens: imported result differs from staging's", nt);

        /* Imported in, fetched into private memory: through readback. */
        hi_req_init(&r, nt, act, 100 + i);
        s0 = be->stats;
        hi_run(be, &r, priv);
        CHECK_EQ(be->stats.in_imported, s0.in_imported + 1);
        CHECK_EQ(be->stats.out_staged, s0.out_staged + 1);
        CHECK(memcmp(priv, ref, bytes) == 0);

        /* Activations crossing the registered range's end: staged. */
        uint8_t *late = reg + reg_bytes - bytes / 2;
        hi_req_init(&r, nt, late, 100 + i);
        s0 = be->stats;
        hi_run(be, &r, priv);
        CHECK_EQ(be->stats.in_imported, s0.in_imported);
        CHECK(memcmp(priv, ref, bytes) == 0);
        free(ref);
        free(priv);
    }

    /* Unregistered: the same range is staged again. */
    hi_ops->unregister_host(be, reg);
    hi_req r;
    uint8_t out[4 * HI_D_MODEL * 2];
    hi_req_init(&r, 4, map + 2 * page + 8, 5);
    const mb_vk_stats s0 = be->stats;
    hi_run(be, &r, out);
    CHECK_EQ(be->stats.in_imported, s0.in_imported);
}

/* The decode path: one token, two dispatches, no copy (inputs in
 * device-local host-mapped memory, results written to host memory by the
 * shader), and the command buffer reused for the next token. */
static void hi_decode_commands(mb_vk_backend *be)
{
    uint8_t act[HI_D_MODEL * 2], out[HI_D_MODEL * 2];
    hi_req r;
    hi_req_init(&r, 1, act, 9);
    hi_run(be, &r, out);
    hi_req_init(&r, 1, act, 10);
    const mb_vk_stats s0 = be->stats;
    hi_run(be, &r, out);
    printf("decode, 1 token: %u dispatches, %u copies, %u barriers, %u submits; %s\n", be->stats.last.dispatches,
           be->stats.last.copies, be->stats.last.barriers, be->stats.last.submits,
           be->stats.reused > s0.reused ? "command buffer reused" : "recorded again");
    CHECK_EQ(be->stats.last.dispatches, 2);
    CHECK(be->stats.last.barriers <= 3);
    CHECK_EQ(be->stats.reused, s0.reused + 1);
    if (be->stats.in_direct > s0.in_direct) CHECK_EQ(be->stats.last.copies, 0);
}

int main(void)
{
    hi_ops = mb_vk_test_ops();
    mb_vk_backend *be = hi_open("always");
    if (!be->ctx.has_host_import) {
        hi_ops->close(be);
        MB_TEST_SKIP("the Vulkan device has no VK_EXT_external_memory_host");
    }
    printf("device: %s, import alignment %llu\n", be->device_name, (unsigned long long)be->ctx.host_import_align);
    hi_load(be);
    uint8_t *map = mmap(NULL, HI_MAP_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(map != MAP_FAILED);
    hi_import_paths(be, map);
    hi_decode_commands(be);
    hi_ops->close(be);

    /* Import off: registration is declined and everything is staged. */
    be = hi_open("0");
    hi_load(be);
    CHECK_EQ(hi_ops->register_host(be, map, HI_MAP_BYTES), MB_STATUS_UNSUPPORTED);
    hi_req r;
    uint8_t out[4 * HI_D_MODEL * 2];
    hi_req_init(&r, 4, map + 4096, 5);
    hi_run(be, &r, out);
    CHECK_EQ(be->stats.in_imported, 0);
    CHECK_EQ(be->stats.out_imported, 0);
    hi_ops->close(be);
    munmap(map, HI_MAP_BYTES);
    return mb_test_finish("test_vk_host_import");
}
