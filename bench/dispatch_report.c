/* bench_dispatch's report: the table rows, the JSON of each run, and the
 * goals (calls saved by batching, payload per token per backend, auto
 * against the better fixed mode) and ceilings, from the figures the runs
 * collected. */
#include "bench/dispatch_report.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bench/moe_bench.h"

static double bd_mib(double bytes)
{
    return bytes / (1024.0 * 1024.0);
}

double bd_prefill_s(const bd_result *r)
{
    return r->prefill_s_measured * r->scale;
}

static double bd_decode_mean_ms(const bd_args *a, const bd_result *r)
{
    return a->decode_steps ? r->decode_s * 1e3 / a->decode_steps : 0;
}

double bd_calls(const bd_result *r, int decode, uint32_t n_links)
{
    double c = 0;
    for (uint32_t i = 0; i < n_links; i++)
        c += (double)(decode ? r->dec[i].calls : r->pre[i].calls);
    return decode ? c : c * r->cscale;
}

void mb_bench_dispatch_print_row(const bd_args *a, const bd_setup *s, const bd_result *r)
{
    char pre_calls[64] = "", sent[64] = "", recv[64] = "", slices[64] = "", wk[64] = "";
    for (uint32_t i = 0; i < s->n_links; i++) {
        size_t o = strlen(pre_calls);
        snprintf(pre_calls + o, sizeof pre_calls - o, "%s%.0f", i ? "/" : "",
                 (double)r->pre[i].calls * r->cscale);
        o = strlen(sent);
        snprintf(sent + o, sizeof sent - o, "%s%.0f", i ? "/" : "",
                 bd_mib((double)r->pre[i].bytes_sent * r->cscale));
        o = strlen(recv);
        snprintf(recv + o, sizeof recv - o, "%s%.0f", i ? "/" : "",
                 bd_mib((double)r->pre[i].bytes_received * r->cscale));
        o = strlen(wk);
        snprintf(wk + o, sizeof wk - o, "%s%.2f", i ? "/" : "",
                 (double)r->pre[i].worker_compute_ns * 1e-9 * r->cscale);
        o = strlen(slices);
        if (r->mode == MB_IPC_MODE_AUTO)
            snprintf(slices + o, sizeof slices - o, "%s%u", i ? "/" : "", r->slice_pre[i]);
    }
    char pre_s[64];
    if (r->scale > 1.0001)
        snprintf(pre_s, sizeof pre_s, "%.2f*  (%.2f s / %u tok)", bd_prefill_s(r),
                 r->prefill_s_measured, r->prefill_measured);
    else
        snprintf(pre_s, sizeof pre_s, "%.2f", bd_prefill_s(r));
    double dec_sent = 0, dec_recv = 0;
    for (uint32_t i = 0; i < s->n_links; i++) {
        dec_sent += (double)r->dec[i].bytes_sent;
        dec_recv += (double)r->dec[i].bytes_received;
    }
    char diff[16] = "-";
    if (r->max_diff >= 0) snprintf(diff, sizeof diff, "%.1e", r->max_diff);
    printf("%-7s %-8s %15s %13s %11s %-30s %11s %6.2f %6.0f %8.3f %8.3f %7.2f %7.2f %8s %8s\n",
           s->name, mb_ipc_mode_name((int)r->mode), pre_calls, sent, recv, pre_s, wk,
           r->coord_cpu_s, bd_calls(r, 1, s->n_links), bd_mib(dec_sent), bd_mib(dec_recv),
           r->decode_median_ms, bd_decode_mean_ms(a, r), slices[0] ? slices : "-", diff);
}

/* Request bytes per token sent, with and without the 8-byte routing entry
 * per (token, expert) pair, and reply bytes per token. */
static void bd_per_token(const mb_stats_counters *c, double *sent, double *sent_no_pairs,
                         double *recv, double *pairs)
{
    double t = c->tokens ? (double)c->tokens : 1;
    *sent = (double)c->bytes_sent / t;
    *sent_no_pairs = ((double)c->bytes_sent - 8.0 * (double)c->pairs) / t;
    *recv = (double)c->bytes_received / t;
    *pairs = (double)c->pairs / t;
}

static cJSON *bd_counters_json(const mb_stats_counters *c)
{
    cJSON *o = mb_bench_counters_json(c);
    double s, sn, rv, p;
    bd_per_token(c, &s, &sn, &rv, &p);
    cJSON_AddNumberToObject(o, "bytes_sent_per_token", s);
    cJSON_AddNumberToObject(o, "bytes_sent_per_token_without_pairs", sn);
    cJSON_AddNumberToObject(o, "bytes_received_per_token", rv);
    cJSON_AddNumberToObject(o, "pairs_per_token", p);
    return o;
}

cJSON *mb_bench_dispatch_result_json(const bd_args *a, const bd_setup *s, const bd_result *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "scenario", s->name);
    cJSON_AddStringToObject(o, "mode", mb_ipc_mode_name((int)r->mode));
    cJSON *bk = cJSON_AddArrayToObject(o, "backends");
    for (uint32_t i = 0; i < s->n_links; i++) {
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "name", s->link_name[i]);
        cJSON_AddNumberToObject(b, "threads", s->threads[i]);
        cJSON_AddNumberToObject(b, "weight", s->weight[i]);
        cJSON_AddNumberToObject(b, "experts_per_layer", s->experts[i]);
        cJSON_AddNumberToObject(b, "ping_us_back_to_back", s->ping_us[i][0]);
        cJSON_AddNumberToObject(b, "ping_us_after_3ms_idle", s->ping_us[i][1]);
        cJSON_AddItemToObject(b, "prefill_measured_all_repeats", bd_counters_json(&r->pre[i]));
        cJSON_AddItemToObject(b, "decode", bd_counters_json(&r->dec[i]));
        if (r->mode == MB_IPC_MODE_AUTO) {
            cJSON_AddNumberToObject(b, "auto_slice_prefill", r->slice_pre[i]);
            cJSON_AddNumberToObject(b, "auto_slice_decode", r->slice_dec[i]);
        }
        cJSON_AddItemToArray(bk, b);
    }
    cJSON_AddNumberToObject(o, "prefill_tokens", a->prefill_tokens);
    cJSON_AddNumberToObject(o, "prefill_tokens_measured", r->prefill_measured);
    cJSON_AddNumberToObject(o, "repeats", a->repeat);
    cJSON_AddBoolToObject(o, "prefill_extrapolated", r->scale > 1.0001);
    cJSON_AddNumberToObject(o, "prefill_s_measured", r->prefill_s_measured);
    cJSON_AddNumberToObject(o, "prefill_s_first_repeat_measured", r->prefill_s_first);
    cJSON_AddNumberToObject(o, "prefill_s", bd_prefill_s(r));
    cJSON_AddNumberToObject(o, "prefill_calls", bd_calls(r, 0, s->n_links));
    cJSON_AddNumberToObject(o, "prefill_coordinator_cpu_s", r->coord_cpu_s);
    cJSON_AddNumberToObject(o, "decode_steps", a->decode_steps);
    cJSON_AddNumberToObject(o, "decode_ms_per_step_mean", bd_decode_mean_ms(a, r));
    cJSON_AddNumberToObject(o, "decode_ms_per_step_median", r->decode_median_ms);
    cJSON_AddNumberToObject(o, "decode_calls", bd_calls(r, 1, s->n_links));
    if (r->max_diff >= 0) cJSON_AddNumberToObject(o, "max_abs_diff_vs_first_mode", r->max_diff);
    return o;
}

/* ---- goals ---- */

/* Payload per token per backend from batched prefill and decode of the even
 * and 3:1 scenarios: the request without its 8-byte routing entries should
 * not depend on how many experts a backend holds. */
static void bd_goal_bytes(const bd_scenario *sc[], int n, cJSON *goals)
{
    printf("\npayload per token per backend (batched; request bytes include 8 B per (token, "
           "expert) pair):\n");
    printf("%-7s %-14s %7s %7s | %9s %9s %9s | %9s %9s %9s\n", "scen.", "backend", "experts",
           "pairs/t", "pre sent", "-pairs", "pre recv", "dec sent", "-pairs", "dec recv");
    double lo = INFINITY, hi = 0, lo_raw = INFINITY, hi_raw = 0;
    for (int k = 0; k < n; k++) {
        const bd_setup *s = &sc[k]->setup;
        const bd_result *r = &sc[k]->res[MB_IPC_MODE_BATCHED];
        for (uint32_t i = 0; i < s->n_links; i++) {
            double ps, pn, pr, pp, ds, dn, dr, dp;
            bd_per_token(&r->pre[i], &ps, &pn, &pr, &pp);
            bd_per_token(&r->dec[i], &ds, &dn, &dr, &dp);
            printf("%-7s %-14s %7u %7.2f | %9.1f %9.1f %9.1f | %9.1f %9.1f %9.1f\n", s->name,
                   s->link_name[i], s->experts[i], pp, ps, pn, pr, ds, dn, dr);
            lo = fmin(lo, pn), hi = fmax(hi, pn), lo_raw = fmin(lo_raw, ps),
            hi_raw = fmax(hi_raw, ps);
        }
    }
    double spread = lo > 0 ? (hi - lo) / lo : 1,
           spread_raw = lo_raw > 0 ? (hi_raw - lo_raw) / lo_raw : 1;
    printf("prefill request bytes/token spread over backends: %.3f%% without pair entries, %.3f%% "
           "with them\n",
           spread * 100, spread_raw * 100);
    cJSON *g = mb_bench_goal(goals, "prefill_bytes_per_token_spread", spread,
                             "< 0.01 (independent of experts held)", spread < 0.01);
    cJSON_AddNumberToObject(g, "spread_with_pair_entries", spread_raw);
}

/* Auto against the better fixed mode. In decode (one token per step) every
 * mode sends the same messages, so there the check is that the traffic is
 * identical; the time ratio is shown next to the stream/batched difference,
 * which is noise alone. */
static void bd_goal_auto(const bd_args *a, const bd_scenario *sc, cJSON *goals)
{
    const bd_result *r = sc->res;
    if (!sc->ran[MB_IPC_MODE_AUTO] || !sc->ran[MB_IPC_MODE_STREAM] || !sc->ran[MB_IPC_MODE_BATCHED])
        return;
    const bd_result *rs = &r[MB_IPC_MODE_STREAM], *rb = &r[MB_IPC_MODE_BATCHED],
                    *ra = &r[MB_IPC_MODE_AUTO];
    double rp = bd_prefill_s(ra) / fmin(bd_prefill_s(rs), bd_prefill_s(rb));
    double rd = ra->decode_median_ms / fmin(rs->decode_median_ms, rb->decode_median_ms);
    double noise = fmax(rs->decode_median_ms, rb->decode_median_ms) /
                   fmin(rs->decode_median_ms, rb->decode_median_ms);
    int same = 1;
    for (uint32_t i = 0; i < sc->setup.n_links; i++)
        for (int m = 0; m < BD_MODES; m++)
            same &= r[m].dec[i].calls == ra->dec[i].calls &&
                    r[m].dec[i].bytes_sent == ra->dec[i].bytes_sent;
    int met = rp <= 1.05 && (rd <= 1.05 || same);
    printf("%s: auto / better fixed mode: prefill %.3f (goal <= 1.05): %s; decode: traffic %s in "
           "all modes,\n"
           "    median step ratio %.3f (stream vs batched, identical messages: %.3f, i.e. noise)\n",
           sc->setup.name, rp, rp <= 1.05 ? "met" : "NOT met", same ? "identical" : "DIFFERENT", rd,
           noise);
    for (uint32_t i = 0; i < sc->setup.n_links; i++) {
        const mb_stats_counters *d = &rb->dec[i];
        /* From the start of the send (the worker may already run while the
         * coordinator is still in the wake-up call) to the reply. */
        double us = 1e-3 / (double)(d->calls ? d->calls : 1);
        printf("    %s decode call: send+wait %.0f us, worker compute %.0f us: %.0f us round trip "
               "and scheduling; PING %.0f us back to back, %.0f us after 3 ms idle\n",
               sc->setup.link_name[i], (double)(d->send_ns + d->wait_ns) * us,
               (double)d->worker_compute_ns * us,
               ((double)(d->send_ns + d->wait_ns) - (double)d->worker_compute_ns) * us,
               sc->setup.ping_us[i][0], sc->setup.ping_us[i][1]);
    }
    char name[64];
    snprintf(name, sizeof name, "auto_vs_best_%s", sc->setup.name);
    cJSON *g = mb_bench_goal(goals, name, rp, "prefill <= 1.05; decode traffic identical", met);
    cJSON_AddNumberToObject(g, "prefill_ratio", rp);
    cJSON_AddNumberToObject(g, "decode_median_ratio", rd);
    cJSON_AddNumberToObject(g, "decode_noise_stream_vs_batched", noise);
    cJSON_AddBoolToObject(g, "decode_traffic_identical", same);
}

void mb_bench_dispatch_goals(const bd_args *a, const bd_scenario sc[4], cJSON *goals)
{
    const bd_scenario *ev = &sc[0];
    if (ev->ran[MB_IPC_MODE_STREAM] && ev->ran[MB_IPC_MODE_BATCHED]) {
        double red = 1 - bd_calls(&ev->res[MB_IPC_MODE_BATCHED], 0, 2) /
                             bd_calls(&ev->res[MB_IPC_MODE_STREAM], 0, 2);
        printf("\nprefill calls, batched vs stream: %.2f%% fewer (goal >= 95%%): %s\n", red * 100,
               red >= 0.95 ? "met" : "NOT met");
        mb_bench_goal(goals, "prefill_calls_reduction_batched_vs_stream", red, ">= 0.95",
                      red >= 0.95);
    }
    const bd_scenario *bs[2];
    int nb = 0;
    for (int k = 0; k < 2; k++)
        if (sc[k].ran[MB_IPC_MODE_BATCHED]) bs[nb++] = &sc[k];
    if (nb) bd_goal_bytes(bs, nb, goals);
    printf("\n");
    bd_goal_auto(a, &sc[0], goals);
    bd_goal_auto(a, &sc[2], goals);
}

void mb_bench_dispatch_ceilings(const bd_args *a, const mb_model_config *cfg,
                                const mb_bench_ceilings *ceil, const bd_scenario sc[4], cJSON *cj)
{
    /* Decode must read the 8 routed experts' weights per layer and step;
     * prefill must do 6 d_model d_ff flops per (token, expert) pair. */
    double floor_dec_ms =
        a->layers * 8.0 * (double)mb_expert_bytes(cfg) / (ceil->read_gbs * 1e9) * 1e3;
    double floor_pre_s = a->layers * (double)a->prefill_tokens * cfg->top_k * 6.0 * cfg->d_model *
                         cfg->d_ff_expert / (ceil->fma_gflops * 1e9);
    printf("\nceilings: decode weight-read floor %.3f ms/step, prefill FMA floor %.2f s\n",
           floor_dec_ms, floor_pre_s);
    for (int k = 0; k < 4; k++) {
        if (!sc[k].ran[MB_IPC_MODE_BATCHED] || k == 1) continue;
        const bd_result *b = &sc[k].res[MB_IPC_MODE_BATCHED];
        printf("  %-7s batched: prefill at %.0f%% of the FMA ceiling, decode at %.0f%% of the "
               "read ceiling\n",
               sc[k].setup.name, 100 * floor_pre_s / bd_prefill_s(b),
               100 * floor_dec_ms / b->decode_median_ms);
    }
    cJSON_AddNumberToObject(cj, "decode_floor_ms_per_step", floor_dec_ms);
    cJSON_AddNumberToObject(cj, "prefill_floor_s", floor_pre_s);
}
