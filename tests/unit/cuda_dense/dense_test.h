/* What the source files of test_dense_cuda share: the random data and its
 * seed, weights in a dtype, the worst-error table (dense_test.c), the
 * fusions' bit comparisons (test_dense_fused.c), and each group's entry,
 * which main (test_dense_cuda.c) runs. */
#ifndef MB_TESTS_UNIT_CUDA_DENSE_DENSE_TEST_H
#define MB_TESTS_UNIT_CUDA_DENSE_DENSE_TEST_H

#include <stddef.h>

/* ---- host data (dense_test.c) --------------------------------------------- */

/* The seed every group draws its random data from, in the order main runs
 * them. */
extern unsigned long long dense_seed;

/* n floats, each scale times one uniform in [-1, 1). */
float *dense_rand_f32(size_t n, float scale);

/* ---- worst errors per kernel, printed at the end -------------------------- */

enum {
    E_EMBED,
    E_NORM,
    E_ROPE,
    E_KV,
    E_LIN_GEMV,
    E_LIN_GEMV_MMA,
    E_LIN_GEMM,
    E_LIN_MMA,
    E_LIN_CPU,
    E_ATT_DEC,
    E_ATT_AT,
    E_ATT_FLASH,
    E_ROUTE,
    E_SILU,
    E_ADD,
    E_FUSED,
    E_NORM_IN,
    E_N
};

/* Records err for kernel k at the shape described by the format; returns
 * whether it is within the kernel's bound. */
int dense_note(int k, double err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void dense_print_stats(void);

/* ---- weights in a dtype ---------------------------------------------------- */

size_t dense_wsize(int dt);
const char *dense_dtname(int dt);
/* Random [rows][cols] weights stored in dt; *exact gets their f32 values. */
void *dense_rand_weights(int dt, size_t count, float scale, float **exact);

/* ---- bit comparisons of the fusions (test_dense_fused.c) ------------------ */

/* Elements of a and b whose bits differ. */
size_t dense_count_diff(const float *a, const float *b, size_t n);
/* Elements of got (n, in dtype dt) that differ from ref encoded by the CPU's
 * mb_dtype_encode_f32. */
size_t dense_count_wire_diff(const float *ref, const void *got, int dt, size_t n);

/* ---- the groups, by file ---------------------------------------------------- */

/* test_dense_ops.c */
void test_embed(void);
void test_rmsnorm(void);
void test_rope(void);
void test_linear(void);
void test_silu_add(void);
void test_stamp(void);
void test_drain(void);
/* test_dense_attention.c */
void test_attention(void);
void test_merge(void);
/* test_dense_route.c */
void test_route(void);
/* test_dense_fused.c */
void test_fused(void);
/* test_dense_norm_in.c */
void test_norm_in(void);
/* test_dense_refusals.c */
void test_refusals(void);
/* test_dense_bench.c: `--bench`, after the checks */
void dense_bench(void);

#endif
