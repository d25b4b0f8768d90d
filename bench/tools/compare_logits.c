/* compare_logits: compares two `moe-broker run --logits-out` files (f32
 * "logits" [positions][vocab]) position by position: the largest absolute
 * difference, that difference over the reference row's largest magnitude
 * (the normalised error the parity tests use), and how many positions pick
 * the same argmax. Prints one JSON object; exits 1 when the normalised
 * error passes --tol, 2 on bad input.
 *   compare_logits [--tol X] [--label TEXT] TEST.safetensors REF.safetensors */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/safetensors.h"

static const float *cl_open(const char *path, mb_safetensors **f, uint64_t *rows, uint64_t *cols)
{
    char err[512] = "";
    const mb_st_tensor *t = NULL;
    mb_status st = mb_safetensors_open(path, f, err, sizeof err);
    if (st == MB_STATUS_OK) st = mb_safetensors_expect(*f, "logits", MB_ST_DTYPE_F32, 2, &t, err, sizeof err);
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "compare_logits: %s\n", err[0] ? err : mb_status_str(st));
        return NULL;
    }
    *rows = t->shape[0];
    *cols = t->shape[1];
    return (const float *)t->data; /* the data area starts 8-aligned (run.c writes it so) */
}

static uint64_t cl_argmax(const float *row, uint64_t n)
{
    uint64_t best = 0;
    for (uint64_t i = 1; i < n; i++)
        if (row[i] > row[best]) best = i;
    return best;
}

int main(int argc, char **argv)
{
    double tol = -1;
    const char *label = "", *paths[2] = {NULL, NULL};
    int n_paths = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tol") == 0 && i + 1 < argc) tol = strtod(argv[++i], NULL);
        else if (strcmp(argv[i], "--label") == 0 && i + 1 < argc) label = argv[++i];
        else if (argv[i][0] != '-' && n_paths < 2) paths[n_paths++] = argv[i];
        else n_paths = 3;
    }
    if (n_paths != 2) {
        fprintf(stderr, "usage: compare_logits [--tol X] [--label TEXT] TEST.safetensors REF.safetensors\n");
        return 2;
    }
    mb_safetensors *fa = NULL, *fb = NULL;
    uint64_t ra = 0, ca = 0, rb = 0, cb = 0;
    const float *a = cl_open(paths[0], &fa, &ra, &ca);
    const float *b = a ? cl_open(paths[1], &fb, &rb, &cb) : NULL;
    if (!a || !b || ra != rb || ca != cb || ca == 0) {
        if (a && b)
            fprintf(stderr, "compare_logits: shapes differ: [%llu][%llu] vs [%llu][%llu]\n", (unsigned long long)ra,
                    (unsigned long long)ca, (unsigned long long)rb, (unsigned long long)cb);
        mb_safetensors_close(fa);
        mb_safetensors_close(fb);
        return 2;
    }
    double max_abs = 0, max_norm = 0;
    uint64_t same_argmax = 0, identical_rows = 0, worst_pos = 0;
    for (uint64_t r = 0; r < ra; r++) {
        const float *x = a + r * ca, *y = b + r * ca;
        double d = 0, ref = 0;
        for (uint64_t i = 0; i < ca; i++) {
            double e = fabs((double)x[i] - (double)y[i]);
            d = e > d || isnan(e) ? e : d;
            ref = fabs((double)y[i]) > ref ? fabs((double)y[i]) : ref;
        }
        double norm = ref > 0 ? d / ref : d;
        if (isnan(norm) || norm > max_norm) {
            max_norm = norm;
            worst_pos = r;
        }
        if (d > max_abs || isnan(d)) max_abs = d;
        identical_rows += memcmp(x, y, ca * sizeof *x) == 0;
        same_argmax += cl_argmax(x, ca) == cl_argmax(y, ca);
    }
    int pass = tol < 0 || max_norm <= tol;
    printf("{\"label\":\"%s\",\"positions\":%llu,\"vocab\":%llu,\"max_abs_diff\":%.6g,\"max_norm_err\":%.6g,"
           "\"worst_position\":%llu,\"same_argmax\":%llu,\"identical_rows\":%llu,\"tol\":%g,\"pass\":%s}\n",
           label, (unsigned long long)ra, (unsigned long long)ca, max_abs, max_norm, (unsigned long long)worst_pos,
           (unsigned long long)same_argmax, (unsigned long long)identical_rows, tol, pass ? "true" : "false");
    mb_safetensors_close(fa);
    mb_safetensors_close(fb);
    return pass ? 0 : 1;
}
