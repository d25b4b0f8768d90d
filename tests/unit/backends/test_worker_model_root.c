/* The worker's limits on what a peer may make it do, on the CPU backend
 * over the in-process transport: weight files only from below its model
 * roots, with one answer (NOT_FOUND) for every refused path (missing,
 * outside, a symlink escaping, "..", a folder, a FIFO, a device), file
 * weights refused outright without a root, and the per-session memory cap
 * (a reload of a slot replaces its bytes, it does not add to them). */
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backends/backend.h"
#include "backends/worker.h"
#include "protocol/inproc.h"
#include "protocol/message.h"
#include "tests/testutil.h"

enum { D = 4 };

static char base[64], root[128];
static mb_transport caller, handler;
static mb_worker *worker;
static uint64_t next_tag = 1;
static unsigned char msg[8192] __attribute__((aligned(64)));

static mb_status handle(void *ctx, const void *m, size_t len)
{
    return mb_worker_handle(ctx, m, len);
}

/* Sends m and returns the status of its reply. */
static mb_status call(size_t len)
{
    REQUIRE(mb_transport_send_copy(&caller, msg, len, 0) == MB_STATUS_OK);
    const void *rep = NULL;
    size_t rlen = 0;
    REQUIRE(mb_transport_recv(&caller, 0, &rep, &rlen) == MB_STATUS_OK);
    mb_proto_header h;
    REQUIRE(mb_proto_decode_header(rep, rlen, &h) == MB_STATUS_OK);
    mb_transport_recv_release(&caller);
    return (mb_status)h.status;
}

static mb_status load_file(const char *path, uint32_t slot)
{
    mb_proto_load_expert le;
    memset(&le, 0, sizeof le);
    le.slot = slot;
    le.d_model = le.d_ff = D;
    le.wdtype[0] = le.wdtype[1] = le.wdtype[2] = MB_DTYPE_F32;
    le.source = MB_WEIGHTS_FILE;
    le.path = path;
    le.path_len = (uint32_t)strlen(path);
    for (int i = 0; i < 3; i++) {
        le.bytes[i] = D * D * sizeof(float);
        le.offset[i] = (uint64_t)i * le.bytes[i];
    }
    size_t len = 0;
    REQUIRE(mb_proto_encode_load_expert(msg, sizeof msg, next_tag++, &le, &len) == MB_STATUS_OK);
    return call(len);
}

static mb_status load_inline(uint32_t slot, uint32_t d)
{
    static float w[64 * 64];
    mb_proto_load_expert le;
    memset(&le, 0, sizeof le);
    le.slot = slot;
    le.layer = slot; /* one layer per slot: shapes may differ */
    le.d_model = le.d_ff = d;
    le.wdtype[0] = le.wdtype[1] = le.wdtype[2] = MB_DTYPE_F32;
    le.source = MB_WEIGHTS_INLINE;
    for (int i = 0; i < 3; i++) {
        le.bytes[i] = (uint64_t)d * d * sizeof(float);
        le.data[i] = w;
    }
    size_t len = 0;
    REQUIRE(mb_proto_encode_load_expert(msg, sizeof msg, next_tag++, &le, &len) == MB_STATUS_OK);
    return call(len);
}

static void write_file(const char *path, size_t bytes)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    REQUIRE(fd >= 0);
    static unsigned char zeros[4096];
    while (bytes) {
        size_t n = bytes < sizeof zeros ? bytes : sizeof zeros;
        REQUIRE(write(fd, zeros, n) == (ssize_t)n);
        bytes -= n;
    }
    close(fd);
}

/* A worker on a fresh CPU backend; roots may be NULL. */
static mb_backend *start(const char *const *roots, unsigned n_roots, uint64_t max_memory, mb_worker_config *wc)
{
    mb_backend_cpu_options copt = {.n_threads = 1, .numa = MB_NUMA_DEFAULT};
    mb_backend_config bcfg = {.device = -1, .max_slots = 16, .options = &copt};
    mb_backend *b = NULL;
    REQUIRE(mb_backend_open(mb_backend_find("cpu"), &bcfg, &b) == MB_STATUS_OK);
    REQUIRE(mb_inproc_transport_create(&caller, &handler) == MB_STATUS_OK);
    *wc = (mb_worker_config){.backend = b, .transport = &handler, .model_roots = roots, .n_model_roots = n_roots,
                             .max_memory_bytes = max_memory, .name = "test"};
    REQUIRE(mb_worker_create(wc, &worker) == MB_STATUS_OK);
    mb_inproc_transport_set_handler(&caller, handle, worker);
    return b;
}

static void stop(mb_backend *b)
{
    mb_worker_destroy(worker);
    mb_transport_destroy(&caller);
    mb_backend_close(b);
}

static void test_roots(void)
{
    char p[256], real_root[256];
    char *resolved = NULL;
    REQUIRE(mb_worker_root_resolve(root, &resolved) == MB_STATUS_OK);
    snprintf(real_root, sizeof real_root, "%s", resolved);
    free(resolved);
    snprintf(p, sizeof p, "%s/w.bin", root);
    CHECK_EQ(mb_worker_root_resolve(p, &resolved), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_worker_root_resolve("/nonexistent/mb-root", &resolved), MB_STATUS_NOT_FOUND);

    const char *roots[] = {real_root};
    mb_worker_config wc;
    mb_backend *b = start(roots, 1, 0, &wc);

    snprintf(p, sizeof p, "%s/w.bin", root);
    CHECK_EQ(load_file(p, 0), MB_STATUS_OK);
    snprintf(p, sizeof p, "%s/sub/../w.bin", root);
    CHECK_EQ(load_file(p, 1), MB_STATUS_OK);
    snprintf(p, sizeof p, "%s/inner-link", root); /* a symlink that stays inside */
    CHECK_EQ(load_file(p, 2), MB_STATUS_OK);

    /* Every refusal is the same answer. */
    const char *refused[] = {"%s/missing.bin", "%s/escape", "%s/../outside.bin", "%s/sub", "%s/fifo", "%s/dev-null",
                             "%s", "%s/small.bin-dir-escape"};
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        snprintf(p, sizeof p, refused[i], root);
        mb_status st = load_file(p, 3);
        CHECK_MSG(st == MB_STATUS_NOT_FOUND, "%s: %s", p, mb_status_str(st));
    }
    snprintf(p, sizeof p, "%s/outside.bin", base);
    CHECK_EQ(load_file(p, 3), MB_STATUS_NOT_FOUND);
    CHECK_EQ(load_file("/etc/passwd", 3), MB_STATUS_NOT_FOUND);
    CHECK_EQ(load_file("relative/w.bin", 3), MB_STATUS_NOT_FOUND);
    /* A region past the end of an allowed file is a length error. */
    snprintf(p, sizeof p, "%s/small.bin", root);
    CHECK_EQ(load_file(p, 3), MB_STATUS_BAD_LENGTH);
    stop(b);

    /* No root: no file weights at all, whatever the path. */
    b = start(NULL, 0, 0, &wc);
    snprintf(p, sizeof p, "%s/w.bin", root);
    CHECK_EQ(load_file(p, 0), MB_STATUS_UNSUPPORTED);
    CHECK_EQ(load_file("/etc/passwd", 0), MB_STATUS_UNSUPPORTED);
    stop(b);
}

static void test_memory_cap(void)
{
    const uint64_t expert = 3 * 8 * 8 * sizeof(float); /* 768 bytes at d = 8 */
    mb_worker_config wc;
    mb_backend *b = start(NULL, 0, 2 * expert, &wc);
    CHECK_EQ(load_inline(0, 8), MB_STATUS_OK);
    CHECK_EQ(load_inline(1, 8), MB_STATUS_OK);
    CHECK_EQ(load_inline(2, 8), MB_STATUS_NOMEM); /* a third is over the cap */
    CHECK_EQ(load_inline(1, 8), MB_STATUS_OK);    /* a reload replaces */
    CHECK_EQ(load_inline(1, 4), MB_STATUS_OK);    /* and may shrink */
    CHECK_EQ(load_inline(2, 4), MB_STATUS_OK);    /* which frees room */
    stop(b);
    CHECK(mb_worker_mem_available_bytes() > 0);
}

int main(void)
{
    snprintf(base, sizeof base, "/tmp/mb-root-test-XXXXXX");
    REQUIRE(mkdtemp(base));
    snprintf(root, sizeof root, "%s/root", base);
    char p[256], q[256];
    REQUIRE(mkdir(root, 0755) == 0);
    snprintf(p, sizeof p, "%s/sub", root);
    REQUIRE(mkdir(p, 0755) == 0);
    snprintf(p, sizeof p, "%s/w.bin", root);
    write_file(p, 3 * D * D * sizeof(float));
    snprintf(p, sizeof p, "%s/small.bin", root);
    write_file(p, 16);
    snprintf(p, sizeof p, "%s/outside.bin", base);
    write_file(p, 3 * D * D * sizeof(float));
    snprintf(q, sizeof q, "%s/escape", root);
    REQUIRE(symlink(p, q) == 0);
    snprintf(q, sizeof q, "%s/small.bin-dir-escape", root);
    REQUIRE(symlink(base, q) == 0);
    snprintf(p, sizeof p, "%s/w.bin", root);
    snprintf(q, sizeof q, "%s/inner-link", root);
    REQUIRE(symlink(p, q) == 0);
    snprintf(q, sizeof q, "%s/fifo", root);
    REQUIRE(mkfifo(q, 0644) == 0);
    snprintf(q, sizeof q, "%s/dev-null", root);
    REQUIRE(symlink("/dev/null", q) == 0);

    test_roots();
    test_memory_cap();

    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", base);
    return mb_test_finish("test_worker_model_root");
}
