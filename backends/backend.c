/* Wrappers around the backend function table: argument checks, optional
 * members' defaults, and the registry of backends built into this binary. */
#include "backends/backend.h"

#include <stdlib.h>
#include <string.h>

struct mb_backend {
    const mb_backend_ops *ops;
    void *state;
    uint32_t max_slots;
    /* Synchronous fallback for backends without submit/wait. */
    mb_status pending_status;
    uint64_t pending_compute_ns;
    int pending;
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

const mb_backend_ops *mb_backend_find(const char *name)
{
    if (!name) return NULL;
    for (size_t i = 0; i < sizeof mb_backend_registry / sizeof mb_backend_registry[0]; i++)
        if (strcmp(mb_backend_registry[i]->name, name) == 0) return mb_backend_registry[i];
    return NULL;
}

mb_status mb_backend_open(const mb_backend_ops *ops, const mb_backend_config *cfg, mb_backend **out)
{
    if (!ops || !cfg || !out) return MB_STATUS_INVALID_ARG;
    if (ops->abi_version != MB_BACKEND_ABI_VERSION) return MB_STATUS_BAD_VERSION;
    if (!ops->open || !ops->close || !ops->caps || !ops->load_expert || !ops->run)
        return MB_STATUS_INVALID_ARG;
    if ((ops->submit == NULL) != (ops->wait == NULL)) return MB_STATUS_INVALID_ARG;
    mb_backend *b = calloc(1, sizeof *b);
    if (!b) return MB_STATUS_NOMEM;
    b->ops = ops;
    mb_status st = ops->open(cfg, &b->state);
    if (st != MB_STATUS_OK) {
        free(b);
        return st;
    }
    mb_backend_caps caps;
    st = ops->caps(b->state, &caps);
    if (st != MB_STATUS_OK) {
        ops->close(b->state);
        free(b);
        return st;
    }
    b->max_slots = caps.max_slots;
    *out = b;
    return MB_STATUS_OK;
}

void mb_backend_close(mb_backend *b)
{
    if (!b) return;
    b->ops->close(b->state);
    free(b);
}

mb_status mb_backend_caps_get(mb_backend *b, mb_backend_caps *caps)
{
    if (!b || !caps) return MB_STATUS_INVALID_ARG;
    memset(caps, 0, sizeof *caps);
    return b->ops->caps(b->state, caps);
}

mb_status mb_backend_load_expert(mb_backend *b, const mb_expert_weights *w)
{
    if (!b || !w || !w->gate || !w->up || !w->down) return MB_STATUS_INVALID_ARG;
    if (w->d_model == 0 || w->d_ff == 0) return MB_STATUS_BAD_SHAPE;
    if (!mb_dtype_valid(w->wdtype)) return MB_STATUS_BAD_DTYPE;
    if (w->slot >= b->max_slots) return MB_STATUS_SLOT_RANGE;
    return b->ops->load_expert(b->state, w);
}

static mb_status mb_backend_check_req(const mb_backend *b, const mb_proto_expert_req *req, const void *out)
{
    if (!req || (!out && req->n_tokens)) return MB_STATUS_INVALID_ARG;
    if (!mb_dtype_valid(req->dtype)) return MB_STATUS_BAD_DTYPE;
    for (uint32_t i = 0; i < req->n_pairs; i++)
        if (req->pairs[i].slot >= b->max_slots) return MB_STATUS_SLOT_RANGE;
    return MB_STATUS_OK;
}

mb_status mb_backend_run(mb_backend *b, const mb_proto_expert_req *req, void *out, uint64_t *compute_ns)
{
    if (!b) return MB_STATUS_INVALID_ARG;
    mb_status st = mb_backend_check_req(b, req, out);
    if (st != MB_STATUS_OK) return st;
    uint64_t ns = 0;
    st = b->ops->run(b->state, req, out, &ns);
    if (compute_ns) *compute_ns = ns;
    return st;
}

mb_status mb_backend_submit(mb_backend *b, const mb_proto_expert_req *req, void *out)
{
    if (!b) return MB_STATUS_INVALID_ARG;
    if (b->pending) return MB_STATUS_AGAIN;
    mb_status st = mb_backend_check_req(b, req, out);
    if (st != MB_STATUS_OK) return st;
    if (b->ops->submit) {
        st = b->ops->submit(b->state, req, out);
        if (st == MB_STATUS_OK) b->pending = 1;
        return st;
    }
    b->pending_status = b->ops->run(b->state, req, out, &b->pending_compute_ns);
    b->pending = 1;
    return MB_STATUS_OK;
}

mb_status mb_backend_wait(mb_backend *b, int64_t timeout_ns, uint64_t *compute_ns)
{
    if (!b) return MB_STATUS_INVALID_ARG;
    if (!b->pending) return MB_STATUS_INVALID_ARG;
    uint64_t ns = 0;
    mb_status st;
    if (b->ops->wait) {
        st = b->ops->wait(b->state, timeout_ns, &ns);
        if (st == MB_STATUS_TIMEOUT) return st;
    } else {
        st = b->pending_status;
        ns = b->pending_compute_ns;
    }
    b->pending = 0;
    if (compute_ns) *compute_ns = ns;
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
