/* Expert FFN driver for quantized weights (kernels/cpu/quant.h), with two
 * ways to run each of gate/up and down:
 *  - integer dots: the activations of each token are quantized once to
 *    8-bit blocks (as llama.cpp does), weight rows are dotted with them
 *    block by block (each weight block unpacked once for up to 4 of an
 *    expert's pairs), and each pair's SiLU product is quantized again for
 *    down. The way both decode and, on the machines measured, prefill take.
 *  - dequantized tiles: a task dequantizes a tile of weight rows to f32
 *    (exactly, as gguf-py does) in its scratch and runs the f32 GEMM tiles
 *    (gemm_<isa>.c) over all the expert's tokens. The activations and SiLU
 *    products are the same 8-bit ones, as f32 values, so both ways compute
 *    the same sums and differ by f32 rounding only. The dequantization is
 *    paid once per tile for many tokens.
 * Each expert picks its way for each phase by the phase's matrix type and
 * its own number of pairs (mb_moeq_tiles_from), never by what else is in
 * the batch, so an expert's results do not depend on which experts share
 * its worker. Each matrix has its own type: in the integer way a
 * token's record in qx holds its activations quantized for gate and, when
 * up's type takes other blocks (Q8_0 vs Q8_K), for up after them. Weight
 * rows are unpadded: ld_in / ld_ff are d_model / d_ff. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/expert_ffn_internal.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/gemm_isa.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/quant_isa.h"

/* Bytes of weights a prefill task keeps in L2 while its tokens sweep over
 * them (integer dots: the quantized rows; tiles: one f32 tile per matrix). */
#define MB_MOEQ_L2_BYTES (160u * 1024u)
/* Width of a dequantized tile, elements of k (a multiple of every block). */
#ifndef MB_MOEQ_KT
#define MB_MOEQ_KT 1024u
#endif
#ifndef MB_MOEQ_RB_MAX
#define MB_MOEQ_RB_MAX 128
#endif

/* Pairs of an expert from which a phase whose matrix has this type runs
 * dequantized tiles rather than integer dots; SIZE_MAX: never. Measured on
 * the 2-core AVX2 VM, dots and tiles alternating call by call
 * (bench/notes/cpu-quant-experts.md): with one token a weight block
 * (version 3) the tiles won from 16 pairs for Q4_0 and from 32 for Q5_K at
 * Qwen3's shape; since the dots take 4 tokens a weight block (version 4)
 * they win at every type, count and shape measured (Q4_0 1.16-1.31x, Q5_K
 * 1.6-1.96x, Q8_0 1.34-1.44x, 16-128 pairs). The tiles stay for
 * mb_kcpu_moe_force_qpath and for machines where that may turn again. */
static size_t mb_moeq_tiles_from(int wdtype)
{
    (void)wdtype;
    return SIZE_MAX;
}

static int mb_moeq_forced = MB_KCPU_QPATH_AUTO;

void mb_kcpu_moe_force_qpath(int mode)
{
    mb_moeq_forced = mode;
}

typedef struct {
    const mb_kcpu_moe_problem *p;
    mb_kcpu_moe_ws *ws;
    const mb_kcpu_isa_impl *isa;
    mb_kcpu_qdot_fn dot;
    mb_kcpu_qdot2_rows_fn dot2_rows;
    mb_kcpu_qdot2_rows_nt_fn dot2_rows_nt;
    mb_kcpu_dequant_fn dequant;
    size_t from_gu, from_down;        /* pairs from which an expert's phase takes tiles */
    int any_tiles_gu, any_tiles_down; /* some expert takes tiles for gate/up, for down */
    int gate_up_paired;    /* gate and up share a type (so their activations): one dot2 per row */
    size_t qx_row, qh_row; /* bytes of a token's qx record / a quantized product row */
    size_t qx_up;          /* where up's activations start in a qx record */
    size_t xp_row, xp_up;  /* floats of a token's xp record, where up's start in it */
    size_t rb_gate, rb_up, rb_down; /* weight row bytes of each matrix */
    size_t rb1, nb1;                /* d_ff rows per gate/up task, tasks per expert */
    size_t rb2;                     /* d_model columns (down rows) per down task */
    size_t per_thread;              /* floats of scratch per thread */
} mb_moeq_job;

static float *mb_moeq_scratch(const mb_moeq_job *j, int thread)
{
    return j->ws->scratch + (size_t)thread * j->per_thread;
}

/* Token t's activations quantized per block (qx), and for experts taking
 * tiles the same values as f32 rows (xp: gate's, then up's when up takes
 * other blocks). */
static void mb_moeq_pack_task(void *ctx, size_t t, int thread)
{
    const mb_moeq_job *j = ctx;
    const mb_kcpu_moe_problem *p = j->p;
    const float *src = p->x ? p->x + t * p->ldx : NULL;
    if (p->load_x) {
        src = mb_moeq_scratch(j, thread);
        p->load_x(p->load_ctx, t, (float *)src);
    }
    unsigned char *xq = j->ws->qx + t * j->qx_row;
    mb_kcpu_qact_row(p->wdtype[MB_KCPU_GATE], src, xq, p->d_model);
    if (j->qx_up) mb_kcpu_qact_row(p->wdtype[MB_KCPU_UP], src, xq + j->qx_up, p->d_model);
    if (!j->any_tiles_gu) return;
    float *xf = j->ws->xp + t * j->xp_row;
    mb_kcpu_qact_dequant_row(p->wdtype[MB_KCPU_GATE], xq, xf, p->d_model);
    if (j->qx_up)
        mb_kcpu_qact_dequant_row(p->wdtype[MB_KCPU_UP], xq + j->qx_up, xf + p->d_model, p->d_model);
}

/* ---- integer dots ------------------------------------------------------- */

/* h[pair][r0, r1) for the pairs of expert e: per group of up to
 * MB_KCPU_QDOT_NT pairs, the rows' gate and up dots with each weight block
 * unpacked once for the group (the task's rows stay in L2 across the
 * groups, the group's activations in L1), then SiLU per pair. Results are
 * those of one pair at a time, bit for bit. Scratch: g, u [NT][rb1]. */
static void mb_moeq_gate_up_dots(const mb_moeq_job *j, size_t e, size_t r0, size_t r1, int thread)
{
    const mb_kcpu_moe_problem *p = j->p;
    const mb_kcpu_expert *E = &p->experts[e];
    const int wg = p->wdtype[MB_KCPU_GATE], wu = p->wdtype[MB_KCPU_UP];
    const char *gate = (const char *)E->gate + r0 * j->rb_gate,
               *up = (const char *)E->up + r0 * j->rb_up;
    float *g = mb_moeq_scratch(j, thread), *u = g + MB_KCPU_QDOT_NT * j->rb1;
    const size_t pe = p->expert_pair0[e + 1];
    for (size_t q0 = p->expert_pair0[e]; q0 < pe; q0 += MB_KCPU_QDOT_NT) {
        const size_t nt = pe - q0 < MB_KCPU_QDOT_NT ? pe - q0 : MB_KCPU_QDOT_NT;
        const void *xq[MB_KCPU_QDOT_NT];
        for (size_t t = 0; t < nt; t++)
            xq[t] = j->ws->qx + (size_t)p->pair_token[q0 + t] * j->qx_row;
        if (j->gate_up_paired && nt > 1) {
            j->dot2_rows_nt(wg, gate, up, j->rb_gate, r1 - r0, xq, nt, p->d_model, g, u, j->rb1);
        } else if (j->gate_up_paired) {
            j->dot2_rows(wg, gate, up, j->rb_gate, r1 - r0, xq[0], p->d_model, g, u);
        } else {
            for (size_t t = 0; t < nt; t++)
                for (size_t r = 0; r < r1 - r0; r++) {
                    g[t * j->rb1 + r] = j->dot(wg, gate + r * j->rb_gate, xq[t], p->d_model);
                    u[t * j->rb1 + r] = j->dot(wu, up + r * j->rb_up,
                                               (const unsigned char *)xq[t] + j->qx_up, p->d_model);
                }
        }
        for (size_t t = 0; t < nt; t++)
            j->isa->silu_mul(g + t * j->rb1, u + t * j->rb1, j->ws->h + (q0 + t) * p->d_ff + r0,
                             r1 - r0);
    }
}

/* Pair q's SiLU product quantized per block for down (qh); for an expert
 * taking tiles for down, h itself then holds those values as f32. */
static void mb_moeq_quant_h_task(void *ctx, size_t q, int thread)
{
    (void)thread;
    const mb_moeq_job *j = ctx;
    const mb_kcpu_moe_problem *p = j->p;
    const int wd = p->wdtype[MB_KCPU_DOWN];
    float *h = j->ws->h + q * p->d_ff;
    unsigned char *hq = j->ws->qh + q * j->qh_row;
    mb_kcpu_qact_row(wd, h, hq, p->d_ff);
    if (!j->any_tiles_down) return;
    size_t lo = 0, hi = p->n_experts; /* the expert e with pair0[e] <= q < pair0[e + 1] */
    while (hi - lo > 1) {
        const size_t mid = (lo + hi) / 2;
        if (p->expert_pair0[mid] <= q)
            lo = mid;
        else
            hi = mid;
    }
    if (p->expert_pair0[lo + 1] - p->expert_pair0[lo] >= j->from_down)
        mb_kcpu_qact_dequant_row(wd, hq, h, p->d_ff);
}

/* out[token][c0, c1) += gate * down rows of expert e . quantized h: rows
 * [c0, c0 + half) beside [c0 + half, c0 + 2 half), two read streams; per
 * group of up to MB_KCPU_QDOT_NT pairs each weight block unpacked once, the
 * pairs then added to out in pair order, as one at a time. Scratch: v
 * [NT][rb2]. */
static void mb_moeq_down_dots(const mb_moeq_job *j, size_t e, size_t c0, size_t c1, int thread)
{
    const mb_kcpu_moe_problem *p = j->p;
    const int wd = p->wdtype[MB_KCPU_DOWN];
    const char *down = (const char *)p->experts[e].down + c0 * j->rb_down;
    const size_t half = (c1 - c0) / 2, pe = p->expert_pair0[e + 1];
    float *v = mb_moeq_scratch(j, thread);
    for (size_t q0 = p->expert_pair0[e]; q0 < pe; q0 += MB_KCPU_QDOT_NT) {
        const size_t nt = pe - q0 < MB_KCPU_QDOT_NT ? pe - q0 : MB_KCPU_QDOT_NT;
        const void *hq[MB_KCPU_QDOT_NT];
        for (size_t t = 0; t < nt; t++)
            hq[t] = j->ws->qh + (q0 + t) * j->qh_row;
        if (nt > 1)
            j->dot2_rows_nt(wd, down, down + half * j->rb_down, j->rb_down, half, hq, nt, p->d_ff,
                            v, v + half, j->rb2);
        else
            j->dot2_rows(wd, down, down + half * j->rb_down, j->rb_down, half, hq[0], p->d_ff, v,
                         v + half);
        for (size_t t = 0; t < nt; t++) {
            float *vt = v + t * j->rb2;
            if ((c1 - c0) % 2) vt[2 * half] = j->dot(wd, down + 2 * half * j->rb_down, hq[t], p->d_ff);
            float *dst = p->out + (size_t)p->pair_token[q0 + t] * p->ldo + c0;
            const float g = p->pair_gate[q0 + t];
            for (size_t c = 0; c < c1 - c0; c++)
                dst[c] += g * vt[c];
        }
    }
}

/* ---- dequantized tiles -------------------------------------------------- */

/* tile[r][kt] = rows [0, n_rows) of w (row_bytes apart), elements [k0, k0 + kt). */
static void mb_moeq_dequant_tile(const mb_moeq_job *j, int wdtype, const void *w, size_t row_bytes,
                                 size_t n_rows, size_t k0, size_t kt, float *tile)
{
    const size_t off = k0 / mb_kcpu_block_elems(wdtype) * mb_kcpu_block_bytes(wdtype);
    for (size_t r = 0; r < n_rows; r++)
        j->dequant(wdtype, (const char *)w + r * row_bytes + off, tile + r * kt, kt);
}

/* Splits n pairs into blocks of at most MB_MOE_NB of near-equal size;
 * returns the block size. */
static size_t mb_moeq_qblock(size_t n)
{
    const size_t nblk = (n + MB_MOE_NB - 1) / MB_MOE_NB;
    return nblk ? (n + nblk - 1) / nblk : 0;
}

/* h[pair][r0, r1) for the pairs of expert e: per block of pairs, gate and
 * up tiles over k accumulated in acc_g / acc_u [pairs][rb1], then SiLU.
 * Scratch: gate tile, up tile [rb1][KT], acc_g, acc_u [MB_MOE_NB][rb1]. */
static void mb_moeq_gate_up_tiles(const mb_moeq_job *j, size_t e, size_t r0, size_t r1, int thread)
{
    const mb_kcpu_moe_problem *p = j->p;
    const mb_kcpu_expert *E = &p->experts[e];
    const size_t rows = r1 - r0, pa = p->expert_pair0[e], pe = p->expert_pair0[e + 1];
    float *tg = mb_moeq_scratch(j, thread), *tu = tg + j->rb1 * MB_MOEQ_KT;
    float *acc_g = tu + j->rb1 * MB_MOEQ_KT, *acc_u = acc_g + MB_MOE_NB * j->rb1;
    const float *xs[MB_MOE_NB];
    const size_t qb = mb_moeq_qblock(pe - pa);
    for (size_t q0 = pa; q0 < pe; q0 += qb) {
        const size_t nq = pe - q0 < qb ? pe - q0 : qb;
        for (size_t k0 = 0; k0 < p->d_model; k0 += MB_MOEQ_KT) {
            const size_t kt = p->d_model - k0 < MB_MOEQ_KT ? p->d_model - k0 : MB_MOEQ_KT;
            mb_moeq_dequant_tile(j, p->wdtype[MB_KCPU_GATE],
                                 (const char *)E->gate + r0 * j->rb_gate, j->rb_gate, rows, k0, kt,
                                 tg);
            mb_moeq_dequant_tile(j, p->wdtype[MB_KCPU_UP], (const char *)E->up + r0 * j->rb_up,
                                 j->rb_up, rows, k0, kt, tu);
            for (size_t q = 0; q < nq; q++)
                xs[q] = j->ws->xp + (size_t)p->pair_token[q0 + q] * j->xp_row + k0;
            mb_kcpu_gemm_block(j->isa, MB_KCPU_F32, tg, kt, 0, rows, xs, nq, kt, acc_g, j->rb1,
                               k0 > 0);
            if (j->xp_up)
                for (size_t q = 0; q < nq; q++)
                    xs[q] += j->xp_up;
            mb_kcpu_gemm_block(j->isa, MB_KCPU_F32, tu, kt, 0, rows, xs, nq, kt, acc_u, j->rb1,
                               k0 > 0);
        }
        for (size_t q = 0; q < nq; q++)
            j->isa->silu_mul(acc_g + q * j->rb1, acc_u + q * j->rb1,
                             j->ws->h + (q0 + q) * p->d_ff + r0, rows);
    }
}

/* out[token][c0, c1) += gate * down rows of expert e . h: per k-block one
 * down tile [rb2][KT] for all the expert's pairs, each block of pairs'
 * partial products added with its gate (the sum over k-blocks is linear).
 * Scratch: the tile, acc [MB_MOE_NB][rb2]. */
static void mb_moeq_down_tiles(const mb_moeq_job *j, size_t e, size_t c0, size_t c1, int thread)
{
    const mb_kcpu_moe_problem *p = j->p;
    const mb_kcpu_expert *E = &p->experts[e];
    const size_t nc = c1 - c0, pa = p->expert_pair0[e], pe = p->expert_pair0[e + 1];
    float *td = mb_moeq_scratch(j, thread), *acc = td + j->rb2 * MB_MOEQ_KT;
    const float *hs[MB_MOE_NB];
    const size_t qb = mb_moeq_qblock(pe - pa);
    for (size_t k0 = 0; k0 < p->d_ff; k0 += MB_MOEQ_KT) {
        const size_t kt = p->d_ff - k0 < MB_MOEQ_KT ? p->d_ff - k0 : MB_MOEQ_KT;
        mb_moeq_dequant_tile(j, p->wdtype[MB_KCPU_DOWN], (const char *)E->down + c0 * j->rb_down,
                             j->rb_down, nc, k0, kt, td);
        for (size_t q0 = pa; q0 < pe; q0 += qb) {
            const size_t nq = pe - q0 < qb ? pe - q0 : qb;
            for (size_t q = 0; q < nq; q++)
                hs[q] = j->ws->h + (q0 + q) * p->d_ff + k0;
            mb_kcpu_gemm_block(j->isa, MB_KCPU_F32, td, kt, 0, nc, hs, nq, kt, acc, j->rb2, 0);
            mb_moe_add_gated(p, q0, nq, acc, j->rb2, c0, nc);
        }
    }
}

/* ---- tasks -------------------------------------------------------------- */

/* Rows [r0, r1) of expert task / nb1's gate and up, each expert its way. */
static void mb_moeq_gate_up_task(void *ctx, size_t task, int thread)
{
    const mb_moeq_job *j = ctx;
    const mb_kcpu_moe_problem *p = j->p;
    const size_t e = task / j->nb1, b = task % j->nb1;
    const size_t r0 = b * j->rb1, r1 = r0 + j->rb1 < p->d_ff ? r0 + j->rb1 : p->d_ff;
    const size_t n = p->expert_pair0[e + 1] - p->expert_pair0[e];
    if (n >= j->from_gu)
        mb_moeq_gate_up_tiles(j, e, r0, r1, thread);
    else if (n > 0)
        mb_moeq_gate_up_dots(j, e, r0, r1, thread);
}

/* Output columns [c0, c1) for every token, over all experts. */
static void mb_moeq_down_task(void *ctx, size_t task, int thread)
{
    const mb_moeq_job *j = ctx;
    const mb_kcpu_moe_problem *p = j->p;
    const size_t c0 = task * j->rb2, c1 = c0 + j->rb2 < p->d_model ? c0 + j->rb2 : p->d_model;
    for (size_t t = 0; t < p->n_tokens; t++)
        memset(p->out + t * p->ldo + c0, 0, (c1 - c0) * sizeof(float));
    for (size_t e = 0; e < p->n_experts; e++) {
        const size_t n = p->expert_pair0[e + 1] - p->expert_pair0[e];
        if (n >= j->from_down)
            mb_moeq_down_tiles(j, e, c0, c1, thread);
        else if (n > 0)
            mb_moeq_down_dots(j, e, c0, c1, thread);
    }
    if (p->out_done) p->out_done(p->out_ctx, c0, c1);
}

/* ---- driver ------------------------------------------------------------- */

/* The largest power-of-two row count (8..MB_MOEQ_RB_MAX) whose row_bytes fit budget,
 * halved while the rows of n_units matrices of len rows would give fewer
 * than 4 tasks per thread. */
static size_t mb_moeq_rows(size_t row_bytes, size_t budget, size_t n_units, size_t len, int threads)
{
    size_t rb = MB_MOEQ_RB_MAX;
    while (rb > 8 && rb * row_bytes > budget)
        rb /= 2;
    while (rb > 8 && n_units * ((len + rb - 1) / rb) < (size_t)threads * 4)
        rb /= 2;
    return rb;
}

int mb_moeq_run(mb_kcpu_pool *pool, mb_kcpu_moe_ws *ws, const mb_kcpu_moe_problem *p,
                size_t n_pairs)
{
    const int threads = mb_kcpu_pool_threads(pool);
    mb_moeq_job j = {.p = p,
                     .ws = ws,
                     .isa = mb_kcpu_isa_current(),
                     .dot = mb_kcpu_qdot_get(),
                     .dot2_rows = mb_kcpu_qdot2_rows_get(),
                     .dot2_rows_nt = mb_kcpu_qdot2_rows_nt_get(),
                     .dequant = mb_kcpu_dequant_get()};
    const int wg = p->wdtype[MB_KCPU_GATE], wu = p->wdtype[MB_KCPU_UP],
              wd = p->wdtype[MB_KCPU_DOWN];
    for (size_t e = 0; e < p->n_experts; e++)
        if (p->experts[e].ld_in != p->d_model || p->experts[e].ld_ff != p->d_ff) return -1;
    j.from_gu = mb_moeq_tiles_from(wg) > mb_moeq_tiles_from(wu) ? mb_moeq_tiles_from(wg)
                                                                : mb_moeq_tiles_from(wu);
    j.from_down = mb_moeq_tiles_from(wd);
    if (mb_moeq_forced != MB_KCPU_QPATH_AUTO)
        j.from_gu = j.from_down = mb_moeq_forced == MB_KCPU_QPATH_TILES ? 1 : SIZE_MAX;
    size_t most = 0; /* pairs of the busiest expert that runs integer dots */
    for (size_t e = 0; e < p->n_experts; e++) {
        const size_t n = p->expert_pair0[e + 1] - p->expert_pair0[e];
        if (n == 0) continue;
        j.any_tiles_gu |= n >= j.from_gu;
        j.any_tiles_down |= n >= j.from_down;
        if ((n < j.from_gu || n < j.from_down) && n > most) most = n;
    }
    j.gate_up_paired = wg == wu;
    j.qx_row = mb_kcpu_qact_row_bytes(wg, p->d_model);
    if (!mb_kcpu_qact_same(wg, wu)) {
        j.qx_up = j.qx_row;
        j.qx_row += mb_kcpu_qact_row_bytes(wu, p->d_model);
    }
    j.qh_row = mb_kcpu_qact_row_bytes(wd, p->d_ff);
    j.xp_up = j.qx_up ? p->d_model : 0;
    j.xp_row = p->d_model + j.xp_up;
    j.rb_gate = mb_kcpu_row_bytes(wg, p->d_model);
    j.rb_up = mb_kcpu_row_bytes(wu, p->d_model);
    j.rb_down = mb_kcpu_row_bytes(wd, p->d_ff);

    /* Row blocks: in decode (one pair an expert) any size streams the
     * weights once; with more pairs a task's rows must stay in L2 while the
     * pairs sweep over them (its quantized rows, or an f32 tile a matrix). */
    size_t gu_bytes = most > 1 ? j.rb_gate + j.rb_up : 0;
    size_t dn_bytes = most > 1 ? j.rb_down : 0;
    if (j.any_tiles_gu && gu_bytes < MB_MOEQ_KT * sizeof(float))
        gu_bytes = MB_MOEQ_KT * sizeof(float);
    if (j.any_tiles_down && dn_bytes < MB_MOEQ_KT * sizeof(float))
        dn_bytes = MB_MOEQ_KT * sizeof(float);
    j.rb1 = mb_moeq_rows(gu_bytes, MB_MOEQ_L2_BYTES, p->n_experts, p->d_ff, threads);
    j.nb1 = (p->d_ff + j.rb1 - 1) / j.rb1;
    j.rb2 = mb_moeq_rows(dn_bytes, MB_MOEQ_L2_BYTES, 1, p->d_model, threads);

    /* pack: one f32 row; dots: g and u of gate/up, v of down, for a group
     * of pairs */
    size_t per = mb_moe_round16(p->d_model);
    if (per < 2 * MB_KCPU_QDOT_NT * j.rb1) per = 2 * MB_KCPU_QDOT_NT * j.rb1;
    if (per < MB_KCPU_QDOT_NT * j.rb2) per = MB_KCPU_QDOT_NT * j.rb2;
    if (j.any_tiles_gu) {
        const size_t need = mb_moe_round16(2 * j.rb1 * MB_MOEQ_KT + 2 * MB_MOE_NB * j.rb1);
        per = need > per ? need : per;
    }
    if (j.any_tiles_down) {
        const size_t need = mb_moe_round16(j.rb2 * MB_MOEQ_KT + MB_MOE_NB * j.rb2);
        per = need > per ? need : per;
    }
    j.per_thread = per;
    if (mb_moe_grow((void **)&ws->h, &ws->h_cap, mb_moe_mul(n_pairs, p->d_ff), sizeof(float)) ||
        mb_moe_grow((void **)&ws->scratch, &ws->scratch_cap, mb_moe_mul(per, (size_t)threads),
                    sizeof(float)) ||
        mb_moe_grow((void **)&ws->qx, &ws->qx_cap, mb_moe_mul(p->n_tokens, j.qx_row), 1) ||
        mb_moe_grow((void **)&ws->qh, &ws->qh_cap, mb_moe_mul(n_pairs, j.qh_row), 1) ||
        (j.any_tiles_gu && mb_moe_grow((void **)&ws->xp, &ws->xp_cap,
                                       mb_moe_mul(p->n_tokens, j.xp_row), sizeof(float))))
        return -1;
    /* The activation quantizations of a decode step (a few rows) run on
     * the caller: a dispatch costs more than they do. */
    const size_t inline_elems = 32 * 1024;
    if (n_pairs > 0) {
        mb_kcpu_pool_run(p->n_tokens * p->d_model < inline_elems ? NULL : pool, p->n_tokens,
                         mb_moeq_pack_task, &j);
        mb_kcpu_pool_run(pool, p->n_experts * j.nb1, mb_moeq_gate_up_task, &j);
        mb_kcpu_pool_run(n_pairs * p->d_ff < inline_elems ? NULL : pool, n_pairs,
                         mb_moeq_quant_h_task, &j);
    }
    mb_kcpu_pool_run(pool, (p->d_model + j.rb2 - 1) / j.rb2, mb_moeq_down_task, &j);
    return 0;
}
