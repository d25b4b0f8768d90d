// Tensor-core pieces of the dense kernels: the split of an f32 into two TF32
// terms (big + small keep about 22 significant bits), mma.sync.m16n8k8 on
// TF32 and m16n8k16 on bf16, with f32 accumulation. Fragment layouts (PTX
// ISA, "Matrix Fragments for mma.m16n8k8 / m16n8k16"), g = lane / 4,
// i = lane % 4, (row, column):
//   m16n8k8 .tf32, one element a register:
//     A 16x8 (row): a0 (g, i), a1 (g + 8, i), a2 (g, i + 4), a3 (g + 8, i + 4)
//     B 8x8 (col):  b0 (i, g), b1 (i + 4, g)
//   m16n8k16 .bf16, two elements a register, the lower column or row in
//   the low half:
//     A 16x16: a0 (g, 2i..2i+1), a1 (g + 8, 2i..2i+1), a2 (g, 2i+8..2i+9),
//              a3 (g + 8, 2i+8..2i+9)
//     B 16x8:  b0 (2i..2i+1, g), b1 (2i+8..2i+9, g)
//   C 16x8 (both): c0 (g, 2i), c1 (g, 2i + 1), c2 (g + 8, 2i), c3 (g + 8, 2i + 1)
// Private to kernels/cuda/ (the CPU emulator of tests/unit/cuda_dense/emu
// replaces this file).
#pragma once

#include <cstdint>

__device__ __forceinline__ uint32_t mb_tf32(float x)
{
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
}

// x = big + small up to TF32 rounding of small.
__device__ __forceinline__ void mb_tf32_split(float x, uint32_t &big, uint32_t &small)
{
    big = mb_tf32(x);
    small = mb_tf32(x - __uint_as_float(big));
}

// c += A b over one 16 x 8 x 8 step, a warp-wide instruction.
__device__ __forceinline__ void mb_mma_tf32(float c[4], const uint32_t a[4], const uint32_t b[2])
{
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// c += A b over one 16 x 8 x 16 step on bf16 pairs.
__device__ __forceinline__ void mb_mma_bf16(float c[4], const uint32_t a[4], const uint32_t b[2])
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// c += A B with both operands split: the three products that matter, small
// terms first so they add into c before the big one.
__device__ __forceinline__ void mb_mma_3xtf32(float c[4], const uint32_t ab[4], const uint32_t as[4],
                                              const uint32_t bb[2], const uint32_t bs[2])
{
    mb_mma_tf32(c, as, bb);
    mb_mma_tf32(c, ab, bs);
    mb_mma_tf32(c, ab, bb);
}
