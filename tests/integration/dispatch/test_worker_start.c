/* A spawned worker that cannot start says why, and the coordinator's error
 * carries that reason rather than only "worker died": a backend this build
 * lacks ("this build has no CUDA backend"), a device that is missing ("no
 * CUDA device", "no such NUMA node"). Over shared memory and ZeroMQ ipc,
 * each failure reported within seconds, not after the handshake timeout. */
#include <string.h>

#include "broker/link.h"
#include "tests/testutil.h"

static const int64_t timeout_ns = 20000000000LL;

/* Spawns spec; returns 1 when it failed with one of the reasons given. */
static void expect_failure(const char *backend, int device, mb_link_kind kind, const char *reason1,
                           const char *reason2)
{
    mb_link_spec spec = {.backend = backend, .device = device, .max_slots = 64};
    mb_link l;
    char err[512] = "";
    uint64_t t0 = mb_now_ns();
    mb_status st = mb_link_spawn(&spec, kind, 0, timeout_ns, &l, err, sizeof err);
    double secs = (double)(mb_now_ns() - t0) / 1e9;
    if (st == MB_STATUS_OK) {
        /* This build and machine have the device: nothing to refuse. */
        fprintf(stderr, "note: %s:%d started here; its failure path is not exercised\n", backend, device);
        mb_link_close(&l);
        return;
    }
    CHECK_MSG(strstr(err, reason1) || (reason2 && strstr(err, reason2)), "%s:%d: %s (%s)", backend, device, err,
              mb_status_name(st));
    CHECK_MSG(!strstr(err, "worker died"), "%s", err);
    CHECK_MSG(st == MB_STATUS_UNSUPPORTED || st == MB_STATUS_DEVICE, "%s", mb_status_name(st));
    CHECK_MSG(secs < 10, "%s:%d took %.1f s to fail", backend, device, secs);
}

int main(void)
{
    const mb_link_kind kinds[2] = {MB_LINK_SPAWNED_SHM, MB_LINK_SPAWNED_ZMQ};
    for (int k = 0; k < 2; k++) {
        expect_failure("cuda", 0, kinds[k], "this build has no CUDA backend", "no CUDA device");
        expect_failure("vulkan", 0, kinds[k], "this build has no Vulkan backend", "no Vulkan device");
        expect_failure("cpu", 4000, kinds[k], "cannot open backend cpu:4000: no such NUMA node", NULL);
    }
    return mb_test_finish("test_worker_start");
}
