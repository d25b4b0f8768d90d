/* Creates, validates and maps the shared segment: a sealed memfd whose
 * header is checked field by field, with overflow-checked arithmetic, before
 * any pointer into it is formed. */
#include "shm/segment.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shm/ring.h"

_Static_assert(sizeof(mb_shm_ring_layout) == 40, "ring layout is ABI");
_Static_assert(sizeof(mb_shm_header) == 128, "header is ABI");
_Static_assert(sizeof(mb_shm_state) == MB_SHM_LINE_BYTES, "state is one line");
_Static_assert(MB_SHM_STATE_OFFSET >= sizeof(mb_shm_header), "state after the header");
_Static_assert(MB_SHM_STATE_OFFSET + sizeof(mb_shm_state) <= MB_SHM_PAGE_BYTES, "state in page 0");
_Static_assert(sizeof(mb_shm_ring_ctrl) == 4 * MB_SHM_LINE_BYTES, "ring control is ABI");
_Static_assert(sizeof(mb_shm_slot) == 32, "slot is ABI");
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2 && ATOMIC_INT_LOCK_FREE == 2,
               "atomics shared across processes must be lock-free");

/* *off = round_up(*off, align) + len, overflow-checked; returns the start. */
static int mb_shm_place(uint64_t *off, uint64_t len, uint64_t align, uint64_t *start)
{
    uint64_t s = *off;
    if (s > UINT64_MAX - (align - 1)) return 0;
    s = (s + align - 1) & ~(align - 1);
    if (len > UINT64_MAX - s) return 0;
    *start = s;
    *off = s + len;
    return 1;
}

mb_status mb_shm_layout_compute(uint32_t n_slots, uint64_t request_bytes, uint64_t reply_bytes,
                                uint64_t spin_ns, pid_t creator_pid, mb_shm_header *hdr)
{
    mb_shm_header h;
    memset(&h, 0, sizeof(h));
    h.magic = MB_SHM_MAGIC;
    h.abi_version = MB_SHM_ABI_VERSION;
    h.header_bytes = sizeof(mb_shm_header);
    h.line_bytes = MB_SHM_LINE_BYTES;
    h.creator_pid = (int32_t)creator_pid;
    h.n_rings = MB_SHM_N_RINGS;
    h.spin_ns = spin_ns;
    h.state_offset = MB_SHM_STATE_OFFSET;
    h.ring[MB_SHM_RING_REQUEST].payload_bytes = request_bytes;
    h.ring[MB_SHM_RING_REPLY].payload_bytes = reply_bytes;

    uint64_t off = MB_SHM_PAGE_BYTES; /* page 0: header and state */
    for (unsigned i = 0; i < MB_SHM_N_RINGS; i++) {
        h.ring[i].n_slots = n_slots;
        if (!mb_shm_place(&off, sizeof(mb_shm_ring_ctrl), MB_SHM_LINE_BYTES,
                          &h.ring[i].ctrl_offset))
            return MB_STATUS_OVERFLOW;
    }
    for (unsigned i = 0; i < MB_SHM_N_RINGS; i++) {
        uint64_t slot_bytes = (uint64_t)n_slots * sizeof(mb_shm_slot); /* n_slots < 2^32: no wrap */
        if (!mb_shm_place(&off, slot_bytes, MB_SHM_LINE_BYTES, &h.ring[i].slots_offset))
            return MB_STATUS_OVERFLOW;
    }
    for (unsigned i = 0; i < MB_SHM_N_RINGS; i++) {
        if (!mb_shm_place(&off, h.ring[i].payload_bytes, MB_SHM_PAGE_BYTES,
                          &h.ring[i].payload_offset))
            return MB_STATUS_OVERFLOW;
    }
    uint64_t end = 0;
    if (!mb_shm_place(&off, 0, MB_SHM_PAGE_BYTES, &end) || end > (uint64_t)SIZE_MAX ||
        end > (uint64_t)INT64_MAX)
        return MB_STATUS_OVERFLOW;
    h.segment_bytes = end;
    *hdr = h;
    return MB_STATUS_OK;
}

typedef struct {
    uint64_t off, len;
} mb_shm_region;

/* [off, off+len) lies inside total bytes and off is aligned. */
static int mb_shm_region_ok(mb_shm_region r, uint64_t align, uint64_t total)
{
    return (r.off & (align - 1)) == 0 && r.len <= total && r.off <= total - r.len;
}

mb_status mb_shm_header_validate(const mb_shm_header *hdr, uint64_t file_bytes)
{
    if (hdr->magic != MB_SHM_MAGIC) return MB_STATUS_BAD_MAGIC;
    if (hdr->abi_version != MB_SHM_ABI_VERSION) return MB_STATUS_BAD_VERSION;
    if (hdr->header_bytes != sizeof(mb_shm_header) || hdr->line_bytes != MB_SHM_LINE_BYTES ||
        hdr->n_rings != MB_SHM_N_RINGS)
        return MB_STATUS_CORRUPT;
    uint64_t total = hdr->segment_bytes;
    if (total != file_bytes || total > (uint64_t)SIZE_MAX || total > (uint64_t)INT64_MAX ||
        total < MB_SHM_PAGE_BYTES)
        return MB_STATUS_CORRUPT;
    if (hdr->creator_pid <= 0 || hdr->spin_ns > MB_SHM_MAX_SPIN_NS) return MB_STATUS_CORRUPT;

    /* Every region: aligned, inside the file, and disjoint from the others. */
    mb_shm_region reg[2 + 3 * MB_SHM_N_RINGS];
    unsigned n = 0;
    reg[n++] = (mb_shm_region){0, sizeof(mb_shm_header)};
    reg[n] = (mb_shm_region){hdr->state_offset, sizeof(mb_shm_state)};
    if (!mb_shm_region_ok(reg[n++], MB_SHM_LINE_BYTES, total)) return MB_STATUS_CORRUPT;
    for (unsigned i = 0; i < MB_SHM_N_RINGS; i++) {
        const mb_shm_ring_layout *l = &hdr->ring[i];
        if (l->n_slots < MB_SHM_MIN_SLOTS || l->n_slots > MB_SHM_MAX_SLOTS ||
            (l->n_slots & (l->n_slots - 1)) != 0 || l->reserved != 0)
            return MB_STATUS_CORRUPT;
        if (l->payload_bytes < MB_SHM_MIN_RING_BYTES || l->payload_bytes > MB_SHM_MAX_RING_BYTES ||
            l->payload_bytes % 8 != 0)
            return MB_STATUS_CORRUPT;
        reg[n] = (mb_shm_region){l->ctrl_offset, sizeof(mb_shm_ring_ctrl)};
        if (!mb_shm_region_ok(reg[n++], MB_SHM_LINE_BYTES, total)) return MB_STATUS_CORRUPT;
        reg[n] = (mb_shm_region){l->slots_offset, (uint64_t)l->n_slots * sizeof(mb_shm_slot)};
        if (!mb_shm_region_ok(reg[n++], MB_SHM_LINE_BYTES, total)) return MB_STATUS_CORRUPT;
        reg[n] = (mb_shm_region){l->payload_offset, l->payload_bytes};
        if (!mb_shm_region_ok(reg[n++], MB_SHM_PAGE_BYTES, total)) return MB_STATUS_CORRUPT;
    }
    /* Each region is inside the file, so off + len cannot wrap here. */
    for (unsigned i = 0; i < n; i++)
        for (unsigned j = i + 1; j < n; j++)
            if (reg[i].off < reg[j].off + reg[j].len && reg[j].off < reg[i].off + reg[i].len)
                return MB_STATUS_CORRUPT;
    return MB_STATUS_OK;
}

static mb_status mb_shm_errno_status(int err)
{
    return (err == ENOMEM || err == ENOSPC) ? MB_STATUS_NOMEM : MB_STATUS_IO;
}

mb_status mb_shm_segment_create(const mb_shm_header *hdr, int inheritable, mb_shm_segment *seg,
                                int *fd_out)
{
    mb_status st = mb_shm_header_validate(hdr, hdr->segment_bytes);
    if (st != MB_STATUS_OK) return st;
    size_t bytes = (size_t)hdr->segment_bytes;
    void *base = MAP_FAILED;
    int fd = memfd_create("moe-broker-shm", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return mb_shm_errno_status(errno);
    /* The segment only ever travels by fd inheritance; 0600 all the same. */
    if (fchmod(fd, 0600) != 0 || ftruncate(fd, (off_t)bytes) != 0) {
        st = mb_shm_errno_status(errno);
        goto fail;
    }
    /* The worker cannot shrink the file under us (SIGBUS), nor unseal it. */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        st = MB_STATUS_IO;
        goto fail;
    }
    if (inheritable && fcntl(fd, F_SETFD, 0) != 0) {
        st = MB_STATUS_IO;
        goto fail;
    }
    base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        st = mb_shm_errno_status(errno);
        goto fail;
    }
    /* The file is zero-filled: counters, flags and slots start at 0. */
    memcpy(base, hdr, sizeof(*hdr));
    seg->base = base;
    seg->bytes = bytes;
    seg->hdr = *hdr;
    *fd_out = fd;
    return MB_STATUS_OK;
fail:
    close(fd);
    return st;
}

mb_status mb_shm_segment_attach(int fd, mb_shm_segment *seg)
{
    struct stat sb;
    mb_shm_header hdr;
    if (fd < 0) return MB_STATUS_INVALID_ARG;
    if (fstat(fd, &sb) != 0) return MB_STATUS_IO;
    if (!S_ISREG(sb.st_mode) || sb.st_size < (off_t)sizeof(hdr)) return MB_STATUS_CORRUPT;
    /* Unsealed, the creator could shrink the file and SIGBUS us later. */
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) return MB_STATUS_CORRUPT;
    /* One read into a private copy: the validated values are the used ones. */
    if (pread(fd, &hdr, sizeof(hdr), 0) != (ssize_t)sizeof(hdr)) return MB_STATUS_IO;
    mb_status st = mb_shm_header_validate(&hdr, (uint64_t)sb.st_size);
    if (st != MB_STATUS_OK) return st;
    void *base = mmap(NULL, (size_t)hdr.segment_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) return mb_shm_errno_status(errno);
    seg->base = base;
    seg->bytes = (size_t)hdr.segment_bytes;
    seg->hdr = hdr;
    return MB_STATUS_OK;
}

void mb_shm_segment_unmap(mb_shm_segment *seg)
{
    if (seg->base) munmap(seg->base, seg->bytes);
    seg->base = NULL;
    seg->bytes = 0;
}
