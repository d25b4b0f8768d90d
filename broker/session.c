/* Session setup: backends, placement, expert loading, dispatcher, forward. */
#include "broker/session.h"
#include "broker/device/forward_cuda.h"
#include "broker/device/local_moe_cuda.h"
#include "broker/failover.h"
#include "broker/hotness.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MB_SESSION_HELLO_TIMEOUT_NS 20000000000LL
#define MB_SESSION_LOAD_TIMEOUT_NS 120000000000LL
#define MB_SESSION_GPU_SHM_SPIN_US 1000u /* --shm-spin's default with --device cuda */
/* How long a coordinator on a GPU polls its busy links after a reply: past
 * a layer's expert work on CPU workers (1-2 ms a layer in
 * bench_e2e_device), which that 1 ms ring spin is not. */
#define MB_SESSION_GPU_POLL_SPIN_US 20000u

static uint32_t mb_session_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (uint32_t)n : 1;
}

/* The folders holding the checkpoint's files, resolved: a spawned worker
 * reads weight files only below them (--model-root). */
typedef struct {
    char *dirs[16];
    uint32_t n;
} mb_session_roots;

static void mb_session_roots_find(const mb_model *m, mb_session_roots *r)
{
    memset(r, 0, sizeof *r);
    for (uint32_t i = 0; i < m->n_files; i++) {
        char *real = m->files[i].path ? realpath(m->files[i].path, NULL) : NULL;
        char *slash = real ? strrchr(real, '/') : NULL;
        if (slash) *(slash == real ? slash + 1 : slash) = '\0';
        int known = !slash;
        for (uint32_t j = 0; j < r->n && !known; j++) known = !strcmp(r->dirs[j], real);
        /* A file whose folder is not passed is loaded inline instead. */
        if (known || r->n == sizeof r->dirs / sizeof r->dirs[0]) free(real);
        else r->dirs[r->n++] = real;
    }
}

static void mb_session_roots_free(mb_session_roots *r)
{
    for (uint32_t i = 0; i < r->n; i++)
        free(r->dirs[i]);
    r->n = 0;
}

/* The shm spin in ns for mb_shm_options (-1: never). Unless --shm-spin was
 * given, a coordinator on a GPU spins the longest the rings allow: its host
 * thread has nothing else to do while the experts run, and a worker waits
 * only the dense part of a layer (tens of microseconds) between requests,
 * so neither side should pay a futex sleep and wake-up per layer
 * (bench/notes/coordinator-gpu.md measured the IPC share with both). */
static int64_t mb_session_shm_spin_ns(const mb_options *opt)
{
    uint32_t us = opt->shm_spin_us;
    if (!mb_options_given(opt, MB_OPTION_SHM_SPIN) && opt->cuda_device >= 0) us = MB_SESSION_GPU_SHM_SPIN_US;
    return us ? (int64_t)us * 1000 : -1;
}

/* Whether the n CPU workers this coordinator starts from specs leave it a
 * core of its own: their threads (mb_session_start_link's, a worker given
 * none taking cores / n) fewer than the host's cores. */
static int mb_session_core_to_spare(const char *const *specs, uint32_t n)
{
    const uint32_t cpus = mb_session_cpus();
    uint32_t busy = 0;
    for (uint32_t i = 0; i < n; i++) {
        mb_worker_spec ws;
        char err[256];
        if (mb_worker_spec_parse(specs[i], &ws, err, sizeof err) != MB_STATUS_OK) continue;
        if (ws.kind != MB_WORKER_KIND_LOCAL || strcmp(ws.backend, "cpu") != 0) continue;
        const uint32_t t = ws.threads ? ws.threads : cpus / n;
        busy += t ? t : 1;
    }
    return busy < cpus;
}

/* The dispatcher's poll of its busy links (mb_dispatch_config
 * poll_spin_ns): a coordinator on a GPU polls for MB_SESSION_GPU_POLL_SPIN_US
 * where its CPU workers leave it a core, else (and where --shm-spin is
 * given) as long as the rings spin: spinning longer would take a worker
 * thread's core (--shm-spin 0: not at all). MB_DISPATCH_POLL_SPIN_US (0 to
 * 1000000, for measuring) overrides (0: block on the oldest at once, the
 * CPU coordinator's way, whose cores compute). Another value is ignored,
 * with a warning. */
static int64_t mb_session_poll_spin_ns(const mb_options *opt, const char *const *specs,
                                       uint32_t n_workers)
{
    const char *e = getenv("MB_DISPATCH_POLL_SPIN_US");
    if (e && *e) {
        char *end = NULL;
        errno = 0;
        const unsigned long us = strtoul(e, &end, 10);
        if (errno == 0 && *end == '\0' && e[0] != '-' && us <= 1000000ul) return (int64_t)us * 1000;
        fprintf(stderr, "MB_DISPATCH_POLL_SPIN_US='%s' ignored (microseconds, 0 to 1000000)\n", e);
    }
    if (opt->cuda_device < 0) return 0;
    if (!mb_options_given(opt, MB_OPTION_SHM_SPIN) && mb_session_core_to_spare(specs, n_workers))
        return (int64_t)MB_SESSION_GPU_POLL_SPIN_US * 1000;
    const int64_t spin = mb_session_shm_spin_ns(opt);
    return spin > 0 ? spin : 0;
}

/* Starts link i from a --worker spec. */
static mb_status mb_session_start_link(const mb_options *opt, const char *spec_text, uint32_t n_workers, int index,
                                       uint32_t max_slots, const mb_session_roots *roots, mb_link *out, char *err,
                                       size_t err_cap)
{
    mb_worker_spec ws;
    mb_status st = mb_worker_spec_parse(spec_text, &ws, err, err_cap);
    if (st != MB_STATUS_OK) return st;
    mb_link_spec ls = {.backend = ws.backend, .device = ws.device, .threads = ws.threads,
                       .endpoint = ws.endpoint, .weight = ws.weight, .max_slots = max_slots,
                       .worker_timeout_ns = (int64_t)opt->worker_timeout_ms * 1000000,
                       .shm_spin_ns = mb_session_shm_spin_ns(opt),
                       .connect_timeout_ns = (int64_t)opt->connect_timeout_ms * 1000000,
                       .model_roots = (const char *const *)roots->dirs, .n_model_roots = roots->n,
                       .curve_server_key_file = ws.key_file[0] ? ws.key_file : NULL,
                       .curve_secret_file = opt->curve_secret};
    if (ws.kind == MB_WORKER_KIND_REMOTE) return mb_link_connect(&ls, index, MB_SESSION_HELLO_TIMEOUT_NS, out, err, err_cap);
    if (ls.threads == 0) {
        /* Share the machine's cores between the local workers. */
        uint32_t cpus = mb_session_cpus();
        ls.threads = cpus / (n_workers ? n_workers : 1);
        if (ls.threads == 0) ls.threads = 1;
    }
    mb_link_kind kind = opt->transport == MB_TRANSPORT_ZMQ ? MB_LINK_SPAWNED_ZMQ : MB_LINK_SPAWNED_SHM;
    return mb_link_spawn(&ls, kind, index, MB_SESSION_HELLO_TIMEOUT_NS, out, err, err_cap);
}

/* Sends one LOAD_EXPERT of (layer, expert) into slot of l: a file region
 * when the worker shares this host's files, the bytes otherwise. */
static mb_status mb_session_load_one(const mb_model *m, mb_link *l, uint32_t slot, uint32_t layer, uint32_t expert,
                                     void **scratch, size_t *scratch_cap, char *err, size_t err_cap)
{
    const mb_expert_tensors *x = &m->layers[layer].experts[expert];
    const mb_tensor *t[3] = {&x->gate, &x->up, &x->down};
    mb_proto_load_expert le;
    memset(&le, 0, sizeof le);
    le.layer = layer;
    le.expert_id = expert;
    le.slot = slot;
    le.d_model = m->cfg.d_model;
    le.d_ff = m->cfg.d_ff_expert;
    int same_file = t[0]->file >= 0 && t[0]->file == t[1]->file && t[1]->file == t[2]->file;
    int by_file = l->same_host && l->kind != MB_LINK_INPROC && same_file;
    for (int i = 0; i < MB_PROTO_MATS; i++)
        le.wdtype[i] = t[i]->dtype;
    if (mb_backend_expert_dtypes_check(le.wdtype) != MB_STATUS_OK) {
        snprintf(err, err_cap, "layer %u expert %u: gate %s, up %s, down %s: backends take one element "
                 "type for all three matrices, or quantized types only", layer, expert,
                 mb_dtype_name(le.wdtype[0]), mb_dtype_name(le.wdtype[1]), mb_dtype_name(le.wdtype[2]));
        return MB_STATUS_BAD_DTYPE;
    }
    for (int i = 0; i < MB_PROTO_MATS; i++) {
        uint64_t row_bytes = 0;
        if (mb_dtype_row_bytes(t[i]->dtype, t[i]->cols, &row_bytes) != MB_STATUS_OK) return MB_STATUS_BAD_SHAPE;
        le.bytes[i] = t[i]->rows * row_bytes;
        if (by_file) le.offset[i] = t[i]->file_offset;
        else le.data[i] = t[i]->data;
    }
    if (by_file) {
        le.source = MB_WEIGHTS_FILE;
        le.path = m->files[t[0]->file].path;
        le.path_len = (uint32_t)strlen(le.path);
    } else {
        le.source = MB_WEIGHTS_INLINE;
    }
    size_t bytes = 0;
    mb_status st = mb_proto_load_expert_size(&le, &bytes);
    if (st != MB_STATUS_OK) return st;
    if (bytes > *scratch_cap) {
        free(*scratch);
        *scratch = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
        *scratch_cap = *scratch ? bytes : 0;
        if (!*scratch) return MB_STATUS_NOMEM;
    }
    size_t len = 0;
    st = mb_proto_encode_load_expert(*scratch, *scratch_cap, l->next_tag++, &le, &len);
    if (st != MB_STATUS_OK) return st;
    char why[200];
    st = mb_link_call(l, *scratch, len, MB_SESSION_LOAD_TIMEOUT_NS, why, sizeof why);
    if (by_file && (st == MB_STATUS_NOT_FOUND || st == MB_STATUS_UNSUPPORTED)) {
        /* The worker does not read this checkpoint's files (no --model-root
         * covering them): send the bytes, to it from now on. */
        l->same_host = 0;
        return mb_session_load_one(m, l, slot, layer, expert, scratch, scratch_cap, err, err_cap);
    }
    if (st != MB_STATUS_OK) snprintf(err, err_cap, "loading layer %u expert %u: %s", layer, expert, why);
    return st;
}

mb_status mb_experts_load(const mb_model *m, mb_link *links, const mb_placement *pl, int progress, char *err,
                          size_t err_cap)
{
    const mb_model_config *c = &m->cfg;
    void *scratch = NULL;
    size_t cap = 0;
    mb_status st = MB_STATUS_OK;
    uint64_t total = (uint64_t)c->n_layers * c->n_experts, done = 0;
    for (uint32_t layer = 0; layer < c->n_layers && st == MB_STATUS_OK; layer++) {
        for (uint32_t e = 0; e < c->n_experts && st == MB_STATUS_OK; e++) {
            const mb_place *p = mb_placement_at(pl, layer, e);
            st = mb_session_load_one(m, &links[p->link], p->slot, layer, e, &scratch, &cap, err, err_cap);
            /* Its replicas, if --replicas placed any. */
            for (uint32_t k = 0; pl->n_copies && k < pl->n_copies[p->link] && st == MB_STATUS_OK; k++) {
                const mb_replica *r = &pl->copies[(size_t)p->link * pl->max_copies + k];
                st = mb_session_load_one(m, &links[r->link], r->slot[p->slot], layer, e, &scratch, &cap, err,
                                         err_cap);
            }
            done++;
        }
        if (progress) {
            fprintf(stderr, "\rloading experts: %llu/%llu", (unsigned long long)done, (unsigned long long)total);
            fflush(stderr);
        }
    }
    if (progress) fprintf(stderr, "\n");
    free(scratch);
    return st;
}

mb_status mb_experts_load_group(const mb_model *m, const mb_placement *pl, uint32_t group, mb_link *to,
                                const uint32_t *slot_map, char *err, size_t err_cap)
{
    void *scratch = NULL;
    size_t cap = 0;
    mb_status st = MB_STATUS_OK;
    for (uint32_t layer = 0; layer < pl->n_layers && st == MB_STATUS_OK; layer++) {
        for (uint32_t e = 0; e < pl->n_experts && st == MB_STATUS_OK; e++) {
            const mb_place *p = mb_placement_at(pl, layer, e);
            if (p->link != group) continue;
            st = mb_session_load_one(m, to, slot_map ? slot_map[p->slot] : p->slot, layer, e, &scratch, &cap, err,
                                     err_cap);
        }
    }
    free(scratch);
    return st;
}

/* Tells the statistics where every expert went: the routing counts are
 * kept per (layer, expert) with the worker each belongs to, and each
 * worker's replicas with the reason for any missing. */
static mb_status mb_session_stats_placement(mb_session *s, const mb_options *opt)
{
    const mb_placement *pl = &s->placement;
    const size_t n = (size_t)pl->n_layers * pl->n_experts;
    uint16_t *group = malloc(n * sizeof *group);
    if (!group) return MB_STATUS_NOMEM;
    for (size_t i = 0; i < n; i++) group[i] = pl->table[i].link;
    mb_status st = mb_stats_track_routing(s->stats, pl->n_layers, pl->n_experts, group);
    free(group);
    if (st != MB_STATUS_OK || pl->max_copies == 0) return st;
    char order[300];
    if (opt->hotness) snprintf(order, sizeof order, "hottest first, by --hotness %.200s", opt->hotness);
    else snprintf(order, sizeof order, "in worker order (no --hotness)");
    st = mb_stats_set_config(s->stats, "replica_order", order);
    for (uint32_t g = 0; g < pl->n_links && st == MB_STATUS_OK; g++) {
        uint32_t copies[16];
        uint32_t nc = pl->n_copies[g] < 16 ? pl->n_copies[g] : 16;
        for (uint32_t k = 0; k < nc; k++) copies[k] = pl->copies[(size_t)g * pl->max_copies + k].link;
        char detail[512];
        mb_placement_describe_replicas(pl, s->links, g, detail, sizeof detail);
        const int short_copies = pl->rank[g] != UINT32_MAX && nc < pl->max_copies;
        mb_stats_replica r = {
            .backend = g, .experts = pl->primary_slots[g],
            .rank = pl->rank[g] == UINT32_MAX ? -1 : (int32_t)pl->rank[g],
            .hotness_known = pl->heat_known, .hotness_pairs = pl->heat[g], .wanted = pl->max_copies,
            .n_copies = nc, .copies = copies, .detail = detail,
            .short_why = !short_copies ? NULL : pl->short_why[g] == MB_REPLICA_SHORT_WORKERS ? "workers" : "memory",
        };
        st = mb_stats_record_replica(s->stats, &r);
    }
    return st;
}

/* The forward pass calls the dispatcher, which exists only once the
 * experts are placed: it goes through the session. */
static mb_status session_moe(void *ctx, const mb_moe_work *w)
{
    mb_session *s = ctx;
    return mb_dispatch_moe(s->dispatch, w);
}

static mb_status open_forward(mb_session *s, const mb_options *opt, int verbosity, uint32_t chunk, char *err,
                              size_t err_cap)
{
    s->pool = mb_kcpu_pool_create((int)opt->threads, -1);
    if (!s->pool) {
        snprintf(err, err_cap, "cannot start the coordinator's threads");
        return MB_STATUS_NOMEM;
    }
    const mb_forward_place place = {.cuda_device = opt->cuda_device, .progress = verbosity >= MB_SESSION_PROGRESS};
    char msg[256] = "";
    mb_status st = mb_forward_create_on(s->model, s->max_ctx, s->pool, &place, session_moe, s, &s->fwd, msg,
                                        sizeof msg);
    if (st == MB_STATUS_OK && chunk < MB_FORWARD_CHUNK_DEFAULT) st = mb_forward_set_chunk(s->fwd, chunk);
    /* On a GPU the routed tokens reach the host in the payload dtype. */
    if (st == MB_STATUS_OK && mb_forward_cuda(s->fwd))
        st = mb_fwd_cuda_set_wire(mb_forward_cuda(s->fwd), opt->payload_dtype);
    if (st != MB_STATUS_OK) snprintf(err, err_cap, "forward pass: %s", msg[0] ? msg : mb_status_str(st));
    else if (verbosity >= MB_SESSION_INFO && opt->cuda_device >= 0)
        fprintf(stderr, "coordinator on cuda:%d (dense layers, KV cache, routing)\n", opt->cuda_device);
    return st;
}

/* With the coordinator on a GPU and every expert on its in-process CUDA
 * backend (the same device), steps compute the experts from the forward's
 * device buffers (broker/device/local_moe_cuda.h) instead of through the
 * dispatcher and its host copies. MB_CUDA_LOCAL_DIRECT: 0 turns that off,
 * "decode" keeps it to one-token steps (prefill then goes through the
 * dispatcher, whose requests may take cuBLAS); else every step. A view or
 * workspace that cannot be had leaves the dispatcher in charge, with a
 * note. */
static void session_device_local(mb_session *s, const mb_options *opt, uint32_t chunk, int verbosity)
{
    const char *env = getenv("MB_CUDA_LOCAL_DIRECT");
    if (opt->cuda_device < 0 || s->local_link < 0 || (env && !strcmp(env, "0"))) return;
    const mb_model_config *c = &s->model->cfg;
    const mb_placement *p = &s->placement;
    for (size_t i = 0; i < (size_t)c->n_layers * c->n_experts; i++)
        if (p->table[i].link != (uint16_t)s->local_link) return; /* some experts live elsewhere */
    mb_cuda_local_layer *L = calloc(c->n_layers, sizeof *L);
    uint32_t *slots = malloc((size_t)c->n_layers * c->n_experts * sizeof *slots);
    mb_status st = L && slots ? MB_STATUS_OK : MB_STATUS_NOMEM;
    char err[256] = "";
    for (uint32_t l = 0; st == MB_STATUS_OK && l < c->n_layers; l++) {
        L[l].slot_of = slots + (size_t)l * c->n_experts;
        for (uint32_t e = 0; e < c->n_experts; e++)
            slots[(size_t)l * c->n_experts + e] = p->table[(size_t)l * c->n_experts + e].slot;
        st = mb_backend_device_layer(s->links[s->local_link].backend, l, &L[l].view);
        if (st != MB_STATUS_OK) snprintf(err, sizeof err, "layer %u: %s", l, mb_status_str(st));
    }
    mb_cuda_local_moe *lm = NULL;
    if (st == MB_STATUS_OK)
        st = mb_cuda_local_moe_create(opt->cuda_device, L, c->n_layers, c->n_experts, c->top_k, c->d_model, chunk, &lm,
                                      err, sizeof err);
    const uint32_t max_n = env && !strcmp(env, "decode") ? 1 : chunk;
    if (st == MB_STATUS_OK) {
        st = mb_fwd_cuda_set_local(mb_forward_cuda(s->fwd), lm, max_n);
        if (st != MB_STATUS_OK) mb_cuda_local_moe_destroy(lm);
    }
    free(L);
    free(slots);
    if (st != MB_STATUS_OK) {
        if (verbosity >= MB_SESSION_INFO)
            fprintf(stderr, "local experts go through the dispatcher: %s\n", err[0] ? err : mb_status_str(st));
        return;
    }
    s->device_local = 1;
    if (verbosity >= MB_SESSION_INFO)
        fprintf(stderr, "local experts computed on cuda:%d from the coordinator's buffers (%s)\n", opt->cuda_device,
                max_n == 1 ? "decode steps" : "every step");
}

/* After a step: the local experts' device time per layer and routed pairs
 * into the statistics, as one call per layer on the local link. */
static void session_device_local_stats(mb_session *s, uint32_t n)
{
    struct mb_fwd_cuda *fc = mb_forward_cuda(s->fwd);
    uint64_t *ns = mb_fwd_cuda_local_layer_ns(fc), *routed = mb_fwd_cuda_routed(fc);
    if (!ns || !routed) return;
    const mb_model_config *c = &s->model->cfg;
    const mb_stats_phase ph = n > 1 ? MB_STATS_PHASE_PREFILL : MB_STATS_PHASE_DECODE;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        uint64_t pairs = 0;
        for (uint32_t e = 0; e < c->n_experts; e++) pairs += routed[(size_t)l * c->n_experts + e];
        if (!pairs) continue; /* the step went through the dispatcher */
        const mb_stats_call call = {.tokens = pairs / c->top_k, .pairs = pairs, .wait_ns = ns[l],
                                    .worker_compute_ns = ns[l]};
        mb_stats_record_call(s->stats, (uint32_t)s->local_link, l, ph, &call);
        mb_stats_add_routed(s->stats, l, routed + (size_t)l * c->n_experts);
        ns[l] = 0;
        memset(routed + (size_t)l * c->n_experts, 0, c->n_experts * sizeof *routed);
    }
}

mb_status mb_session_open(const mb_options *opt, const mb_model *model, uint32_t max_ctx, int verbosity,
                          mb_session **out, char *err, size_t err_cap)
{
    if (!opt || !model || !out || max_ctx == 0) return MB_STATUS_INVALID_ARG;
    mb_session *s = calloc(1, sizeof *s);
    if (!s) return MB_STATUS_NOMEM;
    s->model = model;
    s->local_link = -1;
    s->max_ctx = max_ctx;
    const mb_model_config *c = &model->cfg;
    static const char *const default_workers[] = {"cpu", "cpu"};
    const char *const *specs = opt->n_workers ? (const char *const *)opt->workers : default_workers;
    /* No --worker: two local CPU workers, unless every expert runs here. */
    uint32_t n_workers = opt->n_workers ? (uint32_t)opt->n_workers : opt->local_experts >= c->n_experts ? 0 : 2;
    int want_local = opt->local_experts > 0;
    s->links = calloc(n_workers + 1, sizeof *s->links);
    if (!s->links) {
        free(s);
        return MB_STATUS_NOMEM;
    }
    uint32_t max_slots = c->n_layers * c->n_experts;
    uint32_t chunk = opt->chunk ? opt->chunk : MB_FORWARD_CHUNK_DEFAULT;
    if (chunk > max_ctx) chunk = max_ctx;
    /* A bad --hotness file is refused before anything starts. */
    mb_hotness hot = {0};
    mb_status st = opt->hotness ? mb_hotness_load(opt->hotness, c->n_layers, c->n_experts, &hot, err, err_cap)
                                : MB_STATUS_OK;
    if (st != MB_STATUS_OK) goto fail;
    /* The forward pass first: on a GPU its dense weights and KV cache take
     * device memory that local experts placed there must leave free. */
    st = open_forward(s, opt, verbosity, chunk, err, err_cap);
    if (st != MB_STATUS_OK) goto fail;
    mb_session_roots roots;
    mb_session_roots_find(model, &roots);
    for (uint32_t i = 0; i < n_workers; i++) {
        if (verbosity >= MB_SESSION_INFO) fprintf(stderr, "starting backend %u: %s\n", i, specs[i]);
        st = mb_session_start_link(opt, specs[i], n_workers, (int)i, max_slots, &roots, &s->links[i], err, err_cap);
        if (st != MB_STATUS_OK) break;
        s->n_links++;
    }
    mb_session_roots_free(&roots);
    if (st != MB_STATUS_OK) goto fail;
    if (want_local) {
        /* With the coordinator on a GPU its local experts live there too. */
        mb_link_spec ls = {.backend = opt->cuda_device >= 0 ? "cuda" : "cpu", .device = opt->cuda_device,
                           .threads = opt->threads, .weight = 1, .max_slots = max_slots};
        st = mb_link_open_inproc(&ls, (int)n_workers, &s->links[n_workers], err, err_cap);
        if (st != MB_STATUS_OK) goto fail;
        s->local_link = (int)n_workers;
        s->n_links++;
    }
    /* Refuse before loading anything when a backend cannot hold these
     * weights or take this payload. */
    st = mb_placement_check_caps(s->links, s->n_links, mb_model_expert_dtypes(model), opt->payload_dtype, err,
                                 err_cap);
    if (st != MB_STATUS_OK) goto fail;
    st = mb_placement_plan(c, s->links, s->n_links, s->local_link, opt->local_experts, opt->local_budget_bytes,
                           &s->placement, err, err_cap);
    if (st != MB_STATUS_OK) goto fail;
    st = mb_placement_add_replicas(&s->placement, c, s->links, s->local_link, opt->replicas, hot.counts);
    if (st != MB_STATUS_OK) goto fail;
    if (verbosity >= MB_SESSION_INFO) mb_placement_print(&s->placement, s->links, stderr);
    if (verbosity >= MB_SESSION_INFO && opt->hotness && s->placement.max_copies == 0)
        fprintf(stderr, "--hotness %s: read, but without --replicas 2 or more it changes nothing\n", opt->hotness);
    uint64_t t_load = mb_now_ns();
    st = mb_experts_load(model, s->links, &s->placement, verbosity >= MB_SESSION_PROGRESS, err, err_cap);
    if (st == MB_STATUS_OK && verbosity >= MB_SESSION_INFO)
        fprintf(stderr, "experts loaded in %.2f s\n", (double)(mb_now_ns() - t_load) / 1e9);
    if (st != MB_STATUS_OK) goto fail;

    const char *names[65];
    for (uint32_t i = 0; i < s->n_links && i < 65; i++) names[i] = s->links[i].name;
    st = mb_stats_create(s->n_links, names, c->n_layers, opt->stats_per_layer, &s->stats);
    if (st == MB_STATUS_OK) st = mb_session_stats_placement(s, opt);
    if (st != MB_STATUS_OK) goto fail;
    mb_stats_set_config(s->stats, "ipc_mode", mb_ipc_mode_name(opt->ipc_mode));
    mb_stats_set_config(s->stats, "payload_dtype", mb_dtype_name(opt->payload_dtype));
    mb_stats_set_config_int(s->stats, "batch_capacity", opt->batch_capacity);
    mb_stats_set_config_int(s->stats, "stream_slice", opt->stream_slice);
    if (opt->step_timing) {
        st = mb_stats_open_step_timing(s->stats, opt->step_timing);
        if (st != MB_STATUS_OK) {
            snprintf(err, err_cap, "cannot open --step-timing file %s", opt->step_timing);
            goto fail;
        }
    }
    st = mb_failover_create(s, opt->on_worker_loss, verbosity >= MB_SESSION_INFO, &s->failover);
    if (st != MB_STATUS_OK) goto fail;
    mb_stats_set_config(s->stats, "on_worker_loss", mb_on_worker_loss_name(opt->on_worker_loss));
    mb_stats_set_config_int(s->stats, "replicas", opt->replicas);
    mb_stats_set_config_int(s->stats, "worker_timeout_ms", opt->worker_timeout_ms);
    /* A coordinator on a GPU has its thread to spare while the experts run:
     * it polls every busy link instead of sleeping on one. */
    const int64_t poll_spin_ns = mb_session_poll_spin_ns(opt, specs, n_workers);
    mb_dispatch_config dc = {
        .links = s->links,
        .n_links = s->n_links,
        .placement = &s->placement,
        .mode = opt->ipc_mode,
        .batch_capacity = opt->batch_capacity,
        .stream_slice = opt->stream_slice,
        .payload = opt->payload_dtype,
        .d_model = c->d_model,
        .top_k = c->top_k,
        .max_tokens = chunk,
        .stats = s->stats,
        .poll_spin_ns = poll_spin_ns,
        .on_loss = mb_failover_on_loss,
        .loss_ctx = s->failover,
    };
    st = mb_dispatch_create(&dc, &s->dispatch);
    if (st != MB_STATUS_OK) {
        snprintf(err, err_cap, "dispatcher: %s", mb_status_str(st));
        goto fail;
    }
    session_device_local(s, opt, chunk, verbosity);
    mb_hotness_free(&hot);
    *out = s;
    return MB_STATUS_OK;
fail:
    mb_hotness_free(&hot);
    mb_session_close(s);
    return st;
}

void mb_session_close(mb_session *s)
{
    if (!s) return;
    mb_forward_destroy(s->fwd);
    mb_kcpu_pool_destroy(s->pool);
    mb_dispatch_destroy(s->dispatch);
    mb_failover_destroy(s->failover);
    mb_stats_destroy(s->stats);
    mb_placement_free(&s->placement);
    for (uint32_t i = 0; i < s->n_links; i++) mb_link_close(&s->links[i]);
    free(s->links);
    free(s);
}

mb_status mb_session_step(mb_session *s, const int32_t *ids, uint32_t n, float *logits, float *last_logits,
                          char *err, size_t err_cap)
{
    mb_failover_between_steps(s->failover);
    uint64_t t0 = mb_now_ns();
    mb_status st = mb_forward_step(s->fwd, ids, n, logits, last_logits);
    uint64_t t1 = mb_now_ns();
    uint64_t dispatch_ns = 0, wait_ns = 0, critical_ns = 0;
    mb_dispatch_take_times(s->dispatch, &dispatch_ns, &wait_ns, &critical_ns);
    const uint64_t device_ns = mb_forward_take_device_ns(s->fwd);
    if (st != MB_STATUS_OK) {
        const char *why = mb_dispatch_error(s->dispatch);
        if (!why[0]) why = mb_forward_error(s->fwd);
        snprintf(err, err_cap, "%s", why[0] ? why : mb_status_str(st));
        return st;
    }
    if (s->device_local) session_device_local_stats(s, n);
    if (device_ns) mb_stats_record_device(s->stats, n > 1 ? MB_STATS_PHASE_PREFILL : MB_STATS_PHASE_DECODE, device_ns);
    mb_stats_record_step(s->stats, n > 1 ? MB_STATS_PHASE_PREFILL : MB_STATS_PHASE_DECODE, n,
                         t1 - t0, dispatch_ns, wait_ns, critical_ns);
    return MB_STATUS_OK;
}
