#version 450
// moe_gemm_cm2_bf16: bf16 weights and bf16 activation halves on bf16
// matrices (VK_KHR_shader_bfloat16); the body and its description are in
// moe_gemm_cm2.glsl.
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_NV_cooperative_matrix2 : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types : require
#extension GL_EXT_bfloat16 : require
#define MB_CM2_BF16 1
#include "../moe_common.glsl"
#include "moe_gemm_cm2.glsl"
