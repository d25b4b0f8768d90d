/* The one backend interface: a table of functions that CPU, CUDA and Vulkan
 * backends implement, whether they run in a worker process or inside the
 * coordinator. Callers use the mb_backend_* wrappers, which check arguments
 * and supply the optional members' defaults; nobody calls a table member
 * directly. A backend instance is used by one thread at a time. */
#ifndef MB_BACKENDS_BACKEND_H
#define MB_BACKENDS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "protocol/dtype.h"
#include "protocol/message.h"
#include "protocol/status.h"

#define MB_BACKEND_ABI_VERSION 1u

/* How a CPU backend places expert weights in memory. */
typedef enum {
    MB_NUMA_DEFAULT = 0,    /* first touch by the loading thread */
    MB_NUMA_BIND = 1,       /* bound to config.numa_node, threads pinned there */
    MB_NUMA_INTERLEAVE = 2, /* interleaved over all nodes (or config's mask) */
} mb_numa_policy;

typedef struct {
    int device;             /* CPU: NUMA node (-1 = any); GPU: device index */
    int n_threads;          /* CPU threads to use; 0 = all the process may use */
    mb_numa_policy numa;    /* CPU weight placement */
    uint32_t max_slots;     /* expert slots to reserve room for in the table */
} mb_backend_config;

/* What a backend reports about itself; travels in HELLO_REPLY. */
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
} mb_backend_caps;

/* One expert's weights, host memory, valid only during load_expert (the
 * backend copies what it keeps). Shapes: gate [d_ff][d_model], up
 * [d_ff][d_model], down [d_model][d_ff], row-major in wdtype. */
typedef struct {
    uint32_t layer;
    uint32_t expert_id;
    uint32_t slot;
    uint32_t d_model;
    uint32_t d_ff;
    mb_dtype wdtype;
    const void *gate;
    const void *up;
    const void *down;
} mb_expert_weights;

typedef struct mb_backend_ops {
    uint32_t abi_version; /* MB_BACKEND_ABI_VERSION */
    const char *name;

    /* Creates backend state for cfg. Blocking (may initialise a device).
     * Returns DEVICE when the device or toolkit is missing, so callers can
     * skip cleanly. Required. */
    mb_status (*open)(const mb_backend_config *cfg, void **state);

    /* Frees everything open and load_expert allocated. Cannot fail. Required. */
    void (*close)(void *state);

    /* Fills caps. Non-blocking. Required. */
    mb_status (*caps)(void *state, mb_backend_caps *caps);

    /* Copies one expert's weights into backend memory at w->slot (replacing
     * whatever was there). Blocking. Shapes of all slots of one layer must
     * agree. Required. */
    mb_status (*load_expert)(void *state, const mb_expert_weights *w);

    /* Runs a request: for each token t, out[t] = sum over its pairs (slot,
     * g) of g * FFN_slot(act[t]), written in req->dtype into out
     * [n_tokens][d_model] (every element written, tokens with no pairs get
     * zeros). req has been validated by the protocol decoder against this
     * backend's max_slots; the backend checks that each slot is loaded and
     * belongs to req->layer with d_model matching. Blocking. *compute_ns
     * receives the time spent computing. Required. */
    mb_status (*run)(void *state, const mb_proto_expert_req *req, void *out, uint64_t *compute_ns);

    /* Optional asynchronous pair: submit starts the same work as run and
     * returns at once; wait blocks until it is done or timeout_ns passes
     * (TIMEOUT). At most one submission outstanding. NULL: the wrappers run
     * synchronously in submit and wait returns OK. */
    mb_status (*submit)(void *state, const mb_proto_expert_req *req, void *out);
    mb_status (*wait)(void *state, int64_t timeout_ns, uint64_t *compute_ns);
} mb_backend_ops;

typedef struct mb_backend mb_backend;

/* Looks up a backend by name ("cpu", "cuda", "vulkan"); NULL when this
 * build has none of that name. */
const mb_backend_ops *mb_backend_find(const char *name);

/* Opens a backend through its table. On success *out owns the state. */
mb_status mb_backend_open(const mb_backend_ops *ops, const mb_backend_config *cfg, mb_backend **out);
void mb_backend_close(mb_backend *b);
mb_status mb_backend_caps_get(mb_backend *b, mb_backend_caps *caps);
mb_status mb_backend_load_expert(mb_backend *b, const mb_expert_weights *w);
mb_status mb_backend_run(mb_backend *b, const mb_proto_expert_req *req, void *out, uint64_t *compute_ns);
mb_status mb_backend_submit(mb_backend *b, const mb_proto_expert_req *req, void *out);
mb_status mb_backend_wait(mb_backend *b, int64_t timeout_ns, uint64_t *compute_ns);

/* Parses "cpu", "cpu:1", "cuda:0", "vulkan" into a backend name and device
 * index (-1 when absent). */
mb_status mb_backend_spec_parse(const char *spec, char *name, size_t name_cap, int *device);

#endif
