/* Private state of the Vulkan backend, shared by its files: vk_device.c
 * (the small helper layer over the loader: instance, physical devices,
 * logical device and queue, pipelines, error mapping), vk_buffer.c
 * (buffers, host-memory import), vk_backend.c (open, close, capabilities, the function table),
 * vk_weights.c (expert slots in device-local arenas, uploads through
 * host-visible staging), vk_host.c (registered host memory, imported where
 * VK_EXT_external_memory_host allows), vk_record.c (a request's path and
 * its commands) and vk_run.c (requests: staging or imported inputs, a
 * timeline semaphore each, poll and fetch). The arithmetic is in
 * kernels/vulkan/. */
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
#define MB_VK_MAX_PIPELINES 256 /* shader x specialisations: quantized mixes add many */
#define MB_VK_PUSH_BYTES 128u
#define MB_VK_ALIGN(x) (((x) + 255) & ~(size_t)255) /* offsets inside request buffers */
#define MB_VK_SPECS 10u /* specialisation constants 0..9 a pipeline may take */
#define MB_VK_MAX_HOST 8 /* host regions registered at once */
/* Inputs of a GEMV-path request up to this size are written straight into
 * device-local, host-visible memory, where the device has such a type. */
#define MB_VK_DIRECT_BYTES ((size_t)256 << 10)
/* Activations of at least this size are read in place from registered
 * host memory (MB_VULKAN_HOST_IMPORT=1): below it the host copies cost
 * less than the extra submission that fetch's copy then needs. */
#define MB_VK_IMPORT_MIN_BYTES ((size_t)256 << 10)
/* The decode path fuses the down GEMV with the combine up to this many
 * tokens (and while experts are hardly shared: the fused step reads an
 * expert's down rows once per pair). */
#define MB_VK_FUSED_MAX_TOKENS 4u

/* The tiled path's GEMM (moe_convert's output follows: f32, f16, f16 in
 * grouped order, bf16 in grouped order). */
typedef enum {
    MB_VK_GEMM_PORTABLE = 0, /* moe_gemm, f32 FMAs */
    MB_VK_GEMM_COOPMAT = 1,  /* moe_gemm_coopmat, VK_NV_cooperative_matrix fragments */
    MB_VK_GEMM_CM2 = 2,      /* moe_gemm_cm2, VK_NV_cooperative_matrix2, f16 matrices */
    MB_VK_GEMM_CM2_BF16 = 3, /* moe_gemm_cm2_bf16, bf16 matrices */
} mb_vk_gemm_kind;

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
    MB_VK_MEM_DIRECT = 3, /* device-local and host-visible, coherent (resizable BAR or its
                             window): host writes, shaders read in place; UNSUPPORTED when
                             the device has no such type */
} mb_vk_mem_kind;

typedef struct {
    const char *shader;         /* kernels/vulkan/NAME.comp */
    uint32_t spec[MB_VK_SPECS]; /* specialisation constants */
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
    int has_host_import;      /* VK_EXT_external_memory_host enabled */
    int has_coopmat;          /* the tiled path's GEMMs on matrix units: 1 moe_gemm_coopmat
                                 (VK_NV_cooperative_matrix, 16x16x16 f16 -> f32 on subgroups of
                                 32), 2 moe_gemm_cm2 (VK_NV_cooperative_matrix2); 0 neither */
    const char *coopmat_why;  /* why not (static string), when has_coopmat is 0 */
    int cm2_bf16;             /* with has_coopmat 2: VK_KHR_shader_bfloat16 enabled, bf16 weights
                                 take moe_gemm_cm2_bf16 (bf16 matrices, no decode) */
    VkDeviceSize host_import_align; /* its minImportedHostPointerAlignment */
    PFN_vkGetMemoryHostPointerPropertiesEXT host_ptr_props;
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
 * the shaders and the backend need (Vulkan 1.2, buffer device addresses,
 * timeline semaphores, subgroup arithmetic in compute), and enables
 * VK_EXT_memory_budget and VK_EXT_external_memory_host where present, and
 * the matrix-unit extensions of the tiled GEMMs: coopmat 1 requires
 * VK_NV_cooperative_matrix (moe_gemm_coopmat), 2 requires
 * VK_KHR_cooperative_matrix + VK_NV_cooperative_matrix2 (moe_gemm_cm2), each
 * with shaderFloat16 and vulkanMemoryModel (DEVICE, with the reason on
 * stderr, when it cannot run), -1 takes moe_gemm_cm2 where it can, 0
 * neither; cm2_tile is moe_gemm_cm2's {BM, BN, BK} for gate/up,
 * {BN, BK} for down (same BM) and the workgroup's invocations, both tiles
 * of which must fit (with down_default, a down tile that does not is
 * replaced by gate/up's BN and BK in cm2_tile); with cm2_bf16 (and
 * moe_gemm_cm2 chosen) VK_KHR_shader_bfloat16 is enabled where the device
 * has bf16 matrices for both tiles (ctx->cm2_bf16 says whether). DEVICE
 * when absent or unfit, with the reason on stderr. */
mb_status mb_vk_ctx_init(mb_vk_ctx *ctx, int index, int coopmat, uint32_t cm2_tile[6],
                         int down_default, int cm2_bf16);
void mb_vk_ctx_fini(mb_vk_ctx *ctx);

/* vk_buffer.c */

/* Allocates a buffer of bytes (> 0) with storage, transfer and
 * device-address usage (plus extra_usage) in memory of kind. NOMEM when
 * the device has no room. */
mb_status mb_vk_buffer_create(mb_vk_ctx *ctx, VkDeviceSize bytes, mb_vk_mem_kind kind,
                              VkBufferUsageFlags extra_usage, mb_vk_buffer *out);
void mb_vk_buffer_destroy(mb_vk_ctx *ctx, mb_vk_buffer *b);

/* Wraps host memory [ptr, ptr + bytes) as a transfer buffer through
 * VK_EXT_external_memory_host: ptr and bytes (> 0) must be multiples of
 * ctx->host_import_align, and the memory must stay mapped until the buffer
 * is destroyed. UNSUPPORTED without the extension or a coherent memory
 * type for the pointer, BACKEND (or NOMEM) when the driver refuses, with
 * nothing printed: callers fall back to staging. out->map is NULL (the host
 * has ptr). */
mb_status mb_vk_buffer_import(mb_vk_ctx *ctx, void *ptr, VkDeviceSize bytes, mb_vk_buffer *out);

/* vk_device.c, continued */

/* The compute pipeline of shader with specialisation constants
 * spec[0..MB_VK_SPECS), created on first use and cached for the context's
 * life (constants a shader does not declare are ignored). */
mb_status mb_vk_pipeline_get(mb_vk_ctx *ctx, const char *shader, const uint32_t spec[MB_VK_SPECS], VkPipeline *out);
/* The device's workgroup-scope cooperative_matrix2 configurations on
 * stderr, one a line (MB_VULKAN_VERBOSE); nothing without the extension. */
void mb_vk_cm2_configs_print(const mb_vk_ctx *ctx, int device);
/* The shader a pipeline of ctx's was made from ("?" for none of them). */
const char *mb_vk_pipeline_name(const mb_vk_ctx *ctx, VkPipeline pipeline);

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

/* What an entry's main command buffer holds: it is recorded again only
 * when a request differs in one of these (decode steps of one shape reuse
 * it). valid 0: nothing recorded. */
typedef struct {
    int valid;
    int gemm, fused, coopmat, in_direct, imported, fixed_fresh;
    uint32_t gen; /* the entry's buffer generation (mb_vk_req.gen) */
    uint32_t n_tokens, n_pairs, n_experts, d_model, d_ff;
    mb_dtype dtype, wdtype[MB_PROTO_MATS];
} mb_vk_rec_key;

/* MB_VULKAN_PROFILE: the first dispatches of a request timed one by one. */
#define MB_VK_PROF_STAMPS 16

/* Commands recorded for one request, for tests and notes. */
typedef struct {
    uint32_t dispatches, copies, barriers, submits; /* submits: batches */
} mb_vk_rec_count;

/* One request in flight. Input layout (host and device alike): pair_counts
 * at 0, pairs at pairs_off, activations at act_off, and for the GEMV path
 * the host's grouping at plan_off (mb_vk_plan). The entry's timeline
 * semaphore reaches sem_consumed once the inputs were read (imported
 * activations: after the device copied them) and sem_done at the end. */
typedef struct {
    int used;
    int consumed_reported;
    int done; /* DONE reported by poll */
    int imported_in;      /* activations read from registered host memory */
    int result_on_device; /* the result stays in d_out until fetch copies it */
    mb_status status;
    uint64_t tag;
    uint64_t seq; /* submission order */
    size_t out_bytes;
    uint64_t t_submit_ns;
    VkCommandBuffer cb;     /* the request's commands, reused while key holds */
    VkCommandBuffer cb_in;  /* imported activations: the copies before CONSUMED */
    VkCommandBuffer cb_out; /* fetch's copy into registered host memory */
    VkSemaphore sem;        /* timeline */
    uint64_t sem_value, sem_consumed, sem_done;
    VkQueryPool queries; /* 2 timestamps (2 + MB_VK_PROF_STAMPS with profile), or null */
    const char *prof_name[MB_VK_PROF_STAMPS]; /* profile: the shader of each timed dispatch */
    uint32_t prof_n;                          /* profile: dispatches timed in cb */
    mb_vk_buffer h_in, d_in, d_out, h_out;
    mb_vk_buffer direct; /* inputs of small GEMV requests, device-local and host-mapped */
    int direct_none;     /* the device has no memory for direct */
    mb_vk_buffer fixed; /* slot_cnt [max_slots] | slot_eidx [max_slots] | args */
    int fixed_fresh;    /* slot_cnt must still be zeroed on the device */
    mb_vk_ws ws;
    uint32_t gen;       /* bumped whenever one of the buffers above is replaced */
    mb_vk_rec_key key;
    mb_vk_rec_count count; /* of cb (and cb_in when imported) */
} mb_vk_req;

/* Host memory registered by register_host, imported on first use by a
 * request whose activations (or fetch whose destination) lie inside it. */
typedef struct {
    uint8_t *base; /* as registered; NULL: free entry */
    size_t bytes;
    uint8_t *ibase; /* the part that can be imported: base and end rounded inward */
    size_t ibytes;  /* to the import alignment */
    int state;      /* 0 not tried, 1 imported (buf), -1 not importable: staging */
    mb_vk_buffer buf;
} mb_vk_host_region;

/* Host-import policy (MB_VULKAN_HOST_IMPORT). */
enum { MB_VK_IMPORT_OFF = 0, MB_VK_IMPORT_AUTO = 1, MB_VK_IMPORT_ALWAYS = 2 };

/* What the tests read back: how requests travelled. */
typedef struct {
    uint64_t in_imported, in_staged, in_direct; /* requests by how activations came in */
    uint64_t out_imported, out_staged;          /* fetches by how results went out */
    mb_vk_rec_count last;                       /* the last submitted request's commands */
    uint64_t recorded, reused;                  /* main command buffers recorded / reused */
} mb_vk_stats;

/* A request's path and where its inputs live: filled by mb_vk_plan_make
 * and the submit around it. Offsets are into the input buffer. */
typedef struct {
    const mb_proto_expert_req *req;
    uint32_t d_ff;
    mb_dtype wdtype[MB_PROTO_MATS]; /* gate, up, down: one element dtype, or quantized types */
    size_t in_bytes, out_bytes, pairs_off, act_off;
    int gemm;  /* tiled path, routed on the device; else GEMV, routed on the host */
    int fused; /* GEMV: down product and combine in one dispatch */
    mb_vk_gemm_kind coopmat; /* tiled: which GEMM (16-bit operands unless portable) */
    int split_x, split_h;    /* not portable: x (f32 payloads; f16 ones for cm2 bf16), h (unless
                                hidden16) as two 16-bit halves */
    uint32_t n_experts; /* GEMV: experts with pairs */
    size_t plan_off, tok_off, expert_slot, expert_off, pair_pos, perm_token; /* GEMV grouping */
    int in_direct; /* inputs in r->direct: no copy */
    const mb_vk_host_region *src; /* activations imported from here, at src_off */
    size_t src_off;
    VkPipeline route, convert, ffn1, ffn2, combine;
} mb_vk_plan;

typedef struct {
    int device;
    uint32_t max_slots;
    uint32_t max_inflight;
    uint64_t staging_max;
    int progress;
    int path; /* 0 auto, 1 gemv, 2 gemm (MB_VULKAN_PATH) */
    int host_import; /* MB_VK_IMPORT_* (MB_VULKAN_HOST_IMPORT) */
    int verbose;     /* one-line notes on stderr (MB_VULKAN_VERBOSE) */
    int hidden16;    /* coopmat path: h's high half only (MB_VULKAN_HIDDEN=16) */
    uint32_t cm2_bm, cm2_bn, cm2_bk; /* moe_gemm_cm2's tile: rows, output columns, K step
                                        (MB_VULKAN_CM2_TILE) */
    uint32_t cm2_bn2, cm2_bk2;       /* the down product's columns and K step (MB_VULKAN_CM2_DOWN) */
    uint32_t cm2_threads;            /* moe_gemm_cm2's workgroup (MB_VULKAN_CM2_THREADS) */
    int cm2_kspec; /* K and N as specialisations (MB_VULKAN_CM2_KSPEC; 0: push constants) */
    int profile;                     /* MB_VULKAN_PROFILE: per-dispatch timestamps, a table at close */
    mb_vk_req *rec_req;              /* profile: the request whose main cb is being recorded */
    struct {
        const char *name; /* shader; NULL: the copies and barriers after the last dispatch */
        uint32_t index;   /* dispatch's place in its request */
        uint64_t ns, calls;
    } prof[MB_VK_PROF_STAMPS + 4];
    uint32_t n_prof;
    uint64_t prof_requests;
    int gemm_noted;                  /* verbose: the tiled GEMMs noted (bit 1 << mb_vk_gemm_kind) */
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
    uint64_t weight_bytes;     /* loaded slots' weights, quantized ones at their quantized size */

    mb_vk_upload_buf up[MB_VK_UPLOAD_BUFS];
    int up_next;
    mb_status upload_status;
    uint64_t up_bytes, up_t0_ns, up_last_print_ns;

    mb_vk_req reqs[MB_BACKEND_MAX_INFLIGHT];
    uint64_t next_seq;
    int32_t *host_eidx; /* [max_slots] expert of a slot while grouping on the host, else -1 */
    int32_t *plan;      /* the host's grouping of the request being submitted */
    size_t plan_cap;    /* words */
    VkFence fetch_fence; /* fetch's copies into registered memory */

    mb_vk_host_region host[MB_VK_MAX_HOST];
    int host_note_done; /* the no-extension note was printed */
    mb_vk_stats stats;
} mb_vk_backend;

/* vk_weights.c */
/* 1 for the weight dtypes the shaders take: f32, f16, bf16, Q8_0, Q4_K,
 * Q6_K. */
int mb_vk_weight_dtype_ok(mb_dtype wdtype);
mb_status mb_vk_load_expert(void *state, const mb_expert_weights *w);
mb_status mb_vk_load_finish(void *state);
mb_status mb_vk_reserve_layer(void *state, uint32_t layer, uint32_t slot0, uint32_t n_slots, uint32_t d_model,
                              uint32_t d_ff, mb_dtype wdtype);
/* Submits the upload commands recorded so far (requests submitted after
 * this see the weights: same queue, and each request starts with a
 * barrier). */
mb_status mb_vk_upload_flush(mb_vk_backend *be);
void mb_vk_weights_free(mb_vk_backend *be);

/* vk_host.c */
mb_status mb_vk_register_host(void *state, void *ptr, size_t bytes);
void mb_vk_unregister_host(void *state, void *ptr);
/* The imported region holding [p, p + bytes) (imported now if it was not
 * yet), with *off the offset of p in its buffer; NULL when no registered
 * region holds it, the import is off, unavailable or failed. Every bound
 * is checked with overflow-safe arithmetic. */
const mb_vk_host_region *mb_vk_host_find(mb_vk_backend *be, const void *p, size_t bytes, size_t *off);
void mb_vk_host_free(mb_vk_backend *be);
/* Prints msg as a one-line note on stderr when verbose (MB_VULKAN_VERBOSE). */
void mb_vk_note(mb_vk_backend *be, const char *msg);

/* vk_record.c */
/* Where the args block (mb_kvk_args) starts in an entry's fixed buffer. */
size_t mb_vk_args_off(const mb_vk_backend *be);
/* Chooses req's path and pipelines and lays out its inputs (sizes in pl);
 * FULL past the staging area or the shaders' 32-bit indexing. */
mb_status mb_vk_plan_make(mb_vk_backend *be, mb_vk_plan *pl);
/* Writes the inputs (pair counts, pairs and, for the GEMV path, the
 * grouping) into in, the host view of the input buffer; the activations
 * too unless pl->src imports them. Cannot fail. */
void mb_vk_inputs_write(mb_vk_backend *be, const mb_vk_plan *pl, char *in);
/* Records r's command buffers for pl (the main one only when its key
 * changed). */
VkResult mb_vk_record(mb_vk_backend *be, mb_vk_req *r, const mb_vk_plan *pl);

/* vk_run.c */
mb_status mb_vk_submit(void *state, uint64_t tag, const mb_proto_expert_req *req);
mb_status mb_vk_poll(void *state, int64_t timeout_ns, mb_backend_event *ev);
mb_status mb_vk_fetch(void *state, uint64_t tag, void *out);
/* Waits until no request entry's commands are running (load_expert calls it
 * before overwriting weights that requests may read). */
mb_status mb_vk_reqs_wait(mb_vk_backend *be);
void mb_vk_req_free(mb_vk_backend *be, mb_vk_req *r);

#endif
