/* Expert slots of the CUDA backend in device memory. Each slot's gate, up
 * and down matrices sit packed in one piece carved from large arenas (a
 * layer reserved at once gets its slots side by side); weights travel
 * through a ring of pinned staging buffers on their own stream, so the
 * copy of one expert overlaps the host packing the next, and a request
 * waits for the uploads before it runs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends/cuda/cuda_internal.h"

void mb_cuda_weights_free(mb_cuda_backend *be)
{
    mb_cuda_arena *a = be->arenas;
    while (a) {
        mb_cuda_arena *next = a->next;
        cudaFree(a->base);
        free(a);
        a = next;
    }
    be->arenas = NULL;
}

/* Carves bytes (256-aligned) from an arena, adding one when none has room. */
static mb_status mb_cuda_arena_alloc(mb_cuda_backend *be, size_t bytes, char **out)
{
    bytes = (bytes + 255) & ~(size_t)255;
    for (mb_cuda_arena *a = be->arenas; a; a = a->next)
        if (a->bytes - a->used >= bytes) {
            *out = a->base + a->used;
            a->used += bytes;
            return MB_STATUS_OK;
        }
    mb_cuda_arena *a = calloc(1, sizeof *a);
    if (!a) return MB_STATUS_NOMEM;
    a->bytes = bytes > MB_CUDA_ARENA_BYTES ? bytes : MB_CUDA_ARENA_BYTES;
    cudaError_t e = cudaMalloc((void **)&a->base, a->bytes);
    if (e != cudaSuccess && a->bytes > bytes) { /* a smaller arena may still fit */
        cudaGetLastError();
        a->bytes = bytes;
        e = cudaMalloc((void **)&a->base, a->bytes);
    }
    if (e != cudaSuccess) {
        free(a);
        size_t fr = 0, tot = 0;
        cudaGetLastError();
        cudaMemGetInfo(&fr, &tot);
        fprintf(stderr, "cuda backend: cannot allocate %.1f MiB of device memory for expert weights "
                        "(%.1f MiB free of %.1f MiB)\n", bytes / 1048576.0, fr / 1048576.0, tot / 1048576.0);
        return MB_STATUS_NOMEM;
    }
    a->used = bytes;
    a->next = be->arenas;
    be->arenas = a;
    *out = a->base;
    return MB_STATUS_OK;
}

static mb_status mb_cuda_expert_bytes(uint32_t d_model, uint32_t d_ff, mb_dtype wdtype, size_t *out)
{
    size_t m = 0;
    if (__builtin_mul_overflow((size_t)d_model, (size_t)d_ff, &m) || __builtin_mul_overflow(m, (size_t)3, &m) ||
        __builtin_mul_overflow(m, mb_dtype_size(wdtype), &m))
        return MB_STATUS_OVERFLOW;
    *out = m;
    return MB_STATUS_OK;
}

mb_status mb_cuda_reserve_layer(void *state, uint32_t layer, uint32_t slot0, uint32_t n_slots, uint32_t d_model,
                                uint32_t d_ff, mb_dtype wdtype)
{
    mb_cuda_backend *be = state;
    if (!be || n_slots == 0 || slot0 >= be->max_slots || n_slots > be->max_slots - slot0) return MB_STATUS_SLOT_RANGE;
    if (d_model == 0 || d_ff == 0) return MB_STATUS_BAD_SHAPE;
    if (!mb_dtype_valid(wdtype)) return MB_STATUS_BAD_DTYPE;
    (void)layer;
    size_t per = 0, all = 0;
    mb_status st = mb_cuda_expert_bytes(d_model, d_ff, wdtype, &per);
    if (st != MB_STATUS_OK) return st;
    per = (per + 255) & ~(size_t)255;
    if (__builtin_mul_overflow(per, (size_t)n_slots, &all)) return MB_STATUS_OVERFLOW;
    cudaSetDevice(be->device);
    char *mem = NULL;
    st = mb_cuda_arena_alloc(be, all, &mem);
    if (st != MB_STATUS_OK) return st;
    /* Slots that already hold memory keep it (an arena piece is freed only
     * with the backend); the rest take their share of the new piece. */
    for (uint32_t i = 0; i < n_slots; i++) {
        if (be->slot_mem[slot0 + i].bytes >= per) continue;
        be->slot_mem[slot0 + i].mem = mem + (size_t)i * per;
        be->slot_mem[slot0 + i].bytes = per;
    }
    return MB_STATUS_OK;
}

/* Prints upload progress on a terminal, at most four times a second. */
static void mb_cuda_progress(mb_cuda_backend *be, int final)
{
    if (!be->progress || !isatty(STDERR_FILENO) || be->up_bytes == 0) return;
    const uint64_t now = mb_cuda_now_ns();
    if (!final && now - be->up_last_print_ns < 250000000ull) return;
    be->up_last_print_ns = now;
    const double s = (now - be->up_t0_ns) / 1e9;
    fprintf(stderr, "\rcuda:%d: uploaded %.0f MiB of expert weights (%.1f GB/s)%s", be->device,
            be->up_bytes / 1048576.0, s > 0 ? be->up_bytes / s / 1e9 : 0.0, final ? "\n" : "");
    fflush(stderr);
}

/* Queues bytes from host src to device dst through the staging ring. */
static mb_status mb_cuda_upload(mb_cuda_backend *be, char *dst, const char *src, size_t bytes)
{
    while (bytes) {
        const int b = be->up_next;
        be->up_next = (b + 1) % MB_CUDA_UPLOAD_BUFS;
        const size_t n = bytes < MB_CUDA_UPLOAD_BYTES ? bytes : MB_CUDA_UPLOAD_BYTES;
        /* The buffer's previous copy must be done before it is refilled. */
        cudaError_t e = cudaEventSynchronize(be->up_ev[b]);
        if (e != cudaSuccess) return mb_cuda_fail("weight upload", e);
        memcpy(be->up_buf[b], src, n);
        e = cudaMemcpyAsync(dst, be->up_buf[b], n, cudaMemcpyHostToDevice, be->upload);
        if (e == cudaSuccess) e = cudaEventRecord(be->up_ev[b], be->upload);
        if (e != cudaSuccess) return mb_cuda_fail("weight upload", e);
        dst += n;
        src += n;
        bytes -= n;
        be->up_bytes += n;
    }
    be->uploads_pending = 1;
    mb_cuda_progress(be, 0);
    return MB_STATUS_OK;
}

/* Makes room in the per-layer slot counts for layer (they bound the
 * kernels' grids, so they must be exact). */
static mb_status mb_cuda_layer_reserve(mb_cuda_backend *be, uint32_t layer)
{
    if (layer < be->n_layers_cap) return MB_STATUS_OK;
    uint32_t cap = be->n_layers_cap ? be->n_layers_cap : 64;
    while (cap <= layer) {
        if (cap > UINT32_MAX / 2) return MB_STATUS_OVERFLOW;
        cap *= 2;
    }
    uint32_t *n = realloc(be->layer_experts, (size_t)cap * sizeof *n);
    if (!n) return MB_STATUS_NOMEM;
    memset(n + be->n_layers_cap, 0, (cap - be->n_layers_cap) * sizeof *n);
    be->layer_experts = n;
    be->n_layers_cap = cap;
    return MB_STATUS_OK;
}

mb_status mb_cuda_load_expert(void *state, const mb_expert_weights *w)
{
    mb_cuda_backend *be = state;
    if (!be || !w) return MB_STATUS_INVALID_ARG;
    /* No quantized kernels yet: the caps name element dtypes only, and the
     * wrapper hands those over as one dtype for all three matrices. */
    const mb_dtype wdtype = w->wdtype[MB_PROTO_MAT_GATE];
    if (!mb_dtype_valid(wdtype)) return MB_STATUS_BAD_DTYPE;
    mb_status st = mb_route_table_check_load(&be->table, w);
    if (st != MB_STATUS_OK) return st;
    size_t bytes = 0;
    st = mb_cuda_expert_bytes(w->d_model, w->d_ff, wdtype, &bytes);
    if (st != MB_STATUS_OK) return st;
    cudaSetDevice(be->device);
    if (be->up_bytes == 0) be->up_t0_ns = mb_cuda_now_ns();
    mb_cuda_slot_mem *sm = &be->slot_mem[w->slot];
    if (sm->bytes < bytes) {
        /* A reload with a larger shape leaves the old piece unused: arenas
         * are only freed with the backend. */
        st = mb_cuda_arena_alloc(be, bytes, &sm->mem);
        if (st != MB_STATUS_OK) return st;
        sm->bytes = (bytes + 255) & ~(size_t)255;
    }
    const size_t mat = bytes / 3;
    const mb_route_slot *old = &be->table.slots[w->slot];
    if ((st = mb_cuda_layer_reserve(be, w->layer)) != MB_STATUS_OK) return st;
    if (old->loaded) {
        /* The old expert is overwritten in place: until the new one is
         * complete, the slot holds neither. */
        size_t old_bytes = 0;
        const mb_dtype old_dt = old->wdtype[MB_PROTO_MAT_GATE];
        if (mb_cuda_expert_bytes(old->d_model, old->d_ff, old_dt, &old_bytes) == MB_STATUS_OK &&
            be->weight_bytes >= old_bytes)
            be->weight_bytes -= old_bytes;
        be->layer_experts[old->layer]--;
        mb_route_table_clear(&be->table, w->slot);
    }
    /* Requests in flight may read the old weights: wait for them first. */
    for (unsigned i = 0; i < MB_BACKEND_MAX_INFLIGHT; i++)
        if (be->reqs[i].used && !be->reqs[i].done) cudaStreamSynchronize(be->reqs[i].stream);
    if ((st = mb_cuda_upload(be, sm->mem, w->gate, mat)) != MB_STATUS_OK ||
        (st = mb_cuda_upload(be, sm->mem + mat, w->up, mat)) != MB_STATUS_OK ||
        (st = mb_cuda_upload(be, sm->mem + 2 * mat, w->down, mat)) != MB_STATUS_OK) {
        be->upload_status = st;
        return st;
    }
    be->h_slots[w->slot] = (mb_kcuda_expert){sm->mem, sm->mem + mat, sm->mem + 2 * mat};
    cudaError_t e = cudaMemcpyAsync(&be->d_slots[w->slot], &be->h_slots[w->slot], sizeof(mb_kcuda_expert),
                                    cudaMemcpyHostToDevice, be->upload);
    if (e != cudaSuccess) return be->upload_status = mb_cuda_fail("slot table upload", e);
    be->weight_bytes += bytes;
    be->layer_experts[w->layer]++;
    mb_route_table_set(&be->table, w);
    return MB_STATUS_OK;
}

mb_status mb_cuda_load_finish(void *state)
{
    mb_cuda_backend *be = state;
    if (!be) return MB_STATUS_INVALID_ARG;
    if (be->uploads_pending) {
        cudaSetDevice(be->device);
        cudaError_t e = cudaStreamSynchronize(be->upload);
        be->uploads_pending = 0;
        if (e != cudaSuccess && be->upload_status == MB_STATUS_OK) be->upload_status = mb_cuda_fail("weight upload", e);
        mb_cuda_progress(be, 1);
        be->up_bytes = 0;
    }
    mb_status st = be->upload_status;
    be->upload_status = MB_STATUS_OK;
    return st;
}
