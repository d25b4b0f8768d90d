/* Expert slots of the CUDA backend in device memory. Each slot's gate, up
 * and down matrices sit packed in one piece carved from large arenas (a
 * layer reserved at once gets its slots side by side); weights travel
 * through a ring of pinned staging buffers on their own stream, so the
 * copy of one expert overlaps the host packing the next, and a request
 * waits for the uploads before it runs. Quantized matrices (Q8_0, Q4_K,
 * Q6_K, each matrix its own type) keep their quantized size; the host
 * packs their blocks into kernels/cuda/quant_layout.h's sections while
 * filling the staging buffers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends/cuda/cuda_internal.h"
#include "kernels/cuda/quant_layout.h"

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

int mb_cuda_weight_dtype_ok(mb_dtype wdtype)
{
    return mb_dtype_valid(wdtype) || mb_kcuda_quant_supported((int)wdtype);
}

/* Where an expert's matrices go in its slot: gate, up, down at off[i],
 * mat[i] bytes each (their quantized size for quantized types), and the
 * bytes the slot needs (*span) and holds as weights (*bytes). Element
 * dtypes pack the three back to back (the cuBLAS path runs gate|up as one
 * GEMM when up follows gate); quantized matrices start 256-byte aligned,
 * for the kernels' 16-byte loads. BAD_DTYPE, BAD_SHAPE (rows not whole
 * blocks) or OVERFLOW. */
static mb_status mb_cuda_expert_layout(uint32_t d_model, uint32_t d_ff, const mb_dtype wdtype[MB_PROTO_MATS],
                                       size_t off[MB_PROTO_MATS], size_t mat[MB_PROTO_MATS], size_t *span,
                                       size_t *bytes)
{
    size_t at = 0, sum = 0;
    for (int i = 0; i < MB_PROTO_MATS; i++) {
        if (!mb_cuda_weight_dtype_ok(wdtype[i])) return MB_STATUS_BAD_DTYPE;
        const uint32_t rows = i == MB_PROTO_MAT_DOWN ? d_model : d_ff, cols = i == MB_PROTO_MAT_DOWN ? d_ff : d_model;
        uint64_t rb = 0;
        mb_status st = mb_dtype_row_bytes(wdtype[i], cols, &rb);
        if (st != MB_STATUS_OK) return st;
        if (__builtin_mul_overflow((size_t)rows, rb, &mat[i])) return MB_STATUS_OVERFLOW;
        if (mb_dtype_is_quant(wdtype[i])) {
            if (at > SIZE_MAX - 255) return MB_STATUS_OVERFLOW;
            at = (at + 255) & ~(size_t)255;
        }
        off[i] = at;
        if (__builtin_add_overflow(at, mat[i], &at) || __builtin_add_overflow(sum, mat[i], &sum))
            return MB_STATUS_OVERFLOW;
    }
    *span = at;
    *bytes = sum;
    return MB_STATUS_OK;
}

mb_status mb_cuda_reserve_layer(void *state, uint32_t layer, uint32_t slot0, uint32_t n_slots, uint32_t d_model,
                                uint32_t d_ff, mb_dtype wdtype)
{
    mb_cuda_backend *be = state;
    if (!be || n_slots == 0 || slot0 >= be->max_slots || n_slots > be->max_slots - slot0) return MB_STATUS_SLOT_RANGE;
    if (d_model == 0 || d_ff == 0) return MB_STATUS_BAD_SHAPE;
    (void)layer;
    /* A quantized layer is reserved as if all three matrices had wdtype;
     * a slot that then needs more (another type for down) gets its own
     * piece at load. */
    const mb_dtype dt[MB_PROTO_MATS] = {wdtype, wdtype, wdtype};
    size_t off[MB_PROTO_MATS], mat[MB_PROTO_MATS], per = 0, all = 0, used = 0;
    mb_status st = mb_cuda_expert_layout(d_model, d_ff, dt, off, mat, &per, &used);
    if (st != MB_STATUS_OK) return st;
    if (per > SIZE_MAX - 255) return MB_STATUS_OVERFLOW;
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

/* The next staging buffer of the ring, once its previous copy is done. */
static mb_status mb_cuda_staging_take(mb_cuda_backend *be, int *out)
{
    const int b = be->up_next;
    be->up_next = (b + 1) % MB_CUDA_UPLOAD_BUFS;
    cudaError_t e = cudaEventSynchronize(be->up_ev[b]);
    if (e != cudaSuccess) return mb_cuda_fail("weight upload", e);
    *out = b;
    return MB_STATUS_OK;
}

/* Queues the first n bytes of staging buffer b to device dst. */
static mb_status mb_cuda_staging_send(mb_cuda_backend *be, int b, char *dst, size_t n)
{
    cudaError_t e = cudaMemcpyAsync(dst, be->up_buf[b], n, cudaMemcpyHostToDevice, be->upload);
    if (e == cudaSuccess) e = cudaEventRecord(be->up_ev[b], be->upload);
    if (e != cudaSuccess) return mb_cuda_fail("weight upload", e);
    be->up_bytes += n;
    be->uploads_pending = 1;
    return MB_STATUS_OK;
}

/* Queues bytes from host src to device dst through the staging ring. */
static mb_status mb_cuda_upload(mb_cuda_backend *be, char *dst, const char *src, size_t bytes)
{
    while (bytes) {
        const size_t n = bytes < MB_CUDA_UPLOAD_BYTES ? bytes : MB_CUDA_UPLOAD_BYTES;
        int b = 0;
        mb_status st = mb_cuda_staging_take(be, &b);
        if (st != MB_STATUS_OK) return st;
        memcpy(be->up_buf[b], src, n);
        if ((st = mb_cuda_staging_send(be, b, dst, n)) != MB_STATUS_OK) return st;
        dst += n;
        src += n;
        bytes -= n;
    }
    mb_cuda_progress(be, 0);
    return MB_STATUS_OK;
}

/* Queues a quantized matrix (n_blocks ggml blocks at src) to dst in the
 * kernels' layout: section by section, each packed into the staging
 * buffers a piece at a time. */
static mb_status mb_cuda_upload_quant(mb_cuda_backend *be, char *dst, const void *src, mb_dtype wdtype,
                                      size_t n_blocks)
{
    mb_kq_section sec[MB_KQ_SECTIONS_MAX];
    const int n_sec = mb_kq_sections((int)wdtype, sec);
    for (int s = 0; s < n_sec; s++) {
        const size_t per = MB_CUDA_UPLOAD_BYTES / sec[s].bytes;
        for (size_t b0 = 0; b0 < n_blocks; b0 += per) {
            const size_t nb = n_blocks - b0 < per ? n_blocks - b0 : per;
            int b = 0;
            mb_status st = mb_cuda_staging_take(be, &b);
            if (st != MB_STATUS_OK) return st;
            mb_kq_section_pack((int)wdtype, sec[s], src, b0, nb, be->up_buf[b]);
            if ((st = mb_cuda_staging_send(be, b, dst + b0 * sec[s].bytes, nb * sec[s].bytes)) != MB_STATUS_OK)
                return st;
        }
        dst += n_blocks * sec[s].bytes;
    }
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
    /* One element dtype for all three matrices, or quantized types the
     * kernels know (each its own); the wrapper admits no other mix, and
     * the caps name no other quantized type. */
    mb_status st = mb_backend_expert_dtypes_check(w->wdtype);
    if (st != MB_STATUS_OK) return st;
    st = mb_route_table_check_load(&be->table, w);
    if (st != MB_STATUS_OK) return st;
    size_t off[MB_PROTO_MATS], mat[MB_PROTO_MATS], span = 0, bytes = 0;
    st = mb_cuda_expert_layout(w->d_model, w->d_ff, w->wdtype, off, mat, &span, &bytes);
    if (st != MB_STATUS_OK) return st;
    cudaSetDevice(be->device);
    if (be->up_bytes == 0) be->up_t0_ns = mb_cuda_now_ns();
    mb_cuda_slot_mem *sm = &be->slot_mem[w->slot];
    if (sm->bytes < span) {
        /* A reload with a larger shape leaves the old piece unused: arenas
         * are only freed with the backend. */
        st = mb_cuda_arena_alloc(be, span, &sm->mem);
        if (st != MB_STATUS_OK) return st;
        sm->bytes = (span + 255) & ~(size_t)255;
    }
    const mb_route_slot *old = &be->table.slots[w->slot];
    if ((st = mb_cuda_layer_reserve(be, w->layer)) != MB_STATUS_OK) return st;
    if (old->loaded) {
        /* The old expert is overwritten in place: until the new one is
         * complete, the slot holds neither. */
        size_t o_off[MB_PROTO_MATS], o_mat[MB_PROTO_MATS], o_span = 0, old_bytes = 0;
        if (mb_cuda_expert_layout(old->d_model, old->d_ff, old->wdtype, o_off, o_mat, &o_span, &old_bytes) ==
                MB_STATUS_OK &&
            be->weight_bytes >= old_bytes)
            be->weight_bytes -= old_bytes;
        be->layer_experts[old->layer]--;
        mb_route_table_clear(&be->table, w->slot);
    }
    /* Requests in flight may read the old weights: wait for them first. */
    for (unsigned i = 0; i < MB_BACKEND_MAX_INFLIGHT; i++)
        if (be->reqs[i].used && !be->reqs[i].done) cudaStreamSynchronize(be->reqs[i].stream);
    const void *src[MB_PROTO_MATS] = {w->gate, w->up, w->down};
    for (int i = 0; i < MB_PROTO_MATS; i++) {
        const mb_dtype dt = w->wdtype[i];
        st = mb_dtype_is_quant(dt) ? mb_cuda_upload_quant(be, sm->mem + off[i], src[i], dt,
                                                          mat[i] / mb_dtype_block_bytes(dt))
                                   : mb_cuda_upload(be, sm->mem + off[i], src[i], mat[i]);
        if (st != MB_STATUS_OK) {
            be->upload_status = st;
            return st;
        }
    }
    be->h_slots[w->slot] = (mb_kcuda_expert){sm->mem + off[MB_PROTO_MAT_GATE], sm->mem + off[MB_PROTO_MAT_UP],
                                             sm->mem + off[MB_PROTO_MAT_DOWN]};
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

mb_status mb_cuda_device_layer(void *state, uint32_t layer, mb_backend_device_view *out)
{
    mb_cuda_backend *be = state;
    if (!be || !out) return MB_STATUS_INVALID_ARG;
    mb_status st = mb_cuda_load_finish(be);
    if (st != MB_STATUS_OK) return st;
    if (layer >= be->n_layers_cap || !be->layer_experts || be->layer_experts[layer] == 0) return MB_STATUS_NOT_LOADED;
    memset(out, 0, sizeof *out);
    for (uint32_t s = 0; s < be->max_slots; s++) {
        const mb_route_slot *rs = &be->table.slots[s];
        if (!rs->loaded || rs->layer != layer) continue;
        out->d_model = rs->d_model;
        out->d_ff = rs->d_ff;
        memcpy(out->wdtype, rs->wdtype, sizeof out->wdtype);
        break;
    }
    out->device = be->device;
    out->slots = be->d_slots;
    out->max_slots = be->max_slots;
    out->layer_experts = be->layer_experts[layer];
    return MB_STATUS_OK;
}
