/* Nothing leaks: after many create/attach/watch/exchange/destroy cycles, and
 * after failing attaches, /proc/self/fd holds what it held before (ASan
 * checks the heap; a memfd has no file to unlink). */
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/shm.h"
#include "tests/unit/shm/shm_test_util.h"

static void cycle(int with_child)
{
    mb_shm_options opt = {.n_slots = 8, .request_bytes = 65536, .reply_bytes = 65536};
    mb_transport co, wk;
    int fd = -1;
    REQUIRE(mb_shm_transport_create(&opt, &co, &fd) == MB_STATUS_OK);
    pid_t pid = 0;
    if (with_child) {
        fflush(stdout);
        pid = fork();
        REQUIRE(pid >= 0);
        if (pid == 0) _exit(0);
        REQUIRE(mb_shm_transport_set_peer_pid(&co, pid) == MB_STATUS_OK);
        REQUIRE(mb_shm_transport_set_peer_pid(&co, pid) == MB_STATUS_OK); /* replaces the watch */
    }
    REQUIRE(mb_shm_transport_attach(fd, &wk) == MB_STATUS_OK);
    close(fd); /* the mappings outlive the fd */
    void *buf;
    const void *in;
    size_t len;
    REQUIRE(mb_transport_send_reserve(&co, 100, 0, &buf) == MB_STATUS_OK);
    shm_test_fill(buf, 100, 3);
    REQUIRE(mb_transport_send_commit(&co, 100) == MB_STATUS_OK);
    REQUIRE(mb_transport_recv(&wk, 0, &in, &len) == MB_STATUS_OK);
    CHECK(len == 100 && shm_test_check(in, len, 3));
    mb_transport_recv_release(&wk);
    mb_transport_destroy(&wk);
    mb_transport_destroy(&co);
    if (with_child) waitpid(pid, NULL, 0);
}

static void failing_attaches(void)
{
    mb_transport co, wk;
    int fd = -1;
    REQUIRE(mb_shm_transport_create(NULL, &co, &fd) == MB_STATUS_OK);
    uint32_t bad = 0, good;
    REQUIRE(pread(fd, &good, 4, 0) == 4);
    REQUIRE(pwrite(fd, &bad, 4, 0) == 4);
    CHECK_EQ(mb_shm_transport_attach(fd, &wk), MB_STATUS_BAD_MAGIC);
    REQUIRE(pwrite(fd, &good, 4, 0) == 4);
    mb_transport_destroy(&co);
    close(fd);
    int raw = memfd_create("unsealed", MFD_CLOEXEC);
    REQUIRE(raw >= 0);
    CHECK_EQ(mb_shm_transport_attach(raw, &wk), MB_STATUS_CORRUPT);
    close(raw);
}

int main(void)
{
    int before = shm_test_count_fds();
    REQUIRE(before > 0);
    for (int i = 0; i < 20; i++)
        cycle(i % 2);
    failing_attaches();
    int after = shm_test_count_fds();
    CHECK_EQ(after, before);
    printf("test_shm_fd_leak: %d fds before, %d after 20 cycles\n", before, after);
    return mb_test_finish("test_shm_fd_leak");
}
