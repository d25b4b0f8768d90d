/* Quantized experts, integer dots against dequantized tiles
 * (kernels/cpu/expert_ffn_quant.c): for each type, model shape and number
 * of pairs an expert, the same problem runs both ways, the two alternating
 * call by call so that a neighbour's load hits both alike, and the table
 * gives each way's best time and GFLOP/s, their ratio, and the share of
 * the FMA ceiling measured in the same run. This is how the per-type
 * thresholds in mb_moeq_tiles_from were chosen.
 *
 *   bench_qpath [--types q8_0,q4_0,q4_k,q5_k,q6_k] [--pairs 4,8,16,32,64,128]
 *               [--model qwen|mixtral|all] [--rounds N] [--threads N] [--json FILE]
 * Each call routes every token to the same top_k experts, so each of them
 * has exactly `pairs` pairs (one token each); weights are random blocks
 * with sane scales, several copies so calls do not reuse cached weights. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_rand.h"
#include "bench/ceiling.h"
#include "kernels/cpu/expert_ffn.h"
#include "kernels/cpu/quant.h"

typedef struct {
    const char *name;
    size_t d_model, d_ff, top_k, copies;
} mb_qp_shape;

static const mb_qp_shape mb_qp_shapes[] = {
    {"qwen3-30b-a3b", 2048, 768, 8, 32},
    {"mixtral-8x7b", 4096, 14336, 2, 3},
};

static const struct {
    const char *name;
    int type;
} mb_qp_types[] = {{"q8_0", MB_KCPU_Q8_0},
                   {"q4_0", MB_KCPU_Q4_0},
                   {"q4_k", MB_KCPU_Q4_K},
                   {"q5_k", MB_KCPU_Q5_K},
                   {"q6_k", MB_KCPU_Q6_K}};

static unsigned long long mb_qp_rng = 0x9E3779B97F4A7C15ull;

static uint64_t mb_qp_rand(void)
{
    return mb_bench_rand(&mb_qp_rng);
}

static int mb_qp_cmp(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* n random blocks of type with f16 scales of 2^-10 (Q4_K/Q5_K also dmin). */
static unsigned char *mb_qp_blocks(int type, size_t bytes)
{
    unsigned char *w = malloc(bytes);
    if (!w) return NULL;
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
        const uint64_t v = mb_qp_rand();
        memcpy(w + i, &v, 8);
    }
    const size_t bb = mb_kcpu_block_bytes(type);
    const uint16_t d = 0x1400;
    for (size_t b = 0; b < bytes / bb; b++) {
        memcpy(w + b * bb + (type == MB_KCPU_Q6_K ? 208 : 0), &d, 2);
        if (type == MB_KCPU_Q4_K || type == MB_KCPU_Q5_K) memcpy(w + b * bb + 2, &d, 2);
    }
    return w;
}

typedef struct {
    const char *model, *type;
    size_t pairs;
    double best_s[2], median_s[2], gflops[2];
} mb_qp_result;

/* Runs one case, dots and tiles alternating; returns 0 or -1. */
static int mb_qp_case(mb_kcpu_pool *pool, mb_kcpu_moe_ws *ws, const mb_qp_shape *m, int type,
                      const unsigned char *w, size_t pairs, int rounds, mb_qp_result *res)
{
    const size_t rb_in = mb_kcpu_row_bytes(type, m->d_model), rb_ff = mb_kcpu_row_bytes(type, m->d_ff);
    const size_t eb = 2 * m->d_ff * rb_in + m->d_model * rb_ff;
    float *x = malloc(sizeof(float) * pairs * m->d_model);
    float *out = malloc(sizeof(float) * pairs * m->d_model);
    size_t *pair0 = malloc(sizeof(size_t) * (m->top_k + 1));
    uint32_t *ptok = malloc(sizeof(uint32_t) * pairs * m->top_k);
    float *pgate = malloc(sizeof(float) * pairs * m->top_k);
    mb_kcpu_expert *ex = malloc(sizeof(mb_kcpu_expert) * m->top_k);
    double *t[2] = {malloc(sizeof(double) * (size_t)rounds), malloc(sizeof(double) * (size_t)rounds)};
    int rc = -1;
    if (!x || !out || !pair0 || !ptok || !pgate || !ex || !t[0] || !t[1]) goto done;
    for (size_t i = 0; i < pairs * m->d_model; i++)
        x[i] = mb_bench_randf(&mb_qp_rng);
    for (size_t e = 0; e < m->top_k; e++) {
        pair0[e] = e * pairs;
        for (size_t q = 0; q < pairs; q++) {
            ptok[e * pairs + q] = (uint32_t)q;
            pgate[e * pairs + q] = 1.0f / (float)m->top_k;
        }
    }
    pair0[m->top_k] = m->top_k * pairs;
    const size_t copies = m->copies;
    for (int r = -1; r < rounds; r++)
        for (int way = 0; way < 2; way++) {
            /* top_k distinct copies, a different set each call */
            const size_t first = (size_t)mb_qp_rand() % copies;
            for (size_t e = 0; e < m->top_k; e++) {
                const unsigned char *b = w + ((first + e) % copies) * eb;
                ex[e] = (mb_kcpu_expert){b, b + m->d_ff * rb_in, b + 2 * m->d_ff * rb_in,
                                         m->d_model, m->d_ff};
            }
            mb_kcpu_moe_problem p = {.wdtype = {type, type, type},
                                     .d_model = m->d_model,
                                     .d_ff = m->d_ff,
                                     .n_tokens = pairs,
                                     .n_experts = m->top_k,
                                     .experts = ex,
                                     .expert_pair0 = pair0,
                                     .pair_token = ptok,
                                     .pair_gate = pgate,
                                     .x = x,
                                     .ldx = m->d_model,
                                     .out = out,
                                     .ldo = m->d_model};
            mb_kcpu_moe_force_qpath(way ? MB_KCPU_QPATH_TILES : MB_KCPU_QPATH_DOTS);
            const double t0 = mb_bench_now();
            if (mb_kcpu_moe_run(pool, ws, &p) != 0) goto done;
            if (r >= 0) t[way][r] = mb_bench_now() - t0;
        }
    const double flop = 6.0 * (double)m->d_model * (double)m->d_ff * (double)(pairs * m->top_k);
    for (int way = 0; way < 2; way++) {
        qsort(t[way], (size_t)rounds, sizeof(double), mb_qp_cmp);
        res->best_s[way] = t[way][0];
        res->median_s[way] = t[way][rounds / 2];
        res->gflops[way] = flop / t[way][0] * 1e-9;
    }
    rc = 0;
done:
    mb_kcpu_moe_force_qpath(MB_KCPU_QPATH_AUTO);
    free(x), free(out), free(pair0), free(ptok), free(pgate), free(ex), free(t[0]), free(t[1]);
    return rc;
}

static size_t mb_qp_list(const char *s, size_t *out, size_t cap)
{
    size_t n = 0;
    while (*s && n < cap) {
        char *end;
        const unsigned long v = strtoul(s, &end, 10);
        if (end == s) break;
        if (v > 0 && v <= 4096) out[n++] = v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

int main(int argc, char **argv)
{
    const char *types = "q8_0,q4_0,q4_k,q5_k,q6_k", *model = "all", *json = NULL;
    size_t pairs[16] = {4, 8, 16, 32, 64, 128}, n_pairs = 6;
    int rounds = 5, threads = 2;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--types") && v)
            types = argv[++i];
        else if (!strcmp(argv[i], "--pairs") && v)
            n_pairs = mb_qp_list(argv[++i], pairs, 16);
        else if (!strcmp(argv[i], "--model") && v)
            model = argv[++i];
        else if (!strcmp(argv[i], "--rounds") && v)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && v)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && v)
            json = argv[++i];
        else {
            fprintf(stderr, "usage: bench_qpath [--types q8_0,q4_0,q4_k,q5_k,q6_k] "
                            "[--pairs 4,8,16,32,64,128] [--model qwen|mixtral|all] [--rounds N] "
                            "[--threads N] [--json FILE]\n");
            return 2;
        }
    }
    if (rounds < 1) rounds = 1;
    if (threads < 1) threads = 1;
    mb_kcpu_pool *pool = mb_kcpu_pool_create(threads, -1);
    mb_kcpu_moe_ws *ws = mb_kcpu_moe_ws_create();
    if (!pool || !ws) return 1;
    const double fma = mb_bench_fma_gflops(threads, 0.1);
    printf("quantized experts, integer dots vs dequantized tiles, calls alternating; %d threads, "
           "FMA ceiling %.1f GFLOP/s\n\n",
           threads, fma);
    printf("%-14s %-5s %6s %10s %10s %9s %9s %7s %7s %7s\n", "model", "type", "pairs", "dots_ms",
           "tiles_ms", "dots_GF", "tiles_GF", "%FMA_d", "%FMA_t", "t/d");
    mb_qp_result res[256];
    int n_res = 0, rc = 0;
    for (size_t mi = 0; mi < sizeof mb_qp_shapes / sizeof mb_qp_shapes[0]; mi++) {
        const mb_qp_shape *m = &mb_qp_shapes[mi];
        if (strcmp(model, "all") != 0 && strncmp(m->name, model, strlen(model)) != 0) continue;
        for (size_t ti = 0; ti < sizeof mb_qp_types / sizeof mb_qp_types[0]; ti++) {
            if (!strstr(types, mb_qp_types[ti].name)) continue;
            const int type = mb_qp_types[ti].type;
            const size_t eb = 2 * m->d_ff * mb_kcpu_row_bytes(type, m->d_model) +
                              m->d_model * mb_kcpu_row_bytes(type, m->d_ff);
            unsigned char *w = mb_qp_blocks(type, eb * m->copies);
            if (!w) return 1;
            for (size_t pi = 0; pi < n_pairs && n_res < 256; pi++) {
                mb_qp_result *r = &res[n_res];
                *r = (mb_qp_result){m->name, mb_qp_types[ti].name, pairs[pi], {0}, {0}, {0}};
                if (mb_qp_case(pool, ws, m, type, w, pairs[pi], rounds, r) != 0) {
                    rc = 1;
                    continue;
                }
                printf("%-14s %-5s %6zu %10.3f %10.3f %9.1f %9.1f %7.1f %7.1f %7.2f\n", r->model,
                       r->type, r->pairs, r->best_s[0] * 1e3, r->best_s[1] * 1e3, r->gflops[0],
                       r->gflops[1], 100 * r->gflops[0] / fma, 100 * r->gflops[1] / fma,
                       r->best_s[1] / r->best_s[0]);
                fflush(stdout);
                n_res++;
            }
            free(w);
        }
    }
    printf("\nt/d: tiles' best time over dots'; below 1 the tiles are faster.\n");
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            perror(json);
            return 1;
        }
        fprintf(f, "{\n  \"bench\": \"qpath\",\n  \"threads\": %d,\n  \"rounds\": %d,\n", threads,
                rounds);
        fprintf(f, "  \"fma_gflops\": %.3f,\n  \"results\": [\n", fma);
        for (int i = 0; i < n_res; i++)
            fprintf(f,
                    "    {\"model\": \"%s\", \"type\": \"%s\", \"pairs\": %zu, \"dots_best_ms\": "
                    "%.4f, \"tiles_best_ms\": %.4f, \"dots_median_ms\": %.4f, "
                    "\"tiles_median_ms\": %.4f, \"dots_gflops\": %.3f, \"tiles_gflops\": %.3f}%s\n",
                    res[i].model, res[i].type, res[i].pairs, res[i].best_s[0] * 1e3,
                    res[i].best_s[1] * 1e3, res[i].median_s[0] * 1e3, res[i].median_s[1] * 1e3,
                    res[i].gflops[0], res[i].gflops[1], i + 1 < n_res ? "," : "");
        fprintf(f, "  ]\n}\n");
        fclose(f);
    }
    mb_kcpu_moe_ws_destroy(ws);
    mb_kcpu_pool_destroy(pool);
    return rc;
}
