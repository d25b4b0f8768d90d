// Quantized weights in the shaders (Q8_0, Q4_K, Q6_K; layout in
// kernels/vulkan/quant_layout.h): runs of 16 consecutive weights of a row,
// read as 32-bit words (16-byte loads for the quants themselves, so no 8-
// or 16-bit storage feature is needed) and dequantized in registers
// exactly as kernels/cpu/quant.c does: the same f32 products and the same
// difference, marked precise so that no compiler fuses them. Every shader
// that reads quantized weights goes through mb_qdeq16, so moe_qdequant's
// bitwise test covers them all. Needs moe_common.glsl first.

#define MB_Q8_0 3u
#define MB_Q4_K 5u
#define MB_Q6_K 7u

// Whether a weight dtype is one of the quantized types above.
bool mb_is_quant(uint dt) { return dt >= MB_Q8_0; }

// Blocks in a row of k weights of quantized type q.
uint mb_qnb(uint q, uint k) { return q == MB_Q8_0 ? k >> 5 : k >> 8; }

// Byte i (0..15) of a 16-byte load.
uint mb_qbyte(uvec4 v, uint i) { return (v[i >> 2] >> (8u * (i & 3u))) & 0xffu; }

// 16-bit value i of an array read as words.
uint mb_qhalf(MbU32 a, uint i) { return (a.v[i >> 1] >> (16u * (i & 1u))) & 0xffffu; }

float mb_qf16(uint h) { return unpackHalf2x16(h).x; }

// w[0..16) = weights k .. k + 15 (k a multiple of 16) of row `row` of a
// [rows][K] matrix of quantized type q at base, whose rows * mb_qnb(q, K)
// blocks are n_blocks.
void mb_qdeq16(uvec2 base, uint q, uint n_blocks, uint nb, uint row, uint k, out float w[16])
{
    MbU32x4 v4 = MbU32x4(base);
    MbU32 v1 = MbU32(base);
    if (q == MB_Q8_0) {
        // qs[32] | d: y = q * d.
        const uint b = row * nb + (k >> 5);
        const uvec4 qs = v4.v[2u * b + ((k >> 4) & 1u)];
        const float d = mb_qf16(mb_qhalf(v1, n_blocks * 16u + b));
        for (uint i = 0u; i < 16u; i++)
            w[i] = float(int(mb_qbyte(qs, i) << 24) >> 24) * d;
    } else if (q == MB_Q4_K) {
        // The block as ggml has it (144 bytes: d, dmin, scales[12], qs[128]).
        // Sub-block j of 32: y = (d * sc_j) * q - dmin * m_j.
        const uint b = row * nb + (k >> 8), e = k & 255u, j = e >> 5;
        const uvec4 a = v4.v[9u * b];
        const uvec4 qs = v4.v[9u * b + 1u + 2u * (e >> 6) + ((e >> 4) & 1u)];
        const uint sh = 8u * (j & 3u);
        const uint lo = (a.y >> sh) & 0xffu, mid = (a.z >> sh) & 0xffu, hi = (a.w >> sh) & 0xffu;
        const uint sc = j < 4u ? lo & 63u : (hi & 0xfu) | ((lo >> 6) << 4);
        const uint mn = j < 4u ? mid & 63u : (hi >> 4) | ((mid >> 6) << 4);
        const float ds = mb_qf16(a.x & 0xffffu) * float(sc);
        const float dm = mb_qf16(a.x >> 16) * float(mn);
        const uint shift = (j & 1u) * 4u;
        for (uint i = 0u; i < 16u; i++) {
            precise float p = ds * float((mb_qbyte(qs, i) >> shift) & 0xfu);
            precise float y = p - dm;
            w[i] = y;
        }
    } else {
        // ql[128] | qh[64] | scales[16] | d: in half h of the block, quarter
        // g, q = (4 bits of ql | 2 bits of qh << 4) - 32, y = (d * sc) * q.
        const uint b = row * nb + (k >> 8), e = k & 255u, h = e >> 7, g = (e >> 5) & 3u, l0 = e & 16u;
        const uvec4 ql = v4.v[8u * b + 4u * h + 2u * (g & 1u) + (l0 >> 4)];
        const uvec4 qh = v4.v[8u * n_blocks + 4u * b + 2u * h + (l0 >> 4)];
        const uint si = 16u * b + 8u * h + (l0 >> 4) + 2u * g;
        const int sc = int(((v1.v[48u * n_blocks + (si >> 2)] >> (8u * (si & 3u))) & 0xffu) << 24) >> 24;
        const float ds = mb_qf16(mb_qhalf(v1, 104u * n_blocks + b)) * float(sc);
        const uint shl = (g >> 1) * 4u, shh = 2u * g;
        for (uint i = 0u; i < 16u; i++) {
            const uint qv = ((mb_qbyte(ql, i) >> shl) & 0xfu) | (((mb_qbyte(qh, i) >> shh) & 3u) << 4);
            w[i] = ds * float(int(qv) - 32);
        }
    }
}
