#version 450
// Activations from the payload dtype into the GEMMs' input, a grid-stride
// loop: OUT 0 (moe_gemm, moe_gemv): x[i] = f32(act[i]), i < n; OUT 1 and 2
// (moe_gemm_coopmat, n even): f16 halves two a word, word i holding
// elements 2i and 2i + 1 at x, and for OUT 2 (f32 payloads) the low halves
// (mb_split_f16) n / 2 words after them. OUT 1 rounds to nearest: exact for
// f16 payloads, and for bf16 ones within f16's normal range. OUT 3 and 4
// are OUT 1 and 2 gathered into grouped order for moe_gemm_cm2: n elements
// are n / k grouped rows of k (even), row r a copy of act's row
// perm_token[r].
#extension GL_GOOGLE_include_directive : require
#include "moe_common.glsl"

layout(local_size_x = 256) in;
layout(constant_id = 0) const uint PD = 0u;  // payload dtype
layout(constant_id = 1) const uint OUT = 0u; // 0 f32; 1 f16; 2 f16 high and low halves; 3, 4 gathered

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
        } else {
            uint hi, lo;
            mb_split_f16(v, hi, lo);
            xw.v[i] = hi;
            xw.v[words + i] = lo;
        }
    }
}
