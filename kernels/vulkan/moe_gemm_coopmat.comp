#version 450
// The prefill path on matrix units (VK_NV_cooperative_matrix: 16 x 16 x 16
// f16 x f16 + f32 on subgroups of 32): moe_gemm's grouped matrix products
// on moe_route's tile schedule (64 of one expert's grouped rows, workgroup
// x) by 128 output columns (workgroup y). 8 subgroups as 2 (rows) x 4
// (columns), each owning 32 x 32 of the tile as 2 x 2 fragments (and as
// many for up in gate/up). 32-deep K slices are staged in shared memory as
// f16, 16 bytes a store, rows padded to 5 uvec4 (80 bytes: the 8 rows a
// fragment load reads at once fall on distinct banks); the next slice's
// global loads are issued into registers before the current one's MMAs.
//   gate/up: h[pos][n] = silu(x[token(pos)] . W_gate[n]) * (x[token(pos)] . W_up[n])
//   down:    y[pos][n] = h[pos] . W_down[n]
// Operands: A (x gathered through perm_token, or h) arrives as f16 from
// moe_convert or the gate/up epilogue: a high half, and with SPLIT a low
// half too (mb_split_f16: f32 values to about 21 bits, two MMAs per
// fragment). B, the weights [N][K] row-major, is read along K and staged as
// is (f16) or converted from bf16 (exact within f16's normal range,
// 2^-14..65504; below it an f16 subnormal, absolute error <= 2^-25; above
// it inf). Accumulation is f32, each output's K order fixed: deterministic.
// Needs K and N multiples of 8 (whole 16-byte chunks), subgroups of 32
// (gl_NumSubgroups 8) and 16-byte aligned bases.
#extension GL_GOOGLE_include_directive : require
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_KHR_shader_subgroup_basic : require
#include "moe_common.glsl"

#define BM 64u  // grouped rows per tile (moe_route's MB_KVK_GEMM_BM)
#define BN 128u // output columns per tile (MB_KVK_GEMM_CM_BN)
#define BK 32u  // K per staged slice
#define LDV 5u  // uvec4 per staged row: BK 16-bit values (4) + 1 of padding
#define LDC 5u  // uvec4 per row of a 16 x 16 f32 epilogue tile: 16 floats (4) + 1

layout(local_size_x = 256) in;
layout(constant_id = 0) const uint WDT = 1u;        // weight dtype: f16 or bf16
layout(constant_id = 1) const bool GATEUP = true;   // gate/up + SiLU, else down
layout(constant_id = 2) const bool SPLIT = true;    // A has a low half at a_lo
layout(constant_id = 3) const bool SPLIT_OUT = true; // gate/up: h's low half to out_lo

layout(push_constant) uniform P {
    uvec2 slots, tiles, expert_slot, expert_off, perm_token;
    uvec2 a_hi, a_lo;   // f16 A [rows][K], two a word; a_lo unused without SPLIT
    uvec2 out_, out_lo; // gate/up: f16 h (out_lo: its low half); down: f32 y
    uint K, N;
} p;

// One staged slice: A [BM][BK] and B [BN][BK] (K contiguous), f16, 8 a
// uvec4. The epilogue reuses s_b0 (640 uvec4) as 8 subgroup tiles of
// 16 x LDC uvec4 (80 each).
shared uvec4 s_ahi[BM * LDV];
shared uvec4 s_alo[BM * LDV];
shared uvec4 s_b0[BN * LDV];
shared uvec4 s_b1[BN * LDV];

#define FA fcoopmatNV<16, gl_ScopeSubgroup, 16, 16>
#define FC fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>

// 8 weights as f16: as they are, or from bf16 (each word two values, the
// first in the low half).
uvec4 mb_w_f16(uvec4 w)
{
    if (WDT == MB_F16) return w;
    uvec4 r;
    for (uint c = 0u; c < 4u; c++)
        r[c] = packHalf2x16(vec2(uintBitsToFloat(w[c] << 16), uintBitsToFloat(w[c] & 0xffff0000u)));
    return r;
}

void main()
{
    const uint tid = gl_LocalInvocationID.x;
    const ivec2 tl = MbI32x2(p.tiles).v[gl_WorkGroupID.x];
    MbI32 expert_off = MbI32(p.expert_off);
    const uint row0 = uint(expert_off.v[tl.x] + tl.y);
    const uint rows = min(BM, uint(expert_off.v[tl.x + 1]) - row0);
    const uint n0 = gl_WorkGroupID.y * BN;
    const uint slot = uint(MbI32(p.expert_slot).v[tl.x]);
    MbU32x2 st = MbU32x2(p.slots);
    const uvec2 w0 = st.v[slot * 3u + (GATEUP ? 0u : 2u)];
    const uvec2 w1 = st.v[slot * 3u + 1u];
    MbU32x4 ahi = MbU32x4(p.a_hi), alo = MbU32x4(p.a_lo);
    MbU32x4 b0g = MbU32x4(w0), b1g = MbU32x4(w1);

    // Staging: A chunk tid is row tid / 4, k 8 (tid % 4) .. + 7; B chunks
    // tid and tid + 256 are columns tid / 4 and tid / 4 + 64, the same k.
    // Rows past the tile's and columns past N stage zeros, as do k >= K.
    const uint sr = tid >> 2, sk = (tid & 3u) * 8u;
    const bool a_ok = sr < rows;
    const uint a_base = a_ok ? (GATEUP ? uint(MbI32(p.perm_token).v[row0 + sr]) : row0 + sr) * p.K : 0u;
    const bool b_ok0 = n0 + sr < p.N, b_ok1 = n0 + sr + 64u < p.N;
    const uint b_base0 = b_ok0 ? (n0 + sr) * p.K : 0u, b_base1 = b_ok1 ? (n0 + sr + 64u) * p.K : 0u;
    uvec4 ra_hi = uvec4(0u), ra_lo = uvec4(0u), rb0[2], rb1[2];
    for (uint q = 0u; q < 2u; q++) {
        rb0[q] = uvec4(0u);
        rb1[q] = uvec4(0u);
    }

    const uint sg = gl_SubgroupID, wm = sg >> 2, wn = sg & 3u;
    FC acc0[2][2], acc1[2][2];
    for (uint i = 0u; i < 2u; i++)
        for (uint j = 0u; j < 2u; j++) {
            acc0[i][j] = FC(0.0);
            acc1[i][j] = FC(0.0);
        }

    const uint nk = (p.K + BK - 1u) / BK;
    for (uint kt = 0u; kt <= nk; kt++) {
        // Loads of slice kt (into registers) overlap the MMAs of slice
        // kt - 1 below; iteration nk only finishes slice nk - 1.
        if (kt < nk) {
            const uint k = kt * BK + sk;
            const bool kin = k < p.K;
            ra_hi = a_ok && kin ? ahi.v[(a_base + k) >> 3] : uvec4(0u);
            if (SPLIT) ra_lo = a_ok && kin ? alo.v[(a_base + k) >> 3] : uvec4(0u);
            rb0[0] = b_ok0 && kin ? b0g.v[(b_base0 + k) >> 3] : uvec4(0u);
            rb0[1] = b_ok1 && kin ? b0g.v[(b_base1 + k) >> 3] : uvec4(0u);
            if (GATEUP) {
                rb1[0] = b_ok0 && kin ? b1g.v[(b_base0 + k) >> 3] : uvec4(0u);
                rb1[1] = b_ok1 && kin ? b1g.v[(b_base1 + k) >> 3] : uvec4(0u);
            }
        }
        if (kt > 0u) {
            for (uint kk = 0u; kk < BK; kk += 16u) {
                FA ah[2], al[2];
                for (uint i = 0u; i < 2u; i++) {
                    const uint o = (wm * 32u + i * 16u) * LDV + kk / 8u;
                    coopMatLoadNV(ah[i], s_ahi, o, LDV, false);
                    if (SPLIT) coopMatLoadNV(al[i], s_alo, o, LDV, false);
                    else al[i] = FA(0.0);
                }
                for (uint j = 0u; j < 2u; j++) {
                    // B[k][n] = W[n][k]: column n is staged row n, K contiguous.
                    const uint o = (wn * 32u + j * 16u) * LDV + kk / 8u;
                    FA bf0, bf1;
                    coopMatLoadNV(bf0, s_b0, o, LDV, true);
                    if (GATEUP) coopMatLoadNV(bf1, s_b1, o, LDV, true);
                    else bf1 = FA(0.0);
                    for (uint i = 0u; i < 2u; i++) {
                        acc0[i][j] = coopMatMulAddNV(ah[i], bf0, acc0[i][j]);
                        if (SPLIT) acc0[i][j] = coopMatMulAddNV(al[i], bf0, acc0[i][j]);
                        if (GATEUP) {
                            acc1[i][j] = coopMatMulAddNV(ah[i], bf1, acc1[i][j]);
                            if (SPLIT) acc1[i][j] = coopMatMulAddNV(al[i], bf1, acc1[i][j]);
                        }
                    }
                }
            }
        }
        // Every subgroup is done reading the staged slice (uniform: nk
        // comes from a push constant); then slice kt goes in.
        barrier();
        if (kt < nk) {
            s_ahi[sr * LDV + (sk >> 3)] = ra_hi;
            if (SPLIT) s_alo[sr * LDV + (sk >> 3)] = ra_lo;
            s_b0[sr * LDV + (sk >> 3)] = mb_w_f16(rb0[0]);
            s_b0[(sr + 64u) * LDV + (sk >> 3)] = mb_w_f16(rb0[1]);
            if (GATEUP) {
                s_b1[sr * LDV + (sk >> 3)] = mb_w_f16(rb1[0]);
                s_b1[(sr + 64u) * LDV + (sk >> 3)] = mb_w_f16(rb1[1]);
            }
        }
        barrier();
    }

    // Epilogue: each subgroup passes its fragments one at a time through
    // its own 16 x 16 f32 tile in s_b0 (free: the loop ended on a barrier
    // with nothing staged), and each lane writes 8 columns of one row:
    // only the tile's valid rows and columns (N % 8 == 0, so a lane's 8 are
    // all in or all out), 16 bytes a store. Subgroup barriers only, in
    // subgroup-uniform control flow.
    const uint lane = gl_SubgroupInvocationID, er = lane >> 1, ec = (lane & 1u) * 8u;
    const uint scr = sg * 16u * LDC;
    for (uint i = 0u; i < 2u; i++)
        for (uint j = 0u; j < 2u; j++) {
            FC c = acc0[i][j];
            if (GATEUP)
                for (int e = 0; e < c.length(); e++)
                    c[e] = mb_silu(acc0[i][j][e]) * acc1[i][j][e];
            coopMatStoreNV(c, s_b0, scr, LDC, false);
            subgroupMemoryBarrierShared();
            subgroupBarrier();
            const vec4 v0 = uintBitsToFloat(s_b0[scr + er * LDC + (ec >> 2)]);
            const vec4 v1 = uintBitsToFloat(s_b0[scr + er * LDC + (ec >> 2) + 1u]);
            const uint r = wm * 32u + i * 16u + er, col = n0 + wn * 32u + j * 16u + ec;
            if (r < rows && col < p.N) {
                const uint o = (row0 + r) * p.N + col;
                if (GATEUP) {
                    uvec4 hi, lo;
                    if (SPLIT_OUT) {
                        mb_split_f16(v0.xy, hi.x, lo.x);
                        mb_split_f16(v0.zw, hi.y, lo.y);
                        mb_split_f16(v1.xy, hi.z, lo.z);
                        mb_split_f16(v1.zw, hi.w, lo.w);
                        MbU32x4(p.out_lo).v[o >> 3] = lo;
                    } else {
                        hi = uvec4(packHalf2x16(v0.xy), packHalf2x16(v0.zw), packHalf2x16(v1.xy),
                                   packHalf2x16(v1.zw));
                    }
                    MbU32x4(p.out_).v[o >> 3] = hi;
                } else {
                    MbF32x4 y = MbF32x4(p.out_);
                    y.v[o >> 2] = v0;
                    y.v[(o >> 2) + 1u] = v1;
                }
            }
            // Every lane has read the tile before the next fragment overwrites it.
            subgroupMemoryBarrierShared();
            subgroupBarrier();
        }
}
