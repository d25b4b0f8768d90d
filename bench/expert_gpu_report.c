/* Tables and JSON of bench_expert_gpu (expert_gpu_report.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "bench/expert_gpu_report.h"
#include "bench/moe_bench.h"

void mb_egpu_print_kernel_header(void)
{
    printf("\nkernel only (device time; median over reps)\n");
    printf("%-14s %-4s %-7s %6s %7s %-4s %-4s %5s %10s %10s %8s %6s %8s %6s\n", "model", "w", "phase",
           "tokens", "pairs", "path", "took", "reps", "median_us", "best_us", "GB/s", "%copy",
           "TFLOP/s", "%cuBL");
}

void mb_egpu_print_kernel(const mb_egpu_kres *k)
{
    printf("%-14s %-4s %-7s %6u %7u %-4s %-4s %5d %10.1f %10.1f %8.1f %6.1f %8.1f %6.1f\n", k->m->name,
           k->weights, k->phase, k->n_tokens, k->n_pairs, k->path, k->taken, k->reps, k->median_s * 1e6,
           k->best_s * 1e6, k->gbs, k->copy_ratio * 100, k->tflops, k->gemm_ratio * 100);
    fflush(stdout);
}

void mb_egpu_print_host_header(void)
{
    printf("\n%-14s %-14s %-4s %6s %5s %10s %10s %10s %10s %7s\n", "model", "depth", "w", "tokens",
           "reps", "median_us", "p99_us", "compute_us", "kernel_us", "xkernel");
}

void mb_egpu_print_host(const mb_egpu_hres *h)
{
    char vs[24] = "";
    if (h->vs_cuda > 0) snprintf(vs, sizeof vs, "  %.2fx cuda", h->vs_cuda);
    printf("%-14s %-14s %-4s %6u %5d %10.1f %10.1f %10.1f %10.1f %7.2f%s\n", h->m->name, h->what,
           h->weights, h->n_tokens, h->reps, h->median_s * 1e6, h->p99_s * 1e6, h->compute_s * 1e6,
           h->kernel_s * 1e6, h->ratio, vs);
    fflush(stdout);
}

void mb_egpu_write_json(const char *path, const char *device, const mb_egpu_model *models,
                        const int *model_on, const mb_egpu_run *run)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "bench", "expert_gpu");
    cJSON_AddStringToObject(root, "device", device);
    cJSON_AddStringToObject(root, "weights", "bf16"); /* backend and worker depths; kernel rows name theirs */
    cJSON_AddStringToObject(root, "payload", "bf16");
    cJSON *c = cJSON_AddObjectToObject(root, "ceilings");
    cJSON_AddNumberToObject(c, "copy_copied_gbs", run->copy_gbs);
    cJSON_AddNumberToObject(c, "copy_traffic_gbs", 2 * run->copy_gbs);
    cJSON *g = cJSON_AddObjectToObject(c, "cublas_bf16_tflops");
    for (int mi = 0; mi < MB_EGPU_N_MODELS; mi++)
        if (model_on[mi]) {
            const mb_egpu_model *m = &models[mi];
            cJSON *x = cJSON_AddObjectToObject(g, m->key);
            cJSON_AddNumberToObject(x, "m", m->gemm_m);
            cJSON_AddNumberToObject(x, "n", m->gemm_n);
            cJSON_AddNumberToObject(x, "k", m->gemm_k);
            cJSON_AddNumberToObject(x, "tflops", run->gemm_tflops[mi]);
        }
    if (run->gemm_note[0]) cJSON_AddStringToObject(c, "cublas_note", run->gemm_note);
    cJSON *ka = cJSON_AddArrayToObject(root, "kernel");
    for (int i = 0; i < run->n_k; i++) {
        const mb_egpu_kres *k = &run->k[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "model", k->m->name);
        cJSON_AddStringToObject(x, "weights", k->weights);
        cJSON_AddStringToObject(x, "phase", k->phase);
        cJSON_AddNumberToObject(x, "tokens", k->n_tokens);
        cJSON_AddNumberToObject(x, "pairs", k->n_pairs);
        cJSON_AddStringToObject(x, "path", k->path);
        cJSON_AddStringToObject(x, "took", k->taken);
        cJSON_AddNumberToObject(x, "reps", k->reps);
        cJSON_AddNumberToObject(x, "median_us", k->median_s * 1e6);
        cJSON_AddNumberToObject(x, "best_us", k->best_s * 1e6);
        cJSON_AddNumberToObject(x, "weight_bytes", k->weight_bytes);
        cJSON_AddNumberToObject(x, "gbs", k->gbs);
        cJSON_AddNumberToObject(x, "copy_traffic_ratio", k->copy_ratio);
        cJSON_AddNumberToObject(x, "tflops", k->tflops);
        cJSON_AddNumberToObject(x, "cublas_ratio", k->gemm_ratio);
        cJSON_AddItemToArray(ka, x);
    }
    cJSON *ha = cJSON_AddArrayToObject(root, "host");
    for (int i = 0; i < run->n_h; i++) {
        const mb_egpu_hres *h = &run->h[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "model", h->m->name);
        cJSON_AddStringToObject(x, "depth", h->what);
        cJSON_AddStringToObject(x, "weights", h->weights);
        cJSON_AddNumberToObject(x, "tokens", h->n_tokens);
        cJSON_AddNumberToObject(x, "reps", h->reps);
        cJSON_AddNumberToObject(x, "median_us", h->median_s * 1e6);
        cJSON_AddNumberToObject(x, "p99_us", h->p99_s * 1e6);
        cJSON_AddNumberToObject(x, "compute_us", h->compute_s * 1e6);
        cJSON_AddNumberToObject(x, "kernel_us", h->kernel_s * 1e6);
        cJSON_AddNumberToObject(x, "ratio_to_kernel", h->ratio);
        if (h->vs_cuda > 0) cJSON_AddNumberToObject(x, "throughput_vs_cuda", h->vs_cuda);
        cJSON_AddItemToArray(ha, x);
    }
    cJSON *goals = cJSON_AddObjectToObject(root, "goals");
    char name[96];
    for (int i = 0; i < run->n_k; i++) {
        const mb_egpu_kres *k = &run->k[i];
        if (strcmp(k->path, "auto") != 0 || strcmp(k->weights, "bf16") != 0) continue;
        if (!strcmp(k->phase, "decode") && k->n_tokens == 1) {
            snprintf(name, sizeof name, "%s_decode1_copy_traffic_ratio", k->m->key);
            mb_bench_goal(goals, name, k->copy_ratio, ">= 0.80", k->copy_ratio >= 0.80);
        } else if (!strcmp(k->phase, "prefill")) {
            snprintf(name, sizeof name, "%s_prefill%u_cublas_ratio", k->m->key, k->n_tokens);
            mb_bench_goal(goals, name, k->gemm_ratio, ">= 0.65", k->gemm_ratio >= 0.65);
        }
    }
    for (int i = 0; i < run->n_h; i++) {
        const mb_egpu_hres *h = &run->h[i];
        if (strcmp(h->what, "worker") != 0 || strcmp(h->weights, "bf16") != 0 || h->n_tokens != 1)
            continue;
        snprintf(name, sizeof name, "%s_worker_decode1_ratio_to_kernel", h->m->key);
        mb_bench_goal(goals, name, h->ratio, "<= 1.5", h->ratio > 0 && h->ratio <= 1.5);
    }
    for (int i = 0; i < run->n_h; i++) {
        const mb_egpu_hres *h = &run->h[i];
        if (strcmp(h->what, "vulkan-backend") != 0 || strcmp(h->weights, "bf16") != 0 ||
            h->vs_cuda <= 0)
            continue;
        if (h->n_tokens != 1 && h->n_tokens != 4096) continue;
        snprintf(name, sizeof name, "%s_vulkan_%s%u_vs_cuda", h->m->key, h->n_tokens == 1 ? "decode" : "prefill",
                 h->n_tokens);
        mb_bench_goal(goals, name, h->vs_cuda, ">= 0.80", h->vs_cuda >= 0.80);
    }
    for (int mi = 0; mi < MB_EGPU_N_MODELS; mi++) {
        const double *u = run->phase_us[mi], all = u[0] + u[1] + u[2];
        if (!model_on[mi] || run->phase_tokens[mi] == 0 || all <= 0) continue;
        cJSON *ph = cJSON_CreateObject();
        cJSON_AddNumberToObject(ph, "tokens", run->phase_tokens[mi]);
        cJSON_AddNumberToObject(ph, "routing_us", u[0]);
        cJSON_AddNumberToObject(ph, "expert_gemm_us", u[1]);
        cJSON_AddNumberToObject(ph, "combine_us", u[2]);
        snprintf(name, sizeof name, "%s_phases", models[mi].key);
        cJSON_AddItemToObject(root, name, ph);
        const double out = (u[0] + u[2]) / all;
        snprintf(name, sizeof name, "%s_decode%u_outside_gemm_share", models[mi].key, run->phase_tokens[mi]);
        mb_bench_goal(goals, name, out, "<= 0.20", out <= 0.20);
    }
    char *text = cJSON_Print(root);
    FILE *f = text ? fopen(path, "w") : NULL;
    if (f) {
        fputs(text, f);
        fputc('\n', f);
        fclose(f);
    } else {
        perror(path);
    }
    free(text);
    cJSON_Delete(root);
}
