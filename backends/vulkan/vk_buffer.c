/* The Vulkan backend's buffers: with memory of their own (device-local, or
 * host-visible for staging, chosen from the device's memory types) or
 * importing host memory the caller owns (VK_EXT_external_memory_host), with
 * the bytes they hold counted against the device's memory. */
#include <string.h>

#include "backends/vulkan/vk_internal.h"

/* A memory type allowed by bits with all of need, preferring want and
 * avoiding avoid; UINT32_MAX when none has need. */
static uint32_t mb_vk_mem_type(const mb_vk_ctx *ctx, uint32_t bits, VkMemoryPropertyFlags need,
                               VkMemoryPropertyFlags want, VkMemoryPropertyFlags avoid)
{
    uint32_t best = UINT32_MAX;
    int best_score = -1;
    for (uint32_t i = 0; i < ctx->mem_props.memoryTypeCount; i++) {
        const VkMemoryPropertyFlags fl = ctx->mem_props.memoryTypes[i].propertyFlags;
        if (!(bits & (1u << i)) || (fl & need) != need) continue;
        const int score = ((fl & want) == want ? 2 : 0) + ((fl & avoid) ? 0 : 1);
        if (score > best_score) {
            best = i;
            best_score = score;
        }
    }
    return best;
}

mb_status mb_vk_buffer_create(mb_vk_ctx *ctx, VkDeviceSize bytes, mb_vk_mem_kind kind,
                              VkBufferUsageFlags extra_usage, mb_vk_buffer *out)
{
    memset(out, 0, sizeof *out);
    if (ctx->lost) return MB_STATUS_DEVICE;
    const VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                                    .size = bytes,
                                    .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                             VK_BUFFER_USAGE_TRANSFER_DST_BIT |
                                             VK_BUFFER_USAGE_SHADER_DEVICE_ADDRESS_BIT | extra_usage,
                                    .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    VkResult r = vkCreateBuffer(ctx->dev, &bci, NULL, &out->buf);
    if (r != VK_SUCCESS) {
        out->buf = VK_NULL_HANDLE;
        return mb_vk_fail(ctx, "vkCreateBuffer", r);
    }
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(ctx->dev, out->buf, &req);
    const VkMemoryPropertyFlags host = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    uint32_t type;
    switch (kind) {
    case MB_VK_MEM_UPLOAD:
        /* Not device-local: that is the small BAR window on most GPUs. */
        type = mb_vk_mem_type(ctx, req.memoryTypeBits, host, 0, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
        break;
    case MB_VK_MEM_READBACK:
        type = mb_vk_mem_type(ctx, req.memoryTypeBits, host, VK_MEMORY_PROPERTY_HOST_CACHED_BIT,
                              VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
        break;
    case MB_VK_MEM_DIRECT:
        type = mb_vk_mem_type(ctx, req.memoryTypeBits, host | VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, 0, 0);
        if (type == UINT32_MAX) {
            mb_vk_buffer_destroy(ctx, out);
            return MB_STATUS_UNSUPPORTED;
        }
        break;
    default:
        type = mb_vk_mem_type(ctx, req.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, 0, 0);
        if (type == UINT32_MAX) type = mb_vk_mem_type(ctx, req.memoryTypeBits, 0, 0, 0);
        break;
    }
    if (type == UINT32_MAX) {
        fprintf(stderr, "vulkan backend: no memory type for a %s buffer\n", kind == MB_VK_MEM_DEVICE ? "device" : "host");
        mb_vk_buffer_destroy(ctx, out);
        return MB_STATUS_BACKEND;
    }
    const VkMemoryAllocateFlagsInfo flags = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_FLAGS_INFO,
                                             .flags = VK_MEMORY_ALLOCATE_DEVICE_ADDRESS_BIT};
    const VkMemoryAllocateInfo mai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                                      .pNext = &flags,
                                      .allocationSize = req.size,
                                      .memoryTypeIndex = type};
    r = vkAllocateMemory(ctx->dev, &mai, NULL, &out->mem);
    if (r != VK_SUCCESS) {
        out->mem = VK_NULL_HANDLE;
        mb_vk_buffer_destroy(ctx, out);
        if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY) return MB_STATUS_NOMEM;
        return mb_vk_fail(ctx, "vkAllocateMemory", r);
    }
    r = vkBindBufferMemory(ctx->dev, out->buf, out->mem, 0);
    if (r == VK_SUCCESS && (ctx->mem_props.memoryTypes[type].propertyFlags & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT))
        r = vkMapMemory(ctx->dev, out->mem, 0, VK_WHOLE_SIZE, 0, &out->map);
    if (r != VK_SUCCESS) {
        mb_vk_buffer_destroy(ctx, out);
        return mb_vk_fail(ctx, "buffer memory", r);
    }
    const VkBufferDeviceAddressInfo ai = {.sType = VK_STRUCTURE_TYPE_BUFFER_DEVICE_ADDRESS_INFO, .buffer = out->buf};
    out->addr = vkGetBufferDeviceAddress(ctx->dev, &ai);
    out->bytes = bytes;
    if (kind == MB_VK_MEM_DEVICE) {
        ctx->allocated_bytes += req.size;
        out->counted = req.size;
    }
    return MB_STATUS_OK;
}

mb_status mb_vk_buffer_import(mb_vk_ctx *ctx, void *ptr, VkDeviceSize bytes, mb_vk_buffer *out)
{
    memset(out, 0, sizeof *out);
    if (ctx->lost) return MB_STATUS_DEVICE;
    const VkDeviceSize a = ctx->host_import_align;
    if (!ctx->has_host_import || !ptr || bytes == 0 || (uintptr_t)ptr % a || bytes % a) return MB_STATUS_UNSUPPORTED;
    const VkExternalMemoryHandleTypeFlagBits ht = VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT;
    VkMemoryHostPointerPropertiesEXT hp = {.sType = VK_STRUCTURE_TYPE_MEMORY_HOST_POINTER_PROPERTIES_EXT};
    VkResult r = ctx->host_ptr_props(ctx->dev, ht, ptr, &hp);
    if (r != VK_SUCCESS) return MB_STATUS_UNSUPPORTED;
    const VkExternalMemoryBufferCreateInfo ext = {.sType = VK_STRUCTURE_TYPE_EXTERNAL_MEMORY_BUFFER_CREATE_INFO,
                                                  .handleTypes = ht};
    const VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                                    .pNext = &ext,
                                    .size = bytes,
                                    .usage = VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                                    .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    r = vkCreateBuffer(ctx->dev, &bci, NULL, &out->buf);
    if (r != VK_SUCCESS) {
        out->buf = VK_NULL_HANDLE;
        return r == VK_ERROR_OUT_OF_HOST_MEMORY || r == VK_ERROR_OUT_OF_DEVICE_MEMORY ? MB_STATUS_NOMEM
                                                                                       : MB_STATUS_BACKEND;
    }
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(ctx->dev, out->buf, &req);
    /* Coherent only: the peer's writes must reach the device without a
     * flush this process cannot make for it. */
    const VkMemoryPropertyFlags coh = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    const uint32_t type = mb_vk_mem_type(ctx, req.memoryTypeBits & hp.memoryTypeBits, coh, 0, 0);
    if (type == UINT32_MAX || req.size > bytes) {
        mb_vk_buffer_destroy(ctx, out);
        return MB_STATUS_UNSUPPORTED;
    }
    const VkImportMemoryHostPointerInfoEXT imp = {.sType = VK_STRUCTURE_TYPE_IMPORT_MEMORY_HOST_POINTER_INFO_EXT,
                                                  .handleType = ht,
                                                  .pHostPointer = ptr};
    const VkMemoryAllocateInfo mai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                                      .pNext = &imp,
                                      .allocationSize = bytes,
                                      .memoryTypeIndex = type};
    r = vkAllocateMemory(ctx->dev, &mai, NULL, &out->mem);
    if (r != VK_SUCCESS) out->mem = VK_NULL_HANDLE;
    if (r == VK_SUCCESS) r = vkBindBufferMemory(ctx->dev, out->buf, out->mem, 0);
    if (r != VK_SUCCESS) {
        mb_vk_buffer_destroy(ctx, out);
        if (r == VK_ERROR_DEVICE_LOST) return mb_vk_fail(ctx, "host memory import", r);
        return r == VK_ERROR_OUT_OF_HOST_MEMORY || r == VK_ERROR_OUT_OF_DEVICE_MEMORY ? MB_STATUS_NOMEM
                                                                                       : MB_STATUS_BACKEND;
    }
    out->bytes = bytes;
    return MB_STATUS_OK;
}

void mb_vk_buffer_destroy(mb_vk_ctx *ctx, mb_vk_buffer *b)
{
    if (!ctx->dev) return;
    if (b->buf) vkDestroyBuffer(ctx->dev, b->buf, NULL);
    if (b->mem) {
        if (b->counted && ctx->allocated_bytes >= b->counted) ctx->allocated_bytes -= b->counted;
        vkFreeMemory(ctx->dev, b->mem, NULL);
    }
    memset(b, 0, sizeof *b);
}
