#version 450
// moe_gemm_cm2: f16 operands (f16 weights as they are, bf16 ones decoded);
// the body and its description are in moe_gemm_cm2.glsl.
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_NV_cooperative_matrix2 : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types : require
#define MB_CM2_BF16 0
#include "../moe_common.glsl"
#include "moe_gemm_cm2.glsl"
