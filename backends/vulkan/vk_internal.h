/* Private state of the Vulkan backend, shared by its files: vk_device.c
 * (the small helper layer over the loader: instance, physical devices,
 * logical device and queue, buffers, pipelines, error mapping),
 * vk_backend.c (open, close, capabilities, the function table),
 * vk_weights.c (expert slots in device-local arenas, uploads through
 * host-visible staging) and vk_run.c (requests: host-visible staging, one
 * command buffer and fence each). The arithmetic is in kernels/vulkan/. */
#ifndef MB_BACKENDS_VULKAN_VK_INTERNAL_H
#define MB_BACKENDS_VULKAN_VK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <vulkan/vulkan.h>

#include "backends/backend.h"
#include "backends/route_plan.h"
#include "backends/vulkan/vk_devices.h"
#include "kernels/vulkan/moe.h"

#define MB_VK_DEFAULT_SLOTS 4096u
#define MB_VK_MAX_SLOTS (1u << 20)
#define MB_VK_UPLOAD_BUFS 2
#define MB_VK_UPLOAD_BYTES ((size_t)32 << 20)
#define MB_VK_ARENA_BYTES ((size_t)256 << 20)
#define MB_VK_DEFAULT_STAGING ((uint64_t)1 << 30)
#define MB_VK_MAX_PIPELINES 64
#define MB_VK_PUSH_BYTES 128u

/* A buffer with its own memory, its device address and, for host-visible
 * memory, a persistent mapping. */
typedef struct {
    VkBuffer buf;
    VkDeviceMemory mem;
    VkDeviceSize bytes;
    VkDeviceAddress addr;
    void *map;
    VkDeviceSize counted; /* device-local bytes counted in the context's allocated_bytes */
} mb_vk_buffer;

/* Where a buffer's memory should live. */
typedef enum {
    MB_VK_MEM_DEVICE = 0, /* device-local */
    MB_VK_MEM_UPLOAD = 1, /* host-visible, coherent: host writes, device reads */
    MB_VK_MEM_READBACK = 2, /* host-visible, coherent, cached if possible: device writes, host reads */
} mb_vk_mem_kind;

typedef struct {
    const char *shader; /* kernels/vulkan/NAME.comp */
    uint32_t spec[4];   /* specialisation constants 0..3 */
    VkPipeline pipeline;
} mb_vk_pipeline;

/* A logical device on one physical device, with one compute queue. */
typedef struct {
    VkInstance instance;
    VkPhysicalDevice phys;
    VkDevice dev;
    VkQueue queue;
    uint32_t queue_family;
    VkPhysicalDeviceProperties props;
    VkPhysicalDeviceMemoryProperties mem_props;
    uint32_t subgroup_size;
    VkDeviceSize max_alloc;   /* largest single allocation */
    int has_budget;           /* VK_EXT_memory_budget enabled */
    uint32_t timestamp_bits;  /* 0: no timestamps on the queue */
    float timestamp_period;   /* ns per tick */
    VkPipelineLayout layout;  /* push constants only */
    VkPipelineCache cache;
    mb_vk_pipeline pipelines[MB_VK_MAX_PIPELINES];
    int n_pipelines;
    uint64_t allocated_bytes; /* device-local memory this context holds */
    int lost;                 /* the device was lost: everything fails with DEVICE */
} mb_vk_ctx;

/* vk_device.c */

/* Creates an instance (API 1.2); DEVICE when there is no Vulkan driver. */
mb_status mb_vk_instance_create(VkInstance *out);

/* Maps a failed call's result to a status, reporting it on stderr (DEVICE
 * for a lost or missing device, NOMEM for allocation failures, BACKEND
 * otherwise); a lost device marks ctx. */
mb_status mb_vk_fail(mb_vk_ctx *ctx, const char *what, VkResult r);

/* Writes "NAME (TYPE, Vulkan X.Y, driver)" for a physical device and its
 * largest device-local heap's size. */
void mb_vk_describe(VkPhysicalDevice phys, char *buf, size_t cap, uint64_t *heap_bytes);

/* Opens physical device index (-1 = 0) with a compute queue, checking what
 * the shaders need (Vulkan 1.2, buffer device addresses, subgroup
 * arithmetic in compute). DEVICE when absent or unfit, with the reason on
 * stderr. */
mb_status mb_vk_ctx_init(mb_vk_ctx *ctx, int index);
void mb_vk_ctx_fini(mb_vk_ctx *ctx);

/* Allocates a buffer of bytes (> 0) with storage, transfer and
 * device-address usage (plus extra_usage) in memory of kind. NOMEM when
 * the device has no room. */
mb_status mb_vk_buffer_create(mb_vk_ctx *ctx, VkDeviceSize bytes, mb_vk_mem_kind kind,
                              VkBufferUsageFlags extra_usage, mb_vk_buffer *out);
void mb_vk_buffer_destroy(mb_vk_ctx *ctx, mb_vk_buffer *b);

/* The compute pipeline of shader with specialisation constants spec[0..3],
 * created on first use and cached for the context's life. */
mb_status mb_vk_pipeline_get(mb_vk_ctx *ctx, const char *shader, const uint32_t spec[4], VkPipeline *out);

/* Device-local memory for placement: total (largest device-local heap) and
 * what may still be allocated (the budget when VK_EXT_memory_budget is
 * there, else the heap size less what this context holds). */
void mb_vk_memory(mb_vk_ctx *ctx, uint64_t *total, uint64_t *avail);

uint64_t mb_vk_now_ns(void);

/* A full compute/transfer/indirect/host memory dependency: what came
 * before in the queue is visible to what comes after. */
void mb_vk_barrier(VkCommandBuffer cb);

/* ---- the backend ---- */

/* A piece of device memory that slots are carved from. */
typedef struct mb_vk_arena {
    struct mb_vk_arena *next;
    mb_vk_buffer b;
    VkDeviceSize used;
} mb_vk_arena;

/* Device memory of one slot: gate, up, down packed, bytes long. */
typedef struct {
    mb_vk_arena *arena;
    VkDeviceSize off, bytes;
} mb_vk_slot_mem;

/* One staging buffer of the weight-upload ring: copies recorded into cb
 * while it fills, submitted with fence when full or flushed. */
typedef struct {
    mb_vk_buffer stage;
    VkCommandBuffer cb;
    VkFence fence;
    VkDeviceSize used;
    int recording;
    int pending; /* submitted, fence not yet waited for */
} mb_vk_upload_buf;

/* The device workspace of one request entry: arrays at offsets of one
 * buffer, grown to the largest request seen. */
typedef struct {
    mb_vk_buffer b;
    size_t cap_tokens, cap_pairs, cap_x, cap_h, cap_y; /* what it was sized for (x, h, y in bytes) */
    VkDeviceSize tok_off, expert_slot, expert_off, pair_pos, perm_token, tiles, x, h, y;
} mb_vk_ws;

/* One request in flight. Staging layout (host and device alike):
 * pair_counts at 0, pairs at pairs_off, activations at act_off. */
typedef struct {
    int used;
    int consumed_reported;
    int done; /* DONE reported by poll */
    mb_status status;
    uint64_t tag;
    uint64_t seq; /* submission order */
    size_t out_bytes;
    uint64_t t_submit_ns;
    VkCommandBuffer cb;
    VkFence fence;
    VkQueryPool queries; /* 2 timestamps, or null */
    mb_vk_buffer h_in, d_in, d_out, h_out;
    mb_vk_buffer fixed; /* slot_cnt [max_slots] | slot_eidx [max_slots] | args */
    int fixed_fresh;    /* slot_cnt must still be zeroed on the device */
    mb_vk_ws ws;
} mb_vk_req;

typedef struct {
    int device;
    uint32_t max_slots;
    uint32_t max_inflight;
    uint64_t staging_max;
    int progress;
    int path; /* 0 auto, 1 gemv, 2 gemm (MB_VULKAN_PATH) */
    uint32_t gemv_rows; /* weight rows per moe_gemv workgroup: one per subgroup */
    int spin;           /* poll spins before sleeping (not on a CPU device) */
    char device_name[MB_PROTO_NAME_BYTES];
    mb_vk_ctx ctx;
    VkCommandPool pool;

    mb_route_table table;
    mb_vk_slot_mem *slot_mem;  /* [max_slots] */
    mb_vk_buffer slots;        /* mb_kvk_slot [max_slots], device-local */
    uint32_t *layer_experts;   /* loaded slots per layer */
    uint32_t n_layers_cap;
    mb_vk_arena *arenas;

    mb_vk_upload_buf up[MB_VK_UPLOAD_BUFS];
    int up_next;
    mb_status upload_status;
    uint64_t up_bytes, up_t0_ns, up_last_print_ns;

    mb_vk_req reqs[MB_BACKEND_MAX_INFLIGHT];
    uint64_t next_seq;
} mb_vk_backend;

/* vk_weights.c */
mb_status mb_vk_load_expert(void *state, const mb_expert_weights *w);
mb_status mb_vk_load_finish(void *state);
mb_status mb_vk_reserve_layer(void *state, uint32_t layer, uint32_t slot0, uint32_t n_slots, uint32_t d_model,
                              uint32_t d_ff, mb_dtype wdtype);
/* Submits the upload commands recorded so far (requests submitted after
 * this see the weights: same queue, and each request starts with a
 * barrier). */
mb_status mb_vk_upload_flush(mb_vk_backend *be);
void mb_vk_weights_free(mb_vk_backend *be);

/* vk_run.c */
mb_status mb_vk_submit(void *state, uint64_t tag, const mb_proto_expert_req *req);
mb_status mb_vk_poll(void *state, int64_t timeout_ns, mb_backend_event *ev);
mb_status mb_vk_fetch(void *state, uint64_t tag, void *out);
/* Waits until no request entry's commands are running (load_expert calls it
 * before overwriting weights that requests may read). */
mb_status mb_vk_reqs_wait(mb_vk_backend *be);
void mb_vk_req_free(mb_vk_backend *be, mb_vk_req *r);

#endif
