/* Requests on the Vulkan backend. submit validates the pairs on the host
 * against the slot table, picks a free in-flight entry, writes the inputs
 * where the device reads them (device-local host-mapped memory for small
 * GEMV requests, else host-visible staging that the device copies; the
 * activations stay in place when they lie in registered host memory the
 * device imported) and records the commands (vk_record.c); one queue
 * submission signals the entry's timeline semaphore twice: once the
 * inputs were read (CONSUMED: at once unless the activations are
 * imported, whose memory the caller may reuse only after the device copied
 * them) and once done. poll reports both from the semaphores, in whatever
 * order they come; fetch copies the result out of host-visible memory, or
 * has the device copy it straight into registered host memory. Nothing here
 * waits on the device except poll when asked to, fetch's copy, and buffer
 * growth of an idle entry. */
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "backends/vulkan/vk_internal.h"

#define MB_VK_SPIN_NS 2000000ull /* poll's spinning before it sleeps, on a GPU */

void mb_vk_req_free(mb_vk_backend *be, mb_vk_req *r)
{
    mb_vk_ctx *ctx = &be->ctx;
    if (ctx->dev) {
        mb_vk_buffer_destroy(ctx, &r->h_in);
        mb_vk_buffer_destroy(ctx, &r->d_in);
        mb_vk_buffer_destroy(ctx, &r->d_out);
        mb_vk_buffer_destroy(ctx, &r->h_out);
        mb_vk_buffer_destroy(ctx, &r->direct);
        mb_vk_buffer_destroy(ctx, &r->fixed);
        mb_vk_buffer_destroy(ctx, &r->ws.b);
        if (r->queries) vkDestroyQueryPool(ctx->dev, r->queries, NULL);
        if (r->sem) vkDestroySemaphore(ctx->dev, r->sem, NULL);
        VkCommandBuffer cbs[3] = {r->cb, r->cb_in, r->cb_out};
        for (int i = 0; i < 3; i++)
            if (cbs[i]) vkFreeCommandBuffers(ctx->dev, be->pool, 1, &cbs[i]);
    }
    memset(r, 0, sizeof *r);
}

/* Creates an entry's command buffers, semaphore, timestamps and fixed
 * workspace on first use. */
static mb_status mb_vk_req_init(mb_vk_backend *be, mb_vk_req *r)
{
    if (r->sem) return MB_STATUS_OK;
    mb_vk_ctx *ctx = &be->ctx;
    const VkCommandBufferAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                            .commandPool = be->pool,
                                            .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                            .commandBufferCount = 1};
    const VkSemaphoreTypeCreateInfo sti = {.sType = VK_STRUCTURE_TYPE_SEMAPHORE_TYPE_CREATE_INFO,
                                           .semaphoreType = VK_SEMAPHORE_TYPE_TIMELINE};
    const VkSemaphoreCreateInfo sci = {.sType = VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO, .pNext = &sti};
    VkResult res = vkAllocateCommandBuffers(ctx->dev, &ai, &r->cb);
    if (res != VK_SUCCESS) r->cb = VK_NULL_HANDLE;
    if (res == VK_SUCCESS && (res = vkAllocateCommandBuffers(ctx->dev, &ai, &r->cb_in)) != VK_SUCCESS)
        r->cb_in = VK_NULL_HANDLE;
    if (res == VK_SUCCESS && (res = vkAllocateCommandBuffers(ctx->dev, &ai, &r->cb_out)) != VK_SUCCESS)
        r->cb_out = VK_NULL_HANDLE;
    if (res == VK_SUCCESS && (res = vkCreateSemaphore(ctx->dev, &sci, NULL, &r->sem)) != VK_SUCCESS)
        r->sem = VK_NULL_HANDLE;
    if (res == VK_SUCCESS && ctx->timestamp_bits) {
        const VkQueryPoolCreateInfo qci = {.sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
                                           .queryType = VK_QUERY_TYPE_TIMESTAMP,
                                           .queryCount = be->profile ? 2 + MB_VK_PROF_STAMPS : 2};
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

/* Grows b (of idle entry r) to at least bytes, in powers of two. */
static mb_status mb_vk_grow(mb_vk_ctx *ctx, mb_vk_req *r, mb_vk_buffer *b, mb_vk_mem_kind kind, size_t bytes)
{
    if (b->buf && b->bytes >= bytes) return MB_STATUS_OK;
    r->gen++; /* recorded commands name the old buffer */
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
static mb_status mb_vk_ws_reserve(mb_vk_ctx *ctx, mb_vk_req *r, size_t nt, size_t np, size_t dm, size_t dff)
{
    mb_vk_ws *ws = &r->ws;
    np = np ? np : 1;
    const size_t x = nt * dm * 4, h = np * dff * 4, y = np * dm * 4;
    if (ws->b.buf && nt <= ws->cap_tokens && np <= ws->cap_pairs && x <= ws->cap_x && h <= ws->cap_h &&
        y <= ws->cap_y)
        return MB_STATUS_OK;
    r->gen++;
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

/* The buffers of entry r for pl, sized; decides whether the inputs go
 * straight into device-local memory (pl->in_direct). */
static mb_status mb_vk_req_buffers(mb_vk_backend *be, mb_vk_req *r, mb_vk_plan *pl)
{
    mb_vk_ctx *ctx = &be->ctx;
    const mb_proto_expert_req *req = pl->req;
    /* Inputs are read as 32-bit words: a 16-bit tail needs the word's room. */
    const size_t in_cap = pl->in_bytes + 4, out_cap = ((pl->out_bytes + 3) & ~(size_t)3) + 4;
    mb_status st;
    pl->in_direct = !pl->gemm && !pl->src && !r->direct_none && in_cap <= MB_VK_DIRECT_BYTES;
    if (pl->in_direct && !r->direct.buf) {
        st = mb_vk_buffer_create(ctx, MB_VK_DIRECT_BYTES, MB_VK_MEM_DIRECT, 0, &r->direct);
        if (st == MB_STATUS_UNSUPPORTED || st == MB_STATUS_NOMEM) {
            r->direct_none = 1; /* staging and a copy from now on */
            pl->in_direct = 0;
        } else if (st != MB_STATUS_OK) {
            return st;
        }
        r->gen++;
    }
    if (!pl->in_direct && ((st = mb_vk_grow(ctx, r, &r->h_in, MB_VK_MEM_UPLOAD, in_cap)) != MB_STATUS_OK ||
                           (st = mb_vk_grow(ctx, r, &r->d_in, MB_VK_MEM_DEVICE, in_cap)) != MB_STATUS_OK))
        return st;
    if ((st = mb_vk_grow(ctx, r, &r->d_out, MB_VK_MEM_DEVICE, out_cap)) != MB_STATUS_OK ||
        (st = mb_vk_grow(ctx, r, &r->h_out, MB_VK_MEM_READBACK, out_cap)) != MB_STATUS_OK)
        return st;
    if (req->n_pairs) st = mb_vk_ws_reserve(ctx, r, req->n_tokens, req->n_pairs, req->d_model, pl->d_ff);
    return st;
}

/* Submits r's command buffers: cb_in (imported inputs) signalling the
 * consumed value, then cb signalling done. */
static VkResult mb_vk_req_queue(mb_vk_backend *be, mb_vk_req *r, int imported)
{
    const uint64_t c = r->sem_value + 1, d = r->sem_value + 2;
    const VkTimelineSemaphoreSubmitInfo tc = {.sType = VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO,
                                              .signalSemaphoreValueCount = 1,
                                              .pSignalSemaphoreValues = &c};
    const VkTimelineSemaphoreSubmitInfo td = {.sType = VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO,
                                              .signalSemaphoreValueCount = 1,
                                              .pSignalSemaphoreValues = &d};
    const VkSubmitInfo si[2] = {{.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
                                 .pNext = &tc,
                                 .commandBufferCount = 1,
                                 .pCommandBuffers = &r->cb_in,
                                 .signalSemaphoreCount = 1,
                                 .pSignalSemaphores = &r->sem},
                                {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
                                 .pNext = &td,
                                 .commandBufferCount = 1,
                                 .pCommandBuffers = &r->cb,
                                 .signalSemaphoreCount = 1,
                                 .pSignalSemaphores = &r->sem}};
    const VkResult res = vkQueueSubmit(be->ctx.queue, imported ? 2 : 1, imported ? si : &si[1], VK_NULL_HANDLE);
    if (res == VK_SUCCESS) {
        r->sem_value = d;
        r->sem_consumed = c;
        r->sem_done = d;
    }
    return res;
}

mb_status mb_vk_submit(void *state, uint64_t tag, const mb_proto_expert_req *req)
{
    mb_vk_backend *be = state;
    if (!be || !req) return MB_STATUS_INVALID_ARG;
    if (be->ctx.lost) return MB_STATUS_DEVICE;
    if (!mb_dtype_valid(req->dtype)) return MB_STATUS_BAD_DTYPE;
    mb_vk_plan pl = {.req = req};
    /* One element dtype for all three, or quantized ones (load_expert). */
    mb_status st = mb_route_validate(&be->table, req, &pl.d_ff, pl.wdtype);
    if (st != MB_STATUS_OK) return st;

    mb_vk_req *r = NULL;
    unsigned busy = 0;
    for (unsigned i = 0; i < be->max_inflight; i++) {
        if (be->reqs[i].used) busy++;
        else if (!r) r = &be->reqs[i];
    }
    if (!r || busy >= be->max_inflight) return MB_STATUS_AGAIN;
    if ((st = mb_vk_plan_make(be, &pl)) != MB_STATUS_OK) return st;
    /* Activations in registered host memory are read in place, from a
     * size where that beats the host's copies (or always, for tests). */
    const size_t min = be->host_import == MB_VK_IMPORT_ALWAYS ? 1 : MB_VK_IMPORT_MIN_BYTES;
    if (pl.out_bytes >= min) pl.src = mb_vk_host_find(be, req->act, pl.out_bytes, &pl.src_off);

    mb_vk_ctx *ctx = &be->ctx;
    if ((st = mb_vk_req_init(be, r)) != MB_STATUS_OK || (st = mb_vk_req_buffers(be, r, &pl)) != MB_STATUS_OK)
        return st;
    /* Weights (and slot table entries) recorded so far go first. */
    if ((st = mb_vk_upload_flush(be)) != MB_STATUS_OK) return st;

    /* Without an import the inputs are consumed here: the caller's memory
     * is free once this copy is done. */
    mb_vk_inputs_write(be, &pl, pl.in_direct ? r->direct.map : r->h_in.map);

    VkResult res = mb_vk_record(be, r, &pl);
    if (res == VK_SUCCESS) res = mb_vk_req_queue(be, r, pl.src != NULL);
    if (res != VK_SUCCESS) {
        memset(&r->key, 0, sizeof r->key);
        return mb_vk_fail(ctx, "request submission", res);
    }
    r->fixed_fresh = 0;
    r->used = 1;
    r->consumed_reported = 0;
    r->done = 0;
    r->imported_in = pl.src != NULL;
    r->result_on_device = pl.src != NULL;
    r->status = MB_STATUS_OK;
    r->tag = tag;
    r->seq = be->next_seq++;
    r->out_bytes = pl.out_bytes;
    r->t_submit_ns = mb_vk_now_ns();
    if (pl.src) be->stats.in_imported++;
    else if (pl.in_direct) be->stats.in_direct++;
    else be->stats.in_staged++;
    return MB_STATUS_OK;
}

/* MB_VULKAN_PROFILE: the span since the previous stamp (dispatch index's,
 * or the request's head) into the table entry of (index, name). */
static void mb_vk_prof_add(mb_vk_backend *be, uint32_t index, const char *name, uint64_t ns)
{
    uint32_t i = 0;
    while (i < be->n_prof && (be->prof[i].index != index || be->prof[i].name != name))
        i++;
    if (i == be->n_prof) {
        if (i == sizeof be->prof / sizeof be->prof[0]) return; /* full: dropped */
        be->prof[i].index = index;
        be->prof[i].name = name;
        be->n_prof++;
    }
    be->prof[i].ns += ns;
    be->prof[i].calls++;
}

/* Device time of a finished request: its timestamps, else wall time since
 * submission; with MB_VULKAN_PROFILE, each timed dispatch's share too. */
static uint64_t mb_vk_req_ns(mb_vk_backend *be, const mb_vk_req *r)
{
    uint64_t t[2 + MB_VK_PROF_STAMPS] = {0};
    const uint32_t nq = be->profile ? 2 + r->prof_n : 2;
    if (r->queries && vkGetQueryPoolResults(be->ctx.dev, r->queries, 0, nq, sizeof t, t, sizeof t[0],
                                            VK_QUERY_RESULT_64_BIT) == VK_SUCCESS) {
        const uint32_t bits = be->ctx.timestamp_bits;
        const uint64_t mask = bits >= 64 ? ~0ull : ((1ull << bits) - 1);
        const double per = be->ctx.timestamp_period;
        if (be->profile && r->prof_n) {
            uint64_t prev = t[0];
            for (uint32_t i = 0; i < r->prof_n; i++) {
                mb_vk_prof_add(be, i, r->prof_name[i], (uint64_t)((double)((t[2 + i] - prev) & mask) * per));
                prev = t[2 + i];
            }
            mb_vk_prof_add(be, r->prof_n, NULL, (uint64_t)((double)((t[1] - prev) & mask) * per));
            be->prof_requests++;
        }
        return (uint64_t)((double)((t[1] - t[0]) & mask) * per);
    }
    return mb_vk_now_ns() - r->t_submit_ns;
}

/* The value of r's semaphore; an error once the device is lost. */
static VkResult mb_vk_req_value(const mb_vk_backend *be, const mb_vk_req *r, uint64_t *v)
{
    if (be->ctx.lost) return VK_ERROR_DEVICE_LOST;
    return vkGetSemaphoreCounterValue(be->ctx.dev, r->sem, v);
}

/* One pass over the entries: the oldest CONSUMED to report (at once for
 * staged inputs, once the device copied imported ones, or when the device
 * is lost and reads nothing more), else the oldest finished request.
 * Returns TIMEOUT when there is nothing to say. */
static mb_status mb_vk_poll_once(mb_vk_backend *be, mb_backend_event *ev)
{
    mb_vk_req *pick = NULL;
    for (unsigned i = 0; i < be->max_inflight; i++) {
        mb_vk_req *r = &be->reqs[i];
        if (!r->used || r->consumed_reported || (pick && r->seq > pick->seq)) continue;
        uint64_t v = 0;
        if (r->imported_in && mb_vk_req_value(be, r, &v) == VK_SUCCESS && v < r->sem_consumed) continue;
        pick = r;
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
        uint64_t v = 0;
        const VkResult res = mb_vk_req_value(be, r, &v);
        if (res == VK_SUCCESS && v < r->sem_done) continue;
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

/* Waits up to wait_ns for the next value any entry waits for (all of them
 * with all != 0): an imported request's consumed value, else its done
 * value. OK also when there is nothing to wait for. */
static mb_status mb_vk_wait(mb_vk_backend *be, uint64_t wait_ns, int all)
{
    VkSemaphore sems[MB_BACKEND_MAX_INFLIGHT];
    uint64_t values[MB_BACKEND_MAX_INFLIGHT];
    uint32_t n = 0;
    for (unsigned i = 0; i < be->max_inflight; i++) {
        const mb_vk_req *r = &be->reqs[i];
        if (!r->used || r->done) continue;
        sems[n] = r->sem;
        values[n++] = !all && r->imported_in && !r->consumed_reported ? r->sem_consumed : r->sem_done;
    }
    if (n == 0) return MB_STATUS_OK;
    if (be->ctx.lost) return MB_STATUS_DEVICE;
    const VkSemaphoreWaitInfo wi = {.sType = VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO,
                                    .flags = all ? 0 : VK_SEMAPHORE_WAIT_ANY_BIT,
                                    .semaphoreCount = n,
                                    .pSemaphores = sems,
                                    .pValues = values};
    const VkResult res = vkWaitSemaphores(be->ctx.dev, &wi, wait_ns);
    if (res == VK_SUCCESS) return MB_STATUS_OK;
    if (res == VK_TIMEOUT) return MB_STATUS_TIMEOUT;
    return mb_vk_fail(&be->ctx, "waiting for a request", res);
}

mb_status mb_vk_poll(void *state, int64_t timeout_ns, mb_backend_event *ev)
{
    mb_vk_backend *be = state;
    if (!be || !ev) return MB_STATUS_INVALID_ARG;
    const uint64_t t0 = mb_vk_now_ns();
    for (;;) {
        mb_status st = mb_vk_poll_once(be, ev);
        if (st != MB_STATUS_TIMEOUT) return st;
        uint32_t n = 0;
        for (unsigned i = 0; i < be->max_inflight; i++)
            n += be->reqs[i].used && !be->reqs[i].done;
        if (n == 0 || timeout_ns == 0) return MB_STATUS_TIMEOUT;
        uint64_t wait = UINT64_MAX;
        if (timeout_ns > 0) {
            const uint64_t spent = mb_vk_now_ns() - t0;
            if (spent >= (uint64_t)timeout_ns) return MB_STATUS_TIMEOUT;
            wait = (uint64_t)timeout_ns - spent;
        }
        /* On a GPU, spin politely for a while first (requests take tens of
         * microseconds and up; a wait's wake-up costs about as much); then,
         * and always on a CPU device, sleep in the driver. */
        if (be->spin && mb_vk_now_ns() - t0 < MB_VK_SPIN_NS) {
            sched_yield();
            continue;
        }
        st = mb_vk_wait(be, wait, 0);
        if (st == MB_STATUS_TIMEOUT) return st;
        /* A lost device: the next pass reports the requests as failed. */
        if (st != MB_STATUS_OK && !be->ctx.lost) return st;
    }
}

/* The result of r, left in device memory, into out: copied by the device
 * straight into registered host memory when out lies in an imported
 * region, else through readback staging. Blocks until the copy is done. */
static mb_status mb_vk_fetch_device(mb_vk_backend *be, mb_vk_req *r, void *out)
{
    mb_vk_ctx *ctx = &be->ctx;
    if (ctx->lost) return MB_STATUS_DEVICE;
    size_t off = 0;
    const mb_vk_host_region *h = mb_vk_host_find(be, out, r->out_bytes, &off);
    const VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                         .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    VkResult res = vkResetCommandBuffer(r->cb_out, 0);
    if (res == VK_SUCCESS) res = vkBeginCommandBuffer(r->cb_out, &bi);
    if (res != VK_SUCCESS) return mb_vk_fail(ctx, "fetching a result", res);
    const VkBufferCopy c = {.srcOffset = 0, .dstOffset = h ? off : 0, .size = r->out_bytes};
    vkCmdCopyBuffer(r->cb_out, r->d_out.buf, h ? h->buf.buf : r->h_out.buf, 1, &c);
    mb_vk_barrier(r->cb_out); /* the host (or the peer) reads it next */
    res = vkEndCommandBuffer(r->cb_out);
    const VkSubmitInfo si = {
        .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &r->cb_out};
    if (res == VK_SUCCESS) res = vkQueueSubmit(ctx->queue, 1, &si, be->fetch_fence);
    if (res == VK_SUCCESS) res = vkWaitForFences(ctx->dev, 1, &be->fetch_fence, VK_TRUE, UINT64_MAX);
    if (res == VK_SUCCESS) res = vkResetFences(ctx->dev, 1, &be->fetch_fence);
    if (res != VK_SUCCESS) return mb_vk_fail(ctx, "fetching a result", res);
    if (h) {
        be->stats.out_imported++;
    } else {
        memcpy(out, r->h_out.map, r->out_bytes);
        be->stats.out_staged++;
    }
    return MB_STATUS_OK;
}

mb_status mb_vk_fetch(void *state, uint64_t tag, void *out)
{
    mb_vk_backend *be = state;
    if (!be) return MB_STATUS_INVALID_ARG;
    for (unsigned i = 0; i < be->max_inflight; i++) {
        mb_vk_req *r = &be->reqs[i];
        if (!r->used || r->tag != tag) continue;
        if (!r->done) return MB_STATUS_AGAIN;
        if (r->out_bytes && !out) return MB_STATUS_INVALID_ARG;
        mb_status st = MB_STATUS_OK;
        if (r->out_bytes && r->result_on_device) {
            st = mb_vk_fetch_device(be, r, out);
        } else if (r->out_bytes) {
            memcpy(out, r->h_out.map, r->out_bytes);
            be->stats.out_staged++;
        }
        r->used = 0; /* forgotten even when the copy failed: the device is gone */
        return st;
    }
    return MB_STATUS_INVALID_ARG;
}

mb_status mb_vk_reqs_wait(mb_vk_backend *be)
{
    return mb_vk_wait(be, UINT64_MAX, 1);
}
