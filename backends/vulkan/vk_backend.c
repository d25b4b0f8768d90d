/* The Vulkan backend's function table: open (device, command pool, slot
 * table, upload ring), close and capabilities, and the environment knobs:
 * MB_VULKAN_PATH (gemv, gemm: force a path), MB_VULKAN_HOST_IMPORT (0: never
 * read registered host memory in place; 1, the default: from
 * MB_VK_IMPORT_MIN_BYTES of activations; always: every request, for tests),
 * MB_VULKAN_COOPMAT (the tiled path's GEMMs on matrix units: auto, the
 * default, takes moe_gemm_cm2 (VK_NV_cooperative_matrix2, workgroup-scope
 * matrices) where the device has it and the build has the shader; 2
 * requires it; 1 requires moe_gemm_coopmat (VK_NV_cooperative_matrix
 * 16x16x16 fragments, slower than the portable f32 tiles on the H100: 129
 * against 94 ms for Mixtral's experts at 4096 tokens); 0 never; a
 * requirement the device cannot meet fails open with DEVICE and the reason
 * on stderr), MB_VULKAN_HIDDEN (16: the cooperative-matrix path keeps only the
 * high f16 half of the hidden row h, one MMA instead of two in the down
 * product, as MB_CUDA_HIDDEN=16 does on the CUDA backend) and
 * MB_VULKAN_CM2_BF16 (bf16 weights on bf16 cooperative matrices,
 * moe_gemm_cm2_bf16: by default where the build, device and driver have
 * them, else moe_gemm_cm2's f16 decode; 0: never; 1: required),
 * MB_VULKAN_CM2_TILE (BMxBNxBK, moe_gemm_cm2's grouped rows, output
 * columns and K step a tile: 128x128x64 by default, the fastest measured
 * on the H100), MB_VULKAN_CM2_DOWN (BNxBK: the down product's own columns
 * and K step, the same BM: 256x32 by default, 4% faster than 128x64 there),
 * MB_VULKAN_CM2_THREADS (its workgroup: 128, 256 (the default) or 512
 * invocations, where the driver lists such a configuration),
 * MB_VULKAN_CM2_KSPEC (K and N fixed in each GEMM pipeline, one pipeline a
 * model shape: on by default, 20% faster GEMMs on the H100; 0: read from
 * the push constants, one pipeline for every shape), MB_VULKAN_PROFILE (1: each dispatch of
 * a request timed on the device, a table on stderr at close),
 * MB_VULKAN_VERBOSE (1: one-line notes: which GEMM the tiled path takes and
 * why, and when host memory import is unavailable or fails). Weights are in vk_weights.c,
 * registered host memory in vk_host.c, a request's path and commands in vk_record.c, requests in
 * vk_run.c, the device helpers in vk_device.c, the arithmetic in kernels/vulkan/. */
#include <stdlib.h>
#include <string.h>

#include "backends/vulkan/vk_internal.h"
#include "kernels/vulkan/spirv.h"

/* MB_VULKAN_PROFILE's table on stderr: each timed dispatch's mean device
 * time (from the previous stamp: the first dispatch's includes the copy
 * in), by its place in the request and its shader. */
static void mb_vk_prof_print(const mb_vk_backend *be)
{
    if (!be->profile || !be->prof_requests) return;
    fprintf(stderr, "vulkan:%d profile: %llu requests timed dispatch by dispatch\n", be->device,
            (unsigned long long)be->prof_requests);
    fprintf(stderr, "  #  %-22s %8s %12s\n", "shader", "calls", "mean_us");
    for (uint32_t i = 0; i < be->n_prof; i++)
        fprintf(stderr, "  %-2u %-22s %8llu %12.1f\n", be->prof[i].index,
                be->prof[i].name ? be->prof[i].name : "(copies after)", (unsigned long long)be->prof[i].calls,
                (double)be->prof[i].ns / 1e3 / (double)be->prof[i].calls);
}

/* Whether v is a power of two in [lo, hi]: a tile size the knobs take. */
static int mb_vk_pow2_in(unsigned v, unsigned lo, unsigned hi)
{
    return v >= lo && v <= hi && (v & (v - 1)) == 0;
}

/* Whether the driver builds shader (moe_gemm_cm2 or its bf16 form) for the
 * gate/up tile as requests do, K and N left to the push constants: a
 * driver can list cooperative_matrix2 and still fail to compile it. One
 * build a shader (seconds on NVIDIA's driver): the tiles' fit to the
 * device's workgroup configurations was checked in mb_vk_ctx_init, down's
 * included, and down is the same shader with other constants. */
static int mb_vk_cm2_builds(mb_vk_backend *be, const char *shader)
{
    const uint32_t spec[MB_VK_SPECS] = {MB_DTYPE_BF16, 1,          1,          1,
                                        be->cm2_bn,    be->cm2_bk, be->cm2_bm, be->cm2_threads};
    VkPipeline probe;
    return mb_vk_pipeline_get(&be->ctx, shader, spec, &probe) == MB_STATUS_OK;
}

static void mb_vk_close(void *state)
{
    mb_vk_backend *be = state;
    if (!be) return;
    mb_vk_prof_print(be);
    mb_vk_ctx *ctx = &be->ctx;
    if (ctx->dev) {
        /* Abandon whatever is in flight: wait for the device, then free. */
        vkDeviceWaitIdle(ctx->dev);
        for (unsigned i = 0; i < MB_BACKEND_MAX_INFLIGHT; i++)
            mb_vk_req_free(be, &be->reqs[i]);
        mb_vk_host_free(be);
        if (be->fetch_fence) vkDestroyFence(ctx->dev, be->fetch_fence, NULL);
        for (int i = 0; i < MB_VK_UPLOAD_BUFS; i++) {
            mb_vk_buffer_destroy(ctx, &be->up[i].stage);
            if (be->up[i].fence) vkDestroyFence(ctx->dev, be->up[i].fence, NULL);
        }
        mb_vk_weights_free(be);
        mb_vk_buffer_destroy(ctx, &be->slots);
        if (be->pool) vkDestroyCommandPool(ctx->dev, be->pool, NULL);
    }
    mb_vk_ctx_fini(ctx);
    free(be->slot_mem);
    free(be->layer_experts);
    free(be->host_eidx);
    free(be->plan);
    mb_route_table_fini(&be->table);
    free(be);
}

/* Command pool, upload ring, and the slot table zeroed on the device. */
static mb_status mb_vk_open_resources(mb_vk_backend *be)
{
    mb_vk_ctx *ctx = &be->ctx;
    const VkCommandPoolCreateInfo pci = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                         .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                                         .queueFamilyIndex = ctx->queue_family};
    VkResult r = vkCreateCommandPool(ctx->dev, &pci, NULL, &be->pool);
    if (r != VK_SUCCESS) return mb_vk_fail(ctx, "vkCreateCommandPool", r);
    const VkFenceCreateInfo ffi = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    r = vkCreateFence(ctx->dev, &ffi, NULL, &be->fetch_fence);
    if (r != VK_SUCCESS) {
        be->fetch_fence = VK_NULL_HANDLE;
        return mb_vk_fail(ctx, "vkCreateFence", r);
    }
    mb_status st = mb_vk_buffer_create(ctx, (VkDeviceSize)be->max_slots * sizeof(mb_kvk_slot), MB_VK_MEM_DEVICE, 0,
                                       &be->slots);
    if (st != MB_STATUS_OK) return st;
    for (int i = 0; i < MB_VK_UPLOAD_BUFS; i++) {
        const VkCommandBufferAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                                .commandPool = be->pool,
                                                .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                                .commandBufferCount = 1};
        const VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
        r = vkAllocateCommandBuffers(ctx->dev, &ai, &be->up[i].cb);
        if (r == VK_SUCCESS) r = vkCreateFence(ctx->dev, &fci, NULL, &be->up[i].fence);
        if (r != VK_SUCCESS) return mb_vk_fail(ctx, "upload ring", r);
    }
    /* The slot table starts empty (all addresses zero), through the ring's
     * first command buffer. */
    mb_vk_upload_buf *u = &be->up[0];
    const VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                         .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    r = vkBeginCommandBuffer(u->cb, &bi);
    if (r != VK_SUCCESS) return mb_vk_fail(ctx, "vkBeginCommandBuffer", r);
    vkCmdFillBuffer(u->cb, be->slots.buf, 0, VK_WHOLE_SIZE, 0);
    u->recording = 1;
    return MB_STATUS_OK;
}

static mb_status mb_vk_open(const mb_backend_config *cfg, void **state)
{
    if (!cfg || !state) return MB_STATUS_INVALID_ARG;
    const mb_backend_gpu_options *opt = cfg->options;
    mb_backend_gpu_options o = {.staging_bytes = MB_VK_DEFAULT_STAGING, .max_inflight = 2, .progress = 1};
    if (opt) {
        if (opt->staging_bytes) o.staging_bytes = opt->staging_bytes;
        if (opt->max_inflight) o.max_inflight = opt->max_inflight;
        o.progress = opt->progress;
    }
    if (o.max_inflight > MB_BACKEND_MAX_INFLIGHT || o.staging_bytes < 4096) return MB_STATUS_CONFIG;
    const uint32_t max_slots = cfg->max_slots ? cfg->max_slots : MB_VK_DEFAULT_SLOTS;
    if (max_slots > MB_VK_MAX_SLOTS) return MB_STATUS_CONFIG;

    mb_vk_backend *be = calloc(1, sizeof *be);
    if (!be) return MB_STATUS_NOMEM;
    be->device = cfg->device < 0 ? 0 : cfg->device;
    be->max_slots = max_slots;
    be->max_inflight = o.max_inflight;
    be->staging_max = o.staging_bytes;
    be->progress = o.progress;
    be->upload_status = MB_STATUS_OK;
    const char *path = getenv("MB_VULKAN_PATH");
    be->path = path && !strcmp(path, "gemv") ? 1 : path && !strcmp(path, "gemm") ? 2 : 0;
    const char *imp = getenv("MB_VULKAN_HOST_IMPORT");
    be->host_import = imp && imp[0] == '0'             ? MB_VK_IMPORT_OFF
                      : imp && !strcmp(imp, "always") ? MB_VK_IMPORT_ALWAYS
                                                      : MB_VK_IMPORT_AUTO;
    const char *verbose = getenv("MB_VULKAN_VERBOSE");
    be->verbose = verbose && verbose[0] && verbose[0] != '0';
    const char *cm = getenv("MB_VULKAN_COOPMAT");
    const int coopmat = cm && cm[0] == '0' ? 0 : cm && cm[0] == '1' ? 1 : cm && cm[0] == '2' ? 2 : -1;
    const char *hidden = getenv("MB_VULKAN_HIDDEN");
    be->hidden16 = hidden && !strcmp(hidden, "16");
    /* moe_gemm_cm2's tile, BMxBNxBK: 128x128x64, the fastest measured on
     * the H100 (1.4-1.9x 64x128x32's; bench/notes/vulkan-expert.md), its
     * parity checked there in both forms. */
    be->cm2_bm = 128;
    be->cm2_bn = 128;
    be->cm2_bk = 64;
    const char *prof = getenv("MB_VULKAN_PROFILE");
    be->profile = prof && prof[0] && prof[0] != '0';
    const char *tile = getenv("MB_VULKAN_CM2_TILE");
    unsigned tbm = 0, tbn = 0, tbk = 0;
    if (tile && sscanf(tile, "%ux%ux%u", &tbm, &tbn, &tbk) == 3 && mb_vk_pow2_in(tbm, 64, 256) &&
        mb_vk_pow2_in(tbn, 64, 256) && mb_vk_pow2_in(tbk, 16, 128)) {
        be->cm2_bm = tbm;
        be->cm2_bn = tbn;
        be->cm2_bk = tbk;
    } else if (tile) {
        fprintf(stderr,
                "vulkan backend: MB_VULKAN_CM2_TILE='%s' ignored (BMxBNxBK: BM 64, 128 or 256; BN 64, 128 or 256; "
                "BK 16, 32, 64 or 128)\n",
                tile);
    }
    /* The down product's own columns and K step (one accumulator where
     * gate/up holds two); its rows are the tile table's, BM. 256x32: down
     * 9.3 ms against 128x64's 9.6 (Mixtral, 4096 tokens, H100). */
    be->cm2_bn2 = 256;
    be->cm2_bk2 = 32;
    be->cm2_threads = 256;
    const char *thr = getenv("MB_VULKAN_CM2_THREADS");
    if (thr && (!strcmp(thr, "128") || !strcmp(thr, "256") || !strcmp(thr, "512")))
        be->cm2_threads = (uint32_t)atoi(thr);
    else if (thr)
        fprintf(stderr, "vulkan backend: MB_VULKAN_CM2_THREADS='%s' ignored (128, 256 or 512)\n",
                thr);
    /* K and N as specialisation constants: the K loop's trip count and
     * the tensor strides known to the driver's compiler took gate/up from
     * 9.7 to 7.9 ms and down from 9.3 to 7.6 (Mixtral, 4096 tokens, H100),
     * for one pipeline pair a model shape, made on its first request. */
    const char *kspec = getenv("MB_VULKAN_CM2_KSPEC");
    be->cm2_kspec = !(kspec && kspec[0] == '0');
    const char *down = getenv("MB_VULKAN_CM2_DOWN");
    if (down && sscanf(down, "%ux%u", &tbn, &tbk) == 2 && mb_vk_pow2_in(tbn, 64, 256) &&
        mb_vk_pow2_in(tbk, 16, 128)) {
        be->cm2_bn2 = tbn;
        be->cm2_bk2 = tbk;
    } else if (down) {
        fprintf(stderr, "vulkan backend: MB_VULKAN_CM2_DOWN='%s' ignored (BNxBK: BN 64, 128 or 256; BK 16, 32, 64 or "
                        "128)\n", down);
    }
    mb_status st = mb_route_table_init(&be->table, max_slots);
    if (st != MB_STATUS_OK) {
        free(be);
        return st;
    }
    be->slot_mem = calloc(max_slots, sizeof *be->slot_mem);
    be->host_eidx = malloc(max_slots * sizeof *be->host_eidx);
    if (!be->slot_mem || !be->host_eidx) {
        mb_vk_close(be);
        return MB_STATUS_NOMEM;
    }
    memset(be->host_eidx, 0xff, max_slots * sizeof *be->host_eidx); /* all -1 */
    uint32_t cm2_tile[6] = {be->cm2_bm,  be->cm2_bn,  be->cm2_bk,
                            be->cm2_bn2, be->cm2_bk2, be->cm2_threads};
    /* bf16 matrices for bf16 weights where the build, device and driver
     * have them (faster than moe_gemm_cm2's f16 decode: 0.80x against 0.67x
     * of the CUDA backend, Mixtral at 4096 tokens on the H100); 0 never
     * (the decode), 1 required. */
    const char *bf = getenv("MB_VULKAN_CM2_BF16");
    const int need_bf16 = bf && bf[0] == '1', want_bf16 = !(bf && bf[0] == '0');
    st = mb_vk_ctx_init(&be->ctx, be->device, coopmat, cm2_tile, !down, want_bf16);
    be->cm2_bn2 = cm2_tile[3]; /* the default down tile, where the device lacks it: gate/up's */
    be->cm2_bk2 = cm2_tile[4];
    if (st == MB_STATUS_OK && be->ctx.has_coopmat == 2) {
        /* A driver that lists the extension but cannot build the shader:
         * the portable tiles under auto, an error where cm2 is required. */
        if (!mb_vk_cm2_builds(be, "moe_gemm_cm2")) {
            fprintf(stderr, "vulkan backend: device %d's driver cannot build moe_gemm_cm2%s\n", be->device,
                    coopmat == 2 ? "" : ": the prefill GEMMs stay portable");
            be->ctx.has_coopmat = 0;
            be->ctx.cm2_bf16 = 0;
            be->ctx.coopmat_why = "the driver could not build moe_gemm_cm2";
            if (coopmat == 2) st = MB_STATUS_DEVICE;
        }
    }
    /* bf16 matrices asked for where the build, the device or its driver
     * lacks them: a clear error, as for MB_VULKAN_COOPMAT=2. */
    if (st == MB_STATUS_OK && need_bf16 && be->ctx.has_coopmat != 2) {
        fprintf(stderr, "vulkan backend: MB_VULKAN_CM2_BF16=1 but device %d's prefill GEMMs are not on "
                        "cooperative_matrix2: %s\n", be->device,
                be->ctx.has_coopmat ? "MB_VULKAN_COOPMAT=1 (moe_gemm_coopmat)"
                                    : be->ctx.coopmat_why ? be->ctx.coopmat_why : "?");
        st = MB_STATUS_DEVICE;
    }
    if (st == MB_STATUS_OK && want_bf16 && be->ctx.has_coopmat == 2) {
        const char *why = !mb_kvk_spirv_find("moe_gemm_cm2_bf16")
                              ? "moe_gemm_cm2_bf16 is not built (MB_GLSLANG "
                                "without GL_EXT_bfloat16)"
                          : !be->ctx.cm2_bf16
                              ? "no bf16 cooperative matrices (VK_KHR_shader_bfloat16) for the tile"
                          : !mb_vk_cm2_builds(be, "moe_gemm_cm2_bf16")
                              ? "the driver cannot build moe_gemm_cm2_bf16"
                              : NULL;
        if (why && need_bf16) {
            fprintf(stderr, "vulkan backend: MB_VULKAN_CM2_BF16=1 but device %d: %s\n", be->device,
                    why);
            st = MB_STATUS_DEVICE;
        } else if (why) {
            /* The default: bf16 weights take moe_gemm_cm2's f16 decode. */
            be->ctx.cm2_bf16 = 0;
            if (be->verbose) fprintf(stderr, "vulkan:%d: no bf16 matrices: %s\n", be->device, why);
        }
    }
    if (st == MB_STATUS_OK) {
        mb_vk_describe(be->ctx.phys, be->device_name, sizeof be->device_name, NULL);
        char note[384];
        if (be->ctx.has_coopmat)
            snprintf(note, sizeof note,
                     "prefill GEMMs on cooperative matrices (%s, 16-bit -> f32, hidden row %s) for f16/bf16 weights "
                     "with d_model and d_ff multiples of 8; moe_gemm (portable f32) otherwise",
                     be->ctx.has_coopmat != 2 ? "moe_gemm_coopmat, VK_NV_cooperative_matrix 16x16x16"
                     : be->ctx.cm2_bf16
                         ? "moe_gemm_cm2, VK_NV_cooperative_matrix2 workgroup tiles, bf16 matrices for bf16 weights"
                         : "moe_gemm_cm2, VK_NV_cooperative_matrix2 workgroup tiles",
                     be->hidden16 ? "high half only" : "high + low halves");
        else
            snprintf(note, sizeof note, "prefill GEMMs portable (moe_gemm, f32): no cooperative matrices: %s",
                     be->ctx.coopmat_why ? be->ctx.coopmat_why : "?");
        mb_vk_note(be, note);
        if (be->verbose && be->ctx.has_coopmat == 2) mb_vk_cm2_configs_print(&be->ctx, be->device);
        be->gemv_rows = MB_KVK_GEMV_THREADS / be->ctx.subgroup_size;
        /* On a CPU device (lavapipe) a spinning poll takes a core from the
         * shaders; on a GPU it saves the driver's wake-up latency. */
        be->spin = be->ctx.props.deviceType != VK_PHYSICAL_DEVICE_TYPE_CPU;
        st = mb_vk_open_resources(be);
    }
    if (st != MB_STATUS_OK) {
        mb_vk_close(be);
        return st;
    }
    *state = be;
    return MB_STATUS_OK;
}

static mb_status mb_vk_caps(void *state, mb_backend_caps *caps)
{
    mb_vk_backend *be = state;
    if (!be || !caps) return MB_STATUS_INVALID_ARG;
    uint64_t total = 0, avail = 0;
    mb_vk_memory(&be->ctx, &total, &avail);
    mb_backend_gpu_caps(caps, "vulkan", be->device_name, total, avail, be->max_slots,
                        be->max_inflight, be->staging_max);
    return MB_STATUS_OK;
}

const mb_backend_ops mb_backend_vulkan_ops = {
    .abi_version = MB_BACKEND_ABI_VERSION,
    .name = "vulkan",
    .open = mb_vk_open,
    .close = mb_vk_close,
    .caps = mb_vk_caps,
    .load_expert = mb_vk_load_expert,
    .load_finish = mb_vk_load_finish,
    .reserve_layer = mb_vk_reserve_layer,
    .register_host = mb_vk_register_host,
    .unregister_host = mb_vk_unregister_host,
    .run = NULL,
    .submit = mb_vk_submit,
    .poll = mb_vk_poll,
    .fetch = mb_vk_fetch,
};
