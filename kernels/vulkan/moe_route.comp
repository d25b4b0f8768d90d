#version 450
// The routing bookkeeping of one request in one workgroup: token pair
// offsets, a counting sort of the pairs by expert slot, each expert's first
// grouped row, the grouped GEMM's tile schedule and the indirect dispatch
// sizes of the steps after it (mb_kvk_args). The per-slot counters are the
// only memory that must start at zero; this shader zeroes the ones it used
// before it ends, so nothing is cleared between requests. Within an expert,
// rows come in the order the counters' atomics hand out: it may differ
// between runs, and nothing downstream depends on it.
#extension GL_GOOGLE_include_directive : require
#include "moe_common.glsl"

#define THREADS 256u

layout(local_size_x = 256) in;
layout(constant_id = 0) const uint GEMV_ROWS = 16u; // moe_gemv's weight rows per workgroup
// Output columns per tile of the GEMM that follows: moe_gemm's 64 or
// moe_gemm_coopmat's 128 (0 counts as 64).
layout(constant_id = 1) const uint GEMM_BN_SPEC = 64u;
const uint GEMM_BN = GEMM_BN_SPEC == 0u ? 64u : GEMM_BN_SPEC;
// Grouped rows per tile: 64 (MB_KVK_GEMM_BM; 0 counts as 64), or
// moe_gemm_cm2's 128 (the tiles buffer is sized for 64, so it fits).
layout(constant_id = 2) const uint GEMM_BM_SPEC = 64u;
const uint GEMM_BM = GEMM_BM_SPEC == 0u ? 64u : GEMM_BM_SPEC;
// The down product's output columns per tile where they differ from
// gate/up's (moe_gemm_cm2's MB_VULKAN_CM2_DOWN; 0: GEMM_BN).
layout(constant_id = 3) const uint GEMM_BN2_SPEC = 0u;
const uint GEMM_BN2 = GEMM_BN2_SPEC == 0u ? GEMM_BN : GEMM_BN2_SPEC;

layout(push_constant) uniform P {
    uvec2 counts, pairs, slot_cnt, slot_eidx, tok_off, expert_slot, expert_off, pair_pos, perm_token, tiles, args;
    uint n_tokens, n_pairs, d_model, d_ff;
} p;

layout(buffer_reference, std430, buffer_reference_align = 4) coherent buffer MbI32c { int v[]; };

shared uint s_scan[THREADS];
shared uint s_carry, s_carry2, s_active;

// Exclusive prefix sum of v over the workgroup (Hillis-Steele); total
// receives the sum of all. Call from uniform control flow.
uint scan_excl(uint v, out uint total)
{
    const uint tid = gl_LocalInvocationID.x;
    s_scan[tid] = v;
    barrier();
    for (uint o = 1u; o < THREADS; o <<= 1) {
        uint t = tid >= o ? s_scan[tid - o] : 0u;
        barrier();
        s_scan[tid] += t;
        barrier();
    }
    const uint incl = s_scan[tid];
    total = s_scan[THREADS - 1u];
    barrier();
    return incl - v;
}

// Buffer writes of this workgroup seen by all of it.
void sync_all()
{
    memoryBarrierBuffer();
    barrier();
}

uint pair_count(uint t)
{
    return (MbU32(p.counts).v[t >> 1] >> ((t & 1u) * 16u)) & 0xffffu;
}

void main()
{
    const uint tid = gl_LocalInvocationID.x;
    MbI32c tok_off = MbI32c(p.tok_off), slot_cnt = MbI32c(p.slot_cnt), slot_eidx = MbI32c(p.slot_eidx);
    MbI32c expert_slot = MbI32c(p.expert_slot), expert_off = MbI32c(p.expert_off);
    MbI32c pair_pos = MbI32c(p.pair_pos), perm_token = MbI32c(p.perm_token);
    MbU32x2 pairs = MbU32x2(p.pairs);
    if (tid == 0u) {
        s_carry = 0u;
        s_active = 0u;
    }
    barrier();

    // 1. tok_off: exclusive scan of the pair counts, THREADS tokens at a time.
    for (uint base = 0u; base < p.n_tokens; base += THREADS) {
        const uint t = base + tid;
        const uint c = t < p.n_tokens ? pair_count(t) : 0u;
        uint total;
        const uint ex = scan_excl(c, total);
        if (t < p.n_tokens) tok_off.v[t] = int(s_carry + ex);
        barrier();
        if (tid == 0u) s_carry += total;
        barrier();
    }
    if (tid == 0u) tok_off.v[p.n_tokens] = int(s_carry);

    // 2. Count pairs per slot; the first pair of a slot makes it an
    // expert. pair_pos holds each pair's rank within its slot for now.
    for (uint j = tid; j < p.n_pairs; j += THREADS) {
        const uint slot = pairs.v[j].x;
        const int r = atomicAdd(slot_cnt.v[slot], 1);
        if (r == 0) {
            const uint e = atomicAdd(s_active, 1u);
            expert_slot.v[e] = int(slot);
            slot_eidx.v[slot] = int(e);
        }
        pair_pos.v[j] = r;
    }
    sync_all();
    const uint n_active = s_active;

    // 3. Expert offsets and tile offsets: scans over the active experts.
    if (tid == 0u) {
        s_carry = 0u;
        s_carry2 = 0u;
    }
    barrier();
    for (uint base = 0u; base < n_active; base += THREADS) {
        const uint e = base + tid;
        const uint cnt = e < n_active ? uint(slot_cnt.v[expert_slot.v[e]]) : 0u;
        const uint nt = (cnt + GEMM_BM - 1u) / GEMM_BM;
        uint total, total2;
        const uint ex = scan_excl(cnt, total);
        const uint ex2 = scan_excl(nt, total2);
        if (e < n_active) {
            expert_off.v[e] = int(s_carry + ex);
            const uint toff = s_carry2 + ex2;
            for (uint k = 0u; k < nt; k++)
                MbI32x2(p.tiles).v[toff + k] = ivec2(int(e), int(k * GEMM_BM));
        }
        barrier();
        if (tid == 0u) {
            s_carry += total;
            s_carry2 += total2;
        }
        barrier();
    }
    if (tid == 0u) {
        expert_off.v[n_active] = int(s_carry);
        MbU32 a = MbU32(p.args);
        a.v[0] = (p.d_ff + GEMV_ROWS - 1u) / GEMV_ROWS;
        a.v[1] = n_active;
        a.v[2] = 1u;
        a.v[3] = (p.d_model + GEMV_ROWS - 1u) / GEMV_ROWS;
        a.v[4] = n_active;
        a.v[5] = 1u;
        a.v[6] = s_carry2;
        a.v[7] = (p.d_ff + GEMM_BN - 1u) / GEMM_BN;
        a.v[8] = 1u;
        a.v[9] = s_carry2;
        a.v[10] = (p.d_model + GEMM_BN2 - 1u) / GEMM_BN2;
        a.v[11] = 1u;
        a.v[12] = n_active;
        a.v[13] = s_carry2;
    }
    sync_all();

    // 4. Each pair's grouped row, and the token of each row.
    for (uint t = tid; t < p.n_tokens; t += THREADS) {
        const int j1 = tok_off.v[t + 1u];
        for (int j = tok_off.v[t]; j < j1; j++) {
            const int pos = expert_off.v[slot_eidx.v[pairs.v[j].x]] + pair_pos.v[j];
            pair_pos.v[j] = pos;
            perm_token.v[pos] = int(t);
        }
    }

    // 5. Leave the counters at zero for the next request (step 3 read them
    // before the barrier above).
    for (uint e = tid; e < n_active; e += THREADS)
        slot_cnt.v[expert_slot.v[e]] = 0;
}
