#version 450
// Activations from the payload dtype into the GEMMs' input, a grid-stride
// loop: OUT 0 (moe_gemm, moe_gemv): x[i] = f32(act[i]), i < n; OUT 1 and 2
// (moe_gemm_coopmat, n even): f16 halves two a word, word i holding
// elements 2i and 2i + 1 at x, and for OUT 2 (f32 payloads) the low halves
// (mb_split_f16) n / 2 words after them. OUT 1 rounds to nearest: exact for
// f16 payloads, and for bf16 ones within f16's normal range. OUT 3 and 4
// are OUT 1 and 2 gathered into grouped order for moe_gemm_cm2: n elements
// are n / k grouped rows of k (even), row r a copy of act's row
// perm_token[r]. OUT 5 and 6 are 3 and 4 in bf16 for moe_gemm_cm2_bf16:
// 5 rounds to nearest even (exact for bf16 payloads), 6 splits into bf16
// halves (hi = the top 16 bits, lo = x - hi rounded: 16 significant bits,
// exact for f16 payloads).
#extension GL_GOOGLE_include_directive : require
#include "moe_common.glsl"

layout(local_size_x = 256) in;
layout(constant_id = 0) const uint PD = 0u;  // payload dtype
layout(constant_id = 1) const uint OUT = 0u; // 0 f32; 1 f16; 2 f16 halves; 3, 4 gathered; 5, 6 bf16 gathered

layout(push_constant) uniform P {
    uvec2 act, x, perm_token;
    uint n, k;
} p;

void main()
{
    const uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    if (OUT == 0u) {
        MbF32 x = MbF32(p.x);
        for (uint i = gl_GlobalInvocationID.x; i < p.n; i += stride)
            x.v[i] = mb_load(p.act, i, PD);
        return;
    }
    MbU32 xw = MbU32(p.x);
    const uint words = p.n >> 1;
    const bool gather = OUT >= 3u;
    MbI32 perm = MbI32(p.perm_token);
    for (uint i = gl_GlobalInvocationID.x; i < words; i += stride) {
        uint e = 2u * i;
        if (gather) {
            const uint r = e / p.k;
            e = uint(perm.v[r]) * p.k + (e - r * p.k);
        }
        const vec2 v = vec2(mb_load(p.act, e, PD), mb_load(p.act, e + 1u, PD));
        if (OUT == 1u || OUT == 3u) {
            xw.v[i] = packHalf2x16(v);
        } else if (OUT == 5u) {
            xw.v[i] = mb_pack2(v.x, v.y, MB_BF16);
        } else if (OUT == 6u) {
            const uvec2 b = floatBitsToUint(v);
            precise const vec2 l = v - uintBitsToFloat(b & uvec2(0xffff0000u));
            xw.v[i] = (b.x >> 16) | (b.y & 0xffff0000u);
            xw.v[words + i] = mb_pack2(l.x, l.y, MB_BF16);
        } else {
            uint hi, lo;
            mb_split_f16(v, hi, lo);
            xw.v[i] = hi;
            xw.v[words + i] = lo;
        }
    }
}
