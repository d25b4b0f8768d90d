// Shared pieces of the MoE shaders (kernels/vulkan/moe_*.comp): buffer
// reference types over device addresses, element loads for f32 and the
// 16-bit types (read as 32-bit words: no 16-bit storage needed), and the
// conversions back. kernels/vulkan/moe.h describes the shaders.
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference_uvec2 : require

#define MB_F32 0u
#define MB_F16 1u
#define MB_BF16 2u

layout(buffer_reference, std430, buffer_reference_align = 4) buffer MbU32 { uint v[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) buffer MbI32 { int v[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) buffer MbF32 { float v[]; };
layout(buffer_reference, std430, buffer_reference_align = 8) buffer MbU32x2 { uvec2 v[]; };
layout(buffer_reference, std430, buffer_reference_align = 8) buffer MbI32x2 { ivec2 v[]; };
layout(buffer_reference, std430, buffer_reference_align = 16) buffer MbU32x4 { uvec4 v[]; };
layout(buffer_reference, std430, buffer_reference_align = 16) buffer MbF32x4 { vec4 v[]; };

// Half `which` (0: low, 1: high) of a word of two 16-bit values of dtype dt.
float mb_half(uint word, uint which, uint dt)
{
    if (dt == MB_F16) return unpackHalf2x16(word)[which];
    return uintBitsToFloat(which == 0u ? word << 16 : word & 0xffff0000u);
}

// Element i of an array of dtype dt at address base.
float mb_load(uvec2 base, uint i, uint dt)
{
    if (dt == MB_F32) return MbF32(base).v[i];
    return mb_half(MbU32(base).v[i >> 1], i & 1u, dt);
}

// f32 to bf16 bits, rounding to nearest even; NaN stays NaN.
uint mb_bf16_bits(float f)
{
    uint u = floatBitsToUint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

// Two values as one word of dtype dt (f16 or bf16), lo in the low half.
uint mb_pack2(float lo, float hi, uint dt)
{
    if (dt == MB_F16) return packHalf2x16(vec2(lo, hi));
    return mb_bf16_bits(lo) | (mb_bf16_bits(hi) << 16);
}

float mb_silu(float g) { return g / (1.0 + exp(-g)); }

// Two f32 values as f16 high and low halves (packed two a word, x[0] in the
// low half), x = hi + lo to about 21 significant bits, for the matrix units
// (moe_convert, moe_gemm_coopmat). hi is x with its mantissa cut to f16's
// 10 bits by integer masking, so it is exact in f16 and no compiler can fold
// x - hi to zero (an f32 -> f16 -> f32 round trip may be folded into x);
// lo = x - hi is exact in f32 (precise: no contraction or reassociation)
// and rounded to f16. Below f16's normal range (|x| < 2^-14) hi is a signed
// zero and lo = x, an f16 subnormal (absolute error <= 2^-25); from 65536 up
// hi is inf (the f16 range limit, as on the CUDA backend with f16 weights).
void mb_split_f16(vec2 x, out uint hi, out uint lo)
{
    const uvec2 b = floatBitsToUint(x);
    const bvec2 tiny = lessThan(b & uvec2(0x7fffffffu), uvec2(0x38800000u));
    const uvec2 hb = mix(b & uvec2(0xffffe000u), b & uvec2(0x80000000u), tiny);
    precise const vec2 h = uintBitsToFloat(hb);
    precise const vec2 l = x - h;
    hi = packHalf2x16(h);
    lo = packHalf2x16(l);
}
