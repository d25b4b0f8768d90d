#version 450
// Activations from the payload dtype into f32 for the expert math:
// x[i] = f32(act[i]), a grid-stride loop over n elements.
#extension GL_GOOGLE_include_directive : require
#include "moe_common.glsl"

layout(local_size_x = 256) in;
layout(constant_id = 0) const uint PD = 0u; // payload dtype

layout(push_constant) uniform P {
    uvec2 act, x;
    uint n, pad;
} p;

void main()
{
    const uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    MbF32 x = MbF32(p.x);
    for (uint i = gl_GlobalInvocationID.x; i < p.n; i += stride)
        x.v[i] = mb_load(p.act, i, PD);
}
