#version 450
// Dequantizes a quantized matrix to f32 through mb_qdeq16, the loader of
// every shader that reads quantized weights, so that a test can compare its
// values bit for bit with kernels/cpu/quant.c's. One invocation per run of
// 16 weights:
//   out[row][k .. k + 15] = dequant(W[row][k .. k + 15])
#extension GL_GOOGLE_include_directive : require
#include "moe_common.glsl"
#include "moe_quant.glsl"

layout(local_size_x = 64) in;
layout(constant_id = 0) const uint Q = MB_Q8_0; // the quantized type

layout(push_constant) uniform P {
    uvec2 w, out_;
    uint rows, K;
} p;

void main()
{
    const uint runs = p.K / 16u, idx = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * 64u;
    if (idx >= p.rows * runs) return;
    const uint row = idx / runs, k = (idx % runs) * 16u, nb = mb_qnb(Q, p.K);
    float w[16];
    mb_qdeq16(p.w, Q, p.rows * nb, nb, row, k, w);
    MbF32 o = MbF32(p.out_);
    for (uint i = 0u; i < 16u; i++)
        o.v[row * p.K + k + i] = w[i];
}
