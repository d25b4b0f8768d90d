#version 450
// The decode path's last step, the down GEMV and the combine in one
// dispatch, for requests of a few tokens (whose experts hardly repeat):
//   out[t][n] = sum over token t's pairs j, in request order, of
//               gate_j * (W_down[slot_j][n] . h[pair_pos[j]])
// encoded to the payload dtype. One subgroup per output row n (lanes stride
// along K = d_ff, 16-byte loads where K allows, subgroupAdd for the dot
// products), NT pairs' weight rows loaded together; each row of a pair's
// expert is read once per pair. The sum runs in request order with no
// atomics, so results are the same from run to run. 16-bit payloads pack
// two rows a word through shared memory: N and ROWS must be even (the host
// falls back to moe_gemv + moe_combine otherwise). Quantized down weights
// are dequantized in registers, 16 a lane at a time (moe_quant.glsl).
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "moe_common.glsl"
#include "moe_quant.glsl"

#define NT 4

layout(local_size_x = 128) in;
layout(constant_id = 0) const uint WDT = 0u;   // weight dtype
layout(constant_id = 1) const uint PD = 0u;    // payload dtype of out
layout(constant_id = 2) const bool VEC = false; // 16-byte loads (K a multiple of 8, or of 4 for f32 weights)
layout(constant_id = 3) const uint ROWS = 4u;   // output rows per workgroup: one per subgroup

layout(push_constant) uniform P {
    uvec2 slots, tok_off, pairs, pair_pos, h, out_;
    uint n_tokens, K, N, pad;
} p;

const uint V = WDT == MB_F32 ? 4u : 8u;

shared float s_row[128];

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

// Row `row` of token t: its pairs' weighted dot products, in request order.
float row_sum(uint t, uint row)
{
    const uint lane = gl_SubgroupInvocationID, sg = gl_SubgroupSize;
    MbU32x2 st = MbU32x2(p.slots);
    MbU32x2 pairs = MbU32x2(p.pairs);
    MbF32x4 h4 = MbF32x4(p.h);
    MbF32 h1 = MbF32(p.h);
    const int j0 = MbI32(p.tok_off).v[t], j1 = MbI32(p.tok_off).v[t + 1u];
    const uint wrow = row * p.K;
    float acc = 0.0;
    for (int c0 = j0; c0 < j1; c0 += NT) {
        const int nt = min(NT, j1 - c0);
        uvec2 w[NT];
        uint hr[NT];
        float g[NT], part[NT];
        for (int i = 0; i < NT; i++) {
            const uint j = uint(c0 + (i < nt ? i : 0));
            const uvec2 pr = pairs.v[j];
            w[i] = st.v[pr.x * 3u + 2u];
            g[i] = uintBitsToFloat(pr.y);
            hr[i] = uint(MbI32(p.pair_pos).v[j]) * p.K;
            part[i] = 0.0;
        }
        if (mb_is_quant(WDT)) {
            const uint nb = mb_qnb(WDT, p.K);
            for (uint k = lane * 16u; k < p.K; k += sg * 16u) {
                for (int i = 0; i < NT; i++) {
                    if (i >= nt) break;
                    float f[16];
                    mb_qdeq16(w[i], WDT, p.N * nb, nb, row, k, f);
                    for (uint v = 0u; v < 16u; v += 4u)
                        part[i] += dot(vec4(f[v], f[v + 1u], f[v + 2u], f[v + 3u]), h4.v[(hr[i] + k + v) >> 2]);
                }
            }
        } else if (VEC) {
            for (uint k = lane * V; k < p.K; k += sg * V) {
                for (int i = 0; i < NT; i++) {
                    if (i >= nt) break;
                    float f[8];
                    unpack16(MbU32x4(w[i]).v[(wrow + k) / V], f);
                    for (uint v = 0u; v < V; v += 4u)
                        part[i] += dot(vec4(f[v], f[v + 1u], f[v + 2u], f[v + 3u]), h4.v[(hr[i] + k + v) >> 2]);
                }
            }
        } else {
            for (uint k = lane; k < p.K; k += sg) {
                for (int i = 0; i < NT; i++) {
                    if (i >= nt) break;
                    part[i] += mb_load(w[i], wrow + k, WDT) * h1.v[hr[i] + k];
                }
            }
        }
        for (int i = 0; i < NT; i++) {
            if (i >= nt) break;
            acc += g[i] * subgroupAdd(part[i]);
        }
    }
    return acc;
}

void main()
{
    const uint row0 = gl_WorkGroupID.x * ROWS;
    for (uint t = 0u; t < p.n_tokens; t++) {
        for (uint r = gl_SubgroupID; r < ROWS; r += gl_NumSubgroups) {
            const uint row = row0 + r;
            const float acc = row < p.N ? row_sum(t, row) : 0.0;
            if (PD == MB_F32) {
                if (row < p.N && subgroupElect()) MbF32(p.out_).v[t * p.N + row] = acc;
            } else if (subgroupElect()) {
                s_row[r] = acc;
            }
        }
        if (PD != MB_F32) {
            barrier();
            const uint i = gl_LocalInvocationIndex, row = row0 + 2u * i;
            if (i < ROWS / 2u && row < p.N)
                MbU32(p.out_).v[(t * p.N + row) >> 1] = mb_pack2(s_row[2u * i], s_row[2u * i + 1u], PD);
            barrier();
        }
    }
}
