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
#include <string.h>

#include "tests/unit/vulkan/vk_testutil.h"

static void vk_env(const char *name, const char *value)
{
    if (value)
        setenv(name, value, 1);
    else
        unsetenv(name);
}

/* Opens with the knobs' current values, name=value (unset for NULL) and
 * MB_VULKAN_COOPMAT=coopmat ("0" for parsing only: no open compiles the
 * cm2 probes, seconds each on NVIDIA's driver); the open must succeed
 * (exit 77 without a device). The caller checks and closes. */
static mb_vk_backend *vk_open_with(const mb_backend_ops *ops, const char *name, const char *value,
                                   const char *coopmat)
{
    vk_env(name, value);
    vk_env("MB_VULKAN_COOPMAT", coopmat);
    mb_vk_backend *be = mb_vk_test_open(ops, 4, 1, NULL);
    unsetenv("MB_VULKAN_COOPMAT");
    return be;
}

/* Checks both tiles for MB_VULKAN_CM2_TILE=tile, MB_VULKAN_CM2_DOWN=down. */
static void vk_tiles(const mb_backend_ops *ops, const char *tile, const char *down, uint32_t bm, uint32_t bn,
                     uint32_t bk, uint32_t bn2, uint32_t bk2)
{
    vk_env("MB_VULKAN_CM2_TILE", tile);
    mb_vk_backend *be = vk_open_with(ops, "MB_VULKAN_CM2_DOWN", down, "0");
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

/* One knob's parsed value: the workgroup, or K/N as specialisations. */
static void vk_knob(const mb_backend_ops *ops, const char *name, const char *value, uint32_t want)
{
    mb_vk_backend *be = vk_open_with(ops, name, value, "0");
    CHECK_EQ(!strcmp(name, "MB_VULKAN_CM2_THREADS") ? be->cm2_threads : (uint32_t)be->cm2_kspec,
             want);
    ops->close(be);
    unsetenv(name);
}

/* Whether bf16 matrices are on with MB_VULKAN_CM2_BF16=bf16 (unset for
 * NULL) and MB_VULKAN_COOPMAT=coopmat: never refused unless required. */
static int vk_bf16_on(const mb_backend_ops *ops, const char *bf16, const char *coopmat)
{
    mb_vk_backend *be = vk_open_with(ops, "MB_VULKAN_CM2_BF16", bf16, coopmat);
    const int on = be->ctx.cm2_bf16, cm2 = be->ctx.has_coopmat == 2;
    ops->close(be);
    unsetenv("MB_VULKAN_CM2_BF16");
    CHECK(cm2 || !on);
    return on;
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
    vk_knob(ops, "MB_VULKAN_CM2_THREADS", NULL, 256);
    vk_knob(ops, "MB_VULKAN_CM2_THREADS", "512", 512);
    vk_knob(ops, "MB_VULKAN_CM2_THREADS", "128", 128);
    vk_knob(ops, "MB_VULKAN_CM2_THREADS", "384", 256);
    vk_knob(ops, "MB_VULKAN_CM2_THREADS", "many", 256);
    /* K and N as specialisations: on unless 0. */
    vk_knob(ops, "MB_VULKAN_CM2_KSPEC", NULL, 1);
    vk_knob(ops, "MB_VULKAN_CM2_KSPEC", "0", 0);
    vk_knob(ops, "MB_VULKAN_CM2_KSPEC", "1", 1);

    /* What the default (auto) picks on this device; bf16 matrices unless
     * asked for: only where cm2 runs, never with MB_VULKAN_COOPMAT=0 or
     * MB_VULKAN_CM2_BF16=0, and never a refusal. */
    mb_vk_backend *be = vk_open_with(ops, "MB_VULKAN_CM2_BF16", NULL, NULL);
    const int cm2 = be->ctx.has_coopmat == 2;
    CHECK(cm2 || !be->ctx.cm2_bf16);
    ops->close(be);
    CHECK_EQ(vk_bf16_on(ops, NULL, "0"), 0);
    CHECK_EQ(vk_bf16_on(ops, "0", NULL), 0);

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
