/* For the Vulkan unit tests: one shader run on an open backend's device. */
#ifndef MB_TESTS_UNIT_VULKAN_VK_TESTUTIL_H
#define MB_TESTS_UNIT_VULKAN_VK_TESTUTIL_H

#include "backends/backend.h"
#include "backends/vulkan/vk_internal.h"
#include "tests/testutil.h"

/* The Vulkan backend's table; the test skips (77) where the build has none. */
static inline const mb_backend_ops *mb_vk_test_ops(void)
{
    const mb_backend_ops *ops = mb_backend_find("vulkan");
    if (!ops) MB_TEST_SKIP("this build has no vulkan backend");
    return ops;
}

/* Opens the first device with max_slots slots and staging_mib MiB of
 * staging; *st (optional) receives open's status, and any status other
 * than OK returns NULL; without st, no device skips (77) and any other
 * failure ends the test. */
static inline mb_vk_backend *mb_vk_test_open(const mb_backend_ops *ops, uint32_t max_slots, uint32_t staging_mib,
                                             mb_status *st)
{
    const mb_backend_gpu_options opt = {.staging_bytes = (size_t)staging_mib << 20, .max_inflight = 2, .progress = 0};
    const mb_backend_config cfg = {.device = -1, .max_slots = max_slots, .options = &opt};
    void *state = NULL;
    const mb_status s = ops->open(&cfg, &state);
    if (st) {
        *st = s;
        return s == MB_STATUS_OK ? state : NULL;
    }
    if (s == MB_STATUS_DEVICE) MB_TEST_SKIP("no Vulkan device");
    REQUIRE(s == MB_STATUS_OK);
    return state;
}

/* Runs shader (specialisation spec) over groups workgroups with push
 * constants pc of pc_bytes on be's device, then a barrier, and waits for
 * it. Any failing Vulkan call ends the test. */
static inline void mb_vk_test_dispatch(mb_vk_backend *be, const char *shader,
                                       const uint32_t spec[MB_VK_SPECS], const void *pc,
                                       uint32_t pc_bytes, uint32_t groups)
{
    mb_vk_ctx *ctx = &be->ctx;
    VkPipeline pl = VK_NULL_HANDLE;
    REQUIRE(mb_vk_pipeline_get(ctx, shader, spec, &pl) == MB_STATUS_OK);
    const VkCommandBufferAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                            .commandPool = be->pool,
                                            .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                            .commandBufferCount = 1};
    VkCommandBuffer cb = VK_NULL_HANDLE;
    REQUIRE(vkAllocateCommandBuffers(ctx->dev, &ai, &cb) == VK_SUCCESS);
    const VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                         .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    REQUIRE(vkBeginCommandBuffer(cb, &bi) == VK_SUCCESS);
    vkCmdBindPipeline(cb, VK_PIPELINE_BIND_POINT_COMPUTE, pl);
    vkCmdPushConstants(cb, ctx->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, pc_bytes, pc);
    vkCmdDispatch(cb, groups, 1, 1);
    mb_vk_barrier(cb);
    REQUIRE(vkEndCommandBuffer(cb) == VK_SUCCESS);
    const VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    VkFence fence = VK_NULL_HANDLE;
    REQUIRE(vkCreateFence(ctx->dev, &fci, NULL, &fence) == VK_SUCCESS);
    const VkSubmitInfo si = {
        .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &cb};
    REQUIRE(vkQueueSubmit(ctx->queue, 1, &si, fence) == VK_SUCCESS);
    REQUIRE(vkWaitForFences(ctx->dev, 1, &fence, VK_TRUE, UINT64_MAX) == VK_SUCCESS);
    vkDestroyFence(ctx->dev, fence, NULL);
    vkFreeCommandBuffers(ctx->dev, be->pool, 1, &cb);
}

#endif
