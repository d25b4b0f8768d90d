// The request pipeline of kernels/cuda/moe.h: workspace management and the
// order of launches (route, convert, GEMV or grouped GEMM, combine), all on
// the caller's stream with no host synchronisation.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/moe_quant.cuh"

extern "C" const char *mb_kcuda_error_str(int err) { return cudaGetErrorString((cudaError_t)err); }

extern "C" int mb_kcuda_moe_ws_create(uint32_t max_slots, mb_kcuda_moe_ws **out)
{
    if (!out || max_slots == 0) return (int)cudaErrorInvalidValue;
    mb_kcuda_moe_ws *ws = (mb_kcuda_moe_ws *)calloc(1, sizeof *ws);
    if (!ws) return (int)cudaErrorMemoryAllocation;
    ws->max_slots = max_slots;
    cudaError_t e = cudaMalloc(&ws->slot_cnt, (size_t)max_slots * sizeof(int32_t));
    if (e == cudaSuccess) e = cudaMalloc(&ws->slot_eidx, (size_t)max_slots * sizeof(int32_t));
    if (e == cudaSuccess) e = cudaMalloc(&ws->scalars, 4 * sizeof(int32_t));
    // The only zeroing the workspace ever needs: the route kernel restores it.
    if (e == cudaSuccess) e = cudaMemset(ws->slot_cnt, 0, (size_t)max_slots * sizeof(int32_t));
    if (e == cudaSuccess) e = cudaMemset(ws->scalars, 0, 4 * sizeof(int32_t));
    if (e != cudaSuccess) {
        mb_kcuda_moe_ws_destroy(ws);
        return (int)e;
    }
    ws->bytes = (size_t)max_slots * 8 + 16;
    *out = ws;
    return 0;
}

static void mb_ws_free_grown(mb_kcuda_moe_ws *ws)
{
    cudaFree(ws->tok_off);
    cudaFree(ws->expert_slot);
    cudaFree(ws->expert_off);
    cudaFree(ws->pair_pos);
    cudaFree(ws->perm_token);
    cudaFree(ws->tiles);
    cudaFree(ws->x);
    cudaFree(ws->h);
    cudaFree(ws->y);
    cudaFree(ws->wq);
    ws->wq = nullptr;
    ws->cap_wq_bytes = 0;
    ws->tok_off = ws->expert_slot = ws->expert_off = ws->pair_pos = ws->perm_token = nullptr;
    ws->tiles = nullptr;
    ws->x = ws->h = nullptr;
    ws->y = nullptr;
    ws->cap_tokens = ws->cap_pairs = ws->cap_x_bytes = ws->cap_h_bytes = ws->cap_y_bytes = 0;
    ws->bytes = (size_t)ws->max_slots * 8 + 16;
    ws->gen++;
}

extern "C" uint64_t mb_kcuda_moe_ws_generation(const mb_kcuda_moe_ws *ws) { return ws ? ws->gen : 0; }

static int mb_cublas_broken; // set once cuBLAS refused a GEMM

// The sizes ws_reserve grows to for p.
static void mb_ws_sizes(const mb_kcuda_moe_problem *p, size_t *nt, size_t *np, size_t *xb, size_t *hb, size_t *yb,
                        size_t *wqb)
{
    *nt = p->n_tokens ? p->n_tokens : 1;
    *np = p->n_pairs ? p->n_pairs : 1;
    // x: f32 or two 16-bit halves per activation, by token (GEMV, WMMA) or
    // by pair (cuBLAS); y: per pair d_model floats, or gate|up for cuBLAS.
    const size_t xrows = *nt > *np ? *nt : *np;
    const size_t ycols = p->d_model > 2 * (size_t)p->d_ff ? p->d_model : 2 * (size_t)p->d_ff;
    *xb = xrows * p->d_model * 4;
    *hb = *np * p->d_ff * 4;
    *yb = *np * ycols * 4;
    // Quantized weights on the cuBLAS path: one expert's f16 gate|up.
    *wqb = mb_kcuda_quant_supported(p->wdtype) && mb_kcuda_moe_path(p) == MB_KCUDA_PATH_CUBLAS
               ? mb_kcuda_cublas_quant_scratch(p)
               : 0;
}

extern "C" size_t mb_kcuda_moe_ws_need(const mb_kcuda_moe_problem *p)
{
    size_t nt, np, xb, hb, yb, wqb;
    mb_ws_sizes(p, &nt, &np, &xb, &hb, &yb, &wqb);
    return (nt + 1 + 4 * np + 1) * 4 + (np / MB_KCUDA_GEMM_BM + 2 + np) * sizeof(mb_kcuda_tile) + xb + hb + yb + wqb;
}

extern "C" void mb_kcuda_moe_ws_destroy(mb_kcuda_moe_ws *ws)
{
    if (!ws) return;
    mb_kcuda_cublas_ws_free(ws);
    mb_ws_free_grown(ws);
    cudaFree(ws->slot_cnt);
    cudaFree(ws->slot_eidx);
    cudaFree(ws->scalars);
    free(ws);
}

extern "C" size_t mb_kcuda_moe_ws_bytes(const mb_kcuda_moe_ws *ws) { return ws ? ws->bytes : 0; }

extern "C" int mb_kcuda_moe_ws_reserve(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p)
{
    if (!ws || !p) return (int)cudaErrorInvalidValue;
    size_t nt, np, xb, hb, yb, wqb;
    mb_ws_sizes(p, &nt, &np, &xb, &hb, &yb, &wqb);
    if (nt <= ws->cap_tokens && np <= ws->cap_pairs && xb <= ws->cap_x_bytes && hb <= ws->cap_h_bytes &&
        yb <= ws->cap_y_bytes && wqb <= ws->cap_wq_bytes)
        return 0;
    // Grow everything to at least the larger of old and new, then reallocate
    // (the old contents need not survive: only the slot counters persist).
    const size_t ct = nt > ws->cap_tokens ? nt : ws->cap_tokens, cp = np > ws->cap_pairs ? np : ws->cap_pairs;
    const size_t cx = xb > ws->cap_x_bytes ? xb : ws->cap_x_bytes, ch = hb > ws->cap_h_bytes ? hb : ws->cap_h_bytes;
    const size_t cy = yb > ws->cap_y_bytes ? yb : ws->cap_y_bytes;
    const size_t cwq = wqb > ws->cap_wq_bytes ? wqb : ws->cap_wq_bytes;
    const size_t tiles = cp / MB_KCUDA_GEMM_BM + 1 + cp + 1;
    // Whatever is queued on the old buffers must finish before they go.
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) return (int)e;
    mb_ws_free_grown(ws);
    e = cudaMalloc(&ws->tok_off, (ct + 1) * sizeof(int32_t));
    if (e == cudaSuccess) e = cudaMalloc(&ws->expert_slot, cp * sizeof(int32_t));
    if (e == cudaSuccess) e = cudaMalloc(&ws->expert_off, (cp + 1) * sizeof(int32_t));
    if (e == cudaSuccess) e = cudaMalloc(&ws->pair_pos, cp * sizeof(int32_t));
    if (e == cudaSuccess) e = cudaMalloc(&ws->perm_token, cp * sizeof(int32_t));
    if (e == cudaSuccess) e = cudaMalloc(&ws->tiles, tiles * sizeof(mb_kcuda_tile));
    if (e == cudaSuccess) e = cudaMalloc(&ws->x, cx);
    if (e == cudaSuccess) e = cudaMalloc(&ws->h, ch);
    if (e == cudaSuccess) e = cudaMalloc((void **)&ws->y, cy);
    if (e == cudaSuccess && cwq) e = cudaMalloc(&ws->wq, cwq);
    if (e != cudaSuccess) {
        mb_ws_free_grown(ws);
        cudaGetLastError();
        return (int)e;
    }
    ws->cap_tokens = ct;
    ws->cap_pairs = cp;
    ws->cap_x_bytes = cx;
    ws->cap_h_bytes = ch;
    ws->cap_y_bytes = cy;
    ws->cap_wq_bytes = cwq;
    ws->bytes =
        (size_t)ws->max_slots * 8 + 16 + (ct + 1 + 4 * cp + 1) * 4 + tiles * sizeof(mb_kcuda_tile) + cx + ch + cy + cwq;
    return 0;
}

extern "C" mb_kcuda_path mb_kcuda_moe_path(const mb_kcuda_moe_problem *p)
{
    // Tensor cores need 16-bit weights (quantized ones become f16 tiles)
    // and 16-byte rows.
    if (p->wdtype == MB_KCUDA_F32 || p->d_model % 8 || p->d_ff % 8) return MB_KCUDA_PATH_GEMV;
    const int cublas_ok =
        p->plan_experts && p->plan_slot && p->slots_host && !mb_cublas_broken && mb_kcuda_cublas_available();
    if (p->path == MB_KCUDA_PATH_CUBLAS && !cublas_ok) return MB_KCUDA_PATH_GEMM;
    if (p->path != MB_KCUDA_PATH_AUTO) return p->path;
    // The GEMV path streams an expert's weights once per 4 of its rows; the
    // GEMM path once per 64. Few rows per routed expert: GEMV.
    // Measured on an H100 (bench/notes/gpu-expert.md): GEMV wins at one or
    // two pairs per routed expert, GEMM from about three.
    const uint32_t experts = mb_kcuda_max_experts(p);
    if (p->n_pairs <= 2u * experts) return MB_KCUDA_PATH_GEMV;
    // cuBLAS costs a few microseconds of host time per expert and matrix:
    // worth it once experts have rows to fill its tiles.
    return cublas_ok && p->n_pairs >= 64ull * experts ? MB_KCUDA_PATH_CUBLAS : MB_KCUDA_PATH_GEMM;
}

extern "C" int mb_kcuda_moe_enqueue(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, void *stream_v)
{
    if (!ws || !p) return (int)cudaErrorInvalidValue;
    cudaStream_t stream = (cudaStream_t)stream_v;
    if (p->n_tokens == 0) return 0;
    const size_t esz = p->payload == MB_KCUDA_F32 ? 4 : 2;
    if (p->n_pairs == 0)
        return (int)cudaMemsetAsync(p->out, 0, (size_t)p->n_tokens * p->d_model * esz, stream);
    // Quantized weights: all three matrices of a type these kernels know,
    // rows of whole blocks (the backend checked; a bad problem must not
    // reach a kernel).
    const int quant = mb_kcuda_quant_supported(p->wdtype);
    if (quant && (!mb_kcuda_quant_supported(p->wdtype_up) || !mb_kcuda_quant_supported(p->wdtype_down) ||
                  p->d_model % mb_kcuda_qblock_elems(p->wdtype) || p->d_model % mb_kcuda_qblock_elems(p->wdtype_up) ||
                  p->d_ff % mb_kcuda_qblock_elems(p->wdtype_down)))
        return (int)cudaErrorInvalidValue;
    mb_kcuda_path path = mb_kcuda_moe_path(p);
    // Their cuBLAS path needs the f16 scratch ws_reserve grew for it.
    if (quant && path == MB_KCUDA_PATH_CUBLAS && ws->cap_wq_bytes < mb_kcuda_cublas_quant_scratch(p))
        path = MB_KCUDA_PATH_GEMM;
    // GEMV with few pairs per expert fuses the combine into the down
    // projection; a one-token request then needs no routing kernel at all
    // (each pair is its own expert).
    // (Grid y holds tokens or experts: past 65535 of them a launch fails
    // with a clear error rather than running; the broker sends at most 4096.)
    const int fused = path == MB_KCUDA_PATH_GEMV && 2ull * p->n_pairs <= 3ull * mb_kcuda_max_experts(p) &&
                      p->n_tokens <= 65535u;
    const int single = fused && p->n_tokens == 1;
    cudaError_t e = single ? cudaSuccess : mb_kcuda_route_launch(ws, p, stream);
    if (e != cudaSuccess) return (int)e;
    // Benchmarks' phase marks (route | GEMMs | combine); a no-op otherwise.
    auto mark = [&](int i) {
        if (p->phase_marks[i] && e == cudaSuccess) e = cudaEventRecord((cudaEvent_t)p->phase_marks[i], stream);
    };
    // The hidden row h stays f32-exact to about 16 bits (split) whatever the
    // payload: the CPU backend keeps it in f32, and rounding it to 8 bits
    // moved a fixture's logits by 5% through a flipped routing decision.
    // MB_CUDA_HIDDEN=16 keeps only the high half (one MMA or GEMM for the
    // down projection instead of two): faster prefill, and what other
    // engines do, at that precision cost.
    static int hidden16 = -1;
    if (hidden16 < 0) {
        const char *hv = getenv("MB_CUDA_HIDDEN");
        hidden16 = hv && !strcmp(hv, "16");
    }
    // The tensor cores' operand type: the weights', f16 for quantized ones.
    const int mma_type = quant ? MB_KCUDA_F16 : p->wdtype;
    const int split_x = p->payload != mma_type, split_h = !hidden16;
    if (path == MB_KCUDA_PATH_CUBLAS) {
        e = mb_kcuda_gather_launch(ws, p, split_x, stream);
        mark(0);
        if (e == cudaSuccess) e = mb_kcuda_cublas_launch(ws, p, split_x, split_h, stream);
        mark(1);
        if (e == cudaSuccess) return (int)mb_kcuda_combine_launch(ws, p, stream);
        if (e != cudaErrorNotSupported) return (int)e;
        // cuBLAS refused these types: the WMMA path redoes the GEMMs from
        // the route kernel's results (every buffer is rewritten).
        if (!mb_cublas_broken) fprintf(stderr, "cuda kernels: cuBLAS unavailable; using WMMA\n");
        mb_cublas_broken = 1;
    }
    if (path == MB_KCUDA_PATH_GEMV) {
        mark(0);
        e = quant ? mb_kcuda_qgemv_launch(ws, p, fused, stream) : mb_kcuda_gemv_launch(ws, p, fused, stream);
        mark(1);
        if (e == cudaSuccess && !fused) e = mb_kcuda_combine_launch(ws, p, stream);
        return (int)e;
    }
    e = mb_kcuda_convert_launch(ws, p, split_x, stream);
    mark(0);
    if (e == cudaSuccess)
        e = quant ? mb_kcuda_qgemm_launch(ws, p, split_x, split_h, stream)
                  : mb_kcuda_gemm_launch(ws, p, split_x, split_h, stream);
    mark(1);
    if (e == cudaSuccess) e = mb_kcuda_combine_launch(ws, p, stream);
    return (int)e;
}
