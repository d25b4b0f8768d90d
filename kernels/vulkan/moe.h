/* The MoE expert FFN as Vulkan compute shaders (kernels/vulkan/moe_*.comp),
 * described for the host that records them. For every (token, expert,
 * gate) pair of a request:
 *   h[pair][d_ff]       = silu(x[token] @ W_gate^T) * (x[token] @ W_up^T)
 *   out[token][d_model] = sum over the token's pairs, in request order,
 *                         of gate * (h[pair] @ W_down^T)
 * recorded into one command buffer with no host synchronisation, along one
 * of two paths.
 * Prefill-sized requests (tiled):
 *   1. moe_route (one workgroup): groups the pairs by expert slot (a
 *      counting sort whose per-slot counters it zeroes back itself), lays
 *      out the tile schedule, and writes the indirect dispatch sizes of the
 *      steps below (mb_kvk_args);
 *   2. moe_convert: activations from the payload dtype to f32, or for
 *      moe_gemm_coopmat to f16 (f32 payloads: high and low f16 halves);
 *   3. moe_gemm, gate/up + SiLU then down: tiled grouped matrix products
 *      over every routed expert in one dispatch each (shared-memory tiles,
 *      f32 arithmetic); or, where the device has VK_NV_cooperative_matrix
 *      (MB_VULKAN_COOPMAT), 16-bit weights and d_model, d_ff multiples of
 *      8, moe_gemm_coopmat: the same products on matrix units, f16
 *      operands and f32 accumulators, the hidden row h passed between the
 *      two as f16 high and low halves;
 *   4. moe_combine: per output element, its token's pairs' gate-weighted
 *      rows summed in request order (no float atomics), encoded to the
 *      payload dtype.
 * Decode-sized requests (GEMV), grouped by the host (the same arrays as
 * moe_route's, written into the request's inputs), two or three dispatches
 * with direct sizes:
 *   1. moe_gemv, gate/up + SiLU, reading the payload dtype directly (no
 *      moe_convert), streaming each routed expert's weights once per
 *      MB_KVK_GEMV_NT of its rows, one subgroup per weight row with
 *      subgroupAdd reductions;
 *   2. up to a few tokens whose experts hardly repeat, moe_gemv_combine:
 *      the down product and the combine in one dispatch; else moe_gemv
 *      (down) then moe_combine.
 * Results are deterministic: the grouping may order an expert's rows
 * differently from run to run, but no row's arithmetic depends on its
 * position, and the combine order is fixed.
 *
 * Every buffer is reached through its device address (buffer references),
 * so there are no descriptor sets: the push constants below carry the
 * addresses. The structs here must match the shaders' push-constant blocks
 * member for member. 16-bit values (f16, bf16 weights and payloads, pair
 * counts) are read as 32-bit words and unpacked with shifts, so no 16-bit
 * storage feature is needed.
 *
 * Precision of moe_gemm_coopmat (f16 operands, f32 accumulation): f16
 * weights as they are; bf16 weights converted to f16, exact within f16's
 * normal range (2^-14..65504), f16 subnormals below it (absolute error <=
 * 2^-25), inf above it; f16 payloads exact; bf16 payloads rounded to f16
 * (exact in its normal range); f32 payloads and the hidden row h split
 * into a high f16 half (the mantissa cut to 10 bits) and the f16 rounding
 * of the remainder, about 21 significant bits, two MMAs per fragment
 * (MB_VULKAN_HIDDEN=16: h rounded to one f16, one MMA). Known limit, as on
 * the CUDA backend with f16 weights: an activation or hidden value beyond
 * f16's range becomes inf and the result inf or NaN.
 *
 * Quantized weights (Q8_0, Q4_K, Q6_K; gate, up and down each of its own
 * type) stay quantized in device memory, in kernels/vulkan/quant_layout.h's
 * layout, read as 32-bit words and 16-byte loads (no 8- or 16-bit storage
 * feature needed). Every shader dequantizes through moe_quant.glsl's
 * mb_qdeq16, exactly as kernels/cpu/quant.c does (bit for bit in f32,
 * checked through moe_qdequant): moe_gemv and moe_gemv_combine in
 * registers, 16 weights a lane at a time; moe_gemm into its f32 weight
 * tiles, one row's 16-deep slice per invocation. The arithmetic after that
 * is f32 as for 16-bit weights: activations are not quantized to 8 bits
 * and weights not rounded to f16. */
#ifndef MB_KERNELS_VULKAN_MOE_H
#define MB_KERNELS_VULKAN_MOE_H

#include <stdint.h>

/* Element and weight types as specialisation constants, numbered as
 * protocol/dtype.h (the quantized ones are weights only). */
enum { MB_KVK_F32 = 0, MB_KVK_F16 = 1, MB_KVK_BF16 = 2, MB_KVK_Q8_0 = 3, MB_KVK_Q4_K = 5, MB_KVK_Q6_K = 7 };

/* Workgroup sizes and tiles (the shaders hard-code the same numbers). */
#define MB_KVK_ROUTE_THREADS 256u
#define MB_KVK_CONVERT_THREADS 256u
#define MB_KVK_COMBINE_THREADS 256u
#define MB_KVK_GEMV_THREADS 128u
#define MB_KVK_QDEQUANT_THREADS 64u
/* Weight rows per moe_gemv workgroup: a specialisation constant of
 * moe_gemv (3) and moe_route (0), one row per subgroup (128 / subgroup
 * size) so that a decode step has the most rows in flight. */
#define MB_KVK_GEMV_NT 4u     /* expert rows sharing one pass over a weight row */
#define MB_KVK_GEMM_BM 64u    /* grouped rows per tile */
#define MB_KVK_GEMM_BN 64u    /* output columns per tile */
#define MB_KVK_GEMM_CM_BN 128u /* output columns per moe_gemm_coopmat tile */

/* One slot of the slot table (device memory, [max_slots]): the device
 * addresses of the slot's gate, up [d_ff][d_model] and down
 * [d_model][d_ff] matrices, row-major in the layer's weight dtype, or each
 * in its own quantized type in kernels/vulkan/quant_layout.h's layout. */
typedef struct {
    uint64_t gate, up, down;
} mb_kvk_slot;

/* What moe_route writes for the host-free steps after it (32-bit words):
 * four VkDispatchIndirectCommand and two counts. */
typedef struct {
    uint32_t gemv_gateup[3]; /* {ceil(d_ff / gemv rows), experts, 1} */
    uint32_t gemv_down[3];   /* {ceil(d_model / gemv rows), experts, 1} */
    uint32_t gemm_gateup[3]; /* {tiles, ceil(d_ff / BN), 1}, BN moe_route's specialisation 1 */
    uint32_t gemm_down[3];   /* {tiles, ceil(d_model / BN), 1} */
    uint32_t n_experts;      /* slots with pairs */
    uint32_t n_tiles;
    uint32_t pad[2];
} mb_kvk_args;

/* Most tiles of a request with n_pairs pairs over at most n_experts experts. */
#define MB_KVK_MAX_TILES(n_pairs, n_experts) ((n_pairs) / MB_KVK_GEMM_BM + (n_experts) + 1u)

/* moe_route, one workgroup. Inputs as on the wire; the rest workspace.
 * Specialisation 0: moe_gemv's rows per workgroup; 1: the GEMM's output
 * columns per tile (MB_KVK_GEMM_BN or MB_KVK_GEMM_CM_BN; 0 counts as the
 * first). */
typedef struct {
    uint64_t counts;      /* u16 [n_tokens] pairs per token */
    uint64_t pairs;       /* {u32 slot, f32 gate} [n_pairs] */
    uint64_t slot_cnt;    /* i32 [max_slots], zero before and after */
    uint64_t slot_eidx;   /* i32 [max_slots] */
    uint64_t tok_off;     /* i32 [n_tokens + 1] first pair of each token */
    uint64_t expert_slot; /* i32 [n_pairs] slot of each expert with pairs */
    uint64_t expert_off;  /* i32 [n_pairs + 1] first grouped row of each expert */
    uint64_t pair_pos;    /* i32 [n_pairs] grouped row of each pair */
    uint64_t perm_token;  /* i32 [n_pairs] token of each grouped row */
    uint64_t tiles;       /* {i32 expert, i32 row0} [MB_KVK_MAX_TILES] */
    uint64_t args;        /* mb_kvk_args */
    uint32_t n_tokens, n_pairs, d_model, d_ff;
} mb_kvk_route_pc;

/* moe_convert: x[i] = f32(act[i]), i < n. Specialisation 0: payload dtype;
 * 1: output, 0 f32 as above, 1 f16 (n even, two a 32-bit word), 2 f16 high
 * halves then, n / 2 words after them, the low halves (f32 payloads); 3 and
 * 4 are 1 and 2 in grouped order (moe_gemm_cm2): n = grouped rows x k, row
 * r of x is act's row perm_token[r]. */
typedef struct {
    uint64_t act;        /* payload [n], or [n_tokens][k] for 3 and 4 */
    uint64_t x;          /* f32 [n] */
    uint64_t perm_token; /* 3 and 4: i32 [n / k] token of each grouped row */
    uint32_t n, k;       /* k: 3 and 4, the row length (even) */
} mb_kvk_convert_pc;

/* moe_gemv and moe_gemm: moe_gemm's dispatches are indirect, sized by
 * moe_route; moe_gemv's are sized by the host.
 *   gate/up: out = h[row][N = d_ff] = silu(W_gate . x[token(row)]) * (W_up . x[token(row)]), K = d_model
 *   down:    out = y[row][N = d_model] = W_down . h[row], K = d_ff
 * Specialisation: 0 weight dtype (gate/up: the gate's; down: down's), 1
 * gate/up (1) or down (0); moe_gemm also 2: 16-byte loads (K a multiple of
 * 8, or of 4 for f32 weights; 1 for quantized weights), 3: up's weight
 * dtype; moe_gemv also 2: 16-byte loads (as moe_gemm's), 3: rows per
 * workgroup (as moe_route's), 4: dtype of `in` (gate/up: the payload's,
 * read in place; down: f32), 5: up's weight dtype. Up's dtype equals the
 * gate's for element dtypes; quantized gate and up may differ. */
typedef struct {
    uint64_t slots;       /* mb_kvk_slot [max_slots] */
    uint64_t tiles;       /* moe_gemm: the tile schedule; moe_gemv: unused */
    uint64_t expert_slot;
    uint64_t expert_off;
    uint64_t perm_token;
    uint64_t in;          /* x [n_tokens][K] (gate/up; moe_gemv: in the payload dtype) or
                             f32 h [n_pairs][K] (down) */
    uint64_t out;         /* f32: h or y [n_pairs][N] */
    uint32_t K, N;
} mb_kvk_ffn_pc;

/* moe_gemm_coopmat, indirect dispatches sized by moe_route with
 * MB_KVK_GEMM_CM_BN columns a tile, 256 invocations (8 subgroups of 32):
 *   gate/up: h[row][N = d_ff] = silu(x[token(row)] . W_gate) * (x[token(row)] . W_up), K = d_model
 *   down:    y[row][N = d_model] = h[row] . W_down, K = d_ff
 * K and N multiples of 8, every address 16-byte aligned. Specialisation: 0
 * weight dtype (f16 or bf16), 1 gate/up (1) or down (0), 2 A has a low
 * half (a_lo), 3 gate/up writes h's low half (out_lo).
 * moe_gemm_cm2 (VK_NV_cooperative_matrix2, workgroup-scope matrices; built
 * only with a glslang that has it: kernels/vulkan/cm2/) takes the same push
 * constants, specialisations and dispatches, except that its gate/up A is
 * x already gathered into grouped order, [n_pairs][K] (moe_convert OUT 3,
 * 4), and perm_token is unused. */
typedef struct {
    uint64_t slots;       /* mb_kvk_slot [max_slots] */
    uint64_t tiles;       /* the tile schedule */
    uint64_t expert_slot;
    uint64_t expert_off;
    uint64_t perm_token;
    uint64_t a_hi;        /* f16 x [n_tokens][K] (gate/up) or h [n_pairs][K] (down) */
    uint64_t a_lo;        /* its low halves, the same shape (specialisation 2) */
    uint64_t out;         /* gate/up: f16 h [n_pairs][N]; down: f32 y [n_pairs][N] */
    uint64_t out_lo;      /* gate/up: h's low halves (specialisation 3) */
    uint32_t K, N;
} mb_kvk_gemm_cm_pc;

/* moe_gemv_combine, one workgroup per MB_KVK_GEMV_THREADS / subgroup size
 * output rows: out[t][n] = sum over t's pairs j of gate_j * (W_down[slot_j][n]
 * . h[pair_pos[j]]). Specialisation: 0 weight dtype, 1 payload dtype, 2
 * 16-byte loads (as moe_gemv), 3 rows per workgroup (even for 16-bit
 * payloads, with N even). */
typedef struct {
    uint64_t slots;    /* mb_kvk_slot [max_slots] */
    uint64_t tok_off;  /* i32 [n_tokens + 1] first pair of each token */
    uint64_t pairs;    /* {u32 slot, f32 gate} [n_pairs] */
    uint64_t pair_pos; /* i32 [n_pairs] row of h of each pair */
    uint64_t h;        /* f32 [n_pairs][K] */
    uint64_t out;      /* payload [n_tokens][N] */
    uint32_t n_tokens, K, N, pad;
} mb_kvk_gemv_combine_pc;

/* moe_qdequant, for tests: out[row][k] = the f32 value of weight (row, k)
 * of a quantized [rows][K] matrix, one invocation per run of 16 weights.
 * Specialisation 0: the quantized type. */
typedef struct {
    uint64_t w;   /* [rows][K] in quant_layout.h's layout */
    uint64_t out; /* f32 [rows][K] */
    uint32_t rows, K;
} mb_kvk_qdequant_pc;

/* moe_combine: out[t][c] = sum over t's pairs j of gate_j * y[pair_pos[j]][c].
 * Specialisation 0: payload dtype. One invocation per 32-bit output word. */
typedef struct {
    uint64_t tok_off, pairs, pair_pos, y;
    uint64_t out; /* payload [n_tokens][d_model], padded to whole words */
    uint32_t n_tokens, d_model;
} mb_kvk_combine_pc;

#endif
