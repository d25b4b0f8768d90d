// The body of moe_gemm_cm2 and moe_gemm_cm2_bf16 (the .comp files set
// MB_CM2_BF16 and the extensions).
// The prefill path on matrix units through VK_NV_cooperative_matrix2:
// workgroup-scope matrices and tensor-addressed loads, so that the driver
// stages and lays out the tiles itself (its own shared memory and matrix
// instructions) instead of moe_gemm_coopmat's hand-staged 16 x 16 subgroup
// fragments. moe_route's tile schedule: BM grouped rows of one expert
// (workgroup x; specialisation 6, 64 by default, moe_route's GEMM_BM) by
// BN output columns (workgroup y; 4, 128, moe_route's GEMM_BN), K in
// steps of BK (5, 32); the same push constants (mb_kvk_gemm_cm_pc) and the same f16 operands:
//   gate/up: h[row][n] = silu(x_g[row] . W_gate[n]) * (x_g[row] . W_up[n])
//   down:    y[row][n] = h[row] . W_down[n]
// A (x_g, or h) is [rows][K] f16 in grouped order: moe_convert (OUT 3, 4)
// gathers x's rows through perm_token for this shader, so that every A
// load is a plain 2-D tensor slice. With SPLIT a low f16 half sits at
// a_lo (mb_split_f16: about 21 significant bits, two products a K step).
// The weights [N][K] are read row-major; bf16 weights are decoded to f16
// two a word (exact within f16's normal range, as moe_gemm_coopmat). Rows past the expert's and columns past N read as
// zero and are never stored (clamped tensor layouts). f32 accumulation in
// a fixed K order: deterministic.
// The workgroup: 256 invocations unless specialisation 7 says otherwise
// (128 or 512, MB_VULKAN_CM2_THREADS).
layout(local_size_x_id = 7) in;
layout(constant_id = 0) const uint WDT = 1u;         // weight dtype: f16 or bf16
layout(constant_id = 1) const bool GATEUP = true;    // gate/up + SiLU, else down
layout(constant_id = 2) const bool SPLIT = true;     // A has a low half at a_lo
layout(constant_id = 3) const bool SPLIT_OUT = true; // gate/up: h's low half to out_lo
layout(constant_id = 4) const uint BN = 128u;        // output columns per tile (moe_route's GEMM_BN)
layout(constant_id = 5) const uint BK = 32u;         // K per step
layout(constant_id = 6) const uint BM = 64u;         // grouped rows per tile (moe_route's GEMM_BM)
layout(constant_id = 7) const uint THREADS = 256u;   // the workgroup's invocations
// K and N fixed at pipeline creation (MB_VULKAN_CM2_KSPEC=1: the loop's
// trip count and the strides known to the compiler); 0: the push constants.
layout(constant_id = 8) const uint KSPEC = 0u;
layout(constant_id = 9) const uint NSPEC = 0u;

layout(push_constant) uniform P {
    uvec2 slots, tiles, expert_slot, expert_off, perm_token;
    uvec2 a_hi, a_lo;
    uvec2 out_, out_lo;
    uint K, N;
} p;
#define KD (KSPEC != 0u ? KSPEC : p.K)
#define ND (NSPEC != 0u ? NSPEC : p.N)

layout(buffer_reference, std430, buffer_reference_align = 2) buffer MbF16s { float16_t v[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) buffer MbWord { uint v; };
#if MB_CM2_BF16
layout(buffer_reference, std430, buffer_reference_align = 2) buffer MbBF16s { bfloat16_t v[]; };
#define MB_EL bfloat16_t
#define MB_ELS MbBF16s
#else
#define MB_EL float16_t
#define MB_ELS MbF16s
#endif

#if !MB_CM2_BF16
// bf16 weights, a block of two along K (one word): element c of the block.
float16_t mb_dec_bf16(const in MbWord b, const in uint32_t block[2], const in uint32_t in_block[2])
{
    const uint w = b.v;
    return float16_t(uintBitsToFloat(in_block[1] == 0u ? w << 16 : w & 0xffff0000u));
}
// bf16 weights into f16 matrices: words of two along K, blocks of 1 x 2.
#define MB_LOAD_W_DECODED(t, m, w, n0, k)                                                            \
    t = setTensorLayoutBlockSizeNV(t, 1, 2);                                                         \
    t = setTensorLayoutDimensionNV(t, ND, KD);                                                     \
    t = setTensorLayoutStrideNV(t, (KD >> 1) & ~3u, 1);                                             \
    coopMatLoadTensorNV(m, MbU32(w).v, 0, sliceTensorLayoutNV(t, n0, BN, k, BK), mb_dec_bf16)
#else
#define MB_LOAD_W_DECODED(t, m, w, n0, k) /* bf16 matrices take bf16 weights as they are */
#endif

float mb_silu_el(const in uint32_t r, const in uint32_t c, const in float g) { return mb_silu(g); }

// The high half of one f32 element as f32, exact in the operand type:
// mb_split_f16's (the mantissa cut to 10 bits, a signed zero below f16's
// normal range), or for bf16 the top 16 bits; the low half is the rest.
float mb_hi_el(const in uint32_t r, const in uint32_t c, const in float x)
{
    const uint b = floatBitsToUint(x);
#if MB_CM2_BF16
    return uintBitsToFloat(b & 0xffff0000u);
#else
    return uintBitsToFloat((b & 0x7fffffffu) < 0x38800000u ? b & 0x80000000u : b & 0xffffe000u);
#endif
}
float mb_lo_el(const in uint32_t r, const in uint32_t c, const in float x)
{
    precise const float l = x - mb_hi_el(r, c, x);
    return l;
}

// The products run transposed, D^T = W . A^T (the weights the matrix-A
// operand, read row-major with their decode; the activations the B operand
// through a transposed view; D stored through one), the arrangement
// llama.cpp's cooperative_matrix2 GEMMs use on NVIDIA's driver.
#define MW coopmat<MB_EL, gl_ScopeWorkgroup, BN, BK, gl_MatrixUseA>
#define MX coopmat<MB_EL, gl_ScopeWorkgroup, BK, BM, gl_MatrixUseB>
#define MC coopmat<float, gl_ScopeWorkgroup, BN, BM, gl_MatrixUseAccumulator>
#define MH coopmat<MB_EL, gl_ScopeWorkgroup, BN, BM, gl_MatrixUseAccumulator>
#define CLAMP gl_CooperativeMatrixClampModeConstantNV

// Two forms of every layout: clamped (rows past the expert's end and
// columns past N read as zero, stores there dropped) for edge tiles, and
// unclamped with strides the compiler can see are 16-byte multiples (K is
// a multiple of 8) for whole tiles, as llama.cpp's GEMMs do.
#define MB_LAYOUT_C(t) tensorLayoutNV<2, CLAMP> t = createTensorLayoutNV(2, CLAMP)
#define MB_LAYOUT_U(t) tensorLayoutNV<2> t = createTensorLayoutNV(2)

// W[n0 .. n0 + BN)[k .. k + BK) of the weights at w, [N][K].
#define MB_LOAD_W(NAME, LAYOUT)                                                                      \
    void NAME(inout MW m, uvec2 w, uint n0, uint k)                                                  \
    {                                                                                                \
        LAYOUT(t);                                                                                   \
        if (MB_CM2_BF16 != 0 || WDT == MB_F16) { /* as they are */                                   \
            t = setTensorLayoutDimensionNV(t, ND, KD);                                             \
            t = setTensorLayoutStrideNV(t, KD & ~7u, 1);                                            \
            coopMatLoadTensorNV(m, MB_ELS(w).v, 0, sliceTensorLayoutNV(t, n0, BN, k, BK));           \
        } else {                                                                                     \
            MB_LOAD_W_DECODED(t, m, w, n0, k);                                                       \
        }                                                                                            \
    }
MB_LOAD_W(load_w_c, MB_LAYOUT_C)
MB_LOAD_W(load_w_u, MB_LAYOUT_U)

// The K loop: c0 (and c1 for up) += W . A^T over the tile, A the grouped
// rows up to this expert's last as the B operand (K x rows) through a
// transposed view.
#define MB_K_LOOP(LAYOUT, LOAD_W)                                                                    \
    {                                                                                                \
        LAYOUT(ta);                                                                                  \
        ta = setTensorLayoutDimensionNV(ta, row_end, KD);                                           \
        ta = setTensorLayoutStrideNV(ta, KD & ~7u, 1);                                              \
        for (uint k = 0u; k < KD; k += BK) {                                                        \
            MX a;                                                                                    \
            coopMatLoadTensorNV(a, MB_ELS(p.a_hi).v, 0, sliceTensorLayoutNV(ta, row0, BM, k, BK), tr); \
            MW b0;                                                                                   \
            LOAD_W(b0, w0, n0, k);                                                                   \
            c0 = coopMatMulAdd(b0, a, c0);                                                           \
            MW b1;                                                                                   \
            if (GATEUP) {                                                                            \
                LOAD_W(b1, w1, n0, k);                                                               \
                c1 = coopMatMulAdd(b1, a, c1);                                                       \
            }                                                                                        \
            if (SPLIT) {                                                                             \
                coopMatLoadTensorNV(a, MB_ELS(p.a_lo).v, 0, sliceTensorLayoutNV(ta, row0, BM, k, BK), tr); \
                c0 = coopMatMulAdd(b0, a, c0);                                                       \
                if (GATEUP) c1 = coopMatMulAdd(b1, a, c1);                                           \
            }                                                                                        \
        }                                                                                            \
    }

void main()
{
    const ivec2 tl = MbI32x2(p.tiles).v[gl_WorkGroupID.x];
    MbI32 expert_off = MbI32(p.expert_off);
    const uint row0 = uint(expert_off.v[tl.x] + tl.y);
    const uint row_end = uint(expert_off.v[tl.x + 1]);
    const uint n0 = gl_WorkGroupID.y * BN;
    const uint slot = uint(MbI32(p.expert_slot).v[tl.x]);
    MbU32x2 st = MbU32x2(p.slots);
    const uvec2 w0 = st.v[slot * 3u + (GATEUP ? 0u : 2u)];
    const uvec2 w1 = st.v[slot * 3u + 1u];
    tensorViewNV<2, false, 1, 0> tr = createTensorViewNV(2, false, 1, 0);

    MC c0 = MC(0.0), c1 = MC(0.0);
    // Workgroup-uniform: the tile's rows, columns and K steps all whole.
    if (row0 + BM <= row_end && n0 + BN <= ND && KD % BK == 0u)
        MB_K_LOOP(MB_LAYOUT_U, load_w_u)
    else
        MB_K_LOOP(MB_LAYOUT_C, load_w_c)

    // Output [rows][N] through the transposed view: only this expert's rows
    // and N's columns are stored.
    tensorLayoutNV<2, CLAMP> to = createTensorLayoutNV(2, CLAMP);
    to = setTensorLayoutDimensionNV(to, row_end, ND);
    if (!GATEUP) {
        coopMatStoreTensorNV(c0, MbF32(p.out_).v, 0, sliceTensorLayoutNV(to, row0, BM, n0, BN), tr);
        return;
    }
    coopMatPerElementNV(c0, c0, mb_silu_el);
    c0 = c0 * c1;
    if (!SPLIT_OUT) {
        MH h = MH(c0);
        coopMatStoreTensorNV(h, MB_ELS(p.out_).v, 0, sliceTensorLayoutNV(to, row0, BM, n0, BN), tr);
        return;
    }
    coopMatPerElementNV(c1, c0, mb_lo_el);
    coopMatPerElementNV(c0, c0, mb_hi_el);
    MH h = MH(c0);
    coopMatStoreTensorNV(h, MB_ELS(p.out_).v, 0, sliceTensorLayoutNV(to, row0, BM, n0, BN), tr);
    h = MH(c1);
    coopMatStoreTensorNV(h, MB_ELS(p.out_lo).v, 0, sliceTensorLayoutNV(to, row0, BM, n0, BN), tr);
}
