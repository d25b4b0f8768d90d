/* Hostile shared memory: corrupted headers are refused at attach (BAD_MAGIC,
 * BAD_VERSION, CORRUPT), corrupted descriptors and counters are reported as
 * CORRUPT by the side that reads them, and the reader survives: no crash, no
 * hang, the error stays, destroy still works. */
#include <fcntl.h>
#include <stddef.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shm/ring.h"
#include "shm/segment.h"
#include "shm/shm.h"
#include "tests/unit/shm/shm_test_util.h"

static const mb_shm_options small = {.n_slots = 4, .request_bytes = 8192, .reply_bytes = 8192};

/* Rewrites one header field through the fd, tries to attach, restores it. */
static mb_status attach_with(int fd, size_t field_off, const void *val, size_t n)
{
    uint8_t saved[16];
    REQUIRE(n <= sizeof(saved));
    REQUIRE(pread(fd, saved, n, (off_t)field_off) == (ssize_t)n);
    REQUIRE(pwrite(fd, val, n, (off_t)field_off) == (ssize_t)n);
    mb_transport w;
    mb_status st = mb_shm_transport_attach(fd, &w);
    if (st == MB_STATUS_OK) mb_transport_destroy(&w);
    REQUIRE(pwrite(fd, saved, n, (off_t)field_off) == (ssize_t)n);
    return st;
}

#define ATTACH_U32(field, v) attach_with(fd, offsetof(mb_shm_header, field), &(uint32_t){v}, 4)
#define ATTACH_U64(field, v) attach_with(fd, offsetof(mb_shm_header, field), &(uint64_t){v}, 8)

static void test_header(void)
{
    mb_transport co;
    int fd = -1;
    REQUIRE(mb_shm_transport_create(&small, &co, &fd) == MB_STATUS_OK);
    mb_shm_header h;
    REQUIRE(pread(fd, &h, sizeof(h), 0) == (ssize_t)sizeof(h));
    CHECK_EQ(ATTACH_U32(magic, 0x12345678u), MB_STATUS_BAD_MAGIC);
    CHECK_EQ(ATTACH_U32(abi_version, 99), MB_STATUS_BAD_VERSION);
    CHECK_EQ(ATTACH_U32(header_bytes, 64), MB_STATUS_CORRUPT);
    CHECK_EQ(ATTACH_U32(n_rings, 3), MB_STATUS_CORRUPT);
    CHECK_EQ(ATTACH_U64(segment_bytes, h.segment_bytes * 2), MB_STATUS_CORRUPT);
    CHECK_EQ(ATTACH_U32(creator_pid, 0), MB_STATUS_CORRUPT);
    CHECK_EQ(ATTACH_U64(spin_ns, UINT64_MAX), MB_STATUS_CORRUPT);
    /* The ceiling is a worker's to enforce: one past it is refused, the
     * ceiling itself (a 20 ms spin) attaches. */
    CHECK_EQ(ATTACH_U64(spin_ns, MB_SHM_MAX_SPIN_NS + 1ull), MB_STATUS_CORRUPT);
    CHECK_EQ(ATTACH_U64(spin_ns, MB_SHM_MAX_SPIN_NS), MB_STATUS_OK);
    CHECK_EQ(ATTACH_U64(state_offset, UINT64_MAX - 8), MB_STATUS_CORRUPT);
    CHECK_EQ(ATTACH_U64(ring[0].payload_offset, UINT64_MAX - 4095), MB_STATUS_CORRUPT);
    CHECK_EQ(ATTACH_U64(ring[0].payload_bytes, UINT64_MAX - 7), MB_STATUS_CORRUPT);
    CHECK_EQ(ATTACH_U64(ring[1].payload_bytes, h.segment_bytes), MB_STATUS_CORRUPT);
    CHECK_EQ(ATTACH_U64(ring[1].payload_offset, h.ring[0].payload_offset), MB_STATUS_CORRUPT);
    CHECK_EQ(ATTACH_U64(ring[1].ctrl_offset, h.ring[0].ctrl_offset + 128), MB_STATUS_CORRUPT);
    CHECK_EQ(ATTACH_U64(ring[0].slots_offset, 8), MB_STATUS_CORRUPT);
    CHECK_EQ(ATTACH_U32(ring[0].n_slots, 3), MB_STATUS_CORRUPT);
    CHECK_EQ(ATTACH_U32(ring[0].n_slots, 1u << 30), MB_STATUS_CORRUPT);
    /* Restored: attaches. */
    mb_transport w;
    CHECK_EQ(mb_shm_transport_attach(fd, &w), MB_STATUS_OK);
    mb_transport_destroy(&w);
    mb_transport_destroy(&co);
    close(fd);

    /* Not a sealed segment: an unsealed memfd, a too small one, a pipe. */
    int raw = memfd_create("not-a-segment", MFD_CLOEXEC);
    REQUIRE(raw >= 0);
    CHECK_EQ(mb_shm_transport_attach(raw, &w), MB_STATUS_CORRUPT);
    REQUIRE(ftruncate(raw, 1 << 20) == 0);
    CHECK_EQ(mb_shm_transport_attach(raw, &w), MB_STATUS_CORRUPT);
    close(raw);
    int p[2];
    REQUIRE(pipe(p) == 0);
    CHECK_EQ(mb_shm_transport_attach(p[0], &w), MB_STATUS_CORRUPT);
    close(p[0]);
    close(p[1]);
    CHECK_EQ(mb_shm_transport_attach(-1, &w), MB_STATUS_INVALID_ARG);
}

/* The validator on random and mutated headers: it must never crash (ASan),
 * and whatever it accepts must be laid out inside the file. */
static void test_validator_fuzz(void)
{
    mb_shm_header good, h;
    REQUIRE(mb_shm_layout_compute(8, 8192, 16384, 1000, getpid(), &good) == MB_STATUS_OK);
    CHECK_EQ(mb_shm_header_validate(&good, good.segment_bytes), MB_STATUS_OK);
    CHECK_EQ(mb_shm_header_validate(&good, good.segment_bytes - 4096), MB_STATUS_CORRUPT);
    unsigned long long rng = 1;
    unsigned accepted = 0;
    for (int i = 0; i < 200000; i++) {
        h = good;
        uint8_t *b = (uint8_t *)&h;
        int flips = 1 + (int)(mb_test_rand_u64(&rng) % 4);
        for (int k = 0; k < flips; k++) {
            uint64_t r = mb_test_rand_u64(&rng);
            b[r % sizeof(h)] ^= (uint8_t)(1u << ((r >> 16) % 8));
        }
        if (mb_shm_header_validate(&h, good.segment_bytes) != MB_STATUS_OK) continue;
        accepted++;
        for (int r = 0; r < 2; r++) {
            CHECK(h.ring[r].payload_offset + h.ring[r].payload_bytes <= good.segment_bytes);
            CHECK(h.ring[r].slots_offset + h.ring[r].n_slots * 32ull <= good.segment_bytes);
        }
    }
    printf("test_shm_corrupt: validator accepted %u of 200000 mutated headers\n", accepted);
}

/* A coordinator and an attached worker in this process, plus a third mapping
 * of the segment through which the test plays the hostile peer. */
typedef struct {
    mb_transport co, wk;
    int fd;
    uint8_t *raw;
    size_t raw_bytes;
    mb_shm_header h;
} pair;

static void pair_open(pair *p)
{
    REQUIRE(mb_shm_transport_create(&small, &p->co, &p->fd) == MB_STATUS_OK);
    REQUIRE(mb_shm_transport_attach(p->fd, &p->wk) == MB_STATUS_OK);
    REQUIRE(pread(p->fd, &p->h, sizeof(p->h), 0) == (ssize_t)sizeof(p->h));
    p->raw_bytes = p->h.segment_bytes;
    p->raw = mmap(NULL, p->raw_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, p->fd, 0);
    REQUIRE(p->raw != MAP_FAILED);
}

static void pair_close(pair *p)
{
    mb_transport_destroy(&p->wk);
    mb_transport_destroy(&p->co);
    munmap(p->raw, p->raw_bytes);
    close(p->fd);
}

static mb_shm_slot *slot(pair *p, int ring, unsigned i)
{
    return (mb_shm_slot *)(void *)(p->raw + p->h.ring[ring].slots_offset) + i;
}

static mb_shm_ring_ctrl *ctrl(pair *p, int ring)
{
    return (mb_shm_ring_ctrl *)(void *)(p->raw + p->h.ring[ring].ctrl_offset);
}

static void send_one(mb_transport *t, size_t len, uint64_t seq)
{
    void *buf;
    REQUIRE(mb_transport_send_reserve(t, len, 0, &buf) == MB_STATUS_OK);
    shm_test_fill(buf, len, seq);
    REQUIRE(mb_transport_send_commit(t, len) == MB_STATUS_OK);
}

enum { F_OFFSET, F_LENGTH, F_TAG };

/* Sends one good message, overwrites one descriptor field, expects CORRUPT
 * on recv, twice (sticky), and within the poll: no wait. */
static void corrupt_field(int field, uint64_t value, const char *what)
{
    pair p;
    pair_open(&p);
    send_one(&p.co, 64, 0);
    mb_shm_slot *s = slot(&p, MB_SHM_RING_REQUEST, 0);
    _Atomic uint64_t *f = field == F_OFFSET ? &s->offset : field == F_LENGTH ? &s->length : &s->tag;
    atomic_store(f, value);
    const void *in;
    size_t len;
    mb_status st = mb_transport_recv(&p.wk, 1000000000ll, &in, &len);
    CHECK_MSG(st == MB_STATUS_CORRUPT, "%s: got %s", what, mb_status_name(st));
    CHECK_EQ(mb_transport_recv(&p.wk, 0, &in, &len), MB_STATUS_CORRUPT);
    void *buf;
    CHECK_EQ(mb_transport_send_reserve(&p.wk, 64, 0, &buf), MB_STATUS_CORRUPT);
    pair_close(&p);
}

static void test_descriptors(void)
{
    uint64_t cap = small.request_bytes;
    corrupt_field(F_OFFSET, cap + 8, "offset past the payload area");
    corrupt_field(F_OFFSET, UINT64_MAX - 7, "offset near 2^64");
    corrupt_field(F_OFFSET, 4, "misaligned offset");
    corrupt_field(F_OFFSET, cap - 32, "message crossing the end");
    corrupt_field(F_LENGTH, 1ull << 62, "huge length");
    corrupt_field(F_LENGTH, cap + 8, "length above capacity");
    corrupt_field(F_LENGTH, 8, "length below a protocol header");
    corrupt_field(F_TAG, 12345, "stale sequence tag");

    /* The good case with the same setup, for contrast. */
    pair p;
    pair_open(&p);
    send_one(&p.co, 64, 0);
    const void *in;
    size_t len;
    CHECK_EQ(mb_transport_recv(&p.wk, 0, &in, &len), MB_STATUS_OK);
    CHECK(len == 64 && shm_test_check(in, len, 0));
    mb_transport_recv_release(&p.wk);
    pair_close(&p);
}

static void test_counters(void)
{
    const void *in;
    size_t len;
    void *buf;
    /* Producer tail running more than n_slots ahead of the consumer. */
    pair p;
    pair_open(&p);
    atomic_store(&ctrl(&p, MB_SHM_RING_REQUEST)->tail, 5);
    CHECK_EQ(mb_transport_recv(&p.wk, 1000000, &in, &len), MB_STATUS_CORRUPT);
    pair_close(&p);

    /* Tail behind head (2^64 - 1 ahead, as unsigned). */
    pair_open(&p);
    atomic_store(&ctrl(&p, MB_SHM_RING_REQUEST)->tail, UINT64_MAX);
    CHECK_EQ(mb_transport_recv(&p.wk, 1000000, &in, &len), MB_STATUS_CORRUPT);
    pair_close(&p);

    /* Consumer head claiming more releases than messages sent: the producer
     * refuses to trust it. */
    pair_open(&p);
    send_one(&p.co, 64, 0);
    atomic_store(&ctrl(&p, MB_SHM_RING_REQUEST)->head, 3);
    CHECK_EQ(mb_transport_send_reserve(&p.co, 64, 1000000, &buf), MB_STATUS_CORRUPT);
    CHECK_EQ(mb_transport_recv(&p.co, 0, &in, &len), MB_STATUS_CORRUPT);
    pair_close(&p);

    /* Head moving backwards. */
    pair_open(&p);
    send_one(&p.co, 64, 0);
    REQUIRE(mb_transport_recv(&p.wk, 0, &in, &len) == MB_STATUS_OK);
    mb_transport_recv_release(&p.wk);
    send_one(&p.co, 64, 1);
    atomic_store(&ctrl(&p, MB_SHM_RING_REQUEST)->head, UINT64_MAX);
    CHECK_EQ(mb_transport_send_reserve(&p.co, 64, 0, &buf), MB_STATUS_CORRUPT);
    pair_close(&p);

    /* Garbage in the doorbells only delays wake-ups: the waits stay bounded. */
    pair_open(&p);
    atomic_store(&ctrl(&p, MB_SHM_RING_REPLY)->data.seq, 0xdeadbeefu);
    atomic_store(&ctrl(&p, MB_SHM_RING_REPLY)->data.sleeping, 0xffffffffu);
    int64_t t0 = shm_test_now_ns();
    CHECK_EQ(mb_transport_recv(&p.co, 120000000, &in, &len), MB_STATUS_TIMEOUT);
    CHECK(shm_test_now_ns() - t0 < 1000000000);
    pair_close(&p);
}

int main(void)
{
    test_header();
    test_validator_fuzz();
    test_descriptors();
    test_counters();
    return mb_test_finish("test_shm_corrupt");
}
