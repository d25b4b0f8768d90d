/* Placement planning: a smooth weighted round-robin per layer, so each link
 * gets its share of every layer and consecutive experts land on different
 * links, capped by each link's memory and slots. */
#include "broker/placement.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t mb_expert_bytes(const mb_model_config *cfg)
{
    if (cfg->expert_bytes) return cfg->expert_bytes;
    uint64_t row = 0;
    if (mb_dtype_row_bytes(cfg->dtype, cfg->d_model, &row) != MB_STATUS_OK)
        row = (uint64_t)cfg->d_model * mb_dtype_size(cfg->dtype);
    return 3ull * cfg->d_ff_expert * row;
}

mb_status mb_placement_check_caps(const mb_link *links, uint32_t n_links, uint32_t weight_mask, mb_dtype payload,
                                  char *err, size_t err_cap)
{
    if (!links || !mb_dtype_valid(payload) || (weight_mask & ~MB_DTYPE_MASK_WEIGHTS)) return MB_STATUS_INVALID_ARG;
    for (uint32_t i = 0; i < n_links; i++) {
        const mb_proto_hello_reply *h = &links[i].caps;
        mb_backend_caps caps;
        memset(&caps, 0, sizeof caps);
        snprintf(caps.name, sizeof caps.name, "%s", h->backend);
        snprintf(caps.device, sizeof caps.device, "%s", h->device);
        caps.payload_dtype_mask = h->payload_dtype_mask;
        /* A checkpoint that names no weight dtype checks the payload only. */
        caps.weight_dtype_mask = weight_mask ? h->weight_dtype_mask : MB_DTYPE_MASK(MB_DTYPE_F32);
        char why[200];
        mb_status st = mb_backend_caps_check(&caps, weight_mask ? weight_mask : MB_DTYPE_MASK(MB_DTYPE_F32),
                                             payload, why, sizeof why);
        if (st != MB_STATUS_OK) {
            snprintf(err, err_cap, "placement: %s cannot serve this model: %s", links[i].name, why);
            return st;
        }
    }
    return MB_STATUS_OK;
}

void mb_placement_free(mb_placement *p)
{
    if (!p) return;
    if (p->copies)
        for (size_t i = 0; i < (size_t)p->n_links * p->max_copies; i++) free(p->copies[i].slot);
    free(p->copies);
    free(p->n_copies);
    free(p->heat);
    free(p->rank);
    free(p->short_why);
    free(p->primary_slots);
    free(p->table);
    free(p->slots_used);
    free(p->bytes_placed);
    memset(p, 0, sizeof *p);
}

mb_status mb_placement_plan(const mb_model_config *cfg, const mb_link *links, uint32_t n_links, int local_link,
                            uint32_t local_experts, uint64_t local_budget, mb_placement *out, char *err,
                            size_t err_cap)
{
    if (!cfg || !links || n_links == 0 || n_links > 65535 || !out) return MB_STATUS_INVALID_ARG;
    const uint32_t L = cfg->n_layers, E = cfg->n_experts;
    const uint64_t eb = mb_expert_bytes(cfg);
    mb_placement p = {.n_layers = L, .n_experts = E, .n_links = n_links};
    p.table = calloc((size_t)L * E, sizeof *p.table);
    p.slots_used = calloc(n_links, sizeof *p.slots_used);
    p.bytes_placed = calloc(n_links, sizeof *p.bytes_placed);
    double *share = calloc(n_links, sizeof *share);
    double *credit = calloc(n_links, sizeof *credit);
    uint64_t *cap_experts = calloc(n_links, sizeof *cap_experts);
    mb_status st = MB_STATUS_OK;
    if (!p.table || !p.slots_used || !p.bytes_placed || !share || !credit || !cap_experts) {
        st = MB_STATUS_NOMEM;
        goto done;
    }
    if (local_link >= 0 && (uint32_t)local_link >= n_links) {
        st = MB_STATUS_INVALID_ARG;
        goto done;
    }
    /* The in-process link's experts per layer, limited by its byte budget. */
    uint32_t local_per_layer = 0;
    if (local_link >= 0) {
        local_per_layer = local_experts < E ? local_experts : E;
        if (local_budget && eb && L) {
            uint64_t fit = local_budget / eb / L;
            if (fit < local_per_layer) local_per_layer = (uint32_t)fit;
        }
    }
    double weight_sum = 0;
    uint32_t n_workers = 0;
    for (uint32_t i = 0; i < n_links; i++) {
        /* How many experts the link can hold in all: slots and memory. */
        uint64_t by_mem = eb ? links[i].caps.mem_free_bytes / eb : UINT64_MAX;
        uint64_t by_slots = links[i].caps.max_slots;
        cap_experts[i] = by_mem < by_slots ? by_mem : by_slots;
        if ((int)i == local_link) continue;
        weight_sum += links[i].weight > 0 ? links[i].weight : 1.0;
        n_workers++;
    }
    if (n_workers == 0 && local_per_layer < E) {
        snprintf(err, err_cap, "placement: %u experts per layer need a worker (only %u run in-process)", E,
                 local_per_layer);
        st = MB_STATUS_CONFIG;
        goto done;
    }
    for (uint32_t i = 0; i < n_links; i++) {
        if ((int)i == local_link) share[i] = E ? (double)local_per_layer / E : 0;
        else share[i] = (1.0 - (E ? (double)local_per_layer / E : 0)) * (links[i].weight > 0 ? links[i].weight : 1.0) /
                        weight_sum;
    }
    for (uint32_t layer = 0; layer < L; layer++) {
        memset(credit, 0, n_links * sizeof *credit);
        for (uint32_t e = 0; e < E; e++) {
            /* Smooth weighted round-robin: every link earns its share each
             * step; the richest link that still has room takes the expert. */
            int best = -1;
            for (uint32_t i = 0; i < n_links; i++) {
                credit[i] += share[i];
                if (share[i] <= 0 || p.slots_used[i] >= cap_experts[i]) continue;
                if (best < 0 || credit[i] > credit[best]) best = (int)i;
            }
            if (best < 0) {
                snprintf(err, err_cap,
                         "placement: layer %u expert %u fits on no backend (%.2f GiB per expert; add workers or "
                         "memory)",
                         layer, e, (double)eb / (1 << 30));
                st = MB_STATUS_CONFIG;
                goto done;
            }
            credit[best] -= 1.0;
            mb_place *pl = &p.table[(size_t)layer * E + e];
            pl->link = (uint16_t)best;
            pl->slot = p.slots_used[best]++;
            p.bytes_placed[best] += eb;
        }
    }
    p.primary_slots = malloc(n_links * sizeof *p.primary_slots);
    if (!p.primary_slots) {
        st = MB_STATUS_NOMEM;
        goto done;
    }
    memcpy(p.primary_slots, p.slots_used, n_links * sizeof *p.slots_used);
    *out = p;
    memset(&p, 0, sizeof p);
done:
    mb_placement_free(&p);
    free(share);
    free(credit);
    free(cap_experts);
    return st;
}

/* Whole-group capacity of link r for the copy: memory and slots. */
static int mb_placement_fits(const mb_placement *p, const mb_link *links, uint64_t eb, uint32_t r, uint64_t need)
{
    uint64_t by_mem = eb ? links[r].caps.mem_free_bytes / eb : UINT64_MAX;
    uint64_t cap = by_mem < links[r].caps.max_slots ? by_mem : links[r].caps.max_slots;
    return p->slots_used[r] <= cap && need <= cap - p->slots_used[r];
}

/* 1 if link r holds a copy of group g already. */
static int mb_placement_holds(const mb_placement *p, uint32_t g, uint32_t r)
{
    for (uint32_t k = 0; k < p->n_copies[g]; k++)
        if (p->copies[(size_t)g * p->max_copies + k].link == r) return 1;
    return 0;
}

mb_status mb_placement_add_replicas(mb_placement *p, const mb_model_config *cfg, const mb_link *links,
                                    int local_link, uint32_t replicas, const uint64_t *heat)
{
    if (!p || !cfg || !links || !p->primary_slots || p->copies) return MB_STATUS_INVALID_ARG;
    const uint32_t n = p->n_links, extra = replicas > 1 ? replicas - 1 : 0;
    const uint64_t eb = mb_expert_bytes(cfg);
    p->copies = calloc((size_t)n * (extra ? extra : 1), sizeof *p->copies);
    p->n_copies = calloc(n, sizeof *p->n_copies);
    p->heat = calloc(n, sizeof *p->heat);
    p->rank = malloc(n * sizeof *p->rank);
    p->short_why = calloc(n, sizeof *p->short_why);
    uint32_t *order = malloc(n * sizeof *order);
    if (!p->copies || !p->n_copies || !p->heat || !p->rank || !p->short_why || !order) {
        free(order);
        return MB_STATUS_NOMEM;
    }
    p->max_copies = extra;
    p->heat_known = heat != NULL;
    p->heat_total = 0;
    for (size_t i = 0; heat && i < (size_t)p->n_layers * p->n_experts; i++) {
        uint32_t g = p->table[i].link;
        p->heat[g] = __builtin_add_overflow(p->heat[g], heat[i], &p->heat[g]) ? UINT64_MAX : p->heat[g];
        p->heat_total = __builtin_add_overflow(p->heat_total, heat[i], &p->heat_total) ? UINT64_MAX : p->heat_total;
    }
    /* The groups that may have copies, hottest first (ties: link order; an
     * insertion sort keeps it stable). */
    uint32_t n_order = 0;
    for (uint32_t g = 0; g < n; g++) {
        p->rank[g] = UINT32_MAX;
        if ((int)g == local_link || p->primary_slots[g] == 0) continue;
        uint32_t at = n_order++;
        while (at > 0 && p->heat[order[at - 1]] < p->heat[g]) {
            order[at] = order[at - 1];
            at--;
        }
        order[at] = g;
    }
    for (uint32_t i = 0; i < n_order; i++) p->rank[order[i]] = i;
    /* Round k gives the k-th copy to every group that has the k-1 before
     * it; memory only shrinks, so a group left short stays short. */
    for (uint32_t round = 0; round < extra; round++) {
        for (uint32_t i = 0; i < n_order; i++) {
            uint32_t g = order[i];
            if (p->n_copies[g] != round) continue;
            const uint64_t need = p->primary_slots[g];
            int candidates = 0;
            uint32_t to = UINT32_MAX;
            for (uint32_t k = 1; k < n && to == UINT32_MAX; k++) {
                uint32_t r = (g + k) % n;
                if ((int)r == local_link || mb_placement_holds(p, g, r)) continue;
                candidates++;
                if (mb_placement_fits(p, links, eb, r, need)) to = r;
            }
            if (to == UINT32_MAX) {
                p->short_why[g] = candidates ? MB_REPLICA_SHORT_MEMORY : MB_REPLICA_SHORT_WORKERS;
                continue;
            }
            mb_replica *c = &p->copies[(size_t)g * extra + p->n_copies[g]];
            c->slot = malloc(need * sizeof *c->slot);
            if (!c->slot) {
                free(order);
                return MB_STATUS_NOMEM;
            }
            c->link = (uint16_t)to;
            for (uint32_t s = 0; s < need; s++) c->slot[s] = p->slots_used[to]++;
            p->bytes_placed[to] += need * eb;
            p->n_copies[g]++;
        }
    }
    free(order);
    return MB_STATUS_OK;
}

void mb_placement_describe_replicas(const mb_placement *p, const mb_link *links, uint32_t g, char *buf, size_t cap)
{
    if (!buf || cap == 0) return;
    buf[0] = '\0';
    if (!p || !links || g >= p->n_links || !p->n_copies) return;
    size_t used = 0;
#define MB_PUT_(...)                                                                                                   \
    do {                                                                                                               \
        int n_ = snprintf(buf + used, cap - used, __VA_ARGS__);                                                        \
        if (n_ > 0) used = used + (size_t)n_ < cap ? used + (size_t)n_ : cap - 1;                                      \
    } while (0)
    MB_PUT_("%s's %u experts", links[g].name, p->primary_slots[g]);
    if (p->heat_known)
        MB_PUT_(" (%.1f%% of the --hotness pairs)",
                p->heat_total ? 100.0 * (double)p->heat[g] / (double)p->heat_total : 0.0);
    if (p->rank[g] == UINT32_MAX) {
        MB_PUT_(": no copy (%s)", p->primary_slots[g] ? "in-process" : "none placed");
        return;
    }
    if (p->n_copies[g] == 0) MB_PUT_(": no copy");
    for (uint32_t k = 0; k < p->n_copies[g]; k++)
        MB_PUT_("%s%s", k ? ", " : p->n_copies[g] > 1 ? ": copies on " : ": copy on ",
                links[p->copies[(size_t)g * p->max_copies + k].link].name);
    if (p->n_copies[g] < p->max_copies) {
        if (p->n_copies[g]) MB_PUT_(" (%u of %u wanted)", p->n_copies[g], p->max_copies);
        if (p->short_why[g] == MB_REPLICA_SHORT_WORKERS) MB_PUT_(" (no other worker for more)");
        else MB_PUT_(" (memory: no other worker has room for %u more experts)", p->primary_slots[g]);
    }
#undef MB_PUT_
}

void mb_placement_print(const mb_placement *p, const mb_link *links, FILE *f)
{
    fprintf(f, "placement: %u layers x %u experts over %u backend(s)\n", p->n_layers, p->n_experts, p->n_links);
    /* Columns as wide as their longest entry: a device description is never cut. */
    int name_w = 0, dev_w = 0;
    for (uint32_t i = 0; i < p->n_links; i++) {
        int n = (int)strnlen(links[i].name, sizeof links[i].name);
        int d = (int)strnlen(links[i].caps.device, sizeof links[i].caps.device);
        name_w = n > name_w ? n : name_w;
        dev_w = d > dev_w ? d : dev_w;
    }
    for (uint32_t i = 0; i < p->n_links; i++) {
        fprintf(f, "  %-*.*s  %-*.*s  %6u experts (%5.1f per layer)  %8.3f GiB\n", name_w, name_w, links[i].name,
                dev_w, dev_w, links[i].caps.device, p->slots_used[i],
                p->n_layers ? (double)p->slots_used[i] / p->n_layers : 0.0,
                (double)p->bytes_placed[i] / (double)(1ull << 30));
    }
    if (!p->n_copies || p->max_copies == 0) return;
    fprintf(f, "replicas: %u homes per expert wanted; workers' experts served %s\n", p->max_copies + 1,
            p->heat_known ? "hottest first (routed pairs from --hotness)" : "in worker order (no --hotness given)");
    for (uint32_t r = 0; r < p->n_links; r++)
        for (uint32_t g = 0; g < p->n_links; g++) {
            if (p->rank[g] != r) continue;
            char line[512];
            mb_placement_describe_replicas(p, links, g, line, sizeof line);
            fprintf(f, "  %s\n", line);
        }
}
