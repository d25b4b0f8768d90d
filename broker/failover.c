/* Failover: rerouting a lost worker's lanes to a replica or to an
 * in-process CPU fallback (loaded on first need from the mapped
 * checkpoint), and bringing workers back between steps: reconnected tcp/ipc
 * workers, and spawned ones started again.
 * Runs on the dispatch thread only, while nothing is in flight. */
#include "broker/failover.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MB_FAILOVER_RECONNECT_NS 500000000LL     /* one reconnect try at most */
#define MB_FAILOVER_RESPAWN_NS 10000000000LL     /* one respawn: process start and HELLO */
#define MB_FAILOVER_BACKOFF_MIN_NS 250000000ull  /* first retry after a failed try */
#define MB_FAILOVER_BACKOFF_MAX_NS 30000000000ull
#define MB_FAILOVER_MAX_RECORDS 1024u

struct mb_failover {
    mb_session *s;
    int policy;
    int verbose;
    mb_link *fallback;   /* in-process link taking lost lanes: the session's local link, or owned */
    mb_link *owned;      /* an in-process link opened on first need (never moved) */
    uint32_t next_slot;  /* next free slot on the fallback */
    uint32_t **fb_map;   /* [n_links]: a lane's slots on the fallback, NULL until loaded there */
    uint64_t *retry_ns;  /* [n_links]: next reconnect try */
    uint64_t *backoff_ns; /* [n_links] */
    uint32_t n_lost, n_rejoined;
    mb_failover_loss records[MB_FAILOVER_MAX_RECORDS];
};

mb_status mb_failover_create(mb_session *s, int policy, int verbose, mb_failover **out)
{
    if (!s || !out || !s->links) return MB_STATUS_INVALID_ARG;
    mb_failover *f = calloc(1, sizeof *f);
    if (!f) return MB_STATUS_NOMEM;
    f->s = s;
    f->policy = policy;
    f->verbose = verbose;
    f->fb_map = calloc(s->n_links, sizeof *f->fb_map);
    f->retry_ns = calloc(s->n_links, sizeof *f->retry_ns);
    f->backoff_ns = calloc(s->n_links, sizeof *f->backoff_ns);
    if (!f->fb_map || !f->retry_ns || !f->backoff_ns) {
        mb_failover_destroy(f);
        return MB_STATUS_NOMEM;
    }
    if (s->local_link >= 0) {
        f->fallback = &s->links[s->local_link];
        f->next_slot = s->placement.slots_used ? s->placement.slots_used[s->local_link] : 0;
    }
    *out = f;
    return MB_STATUS_OK;
}

void mb_failover_destroy(mb_failover *f)
{
    if (!f) return;
    if (f->fb_map)
        for (uint32_t i = 0; i < f->s->n_links; i++) free(f->fb_map[i]);
    free(f->fb_map);
    free(f->retry_ns);
    free(f->backoff_ns);
    if (f->owned) mb_link_close(f->owned);
    free(f->owned);
    free(f);
}

mb_status mb_failover_get_loss(const mb_failover *f, uint32_t i, mb_failover_loss *out)
{
    if (!f || !out || i >= f->n_lost || i >= MB_FAILOVER_MAX_RECORDS) return MB_STATUS_INVALID_ARG;
    *out = f->records[i];
    return MB_STATUS_OK;
}

uint32_t mb_failover_lost_count(const mb_failover *f)
{
    return f ? f->n_lost : 0;
}

uint32_t mb_failover_rejoined_count(const mb_failover *f)
{
    return f ? f->n_rejoined : 0;
}

static uint64_t mb_failover_steps(const mb_session *s)
{
    mb_stats_steps a = {0}, b = {0};
    mb_stats_get_steps(s->stats, MB_STATS_PHASE_PREFILL, &a);
    mb_stats_get_steps(s->stats, MB_STATS_PHASE_DECODE, &b);
    return a.count + b.count;
}

/* Loads lane g's experts into the in-process fallback (opening it first if
 * the session has none) unless they are there already. */
static mb_status mb_failover_fallback(mb_failover *f, uint32_t g, const uint32_t **map, int *loaded, char *err,
                                      size_t err_cap)
{
    mb_session *s = f->s;
    const mb_placement *pl = &s->placement;
    *loaded = 0;
    if (!f->fallback) {
        mb_link *l = calloc(1, sizeof *l);
        if (!l) return MB_STATUS_NOMEM;
        mb_link_spec ls = {.backend = "cpu", .device = -1, .weight = 1,
                           .max_slots = pl->n_layers * pl->n_experts};
        mb_status st = mb_link_open_inproc(&ls, (int)s->n_links, l, err, err_cap);
        if (st != MB_STATUS_OK) {
            free(l);
            return st;
        }
        snprintf(l->name, sizeof l->name, "local cpu (fallback)");
        f->owned = f->fallback = l;
        f->next_slot = 0;
    }
    if (!f->fb_map[g]) {
        uint32_t n = pl->primary_slots[g];
        uint32_t *m = malloc((n ? n : 1) * sizeof *m);
        if (!m) return MB_STATUS_NOMEM;
        for (uint32_t i = 0; i < n; i++) m[i] = f->next_slot++;
        mb_status st = mb_experts_load_group(s->model, pl, g, f->fallback, m, err, err_cap);
        if (st != MB_STATUS_OK) {
            free(m);
            return st;
        }
        f->fb_map[g] = m;
        *loaded = 1;
    }
    *map = f->fb_map[g];
    return MB_STATUS_OK;
}

/* Routes lane g, which went through a lost link, to where its experts are:
 * its own link if alive, a live replica, else the in-process fallback.
 * Writes the new home's description into to. */
static mb_status mb_failover_reroute(mb_failover *f, mb_dispatch *d, uint32_t g, char *to, size_t to_cap, char *err,
                                     size_t err_cap)
{
    mb_session *s = f->s;
    const mb_placement *pl = &s->placement;
    if (!s->links[g].lost && mb_dispatch_via(d, g) != &s->links[g]) {
        mb_dispatch_route(d, g, &s->links[g], NULL);
        snprintf(to, to_cap, "%s", s->links[g].name);
        return MB_STATUS_OK;
    }
    for (uint32_t k = 0; pl->n_copies && k < pl->n_copies[g]; k++) {
        const mb_replica *r = &pl->copies[(size_t)g * pl->max_copies + k];
        if (s->links[r->link].lost) continue;
        mb_dispatch_route(d, g, &s->links[r->link], r->slot);
        snprintf(to, to_cap, "%s (replica)", s->links[r->link].name);
        return MB_STATUS_OK;
    }
    const uint32_t *map = NULL;
    int loaded = 0;
    uint64_t t0 = mb_now_ns();
    mb_status st = mb_failover_fallback(f, g, &map, &loaded, err, err_cap);
    if (st != MB_STATUS_OK) return st;
    mb_dispatch_route(d, g, f->fallback, map);
    if (loaded)
        snprintf(to, to_cap, "%s (%u experts loaded in %.1f ms)", f->fallback->name, pl->primary_slots[g],
                 (double)(mb_now_ns() - t0) / 1e6);
    else
        snprintf(to, to_cap, "%s (already loaded)", f->fallback->name);
    return MB_STATUS_OK;
}

/* Drops link (unless dropped already: how then says why it was) and sends
 * every lane that went through it where its experts are; records and tells
 * the loss. phase and layer: where it was noticed (-1: between steps). */
static mb_status mb_failover_lose(mb_failover *f, mb_dispatch *d, mb_link *link, int phase, int32_t layer,
                                  const char *what, char *how, size_t how_cap)
{
    mb_session *s = f->s;
    uint64_t t0 = mb_now_ns();
    char msg[512];
    uint32_t idx = (uint32_t)(link - s->links);
    if (!link->lost) mb_link_drop(link, how, how_cap);
    f->n_lost++;
    /* A worker this coordinator spawned is started again before the next
     * step; a remote one gets a moment to come back first. */
    f->backoff_ns[idx] = MB_FAILOVER_BACKOFF_MIN_NS;
    f->retry_ns[idx] = mb_now_ns() + (link->kind == MB_LINK_REMOTE ? MB_FAILOVER_BACKOFF_MIN_NS : 0);
    char moved[400] = "";
    size_t used = 0;
    for (uint32_t g = 0; g < s->n_links; g++) {
        if (mb_dispatch_via(d, g) != link) continue;
        char to[200], err[300];
        mb_status st = mb_failover_reroute(f, d, g, to, sizeof to, err, sizeof err);
        if (st != MB_STATUS_OK) {
            snprintf(msg, sizeof msg, "%.200s; no backend can take its experts: %.200s", what, err);
            mb_dispatch_set_error(d, msg);
            return st;
        }
        int n = g == idx ? snprintf(moved + used, sizeof moved - used, "%s%s", used ? "; " : "", to)
                         : snprintf(moved + used, sizeof moved - used, "%s%s's experts to %s", used ? "; " : "",
                                    s->links[g].name, to);
        if (n > 0) used = used + (size_t)n < sizeof moved ? used + (size_t)n : sizeof moved - 1;
    }
    uint64_t t1 = mb_now_ns();
    if (f->n_lost <= MB_FAILOVER_MAX_RECORDS)
        f->records[f->n_lost - 1] = (mb_failover_loss){.link = idx, .detected_ns = t0, .rerouted_ns = t1};
    double ms = (double)(t1 - t0) / 1e6;
    if (f->verbose && phase >= 0)
        fprintf(stderr, "moe-broker: %s %s during %s step %llu, layer %d; its experts now on %s; going on (%.1f ms)\n",
                link->name, how, mb_stats_phase_name(phase), (unsigned long long)mb_failover_steps(s), layer, moved,
                ms);
    else if (f->verbose)
        fprintf(stderr, "moe-broker: %s %s before step %llu; its experts now on %s; going on (%.1f ms)\n",
                link->name, how, (unsigned long long)mb_failover_steps(s), moved, ms);
    mb_stats_event ev = {.event = "worker_lost", .backend = idx, .detail = how, .moved_to = moved,
                         .phase = phase, .layer = layer, .recover_ms = ms};
    if (s->stats) mb_stats_record_event(s->stats, &ev);
    return MB_STATUS_OK;
}

mb_status mb_failover_on_loss(void *ctx, mb_dispatch *d, mb_link *link, const mb_moe_work *w, const char *what)
{
    mb_failover *f = ctx;
    mb_session *s = f->s;
    if (f->policy == MB_ON_WORKER_LOSS_ABORT || link->kind == MB_LINK_INPROC || link < s->links ||
        link >= s->links + s->n_links) {
        char msg[512];
        snprintf(msg, sizeof msg, "%.400s (--on-worker-loss %s)", what, mb_on_worker_loss_name(f->policy));
        mb_dispatch_set_error(d, msg);
        return MB_STATUS_PEER_DEAD;
    }
    char how[128];
    return mb_failover_lose(f, d, link, w->decode ? MB_STATS_PHASE_DECODE : MB_STATS_PHASE_PREFILL,
                            (int32_t)w->layer, what, how, sizeof how);
}

/* Gives a reconnected worker back what it held: its own experts and the
 * replicas it kept for others. */
static mb_status mb_failover_reload(mb_failover *f, uint32_t g, char *err, size_t err_cap)
{
    mb_session *s = f->s;
    const mb_placement *pl = &s->placement;
    mb_status st = mb_experts_load_group(s->model, pl, g, &s->links[g], NULL, err, err_cap);
    for (uint32_t h = 0; st == MB_STATUS_OK && pl->n_copies && h < s->n_links; h++)
        for (uint32_t k = 0; st == MB_STATUS_OK && k < pl->n_copies[h]; k++) {
            const mb_replica *r = &pl->copies[(size_t)h * pl->max_copies + k];
            if (r->link == g) st = mb_experts_load_group(s->model, pl, h, &s->links[g], r->slot, err, err_cap);
        }
    return st;
}

/* Tells and records a worker back with its experts. */
static void mb_failover_note_back(mb_failover *f, uint32_t g, const char *how, const char *detail, uint64_t t0)
{
    mb_session *s = f->s;
    f->n_rejoined++;
    double ms = (double)(mb_now_ns() - t0) / 1e6;
    if (f->verbose)
        fprintf(stderr, "moe-broker: %s %s before step %llu; its experts are back on it (%.1f ms)\n",
                s->links[g].name, how, (unsigned long long)mb_failover_steps(s), ms);
    mb_stats_event ev = {.event = "worker_rejoined", .backend = g, .detail = detail, .phase = -1, .layer = -1,
                         .recover_ms = ms};
    if (s->stats) mb_stats_record_event(s->stats, &ev);
}

/* A tcp/ipc worker that ended this coordinator's session while nothing was
 * asked of it (its --idle-timeout: a chat waiting on its user) is brought
 * back before the step, reconnected and reloaded with its lanes left in
 * place, rather than noticed mid-layer and replaced by the in-process
 * fallback. Only when that fails is it lost as in a step (with fallback;
 * with abort the step then fails naming it). */
static void mb_failover_revive_ended(mb_failover *f)
{
    mb_session *s = f->s;
    for (uint32_t g = 0; g < s->n_links; g++) {
        mb_link *l = &s->links[g];
        if (l->lost || l->kind != MB_LINK_REMOTE || mb_zmq_transport_peer_connected(&l->transport)) continue;
        uint64_t t0 = mb_now_ns();
        char how[128], err[300];
        mb_link_drop(l, how, sizeof how);
        snprintf(how, sizeof how, "ended its session between steps");
        mb_status st = mb_link_reconnect(l, MB_FAILOVER_RECONNECT_NS, err, sizeof err);
        if (st == MB_STATUS_OK) st = mb_failover_reload(f, g, err, sizeof err);
        if (st == MB_STATUS_OK) {
            mb_failover_note_back(f, g, "had ended its session; reconnected", "session ended; reconnected and reloaded",
                                  t0);
            continue;
        }
        char scratch[128];
        if (!l->lost) mb_link_drop(l, scratch, sizeof scratch); /* reconnected, but the reload failed */
        if (f->policy != MB_ON_WORKER_LOSS_ABORT)
            (void)mb_failover_lose(f, s->dispatch, l, -1, -1, err, how, sizeof how);
    }
}

void mb_failover_between_steps(mb_failover *f)
{
    if (!f) return;
    mb_failover_revive_ended(f);
    if (f->n_lost == 0) return;
    mb_session *s = f->s;
    for (uint32_t g = 0; g < s->n_links; g++) {
        mb_link *l = &s->links[g];
        if (!l->lost || l->kind == MB_LINK_INPROC || mb_now_ns() < f->retry_ns[g]) continue;
        const int remote = l->kind == MB_LINK_REMOTE;
        uint64_t t0 = mb_now_ns();
        char err[300];
        mb_status st = remote ? mb_link_reconnect(l, MB_FAILOVER_RECONNECT_NS, err, sizeof err)
                              : mb_link_respawn(l, MB_FAILOVER_RESPAWN_NS, err, sizeof err);
        if (st != MB_STATUS_OK && !remote && f->verbose)
            fprintf(stderr, "moe-broker: %s could not be started again: %s\n", l->name, err);
        if (st == MB_STATUS_OK) {
            st = mb_failover_reload(f, g, err, sizeof err);
            if (st != MB_STATUS_OK) {
                char how[128];
                mb_link_drop(l, how, sizeof how);
                if (f->verbose) fprintf(stderr, "moe-broker: %s came back but reloading failed: %s\n", l->name, err);
            }
        }
        if (st != MB_STATUS_OK) {
            f->backoff_ns[g] = f->backoff_ns[g] * 2 < MB_FAILOVER_BACKOFF_MAX_NS ? f->backoff_ns[g] * 2
                                                                                 : MB_FAILOVER_BACKOFF_MAX_NS;
            f->retry_ns[g] = mb_now_ns() + f->backoff_ns[g];
            continue;
        }
        mb_dispatch_route(s->dispatch, g, l, NULL);
        mb_failover_note_back(f, g, remote ? "rejoined" : "started again",
                              remote ? "reconnected and reloaded" : "respawned and reloaded", t0);
    }
}
