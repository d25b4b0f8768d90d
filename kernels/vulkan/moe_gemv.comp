#version 450
// The decode path: for each expert with pairs (workgroup y), every weight
// row is read once per NT of the expert's rows and dotted with each of
// them, so a routed expert's weights stream from memory about once per
// request whatever its token count. One subgroup per weight row (lanes
// stride along K, 16-byte loads where K allows), subgroupAdd for the sums,
// f32 math. Works for any subgroup size that divides the workgroup. The
// gate/up step reads the activations in the payload dtype (XDT), so the
// decode path needs no conversion pass. Quantized weights (gate and up
// each of its own type) are read in place, each lane dequantizing runs of
// 16 weights in registers (moe_quant.glsl) and striding 16 times its lane.
//   gate/up: h[pos][r] = silu(W_gate[r] . x[token(pos)]) * (W_up[r] . x[token(pos)])
//   down:    y[pos][n] = W_down[n] . h[pos]
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "moe_common.glsl"
#include "moe_quant.glsl"

#define NT 4

layout(local_size_x = 128) in;
layout(constant_id = 0) const uint WDT = 0u;       // weight dtype
layout(constant_id = 1) const bool GATEUP = true;  // gate/up + SiLU, else down
layout(constant_id = 2) const bool VEC = false;    // 16-byte loads
layout(constant_id = 3) const uint ROWS = 16u;     // weight rows per workgroup (moe_route's too)
layout(constant_id = 4) const uint XDT = 0u;       // dtype of the input rows: f32, or the payload's
layout(constant_id = 5) const uint WDTB = 0u;      // up's weight dtype (gate/up)

layout(push_constant) uniform P {
    uvec2 slots, tiles, expert_slot, expert_off, perm_token, xin, out_;
    uint K, N;
} p;

// Elements of a 16-byte weight load.
const uint V = WDT == MB_F32 ? 4u : 8u;

void unpack16(uvec4 w, out float f[8])
{
    if (WDT == MB_F32) {
        f[0] = uintBitsToFloat(w.x);
        f[1] = uintBitsToFloat(w.y);
        f[2] = uintBitsToFloat(w.z);
        f[3] = uintBitsToFloat(w.w);
        f[4] = f[5] = f[6] = f[7] = 0.0;
    } else {
        for (uint i = 0u; i < 4u; i++) {
            f[2u * i] = mb_half(w[i], 0u, WDT);
            f[2u * i + 1u] = mb_half(w[i], 1u, WDT);
        }
    }
}

// Input elements i .. i + 3 (i a multiple of 4) and element i.
vec4 x_load4(uint i)
{
    if (XDT == MB_F32) return MbF32x4(p.xin).v[i >> 2];
    const uvec2 w = MbU32x2(p.xin).v[i >> 2];
    return vec4(mb_half(w.x, 0u, XDT), mb_half(w.x, 1u, XDT), mb_half(w.y, 0u, XDT), mb_half(w.y, 1u, XDT));
}

float x_load(uint i) { return mb_load(p.xin, i, XDT); }

void main()
{
    const uint e = gl_WorkGroupID.y;
    const uint slot = uint(MbI32(p.expert_slot).v[e]);
    MbU32x2 st = MbU32x2(p.slots);
    const uvec2 wa = st.v[slot * 3u + (GATEUP ? 0u : 2u)];
    const uvec2 wb = st.v[slot * 3u + 1u];
    const int p0 = MbI32(p.expert_off).v[e], p1 = MbI32(p.expert_off).v[e + 1u];
    const uint lane = gl_SubgroupInvocationID, sg = gl_SubgroupSize;
    MbF32 outp = MbF32(p.out_);

    for (uint r = gl_SubgroupID; r < ROWS; r += gl_NumSubgroups) {
        const uint row = gl_WorkGroupID.x * ROWS + r;
        if (row >= p.N) break;
        const uint wrow = row * p.K;
        for (int c0 = p0; c0 < p1; c0 += NT) {
            const int nt = min(NT, p1 - c0);
            uint xr[NT];
            for (int i = 0; i < NT; i++) {
                const int pos = c0 + (i < nt ? i : 0);
                xr[i] = (GATEUP ? uint(MbI32(p.perm_token).v[pos]) : uint(pos)) * p.K;
            }
            float acc_a[NT], acc_b[NT];
            for (int i = 0; i < NT; i++) {
                acc_a[i] = 0.0;
                acc_b[i] = 0.0;
            }
            if (mb_is_quant(WDT)) {
                // K is whole blocks, so whole runs of 16.
                const uint nba = mb_qnb(WDT, p.K), nbb = mb_qnb(WDTB, p.K);
                for (uint k = lane * 16u; k < p.K; k += sg * 16u) {
                    float fa[16], fb[16];
                    mb_qdeq16(wa, WDT, p.N * nba, nba, row, k, fa);
                    if (GATEUP) mb_qdeq16(wb, WDTB, p.N * nbb, nbb, row, k, fb);
                    for (int i = 0; i < NT; i++) {
                        if (i >= nt) break;
                        for (uint v = 0u; v < 16u; v += 4u) {
                            const vec4 x4 = x_load4(xr[i] + k + v);
                            acc_a[i] += dot(vec4(fa[v], fa[v + 1u], fa[v + 2u], fa[v + 3u]), x4);
                            if (GATEUP) acc_b[i] += dot(vec4(fb[v], fb[v + 1u], fb[v + 2u], fb[v + 3u]), x4);
                        }
                    }
                }
            } else if (VEC) {
                for (uint k = lane * V; k < p.K; k += sg * V) {
                    float fa[8], fb[8];
                    unpack16(MbU32x4(wa).v[(wrow + k) / V], fa);
                    if (GATEUP) unpack16(MbU32x4(wb).v[(wrow + k) / V], fb);
                    for (int i = 0; i < NT; i++) {
                        if (i >= nt) break;
                        for (uint v = 0u; v < V; v += 4u) {
                            const vec4 x4 = x_load4(xr[i] + k + v);
                            acc_a[i] += dot(vec4(fa[v], fa[v + 1u], fa[v + 2u], fa[v + 3u]), x4);
                            if (GATEUP) acc_b[i] += dot(vec4(fb[v], fb[v + 1u], fb[v + 2u], fb[v + 3u]), x4);
                        }
                    }
                }
            } else {
                for (uint k = lane; k < p.K; k += sg) {
                    const float fa = mb_load(wa, wrow + k, WDT);
                    const float fb = GATEUP ? mb_load(wb, wrow + k, WDT) : 0.0;
                    for (int i = 0; i < NT; i++) {
                        if (i >= nt) break;
                        const float x = x_load(xr[i] + k);
                        acc_a[i] += fa * x;
                        if (GATEUP) acc_b[i] += fb * x;
                    }
                }
            }
            for (int i = 0; i < NT; i++) {
                if (i >= nt) break;
                const float a = subgroupAdd(acc_a[i]);
                const float b = GATEUP ? subgroupAdd(acc_b[i]) : 0.0;
                if (subgroupElect()) outp.v[uint(c0 + i) * p.N + row] = GATEUP ? mb_silu(a) * b : a;
            }
        }
    }
}
