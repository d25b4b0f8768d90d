// The emulator's kernels/cuda/dense_mma.cuh (run.sh copies it over the
// generated one): cvt.rna.tf32 in integer arithmetic, and the MMAs
// (m16n8k8 .tf32, m16n8k16 .bf16) from the 32 lanes' fragments gathered,
// following the PTX ISA layouts that the original's comment lists.
#pragma once

#include <cstdint>
#include <cstring>

void mb_emu_gather(const void *mine, void *all, size_t bytes);

static inline uint32_t mb_tf32(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u; // nearest, ties away
    return u;
}

static inline float mb_tf32_f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline void mb_tf32_split(float x, uint32_t &big, uint32_t &small)
{
    big = mb_tf32(x);
    small = mb_tf32(x - mb_tf32_f(big));
}

static inline void mb_mma_tf32(float c[4], const uint32_t a[4], const uint32_t b[2])
{
    struct frag {
        uint32_t a[4], b[2];
        float c[4];
    } mine, all[32];
    memcpy(mine.a, a, sizeof mine.a);
    memcpy(mine.b, b, sizeof mine.b);
    memcpy(mine.c, c, sizeof mine.c);
    mb_emu_gather(&mine, all, sizeof mine);
    float A[16][8], B[8][8], C[16][8];
    for (int l = 0; l < 32; l++) {
        const int g = l >> 2, i = l & 3;
        A[g][i] = mb_tf32_f(all[l].a[0]);
        A[g + 8][i] = mb_tf32_f(all[l].a[1]);
        A[g][i + 4] = mb_tf32_f(all[l].a[2]);
        A[g + 8][i + 4] = mb_tf32_f(all[l].a[3]);
        B[i][g] = mb_tf32_f(all[l].b[0]);
        B[i + 4][g] = mb_tf32_f(all[l].b[1]);
        C[g][2 * i] = all[l].c[0];
        C[g][2 * i + 1] = all[l].c[1];
        C[g + 8][2 * i] = all[l].c[2];
        C[g + 8][2 * i + 1] = all[l].c[3];
    }
    const int lane = mb_emu_lane(), g = lane >> 2, i = lane & 3;
    const int rr[4] = {g, g, g + 8, g + 8}, cc[4] = {2 * i, 2 * i + 1, 2 * i, 2 * i + 1};
    for (int e = 0; e < 4; e++) {
        float s = C[rr[e]][cc[e]];
        for (int k = 0; k < 8; k++)
            s += A[rr[e]][k] * B[k][cc[e]];
        c[e] = s;
    }
}

static inline void mb_mma_3xtf32(float c[4], const uint32_t ab[4], const uint32_t as[4], const uint32_t bb[2],
                                 const uint32_t bs[2])
{
    mb_mma_tf32(c, as, bb);
    mb_mma_tf32(c, ab, bs);
    mb_mma_tf32(c, ab, bb);
}

static inline float mb_emu_bf16(uint32_t half)
{
    return mb_tf32_f(half << 16);
}

static inline void mb_mma_bf16(float c[4], const uint32_t a[4], const uint32_t b[2])
{
    struct frag {
        uint32_t a[4], b[2];
        float c[4];
    } mine, all[32];
    memcpy(mine.a, a, sizeof mine.a);
    memcpy(mine.b, b, sizeof mine.b);
    memcpy(mine.c, c, sizeof mine.c);
    mb_emu_gather(&mine, all, sizeof mine);
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; l++) {
        const int g = l >> 2, i = l & 3;
        const int ar[4] = {g, g + 8, g, g + 8}, ac[4] = {2 * i, 2 * i, 2 * i + 8, 2 * i + 8};
        for (int r = 0; r < 4; r++) {
            A[ar[r]][ac[r]] = mb_emu_bf16(all[l].a[r] & 0xffffu);
            A[ar[r]][ac[r] + 1] = mb_emu_bf16(all[l].a[r] >> 16);
        }
        B[2 * i][g] = mb_emu_bf16(all[l].b[0] & 0xffffu);
        B[2 * i + 1][g] = mb_emu_bf16(all[l].b[0] >> 16);
        B[2 * i + 8][g] = mb_emu_bf16(all[l].b[1] & 0xffffu);
        B[2 * i + 9][g] = mb_emu_bf16(all[l].b[1] >> 16);
        C[g][2 * i] = all[l].c[0];
        C[g][2 * i + 1] = all[l].c[1];
        C[g + 8][2 * i] = all[l].c[2];
        C[g + 8][2 * i + 1] = all[l].c[3];
    }
    const int lane = mb_emu_lane(), g = lane >> 2, i = lane & 3;
    const int rr[4] = {g, g, g + 8, g + 8}, cc[4] = {2 * i, 2 * i + 1, 2 * i, 2 * i + 1};
    for (int e = 0; e < 4; e++) {
        float s = C[rr[e]][cc[e]];
        for (int k = 0; k < 16; k++)
            s += A[rr[e]][k] * B[k][cc[e]];
        c[e] = s;
    }
}
