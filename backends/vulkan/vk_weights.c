/* Expert slots of the Vulkan backend in device-local memory. Each slot's
 * gate, up and down matrices sit in one piece (each matrix 256-aligned)
 * carved from large arenas (a layer reserved at once gets its slots side by
 * side); weights travel once through a ring of host-visible staging
 * buffers, whose copy commands (and the slot table's entries) are batched
 * into one command buffer per staging buffer, so the device copies one
 * batch while the host packs the next. Requests are submitted to the same
 * queue after the pending uploads and start with a barrier, so they see the
 * weights without the host waiting. Quantized matrices (Q8_0, Q4_K, Q6_K,
 * each matrix its own type) keep their quantized size; the host packs
 * their blocks into kernels/vulkan/quant_layout.h's sections while filling
 * the staging buffers. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends/vulkan/vk_internal.h"
#include "kernels/vulkan/quant_layout.h"

#define MB_VK_ALIGN256(x) (((x) + 255) & ~(VkDeviceSize)255)

void mb_vk_weights_free(mb_vk_backend *be)
{
    mb_vk_arena *a = be->arenas;
    while (a) {
        mb_vk_arena *next = a->next;
        mb_vk_buffer_destroy(&be->ctx, &a->b);
        free(a);
        a = next;
    }
    be->arenas = NULL;
}

/* Carves bytes (256-aligned) from an arena, adding one when none has room. */
static mb_status mb_vk_arena_alloc(mb_vk_backend *be, VkDeviceSize bytes, mb_vk_arena **arena, VkDeviceSize *off)
{
    bytes = MB_VK_ALIGN256(bytes);
    for (mb_vk_arena *a = be->arenas; a; a = a->next)
        if (a->b.bytes - a->used >= bytes) {
            *arena = a;
            *off = a->used;
            a->used += bytes;
            return MB_STATUS_OK;
        }
    mb_vk_arena *a = calloc(1, sizeof *a);
    if (!a) return MB_STATUS_NOMEM;
    VkDeviceSize want = bytes > MB_VK_ARENA_BYTES ? bytes : MB_VK_ARENA_BYTES;
    mb_status st = mb_vk_buffer_create(&be->ctx, want, MB_VK_MEM_DEVICE, 0, &a->b);
    if (st == MB_STATUS_NOMEM && want > bytes) /* a smaller arena may still fit */
        st = mb_vk_buffer_create(&be->ctx, bytes, MB_VK_MEM_DEVICE, 0, &a->b);
    if (st != MB_STATUS_OK) {
        free(a);
        if (st == MB_STATUS_NOMEM) {
            uint64_t total = 0, avail = 0;
            mb_vk_memory(&be->ctx, &total, &avail);
            fprintf(stderr,
                    "vulkan backend: cannot allocate %.1f MiB of device memory for expert weights "
                    "(%.1f MiB free of %.1f MiB)\n",
                    bytes / 1048576.0, avail / 1048576.0, total / 1048576.0);
        }
        return st;
    }
    a->used = bytes;
    a->next = be->arenas;
    be->arenas = a;
    *arena = a;
    *off = 0;
    return MB_STATUS_OK;
}

int mb_vk_weight_dtype_ok(mb_dtype wdtype)
{
    return mb_dtype_valid(wdtype) || mb_kvk_quant_supported((int)wdtype);
}

/* Where an expert's matrices go in its slot: gate, up, down at off[i],
 * mat[i] bytes each (their quantized size for quantized types), each
 * 256-aligned, and the bytes the slot spans (*span; quantized matrices get
 * 4 bytes of room after them for the shaders' word reads) and holds as
 * weights (*bytes). The shaders index a matrix's elements with 32-bit
 * integers. BAD_DTYPE, BAD_SHAPE (too large, or rows not whole blocks) or
 * OVERFLOW. */
static mb_status mb_vk_expert_layout(uint32_t d_model, uint32_t d_ff, const mb_dtype wdtype[MB_PROTO_MATS],
                                     VkDeviceSize off[MB_PROTO_MATS], VkDeviceSize mat[MB_PROTO_MATS],
                                     VkDeviceSize *span, uint64_t *bytes)
{
    size_t m = 0;
    if (__builtin_mul_overflow((size_t)d_model, (size_t)d_ff, &m) || m >= ((size_t)1 << 31))
        return MB_STATUS_BAD_SHAPE;
    VkDeviceSize at = 0;
    uint64_t sum = 0;
    for (int i = 0; i < MB_PROTO_MATS; i++) {
        if (!mb_vk_weight_dtype_ok(wdtype[i])) return MB_STATUS_BAD_DTYPE;
        const uint32_t rows = i == MB_PROTO_MAT_DOWN ? d_model : d_ff, cols = i == MB_PROTO_MAT_DOWN ? d_ff : d_model;
        uint64_t rb = 0;
        mb_status st = mb_dtype_row_bytes(wdtype[i], cols, &rb);
        if (st != MB_STATUS_OK) return st;
        mat[i] = (VkDeviceSize)rows * rb; /* under 2^31 elements of at most 4 bytes */
        off[i] = at;
        at += MB_VK_ALIGN256(mat[i] + (mb_dtype_is_quant(wdtype[i]) ? 4 : 0));
        sum += mat[i];
    }
    *span = at;
    *bytes = sum;
    return MB_STATUS_OK;
}

mb_status mb_vk_reserve_layer(void *state, uint32_t layer, uint32_t slot0, uint32_t n_slots, uint32_t d_model,
                              uint32_t d_ff, mb_dtype wdtype)
{
    mb_vk_backend *be = state;
    if (!be || n_slots == 0 || slot0 >= be->max_slots || n_slots > be->max_slots - slot0) return MB_STATUS_SLOT_RANGE;
    if (d_model == 0 || d_ff == 0) return MB_STATUS_BAD_SHAPE;
    (void)layer;
    /* A quantized layer is reserved as if all three matrices had wdtype;
     * a slot that then needs more (another type for down) gets its own
     * piece at load. */
    const mb_dtype dt[MB_PROTO_MATS] = {wdtype, wdtype, wdtype};
    VkDeviceSize off[MB_PROTO_MATS], mat[MB_PROTO_MATS], per = 0, all = 0;
    uint64_t used = 0;
    mb_status st = mb_vk_expert_layout(d_model, d_ff, dt, off, mat, &per, &used);
    if (st != MB_STATUS_OK) return st;
    if (__builtin_mul_overflow(per, (VkDeviceSize)n_slots, &all)) return MB_STATUS_OVERFLOW;
    /* Larger than one allocation may be: the slots get their pieces one by one. */
    if (all > be->ctx.max_alloc) return MB_STATUS_OK;
    mb_vk_arena *a = NULL;
    VkDeviceSize o = 0;
    st = mb_vk_arena_alloc(be, all, &a, &o);
    if (st != MB_STATUS_OK) return st;
    for (uint32_t i = 0; i < n_slots; i++)
        be->slot_mem[slot0 + i] = (mb_vk_slot_mem){a, o + (VkDeviceSize)i * per, per};
    return MB_STATUS_OK;
}

/* Prints upload progress on a terminal, at most four times a second. */
static void mb_vk_progress(mb_vk_backend *be, int final)
{
    if (!be->progress || !isatty(STDERR_FILENO) || be->up_bytes == 0) return;
    const uint64_t now = mb_vk_now_ns();
    if (!final && now - be->up_last_print_ns < 250000000ull) return;
    be->up_last_print_ns = now;
    const double s = (now - be->up_t0_ns) / 1e9;
    fprintf(stderr, "\rvulkan:%d: uploaded %.0f MiB of expert weights (%.1f GB/s)%s", be->device,
            be->up_bytes / 1048576.0, s > 0 ? be->up_bytes / s / 1e9 : 0.0, final ? "\n" : "");
    fflush(stderr);
}

/* The ring's current staging buffer, recording (after its previous batch
 * finished on the device). */
static mb_status mb_vk_up_ready(mb_vk_backend *be, mb_vk_upload_buf **out)
{
    mb_vk_ctx *ctx = &be->ctx;
    mb_vk_upload_buf *u = &be->up[be->up_next];
    if (!u->stage.buf) {
        mb_status st = mb_vk_buffer_create(ctx, MB_VK_UPLOAD_BYTES, MB_VK_MEM_UPLOAD, 0, &u->stage);
        if (st != MB_STATUS_OK) return st;
    }
    if (!u->recording) {
        VkResult r = VK_SUCCESS;
        if (u->pending) {
            r = vkWaitForFences(ctx->dev, 1, &u->fence, VK_TRUE, UINT64_MAX);
            if (r == VK_SUCCESS) r = vkResetFences(ctx->dev, 1, &u->fence);
            u->pending = 0;
        }
        const VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                             .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
        if (r == VK_SUCCESS) r = vkBeginCommandBuffer(u->cb, &bi);
        if (r != VK_SUCCESS) return mb_vk_fail(ctx, "weight upload", r);
        u->recording = 1;
        u->used = 0;
    }
    *out = u;
    return MB_STATUS_OK;
}

mb_status mb_vk_upload_flush(mb_vk_backend *be)
{
    mb_vk_upload_buf *u = &be->up[be->up_next];
    if (!u->recording) return MB_STATUS_OK;
    mb_vk_ctx *ctx = &be->ctx;
    u->recording = 0;
    VkResult r = vkEndCommandBuffer(u->cb);
    const VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &u->cb};
    if (r == VK_SUCCESS) r = vkQueueSubmit(ctx->queue, 1, &si, u->fence);
    if (r != VK_SUCCESS) return mb_vk_fail(ctx, "weight upload", r);
    u->pending = 1;
    be->up_next = (be->up_next + 1) % MB_VK_UPLOAD_BUFS;
    return MB_STATUS_OK;
}

/* Queues bytes from host src to dst at dst_off through the staging ring. */
static mb_status mb_vk_upload(mb_vk_backend *be, VkBuffer dst, VkDeviceSize dst_off, const char *src, size_t bytes)
{
    while (bytes) {
        mb_vk_upload_buf *u = NULL;
        mb_status st = mb_vk_up_ready(be, &u);
        if (st != MB_STATUS_OK) return st;
        if (u->used >= u->stage.bytes) {
            if ((st = mb_vk_upload_flush(be)) != MB_STATUS_OK) return st;
            continue;
        }
        const size_t room = (size_t)(u->stage.bytes - u->used), n = bytes < room ? bytes : room;
        memcpy((char *)u->stage.map + u->used, src, n);
        const VkBufferCopy reg = {.srcOffset = u->used, .dstOffset = dst_off, .size = n};
        vkCmdCopyBuffer(u->cb, u->stage.buf, dst, 1, &reg);
        u->used = (u->used + n + 15) & ~(VkDeviceSize)15;
        dst_off += n;
        src += n;
        bytes -= n;
        be->up_bytes += n;
    }
    mb_vk_progress(be, 0);
    return MB_STATUS_OK;
}

/* Queues a quantized matrix (n_blocks ggml blocks at src) to dst at
 * dst_off in the shaders' layout: section by section, each packed straight
 * into the staging buffers a piece at a time. */
static mb_status mb_vk_upload_quant(mb_vk_backend *be, VkBuffer dst, VkDeviceSize dst_off, const void *src,
                                    mb_dtype wdtype, size_t n_blocks)
{
    mb_kq_section sec[MB_KQ_SECTIONS_MAX];
    const int n_sec = mb_kq_sections((int)wdtype, sec);
    for (int s = 0; s < n_sec; s++) {
        size_t b0 = 0;
        while (b0 < n_blocks) {
            mb_vk_upload_buf *u = NULL;
            mb_status st = mb_vk_up_ready(be, &u);
            if (st != MB_STATUS_OK) return st;
            const size_t per = u->used < u->stage.bytes ? (size_t)(u->stage.bytes - u->used) / sec[s].bytes : 0;
            if (per == 0) {
                if ((st = mb_vk_upload_flush(be)) != MB_STATUS_OK) return st;
                continue;
            }
            const size_t nb = n_blocks - b0 < per ? n_blocks - b0 : per, n = nb * sec[s].bytes;
            mb_kq_section_pack((int)wdtype, sec[s], src, b0, nb, (char *)u->stage.map + u->used);
            const VkBufferCopy reg = {.srcOffset = u->used, .dstOffset = dst_off + b0 * sec[s].bytes, .size = n};
            vkCmdCopyBuffer(u->cb, u->stage.buf, dst, 1, &reg);
            u->used = (u->used + n + 15) & ~(VkDeviceSize)15;
            be->up_bytes += n;
            b0 += nb;
        }
        dst_off += (VkDeviceSize)n_blocks * sec[s].bytes;
    }
    mb_vk_progress(be, 0);
    return MB_STATUS_OK;
}

static void mb_vk_layer_count(mb_vk_backend *be, uint32_t layer, int delta)
{
    if (layer >= be->n_layers_cap) {
        uint32_t cap = be->n_layers_cap ? be->n_layers_cap : 64;
        while (cap <= layer)
            cap *= 2;
        uint32_t *n = realloc(be->layer_experts, cap * sizeof *n);
        if (!n) return; /* only a tuning hint is lost */
        memset(n + be->n_layers_cap, 0, (cap - be->n_layers_cap) * sizeof *n);
        be->layer_experts = n;
        be->n_layers_cap = cap;
    }
    be->layer_experts[layer] += (uint32_t)delta;
}

mb_status mb_vk_load_expert(void *state, const mb_expert_weights *w)
{
    mb_vk_backend *be = state;
    if (!be || !w) return MB_STATUS_INVALID_ARG;
    /* One element dtype for all three matrices, or quantized types the
     * shaders know (each its own); the wrapper admits no other mix, and
     * the caps name no other quantized type. */
    mb_status st = mb_backend_expert_dtypes_check(w->wdtype);
    if (st != MB_STATUS_OK) return st;
    if (be->ctx.lost) return MB_STATUS_DEVICE;
    if ((st = mb_route_table_check_load(&be->table, w)) != MB_STATUS_OK) return st;
    VkDeviceSize off[MB_PROTO_MATS], mat[MB_PROTO_MATS], bytes = 0;
    uint64_t wbytes = 0;
    st = mb_vk_expert_layout(w->d_model, w->d_ff, w->wdtype, off, mat, &bytes, &wbytes);
    if (st != MB_STATUS_OK) return st;
    if (be->up_bytes == 0) be->up_t0_ns = mb_vk_now_ns();
    mb_vk_slot_mem *sm = &be->slot_mem[w->slot];
    if (sm->bytes < bytes) {
        /* A reload with a larger shape leaves the old piece unused: arenas
         * are only freed with the backend. */
        mb_vk_arena *a = NULL;
        VkDeviceSize at = 0;
        st = mb_vk_arena_alloc(be, bytes, &a, &at);
        if (st != MB_STATUS_OK) return st;
        *sm = (mb_vk_slot_mem){a, at, bytes};
    }
    /* Requests in flight may read the old weights: wait for them first. */
    if ((st = mb_vk_reqs_wait(be)) != MB_STATUS_OK) return st;
    const mb_route_slot *old = &be->table.slots[w->slot];
    mb_vk_upload_buf *u = NULL;
    if ((st = mb_vk_up_ready(be, &u)) != MB_STATUS_OK) return st;
    /* A slot written before may still have copies queued: order them first. */
    if (old->loaded) mb_vk_barrier(u->cb);
    const VkDeviceSize base = sm->off;
    const VkBuffer dst = sm->arena->b.buf;
    const void *src[MB_PROTO_MATS] = {w->gate, w->up, w->down};
    for (int i = 0; i < MB_PROTO_MATS; i++) {
        const mb_dtype dt = w->wdtype[i];
        st = mb_dtype_is_quant(dt)
                 ? mb_vk_upload_quant(be, dst, base + off[i], src[i], dt, (size_t)(mat[i] / mb_dtype_block_bytes(dt)))
                 : mb_vk_upload(be, dst, base + off[i], src[i], (size_t)mat[i]);
        if (st != MB_STATUS_OK) {
            be->upload_status = st;
            return st;
        }
    }
    const VkDeviceAddress addr = sm->arena->b.addr + base;
    const mb_kvk_slot entry = {addr + off[MB_PROTO_MAT_GATE], addr + off[MB_PROTO_MAT_UP],
                               addr + off[MB_PROTO_MAT_DOWN]};
    if ((st = mb_vk_up_ready(be, &u)) != MB_STATUS_OK) return be->upload_status = st;
    vkCmdUpdateBuffer(u->cb, be->slots.buf, (VkDeviceSize)w->slot * sizeof entry, sizeof entry, &entry);
    if (old->loaded) {
        mb_vk_layer_count(be, old->layer, -1);
        VkDeviceSize o_off[MB_PROTO_MATS], o_mat[MB_PROTO_MATS], o_span = 0;
        uint64_t o_bytes = 0;
        if (mb_vk_expert_layout(old->d_model, old->d_ff, old->wdtype, o_off, o_mat, &o_span, &o_bytes) ==
                MB_STATUS_OK &&
            be->weight_bytes >= o_bytes)
            be->weight_bytes -= o_bytes;
    }
    mb_vk_layer_count(be, w->layer, +1);
    be->weight_bytes += wbytes;
    mb_route_table_set(&be->table, w);
    return MB_STATUS_OK;
}

mb_status mb_vk_load_finish(void *state)
{
    mb_vk_backend *be = state;
    if (!be) return MB_STATUS_INVALID_ARG;
    mb_vk_ctx *ctx = &be->ctx;
    mb_status st = mb_vk_upload_flush(be);
    if (st != MB_STATUS_OK && be->upload_status == MB_STATUS_OK) be->upload_status = st;
    for (int i = 0; i < MB_VK_UPLOAD_BUFS; i++) {
        mb_vk_upload_buf *u = &be->up[i];
        if (!u->pending) continue;
        VkResult r = vkWaitForFences(ctx->dev, 1, &u->fence, VK_TRUE, UINT64_MAX);
        if (r == VK_SUCCESS) r = vkResetFences(ctx->dev, 1, &u->fence);
        u->pending = 0;
        if (r != VK_SUCCESS && be->upload_status == MB_STATUS_OK) be->upload_status = mb_vk_fail(ctx, "weight upload", r);
    }
    mb_vk_progress(be, 1);
    be->up_bytes = 0;
    st = be->upload_status;
    be->upload_status = MB_STATUS_OK;
    return st;
}
