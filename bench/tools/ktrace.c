// A kernel timeline of any CUDA program, for the decode step's anatomy:
// what each kernel of a replayed graph takes on the device and what lies
// between one kernel's end and the next one's start (launch dependencies,
// copies). Loaded by the CUDA driver itself through CUPTI's injection hook:
//   CUDA_INJECTION64_PATH=build/bench/libmb_ktrace.so MB_KTRACE_OUT=t.csv prog ...
// writes one CSV row per kernel, copy and memset (start and end in ns of the
// device's clock, stream, graph and node ids, grid and block), in the order
// CUPTI hands the records over; bench/tools/ktrace_steps.py sorts them and
// summarises a decode step. Built only where the toolkit has CUPTI.
#include <cupti.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MB_KT_BUF (8u << 20)

static FILE *mb_kt_out;
static pthread_mutex_t mb_kt_lock = PTHREAD_MUTEX_INITIALIZER;

static void CUPTIAPI mb_kt_requested(uint8_t **buf, size_t *size, size_t *max_records)
{
    // CUPTI wants 8-byte aligned buffers.
    *buf = aligned_alloc(8, MB_KT_BUF);
    *size = *buf ? MB_KT_BUF : 0;
    *max_records = 0;
}

// A kernel's name may hold commas (template arguments): quoted, with any
// quote doubled, as CSV has it.
static void mb_kt_name(const char *name)
{
    fputc('"', mb_kt_out);
    for (const char *p = name ? name : "?"; *p; p++) {
        if (*p == '"') fputc('"', mb_kt_out);
        fputc(*p, mb_kt_out);
    }
    fputc('"', mb_kt_out);
}

static void CUPTIAPI mb_kt_completed(CUcontext ctx, uint32_t stream, uint8_t *buf, size_t size,
                                     size_t valid)
{
    (void)ctx;
    (void)stream;
    (void)size;
    CUpti_Activity *rec = NULL;
    pthread_mutex_lock(&mb_kt_lock);
    while (mb_kt_out && cuptiActivityGetNextRecord(buf, valid, &rec) == CUPTI_SUCCESS) {
        if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL ||
            rec->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
            const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)rec;
            fputs("kernel,", mb_kt_out);
            mb_kt_name(k->name);
            fprintf(mb_kt_out, ",%llu,%llu,%u,%u,%llu,%d,%d,%d,%d\n", (unsigned long long)k->start,
                    (unsigned long long)k->end, k->streamId, k->graphId,
                    (unsigned long long)k->graphNodeId, k->gridX * k->gridY * k->gridZ,
                    k->blockX * k->blockY * k->blockZ, k->dynamicSharedMemory,
                    k->staticSharedMemory);
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
            const CUpti_ActivityMemcpy6 *m = (const CUpti_ActivityMemcpy6 *)rec;
            fprintf(mb_kt_out, "memcpy,\"copy kind %u\",%llu,%llu,%u,%u,%llu,%llu,0,0,0\n",
                    m->copyKind, (unsigned long long)m->start, (unsigned long long)m->end,
                    m->streamId, m->graphId, (unsigned long long)m->graphNodeId,
                    (unsigned long long)m->bytes);
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
            const CUpti_ActivityMemset4 *m = (const CUpti_ActivityMemset4 *)rec;
            fprintf(mb_kt_out, "memset,\"memset\",%llu,%llu,%u,%u,%llu,%llu,0,0,0\n",
                    (unsigned long long)m->start, (unsigned long long)m->end, m->streamId,
                    m->graphId, (unsigned long long)m->graphNodeId, (unsigned long long)m->bytes);
        }
    }
    size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(NULL, stream, &dropped) == CUPTI_SUCCESS && dropped &&
        mb_kt_out)
        fprintf(stderr, "ktrace: %zu records dropped\n", dropped);
    pthread_mutex_unlock(&mb_kt_lock);
    free(buf);
}

static void mb_kt_exit(void)
{
    cuptiActivityFlushAll(1);
    pthread_mutex_lock(&mb_kt_lock);
    if (mb_kt_out) fclose(mb_kt_out);
    mb_kt_out = NULL;
    pthread_mutex_unlock(&mb_kt_lock);
}

static int mb_kt_check(CUptiResult r, const char *what)
{
    if (r == CUPTI_SUCCESS) return 0;
    const char *msg = NULL;
    cuptiGetResultString(r, &msg);
    fprintf(stderr, "ktrace: %s failed: %s\n", what, msg ? msg : "?");
    return -1;
}

// Called by the CUDA driver when CUDA_INJECTION64_PATH names this library.
// Only the first process to load it traces (a worker a program spawns
// inherits the variable): the file is opened exclusively.
int InitializeInjection(void);
int InitializeInjection(void)
{
    const char *path = getenv("MB_KTRACE_OUT");
    char dflt[64];
    if (!path) {
        snprintf(dflt, sizeof dflt, "ktrace-%ld.csv", (long)getpid());
        path = dflt;
    }
    mb_kt_out = fopen(path, "wx");
    if (!mb_kt_out) return 1; // taken by another process: not traced, runs as usual
    fputs("kind,name,start,end,stream,graph,node,grid_or_bytes,block,dyn_smem,static_smem\n",
          mb_kt_out);
    if (mb_kt_check(cuptiActivityRegisterCallbacks(mb_kt_requested, mb_kt_completed),
                    "register callbacks") ||
        mb_kt_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enable kernels") ||
        mb_kt_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY), "enable copies") ||
        mb_kt_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET), "enable memsets")) {
        fclose(mb_kt_out);
        mb_kt_out = NULL;
        return 1;
    }
    atexit(mb_kt_exit);
    return 1;
}
