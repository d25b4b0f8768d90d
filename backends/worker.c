/* The worker's message handlers. Requests are decoded in place in the
 * transport's receive buffer and replies encoded in place in its send buffer,
 * so an expert request on a synchronous backend costs one read of the
 * activations and one write of the sums. The serving loop, which pipelines
 * asynchronous backends, is in worker_serve.c. */
#include "backends/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backends/worker_internal.h"
#include "protocol/message.h"

uint64_t mb_worker_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

mb_status mb_worker_reply_empty(mb_worker *w, mb_proto_opcode op, uint64_t tag, mb_status status)
{
    void *buf = NULL;
    mb_status st = mb_transport_send_reserve(w->cfg->transport, MB_PROTO_HEADER_BYTES, -1, &buf);
    if (st != MB_STATUS_OK) return st;
    size_t bytes = 0;
    st = mb_proto_encode_empty(buf, MB_PROTO_HEADER_BYTES, op, tag, status, &bytes);
    if (st != MB_STATUS_OK) return st;
    return mb_transport_send_commit(w->cfg->transport, bytes);
}

static mb_status mb_worker_on_hello(mb_worker *w, const void *msg, size_t len, uint64_t tag)
{
    uint32_t version = 0;
    mb_status st = mb_proto_decode_hello(msg, len, &version);
    if (st != MB_STATUS_OK) return mb_worker_reply_empty(w, MB_OP_STATUS, tag, st);
    mb_backend_caps caps;
    st = mb_backend_caps_get(w->cfg->backend, &caps);
    if (st != MB_STATUS_OK) return mb_worker_reply_empty(w, MB_OP_STATUS, tag, st);
    w->caps = caps;
    mb_proto_hello_reply r;
    memset(&r, 0, sizeof r);
    r.version = MB_PROTO_VERSION;
    r.payload_dtype_mask = caps.payload_dtype_mask;
    r.weight_dtype_mask = caps.weight_dtype_mask;
    r.preferred_batch = caps.preferred_batch;
    r.n_threads = caps.n_threads;
    r.max_slots = caps.max_slots;
    r.mem_total_bytes = caps.mem_total_bytes;
    r.mem_free_bytes = caps.mem_free_bytes;
    /* What this session may still load: the coordinator places experts and
     * replicas by this figure, so it must not promise past --max-memory. */
    if (w->cfg->max_memory_bytes) {
        uint64_t room = w->cfg->max_memory_bytes > w->loaded_bytes ? w->cfg->max_memory_bytes - w->loaded_bytes : 0;
        if (room < r.mem_free_bytes) r.mem_free_bytes = room;
    }
    r.max_message_bytes = mb_transport_max_message_bytes(w->cfg->transport);
    memcpy(r.backend, caps.name, sizeof r.backend);
    memcpy(r.device, caps.device, sizeof r.device);
    r.backend[sizeof r.backend - 1] = '\0';
    r.device[sizeof r.device - 1] = '\0';
    void *buf = NULL;
    size_t cap = 1024, bytes = 0;
    st = mb_transport_send_reserve(w->cfg->transport, cap, -1, &buf);
    if (st != MB_STATUS_OK) return st;
    st = mb_proto_encode_hello_reply(buf, cap, tag, &r, &bytes);
    if (st != MB_STATUS_OK) {
        /* Cannot happen with a 1 KiB reservation; answer with the error. */
        mb_proto_encode_empty(buf, cap, MB_OP_STATUS, tag, st, &bytes);
    }
    return mb_transport_send_commit(w->cfg->transport, bytes);
}

mb_status mb_worker_root_resolve(const char *dir, char **out)
{
    if (!dir || !out) return MB_STATUS_INVALID_ARG;
    char *real = realpath(dir, NULL);
    if (!real) return MB_STATUS_NOT_FOUND;
    struct stat sb;
    if (stat(real, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        free(real);
        return MB_STATUS_INVALID_ARG;
    }
    *out = real;
    return MB_STATUS_OK;
}

uint64_t mb_worker_mem_available_bytes(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kib = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) break;
    fclose(f);
    return (uint64_t)kib * 1024;
}

/* 1 when real (a realpath) lies below one of the configured roots. */
static int mb_worker_path_inside(const mb_worker_config *cfg, const char *real)
{
    for (unsigned i = 0; i < cfg->n_model_roots; i++) {
        const char *root = cfg->model_roots[i];
        size_t n = strlen(root);
        if (n > 0 && root[n - 1] == '/') n--; /* "/" itself */
        if (strncmp(real, root, n) == 0 && real[n] == '/') return 1;
    }
    return 0;
}

/* Maps a file below a model root read-only once and returns the mapping;
 * later loads from the same file reuse it. The peer names the path: every
 * way it can be refused is one answer (NOT_FOUND), so the worker is no
 * oracle for which files exist outside its roots. */
static mb_status mb_worker_map_file(mb_worker *w, const char *path, mb_worker_file **out)
{
    if (w->cfg->n_model_roots == 0) return MB_STATUS_UNSUPPORTED;
    char *real = realpath(path, NULL);
    if (!real) return MB_STATUS_NOT_FOUND;
    mb_status st = MB_STATUS_NOT_FOUND;
    int fd = -1;
    if (!mb_worker_path_inside(w->cfg, real)) goto done;
    for (unsigned i = 0; i < w->n_files; i++) {
        if (strcmp(w->files[i].path, real) == 0) {
            *out = &w->files[i];
            st = MB_STATUS_OK;
            goto done;
        }
    }
    if (w->n_files == MB_WORKER_MAX_FILES) {
        st = MB_STATUS_FULL;
        goto done;
    }
    /* realpath resolved every link already; O_NOFOLLOW refuses one swapped
     * in since, O_NONBLOCK keeps a FIFO from blocking the open. */
    fd = open(real, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) goto done;
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size <= 0) goto done;
    void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        st = MB_STATUS_IO;
        goto done;
    }
    mb_worker_file *f = &w->files[w->n_files++];
    f->path = real;
    real = NULL; /* the table owns it */
    f->map = map;
    f->bytes = (uint64_t)sb.st_size;
    /* Lets a GPU backend copy straight from the mapping; refusal only
     * means its own staging is used. */
    f->registered = mb_backend_register_host(w->cfg->backend, map, (size_t)sb.st_size) == MB_STATUS_OK;
    *out = f;
    st = MB_STATUS_OK;
done:
    if (fd >= 0) close(fd);
    free(real);
    return st;
}

/* Checks a load of bytes into slot against the session's memory cap; on OK
 * *after is the session's total once the load succeeds. */
static mb_status mb_worker_reserve_memory(mb_worker *w, uint32_t slot, uint64_t bytes, uint64_t *after)
{
    if (!w->slot_bytes) {
        w->slot_bytes = calloc(w->limits.max_slots ? w->limits.max_slots : 1, sizeof *w->slot_bytes);
        if (!w->slot_bytes) return MB_STATUS_NOMEM;
    }
    /* The decoder checked slot < max_slots. A reload replaces the slot's
     * previous weights. */
    uint64_t total = w->loaded_bytes - w->slot_bytes[slot];
    if (__builtin_add_overflow(total, bytes, &total)) return MB_STATUS_NOMEM;
    if (w->cfg->max_memory_bytes && total > w->cfg->max_memory_bytes) return MB_STATUS_NOMEM;
    *after = total;
    return MB_STATUS_OK;
}

static mb_status mb_worker_load(mb_worker *w, const void *msg, size_t len)
{
    mb_proto_load_expert m;
    mb_status st = mb_proto_decode_load_expert(msg, len, &w->limits, &m);
    if (st != MB_STATUS_OK) return st;
    const void *data[3] = {m.data[0], m.data[1], m.data[2]};
    uint64_t bytes = 0, after = 0;
    for (int i = 0; i < 3; i++)
        if (__builtin_add_overflow(bytes, m.bytes[i], &bytes)) return MB_STATUS_OVERFLOW;
    st = mb_worker_reserve_memory(w, m.slot, bytes, &after);
    if (st != MB_STATUS_OK) return st;
    if (m.source == MB_WEIGHTS_FILE) {
        char path[MB_PROTO_PATH_BYTES];
        memcpy(path, m.path, m.path_len);
        path[m.path_len] = '\0';
        mb_worker_file *f = NULL;
        st = mb_worker_map_file(w, path, &f);
        if (st != MB_STATUS_OK) return st;
        for (int i = 0; i < 3; i++) {
            uint64_t end;
            if (__builtin_add_overflow(m.offset[i], m.bytes[i], &end) || end > f->bytes)
                return MB_STATUS_BAD_LENGTH;
            data[i] = f->map + m.offset[i];
        }
    }
    mb_expert_weights ew = {
        .layer = m.layer, .expert_id = m.expert_id, .slot = m.slot, .d_model = m.d_model,
        .d_ff = m.d_ff, .gate = data[0], .up = data[1], .down = data[2],
    };
    memcpy(ew.wdtype, m.wdtype, sizeof ew.wdtype);
    st = mb_backend_load_expert(w->cfg->backend, &ew);
    /* Inline weights sit in the receive buffer, released after this
     * returns: the copy must be complete first. A file mapping stays, so a
     * backend may finish that copy later. */
    if (st == MB_STATUS_OK && m.source == MB_WEIGHTS_INLINE) st = mb_backend_load_finish(w->cfg->backend);
    if (st == MB_STATUS_OK) {
        w->slot_bytes[m.slot] = bytes;
        w->loaded_bytes = after;
    }
    return st;
}

/* The pair arrays come out of the (shared, peer-writable) message, so what
 * the backend reads cannot change under it. */
mb_status mb_worker_snapshot_pairs(mb_worker *w, mb_proto_expert_req *req)
{
    if (req->n_tokens > w->counts_cap) {
        uint16_t *c = realloc(w->counts, (size_t)req->n_tokens * sizeof *c);
        if (!c) return MB_STATUS_NOMEM;
        w->counts = c;
        w->counts_cap = req->n_tokens;
    }
    if (req->n_pairs > w->pairs_cap) {
        mb_proto_pair *p = realloc(w->pairs, (size_t)req->n_pairs * sizeof *p);
        if (!p) return MB_STATUS_NOMEM;
        w->pairs = p;
        w->pairs_cap = req->n_pairs;
    }
    memcpy(w->counts, req->pair_counts, (size_t)req->n_tokens * sizeof *w->counts);
    /* A request may carry no pairs before any did (w->pairs still NULL). */
    if (req->n_pairs) memcpy(w->pairs, req->pairs, (size_t)req->n_pairs * sizeof *w->pairs);
    /* Slots of the copies are checked by the backend wrapper. */
    uint64_t sum = 0;
    for (uint32_t t = 0; t < req->n_tokens; t++) sum += w->counts[t];
    if (sum != req->n_pairs) return MB_STATUS_PAIR_COUNT;
    req->pair_counts = w->counts;
    req->pairs = w->pairs;
    return MB_STATUS_OK;
}

static mb_status mb_worker_on_expert_req(mb_worker *w, const void *msg, size_t len, uint64_t tag)
{
    uint64_t t0 = mb_worker_now_ns();
    mb_proto_expert_req req;
    mb_status st = mb_proto_decode_expert_req(msg, len, &w->limits, &req);
    if (st == MB_STATUS_OK) st = mb_worker_snapshot_pairs(w, &req);
    if (st != MB_STATUS_OK) return mb_worker_reply_empty(w, MB_OP_STATUS, tag, st);
    size_t bytes = 0;
    st = mb_proto_expert_reply_size(req.n_tokens, req.d_model, req.dtype, &bytes);
    if (st != MB_STATUS_OK) return mb_worker_reply_empty(w, MB_OP_STATUS, tag, st);
    void *buf = NULL;
    st = mb_transport_send_reserve(w->cfg->transport, bytes, -1, &buf);
    if (st == MB_STATUS_FULL) return mb_worker_reply_empty(w, MB_OP_STATUS, tag, st);
    if (st != MB_STATUS_OK) return st;
    void *out = NULL;
    size_t enc_bytes = 0;
    st = mb_proto_encode_expert_reply(buf, bytes, tag, req.n_tokens, req.d_model, req.dtype, &out, &enc_bytes);
    uint64_t t1 = mb_worker_now_ns();
    uint64_t compute_ns = 0;
    if (st == MB_STATUS_OK) st = mb_backend_run(w->cfg->backend, &req, out, &compute_ns);
    if (st != MB_STATUS_OK) {
        /* The reservation is at least a header long: reuse it for the error. */
        mb_proto_encode_empty(buf, bytes, MB_OP_STATUS, tag, st, &enc_bytes);
        return mb_transport_send_commit(w->cfg->transport, enc_bytes);
    }
    mb_proto_timings tm = {.decode_ns = t1 - t0, .compute_ns = compute_ns, .encode_ns = 0};
    mb_proto_expert_reply_set_timings(buf, &tm);
    return mb_transport_send_commit(w->cfg->transport, enc_bytes);
}

mb_status mb_worker_handle(mb_worker *w, const void *msg, size_t len)
{
    mb_proto_header h;
    mb_status st = mb_proto_decode_header(msg, len, &h);
    if (st != MB_STATUS_OK) {
        /* Echo the tag when at least the tag field arrived, so the sender can
         * match the error to its request. */
        uint64_t tag = 0;
        if (len >= 16) memcpy(&tag, (const unsigned char *)msg + 8, sizeof tag);
        return mb_worker_reply_empty(w, MB_OP_STATUS, tag, st);
    }
    switch (h.opcode) {
    case MB_OP_HELLO:
        return mb_worker_on_hello(w, msg, len, h.tag);
    case MB_OP_LOAD_EXPERT:
        return mb_worker_reply_empty(w, MB_OP_STATUS, h.tag, mb_worker_load(w, msg, len));
    case MB_OP_EXPERT_REQ:
        return mb_worker_on_expert_req(w, msg, len, h.tag);
    case MB_OP_PING:
        return mb_worker_reply_empty(w, MB_OP_PONG, h.tag, MB_STATUS_OK);
    case MB_OP_SHUTDOWN:
        st = mb_worker_reply_empty(w, MB_OP_STATUS, h.tag, MB_STATUS_OK);
        return st == MB_STATUS_OK ? MB_STATUS_CLOSED : st;
    default:
        return mb_worker_reply_empty(w, MB_OP_STATUS, h.tag, MB_STATUS_PROTOCOL);
    }
}

mb_status mb_worker_create(const mb_worker_config *cfg, mb_worker **out)
{
    if (!cfg || !cfg->backend || !cfg->transport || !out) return MB_STATUS_INVALID_ARG;
    mb_worker *w = calloc(1, sizeof *w);
    if (!w) return MB_STATUS_NOMEM;
    w->cfg = cfg;
    mb_status st = mb_backend_caps_get(cfg->backend, &w->caps);
    if (st != MB_STATUS_OK) {
        free(w);
        return st;
    }
    w->limits.max_slots = w->caps.max_slots;
    /* Requests arrive and replies leave in the shared segment: a backend
     * that can map it for its device copies them in place. Declining is
     * not an error. The segment outlives the worker (the caller destroys
     * the transport after it). */
    void *base = NULL;
    size_t bytes = 0;
    if (mb_transport_shared_memory(cfg->transport, &base, &bytes) == MB_STATUS_OK &&
        mb_backend_register_host(cfg->backend, base, bytes) == MB_STATUS_OK)
        w->shared_base = base;
    *out = w;
    return MB_STATUS_OK;
}

void mb_worker_destroy(mb_worker *w)
{
    if (!w) return;
    free(w->counts);
    free(w->pairs);
    free(w->slot_bytes);
    /* A backend may still be copying from a mapping (see load_expert). */
    if (w->n_files) (void)mb_backend_load_finish(w->cfg->backend);
    for (unsigned i = 0; i < w->n_files; i++) {
        if (w->files[i].registered) mb_backend_unregister_host(w->cfg->backend, (void *)w->files[i].map);
        munmap((void *)w->files[i].map, w->files[i].bytes);
        free(w->files[i].path);
    }
    /* Waits for requests still copying from or into it (abandoned ones). */
    if (w->shared_base) mb_backend_unregister_host(w->cfg->backend, w->shared_base);
    free(w);
}
