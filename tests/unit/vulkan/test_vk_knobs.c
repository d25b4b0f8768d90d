/* The Vulkan backend's prefill-GEMM knobs at open, on any device (CI runs
 * it on lavapipe): MB_VULKAN_CM2_TILE takes BMxBNxBK from the listed sizes
 * and leaves the default tile (64x128x32) for anything else;
 * MB_VULKAN_COOPMAT=2 and MB_VULKAN_CM2_BF16=1 are refused with DEVICE
 * where the build or device cannot run what they ask for (a clear error,
 * never a silent fallback), and where they are accepted the backend runs
 * what they asked for. Exits 77 without a Vulkan device. */
#include <stdlib.h>

#include "tests/unit/vulkan/vk_testutil.h"

/* Opens with the knobs' current values, checks the tile, closes. */
static void vk_tile(const mb_backend_ops *ops, const char *tile, uint32_t bm, uint32_t bn, uint32_t bk)
{
    if (tile)
        setenv("MB_VULKAN_CM2_TILE", tile, 1);
    else
        unsetenv("MB_VULKAN_CM2_TILE");
    mb_vk_backend *be = mb_vk_test_open(ops, 4, 1, NULL);
    CHECK_EQ(be->cm2_bm, bm);
    CHECK_EQ(be->cm2_bn, bn);
    CHECK_EQ(be->cm2_bk, bk);
    ops->close(be);
}

int main(void)
{
    const mb_backend_ops *ops = mb_vk_test_ops();
    unsetenv("MB_VULKAN_COOPMAT");
    unsetenv("MB_VULKAN_CM2_BF16");
    vk_tile(ops, NULL, 64, 128, 32);
    vk_tile(ops, "128x128x64", 128, 128, 64);
    vk_tile(ops, "64x256x128", 64, 256, 128);
    vk_tile(ops, "256x64x64", 256, 64, 64);
    vk_tile(ops, "96x128x32", 64, 128, 32); /* BM not 64, 128 or 256 */
    vk_tile(ops, "128x128", 64, 128, 32);   /* a size missing */
    vk_tile(ops, "tile", 64, 128, 32);
    unsetenv("MB_VULKAN_CM2_TILE");

    /* What the default (auto) picks on this device. */
    mb_vk_backend *be = mb_vk_test_open(ops, 4, 1, NULL);
    const int cm2 = be->ctx.has_coopmat == 2;
    ops->close(be);

    mb_status st = MB_STATUS_OK;
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
