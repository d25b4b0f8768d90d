#version 450
// The prefill path, portable: tiled grouped matrix products over every
// expert with pairs in one dispatch. A workgroup computes a 64 x 64 tile of
// one expert's grouped rows (moe_route's tile schedule, workgroup x) by
// output columns (workgroup y), staging 16-deep K slices of activations and
// weights (converted to f32) through shared memory, K-major so that each
// invocation reads its 4 rows and 4 columns as one vec4 each; each of 256
// invocations owns a 4 x 4 block of the tile. With VEC, slices arrive in
// 16-byte loads. f32 math, and every output element's sum runs over K in
// the same order wherever its row sits in the tile. Quantized weights
// (gate and up each of its own type) are dequantized into the weight tiles
// exactly as kernels/cpu/quant.c does (moe_quant.glsl): a 16-deep slice of
// a row is one run of 16 weights.
//   gate/up: h[pos][n] = silu(x[token(pos)] . W_gate[n]) * (x[token(pos)] . W_up[n])
//   down:    y[pos][n] = h[pos] . W_down[n]
#extension GL_GOOGLE_include_directive : require
#include "moe_common.glsl"
#include "moe_quant.glsl"

#define BM 64u
#define BN 64u
#define BK 16u

layout(local_size_x = 256) in;
layout(constant_id = 0) const uint WDT = 0u;      // weight dtype
layout(constant_id = 1) const bool GATEUP = true; // gate/up + SiLU, else down
layout(constant_id = 2) const bool VEC = false;   // K a multiple of 8 (16-bit) or 4 (f32)
layout(constant_id = 3) const uint WDTB = 0u;     // up's weight dtype (gate/up)

layout(push_constant) uniform P {
    uvec2 slots, tiles, expert_slot, expert_off, perm_token, ain, out_;
    uint K, N;
} p;

// [k][row / 4] and [k][column / 4]: 4 rows or columns a vec4.
shared vec4 s_a[BK][BM / 4u];
shared vec4 s_b0[BK][BN / 4u];
shared vec4 s_b1[BK][BN / 4u];

void put_a(uint k, uint r, float v) { s_a[k][r >> 2][r & 3u] = v; }
void put_b(uint m, uint k, uint n, float v)
{
    if (m == 0u) s_b0[k][n >> 2][n & 3u] = v;
    else s_b1[k][n >> 2][n & 3u] = v;
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
    MbF32 ain = MbF32(p.ain);
    MbF32x4 ain4 = MbF32x4(p.ain);

    // VEC staging: A row tid / 4 gets k 4 (tid % 4) .. + 3 in one vec4.
    // 16-bit B: matrix tid / 128 (down: only 0), column (tid % 128) / 2,
    // k 8 (tid % 2) .. + 7 in one uvec4; f32 B: column tid / 4, k 4 (tid %
    // 4) .. + 3, both matrices. Scalar staging: element idx = tid + 256 q
    // of each 64 x 16 slice, row or column idx / 16, k idx % 16.
    const uint va_r = tid >> 2, va_k = (tid & 3u) * 4u;
    const bool va_ok = va_r < rows;
    const uint va_base = va_ok ? (GATEUP ? uint(MbI32(p.perm_token).v[row0 + va_r]) : row0 + va_r) * p.K : 0u;
    const uint vb_m = WDT == MB_F32 ? 0u : tid >> 7;
    const uint vb_n = WDT == MB_F32 ? tid >> 2 : (tid & 127u) >> 1;
    const uint vb_k = WDT == MB_F32 ? (tid & 3u) * 4u : (tid & 1u) * 8u;
    const bool vb_ok = n0 + vb_n < p.N && (GATEUP || vb_m == 0u);
    uint a_base[4];
    bool a_ok[4], b_ok[4];
    for (uint q = 0u; q < 4u; q++) {
        const uint r = (tid + 256u * q) / BK;
        a_ok[q] = r < rows;
        a_base[q] = a_ok[q] ? (GATEUP ? uint(MbI32(p.perm_token).v[row0 + r]) : row0 + r) * p.K : 0u;
        b_ok[q] = n0 + r < p.N;
    }

    const uint tx = tid % 16u, ty = tid / 16u;
    vec4 acc0[4], acc1[4];
    for (uint i = 0u; i < 4u; i++) {
        acc0[i] = vec4(0.0);
        acc1[i] = vec4(0.0);
    }

    for (uint k0 = 0u; k0 < p.K; k0 += BK) {
        if (mb_is_quant(WDT)) {
            // Activations as with VEC (K is whole blocks); a 16-deep slice of
            // a weight row is one run of 16: invocation tid < 64 dequantizes
            // gate's (down's) row n0 + tid, the next 64 up's.
            const uint ka = k0 + va_k;
            const vec4 a = va_ok ? ain4.v[(va_base + ka) >> 2] : vec4(0.0);
            for (uint c = 0u; c < 4u; c++)
                put_a(va_k + c, va_r, a[c]);
            const uint qm = tid >> 6, qn = tid & 63u;
            if (qm == 0u || (GATEUP && qm == 1u)) {
                float w[16];
                if (n0 + qn < p.N) {
                    const uint q = qm == 0u ? WDT : WDTB, nb = mb_qnb(q, p.K);
                    mb_qdeq16(qm == 0u ? w0 : w1, q, p.N * nb, nb, n0 + qn, k0, w);
                } else {
                    for (uint c = 0u; c < 16u; c++)
                        w[c] = 0.0;
                }
                for (uint c = 0u; c < 16u; c++)
                    put_b(qm, c, qn, w[c]);
            }
        } else if (VEC) {
            const uint ka = k0 + va_k;
            const vec4 a = va_ok && ka < p.K ? ain4.v[(va_base + ka) >> 2] : vec4(0.0);
            for (uint c = 0u; c < 4u; c++)
                put_a(va_k + c, va_r, a[c]);
            const uint kb = k0 + vb_k, wi = (n0 + vb_n) * p.K + kb;
            if (WDT == MB_F32) {
                const bool ok = vb_ok && kb < p.K;
                const vec4 b0 = ok ? MbF32x4(w0).v[wi >> 2] : vec4(0.0);
                const vec4 b1 = ok && GATEUP ? MbF32x4(w1).v[wi >> 2] : vec4(0.0);
                for (uint c = 0u; c < 4u; c++) {
                    put_b(0u, vb_k + c, vb_n, b0[c]);
                    if (GATEUP) put_b(1u, vb_k + c, vb_n, b1[c]);
                }
            } else if (GATEUP || vb_m == 0u) {
                const uvec4 w = vb_ok && kb < p.K ? MbU32x4(vb_m == 0u ? w0 : w1).v[wi >> 3] : uvec4(0u);
                for (uint c = 0u; c < 4u; c++) {
                    put_b(vb_m, vb_k + 2u * c, vb_n, mb_half(w[c], 0u, WDT));
                    put_b(vb_m, vb_k + 2u * c + 1u, vb_n, mb_half(w[c], 1u, WDT));
                }
            }
        } else {
            for (uint q = 0u; q < 4u; q++) {
                const uint idx = tid + 256u * q, r = idx / BK, kk = idx % BK, k = k0 + kk;
                const bool kin = k < p.K;
                put_a(kk, r, a_ok[q] && kin ? ain.v[a_base[q] + k] : 0.0);
                const uint wi = (n0 + r) * p.K + k;
                put_b(0u, kk, r, b_ok[q] && kin ? mb_load(w0, wi, WDT) : 0.0);
                if (GATEUP) put_b(1u, kk, r, b_ok[q] && kin ? mb_load(w1, wi, WDT) : 0.0);
            }
        }
        barrier();
        for (uint kk = 0u; kk < BK; kk++) {
            const vec4 a = s_a[kk][ty], b0 = s_b0[kk][tx];
            for (uint i = 0u; i < 4u; i++)
                acc0[i] = fma(vec4(a[i]), b0, acc0[i]);
            if (GATEUP) {
                const vec4 b1 = s_b1[kk][tx];
                for (uint i = 0u; i < 4u; i++)
                    acc1[i] = fma(vec4(a[i]), b1, acc1[i]);
            }
        }
        barrier();
    }

    MbF32 outp = MbF32(p.out_);
    for (uint i = 0u; i < 4u; i++) {
        const uint r = 4u * ty + i;
        if (r >= rows) continue;
        for (uint j = 0u; j < 4u; j++) {
            const uint c = n0 + 4u * tx + j;
            if (c >= p.N) continue;
            outp.v[(row0 + r) * p.N + c] = GATEUP ? mb_silu(acc0[i][j]) * acc1[i][j] : acc0[i][j];
        }
    }
}
