#version 450
// The combine: out[t][c] = sum over token t's pairs j, in request order, of
// gate_j * y[pair_pos[j]][c], encoded to the payload dtype. One invocation
// per 32-bit output word (one f32 element, or two 16-bit ones, which may
// belong to two tokens when d_model is odd). A fixed order and no atomics
// keep the result bit-identical from run to run; a token without pairs
// gets zeros.
#extension GL_GOOGLE_include_directive : require
#include "moe_common.glsl"

layout(local_size_x = 256) in;
layout(constant_id = 0) const uint PD = 0u; // payload dtype

layout(push_constant) uniform P {
    uvec2 tok_off, pairs, pair_pos, y, out_;
    uint n_tokens, d_model;
} p;

float element(uint i)
{
    const uint t = i / p.d_model, c = i - t * p.d_model;
    const int j1 = MbI32(p.tok_off).v[t + 1u];
    float acc = 0.0;
    for (int j = MbI32(p.tok_off).v[t]; j < j1; j++) {
        const float g = uintBitsToFloat(MbU32x2(p.pairs).v[j].y);
        acc += g * MbF32(p.y).v[uint(MbI32(p.pair_pos).v[j]) * p.d_model + c];
    }
    return acc;
}

void main()
{
    const uint n = p.n_tokens * p.d_model;
    const uint words = PD == MB_F32 ? n : (n + 1u) / 2u;
    const uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    MbU32 outp = MbU32(p.out_);
    for (uint w = gl_GlobalInvocationID.x; w < words; w += stride) {
        if (PD == MB_F32) {
            outp.v[w] = floatBitsToUint(element(w));
        } else {
            const uint i = 2u * w;
            outp.v[w] = mb_pack2(element(i), i + 1u < n ? element(i + 1u) : 0.0, PD);
        }
    }
}
