/* The Vulkan backend's helper layer over the Debian loader and headers:
 * instance and device setup (one compute queue, buffer device addresses,
 * timeline semaphores, VK_EXT_memory_budget and VK_EXT_external_memory_host
 * when present), compute pipelines built from the embedded SPIR-V (kernels/vulkan/spirv.h)
 * and cached per specialisation, and the mapping of VkResult to mb_status.
 * Knows nothing of experts or requests. Buffers are vk_buffer.c's. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backends/vulkan/vk_internal.h"
#include "kernels/vulkan/spirv.h"

uint64_t mb_vk_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static const char *mb_vk_result_str(VkResult r)
{
    switch (r) {
    case VK_SUCCESS: return "success";
    case VK_NOT_READY: return "not ready";
    case VK_TIMEOUT: return "timeout";
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "out of host memory";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "out of device memory";
    case VK_ERROR_INITIALIZATION_FAILED: return "initialization failed";
    case VK_ERROR_DEVICE_LOST: return "device lost";
    case VK_ERROR_MEMORY_MAP_FAILED: return "memory map failed";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "extension not present";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "feature not present";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "incompatible driver (no Vulkan driver installed?)";
    case VK_ERROR_TOO_MANY_OBJECTS: return "too many objects";
    default: return "error";
    }
}

mb_status mb_vk_fail(mb_vk_ctx *ctx, const char *what, VkResult r)
{
    fprintf(stderr, "vulkan backend: %s: %s (VkResult %d)\n", what, mb_vk_result_str(r), (int)r);
    switch (r) {
    case VK_ERROR_OUT_OF_HOST_MEMORY:
    case VK_ERROR_OUT_OF_DEVICE_MEMORY:
    case VK_ERROR_TOO_MANY_OBJECTS: return MB_STATUS_NOMEM;
    case VK_ERROR_DEVICE_LOST:
        if (ctx) ctx->lost = 1;
        return MB_STATUS_DEVICE;
    case VK_ERROR_INITIALIZATION_FAILED:
    case VK_ERROR_INCOMPATIBLE_DRIVER: return MB_STATUS_DEVICE;
    default: return MB_STATUS_BACKEND;
    }
}

mb_status mb_vk_instance_create(VkInstance *out)
{
    const VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
                                   .pApplicationName = "moe-worker",
                                   .pEngineName = "moe-broker",
                                   .apiVersion = VK_API_VERSION_1_3}; /* 1.3: moe_gemm_cm2's SPIR-V 1.6 */
    const VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, .pApplicationInfo = &app};
    VkResult r = vkCreateInstance(&ci, NULL, out);
    if (r == VK_ERROR_INCOMPATIBLE_DRIVER || r == VK_ERROR_INITIALIZATION_FAILED) return MB_STATUS_DEVICE;
    if (r != VK_SUCCESS) return mb_vk_fail(NULL, "vkCreateInstance", r);
    return MB_STATUS_OK;
}

static const char *mb_vk_type_name(VkPhysicalDeviceType t)
{
    switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return "discrete GPU";
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return "integrated GPU";
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return "virtual GPU";
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return "CPU";
    default: return "other";
    }
}

/* The largest device-local heap (there is always one). */
static uint32_t mb_vk_main_heap(const VkPhysicalDeviceMemoryProperties *mp)
{
    uint32_t best = 0;
    VkDeviceSize best_bytes = 0;
    for (uint32_t i = 0; i < mp->memoryHeapCount; i++)
        if ((mp->memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) && mp->memoryHeaps[i].size > best_bytes) {
            best = i;
            best_bytes = mp->memoryHeaps[i].size;
        }
    return best;
}

void mb_vk_describe(VkPhysicalDevice phys, char *buf, size_t cap, uint64_t *heap_bytes)
{
    VkPhysicalDeviceProperties p;
    VkPhysicalDeviceMemoryProperties mp;
    vkGetPhysicalDeviceProperties(phys, &p);
    vkGetPhysicalDeviceMemoryProperties(phys, &mp);
    if (heap_bytes) *heap_bytes = mp.memoryHeaps[mb_vk_main_heap(&mp)].size;
    snprintf(buf, cap, "%s (%s, Vulkan %u.%u)", p.deviceName, mb_vk_type_name(p.deviceType),
             VK_API_VERSION_MAJOR(p.apiVersion), VK_API_VERSION_MINOR(p.apiVersion));
}

int mb_vk_devices_print(FILE *f)
{
    VkInstance inst = VK_NULL_HANDLE;
    if (mb_vk_instance_create(&inst) != MB_STATUS_OK) return 0;
    uint32_t n = 0;
    vkEnumeratePhysicalDevices(inst, &n, NULL);
    VkPhysicalDevice *devs = n ? calloc(n, sizeof *devs) : NULL;
    if (n && !devs) n = 0;
    if (n) vkEnumeratePhysicalDevices(inst, &n, devs);
    for (uint32_t i = 0; i < n; i++) {
        char desc[256];
        uint64_t heap = 0;
        mb_vk_describe(devs[i], desc, sizeof desc, &heap);
        fprintf(f, "vulkan:%u  %s, %.0f MiB device-local\n", i, desc, heap / 1048576.0);
    }
    free(devs);
    vkDestroyInstance(inst, NULL);
    return (int)n;
}

static int mb_vk_has_extension(VkPhysicalDevice phys, const char *name)
{
    uint32_t n = 0;
    if (vkEnumerateDeviceExtensionProperties(phys, NULL, &n, NULL) != VK_SUCCESS || n == 0) return 0;
    VkExtensionProperties *e = calloc(n, sizeof *e);
    if (!e) return 0;
    int found = 0;
    if (vkEnumerateDeviceExtensionProperties(phys, NULL, &n, e) == VK_SUCCESS)
        for (uint32_t i = 0; i < n && !found; i++)
            found = strcmp(e[i].extensionName, name) == 0;
    free(e);
    return found;
}

/* Why phys cannot run the shaders, or NULL when it can. */
static const char *mb_vk_unfit(VkPhysicalDevice phys, uint32_t *subgroup_size)
{
    VkPhysicalDeviceProperties p;
    vkGetPhysicalDeviceProperties(phys, &p);
    if (p.apiVersion < VK_API_VERSION_1_2) return "it supports only Vulkan 1.0 or 1.1 (1.2 needed)";
    VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
    VkPhysicalDeviceFeatures2 f = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &f12};
    vkGetPhysicalDeviceFeatures2(phys, &f);
    if (!f12.bufferDeviceAddress) return "it lacks bufferDeviceAddress";
    if (!f12.timelineSemaphore) return "it lacks timelineSemaphore";
    VkPhysicalDeviceSubgroupProperties sg = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &sg};
    vkGetPhysicalDeviceProperties2(phys, &p2);
    const VkSubgroupFeatureFlags need = VK_SUBGROUP_FEATURE_BASIC_BIT | VK_SUBGROUP_FEATURE_ARITHMETIC_BIT;
    if (!(sg.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) || (sg.supportedOperations & need) != need)
        return "it lacks subgroup arithmetic in compute shaders";
    if (sg.subgroupSize == 0 || MB_KVK_GEMV_THREADS % sg.subgroupSize) return "its subgroup size does not divide 128";
    const VkPhysicalDeviceLimits *l = &p.limits;
    if (l->maxComputeWorkGroupInvocations < 256 || l->maxComputeWorkGroupSize[0] < 256)
        return "it runs fewer than 256 invocations a workgroup";
    if (l->maxComputeSharedMemorySize < 16384) return "it has less than 16 KiB of shared memory";
    if (l->maxPushConstantsSize < MB_VK_PUSH_BYTES) return "it has less than 128 bytes of push constants";
    *subgroup_size = sg.subgroupSize;
    return NULL;
}

/* Why moe_gemm_coopmat cannot run on phys, or NULL when it can:
 * VK_NV_cooperative_matrix in compute with a 16 x 16 x 16 f16 x f16 + f32
 * subgroup configuration, subgroups of 32, shaderFloat16 (the f16 matrix
 * type) and the Vulkan memory model (GL_NV_cooperative_matrix's shaders
 * declare it). Debian 12's toolchain (Vulkan headers 1.3.239, glslang 11)
 * predates VK_KHR_cooperative_matrix, hence the NV extension. */
static const char *mb_vk_coopmat_unfit(VkInstance inst, VkPhysicalDevice phys, uint32_t subgroup_size)
{
    if (!mb_vk_has_extension(phys, VK_NV_COOPERATIVE_MATRIX_EXTENSION_NAME)) return "no VK_NV_cooperative_matrix";
    if (subgroup_size != 32) return "subgroups are not 32 wide";
    VkPhysicalDeviceCooperativeMatrixFeaturesNV cm = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_NV};
    VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
                                            .pNext = &cm};
    VkPhysicalDeviceFeatures2 f = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &f12};
    vkGetPhysicalDeviceFeatures2(phys, &f);
    if (!cm.cooperativeMatrix) return "cooperativeMatrix feature off";
    if (!f12.shaderFloat16) return "no shaderFloat16";
    if (!f12.vulkanMemoryModel) return "no vulkanMemoryModel";
    VkPhysicalDeviceCooperativeMatrixPropertiesNV cp = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_PROPERTIES_NV};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &cp};
    vkGetPhysicalDeviceProperties2(phys, &p2);
    if (!(cp.cooperativeMatrixSupportedStages & VK_SHADER_STAGE_COMPUTE_BIT)) return "not in compute shaders";
    PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesNV get =
        (PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesNV)vkGetInstanceProcAddr(
            inst, "vkGetPhysicalDeviceCooperativeMatrixPropertiesNV");
    uint32_t n = 0;
    if (!get || get(phys, &n, NULL) != VK_SUCCESS || n == 0) return "no matrix configurations reported";
    VkCooperativeMatrixPropertiesNV *p = calloc(n, sizeof *p);
    if (!p) return "out of host memory";
    for (uint32_t i = 0; i < n; i++)
        p[i].sType = VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_NV;
    int ok = 0;
    if (get(phys, &n, p) == VK_SUCCESS)
        for (uint32_t i = 0; i < n && !ok; i++)
            ok = p[i].MSize == 16 && p[i].NSize == 16 && p[i].KSize == 16 &&
                 p[i].AType == VK_COMPONENT_TYPE_FLOAT16_NV && p[i].BType == VK_COMPONENT_TYPE_FLOAT16_NV &&
                 p[i].CType == VK_COMPONENT_TYPE_FLOAT32_NV && p[i].DType == VK_COMPONENT_TYPE_FLOAT32_NV &&
                 p[i].scope == VK_SCOPE_SUBGROUP_NV;
    free(p);
    return ok ? NULL : "no 16x16x16 f16 x f16 + f32 subgroup configuration";
}

#ifdef VK_NV_cooperative_matrix2
/* 1 if phys reports a workgroup-scope configuration of wg invocations,
 * operands ab (f16 or bf16) with f32 accumulation, whose granularity
 * divides the product bn x bm x bk (M x N x K). */
static int mb_vk_cm2_config(VkInstance inst, VkPhysicalDevice phys, VkComponentTypeKHR ab,
                            uint32_t bm, uint32_t bn, uint32_t bk, uint32_t wg)
{
    PFN_vkGetPhysicalDeviceCooperativeMatrixFlexibleDimensionsPropertiesNV get =
        (PFN_vkGetPhysicalDeviceCooperativeMatrixFlexibleDimensionsPropertiesNV)vkGetInstanceProcAddr(
            inst, "vkGetPhysicalDeviceCooperativeMatrixFlexibleDimensionsPropertiesNV");
    uint32_t n = 0;
    if (!get || get(phys, &n, NULL) != VK_SUCCESS || n == 0) return 0;
    VkCooperativeMatrixFlexibleDimensionsPropertiesNV *c = calloc(n, sizeof *c);
    if (!c) return 0;
    for (uint32_t i = 0; i < n; i++)
        c[i].sType = VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_FLEXIBLE_DIMENSIONS_PROPERTIES_NV;
    int ok = 0;
    if (get(phys, &n, c) == VK_SUCCESS)
        for (uint32_t i = 0; i < n && !ok; i++)
            ok = c[i].scope == VK_SCOPE_WORKGROUP_KHR && c[i].workgroupInvocations == wg &&
                 c[i].AType == ab && c[i].BType == ab &&
                 c[i].CType == VK_COMPONENT_TYPE_FLOAT32_KHR &&
                 c[i].ResultType == VK_COMPONENT_TYPE_FLOAT32_KHR && c[i].MGranularity &&
                 bn % c[i].MGranularity == 0 && c[i].NGranularity && bm % c[i].NGranularity == 0 &&
                 c[i].KGranularity && bk % c[i].KGranularity == 0;
    free(c);
    return ok;
}

#ifdef VK_KHR_shader_bfloat16
/* 1 if moe_gemm_cm2_bf16 can run where moe_gemm_cm2 can: the shader was
 * built (GL_EXT_bfloat16), the device has VK_KHR_shader_bfloat16 with bf16
 * cooperative matrices and a bf16 x bf16 + f32 workgroup configuration for
 * the tile. */
static int mb_vk_cm2_bf16_fits(VkInstance inst, VkPhysicalDevice phys, uint32_t bm, uint32_t bn,
                               uint32_t bk, uint32_t wg)
{
    if (!mb_kvk_spirv_find("moe_gemm_cm2_bf16")) return 0;
    if (!mb_vk_has_extension(phys, VK_KHR_SHADER_BFLOAT16_EXTENSION_NAME)) return 0;
    VkPhysicalDeviceShaderBfloat16FeaturesKHR bf = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_BFLOAT16_FEATURES_KHR};
    VkPhysicalDeviceFeatures2 f = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &bf};
    vkGetPhysicalDeviceFeatures2(phys, &f);
    return bf.shaderBFloat16Type && bf.shaderBFloat16CooperativeMatrix &&
           mb_vk_cm2_config(inst, phys, VK_COMPONENT_TYPE_BFLOAT16_KHR, bm, bn, bk, wg);
}
#else
static int mb_vk_cm2_bf16_fits(VkInstance inst, VkPhysicalDevice phys, uint32_t bm, uint32_t bn,
                               uint32_t bk, uint32_t wg)
{
    (void)wg;
    (void)inst;
    (void)phys;
    (void)bm;
    (void)bn;
    (void)bk;
    return 0; /* headers that predate VK_KHR_shader_bfloat16 */
}
#endif
#endif

void mb_vk_cm2_configs_print(const mb_vk_ctx *ctx, int device)
{
#ifdef VK_NV_cooperative_matrix2
    PFN_vkGetPhysicalDeviceCooperativeMatrixFlexibleDimensionsPropertiesNV get =
        (PFN_vkGetPhysicalDeviceCooperativeMatrixFlexibleDimensionsPropertiesNV)
            vkGetInstanceProcAddr(
                ctx->instance,
                "vkGetPhysicalDeviceCooperativeMatrixFlexibleDimensionsPropertiesNV");
    uint32_t n = 0;
    if (!get || get(ctx->phys, &n, NULL) != VK_SUCCESS || n == 0) return;
    VkCooperativeMatrixFlexibleDimensionsPropertiesNV *c = calloc(n, sizeof *c);
    if (!c) return;
    for (uint32_t i = 0; i < n; i++)
        c[i].sType = VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_FLEXIBLE_DIMENSIONS_PROPERTIES_NV;
    if (get(ctx->phys, &n, c) == VK_SUCCESS)
        for (uint32_t i = 0; i < n; i++)
            if (c[i].scope == VK_SCOPE_WORKGROUP_KHR)
                fprintf(
                    stderr,
                    "vulkan:%d: cm2 workgroup configuration: %u invocations, granularity %ux%ux%u, "
                    "A/B type %d, C type %d\n",
                    device, c[i].workgroupInvocations, c[i].MGranularity, c[i].NGranularity,
                    c[i].KGranularity, (int)c[i].AType, (int)c[i].CType);
    free(c);
#else
    (void)ctx;
    (void)device;
#endif
}

/* Why moe_gemm_cm2 cannot run on phys, or NULL when it can: the shader was
 * built (a glslang with GL_NV_cooperative_matrix2: cmake/deps.cmake), the
 * device speaks Vulkan 1.3 (SPIR-V 1.6), has VK_KHR_cooperative_matrix and
 * VK_NV_cooperative_matrix2 with workgroup scope, flexible dimensions,
 * per-element operations, tensor addressing and block loads, 16-bit storage
 * buffers, shaderFloat16 and the Vulkan memory model, and reports an f16 x
 * f16 + f32 workgroup configuration for 256 invocations whose granularity
 * divides the shader's product, bn x bm x bk (M x N x K: the weights' bn
 * rows by the tile's bm grouped rows). */
static const char *mb_vk_cm2_unfit(VkInstance inst, VkPhysicalDevice phys, uint32_t bm, uint32_t bn,
                                   uint32_t bk, uint32_t wg)
{
#ifdef VK_NV_cooperative_matrix2
    if (!mb_kvk_spirv_find("moe_gemm_cm2"))
        return "moe_gemm_cm2 not built (needs a glslang with GL_NV_cooperative_matrix2: MB_GLSLANG)";
    VkPhysicalDeviceProperties pp;
    vkGetPhysicalDeviceProperties(phys, &pp);
    if (pp.apiVersion < VK_API_VERSION_1_3) return "Vulkan 1.3 needed";
    if (!mb_vk_has_extension(phys, VK_KHR_COOPERATIVE_MATRIX_EXTENSION_NAME)) return "no VK_KHR_cooperative_matrix";
    if (!mb_vk_has_extension(phys, VK_NV_COOPERATIVE_MATRIX_2_EXTENSION_NAME)) return "no VK_NV_cooperative_matrix2";
    VkPhysicalDeviceCooperativeMatrix2FeaturesNV c2 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_2_FEATURES_NV};
    VkPhysicalDeviceCooperativeMatrixFeaturesKHR c1 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_KHR, .pNext = &c2};
    VkPhysicalDeviceVulkan11Features f11 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES,
                                            .pNext = &c1};
    VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
                                            .pNext = &f11};
    VkPhysicalDeviceFeatures2 f = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &f12};
    vkGetPhysicalDeviceFeatures2(phys, &f);
    if (!c1.cooperativeMatrix) return "cooperativeMatrix (KHR) feature off";
    if (!c2.cooperativeMatrixWorkgroupScope || !c2.cooperativeMatrixFlexibleDimensions ||
        !c2.cooperativeMatrixPerElementOperations || !c2.cooperativeMatrixTensorAddressing ||
        !c2.cooperativeMatrixBlockLoads)
        return "a cooperative_matrix2 feature it needs is off";
    if (!f11.storageBuffer16BitAccess) return "no storageBuffer16BitAccess";
    if (!f12.shaderFloat16) return "no shaderFloat16";
    if (!f12.vulkanMemoryModel) return "no vulkanMemoryModel";
    VkPhysicalDeviceCooperativeMatrix2PropertiesNV cp = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_2_PROPERTIES_NV};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &cp};
    vkGetPhysicalDeviceProperties2(phys, &p2);
    if (cp.cooperativeMatrixWorkgroupScopeMaxWorkgroupSize < wg)
        return "workgroup scope below the tile's invocations";
    const uint32_t dim = bm > bn ? (bm > bk ? bm : bk) : (bn > bk ? bn : bk);
    if (cp.cooperativeMatrixFlexibleDimensionsMaxDimension < dim)
        return "flexible dimensions below the tile's";
    return mb_vk_cm2_config(inst, phys, VK_COMPONENT_TYPE_FLOAT16_KHR, bm, bn, bk, wg)
               ? NULL
               : "no f16 x f16 + f32 workgroup configuration of the tile's invocations fitting the "
                 "tile";
#else
    (void)wg;
    (void)inst;
    (void)phys;
    (void)bm;
    (void)bn;
    (void)bk;
    return "built with Vulkan headers that predate VK_NV_cooperative_matrix2";
#endif
}

mb_status mb_vk_ctx_init(mb_vk_ctx *ctx, int index, int coopmat, uint32_t cm2_tile[6],
                         int down_default, int cm2_bf16)
{
    memset(ctx, 0, sizeof *ctx);
    mb_status st = mb_vk_instance_create(&ctx->instance);
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "vulkan backend: no Vulkan driver (the loader found no usable ICD)\n");
        return st;
    }
    uint32_t n = 0;
    VkResult r = vkEnumeratePhysicalDevices(ctx->instance, &n, NULL);
    if (r != VK_SUCCESS || n == 0) {
        fprintf(stderr, "vulkan backend: no Vulkan device (the loader reports none)\n");
        return MB_STATUS_DEVICE;
    }
    if (index < 0) index = 0;
    if ((uint32_t)index >= n) {
        fprintf(stderr, "vulkan backend: no Vulkan device %d (the loader reports %u)\n", index, n);
        return MB_STATUS_DEVICE;
    }
    VkPhysicalDevice *devs = calloc(n, sizeof *devs);
    if (!devs) return MB_STATUS_NOMEM;
    vkEnumeratePhysicalDevices(ctx->instance, &n, devs);
    ctx->phys = devs[index];
    free(devs);
    vkGetPhysicalDeviceProperties(ctx->phys, &ctx->props);
    vkGetPhysicalDeviceMemoryProperties(ctx->phys, &ctx->mem_props);
    VkPhysicalDeviceMaintenance3Properties m3 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &m3};
    vkGetPhysicalDeviceProperties2(ctx->phys, &p2);
    ctx->max_alloc = m3.maxMemoryAllocationSize ? m3.maxMemoryAllocationSize : ((VkDeviceSize)1 << 30);
    const char *why = mb_vk_unfit(ctx->phys, &ctx->subgroup_size);
    if (why) {
        fprintf(stderr, "vulkan backend: device %d (%s) cannot run the expert shaders: %s\n", index,
                ctx->props.deviceName, why);
        return MB_STATUS_DEVICE;
    }

    /* A compute queue: a compute-only family when there is one (it does not
     * share the graphics engine's queue), else any with compute. */
    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(ctx->phys, &nq, NULL);
    VkQueueFamilyProperties *qf = calloc(nq ? nq : 1, sizeof *qf);
    if (!qf) return MB_STATUS_NOMEM;
    vkGetPhysicalDeviceQueueFamilyProperties(ctx->phys, &nq, qf);
    uint32_t fam = UINT32_MAX;
    for (uint32_t i = 0; i < nq; i++) {
        if (!(qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT)) continue;
        if (fam == UINT32_MAX || !(qf[i].queueFlags & VK_QUEUE_GRAPHICS_BIT)) fam = i;
        if (!(qf[i].queueFlags & VK_QUEUE_GRAPHICS_BIT)) break;
    }
    if (fam != UINT32_MAX) ctx->timestamp_bits = qf[fam].timestampValidBits;
    free(qf);
    if (fam == UINT32_MAX) {
        fprintf(stderr, "vulkan backend: device %d has no compute queue\n", index);
        return MB_STATUS_DEVICE;
    }
    ctx->queue_family = fam;
    ctx->timestamp_period = ctx->props.limits.timestampPeriod;

    const char *exts[5];
    uint32_t n_ext = 0;
    ctx->has_budget = mb_vk_has_extension(ctx->phys, VK_EXT_MEMORY_BUDGET_EXTENSION_NAME);
    if (ctx->has_budget) exts[n_ext++] = VK_EXT_MEMORY_BUDGET_EXTENSION_NAME;
    /* Host memory import (VK_KHR_external_memory, which it needs, is core
     * in 1.1). The alignment must be a power of two to round with. */
    if (mb_vk_has_extension(ctx->phys, VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME)) {
        VkPhysicalDeviceExternalMemoryHostPropertiesEXT hp = {
            .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_EXTERNAL_MEMORY_HOST_PROPERTIES_EXT};
        VkPhysicalDeviceProperties2 hp2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &hp};
        vkGetPhysicalDeviceProperties2(ctx->phys, &hp2);
        const VkDeviceSize a = hp.minImportedHostPointerAlignment;
        if (a && (a & (a - 1)) == 0) {
            ctx->has_host_import = 1;
            ctx->host_import_align = a;
            exts[n_ext++] = VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME;
        }
    }
    /* Matrix units for the tiled GEMMs: 0 off, 1 moe_gemm_coopmat
     * required, 2 moe_gemm_cm2 required, -1 moe_gemm_cm2 where usable. */
    const char *cm_why = "off (MB_VULKAN_COOPMAT=auto, 1 or 2 turns them on)";
    if (coopmat == 1) cm_why = mb_vk_coopmat_unfit(ctx->instance, ctx->phys, ctx->subgroup_size);
    if (coopmat == 2 || coopmat == -1) {
        /* Both products' tiles: gate/up's, then down's (same rows); a
         * default down tile the device cannot take becomes gate/up's. */
        cm_why = mb_vk_cm2_unfit(ctx->instance, ctx->phys, cm2_tile[0], cm2_tile[1], cm2_tile[2],
                                 cm2_tile[5]);
        const char *down_why = cm_why ? NULL
                                      : mb_vk_cm2_unfit(ctx->instance, ctx->phys, cm2_tile[0],
                                                        cm2_tile[3], cm2_tile[4], cm2_tile[5]);
        if (down_why && down_default) { /* gate/up's tile, which fits */
            cm2_tile[3] = cm2_tile[1];
            cm2_tile[4] = cm2_tile[2];
        } else if (down_why) {
            cm_why = down_why;
        }
    }
    ctx->coopmat_why = cm_why;
    if (cm_why && coopmat > 0) {
        fprintf(stderr,
                "vulkan backend: MB_VULKAN_COOPMAT=%d but device %d (%s) cannot run the cooperative-matrix GEMM: %s\n",
                coopmat, index, ctx->props.deviceName, cm_why);
        return MB_STATUS_DEVICE;
    }
    ctx->has_coopmat = cm_why ? 0 : coopmat == 1 ? 1 : 2;
    void *chain = NULL;
    VkPhysicalDeviceCooperativeMatrixFeaturesNV cmf = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_NV, .cooperativeMatrix = VK_TRUE};
    if (ctx->has_coopmat == 1) {
        exts[n_ext++] = VK_NV_COOPERATIVE_MATRIX_EXTENSION_NAME;
        chain = &cmf;
    }
#ifdef VK_NV_cooperative_matrix2
    VkPhysicalDeviceCooperativeMatrix2FeaturesNV c2f = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_2_FEATURES_NV,
        .cooperativeMatrixWorkgroupScope = VK_TRUE,
        .cooperativeMatrixFlexibleDimensions = VK_TRUE,
        .cooperativeMatrixPerElementOperations = VK_TRUE,
        .cooperativeMatrixTensorAddressing = VK_TRUE,
        .cooperativeMatrixBlockLoads = VK_TRUE};
    VkPhysicalDeviceCooperativeMatrixFeaturesKHR c1f = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_KHR,
        .pNext = &c2f,
        .cooperativeMatrix = VK_TRUE};
#ifdef VK_KHR_shader_bfloat16
    VkPhysicalDeviceShaderBfloat16FeaturesKHR bff = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_BFLOAT16_FEATURES_KHR,
        .shaderBFloat16Type = VK_TRUE,
        .shaderBFloat16CooperativeMatrix = VK_TRUE};
#endif
    if (ctx->has_coopmat == 2) {
        exts[n_ext++] = VK_KHR_COOPERATIVE_MATRIX_EXTENSION_NAME;
        exts[n_ext++] = VK_NV_COOPERATIVE_MATRIX_2_EXTENSION_NAME;
        chain = &c1f;
        ctx->cm2_bf16 = cm2_bf16 &&
                        mb_vk_cm2_bf16_fits(ctx->instance, ctx->phys, cm2_tile[0], cm2_tile[1],
                                            cm2_tile[2], cm2_tile[5]) &&
                        mb_vk_cm2_bf16_fits(ctx->instance, ctx->phys, cm2_tile[0], cm2_tile[3],
                                            cm2_tile[4], cm2_tile[5]);
#ifdef VK_KHR_shader_bfloat16
        if (ctx->cm2_bf16) {
            exts[n_ext++] = VK_KHR_SHADER_BFLOAT16_EXTENSION_NAME;
            c2f.pNext = &bff;
        }
#endif
    }
#endif
    VkPhysicalDeviceVulkan11Features f11 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES,
                                            .pNext = chain,
                                            .storageBuffer16BitAccess = ctx->has_coopmat == 2 ? VK_TRUE : VK_FALSE};
    const float prio = 1.0f;
    const VkDeviceQueueCreateInfo qci = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                         .queueFamilyIndex = fam,
                                         .queueCount = 1,
                                         .pQueuePriorities = &prio};
    VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
                                            .pNext = &f11,
                                            .shaderFloat16 = ctx->has_coopmat ? VK_TRUE : VK_FALSE,
                                            .bufferDeviceAddress = VK_TRUE,
                                            .timelineSemaphore = VK_TRUE,
                                            .vulkanMemoryModel = ctx->has_coopmat ? VK_TRUE : VK_FALSE};
    const VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &f12};
    const VkDeviceCreateInfo dci = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                                    .pNext = &f2,
                                    .queueCreateInfoCount = 1,
                                    .pQueueCreateInfos = &qci,
                                    .enabledExtensionCount = n_ext,
                                    .ppEnabledExtensionNames = exts};
    r = vkCreateDevice(ctx->phys, &dci, NULL, &ctx->dev);
    if (r != VK_SUCCESS) {
        ctx->dev = VK_NULL_HANDLE;
        st = mb_vk_fail(ctx, "vkCreateDevice", r);
        return st == MB_STATUS_BACKEND ? MB_STATUS_DEVICE : st;
    }
    vkGetDeviceQueue(ctx->dev, fam, 0, &ctx->queue);
    if (ctx->has_host_import) {
        const PFN_vkVoidFunction fn = vkGetDeviceProcAddr(ctx->dev, "vkGetMemoryHostPointerPropertiesEXT");
        ctx->host_ptr_props = (PFN_vkGetMemoryHostPointerPropertiesEXT)fn;
        if (!ctx->host_ptr_props) ctx->has_host_import = 0;
    }

    const VkPushConstantRange pcr = {.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .offset = 0, .size = MB_VK_PUSH_BYTES};
    const VkPipelineLayoutCreateInfo lci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
                                            .pushConstantRangeCount = 1,
                                            .pPushConstantRanges = &pcr};
    r = vkCreatePipelineLayout(ctx->dev, &lci, NULL, &ctx->layout);
    if (r == VK_SUCCESS) {
        const VkPipelineCacheCreateInfo cci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO};
        r = vkCreatePipelineCache(ctx->dev, &cci, NULL, &ctx->cache);
    }
    if (r != VK_SUCCESS) return mb_vk_fail(ctx, "pipeline layout", r);
    return MB_STATUS_OK;
}

void mb_vk_ctx_fini(mb_vk_ctx *ctx)
{
    if (ctx->dev) {
        vkDeviceWaitIdle(ctx->dev);
        for (int i = 0; i < ctx->n_pipelines; i++)
            vkDestroyPipeline(ctx->dev, ctx->pipelines[i].pipeline, NULL);
        if (ctx->cache) vkDestroyPipelineCache(ctx->dev, ctx->cache, NULL);
        if (ctx->layout) vkDestroyPipelineLayout(ctx->dev, ctx->layout, NULL);
        vkDestroyDevice(ctx->dev, NULL);
    }
    if (ctx->instance) vkDestroyInstance(ctx->instance, NULL);
    memset(ctx, 0, sizeof *ctx);
}

const char *mb_vk_pipeline_name(const mb_vk_ctx *ctx, VkPipeline pipeline)
{
    for (int i = 0; i < ctx->n_pipelines; i++)
        if (ctx->pipelines[i].pipeline == pipeline) return ctx->pipelines[i].shader;
    return "?";
}

mb_status mb_vk_pipeline_get(mb_vk_ctx *ctx, const char *shader, const uint32_t spec[MB_VK_SPECS], VkPipeline *out)
{
    for (int i = 0; i < ctx->n_pipelines; i++) {
        const mb_vk_pipeline *p = &ctx->pipelines[i];
        if (strcmp(p->shader, shader) == 0 && memcmp(p->spec, spec, sizeof p->spec) == 0) {
            *out = p->pipeline;
            return MB_STATUS_OK;
        }
    }
    if (ctx->n_pipelines == MB_VK_MAX_PIPELINES) return MB_STATUS_FULL;
    const mb_kvk_spirv *code = mb_kvk_spirv_find(shader);
    if (!code) {
        fprintf(stderr, "vulkan backend: shader %s is not in this build\n", shader);
        return MB_STATUS_BACKEND;
    }
    const VkShaderModuleCreateInfo mci = {.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
                                          .codeSize = code->n_words * sizeof(uint32_t),
                                          .pCode = code->words};
    VkShaderModule mod = VK_NULL_HANDLE;
    VkResult r = vkCreateShaderModule(ctx->dev, &mci, NULL, &mod);
    if (r != VK_SUCCESS) return mb_vk_fail(ctx, "vkCreateShaderModule", r);
    VkSpecializationMapEntry map[MB_VK_SPECS];
    for (uint32_t i = 0; i < MB_VK_SPECS; i++)
        map[i] = (VkSpecializationMapEntry){.constantID = i, .offset = i * 4u, .size = 4};
    const VkSpecializationInfo si = {
        .mapEntryCount = MB_VK_SPECS, .pMapEntries = map, .dataSize = MB_VK_SPECS * 4u, .pData = spec};
    const VkComputePipelineCreateInfo pci = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
                  .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                  .module = mod,
                  .pName = "main",
                  .pSpecializationInfo = &si},
        .layout = ctx->layout};
    mb_vk_pipeline *p = &ctx->pipelines[ctx->n_pipelines];
    r = vkCreateComputePipelines(ctx->dev, ctx->cache, 1, &pci, NULL, &p->pipeline);
    vkDestroyShaderModule(ctx->dev, mod, NULL);
    if (r != VK_SUCCESS) return mb_vk_fail(ctx, shader, r);
    p->shader = code->name;
    memcpy(p->spec, spec, sizeof p->spec);
    ctx->n_pipelines++;
    *out = p->pipeline;
    return MB_STATUS_OK;
}

void mb_vk_memory(mb_vk_ctx *ctx, uint64_t *total, uint64_t *avail)
{
    const uint32_t h = mb_vk_main_heap(&ctx->mem_props);
    const uint64_t heap = ctx->mem_props.memoryHeaps[h].size;
    *total = heap;
    if (ctx->has_budget) {
        VkPhysicalDeviceMemoryBudgetPropertiesEXT b = {
            .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT};
        VkPhysicalDeviceMemoryProperties2 mp = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_PROPERTIES_2,
                                                .pNext = &b};
        vkGetPhysicalDeviceMemoryProperties2(ctx->phys, &mp);
        *avail = b.heapBudget[h] > b.heapUsage[h] ? b.heapBudget[h] - b.heapUsage[h] : 0;
        return;
    }
    *avail = heap > ctx->allocated_bytes ? heap - ctx->allocated_bytes : 0;
}

void mb_vk_barrier(VkCommandBuffer cb)
{
    const VkMemoryBarrier mb = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_SHADER_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_SHADER_READ_BIT |
                         VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_INDIRECT_COMMAND_READ_BIT | VK_ACCESS_HOST_READ_BIT};
    vkCmdPipelineBarrier(cb, VK_PIPELINE_STAGE_TRANSFER_BIT | VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                         VK_PIPELINE_STAGE_TRANSFER_BIT | VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT |
                             VK_PIPELINE_STAGE_DRAW_INDIRECT_BIT | VK_PIPELINE_STAGE_HOST_BIT,
                         0, 1, &mb, 0, NULL, 0, NULL);
}
