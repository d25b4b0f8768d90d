#version 450
// Activations from the payload dtype into the GEMMs' input, a grid-stride
// loop: OUT 0 (moe_gemm, moe_gemv): x[i] = f32(act[i]), i < n; OUT 1 and 2
// (moe_gemm_coopmat, n even): f16 halves two a word, word i holding
// elements 2i and 2i + 1 at x, and for OUT 2 (f32 payloads) the low halves
// (mb_split_f16) n / 2 words after them. OUT 1 rounds to nearest: exact for
// f16 payloads, and for bf16 ones within f16's normal range.
#extension GL_GOOGLE_include_directive : require
#include "moe_common.glsl"

layout(local_size_x = 256) in;
layout(constant_id = 0) const uint PD = 0u;  // payload dtype
layout(constant_id = 1) const uint OUT = 0u; // 0 f32; 1 f16; 2 f16 high and low halves

layout(push_constant) uniform P {
    uvec2 act, x;
    uint n, pad;
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
    for (uint i = gl_GlobalInvocationID.x; i < words; i += stride) {
        const vec2 v = vec2(mb_load(p.act, 2u * i, PD), mb_load(p.act, 2u * i + 1u, PD));
        if (OUT == 1u) {
            xw.v[i] = packHalf2x16(v);
        } else {
            uint hi, lo;
            mb_split_f16(v, hi, lo);
            xw.v[i] = hi;
            xw.v[words + i] = lo;
        }
    }
}
