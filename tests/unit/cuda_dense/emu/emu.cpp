// The emulator's scheduler, a CUDA runtime on host memory and a cuBLAS
// GEMM (see emu.h and run.sh).
#include "emu.h"

#include <cublas_api.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <ctime>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

extern "C" {
uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
int warpSize = 32;
}

enum { READY, WAIT_WARP, WAIT_BLOCK, DONE };
static const size_t STACK = 512 << 10;

// Switches stacks: saves the callee-saved registers on the current stack,
// stores its pointer in *from and resumes the stack `to` (x86-64 SysV).
extern "C" void emu_switch(void **from, void *to);
asm(R"(
.text
.globl emu_switch
.type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
)");

struct fiber {
    void *sp;
    char *stack = nullptr;
    int state = DONE;
};
static std::vector<fiber> fibers;
static void *sched_sp;
static int cur;
static const std::function<void()> *body;
static dim3 cfg_grid, cfg_block;
static size_t cfg_smem;
static std::vector<unsigned char> dyn_smem;
static unsigned char xbuf[32][32][8];
static const void *sched_bottom;
static size_t sched_size;
static long n_launches;

static void die(const char *what)
{
    fprintf(stderr, "EMU: %s (block %u,%u,%u thread %d)\n", what, blockIdx.x, blockIdx.y, blockIdx.z, cur);
    abort();
}

static void to_sched(bool finished)
{
#if EMU_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(finished ? nullptr : &fake, sched_bottom, sched_size);
#endif
    if (finished) {
        void *dead;
        emu_switch(&dead, sched_sp); // never resumed
    }
    emu_switch(&fibers[cur].sp, sched_sp);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, &sched_bottom, &sched_size);
#endif
}

static void fiber_main()
{
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &sched_bottom, &sched_size);
#endif
    (*body)();
    fibers[cur].state = DONE;
    to_sched(true);
}

void mb_emu_cfg(dim3 grid, dim3 block, size_t smem, cudaStream_t)
{
    cfg_grid = grid;
    cfg_block = block;
    cfg_smem = smem;
}

void *mb_emu_dyn_smem() { return dyn_smem.data(); }
int mb_emu_lane() { return cur & 31; }
unsigned long long mb_emu_now_ns()
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}
int mb_emu_warp() { return cur >> 5; }

static void wait(int kind)
{
    fibers[cur].state = kind;
    to_sched(false);
}

void __syncthreads() { wait(WAIT_BLOCK); }
void __syncwarp(unsigned) { wait(WAIT_WARP); }

void mb_emu_xchg(const void *v, void *out, size_t bytes, int src_lane)
{
    const int warp = cur >> 5, lane = cur & 31;
    memcpy(xbuf[warp][lane], v, bytes);
    wait(WAIT_WARP);
    const int src = warp * 32 + src_lane;
    if (src >= (int)fibers.size() || fibers[src].state == DONE) die("shuffle reads an exited or missing lane");
    memcpy(out, xbuf[warp][src_lane], bytes);
    wait(WAIT_WARP);
}

// All 32 lanes' `bytes` (<= 64) in lane order, for emulated warp-wide
// instructions (dense_mma.cuh).
void mb_emu_gather(const void *mine, void *all, size_t bytes)
{
    static unsigned char gbuf[32][32][64];
    const int warp = cur >> 5, lane = cur & 31;
    if (bytes > 64) die("gather too large");
    memcpy(gbuf[warp][lane], mine, bytes);
    wait(WAIT_WARP);
    for (int l = 0; l < 32; l++) {
        if (warp * 32 + l >= (int)fibers.size() || fibers[warp * 32 + l].state == DONE)
            die("warp-wide instruction with an exited lane");
        memcpy((char *)all + l * bytes, gbuf[warp][l], bytes);
    }
    wait(WAIT_WARP);
}

static void run_block(int nt)
{
    for (int i = 0; i < nt; i++) {
        fiber &f = fibers[i];
        // The first switch "returns" into fiber_main with the stack aligned
        // as after a call.
        void **sp = (void **)(f.stack + STACK - 16);
        *sp = (void *)fiber_main;
        sp -= 6;
        memset(sp, 0, 6 * sizeof(void *));
        f.sp = sp;
        f.state = READY;
    }
    for (;;) {
        for (int i = 0; i < nt; i++) {
            if (fibers[i].state != READY) continue;
            cur = i;
            threadIdx = make_uint3((unsigned)i % cfg_block.x, (unsigned)i / cfg_block.x % cfg_block.y,
                                   (unsigned)i / (cfg_block.x * cfg_block.y));
#if EMU_ASAN
            void *fake = nullptr;
            __sanitizer_start_switch_fiber(&fake, fibers[i].stack, STACK);
#endif
            emu_switch(&sched_sp, fibers[i].sp);
#if EMU_ASAN
            __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
        }
        // Every fiber now waits or is done: release what can pass.
        bool all_done = true, any_block = false, released = false;
        for (int i = 0; i < nt; i++) {
            all_done &= fibers[i].state == DONE;
            any_block |= fibers[i].state == WAIT_BLOCK;
        }
        if (all_done) return;
        for (int w = 0; w * 32 < nt; w++) {
            bool all = true, any = false;
            for (int i = w * 32; i < nt && i < w * 32 + 32; i++) {
                all &= fibers[i].state == WAIT_WARP || fibers[i].state == DONE;
                any |= fibers[i].state == WAIT_WARP;
            }
            if (all && any) {
                for (int i = w * 32; i < nt && i < w * 32 + 32; i++)
                    if (fibers[i].state == WAIT_WARP) fibers[i].state = READY;
                released = true;
            }
        }
        if (released) continue;
        if (any_block) {
            for (int i = 0; i < nt; i++)
                if (fibers[i].state == WAIT_WARP) die("block barrier while a warp waits at a warp barrier");
            for (int i = 0; i < nt; i++)
                if (fibers[i].state == WAIT_BLOCK) fibers[i].state = READY;
            continue;
        }
        die("deadlock: lanes of a warp wait at different barriers");
    }
}

void mb_emu_run(const std::function<void()> &b)
{
    const int nt = (int)(cfg_block.x * cfg_block.y * cfg_block.z);
    if (nt <= 0 || nt > 1024) die("block size");
    if (cfg_grid.x == 0 || cfg_grid.y == 0 || cfg_grid.z == 0 || cfg_grid.y > 65535 || cfg_grid.z > 65535)
        die("grid size");
    if (cfg_smem > 227 * 1024) die("dynamic shared memory above 227 KiB");
    n_launches++;
    if ((int)fibers.size() < nt) {
        size_t old = fibers.size();
        fibers.resize(nt);
        for (size_t i = old; i < fibers.size(); i++)
            fibers[i].stack = (char *)aligned_alloc(64, STACK);
    }
    for (size_t i = nt; i < fibers.size(); i++)
        fibers[i].state = DONE;
    body = &b;
    blockDim = cfg_block;
    gridDim = cfg_grid;
    dyn_smem.assign(cfg_smem + 16, 0xff); // NaN garbage: reads before writes show
    // MB_EMU_BLOCKS=reverse runs the grid's blocks last to first: a kernel
    // where the last block to finish does extra work (a counter) then has
    // a different block do it, as a GPU may.
    static const int rev = getenv("MB_EMU_BLOCKS") && !strcmp(getenv("MB_EMU_BLOCKS"), "reverse");
    const size_t nb = (size_t)cfg_grid.x * cfg_grid.y * cfg_grid.z;
    for (size_t i = 0; i < nb; i++) {
        const size_t b = rev ? nb - 1 - i : i;
        blockIdx = make_uint3((unsigned)(b % cfg_grid.x), (unsigned)(b / cfg_grid.x % cfg_grid.y),
                              (unsigned)(b / ((size_t)cfg_grid.x * cfg_grid.y)));
        run_block(nt);
    }
}

// ---- runtime ---------------------------------------------------------------
extern "C" {
cudaError_t cudaMalloc(void **p, size_t bytes)
{
    *p = aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (*p) memset(*p, 0xff, bytes); // device memory starts as garbage
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void *p)
{
    free(p);
    return cudaSuccess;
}
// Pinned host memory: plain host memory the kernels reach like any other.
cudaError_t cudaMallocHost(void **p, size_t bytes) { return cudaMalloc(p, bytes); }
cudaError_t cudaFreeHost(void *p) { return cudaFree(p); }
cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind)
{
    memcpy(d, s, n);
    return cudaSuccess;
}
cudaError_t cudaMemset(void *d, int v, size_t n)
{
    memset(d, v, n);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind, cudaStream_t)
{
    memcpy(d, s, n);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t)
{
    memset(d, v, n);
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *s)
{
    *s = (cudaStream_t)malloc(8);
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    free(s);
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
// What backends/cuda/*.c calls besides (run.sh's backend mode): pinned
// memory is host memory, every stream and event is complete at once, graphs
// are refused (the backend then launches directly).
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int) { return cudaStreamCreate(s); }
cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned int) { return cudaMalloc(p, bytes); }
cudaError_t cudaHostGetDevicePointer(void **d, void *h, unsigned int)
{
    *d = h;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b)
{
    *free_b = (size_t)8 << 30;
    *total_b = (size_t)16 << 30;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d)
{
    if (d != 0) return cudaErrorInvalidDevice;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "CPU emulator");
    p->multiProcessorCount = 1;
    return cudaSuccess;
}
// An H100's SM count and shared memory, so that what is sized by them (the
// staged GEMV) takes its GPU shapes.
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d)
{
    if (d != 0) return cudaErrorInvalidDevice;
    *v = a == cudaDevAttrMultiProcessorCount            ? 132
         : a == cudaDevAttrComputeCapabilityMajor       ? 9
         : a == cudaDevAttrMaxSharedMemoryPerBlockOptin ? 227 * 1024
                                                        : 0;
    return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int) { return cudaEventCreate(e); }
cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode) { return cudaErrorNotSupported; }
cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t *g)
{
    *g = nullptr;
    return cudaErrorNotSupported;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *, cudaGraph_t, unsigned long long) { return cudaErrorNotSupported; }
cudaError_t cudaGraphLaunch(cudaGraphExec_t, cudaStream_t) { return cudaErrorNotSupported; }
cudaError_t cudaGraphDestroy(cudaGraph_t) { return cudaSuccess; }
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaGetDeviceCount(int *n)
{
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int *d)
{
    *d = 0;
    return cudaSuccess;
}
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char *cudaGetErrorString(cudaError_t e) { return e ? "emulated error" : "no error"; }
cudaError_t cudaFuncSetAttribute(const void *, enum cudaFuncAttribute, int v)
{
    return v <= 227 * 1024 ? cudaSuccess : cudaErrorInvalidValue;
}
cudaError_t cudaEventCreate(cudaEvent_t *e)
{
    *e = (cudaEvent_t)malloc(8);
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t, cudaEvent_t)
{
    *ms = 1.0f;
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    free(e);
    return cudaSuccess;
}
}

// kernels/cuda/moe_launch.cu's, which the test prints errors with (weak:
// the quant mode builds moe_launch.cu itself).
extern "C" __attribute__((weak)) const char *mb_kcuda_error_str(int err)
{
    return cudaGetErrorString((cudaError_t)err);
}

// ---- cuBLAS ----------------------------------------------------------------
// What kernels/cuda/moe_cublas.cu loads: cublasGemmEx with 16-bit A and B
// (f16 or bf16), f32 C, column-major as cuBLAS is, summed in double.
static float emu_blas_ld(const void *p, cudaDataType_t t, size_t i)
{
    if (t == CUDA_R_32F) return ((const float *)p)[i];
    if (t == CUDA_R_16BF) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    return __half2float(((const __half *)p)[i]);
}
static cublasStatus_t emu_blas_create(cublasHandle_t *h)
{
    *h = (cublasHandle_t)malloc(8);
    return CUBLAS_STATUS_SUCCESS;
}
static cublasStatus_t emu_blas_destroy(cublasHandle_t h)
{
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}
static cublasStatus_t emu_blas_stream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
static cublasStatus_t emu_blas_gemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                    const void *alpha, const void *A, cudaDataType_t at, int lda, const void *B,
                                    cudaDataType_t bt, int ldb, const void *beta, void *C, cudaDataType_t ct, int ldc,
                                    cublasComputeType_t, cublasGemmAlgo_t)
{
    if (ct != CUDA_R_32F || (at != CUDA_R_16F && at != CUDA_R_16BF) || at != bt) return CUBLAS_STATUS_NOT_SUPPORTED;
    const float a = *(const float *)alpha, b = *(const float *)beta;
    float *c = (float *)C;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0;
            for (int l = 0; l < k; l++) {
                const size_t ia = ta == CUBLAS_OP_N ? (size_t)i + (size_t)l * lda : (size_t)l + (size_t)i * lda;
                const size_t ib = tb == CUBLAS_OP_N ? (size_t)l + (size_t)j * ldb : (size_t)j + (size_t)l * ldb;
                s += (double)emu_blas_ld(A, at, ia) * emu_blas_ld(B, bt, ib);
            }
            float &o = c[(size_t)i + (size_t)j * ldc];
            o = (float)(a * s) + (b != 0.0f ? b * o : 0.0f);
        }
    return CUBLAS_STATUS_SUCCESS;
}
static int emu_blas_handle;
void *mb_emu_dlopen(const char *name, int) { return strstr(name, "cublas") ? &emu_blas_handle : nullptr; }
void *mb_emu_dlsym(void *, const char *sym)
{
    if (!strcmp(sym, "cublasCreate_v2")) return (void *)emu_blas_create;
    if (!strcmp(sym, "cublasDestroy_v2")) return (void *)emu_blas_destroy;
    if (!strcmp(sym, "cublasSetStream_v2")) return (void *)emu_blas_stream;
    if (!strcmp(sym, "cublasGemmEx")) return (void *)emu_blas_gemm;
    return nullptr;
}
int mb_emu_dlclose(void *) { return 0; }
