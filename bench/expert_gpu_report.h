/* The results of bench_expert_gpu and their report: the table rows it
 * prints as it goes and the JSON it writes at the end. Nothing here
 * measures or touches a device. */
#ifndef MB_BENCH_EXPERT_GPU_REPORT_H
#define MB_BENCH_EXPERT_GPU_REPORT_H

#include <stdint.h>

#define MB_EGPU_N_MODELS 2
#define MB_EGPU_MAX_KERNEL_CASES 256

/* An MoE layer's expert shape, and the cuBLAS GEMM its prefill is
 * compared with. */
typedef struct {
    const char *key, *name;
    uint32_t d_model, d_ff, n_experts, top_k;
    int gemm_m, gemm_n, gemm_k; /* the cuBLAS ceiling's shape */
} mb_egpu_model;

/* One kernel-only case: device time of a request on one path. */
typedef struct {
    const mb_egpu_model *m;
    const char *phase;
    uint32_t n_tokens, n_pairs;
    const char *path, *taken; /* asked for, and what AUTO chose */
    const char *weights;      /* "bf16", "q8_0", "q4_k", "q6_k" */
    int reps;
    double median_s, best_s, weight_bytes;
    double gbs, copy_ratio, tflops, gemm_ratio;
} mb_egpu_kres;

/* One host-clock case: mb_backend_run or a worker round trip. */
typedef struct {
    const mb_egpu_model *m;
    const char *what;    /* "backend", "worker" (CUDA), "vulkan-backend", "vulkan-worker" */
    const char *weights; /* "bf16", "q8_0", ... */
    uint32_t n_tokens;
    int reps;
    double median_s, p99_s, compute_s, kernel_s, ratio;
    double vs_cuda; /* other backends: CUDA's time at the same depth and size / this one's */
} mb_egpu_hres;

/* Everything one run measured. */
typedef struct {
    double copy_gbs, gemm_tflops[MB_EGPU_N_MODELS];
    char gemm_note[160];
    mb_egpu_kres k[MB_EGPU_MAX_KERNEL_CASES];
    int n_k;
    mb_egpu_hres h[64];
    int n_h;
    /* Per model: AUTO's smallest decode request split into routing, expert
     * GEMMs and combine (device microseconds), and its token count. */
    double phase_us[MB_EGPU_N_MODELS][3];
    uint32_t phase_tokens[MB_EGPU_N_MODELS];
} mb_egpu_run;

/* Table rows on stdout, flushed. */
void mb_egpu_print_kernel_header(void);
void mb_egpu_print_kernel(const mb_egpu_kres *k);
void mb_egpu_print_host_header(void);
void mb_egpu_print_host(const mb_egpu_hres *h);

/* Writes run as JSON to path: device, ceilings (cuBLAS for the models
 * with model_on set), every case, and the goals with whether each is met.
 * Prints a message when path cannot be written. */
void mb_egpu_write_json(const char *path, const char *device, const mb_egpu_model *models,
                        const int *model_on, const mb_egpu_run *run);

#endif
