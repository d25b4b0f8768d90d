/* The CUDA kernels for quantized experts (kernels/cuda/moe.h with Q8_0,
 * Q4_K and Q6_K weights) against the CPU:
 *   1. mb_kcuda_dequant bit for bit against kernels/cpu/quant.c's
 *      dequantization (f32), and its f16 output against those values
 *      rounded to nearest even (protocol/dtype.h), on random blocks with
 *      every kind of scale (negative, subnormal, zero, large);
 *   2. whole requests through mb_kcuda_moe_enqueue on every path (GEMV for
 *      one token, fused, unfused; the grouped GEMM; cuBLAS when it loads)
 *      for each type mix (gate, up and down each of its own type) and
 *      payload dtype, against a double-precision reference on the
 *      CPU-dequantized weights, and each request twice, bit-identical.
 * Bounds (max |out - ref| / max |ref|), in brackets the worst the CPU
 * emulator gave: GEMV 1e-5 (f32 payload; exact weights, f32 arithmetic)
 * [3.2e-7]; the tensor-core paths 4e-3 (weights rounded to f16: 2^-11
 * relative each, through two projections) [4.6e-4]; f16 payloads 2e-3 /
 * 5e-3 [4.6e-4 / 7.3e-4], bf16 payloads 1e-2 [3.5e-3] for the output's own
 * rounding on top. Built with nvcc it runs on a GPU (skips,
 * 77, without one); tests/unit/cuda_dense/emu/run.sh BUILD quant builds it
 * against the CPU emulator of the kernels. MB_QUANT_TEST_QUICK=1: one
 * payload dtype per type mix (the emulator's quick run). */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/quant.h"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/quant_layout.h"
#include "protocol/dtype.h"
#include "tests/quant_testutil.h"
#include "tests/cuda_testutil.h"
#include "tests/testutil.h"

static unsigned long long seed = 0x51AB;

/* ---- 1. dequantization ---------------------------------------------------- */

static void test_dequant(int t, size_t rows, size_t k, int mode)
{
    const size_t be = mb_kcpu_block_elems(t), nb = rows * k / be, bytes = nb * mb_kcpu_block_bytes(t);
    void *blocks = mb_test_quant_blocks(t, nb, mode, &seed), *packed = xmalloc(bytes);
    mb_kq_layout_pack(t, blocks, nb, packed);
    void *dw = dev_upload(packed, bytes), *d32 = NULL, *d16 = NULL;
    CU(cudaMalloc(&d32, rows * k * 4));
    CU(cudaMalloc(&d16, rows * k * 2));
    CU(mb_kcuda_dequant(t, dw, rows, k, MB_KCUDA_F32, d32, NULL));
    CU(mb_kcuda_dequant(t, dw, rows, k, MB_KCUDA_F16, d16, NULL));
    CU(cudaDeviceSynchronize());
    float *g32 = xmalloc(rows * k * 4), *ref = xmalloc(rows * k * 4);
    uint16_t *g16 = xmalloc(rows * k * 2);
    dev_download(g32, d32, rows * k * 4);
    dev_download(g16, d16, rows * k * 2);
    const size_t rb = mb_kcpu_row_bytes(t, k);
    for (size_t r = 0; r < rows; r++)
        mb_kcpu_dequant_row(t, (const char *)blocks + r * rb, ref + r * k, k);
    size_t bad32 = 0, bad16 = 0, first32 = SIZE_MAX, first16 = SIZE_MAX;
    for (size_t i = 0; i < rows * k; i++) {
        if (memcmp(&g32[i], &ref[i], 4) != 0 && bad32++ == 0) first32 = i;
        if (g16[i] != mb_f32_to_f16(ref[i]) && bad16++ == 0) first16 = i;
    }
    printf("dequant %-4s %3zu x %4zu scales %-6s: f32 %zu of %zu differ, f16 %zu differ\n", mb_dtype_name(t), rows,
           k, mode ? "any" : "small", bad32, rows * k, bad16);
    CHECK_MSG(bad32 == 0, "%s: element %zu is %.9g on the GPU, %.9g on the CPU", mb_dtype_name(t), first32,
              first32 < SIZE_MAX ? g32[first32] : 0.0f, first32 < SIZE_MAX ? ref[first32] : 0.0f);
    CHECK_MSG(bad16 == 0, "%s: f16 element %zu is 0x%04x, want 0x%04x", mb_dtype_name(t), first16,
              first16 < SIZE_MAX ? g16[first16] : 0, first16 < SIZE_MAX ? mb_f32_to_f16(ref[first16]) : 0);
    /* Not a type, or not whole blocks: refused before any launch. */
    CHECK(mb_kcuda_dequant(MB_KCUDA_BF16, dw, rows, k, MB_KCUDA_F32, d32, NULL) != 0);
    CHECK(mb_kcuda_dequant(t, dw, rows, k + 16, MB_KCUDA_F32, d32, NULL) != 0);
    CU(cudaFree(dw));
    CU(cudaFree(d32));
    CU(cudaFree(d16));
    free(blocks);
    free(packed);
    free(g32);
    free(g16);
    free(ref);
}

/* ---- 2. requests ------------------------------------------------------------ */

#define N_EXPERTS 4
#define TOP_K 2

typedef struct {
    uint32_t d_model, d_ff;
    int t[3];          /* gate, up, down */
    double *wr[3];     /* dequantized, as doubles: [d_ff][d_model] x2, [d_model][d_ff] */
    void *dev;         /* the three matrices in the device layout, each 256-aligned */
    mb_kcuda_expert ex;
} qexpert;

static void qexpert_init(qexpert *e, uint32_t d_model, uint32_t d_ff, const int t[3])
{
    e->d_model = d_model;
    e->d_ff = d_ff;
    size_t off[3], at = 0;
    void *packed[3];
    size_t bytes[3];
    for (int m = 0; m < 3; m++) {
        e->t[m] = t[m];
        const size_t rows = m == 2 ? d_model : d_ff, cols = m == 2 ? d_ff : d_model;
        const size_t nb = rows * cols / mb_kcpu_block_elems(t[m]);
        bytes[m] = nb * mb_kcpu_block_bytes(t[m]);
        void *blocks = mb_test_quant_blocks(t[m], nb, 0, &seed);
        packed[m] = xmalloc(bytes[m]);
        mb_kq_layout_pack(t[m], blocks, nb, packed[m]);
        e->wr[m] = mb_test_quant_dequant(t[m], blocks, rows, cols);
        free(blocks);
        at = (at + 255) & ~(size_t)255;
        off[m] = at;
        at += bytes[m];
    }
    CU(cudaMalloc(&e->dev, at));
    for (int m = 0; m < 3; m++) {
        CU(cudaMemcpy((char *)e->dev + off[m], packed[m], bytes[m], cudaMemcpyHostToDevice));
        free(packed[m]);
    }
    e->ex.gate = (char *)e->dev + off[0];
    e->ex.up = (char *)e->dev + off[1];
    e->ex.down = (char *)e->dev + off[2];
}

static void qexpert_fini(qexpert *e)
{
    for (int m = 0; m < 3; m++)
        free(e->wr[m]);
    CU(cudaFree(e->dev));
}

static double dot(const double *a, const double *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* y[d_model] += g * down(silu(gate x) * (up x)). */
static void ref_add(const qexpert *e, const double *x, double g, double *y)
{
    const size_t dm = e->d_model, df = e->d_ff;
    double *h = xmalloc(df * sizeof *h);
    for (size_t f = 0; f < df; f++) {
        const double a = dot(e->wr[0] + f * dm, x, dm), u = dot(e->wr[1] + f * dm, x, dm);
        h[f] = a / (1.0 + exp(-a)) * u;
    }
    for (size_t c = 0; c < dm; c++)
        y[c] += g * dot(e->wr[2] + c * df, h, df);
    free(h);
}

typedef struct {
    const char *name;
    mb_kcuda_path path;
    uint32_t n_tokens;
} qcase;

/* Runs one request of n_tokens (top-2 of N_EXPERTS experts each, every
 * third token of larger requests with one pair) on path; returns the
 * normalised error against the reference, after checking that a second
 * run gives the same bytes. */
static double run_request(const qexpert *ex, const mb_kcuda_expert *d_slots, const mb_kcuda_expert *h_slots,
                          mb_kcuda_moe_ws *ws, int payload, const qcase *qc, mb_kcuda_path *taken)
{
    const uint32_t nt = qc->n_tokens, dm = ex[0].d_model;
    const size_t esz = mb_dtype_size(payload), n_act = (size_t)nt * dm;
    uint16_t *counts = xmalloc(nt * sizeof *counts);
    struct {
        uint32_t slot;
        float gate;
    } *pairs = xmalloc((size_t)nt * TOP_K * sizeof *pairs);
    float *xf = xmalloc(n_act * sizeof *xf);
    void *act = xmalloc(n_act * esz);
    double *x = xmalloc(n_act * sizeof *x), *ref = calloc(n_act, sizeof *ref);
    REQUIRE(ref);
    for (size_t i = 0; i < n_act; i++)
        xf[i] = mb_test_rand_f32(&seed) * 2.0f;
    mb_dtype_encode_f32(payload, act, xf, n_act);
    mb_dtype_decode_f32(payload, xf, act, n_act);
    for (size_t i = 0; i < n_act; i++)
        x[i] = xf[i];
    uint32_t q = 0;
    int32_t per[N_EXPERTS] = {0};
    for (uint32_t t = 0; t < nt; t++) {
        const uint32_t n = nt > 4 && t % 3 == 2 ? 1 : TOP_K;
        const uint32_t e0 = (uint32_t)(mb_test_rand_u64(&seed) % N_EXPERTS);
        counts[t] = (uint16_t)n;
        for (uint32_t i = 0; i < n; i++, q++) {
            const uint32_t e = (e0 + i * (1 + t % 3)) % N_EXPERTS;
            pairs[q].slot = e;
            pairs[q].gate = 0.2f + 0.8f * fabsf(mb_test_rand_f32(&seed));
            per[e]++;
            ref_add(&ex[e], x + (size_t)t * dm, pairs[q].gate, ref + (size_t)t * dm);
        }
    }
    /* The host plan the cuBLAS path needs: experts ascending, counts, and
     * on the device the slots then the first rows. */
    int32_t plan_slot[N_EXPERTS], plan_count[N_EXPERTS], plan[2 * N_EXPERTS + 1];
    uint32_t np = 0;
    for (uint32_t e = 0; e < N_EXPERTS; e++)
        if (per[e]) {
            plan_slot[np] = (int32_t)e;
            plan_count[np++] = per[e];
        }
    int32_t off = 0;
    for (uint32_t e = 0; e < np; e++) {
        plan[e] = plan_slot[e];
        plan[np + e] = off;
        off += plan_count[e];
    }
    plan[2 * np] = off;
    void *d_act = dev_upload(act, n_act * esz), *d_counts = dev_upload(counts, nt * sizeof *counts);
    void *d_pairs = dev_upload(pairs, q * sizeof *pairs), *d_plan = dev_upload(plan, (2 * np + 1) * 4);
    void *d_out = NULL;
    CU(cudaMalloc(&d_out, n_act * esz));
    mb_kcuda_moe_problem p;
    memset(&p, 0, sizeof p);
    p.n_tokens = nt;
    p.n_pairs = q;
    p.d_model = dm;
    p.d_ff = ex[0].d_ff;
    p.max_slots = N_EXPERTS;
    p.layer_experts = N_EXPERTS;
    p.payload = payload;
    p.wdtype = ex[0].t[0];
    p.wdtype_up = ex[0].t[1];
    p.wdtype_down = ex[0].t[2];
    p.path = qc->path;
    p.slots = d_slots;
    p.act = d_act;
    p.pair_counts = d_counts;
    p.pairs = d_pairs;
    p.out = d_out;
    p.plan_experts = np;
    p.plan_slot = plan_slot;
    p.plan_count = plan_count;
    p.plan_dev = d_plan;
    p.slots_host = h_slots;
    *taken = mb_kcuda_moe_path(&p);
    void *out[2] = {xmalloc(n_act * esz), xmalloc(n_act * esz)};
    CU(mb_kcuda_moe_ws_reserve(ws, &p));
    for (int rep = 0; rep < 2; rep++) {
        CU(cudaMemset(d_out, 0xff, n_act * esz));
        CU(mb_kcuda_moe_enqueue(ws, &p, NULL));
        CU(cudaDeviceSynchronize());
        dev_download(out[rep], d_out, n_act * esz);
    }
    CHECK_MSG(memcmp(out[0], out[1], n_act * esz) == 0, "%s: two runs of the same request differ", qc->name);
    mb_dtype_decode_f32(payload, xf, out[0], n_act);
    double maxref = 0, maxdiff = 0;
    for (size_t i = 0; i < n_act; i++) {
        const double d = fabs((double)xf[i] - ref[i]);
        if (!(d <= maxdiff)) maxdiff = isnan(d) ? INFINITY : d;
        if (fabs(ref[i]) > maxref) maxref = fabs(ref[i]);
    }
    CU(cudaFree(d_act));
    CU(cudaFree(d_counts));
    CU(cudaFree(d_pairs));
    CU(cudaFree(d_plan));
    CU(cudaFree(d_out));
    free(out[0]);
    free(out[1]);
    free(counts);
    free(pairs);
    free(xf);
    free(act);
    free(x);
    free(ref);
    return maxref > 0 ? maxdiff / maxref : maxdiff > 0 ? INFINITY : 0;
}

static double bound(int payload, mb_kcuda_path taken)
{
    const int tc = taken != MB_KCUDA_PATH_GEMV; /* f16 weights on tensor cores */
    if (payload == MB_KCUDA_BF16) return 1e-2;
    if (payload == MB_KCUDA_F16) return tc ? 5e-3 : 2e-3;
    return tc ? 4e-3 : 1e-5;
}

static const char *const path_name[] = {"auto", "gemv", "gemm", "cublas"};

static void test_requests(const char *shape, uint32_t d_model, uint32_t d_ff, const int t[3], int quick)
{
    qexpert ex[N_EXPERTS];
    mb_kcuda_expert h_slots[N_EXPERTS];
    for (int e = 0; e < N_EXPERTS; e++) {
        qexpert_init(&ex[e], d_model, d_ff, t);
        h_slots[e] = ex[e].ex;
    }
    mb_kcuda_expert *d_slots = dev_upload(h_slots, sizeof h_slots);
    mb_kcuda_moe_ws *ws = NULL;
    CU(mb_kcuda_moe_ws_create(N_EXPERTS, &ws));
    /* 1 token: GEMV without routing; 2: GEMV with the combine fused; 7:
     * GEMV per expert then the combine kernel; 24: the grouped GEMM; 40
     * through cuBLAS (the grouped GEMM when cuBLAS is missing). */
    static const qcase cases[] = {
        {"1 token", MB_KCUDA_PATH_AUTO, 1},     {"2 tokens", MB_KCUDA_PATH_AUTO, 2},
        {"7 tokens", MB_KCUDA_PATH_GEMV, 7},    {"24 tokens", MB_KCUDA_PATH_GEMM, 24},
        {"40 tokens", MB_KCUDA_PATH_CUBLAS, 40},
    };
    static const int payloads[] = {MB_KCUDA_F32, MB_KCUDA_F16, MB_KCUDA_BF16};
    for (int pi = 0; pi < 3; pi++) {
        if (quick && pi != (t[0] + t[1] + t[2]) % 3) continue;
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            mb_kcuda_path taken;
            const double err = run_request(ex, d_slots, h_slots, ws, payloads[pi], &cases[ci], &taken);
            const double b = bound(payloads[pi], taken);
            printf("moe %-8s %-4s %-4s %-4s pay %-4s %-10s %-6s err %9.3g bound %5.0e %s\n", shape,
                   mb_dtype_name(t[0]), mb_dtype_name(t[1]), mb_dtype_name(t[2]), mb_dtype_name(payloads[pi]),
                   cases[ci].name, path_name[taken], err, b, err <= b ? "ok" : "FAIL");
            fflush(stdout);
            CHECK_MSG(err <= b, "%s %s/%s/%s payload %s %s (%s): error %.3g > %.0e", shape, mb_dtype_name(t[0]),
                      mb_dtype_name(t[1]), mb_dtype_name(t[2]), mb_dtype_name(payloads[pi]), cases[ci].name,
                      path_name[taken], err, b);
        }
    }
    mb_kcuda_moe_ws_destroy(ws);
    CU(cudaFree(d_slots));
    for (int e = 0; e < N_EXPERTS; e++)
        qexpert_fini(&ex[e]);
}

int main(void)
{
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev <= 0) MB_TEST_SKIP("no CUDA device");
    const char *qv = getenv("MB_QUANT_TEST_QUICK");
    const int quick = qv && qv[0] == '1';
    printf("cuBLAS %s\n", mb_kcuda_cublas_available() ? "loaded" : "missing: its cases take the grouped GEMM");
    static const int types[] = {MB_KCUDA_Q8_0, MB_KCUDA_Q4_K, MB_KCUDA_Q6_K};
    for (int i = 0; i < 3; i++)
        for (int mode = 0; mode < 2; mode++) {
            test_dequant(types[i], 3, 512, mode);
            test_dequant(types[i], 5, 256, mode);
        }
    test_dequant(MB_KCUDA_Q8_0, 7, 96, 1);

    /* Type mixes: each type alone, Q4_K_M's (down in Q6_K), all three
     * different; Q8_0 also at a shape of 32-multiples that are not 64s. */
    static const int mixes[][3] = {
        {MB_KCUDA_Q8_0, MB_KCUDA_Q8_0, MB_KCUDA_Q8_0}, {MB_KCUDA_Q4_K, MB_KCUDA_Q4_K, MB_KCUDA_Q4_K},
        {MB_KCUDA_Q6_K, MB_KCUDA_Q6_K, MB_KCUDA_Q6_K}, {MB_KCUDA_Q4_K, MB_KCUDA_Q4_K, MB_KCUDA_Q6_K},
        {MB_KCUDA_Q6_K, MB_KCUDA_Q8_0, MB_KCUDA_Q4_K},
    };
    for (size_t i = 0; i < sizeof mixes / sizeof mixes[0]; i++)
        test_requests("256x256", 256, 256, mixes[i], quick);
    static const int q8[3] = {MB_KCUDA_Q8_0, MB_KCUDA_Q8_0, MB_KCUDA_Q8_0};
    test_requests("96x160", 96, 160, q8, quick);
    return mb_test_finish("test_quant_cuda_kernels");
}
