/* Requests on the Vulkan backend. submit validates the pairs on the host
 * against the slot table, copies the request into the host-visible staging
 * of a free in-flight entry (so its inputs are consumed when submit
 * returns) and records into that entry's command buffer: one copy to
 * device-local memory, the shaders of kernels/vulkan/moe.h (routing on the
 * device, indirect dispatches sized by it), one copy back, framed by two
 * timestamps; one queue submission signals the entry's fence. poll reports
 * completion from the fences, in whatever order they signal; fetch copies
 * the result out of host-visible staging. Nothing here waits on the device
 * except poll when asked to, and buffer growth of an idle entry. */
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "backends/vulkan/vk_internal.h"

#define MB_VK_ALIGN(x) (((x) + 255) & ~(size_t)255)
#define MB_VK_MAX_GROUPS 65535u
#define MB_VK_SPIN_NS 2000000ull /* poll's spinning before it sleeps, on a GPU */

/* The fixed part of an entry's workspace: slot_cnt, slot_eidx, args. */
static size_t mb_vk_args_off(const mb_vk_backend *be)
{
    return MB_VK_ALIGN((size_t)be->max_slots * 8);
}

void mb_vk_req_free(mb_vk_backend *be, mb_vk_req *r)
{
    mb_vk_ctx *ctx = &be->ctx;
    if (ctx->dev) {
        mb_vk_buffer_destroy(ctx, &r->h_in);
        mb_vk_buffer_destroy(ctx, &r->d_in);
        mb_vk_buffer_destroy(ctx, &r->d_out);
        mb_vk_buffer_destroy(ctx, &r->h_out);
        mb_vk_buffer_destroy(ctx, &r->fixed);
        mb_vk_buffer_destroy(ctx, &r->ws.b);
        if (r->queries) vkDestroyQueryPool(ctx->dev, r->queries, NULL);
        if (r->fence) vkDestroyFence(ctx->dev, r->fence, NULL);
        if (r->cb) vkFreeCommandBuffers(ctx->dev, be->pool, 1, &r->cb);
    }
    memset(r, 0, sizeof *r);
}

/* Creates an entry's command buffer, fence, timestamps and fixed workspace
 * on first use. */
static mb_status mb_vk_req_init(mb_vk_backend *be, mb_vk_req *r)
{
    if (r->fence) return MB_STATUS_OK;
    mb_vk_ctx *ctx = &be->ctx;
    const VkCommandBufferAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                            .commandPool = be->pool,
                                            .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                            .commandBufferCount = 1};
    const VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    VkResult res = vkAllocateCommandBuffers(ctx->dev, &ai, &r->cb);
    if (res != VK_SUCCESS) r->cb = VK_NULL_HANDLE;
    if (res == VK_SUCCESS) res = vkCreateFence(ctx->dev, &fci, NULL, &r->fence);
    if (res != VK_SUCCESS) r->fence = VK_NULL_HANDLE;
    if (res == VK_SUCCESS && ctx->timestamp_bits) {
        const VkQueryPoolCreateInfo qci = {.sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
                                           .queryType = VK_QUERY_TYPE_TIMESTAMP,
                                           .queryCount = 2};
        res = vkCreateQueryPool(ctx->dev, &qci, NULL, &r->queries);
        if (res != VK_SUCCESS) r->queries = VK_NULL_HANDLE;
    }
    mb_status st = res == VK_SUCCESS ? MB_STATUS_OK : mb_vk_fail(ctx, "request setup", res);
    if (st == MB_STATUS_OK)
        st = mb_vk_buffer_create(ctx, mb_vk_args_off(be) + sizeof(mb_kvk_args), MB_VK_MEM_DEVICE,
                                 VK_BUFFER_USAGE_INDIRECT_BUFFER_BIT, &r->fixed);
    if (st != MB_STATUS_OK) {
        mb_vk_req_free(be, r);
        return st;
    }
    r->fixed_fresh = 1;
    return MB_STATUS_OK;
}

/* Grows b (of an idle entry) to at least bytes, in powers of two. */
static mb_status mb_vk_grow(mb_vk_ctx *ctx, mb_vk_buffer *b, mb_vk_mem_kind kind, size_t bytes)
{
    if (b->buf && b->bytes >= bytes) return MB_STATUS_OK;
    size_t c = b->bytes ? (size_t)b->bytes : ((size_t)1 << 20);
    while (c < bytes)
        c *= 2;
    mb_vk_buffer_destroy(ctx, b);
    mb_status st = mb_vk_buffer_create(ctx, c, kind, 0, b);
    if (st == MB_STATUS_NOMEM)
        fprintf(stderr, "vulkan backend: cannot allocate %.1f MiB of %s memory for a request\n", c / 1048576.0,
                kind == MB_VK_MEM_DEVICE ? "device" : "host-visible");
    return st;
}

/* Sizes an idle entry's workspace for n_tokens, n_pairs and the shape. */
static mb_status mb_vk_ws_reserve(mb_vk_ctx *ctx, mb_vk_ws *ws, size_t nt, size_t np, size_t dm, size_t dff)
{
    np = np ? np : 1;
    const size_t x = nt * dm * 4, h = np * dff * 4, y = np * dm * 4;
    if (ws->b.buf && nt <= ws->cap_tokens && np <= ws->cap_pairs && x <= ws->cap_x && h <= ws->cap_h &&
        y <= ws->cap_y)
        return MB_STATUS_OK;
    mb_vk_ws n = {0};
    n.cap_tokens = nt > ws->cap_tokens ? nt : ws->cap_tokens;
    n.cap_pairs = np > ws->cap_pairs ? np : ws->cap_pairs;
    n.cap_x = x > ws->cap_x ? x : ws->cap_x;
    n.cap_h = h > ws->cap_h ? h : ws->cap_h;
    n.cap_y = y > ws->cap_y ? y : ws->cap_y;
    size_t at = 0;
    n.tok_off = at, at += MB_VK_ALIGN((n.cap_tokens + 1) * 4);
    n.expert_slot = at, at += MB_VK_ALIGN(n.cap_pairs * 4);
    n.expert_off = at, at += MB_VK_ALIGN((n.cap_pairs + 1) * 4);
    n.pair_pos = at, at += MB_VK_ALIGN(n.cap_pairs * 4);
    n.perm_token = at, at += MB_VK_ALIGN(n.cap_pairs * 4);
    n.tiles = at, at += MB_VK_ALIGN((size_t)MB_KVK_MAX_TILES(n.cap_pairs, n.cap_pairs) * 8);
    n.x = at, at += MB_VK_ALIGN(n.cap_x);
    n.h = at, at += MB_VK_ALIGN(n.cap_h);
    n.y = at, at += MB_VK_ALIGN(n.cap_y);
    mb_vk_buffer_destroy(ctx, &ws->b);
    mb_status st = mb_vk_buffer_create(ctx, at, MB_VK_MEM_DEVICE, 0, &n.b);
    if (st != MB_STATUS_OK) {
        memset(ws, 0, sizeof *ws);
        if (st == MB_STATUS_NOMEM)
            fprintf(stderr, "vulkan backend: cannot allocate %.1f MiB of device memory for a request's workspace\n",
                    at / 1048576.0);
        return st;
    }
    *ws = n;
    return MB_STATUS_OK;
}

/* One dispatch with its push constants, then a barrier. */
static void mb_vk_dispatch(mb_vk_backend *be, VkCommandBuffer cb, VkPipeline pl, const void *pc, uint32_t pc_bytes,
                           uint32_t gx, const VkBuffer *indirect, VkDeviceSize indirect_off)
{
    vkCmdBindPipeline(cb, VK_PIPELINE_BIND_POINT_COMPUTE, pl);
    vkCmdPushConstants(cb, be->ctx.layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, pc_bytes, pc);
    if (indirect)
        vkCmdDispatchIndirect(cb, *indirect, indirect_off);
    else
        vkCmdDispatch(cb, gx, 1, 1);
    mb_vk_barrier(cb);
}

static uint32_t mb_vk_groups(size_t n, uint32_t per)
{
    const size_t g = (n + per - 1) / per;
    return g < 1 ? 1 : g > MB_VK_MAX_GROUPS ? MB_VK_MAX_GROUPS : (uint32_t)g;
}

/* What one request needs to record its commands. */
typedef struct {
    const mb_proto_expert_req *req;
    uint32_t d_ff;
    mb_dtype wdtype;
    size_t in_bytes, out_bytes, pairs_off, act_off;
    int gemm;
    VkPipeline route, convert, ffn1, ffn2, combine;
} mb_vk_plan;

/* Picks the path and the pipelines (created on first use). */
static mb_status mb_vk_plan_pipelines(mb_vk_backend *be, mb_vk_plan *pl)
{
    const mb_proto_expert_req *req = pl->req;
    if (req->n_pairs == 0) return MB_STATUS_OK;
    uint32_t experts = req->layer < be->n_layers_cap && be->layer_experts ? be->layer_experts[req->layer] : 0;
    if (experts == 0 || experts > req->n_pairs) experts = req->n_pairs;
    /* The GEMV path streams an expert's weights once per 4 of its rows; the
     * tiled path once per 64. Few rows per routed expert: GEMV. */
    pl->gemm = be->path == 2 || (be->path == 0 && req->n_pairs > 4u * experts);
    const uint32_t wd = (uint32_t)pl->wdtype, pd = (uint32_t)req->dtype;
    const uint32_t v = pl->wdtype == MB_DTYPE_F32 ? 4 : 8;
    const uint32_t rows = be->gemv_rows;
    const uint32_t s_route[4] = {rows, 0, 0, 0}, s_pd[4] = {pd, 0, 0, 0};
    uint32_t s1[4] = {wd, 1, req->d_model % v == 0, rows};
    uint32_t s2[4] = {wd, 0, pl->d_ff % v == 0, rows};
    const char *ffn = pl->gemm ? "moe_gemm" : "moe_gemv";
    if (pl->gemm) s1[3] = s2[3] = 0;
    mb_vk_ctx *ctx = &be->ctx;
    mb_status st = mb_vk_pipeline_get(ctx, "moe_route", s_route, &pl->route);
    if (st == MB_STATUS_OK) st = mb_vk_pipeline_get(ctx, "moe_convert", s_pd, &pl->convert);
    if (st == MB_STATUS_OK) st = mb_vk_pipeline_get(ctx, ffn, s1, &pl->ffn1);
    if (st == MB_STATUS_OK) st = mb_vk_pipeline_get(ctx, ffn, s2, &pl->ffn2);
    if (st == MB_STATUS_OK) st = mb_vk_pipeline_get(ctx, "moe_combine", s_pd, &pl->combine);
    return st;
}

/* Records the expert math of pl into r's command buffer. */
static void mb_vk_record_math(mb_vk_backend *be, mb_vk_req *r, const mb_vk_plan *pl)
{
    const mb_proto_expert_req *req = pl->req;
    VkCommandBuffer cb = r->cb;
    const VkDeviceAddress in = r->d_in.addr, ws = r->ws.b.addr, fx = r->fixed.addr;
    const size_t args_off = mb_vk_args_off(be);
    const mb_kvk_route_pc rp = {.counts = in,
                                .pairs = in + pl->pairs_off,
                                .slot_cnt = fx,
                                .slot_eidx = fx + (VkDeviceSize)be->max_slots * 4,
                                .tok_off = ws + r->ws.tok_off,
                                .expert_slot = ws + r->ws.expert_slot,
                                .expert_off = ws + r->ws.expert_off,
                                .pair_pos = ws + r->ws.pair_pos,
                                .perm_token = ws + r->ws.perm_token,
                                .tiles = ws + r->ws.tiles,
                                .args = fx + args_off,
                                .n_tokens = req->n_tokens,
                                .n_pairs = req->n_pairs,
                                .d_model = req->d_model,
                                .d_ff = pl->d_ff};
    mb_vk_dispatch(be, cb, pl->route, &rp, sizeof rp, 1, NULL, 0);
    const size_t n = (size_t)req->n_tokens * req->d_model;
    const mb_kvk_convert_pc cp = {.act = in + pl->act_off, .x = ws + r->ws.x, .n = (uint32_t)n};
    mb_vk_dispatch(be, cb, pl->convert, &cp, sizeof cp, mb_vk_groups(n, MB_KVK_CONVERT_THREADS), NULL, 0);
    mb_kvk_ffn_pc fp = {.slots = be->slots.addr,
                        .tiles = ws + r->ws.tiles,
                        .expert_slot = rp.expert_slot,
                        .expert_off = rp.expert_off,
                        .perm_token = rp.perm_token,
                        .in = cp.x,
                        .out = ws + r->ws.h,
                        .K = req->d_model,
                        .N = pl->d_ff};
    const VkDeviceSize a1 = args_off + (pl->gemm ? offsetof(mb_kvk_args, gemm_gateup) : offsetof(mb_kvk_args, gemv_gateup));
    const VkDeviceSize a2 = args_off + (pl->gemm ? offsetof(mb_kvk_args, gemm_down) : offsetof(mb_kvk_args, gemv_down));
    mb_vk_dispatch(be, cb, pl->ffn1, &fp, sizeof fp, 0, &r->fixed.buf, a1);
    fp.in = fp.out;
    fp.out = ws + r->ws.y;
    fp.K = pl->d_ff;
    fp.N = req->d_model;
    mb_vk_dispatch(be, cb, pl->ffn2, &fp, sizeof fp, 0, &r->fixed.buf, a2);
    const mb_kvk_combine_pc mp = {.tok_off = rp.tok_off,
                                  .pairs = rp.pairs,
                                  .pair_pos = rp.pair_pos,
                                  .y = fp.out,
                                  .out = r->d_out.addr,
                                  .n_tokens = req->n_tokens,
                                  .d_model = req->d_model};
    const size_t words = req->dtype == MB_DTYPE_F32 ? n : (n + 1) / 2;
    mb_vk_dispatch(be, cb, pl->combine, &mp, sizeof mp, mb_vk_groups(words, MB_KVK_COMBINE_THREADS), NULL, 0);
}

/* Records the whole request into r's command buffer. */
static VkResult mb_vk_record(mb_vk_backend *be, mb_vk_req *r, const mb_vk_plan *pl)
{
    VkCommandBuffer cb = r->cb;
    const VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                         .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    VkResult res = vkResetCommandBuffer(cb, 0);
    if (res == VK_SUCCESS) res = vkBeginCommandBuffer(cb, &bi);
    if (res != VK_SUCCESS) return res;
    if (r->queries) {
        vkCmdResetQueryPool(cb, r->queries, 0, 2);
        vkCmdWriteTimestamp(cb, VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, r->queries, 0);
    }
    /* The slot counters start at zero once; moe_route keeps them so. */
    if (r->fixed_fresh) vkCmdFillBuffer(cb, r->fixed.buf, 0, (VkDeviceSize)be->max_slots * 4, 0);
    /* Weight uploads submitted before, and this entry's last request, done. */
    mb_vk_barrier(cb);
    if (pl->in_bytes) {
        const VkBufferCopy c = {.size = pl->in_bytes};
        vkCmdCopyBuffer(cb, r->h_in.buf, r->d_in.buf, 1, &c);
        mb_vk_barrier(cb);
    }
    if (pl->out_bytes) {
        if (pl->req->n_pairs == 0) {
            vkCmdFillBuffer(cb, r->d_out.buf, 0, (pl->out_bytes + 3) & ~(VkDeviceSize)3, 0);
            mb_vk_barrier(cb);
        } else {
            mb_vk_record_math(be, r, pl);
        }
        const VkBufferCopy c = {.size = pl->out_bytes};
        vkCmdCopyBuffer(cb, r->d_out.buf, r->h_out.buf, 1, &c);
        mb_vk_barrier(cb); /* host reads after the fence */
    }
    if (r->queries) vkCmdWriteTimestamp(cb, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, r->queries, 1);
    return vkEndCommandBuffer(cb);
}

/* Sizes of req's staging; FULL when past the staging area or the shaders'
 * 32-bit indexing. */
static mb_status mb_vk_plan_sizes(const mb_vk_backend *be, mb_vk_plan *pl)
{
    const mb_proto_expert_req *req = pl->req;
    size_t act = 0, h = 0, y = 0;
    if (__builtin_mul_overflow((size_t)req->n_tokens, (size_t)req->d_model, &act) ||
        __builtin_mul_overflow((size_t)req->n_pairs, (size_t)pl->d_ff, &h) ||
        __builtin_mul_overflow((size_t)req->n_pairs, (size_t)req->d_model, &y))
        return MB_STATUS_OVERFLOW;
    const size_t lim = (size_t)1 << 31;
    if (act >= lim || h >= lim || y >= lim) return MB_STATUS_FULL;
    act *= mb_dtype_size(req->dtype);
    pl->out_bytes = act;
    pl->pairs_off = MB_VK_ALIGN((size_t)req->n_tokens * sizeof(uint16_t));
    pl->act_off = pl->pairs_off + MB_VK_ALIGN((size_t)req->n_pairs * sizeof(mb_proto_pair));
    pl->in_bytes = pl->act_off + act;
    if (pl->in_bytes > be->staging_max || pl->out_bytes > be->staging_max) return MB_STATUS_FULL;
    return MB_STATUS_OK;
}

mb_status mb_vk_submit(void *state, uint64_t tag, const mb_proto_expert_req *req)
{
    mb_vk_backend *be = state;
    if (!be || !req) return MB_STATUS_INVALID_ARG;
    if (be->ctx.lost) return MB_STATUS_DEVICE;
    if (!mb_dtype_valid(req->dtype)) return MB_STATUS_BAD_DTYPE;
    mb_vk_plan pl = {.req = req};
    mb_dtype wdtype[MB_PROTO_MATS]; /* one element dtype for all three (load_expert) */
    mb_status st = mb_route_validate(&be->table, req, &pl.d_ff, wdtype);
    pl.wdtype = wdtype[MB_PROTO_MAT_GATE];
    if (st != MB_STATUS_OK) return st;

    mb_vk_req *r = NULL;
    unsigned busy = 0;
    for (unsigned i = 0; i < be->max_inflight; i++) {
        if (be->reqs[i].used) busy++;
        else if (!r) r = &be->reqs[i];
    }
    if (!r || busy >= be->max_inflight) return MB_STATUS_AGAIN;
    if ((st = mb_vk_plan_sizes(be, &pl)) != MB_STATUS_OK) return st;

    mb_vk_ctx *ctx = &be->ctx;
    if ((st = mb_vk_req_init(be, r)) != MB_STATUS_OK) return st;
    /* Inputs are read as 32-bit words: a 16-bit tail needs the word's room. */
    const size_t in_cap = pl.in_bytes + 4, out_cap = ((pl.out_bytes + 3) & ~(size_t)3) + 4;
    if ((st = mb_vk_grow(ctx, &r->h_in, MB_VK_MEM_UPLOAD, in_cap)) != MB_STATUS_OK ||
        (st = mb_vk_grow(ctx, &r->d_in, MB_VK_MEM_DEVICE, in_cap)) != MB_STATUS_OK ||
        (st = mb_vk_grow(ctx, &r->d_out, MB_VK_MEM_DEVICE, out_cap)) != MB_STATUS_OK ||
        (st = mb_vk_grow(ctx, &r->h_out, MB_VK_MEM_READBACK, out_cap)) != MB_STATUS_OK)
        return st;
    if (req->n_pairs &&
        (st = mb_vk_ws_reserve(ctx, &r->ws, req->n_tokens, req->n_pairs, req->d_model, pl.d_ff)) != MB_STATUS_OK)
        return st;
    if ((st = mb_vk_plan_pipelines(be, &pl)) != MB_STATUS_OK) return st;
    /* Weights (and slot table entries) recorded so far go first. */
    if ((st = mb_vk_upload_flush(be)) != MB_STATUS_OK) return st;

    /* The inputs are consumed here: the peer's buffer is free once this
     * copy into staging is done. */
    char *h = r->h_in.map;
    memcpy(h, req->pair_counts, (size_t)req->n_tokens * sizeof(uint16_t));
    memcpy(h + pl.pairs_off, req->pairs, (size_t)req->n_pairs * sizeof(mb_proto_pair));
    memcpy(h + pl.act_off, req->act, pl.out_bytes);

    VkResult res = mb_vk_record(be, r, &pl);
    if (res == VK_SUCCESS) res = vkResetFences(ctx->dev, 1, &r->fence);
    const VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &r->cb};
    if (res == VK_SUCCESS) res = vkQueueSubmit(ctx->queue, 1, &si, r->fence);
    if (res != VK_SUCCESS) return mb_vk_fail(ctx, "request submission", res);
    r->fixed_fresh = 0;
    r->used = 1;
    r->consumed_reported = 0;
    r->done = 0;
    r->status = MB_STATUS_OK;
    r->tag = tag;
    r->seq = be->next_seq++;
    r->out_bytes = pl.out_bytes;
    r->t_submit_ns = mb_vk_now_ns();
    return MB_STATUS_OK;
}

/* Device time of a finished request: its timestamps, else wall time since
 * submission. */
static uint64_t mb_vk_req_ns(const mb_vk_backend *be, const mb_vk_req *r)
{
    uint64_t t[2] = {0, 0};
    if (r->queries && vkGetQueryPoolResults(be->ctx.dev, r->queries, 0, 2, sizeof t, t, sizeof t[0],
                                            VK_QUERY_RESULT_64_BIT) == VK_SUCCESS) {
        const uint32_t bits = be->ctx.timestamp_bits;
        const uint64_t mask = bits >= 64 ? ~0ull : ((1ull << bits) - 1);
        return (uint64_t)((double)((t[1] - t[0]) & mask) * be->ctx.timestamp_period);
    }
    return mb_vk_now_ns() - r->t_submit_ns;
}

/* One pass over the entries: the oldest unreported CONSUMED, else the
 * oldest finished request. Returns TIMEOUT when there is nothing to say. */
static mb_status mb_vk_poll_once(mb_vk_backend *be, mb_backend_event *ev)
{
    mb_vk_req *pick = NULL;
    for (unsigned i = 0; i < be->max_inflight; i++) {
        mb_vk_req *r = &be->reqs[i];
        if (r->used && !r->consumed_reported && (!pick || r->seq < pick->seq)) pick = r;
    }
    if (pick) {
        pick->consumed_reported = 1;
        *ev = (mb_backend_event){.kind = MB_BACKEND_EVENT_CONSUMED, .tag = pick->tag, .status = MB_STATUS_OK};
        return MB_STATUS_OK;
    }
    VkResult pick_res = VK_SUCCESS;
    for (unsigned i = 0; i < be->max_inflight; i++) {
        mb_vk_req *r = &be->reqs[i];
        if (!r->used || r->done) continue;
        const VkResult res = be->ctx.lost ? VK_ERROR_DEVICE_LOST : vkGetFenceStatus(be->ctx.dev, r->fence);
        if (res == VK_NOT_READY) continue;
        if (!pick || r->seq < pick->seq) {
            pick = r;
            pick_res = res;
        }
    }
    if (!pick) return MB_STATUS_TIMEOUT;
    pick->done = 1;
    pick->status = pick_res == VK_SUCCESS ? MB_STATUS_OK : mb_vk_fail(&be->ctx, "request", pick_res);
    *ev = (mb_backend_event){.kind = MB_BACKEND_EVENT_DONE, .tag = pick->tag, .status = pick->status,
                             .compute_ns = pick->status == MB_STATUS_OK ? mb_vk_req_ns(be, pick) : 0};
    if (pick->status != MB_STATUS_OK) pick->used = 0; /* a failed request is forgotten at once */
    return MB_STATUS_OK;
}

mb_status mb_vk_poll(void *state, int64_t timeout_ns, mb_backend_event *ev)
{
    mb_vk_backend *be = state;
    if (!be || !ev) return MB_STATUS_INVALID_ARG;
    const uint64_t t0 = mb_vk_now_ns();
    for (;;) {
        mb_status st = mb_vk_poll_once(be, ev);
        if (st != MB_STATUS_TIMEOUT) return st;
        VkFence fences[MB_BACKEND_MAX_INFLIGHT];
        uint32_t n = 0;
        for (unsigned i = 0; i < be->max_inflight; i++)
            if (be->reqs[i].used && !be->reqs[i].done) fences[n++] = be->reqs[i].fence;
        if (n == 0 || timeout_ns == 0) return MB_STATUS_TIMEOUT;
        uint64_t wait = UINT64_MAX;
        if (timeout_ns > 0) {
            const uint64_t spent = mb_vk_now_ns() - t0;
            if (spent >= (uint64_t)timeout_ns) return MB_STATUS_TIMEOUT;
            wait = (uint64_t)timeout_ns - spent;
        }
        /* On a GPU, spin politely for a while first (requests take tens of
         * microseconds and up; a fence wait's wake-up costs about as
         * much); then, and always on a CPU device, sleep in the driver. */
        if (be->spin && mb_vk_now_ns() - t0 < MB_VK_SPIN_NS) {
            sched_yield();
            continue;
        }
        const VkResult res = vkWaitForFences(be->ctx.dev, n, fences, VK_FALSE, wait);
        if (res == VK_TIMEOUT) return MB_STATUS_TIMEOUT;
        if (res == VK_ERROR_DEVICE_LOST) be->ctx.lost = 1;
        else if (res != VK_SUCCESS) return mb_vk_fail(&be->ctx, "waiting for a request", res);
    }
}

mb_status mb_vk_fetch(void *state, uint64_t tag, void *out)
{
    mb_vk_backend *be = state;
    if (!be) return MB_STATUS_INVALID_ARG;
    for (unsigned i = 0; i < be->max_inflight; i++) {
        mb_vk_req *r = &be->reqs[i];
        if (!r->used || r->tag != tag) continue;
        if (!r->done) return MB_STATUS_AGAIN;
        if (r->out_bytes) {
            if (!out) return MB_STATUS_INVALID_ARG;
            memcpy(out, r->h_out.map, r->out_bytes);
        }
        r->used = 0;
        return MB_STATUS_OK;
    }
    return MB_STATUS_INVALID_ARG;
}

mb_status mb_vk_reqs_wait(mb_vk_backend *be)
{
    VkFence fences[MB_BACKEND_MAX_INFLIGHT];
    uint32_t n = 0;
    for (unsigned i = 0; i < be->max_inflight; i++)
        if (be->reqs[i].used && !be->reqs[i].done) fences[n++] = be->reqs[i].fence;
    if (n == 0) return MB_STATUS_OK;
    const VkResult res = vkWaitForFences(be->ctx.dev, n, fences, VK_TRUE, UINT64_MAX);
    return res == VK_SUCCESS ? MB_STATUS_OK : mb_vk_fail(&be->ctx, "waiting for requests", res);
}
