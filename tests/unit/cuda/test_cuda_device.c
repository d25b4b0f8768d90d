/* The CUDA build plumbing: device discovery compiled by nvcc and called from
 * C. Skips (77) on machines without a CUDA device. */
#include "kernels/cuda/device_query.h"
#include "tests/testutil.h"

int main(void)
{
    int n = mb_cuda_device_count();
    if (n <= 0) MB_TEST_SKIP("no CUDA device");
    for (int i = 0; i < n; i++) {
        char desc[256];
        unsigned long long total = 0, free_b = 0;
        CHECK(mb_cuda_device_describe(i, desc, sizeof desc, &total, &free_b) == 0);
        CHECK(total > 0 && free_b <= total);
        printf("cuda:%d %s, %.1f GiB\n", i, desc, (double)total / (1 << 30));
    }
    return mb_test_finish("test_cuda_device");
}
