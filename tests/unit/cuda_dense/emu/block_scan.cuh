// The emulator's <cub/block/block_scan.cuh> (run.sh puts it where the
// kernels' include finds it first): BlockScan::ExclusiveSum of a 1-D block
// through its TempStorage, with the barriers the real one has.
#pragma once

namespace cub {
template <typename T, int N> struct BlockScan {
    struct TempStorage {
        T v[N];
    };
    TempStorage &t;
    explicit BlockScan(TempStorage &s) : t(s) {}
    void ExclusiveSum(T in, T &out, T &total)
    {
        const int me = (int)threadIdx.x;
        t.v[me] = in;
        __syncthreads();
        T before = T(), all = T();
        for (int i = 0; i < (int)blockDim.x; i++) {
            if (i < me) before += t.v[i];
            all += t.v[i];
        }
        out = before;
        total = all;
        __syncthreads();
    }
};
} // namespace cub
