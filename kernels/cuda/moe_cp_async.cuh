// cp.async (sm_80+): 16-byte copies from global into shared memory that
// complete in the background, in commit groups the kernel waits for. Used
// by the grouped GEMMs' staging. Private to kernels/cuda/ (the CPU emulator
// of tests/unit/cuda_dense/emu replaces this file with plain copies).
#pragma once

// Copies 16 bytes from gmem to smem, or fills them with zeros when !valid.
__device__ __forceinline__ void mb_cp_async16(void *smem, const void *gmem, bool valid)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    const int n = valid ? 16 : 0; // 0: fill the 16 bytes with zeros
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void mb_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N committed groups are still in flight.
template <int N> __device__ __forceinline__ void mb_cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
