/* The one backend interface: a table of functions that CPU, CUDA and Vulkan
 * backends implement, whether they run in a worker process or inside the
 * coordinator. Callers use the mb_backend_* wrappers, which check arguments
 * and supply the optional members' defaults; nobody calls a table member
 * directly. A backend instance is used by one thread at a time.
 *
 * Expert work is asynchronous and tagged: submit starts a request under a
 * caller-chosen tag and returns at once; poll reports, per tag, first that
 * the request's inputs have been consumed (the caller may then reuse or
 * release the memory holding the activations and pairs) and later that it
 * is done; fetch copies a done request's result out. Several requests may be
 * outstanding (caps.max_inflight) and may complete in any order. A backend
 * may implement either the synchronous run or the asynchronous trio; the
 * wrappers build the other from it. */
#ifndef MB_BACKENDS_BACKEND_H
#define MB_BACKENDS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "protocol/dtype.h"
#include "protocol/message.h"
#include "protocol/status.h"

#define MB_BACKEND_ABI_VERSION 2u

/* Most requests any backend may hold at once (the wrappers' tag table). */
#define MB_BACKEND_MAX_INFLIGHT 8u

/* How a CPU backend places expert weights in memory. */
typedef enum {
    MB_NUMA_DEFAULT = 0,    /* first touch by the loading thread */
    MB_NUMA_BIND = 1,       /* bound to the device's NUMA node, threads pinned there */
    MB_NUMA_INTERLEAVE = 2, /* interleaved over all nodes */
} mb_numa_policy;

/* Options only the CPU backend reads (config.options when opening "cpu"). */
typedef struct {
    int n_threads;       /* threads to use; 0 = all the process may use */
    mb_numa_policy numa; /* weight placement */
    uint32_t idle_spin_us; /* how long an idle thread spins before it sleeps;
                              0 = the pool's default (MB_KCPU_POOL_SPIN_US_DEFAULT) */
} mb_backend_cpu_options;

/* Options only GPU backends read (config.options when opening "cuda" or
 * "vulkan"); NULL gives the defaults in brackets. */
typedef struct {
    uint64_t staging_bytes;   /* largest activations (and results) of one
                                 request, in pinned staging [256 MiB] */
    uint32_t max_inflight;    /* requests held at once, 1..MB_BACKEND_MAX_INFLIGHT [2] */
    int progress;             /* print weight-upload progress on a terminal [1] */
} mb_backend_gpu_options;

typedef struct {
    int device;          /* CPU: NUMA node (-1 = any); GPU: device index (-1 = 0) */
    uint32_t max_slots;  /* expert slots to reserve room for in the table; 0 = default */
    const void *options; /* backend-specific block (above) or NULL for defaults; read
                            during open only */
} mb_backend_config;

/* What a backend reports about itself; travels in HELLO_REPLY, and placement
 * checks it (mb_backend_caps_check) before loading anything. */
typedef struct {
    char name[MB_PROTO_NAME_BYTES];   /* "cpu", "cuda", "vulkan" */
    char device[MB_PROTO_NAME_BYTES]; /* human-readable device description */
    uint64_t mem_total_bytes;         /* memory for expert weights */
    uint64_t mem_free_bytes;
    uint32_t payload_dtype_mask;      /* MB_DTYPE_MASK bits for activations */
    uint32_t weight_dtype_mask;       /* MB_DTYPE_MASK bits for weights */
    uint32_t preferred_batch;         /* tokens per call it runs best at */
    uint32_t n_threads;
    uint32_t max_slots;
    /* Local only (not on the wire): */
    uint32_t max_inflight;            /* requests it holds at once (>= 1) */
    uint64_t max_request_bytes;       /* largest activations or results of one
                                         request, 0 = no limit */
} mb_backend_caps;

/* One expert's weights, host memory, valid only during load_expert (the
 * backend copies what it keeps, though it may finish the copy later: the
 * memory stays valid until the next load_expert, load_finish or close).
 * Shapes: gate [d_ff][d_model], up [d_ff][d_model], down [d_model][d_ff],
 * row-major, each in its own dtype wdtype[MB_PROTO_MAT_*]. The dtypes are
 * one element dtype for all three, or quantized dtypes that may differ
 * (Q4_K_M files keep some down_proj in Q6_K beside Q4_K gate/up); the
 * wrapper refuses other mixes (BAD_DTYPE). */
typedef struct {
    uint32_t layer;
    uint32_t expert_id;
    uint32_t slot;
    uint32_t d_model;
    uint32_t d_ff;
    mb_dtype wdtype[MB_PROTO_MATS];
    const void *gate;
    const void *up;
    const void *down;
} mb_expert_weights;

/* What poll reports. */
typedef enum {
    MB_BACKEND_EVENT_CONSUMED = 1, /* the request's inputs were read: the
                                      caller may release their memory */
    MB_BACKEND_EVENT_DONE = 2,     /* finished; status says how. A DONE
                                      implies CONSUMED if that was not
                                      reported yet. */
} mb_backend_event_kind;

typedef struct {
    mb_backend_event_kind kind;
    uint64_t tag;
    mb_status status;     /* DONE: OK, or why the request failed */
    uint64_t compute_ns;  /* DONE: device time spent on it */
} mb_backend_event;

/* What mb_backend_ops.device_layer describes: everything the CUDA expert
 * kernels (kernels/cuda/moe.h) need besides the request itself. */
typedef struct {
    int device;          /* the CUDA device ordinal */
    const void *slots;   /* device mb_kcuda_expert [max_slots] */
    uint32_t max_slots;
    uint32_t layer_experts; /* slots loaded for the layer */
    uint32_t d_model, d_ff;
    mb_dtype wdtype[MB_PROTO_MATS]; /* gate, up, down */
} mb_backend_device_view;

typedef struct mb_backend_ops {
    uint32_t abi_version; /* MB_BACKEND_ABI_VERSION */
    const char *name;

    /* Creates backend state for cfg. Blocking (may initialise a device).
     * Returns DEVICE when the device or toolkit is missing, so callers can
     * skip cleanly. Required. */
    mb_status (*open)(const mb_backend_config *cfg, void **state);

    /* Frees everything open and load_expert allocated, abandoning requests
     * still outstanding. Cannot fail. Required. */
    void (*close)(void *state);

    /* Fills caps. Non-blocking. Required. */
    mb_status (*caps)(void *state, mb_backend_caps *caps);

    /* Copies one expert's weights into backend memory at w->slot (replacing
     * whatever was there). May return before the copy is complete (see
     * mb_expert_weights); errors of such a copy come from load_finish or the
     * next request. Shapes of all slots of one layer must agree. Required. */
    mb_status (*load_expert)(void *state, const mb_expert_weights *w);

    /* Optional: waits until every load_expert so far has completed and
     * reports the first failure. NULL: loads are synchronous. */
    mb_status (*load_finish)(void *state);

    /* Optional: reserves device memory for n_slots slots [slot0, slot0 +
     * n_slots) of one layer at once, so a layer's weights are allocated in
     * one piece before its load_expert calls; wdtype is the layer's dtype,
     * taken for all three matrices (a quantized layer whose matrices
     * differ gets what a slot lacks at load). NULL: allocated per slot. */
    mb_status (*reserve_layer)(void *state, uint32_t layer, uint32_t slot0, uint32_t n_slots,
                               uint32_t d_model, uint32_t d_ff, mb_dtype wdtype);

    /* Optional: registers host memory (a shared-memory segment, a mapped
     * checkpoint) for faster device copies; unregister before unmapping.
     * NULL: nothing to do. Failure is not an error for callers: copies then
     * go through the backend's own staging. */
    mb_status (*register_host)(void *state, void *ptr, size_t bytes);
    void (*unregister_host)(void *state, void *ptr);

    /* Synchronous path: for each token t, out[t] = sum over its pairs
     * (slot, g) of g * FFN_slot(act[t]), written in req->dtype into out
     * [n_tokens][d_model] (every element written, tokens with no pairs get
     * zeros). req has been validated by the protocol decoder against this
     * backend's max_slots; the backend checks that each slot is loaded and
     * belongs to req->layer with d_model matching (mb_route_plan does this).
     * Blocking. *compute_ns receives the time spent computing. Required
     * unless submit, poll and fetch are given. */
    mb_status (*run)(void *state, const mb_proto_expert_req *req, void *out, uint64_t *compute_ns);

    /* Asynchronous path (all three or none). submit starts req under tag
     * and returns at once: AGAIN when caps.max_inflight requests are
     * outstanding, a request error (NOT_LOADED, BAD_SHAPE, FULL when larger
     * than the staging area, ...) when it cannot start; then nothing is
     * outstanding for tag. req's arrays and activations must stay valid and
     * unchanged until CONSUMED for tag. poll waits up to timeout_ns (-1:
     * forever, 0: no wait) for the next event, TIMEOUT when none came.
     * fetch copies a DONE-with-OK request's result into out
     * [n_tokens][d_model] in req->dtype and forgets the tag; a DONE with an
     * error is forgotten at once. */
    mb_status (*submit)(void *state, uint64_t tag, const mb_proto_expert_req *req);
    mb_status (*poll)(void *state, int64_t timeout_ns, mb_backend_event *ev);
    mb_status (*fetch)(void *state, uint64_t tag, void *out);

    /* Optional: one layer's experts as device memory, for a caller in the
     * same process on the same device (the GPU coordinator) that enqueues
     * the expert kernels itself, reading its own device buffers instead of
     * a request's host copy. Waits for pending weight uploads first.
     * UNSUPPORTED (or NULL): the backend has no such view; NOT_LOADED: the
     * layer holds no experts. */
    mb_status (*device_layer)(void *state, uint32_t layer, mb_backend_device_view *out);
} mb_backend_ops;

typedef struct mb_backend mb_backend;

/* Looks up a backend by name ("cpu", "cuda", "vulkan"); NULL when this
 * build has none of that name. */
const mb_backend_ops *mb_backend_find(const char *name);

/* The backends built into this binary, for tests that run them all:
 * returns how many there are; *ops receives the i-th (NULL past the end). */
size_t mb_backend_count(void);
const mb_backend_ops *mb_backend_at(size_t i);

/* Opens a backend through its table. On success *out owns the state. */
mb_status mb_backend_open(const mb_backend_ops *ops, const mb_backend_config *cfg, mb_backend **out);
void mb_backend_close(mb_backend *b);
mb_status mb_backend_caps_get(mb_backend *b, mb_backend_caps *caps);

/* The capabilities the GPU backends (CUDA, Vulkan) share: every payload
 * dtype, the element weight dtypes and the quantized types that have
 * kernels (Q8_0, Q4_K, Q6_K), 4096-token batches, one host thread. Of the
 * device's free memory, placement sees what is left after a reserve for
 * request workspaces and staging: 1/25 of the total, at least 1 GiB (about
 * what a 4096-token prefill of Mixtral-sized layers takes) or a quarter of
 * a small card. Fills every field of caps. */
void mb_backend_gpu_caps(mb_backend_caps *caps, const char *name, const char *device,
                         uint64_t mem_total, uint64_t mem_free, uint32_t max_slots,
                         uint32_t max_inflight, uint64_t max_request_bytes);

/* Whether a backend with caps can hold expert weights of every dtype in
 * weight_mask (MB_DTYPE_MASK bits, nonzero) and take payloads of payload.
 * Returns OK, or BAD_DTYPE with the reason written into why, naming each
 * dtype it lacks. */
mb_status mb_backend_caps_check(const mb_backend_caps *caps, uint32_t weight_mask, mb_dtype payload, char *why,
                                size_t why_cap);

/* Whether an expert's three dtypes (wdtype[MB_PROTO_MAT_*]) go together:
 * weight dtypes, and either one element dtype for all three or quantized
 * dtypes only (BAD_DTYPE otherwise). Cannot fail otherwise. */
mb_status mb_backend_expert_dtypes_check(const mb_dtype *wdtype);

mb_status mb_backend_load_expert(mb_backend *b, const mb_expert_weights *w);
mb_status mb_backend_load_finish(mb_backend *b);
mb_status mb_backend_reserve_layer(mb_backend *b, uint32_t layer, uint32_t slot0, uint32_t n_slots, uint32_t d_model,
                                   uint32_t d_ff, mb_dtype wdtype);
mb_status mb_backend_register_host(mb_backend *b, void *ptr, size_t bytes);
void mb_backend_unregister_host(mb_backend *b, void *ptr);

/* The layer's experts as device memory (mb_backend_ops.device_layer):
 * UNSUPPORTED for a backend without the view. */
mb_status mb_backend_device_layer(mb_backend *b, uint32_t layer, mb_backend_device_view *out);

/* Whether the backend implements the asynchronous path itself (a worker
 * pipelines only such backends; others it runs inline). */
int mb_backend_is_async(const mb_backend *b);

/* Runs a request to completion (submit, wait, fetch for async backends). */
mb_status mb_backend_run(mb_backend *b, const mb_proto_expert_req *req, void *out, uint64_t *compute_ns);

/* Tagged asynchronous calls, as the table's members describe, for every
 * backend: a synchronous one runs the request inside submit into a buffer
 * the wrapper owns, reports CONSUMED and DONE from poll, and copies the
 * result out in fetch. A tag must not be reused while outstanding. */
mb_status mb_backend_submit(mb_backend *b, uint64_t tag, const mb_proto_expert_req *req);
mb_status mb_backend_poll(mb_backend *b, int64_t timeout_ns, mb_backend_event *ev);
mb_status mb_backend_fetch(mb_backend *b, uint64_t tag, void *out);

/* Requests submitted and not yet fetched or failed. */
uint32_t mb_backend_outstanding(const mb_backend *b);

/* Parses "cpu", "cpu:1", "cuda:0", "vulkan" into a backend name and device
 * index (-1 when absent). */
mb_status mb_backend_spec_parse(const char *spec, char *name, size_t name_cap, int *device);

#endif
