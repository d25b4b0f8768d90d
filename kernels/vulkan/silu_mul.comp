#version 450
// h[i] = silu(g[i]) * u[i]: the elementwise step between the expert FFN's
// gate/up products and its down product. One invocation per element.
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer G { float g[]; };
layout(std430, binding = 1) readonly buffer U { float u[]; };
layout(std430, binding = 2) writeonly buffer H { float h[]; };
layout(push_constant) uniform P { uint n; } p;

void main()
{
    uint i = gl_GlobalInvocationID.x;
    if (i >= p.n) return;
    float x = g[i];
    h[i] = x / (1.0 + exp(-x)) * u[i];
}
