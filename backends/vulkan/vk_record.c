/* A request's path and its commands on the Vulkan backend. Prefill-sized
 * requests take the tiled path: the device groups the pairs (moe_route,
 * which sizes the indirect dispatches after it) and converts the
 * activations once. Decode-sized requests take the GEMV path with as few
 * dispatches and barriers as the arithmetic allows, since their fixed cost
 * is what shows: the host groups the pairs into the inputs (a counting sort
 * over a few pairs costs less than a dispatch and its barrier), moe_gemv
 * reads the payload directly, and up to MB_VK_FUSED_MAX_TOKENS tokens the
 * down product and the combine are one dispatch writing the result straight
 * into host-visible memory. An entry's main command buffer is recorded once
 * per shape and reused while its key holds. kernels/vulkan/moe.h describes
 * the shaders. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "backends/vulkan/vk_internal.h"

#define MB_VK_MAX_GROUPS 65535u

/* The fixed part of an entry's workspace: slot_cnt, slot_eidx, args. */
size_t mb_vk_args_off(const mb_vk_backend *be)
{
    return MB_VK_ALIGN((size_t)be->max_slots * 8);
}

static uint32_t mb_vk_groups(size_t n, uint32_t per)
{
    const size_t g = (n + per - 1) / per;
    return g < 1 ? 1 : g > MB_VK_MAX_GROUPS ? MB_VK_MAX_GROUPS : (uint32_t)g;
}

static void mb_vk_count_barrier(VkCommandBuffer cb, mb_vk_rec_count *n)
{
    mb_vk_barrier(cb);
    n->barriers++;
}

/* One dispatch with its push constants, then a barrier. */
static void mb_vk_dispatch(mb_vk_backend *be, VkCommandBuffer cb, mb_vk_rec_count *n, VkPipeline pl, const void *pc,
                           uint32_t pc_bytes, uint32_t gx, uint32_t gy, const VkBuffer *indirect,
                           VkDeviceSize indirect_off)
{
    vkCmdBindPipeline(cb, VK_PIPELINE_BIND_POINT_COMPUTE, pl);
    vkCmdPushConstants(cb, be->ctx.layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, pc_bytes, pc);
    if (indirect)
        vkCmdDispatchIndirect(cb, *indirect, indirect_off);
    else
        vkCmdDispatch(cb, gx, gy, 1);
    mb_vk_req *r = be->rec_req; /* MB_VULKAN_PROFILE: this dispatch's end */
    if (r && n->dispatches < MB_VK_PROF_STAMPS) {
        vkCmdWriteTimestamp(cb, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, r->queries, 2 + n->dispatches);
        r->prof_name[n->dispatches] = mb_vk_pipeline_name(&be->ctx, pl);
        r->prof_n = n->dispatches + 1;
    }
    n->dispatches++;
    mb_vk_count_barrier(cb, n);
}

/* ---- planning ---- */

/* Grows the host's grouping scratch to words (NOMEM). */
static mb_status mb_vk_scratch(mb_vk_backend *be, size_t words)
{
    if (words <= be->plan_cap) return MB_STATUS_OK;
    int32_t *n = realloc(be->plan, words * sizeof *n);
    if (!n) return MB_STATUS_NOMEM;
    be->plan = n;
    be->plan_cap = words;
    return MB_STATUS_OK;
}

/* Groups req's pairs by expert on the host into be->plan, laid out as the
 * device reads it (offsets in pl, relative to plan_off): tok_off [n_tokens
 * + 1], expert_slot [n_pairs], expert_off [n_pairs + 1], pair_pos
 * [n_pairs], perm_token [n_pairs]. Experts come in order of first use,
 * each one's rows in request order. The slots were validated. */
static void mb_vk_group(mb_vk_backend *be, mb_vk_plan *pl)
{
    const mb_proto_expert_req *req = pl->req;
    const size_t base = pl->plan_off / 4;
    int32_t *tok_off = be->plan + (pl->tok_off / 4 - base), *eslot = be->plan + (pl->expert_slot / 4 - base);
    int32_t *eoff = be->plan + (pl->expert_off / 4 - base), *ppos = be->plan + (pl->pair_pos / 4 - base);
    int32_t *ptok = be->plan + (pl->perm_token / 4 - base);
    uint32_t n_experts = 0, j = 0;
    /* Pass 1: experts in order of first use; eoff[e + 1] counts rows. */
    for (uint32_t t = 0; t < req->n_tokens; t++) {
        tok_off[t] = (int32_t)j;
        for (uint32_t k = 0; k < req->pair_counts[t]; k++, j++) {
            const uint32_t slot = req->pairs[j].slot;
            int32_t e = be->host_eidx[slot];
            if (e < 0) {
                e = (int32_t)n_experts++;
                be->host_eidx[slot] = e;
                eslot[e] = (int32_t)slot;
                eoff[e + 1] = 0;
            }
            ppos[j] = eoff[e + 1]++; /* rank within the expert, for now */
        }
    }
    tok_off[req->n_tokens] = (int32_t)j;
    eoff[0] = 0;
    for (uint32_t e = 0; e < n_experts; e++)
        eoff[e + 1] += eoff[e];
    /* Pass 2: ranks become rows; the map goes back to -1. */
    j = 0;
    for (uint32_t t = 0; t < req->n_tokens; t++)
        for (uint32_t k = 0; k < req->pair_counts[t]; k++, j++) {
            const int32_t e = be->host_eidx[req->pairs[j].slot];
            ppos[j] += eoff[e];
            ptok[ppos[j]] = (int32_t)t;
        }
    for (uint32_t e = 0; e < n_experts; e++)
        be->host_eidx[eslot[e]] = -1;
    pl->n_experts = n_experts;
}

/* Sizes and offsets of req's inputs; FULL past the staging area or the
 * shaders' 32-bit indexing. */
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
    /* A 16-bit tail is read as a whole word: room for it. */
    pl->plan_off = pl->act_off + MB_VK_ALIGN(act + 4);
    pl->in_bytes = pl->act_off + act;
    if (!pl->gemm) {
        const size_t nt = req->n_tokens, np = req->n_pairs;
        pl->tok_off = pl->plan_off;
        pl->expert_slot = pl->tok_off + (nt + 1) * 4;
        pl->expert_off = pl->expert_slot + np * 4;
        pl->pair_pos = pl->expert_off + (np + 1) * 4;
        pl->perm_token = pl->pair_pos + np * 4;
        pl->in_bytes = pl->perm_token + np * 4;
    }
    if (pl->in_bytes > be->staging_max || pl->out_bytes > be->staging_max) return MB_STATUS_FULL;
    return MB_STATUS_OK;
}

mb_status mb_vk_plan_make(mb_vk_backend *be, mb_vk_plan *pl)
{
    const mb_proto_expert_req *req = pl->req;
    const uint32_t rows = be->gemv_rows;
    uint32_t experts = req->layer < be->n_layers_cap && be->layer_experts ? be->layer_experts[req->layer] : 0;
    if (experts == 0 || experts > req->n_pairs) experts = req->n_pairs;
    /* The GEMV path streams an expert's weights once per 4 of its rows; the
     * tiled path once per 64. Few rows per routed expert: GEMV, where its
     * direct dispatch sizes fit. */
    pl->gemm = be->path == 2 || (be->path == 0 && req->n_pairs > 4u * experts);
    if ((size_t)req->d_model > (size_t)MB_VK_MAX_GROUPS * rows || (size_t)pl->d_ff > (size_t)MB_VK_MAX_GROUPS * rows ||
        req->n_pairs > MB_VK_MAX_GROUPS)
        pl->gemm = 1;
    mb_status st = mb_vk_plan_sizes(be, pl);
    if (st != MB_STATUS_OK || req->n_pairs == 0) return st;
    if (!pl->gemm) {
        if ((st = mb_vk_scratch(be, (pl->in_bytes - pl->plan_off) / 4)) != MB_STATUS_OK) return st;
        mb_vk_group(be, pl);
        /* The fused step reads an expert's down rows once per pair, the
         * separate one once per MB_KVK_GEMV_NT pairs: fuse while experts
         * are hardly shared (a quarter more down-weight reads at most;
         * one token's experts are distinct). 16-bit results are written
         * two rows a word. */
        pl->fused = req->n_tokens <= MB_VK_FUSED_MAX_TOKENS && 4 * (size_t)req->n_pairs <= 5 * (size_t)pl->n_experts &&
                    (req->dtype == MB_DTYPE_F32 || (req->d_model % 2 == 0 && rows % 2 == 0));
    }

    /* Quantized weights: the gate's, up's and down's types apart; their
     * shaders read whole blocks, so the 16-byte loads always apply. */
    const uint32_t wd = (uint32_t)pl->wdtype[MB_PROTO_MAT_GATE], wu = (uint32_t)pl->wdtype[MB_PROTO_MAT_UP];
    const uint32_t wdd = (uint32_t)pl->wdtype[MB_PROTO_MAT_DOWN], pd = (uint32_t)req->dtype;
    const int quant = mb_dtype_is_quant(pl->wdtype[MB_PROTO_MAT_GATE]);
    const uint32_t v = pl->wdtype[MB_PROTO_MAT_GATE] == MB_DTYPE_F32 ? 4 : 8;
    const uint32_t vec1 = quant || req->d_model % v == 0, vec2 = quant || pl->d_ff % v == 0;
    mb_vk_ctx *ctx = &be->ctx;
    if (pl->gemm) {
        /* Matrix units need 16-bit weights and whole 16-byte chunks of K
         * and N both ways; f32 and quantized weights (which the portable
         * tiles dequantize into f32) and other shapes stay portable. */
        const int units = ctx->has_coopmat && (wd == MB_DTYPE_F16 || wd == MB_DTYPE_BF16) &&
                          req->d_model % 8 == 0 && pl->d_ff % 8 == 0;
        /* moe_gemm_cm2_bf16 for bf16 weights where the device has bf16
         * matrices: x in bf16 halves unless the payload is bf16. */
        pl->coopmat = !units                                 ? MB_VK_GEMM_PORTABLE
                      : ctx->has_coopmat == 1                ? MB_VK_GEMM_COOPMAT
                      : ctx->cm2_bf16 && wd == MB_DTYPE_BF16 ? MB_VK_GEMM_CM2_BF16
                                                             : MB_VK_GEMM_CM2;
        const int cm2 = pl->coopmat >= MB_VK_GEMM_CM2;
        pl->split_x = units && (req->dtype == MB_DTYPE_F32 ||
                                (pl->coopmat == MB_VK_GEMM_CM2_BF16 && req->dtype == MB_DTYPE_F16));
        pl->split_h = units && !be->hidden16;
        static const char *const gemms[] = {"moe_gemm", "moe_gemm_coopmat", "moe_gemm_cm2",
                                            "moe_gemm_cm2_bf16"};
        const char *gemm = gemms[pl->coopmat];
        if (!(be->gemm_noted & (1 << pl->coopmat))) {
            be->gemm_noted |= 1 << pl->coopmat;
            char note[160];
            snprintf(note, sizeof note, "tiled request (%s weights, %s payload, %ux%u): %s",
                     mb_dtype_name(pl->wdtype[MB_PROTO_MAT_GATE]), mb_dtype_name(req->dtype),
                     req->d_model, pl->d_ff, gemm);
            mb_vk_note(be, note);
        }
        const uint32_t bn = cm2 ? be->cm2_bn : units ? MB_KVK_GEMM_CM_BN : MB_KVK_GEMM_BN;
        const uint32_t s_route[MB_VK_SPECS] = {rows, bn, cm2 ? be->cm2_bm : 0, cm2 ? be->cm2_bn2 : 0},
                       s_pd[MB_VK_SPECS] = {pd};
        /* moe_convert's output: f32 (0), f16 (1, 2 with low halves), the
         * same gathered into grouped order for cm2 (3, 4), or bf16 (5, 6). */
        const uint32_t s_conv[MB_VK_SPECS] = {
            pd, units
                    ? 1u + (uint32_t)pl->split_x + 2u * (uint32_t)(pl->coopmat - MB_VK_GEMM_COOPMAT)
                    : 0u};
        uint32_t s1[MB_VK_SPECS] = {wd, 1, vec1, wu}, s2[MB_VK_SPECS] = {wdd, 0, vec2, wdd};
        if (units) {
            s1[2] = (uint32_t)pl->split_x;
            s1[3] = (uint32_t)pl->split_h;
            s2[2] = (uint32_t)pl->split_h;
            s2[3] = 0;
            s1[4] = bn;
            s2[4] = cm2 ? be->cm2_bn2 : bn;
            s1[5] = cm2 ? be->cm2_bk : 0;
            s2[5] = cm2 ? be->cm2_bk2 : 0;
            s1[6] = s2[6] = cm2 ? be->cm2_bm : 0;
            s1[7] = s2[7] = cm2 ? be->cm2_threads : 0;
            if (cm2 && be->cm2_kspec) {
                s1[8] = s2[9] = req->d_model;
                s1[9] = s2[8] = pl->d_ff;
            }
        }
        st = mb_vk_pipeline_get(ctx, "moe_route", s_route, &pl->route);
        if (st == MB_STATUS_OK) st = mb_vk_pipeline_get(ctx, "moe_convert", s_conv, &pl->convert);
        if (st == MB_STATUS_OK) st = mb_vk_pipeline_get(ctx, gemm, s1, &pl->ffn1);
        if (st == MB_STATUS_OK) st = mb_vk_pipeline_get(ctx, gemm, s2, &pl->ffn2);
        if (st == MB_STATUS_OK) st = mb_vk_pipeline_get(ctx, "moe_combine", s_pd, &pl->combine);
        return st;
    }
    const uint32_t s1[MB_VK_SPECS] = {wd, 1, vec1, rows, pd, wu};
    st = mb_vk_pipeline_get(ctx, "moe_gemv", s1, &pl->ffn1);
    if (st != MB_STATUS_OK) return st;
    if (pl->fused) {
        const uint32_t sf[MB_VK_SPECS] = {wdd, pd, vec2, rows};
        return mb_vk_pipeline_get(ctx, "moe_gemv_combine", sf, &pl->ffn2);
    }
    const uint32_t s2[MB_VK_SPECS] = {wdd, 0, vec2, rows, MB_DTYPE_F32, wdd}, s_pd[MB_VK_SPECS] = {pd};
    st = mb_vk_pipeline_get(ctx, "moe_gemv", s2, &pl->ffn2);
    if (st == MB_STATUS_OK) st = mb_vk_pipeline_get(ctx, "moe_combine", s_pd, &pl->combine);
    return st;
}

void mb_vk_inputs_write(mb_vk_backend *be, const mb_vk_plan *pl, char *in)
{
    const mb_proto_expert_req *req = pl->req;
    memcpy(in, req->pair_counts, (size_t)req->n_tokens * sizeof(uint16_t));
    if (req->n_pairs) memcpy(in + pl->pairs_off, req->pairs, (size_t)req->n_pairs * sizeof(mb_proto_pair));
    if (!pl->src) memcpy(in + pl->act_off, req->act, pl->out_bytes);
    if (!pl->gemm && req->n_pairs) memcpy(in + pl->plan_off, be->plan, pl->in_bytes - pl->plan_off);
}

/* ---- recording ---- */

/* The tiled path: route, convert, gate/up, down (moe_gemm, or
 * moe_gemm_coopmat on f16 halves), combine; in is the input buffer's
 * address, out where the result goes. */
static void mb_vk_record_gemm(mb_vk_backend *be, mb_vk_req *r, const mb_vk_plan *pl, VkDeviceAddress in,
                              VkDeviceAddress out, mb_vk_rec_count *n)
{
    const mb_proto_expert_req *req = pl->req;
    VkCommandBuffer cb = r->cb;
    const VkDeviceAddress ws = r->ws.b.addr, fx = r->fixed.addr;
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
    mb_vk_dispatch(be, cb, n, pl->route, &rp, sizeof rp, 1, 1, NULL, 0);
    const size_t nx = (size_t)req->n_tokens * req->d_model;
    /* moe_gemm_cm2 takes x gathered into grouped order, [n_pairs][d_model]
     * f16 halves: the bytes of y (f32 [n_pairs][d_model]), which only the
     * down product writes, after gate/up has read x. */
    const int cm2 = pl->coopmat >= MB_VK_GEMM_CM2;
    const size_t nxg = cm2 ? (size_t)req->n_pairs * req->d_model : nx;
    const mb_kvk_convert_pc cp = {.act = in + pl->act_off,
                                  .x = ws + (cm2 ? r->ws.y : r->ws.x),
                                  .perm_token = rp.perm_token,
                                  .n = (uint32_t)nxg,
                                  .k = req->d_model};
    /* The f16 inputs of the matrix-unit GEMMs: one invocation a word of two. */
    const size_t conv_items = pl->coopmat ? nxg / 2 : nx;
    mb_vk_dispatch(be, cb, n, pl->convert, &cp, sizeof cp, mb_vk_groups(conv_items, MB_KVK_CONVERT_THREADS), 1, NULL,
                   0);
    const VkBuffer *args = &r->fixed.buf;
    if (pl->coopmat) {
        /* x and h as f16 halves, the high ones first: the same bytes as
         * the f32 arrays the workspace holds for them. */
        const VkDeviceAddress h = ws + r->ws.h, h_lo = h + (VkDeviceSize)req->n_pairs * pl->d_ff * 2;
        mb_kvk_gemm_cm_pc gp = {.slots = be->slots.addr,
                                .tiles = ws + r->ws.tiles,
                                .expert_slot = rp.expert_slot,
                                .expert_off = rp.expert_off,
                                .perm_token = rp.perm_token,
                                .a_hi = cp.x,
                                .a_lo = cp.x + (VkDeviceSize)nxg * 2,
                                .out = h,
                                .out_lo = h_lo,
                                .K = req->d_model,
                                .N = pl->d_ff};
        mb_vk_dispatch(be, cb, n, pl->ffn1, &gp, sizeof gp, 0, 0, args,
                       args_off + offsetof(mb_kvk_args, gemm_gateup));
        gp.a_hi = h;
        gp.a_lo = h_lo;
        gp.out = ws + r->ws.y;
        gp.out_lo = 0;
        gp.K = pl->d_ff;
        gp.N = req->d_model;
        mb_vk_dispatch(be, cb, n, pl->ffn2, &gp, sizeof gp, 0, 0, args, args_off + offsetof(mb_kvk_args, gemm_down));
    } else {
        mb_kvk_ffn_pc fp = {.slots = be->slots.addr,
                            .tiles = ws + r->ws.tiles,
                            .expert_slot = rp.expert_slot,
                            .expert_off = rp.expert_off,
                            .perm_token = rp.perm_token,
                            .in = cp.x,
                            .out = ws + r->ws.h,
                            .K = req->d_model,
                            .N = pl->d_ff};
        mb_vk_dispatch(be, cb, n, pl->ffn1, &fp, sizeof fp, 0, 0, args,
                       args_off + offsetof(mb_kvk_args, gemm_gateup));
        fp.in = fp.out;
        fp.out = ws + r->ws.y;
        fp.K = pl->d_ff;
        fp.N = req->d_model;
        mb_vk_dispatch(be, cb, n, pl->ffn2, &fp, sizeof fp, 0, 0, args, args_off + offsetof(mb_kvk_args, gemm_down));
    }
    const mb_kvk_combine_pc mp = {.tok_off = rp.tok_off,
                                  .pairs = rp.pairs,
                                  .pair_pos = rp.pair_pos,
                                  .y = ws + r->ws.y,
                                  .out = out,
                                  .n_tokens = req->n_tokens,
                                  .d_model = req->d_model};
    const size_t words = req->dtype == MB_DTYPE_F32 ? nx : (nx + 1) / 2;
    mb_vk_dispatch(be, cb, n, pl->combine, &mp, sizeof mp, mb_vk_groups(words, MB_KVK_COMBINE_THREADS), 1, NULL, 0);
}

/* The GEMV path on the host's grouping: gate/up from the payload, then the
 * down product fused with the combine, or down and combine apart. */
static void mb_vk_record_gemv(mb_vk_backend *be, mb_vk_req *r, const mb_vk_plan *pl, VkDeviceAddress in,
                              VkDeviceAddress out, mb_vk_rec_count *n)
{
    const mb_proto_expert_req *req = pl->req;
    VkCommandBuffer cb = r->cb;
    const VkDeviceAddress ws = r->ws.b.addr;
    const uint32_t rows = be->gemv_rows;
    mb_kvk_ffn_pc fp = {.slots = be->slots.addr,
                        .expert_slot = in + pl->expert_slot,
                        .expert_off = in + pl->expert_off,
                        .perm_token = in + pl->perm_token,
                        .in = in + pl->act_off,
                        .out = ws + r->ws.h,
                        .K = req->d_model,
                        .N = pl->d_ff};
    mb_vk_dispatch(be, cb, n, pl->ffn1, &fp, sizeof fp, mb_vk_groups(pl->d_ff, rows), pl->n_experts, NULL, 0);
    if (pl->fused) {
        const mb_kvk_gemv_combine_pc cp = {.slots = be->slots.addr,
                                           .tok_off = in + pl->tok_off,
                                           .pairs = in + pl->pairs_off,
                                           .pair_pos = in + pl->pair_pos,
                                           .h = fp.out,
                                           .out = out,
                                           .n_tokens = req->n_tokens,
                                           .K = pl->d_ff,
                                           .N = req->d_model};
        mb_vk_dispatch(be, cb, n, pl->ffn2, &cp, sizeof cp, mb_vk_groups(req->d_model, rows), 1, NULL, 0);
        return;
    }
    fp.in = fp.out;
    fp.out = ws + r->ws.y;
    fp.K = pl->d_ff;
    fp.N = req->d_model;
    mb_vk_dispatch(be, cb, n, pl->ffn2, &fp, sizeof fp, mb_vk_groups(req->d_model, rows), pl->n_experts, NULL, 0);
    const size_t nx = (size_t)req->n_tokens * req->d_model;
    const mb_kvk_combine_pc mp = {.tok_off = in + pl->tok_off,
                                  .pairs = in + pl->pairs_off,
                                  .pair_pos = in + pl->pair_pos,
                                  .y = fp.out,
                                  .out = out,
                                  .n_tokens = req->n_tokens,
                                  .d_model = req->d_model};
    const size_t words = req->dtype == MB_DTYPE_F32 ? nx : (nx + 1) / 2;
    mb_vk_dispatch(be, cb, n, pl->combine, &mp, sizeof mp, mb_vk_groups(words, MB_KVK_COMBINE_THREADS), 1, NULL, 0);
}

static VkResult mb_vk_begin(VkCommandBuffer cb)
{
    const VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    VkResult res = vkResetCommandBuffer(cb, 0);
    return res == VK_SUCCESS ? vkBeginCommandBuffer(cb, &bi) : res;
}

/* The start of a request: timestamps reset and the first written, the slot
 * counters zeroed once, and a barrier after the weight uploads submitted
 * before (and this entry's last request). */
static void mb_vk_record_head(mb_vk_backend *be, mb_vk_req *r, VkCommandBuffer cb, mb_vk_rec_count *n)
{
    if (r->queries) {
        vkCmdResetQueryPool(cb, r->queries, 0, be->profile ? 2 + MB_VK_PROF_STAMPS : 2);
        vkCmdWriteTimestamp(cb, VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, r->queries, 0);
    }
    /* The slot counters start at zero once; moe_route keeps them so. */
    if (r->fixed_fresh) {
        vkCmdFillBuffer(cb, r->fixed.buf, 0, (VkDeviceSize)be->max_slots * 4, 0);
        n->copies++;
    }
    mb_vk_count_barrier(cb, n);
}

/* cb_in of an imported request: the small inputs from staging and the
 * activations from registered host memory into d_in. The semaphore's
 * consumed value follows it. */
static VkResult mb_vk_record_in(mb_vk_backend *be, mb_vk_req *r, const mb_vk_plan *pl, mb_vk_rec_count *n)
{
    VkCommandBuffer cb = r->cb_in;
    VkResult res = mb_vk_begin(cb);
    if (res != VK_SUCCESS) return res;
    mb_vk_record_head(be, r, cb, n);
    VkBufferCopy c[2] = {{.srcOffset = 0, .dstOffset = 0, .size = pl->act_off}};
    uint32_t nc = 1;
    if (pl->in_bytes > pl->plan_off)
        c[nc++] = (VkBufferCopy){
            .srcOffset = pl->plan_off, .dstOffset = pl->plan_off, .size = pl->in_bytes - pl->plan_off};
    vkCmdCopyBuffer(cb, r->h_in.buf, r->d_in.buf, nc, c);
    const VkBufferCopy a = {.srcOffset = pl->src_off, .dstOffset = pl->act_off, .size = pl->out_bytes};
    if (pl->out_bytes) vkCmdCopyBuffer(cb, pl->src->buf.buf, r->d_in.buf, 1, &a);
    n->copies += 2;
    mb_vk_count_barrier(cb, n);
    return vkEndCommandBuffer(cb);
}

/* The key of what pl needs in r's main command buffer. */
static mb_vk_rec_key mb_vk_key(const mb_vk_req *r, const mb_vk_plan *pl)
{
    const mb_proto_expert_req *req = pl->req;
    mb_vk_rec_key k;
    memset(&k, 0, sizeof k); /* padding too: keys are compared with memcmp */
    k.valid = 1;
    k.gemm = pl->gemm;
    k.fused = pl->fused;
    k.coopmat = pl->coopmat;
    k.in_direct = pl->in_direct;
    k.imported = pl->src != NULL;
    k.fixed_fresh = r->fixed_fresh;
    k.gen = r->gen;
    k.n_tokens = req->n_tokens;
    k.n_pairs = req->n_pairs;
    k.n_experts = pl->n_experts;
    k.d_model = req->d_model;
    k.d_ff = pl->d_ff;
    k.dtype = req->dtype;
    memcpy(k.wdtype, pl->wdtype, sizeof k.wdtype);
    return k;
}

VkResult mb_vk_record(mb_vk_backend *be, mb_vk_req *r, const mb_vk_plan *pl)
{
    mb_vk_rec_count n_in = {0};
    VkResult res = VK_SUCCESS;
    if (pl->src && (res = mb_vk_record_in(be, r, pl, &n_in)) != VK_SUCCESS) return res;
    const mb_vk_rec_key key = mb_vk_key(r, pl);
    if (memcmp(&key, &r->key, sizeof key) == 0) {
        be->stats.reused++;
        be->stats.last = r->count;
        if (pl->src) {
            be->stats.last.dispatches += n_in.dispatches;
            be->stats.last.copies += n_in.copies;
            be->stats.last.barriers += n_in.barriers;
            be->stats.last.submits++;
        }
        return VK_SUCCESS;
    }
    memset(&r->key, 0, sizeof r->key); /* nothing valid until it is recorded */
    VkCommandBuffer cb = r->cb;
    if ((res = mb_vk_begin(cb)) != VK_SUCCESS) return res;
    mb_vk_rec_count n = {.submits = 1};
    /* Imported: cb_in did the head and the copy in. */
    const VkDeviceAddress in = pl->in_direct ? r->direct.addr : r->d_in.addr;
    if (!pl->src) {
        mb_vk_record_head(be, r, cb, &n);
        if (!pl->in_direct && pl->in_bytes) {
            const VkBufferCopy c = {.size = pl->in_bytes};
            vkCmdCopyBuffer(cb, r->h_in.buf, r->d_in.buf, 1, &c);
            n.copies++;
            mb_vk_count_barrier(cb, &n);
        }
    }
    /* The result goes where fetch reads it: host-visible memory when the
     * shader can write it there directly (GEMV), else device memory and a
     * copy (tiled: the copy engine is faster over the bus), or device
     * memory alone when fetch copies it into registered host memory. */
    r->prof_n = 0;
    be->rec_req = be->profile && r->queries ? r : NULL;
    const int to_host = !pl->src && !pl->gemm;
    const VkDeviceAddress out = to_host ? r->h_out.addr : r->d_out.addr;
    const mb_vk_buffer *out_buf = to_host ? &r->h_out : &r->d_out;
    if (pl->out_bytes) {
        if (pl->req->n_pairs == 0) {
            vkCmdFillBuffer(cb, out_buf->buf, 0, (pl->out_bytes + 3) & ~(VkDeviceSize)3, 0);
            n.copies++;
            mb_vk_count_barrier(cb, &n);
        } else if (pl->gemm) {
            mb_vk_record_gemm(be, r, pl, in, out, &n);
        } else {
            mb_vk_record_gemv(be, r, pl, in, out, &n);
        }
        if (!pl->src && out_buf != &r->h_out) {
            const VkBufferCopy c = {.size = pl->out_bytes};
            vkCmdCopyBuffer(cb, r->d_out.buf, r->h_out.buf, 1, &c);
            n.copies++;
            mb_vk_count_barrier(cb, &n); /* host reads after the semaphore */
        }
    }
    be->rec_req = NULL;
    if (r->queries) vkCmdWriteTimestamp(cb, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, r->queries, 1);
    if ((res = vkEndCommandBuffer(cb)) != VK_SUCCESS) return res;
    r->key = key;
    r->count = n;
    be->stats.recorded++;
    be->stats.last = n;
    if (pl->src) {
        be->stats.last.dispatches += n_in.dispatches;
        be->stats.last.copies += n_in.copies;
        be->stats.last.barriers += n_in.barriers;
        be->stats.last.submits++;
    }
    return VK_SUCCESS;
}
