/* Wrappers around the backend function table: argument checks, optional
 * members' defaults, the registry of backends built into this binary, and
 * the bridge between the two execution models (a synchronous backend seen
 * through submit/poll/fetch, an asynchronous one seen through run). The
 * wrapper tracks every outstanding tag, so duplicate and unknown tags are
 * refused here rather than in each backend. */
#include "backends/backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One outstanding request as the wrapper sees it. */
typedef struct {
    int used;
    uint64_t tag;
    uint64_t seq;         /* submission order (sync emulation reports in it) */
    size_t out_bytes;     /* result size, so fetch can check its argument */
    int consumed;         /* CONSUMED delivered to the caller */
    int done;             /* DONE with OK delivered: fetch may take it */
    uint64_t compute_ns;  /* sync emulation: the run's time */
    void *result;         /* sync emulation: [out_cap] result, reused */
    size_t result_cap;
} mb_backend_req;

/* Events an asynchronous backend reported for other tags while
 * mb_backend_run waited for its own; each outstanding tag yields at most
 * two (CONSUMED, DONE), so this never overflows. */
#define MB_BACKEND_EVQ (2u * MB_BACKEND_MAX_INFLIGHT)

struct mb_backend {
    const mb_backend_ops *ops;
    void *state;
    uint32_t max_slots;
    uint32_t weight_dtype_mask;  /* caps at open: what load_expert may be given */
    int async;                   /* submit/poll/fetch are the table's own */
    mb_backend_req reqs[MB_BACKEND_MAX_INFLIGHT];
    uint32_t n_outstanding;
    uint64_t next_seq;
    mb_backend_event evq[MB_BACKEND_EVQ];
    uint32_t evq_head, evq_len;
};

extern const mb_backend_ops mb_backend_cpu_ops;
#ifdef MB_HAVE_CUDA
extern const mb_backend_ops mb_backend_cuda_ops;
#endif
#ifdef MB_HAVE_VULKAN
extern const mb_backend_ops mb_backend_vulkan_ops;
#endif

static const mb_backend_ops *const mb_backend_registry[] = {
    &mb_backend_cpu_ops,
#ifdef MB_HAVE_CUDA
    &mb_backend_cuda_ops,
#endif
#ifdef MB_HAVE_VULKAN
    &mb_backend_vulkan_ops,
#endif
};

#define MB_BACKEND_N_REGISTERED (sizeof mb_backend_registry / sizeof mb_backend_registry[0])

const mb_backend_ops *mb_backend_find(const char *name)
{
    if (!name) return NULL;
    for (size_t i = 0; i < MB_BACKEND_N_REGISTERED; i++)
        if (strcmp(mb_backend_registry[i]->name, name) == 0) return mb_backend_registry[i];
    return NULL;
}

size_t mb_backend_count(void)
{
    return MB_BACKEND_N_REGISTERED;
}

const mb_backend_ops *mb_backend_at(size_t i)
{
    return i < MB_BACKEND_N_REGISTERED ? mb_backend_registry[i] : NULL;
}

/* ---- lifecycle and capabilities ---- */

mb_status mb_backend_open(const mb_backend_ops *ops, const mb_backend_config *cfg, mb_backend **out)
{
    if (!ops || !cfg || !out) return MB_STATUS_INVALID_ARG;
    if (ops->abi_version != MB_BACKEND_ABI_VERSION) return MB_STATUS_BAD_VERSION;
    if (!ops->name || !ops->open || !ops->close || !ops->caps || !ops->load_expert) return MB_STATUS_INVALID_ARG;
    const int n_async = (ops->submit != NULL) + (ops->poll != NULL) + (ops->fetch != NULL);
    if (n_async != 0 && n_async != 3) return MB_STATUS_INVALID_ARG; /* all three or none */
    if (!ops->run && n_async == 0) return MB_STATUS_INVALID_ARG;
    mb_backend *b = calloc(1, sizeof *b);
    if (!b) return MB_STATUS_NOMEM;
    b->ops = ops;
    b->async = n_async == 3;
    mb_status st = ops->open(cfg, &b->state);
    if (st != MB_STATUS_OK) {
        free(b);
        return st;
    }
    mb_backend_caps caps;
    memset(&caps, 0, sizeof caps);
    st = ops->caps(b->state, &caps);
    if (st != MB_STATUS_OK) {
        ops->close(b->state);
        free(b);
        return st;
    }
    b->max_slots = caps.max_slots;
    b->weight_dtype_mask = caps.weight_dtype_mask;
    *out = b;
    return MB_STATUS_OK;
}

void mb_backend_close(mb_backend *b)
{
    if (!b) return;
    /* The backend abandons whatever is still outstanding. */
    b->ops->close(b->state);
    for (uint32_t i = 0; i < MB_BACKEND_MAX_INFLIGHT; i++)
        free(b->reqs[i].result);
    free(b);
}

mb_status mb_backend_caps_get(mb_backend *b, mb_backend_caps *caps)
{
    if (!b || !caps) return MB_STATUS_INVALID_ARG;
    memset(caps, 0, sizeof *caps);
    mb_status st = b->ops->caps(b->state, caps);
    if (st != MB_STATUS_OK) return st;
    if (caps->max_inflight == 0) caps->max_inflight = 1;
    if (caps->max_inflight > MB_BACKEND_MAX_INFLIGHT) caps->max_inflight = MB_BACKEND_MAX_INFLIGHT;
    return MB_STATUS_OK;
}

void mb_backend_gpu_caps(mb_backend_caps *caps, const char *name, const char *device,
                         uint64_t mem_total, uint64_t mem_free, uint32_t max_slots,
                         uint32_t max_inflight, uint64_t max_request_bytes)
{
    memset(caps, 0, sizeof *caps);
    snprintf(caps->name, sizeof caps->name, "%s", name);
    snprintf(caps->device, sizeof caps->device, "%s", device);
    const uint64_t gib = (uint64_t)1 << 30, floor = mem_total / 4 < gib ? mem_total / 4 : gib;
    const uint64_t reserve = mem_total / 25 > floor ? mem_total / 25 : floor;
    caps->mem_total_bytes = mem_total;
    caps->mem_free_bytes = mem_free > reserve ? mem_free - reserve : 0;
    caps->payload_dtype_mask = MB_DTYPE_MASK_ALL;
    /* Q4_0 and Q5_K have no GPU kernels: placement refuses them by name. */
    caps->weight_dtype_mask = MB_DTYPE_MASK_ALL | MB_DTYPE_MASK(MB_DTYPE_Q8_0) |
                              MB_DTYPE_MASK(MB_DTYPE_Q4_K) | MB_DTYPE_MASK(MB_DTYPE_Q6_K);
    caps->preferred_batch = 4096;
    caps->n_threads = 1;
    caps->max_slots = max_slots;
    caps->max_inflight = max_inflight;
    caps->max_request_bytes = max_request_bytes;
}

/* Appends the names of the dtypes in mask ("f32, bf16") to buf. */
static void mb_backend_mask_names(uint32_t mask, char *buf, size_t cap)
{
    size_t at = 0;
    buf[0] = '\0';
    for (int d = 0; d < MB_DTYPE_COUNT_ && at < cap; d++) {
        if (!(mask & MB_DTYPE_MASK(d))) continue;
        int n = snprintf(buf + at, cap - at, "%s%s", at ? ", " : "", mb_dtype_name((mb_dtype)d));
        if (n < 0) break;
        at += (size_t)n;
    }
    if (!buf[0]) snprintf(buf, cap, "none");
}

mb_status mb_backend_caps_check(const mb_backend_caps *caps, uint32_t weight_mask, mb_dtype payload, char *why,
                                size_t why_cap)
{
    if (!caps || !weight_mask || (weight_mask & ~MB_DTYPE_MASK_WEIGHTS) || !mb_dtype_valid(payload))
        return MB_STATUS_INVALID_ARG;
    const char *what = NULL;
    uint32_t lacking = weight_mask & ~caps->weight_dtype_mask, mask = 0;
    if (lacking) {
        what = "weights";
        mask = caps->weight_dtype_mask;
    } else if (!(caps->payload_dtype_mask & MB_DTYPE_MASK(payload))) {
        what = "activations (payload dtype)";
        lacking = MB_DTYPE_MASK(payload);
        mask = caps->payload_dtype_mask;
    }
    if (!what) return MB_STATUS_OK;
    if (why && why_cap) {
        char have[64], lack[64];
        mb_backend_mask_names(mask, have, sizeof have);
        mb_backend_mask_names(lacking, lack, sizeof lack);
        snprintf(why, why_cap, "backend %s (%s) has no %s %s (it takes %s)", caps->name[0] ? caps->name : "?",
                 caps->device[0] ? caps->device : "unknown device", lack, what, have);
    }
    return MB_STATUS_BAD_DTYPE;
}

mb_status mb_backend_expert_dtypes_check(const mb_dtype *wdtype)
{
    if (!wdtype) return MB_STATUS_INVALID_ARG;
    int n_quant = 0;
    for (int i = 0; i < MB_PROTO_MATS; i++) {
        if (!mb_dtype_weight_valid(wdtype[i])) return MB_STATUS_BAD_DTYPE;
        n_quant += mb_dtype_is_quant(wdtype[i]);
    }
    /* Element dtypes run through one tiled GEMM per expert, so all three
     * match; quantized rows are each dotted on their own. */
    if (n_quant == MB_PROTO_MATS) return MB_STATUS_OK;
    return n_quant == 0 && wdtype[0] == wdtype[1] && wdtype[1] == wdtype[2] ? MB_STATUS_OK : MB_STATUS_BAD_DTYPE;
}

/* ---- weights and host memory ---- */

mb_status mb_backend_load_expert(mb_backend *b, const mb_expert_weights *w)
{
    if (!b || !w || !w->gate || !w->up || !w->down) return MB_STATUS_INVALID_ARG;
    if (w->d_model == 0 || w->d_ff == 0) return MB_STATUS_BAD_SHAPE;
    /* A backend is only handed weight dtypes its caps name (the CUDA and
     * Vulkan backends name Q8_0, Q4_K and Q6_K), in a mix it can
     * compute, and quantized rows in whole blocks (gate/up
     * rows hold d_model elements, down d_ff). */
    mb_status st = mb_backend_expert_dtypes_check(w->wdtype);
    if (st != MB_STATUS_OK) return st;
    for (int i = 0; i < MB_PROTO_MATS; i++) {
        if (!(b->weight_dtype_mask & MB_DTYPE_MASK(w->wdtype[i]))) return MB_STATUS_BAD_DTYPE;
        const uint32_t cols = i == MB_PROTO_MAT_DOWN ? w->d_ff : w->d_model;
        if (cols % mb_dtype_block_elems(w->wdtype[i])) return MB_STATUS_BAD_SHAPE;
    }
    if (w->slot >= b->max_slots) return MB_STATUS_SLOT_RANGE;
    return b->ops->load_expert(b->state, w);
}

mb_status mb_backend_load_finish(mb_backend *b)
{
    if (!b) return MB_STATUS_INVALID_ARG;
    return b->ops->load_finish ? b->ops->load_finish(b->state) : MB_STATUS_OK;
}

mb_status mb_backend_reserve_layer(mb_backend *b, uint32_t layer, uint32_t slot0, uint32_t n_slots, uint32_t d_model,
                                   uint32_t d_ff, mb_dtype wdtype)
{
    if (!b) return MB_STATUS_INVALID_ARG;
    if (n_slots == 0 || d_model == 0 || d_ff == 0) return MB_STATUS_BAD_SHAPE;
    if (!mb_dtype_weight_valid(wdtype) || !(b->weight_dtype_mask & MB_DTYPE_MASK(wdtype)))
        return MB_STATUS_BAD_DTYPE;
    if (slot0 >= b->max_slots || n_slots > b->max_slots - slot0) return MB_STATUS_SLOT_RANGE;
    if (!b->ops->reserve_layer) return MB_STATUS_OK;
    return b->ops->reserve_layer(b->state, layer, slot0, n_slots, d_model, d_ff, wdtype);
}

mb_status mb_backend_register_host(mb_backend *b, void *ptr, size_t bytes)
{
    if (!b || !ptr || bytes == 0) return MB_STATUS_INVALID_ARG;
    /* Callers treat any failure as "copies go through staging". */
    return b->ops->register_host ? b->ops->register_host(b->state, ptr, bytes) : MB_STATUS_UNSUPPORTED;
}

void mb_backend_unregister_host(mb_backend *b, void *ptr)
{
    if (!b || !ptr || !b->ops->unregister_host) return;
    b->ops->unregister_host(b->state, ptr);
}

mb_status mb_backend_device_layer(mb_backend *b, uint32_t layer, mb_backend_device_view *out)
{
    if (!b || !out) return MB_STATUS_INVALID_ARG;
    return b->ops->device_layer ? b->ops->device_layer(b->state, layer, out) : MB_STATUS_UNSUPPORTED;
}

/* ---- requests ---- */

int mb_backend_is_async(const mb_backend *b)
{
    return b ? b->async : 0;
}

uint32_t mb_backend_outstanding(const mb_backend *b)
{
    return b ? b->n_outstanding : 0;
}

static mb_status mb_backend_check_req(const mb_backend *b, const mb_proto_expert_req *req, const void *out,
                                      int need_out)
{
    if (!req || (need_out && !out && req->n_tokens)) return MB_STATUS_INVALID_ARG;
    if (!mb_dtype_valid(req->dtype)) return MB_STATUS_BAD_DTYPE;
    if (req->n_pairs && !req->pairs) return MB_STATUS_INVALID_ARG;
    for (uint32_t i = 0; i < req->n_pairs; i++)
        if (req->pairs[i].slot >= b->max_slots) return MB_STATUS_SLOT_RANGE;
    return MB_STATUS_OK;
}

/* Bytes of req's result; OVERFLOW when they do not fit size_t. */
static mb_status mb_backend_out_bytes(const mb_proto_expert_req *req, size_t *bytes)
{
    size_t n;
    if (__builtin_mul_overflow((size_t)req->n_tokens, (size_t)req->d_model, &n) ||
        __builtin_mul_overflow(n, mb_dtype_size(req->dtype), &n))
        return MB_STATUS_OVERFLOW;
    *bytes = n;
    return MB_STATUS_OK;
}

static mb_backend_req *mb_backend_req_find(mb_backend *b, uint64_t tag)
{
    for (uint32_t i = 0; i < MB_BACKEND_MAX_INFLIGHT; i++)
        if (b->reqs[i].used && b->reqs[i].tag == tag) return &b->reqs[i];
    return NULL;
}

static mb_backend_req *mb_backend_req_free_entry(mb_backend *b)
{
    for (uint32_t i = 0; i < MB_BACKEND_MAX_INFLIGHT; i++)
        if (!b->reqs[i].used) return &b->reqs[i];
    return NULL;
}

/* Forgets r's tag; the sync emulation's result buffer stays for reuse. */
static void mb_backend_req_release(mb_backend *b, mb_backend_req *r)
{
    r->used = 0;
    r->consumed = r->done = 0;
    b->n_outstanding--;
}

/* Records what an event tells about its tag, as the caller receives it. */
static void mb_backend_note_event(mb_backend *b, const mb_backend_event *ev)
{
    mb_backend_req *r = mb_backend_req_find(b, ev->tag);
    if (!r) return;
    r->consumed = 1;
    if (ev->kind != MB_BACKEND_EVENT_DONE) return;
    if (ev->status == MB_STATUS_OK) r->done = 1;
    else mb_backend_req_release(b, r); /* a failed request is forgotten at once */
}

/* Starts req under tag on an asynchronous backend and records the tag. */
static mb_status mb_backend_submit_async(mb_backend *b, uint64_t tag, const mb_proto_expert_req *req,
                                         size_t out_bytes)
{
    mb_backend_req *r = mb_backend_req_free_entry(b);
    if (!r) return MB_STATUS_AGAIN;
    mb_status st = b->ops->submit(b->state, tag, req);
    if (st != MB_STATUS_OK) return st;
    r->used = 1;
    r->tag = tag;
    r->seq = b->next_seq++;
    r->out_bytes = out_bytes;
    r->consumed = r->done = 0;
    r->compute_ns = 0;
    b->n_outstanding++;
    return MB_STATUS_OK;
}

mb_status mb_backend_run(mb_backend *b, const mb_proto_expert_req *req, void *out, uint64_t *compute_ns)
{
    if (!b) return MB_STATUS_INVALID_ARG;
    mb_status st = mb_backend_check_req(b, req, out, 1);
    if (st != MB_STATUS_OK) return st;
    uint64_t ns = 0;
    if (b->ops->run) {
        st = b->ops->run(b->state, req, out, &ns);
        if (compute_ns) *compute_ns = ns;
        return st;
    }
    size_t out_bytes = 0;
    st = mb_backend_out_bytes(req, &out_bytes);
    if (st != MB_STATUS_OK) return st;
    /* A tag nobody else holds: count down from the top of the range. */
    uint64_t tag = UINT64_MAX;
    while (mb_backend_req_find(b, tag))
        tag--;
    st = mb_backend_submit_async(b, tag, req, out_bytes);
    if (st != MB_STATUS_OK) return st;
    for (;;) {
        mb_backend_event ev;
        st = b->ops->poll(b->state, -1, &ev);
        if (st == MB_STATUS_TIMEOUT) continue;
        if (st != MB_STATUS_OK) {
            /* The backend cannot report on this request any more; it still
             * owns it until close, but the tag is no longer ours to track. */
            mb_backend_req_release(b, mb_backend_req_find(b, tag));
            return st;
        }
        if (ev.tag != tag) {
            /* Another caller-submitted request's event: keep it for
             * mb_backend_poll. A full queue means a backend reported more
             * than two events for one tag. */
            if (b->evq_len < MB_BACKEND_EVQ) {
                b->evq[(b->evq_head + b->evq_len) % MB_BACKEND_EVQ] = ev;
                b->evq_len++;
            }
            continue;
        }
        if (ev.kind != MB_BACKEND_EVENT_DONE) continue;
        mb_backend_req *r = mb_backend_req_find(b, tag);
        if (ev.status != MB_STATUS_OK) {
            mb_backend_req_release(b, r);
            return ev.status;
        }
        st = b->ops->fetch(b->state, tag, out);
        mb_backend_req_release(b, r);
        if (st == MB_STATUS_OK && compute_ns) *compute_ns = ev.compute_ns;
        return st;
    }
}

mb_status mb_backend_submit(mb_backend *b, uint64_t tag, const mb_proto_expert_req *req)
{
    if (!b) return MB_STATUS_INVALID_ARG;
    mb_status st = mb_backend_check_req(b, req, NULL, 0);
    if (st != MB_STATUS_OK) return st;
    if (mb_backend_req_find(b, tag)) return MB_STATUS_INVALID_ARG; /* tag still outstanding */
    size_t out_bytes = 0;
    st = mb_backend_out_bytes(req, &out_bytes);
    if (st != MB_STATUS_OK) return st;
    if (b->async) return mb_backend_submit_async(b, tag, req, out_bytes);

    /* Synchronous backend: run now into the entry's own buffer. */
    mb_backend_req *r = mb_backend_req_free_entry(b);
    if (!r) return MB_STATUS_AGAIN;
    if (out_bytes > r->result_cap) {
        size_t cap = (out_bytes + 63) & ~(size_t)63;
        if (cap < out_bytes) return MB_STATUS_OVERFLOW;
        void *p = aligned_alloc(64, cap);
        if (!p) return MB_STATUS_NOMEM;
        free(r->result);
        r->result = p;
        r->result_cap = cap;
    }
    uint64_t ns = 0;
    st = b->ops->run(b->state, req, r->result, &ns);
    if (st != MB_STATUS_OK) return st;
    r->used = 1;
    r->tag = tag;
    r->seq = b->next_seq++;
    r->out_bytes = out_bytes;
    r->consumed = r->done = 0;
    r->compute_ns = ns;
    b->n_outstanding++;
    return MB_STATUS_OK;
}

mb_status mb_backend_poll(mb_backend *b, int64_t timeout_ns, mb_backend_event *ev)
{
    if (!b || !ev) return MB_STATUS_INVALID_ARG;
    if (b->async) {
        if (b->evq_len) {
            *ev = b->evq[b->evq_head];
            b->evq_head = (b->evq_head + 1) % MB_BACKEND_EVQ;
            b->evq_len--;
        } else {
            mb_backend_event e;
            mb_status st = b->ops->poll(b->state, timeout_ns, &e);
            if (st != MB_STATUS_OK) return st;
            /* An event for a tag nobody submitted is a backend bug. */
            if (!mb_backend_req_find(b, e.tag)) return MB_STATUS_BACKEND;
            *ev = e;
        }
        mb_backend_note_event(b, ev);
        return MB_STATUS_OK;
    }
    /* Synchronous backend: everything finished inside submit. Report the
     * oldest request with news: first CONSUMED, then DONE. */
    mb_backend_req *oldest = NULL;
    for (uint32_t i = 0; i < MB_BACKEND_MAX_INFLIGHT; i++) {
        mb_backend_req *r = &b->reqs[i];
        if (!r->used || r->done) continue;
        if (!oldest || r->seq < oldest->seq) oldest = r;
    }
    if (!oldest) return MB_STATUS_TIMEOUT; /* nothing will ever come */
    memset(ev, 0, sizeof *ev);
    ev->tag = oldest->tag;
    ev->status = MB_STATUS_OK;
    if (!oldest->consumed) {
        ev->kind = MB_BACKEND_EVENT_CONSUMED;
        oldest->consumed = 1;
    } else {
        ev->kind = MB_BACKEND_EVENT_DONE;
        ev->compute_ns = oldest->compute_ns;
        oldest->done = 1;
    }
    return MB_STATUS_OK;
}

mb_status mb_backend_fetch(mb_backend *b, uint64_t tag, void *out)
{
    if (!b) return MB_STATUS_INVALID_ARG;
    mb_backend_req *r = mb_backend_req_find(b, tag);
    if (!r || !r->done) return MB_STATUS_INVALID_ARG; /* unknown, or DONE not reported yet */
    if (!out && r->out_bytes) return MB_STATUS_INVALID_ARG;
    mb_status st = MB_STATUS_OK;
    if (b->async) st = b->ops->fetch(b->state, tag, out);
    else if (r->out_bytes) memcpy(out, r->result, r->out_bytes);
    mb_backend_req_release(b, r);
    return st;
}

mb_status mb_backend_spec_parse(const char *spec, char *name, size_t name_cap, int *device)
{
    if (!spec || !name || name_cap == 0 || !device) return MB_STATUS_INVALID_ARG;
    const char *colon = strchr(spec, ':');
    size_t n = colon ? (size_t)(colon - spec) : strlen(spec);
    if (n == 0 || n >= name_cap) return MB_STATUS_CONFIG;
    memcpy(name, spec, n);
    name[n] = '\0';
    *device = -1;
    if (colon) {
        char *end = NULL;
        long v = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end != '\0' || v < 0 || v > 4095) return MB_STATUS_CONFIG;
        *device = (int)v;
    }
    return MB_STATUS_OK;
}
