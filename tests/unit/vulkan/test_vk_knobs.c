/* The Vulkan backend's prefill-GEMM knobs at open, on any device (CI runs
 * it on lavapipe): MB_VULKAN_CM2_TILE takes BMxBNxBK from the listed sizes
 * and leaves the default tile (128x128x64) for anything else;
 * MB_VULKAN_CM2_DOWN takes BNxBK for the down product, 256x32 by
 * default; MB_VULKAN_CM2_KSPEC is on unless 0; MB_VULKAN_CM2_THREADS 128, 256 (default) or 512;
 * MB_VULKAN_COOPMAT=2 and MB_VULKAN_CM2_BF16=1 are refused with DEVICE
 * where the build or device cannot run what they ask for (a clear error,
 * never a silent fallback), and where they are accepted the backend runs
 * what they asked for; unset, bf16 matrices are taken where they run and
 * never refused. Exits 77 without a Vulkan device. */
#include <stdlib.h>

#include "tests/unit/vulkan/vk_testutil.h"

static void vk_env(const char *name, const char *value)
{
    if (value)
        setenv(name, value, 1);
    else
        unsetenv(name);
}

/* Opens with the knobs' current values, checks both tiles, closes. */
static void vk_tiles(const mb_backend_ops *ops, const char *tile, const char *down, uint32_t bm, uint32_t bn,
                     uint32_t bk, uint32_t bn2, uint32_t bk2)
{
    vk_env("MB_VULKAN_CM2_TILE", tile);
    vk_env("MB_VULKAN_CM2_DOWN", down);
    /* Parsing only: no cooperative matrices, so that no open compiles the
     * cm2 probes (seconds each on NVIDIA's driver). */
    setenv("MB_VULKAN_COOPMAT", "0", 1);
    mb_vk_backend *be = mb_vk_test_open(ops, 4, 1, NULL);
    unsetenv("MB_VULKAN_COOPMAT");
    CHECK_EQ(be->cm2_bm, bm);
    CHECK_EQ(be->cm2_bn, bn);
    CHECK_EQ(be->cm2_bk, bk);
    CHECK_EQ(be->cm2_bn2, bn2);
    CHECK_EQ(be->cm2_bk2, bk2);
    ops->close(be);
}

static void vk_tile(const mb_backend_ops *ops, const char *tile, uint32_t bm, uint32_t bn, uint32_t bk)
{
    vk_tiles(ops, tile, NULL, bm, bn, bk, 256, 32);
}

int main(void)
{
    const mb_backend_ops *ops = mb_vk_test_ops();
    unsetenv("MB_VULKAN_COOPMAT");
    unsetenv("MB_VULKAN_CM2_BF16");
    vk_tile(ops, NULL, 128, 128, 64);
    vk_tile(ops, "64x128x32", 64, 128, 32);
    vk_tile(ops, "64x256x128", 64, 256, 128);
    vk_tile(ops, "256x64x64", 256, 64, 64);
    vk_tile(ops, "96x128x32", 128, 128, 64); /* BM not 64, 128 or 256 */
    vk_tile(ops, "128x128", 128, 128, 64);   /* a size missing */
    vk_tile(ops, "tile", 128, 128, 64);
    vk_tiles(ops, NULL, "128x64", 128, 128, 64, 128, 64);
    vk_tiles(ops, "64x128x32", "64x128", 64, 128, 32, 64, 128);
    vk_tiles(ops, NULL, "96x32", 128, 128, 64, 256, 32); /* BN not 64, 128 or 256 */
    vk_tiles(ops, NULL, "256", 128, 128, 64, 256, 32);   /* BK missing */
    unsetenv("MB_VULKAN_CM2_TILE");
    unsetenv("MB_VULKAN_CM2_DOWN");
    /* The workgroup: 128, 256 (default) or 512 invocations. */
    static const struct {
        const char *v;
        uint32_t want;
    } thr[] = {{NULL, 256}, {"512", 512}, {"128", 128}, {"384", 256}, {"many", 256}};
    setenv("MB_VULKAN_COOPMAT", "0", 1);
    for (size_t i = 0; i < sizeof thr / sizeof thr[0]; i++) {
        vk_env("MB_VULKAN_CM2_THREADS", thr[i].v);
        mb_vk_backend *tb = mb_vk_test_open(ops, 4, 1, NULL);
        CHECK_EQ(tb->cm2_threads, thr[i].want);
        ops->close(tb);
    }
    unsetenv("MB_VULKAN_CM2_THREADS");
    /* K and N as specialisations: on unless 0. */
    static const struct {
        const char *v;
        int want;
    } ks[] = {{NULL, 1}, {"0", 0}, {"1", 1}};
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        vk_env("MB_VULKAN_CM2_KSPEC", ks[i].v);
        mb_vk_backend *tb = mb_vk_test_open(ops, 4, 1, NULL);
        CHECK_EQ(tb->cm2_kspec, ks[i].want);
        ops->close(tb);
    }
    unsetenv("MB_VULKAN_CM2_KSPEC");
    unsetenv("MB_VULKAN_COOPMAT");

    /* What the default (auto) picks on this device; bf16 matrices (unset)
     * only where cm2 runs, and never a refusal. */
    mb_status st = MB_STATUS_OK;
    mb_vk_backend *be = mb_vk_test_open(ops, 4, 1, &st);
    CHECK_EQ(st, MB_STATUS_OK);
    const int cm2 = be->ctx.has_coopmat == 2;
    if (!cm2) CHECK_EQ(be->ctx.cm2_bf16, 0);
    ops->close(be);
    setenv("MB_VULKAN_COOPMAT", "0", 1);
    be = mb_vk_test_open(ops, 4, 1, &st);
    CHECK_EQ(st, MB_STATUS_OK);
    CHECK_EQ(be->ctx.cm2_bf16, 0);
    ops->close(be);
    unsetenv("MB_VULKAN_COOPMAT");
    setenv("MB_VULKAN_CM2_BF16", "0", 1);
    be = mb_vk_test_open(ops, 4, 1, &st);
    CHECK_EQ(st, MB_STATUS_OK);
    CHECK_EQ(be->ctx.cm2_bf16, 0);
    ops->close(be);
    unsetenv("MB_VULKAN_CM2_BF16");

    setenv("MB_VULKAN_COOPMAT", "2", 1);
    be = mb_vk_test_open(ops, 4, 1, &st);
    CHECK_EQ(st, cm2 ? MB_STATUS_OK : MB_STATUS_DEVICE);
    if (be) {
        CHECK_EQ(be->ctx.has_coopmat, 2);
        ops->close(be);
    }
    /* bf16 matrices: refused where cm2 does not run (COOPMAT=0 here, and
     * the default on a device without it); where accepted, they are on. */
    setenv("MB_VULKAN_CM2_BF16", "1", 1);
    setenv("MB_VULKAN_COOPMAT", "0", 1);
    be = mb_vk_test_open(ops, 4, 1, &st);
    CHECK_EQ(st, MB_STATUS_DEVICE);
    CHECK(be == NULL);
    unsetenv("MB_VULKAN_COOPMAT");
    be = mb_vk_test_open(ops, 4, 1, &st);
    if (!cm2) CHECK_EQ(st, MB_STATUS_DEVICE);
    if (be) {
        CHECK_EQ(be->ctx.cm2_bf16, 1);
        ops->close(be);
    } else {
        CHECK_EQ(st, MB_STATUS_DEVICE);
    }
    unsetenv("MB_VULKAN_CM2_BF16");
    return mb_test_finish("test_vk_knobs");
}
