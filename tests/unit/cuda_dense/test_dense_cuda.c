/* The dense-layer CUDA kernels (kernels/cuda/dense.h) against the CPU
 * coordinator's functions (broker/norm.c, rope.c, attention.c, router.c,
 * kernels/cpu/gemm.c) and double-precision references, over many shapes,
 * with a determinism check (two runs bit-identical). Each kernel's worst
 * error is printed with the shape it occurred at, so one run on a GPU says
 * what is wrong. `--bench` also times decode-sized calls. Skips (77)
 * without a CUDA device. */
#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/dense.h"
#include "tests/cuda_testutil.h"
#include "tests/testutil.h"

#include "dense_test.h"

/* MB_DENSE_TESTS=name,name... runs only those groups (the emulator is
 * slow); unset, all of them. */
static int wanted(const char *name)
{
    const char *e = getenv("MB_DENSE_TESTS");
    return !e || strstr(e, name) != NULL;
}

int main(int argc, char **argv)
{
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev <= 0) MB_TEST_SKIP("no CUDA device");
    static const struct {
        const char *name;
        void (*run)(void);
    } groups[] = {
        {"refusals", test_refusals}, {"embed", test_embed},         {"rmsnorm", test_rmsnorm},
        {"rope", test_rope},         {"silu_add", test_silu_add},   {"route", test_route},
        {"linear", test_linear},     {"attention", test_attention}, {"merge", test_merge},
        {"fused", test_fused},       {"norm_in", test_norm_in},     {"drain", test_drain},
        {"stamp", test_stamp}};
    for (size_t i = 0; i < sizeof groups / sizeof *groups; i++)
        if (wanted(groups[i].name)) groups[i].run();
    dense_print_stats();
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) dense_bench();
    return mb_test_finish("test_dense_cuda");
}
