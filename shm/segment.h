/* The shared segment's layout and its lifetime: a fixed, versioned header in
 * the first page, a state line (closed flags), then per ring a control block,
 * a slot array and a payload byte ring. The creator writes the header once;
 * the attacher reads it once into a private copy and validates every field
 * with overflow-checked arithmetic before it computes a single pointer.
 * Private to shm/. */
#ifndef MB_SHM_SEGMENT_H
#define MB_SHM_SEGMENT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "protocol/status.h"

#define MB_SHM_MAGIC 0x4d485342u /* "BSHM" little-endian */
#define MB_SHM_ABI_VERSION 2u /* 2: the worker's heartbeat in the state line */
/* Two cache lines: keeps counters apart even with adjacent-line prefetch. */
#define MB_SHM_LINE_BYTES 128u
#define MB_SHM_PAGE_BYTES 4096u
#define MB_SHM_N_RINGS 2u
#define MB_SHM_STATE_OFFSET 1024u

/* Bounds the attacher enforces (the creator's options obey them too). */
#define MB_SHM_MIN_SLOTS 2u
#define MB_SHM_MAX_SLOTS 65536u
#define MB_SHM_MIN_RING_BYTES 4096u
#define MB_SHM_MAX_RING_BYTES (1ull << 40)
#define MB_SHM_MAX_SPIN_NS 20000000u
/* A message is at least a protocol header (MB_PROTO_HEADER_BYTES). */
#define MB_SHM_MIN_MESSAGE_BYTES 32u

enum { MB_SHM_RING_REQUEST = 0, MB_SHM_RING_REPLY = 1 };
enum { MB_SHM_SIDE_COORDINATOR = 0, MB_SHM_SIDE_WORKER = 1 };

/* Where one ring lives; offsets from the segment start. */
typedef struct {
    uint64_t ctrl_offset;    /* mb_shm_ring_ctrl, MB_SHM_LINE_BYTES-aligned */
    uint64_t slots_offset;   /* mb_shm_slot[n_slots], MB_SHM_LINE_BYTES-aligned */
    uint64_t payload_offset; /* the byte ring, MB_SHM_PAGE_BYTES-aligned */
    uint64_t payload_bytes;  /* multiple of 8, within the MIN/MAX_RING_BYTES */
    uint32_t n_slots;        /* power of two, within MIN/MAX_SLOTS */
    uint32_t reserved;       /* 0 */
} mb_shm_ring_layout;

/* The header at offset 0: plain fields written once by the creator before
 * the fd is handed out. 128 bytes, native byte order (same host). */
typedef struct {
    uint32_t magic;                          /* MB_SHM_MAGIC */
    uint32_t abi_version;                    /* MB_SHM_ABI_VERSION */
    uint64_t segment_bytes;                  /* must equal the file size from fstat */
    uint32_t header_bytes;                   /* sizeof(mb_shm_header) */
    uint32_t line_bytes;                     /* MB_SHM_LINE_BYTES */
    int32_t creator_pid;                     /* the coordinator: the worker watches it */
    uint32_t n_rings;                        /* MB_SHM_N_RINGS */
    uint64_t spin_ns;                        /* busy-wait before sleeping, <= MB_SHM_MAX_SPIN_NS */
    uint64_t state_offset;                   /* mb_shm_state, MB_SHM_LINE_BYTES-aligned */
    mb_shm_ring_layout ring[MB_SHM_N_RINGS]; /* [MB_SHM_RING_REQUEST], [..._REPLY] */
} mb_shm_header;

/* Mutable shared flags, on their own line. The heartbeat is a liveness
 * signal independent of message traffic: a thread of the worker bumps its
 * counter every MB_SHM_HEARTBEAT_NS while the process runs, so a frozen
 * worker (SIGSTOP, a hung host) shows as a counter that stops, while a
 * worker busy with a long request keeps counting. */
typedef struct {
    _Alignas(MB_SHM_LINE_BYTES) _Atomic uint32_t closed[2]; /* [MB_SHM_SIDE_*]: 1 once it hung up */
    _Atomic uint64_t heartbeat[2];                          /* [MB_SHM_SIDE_*]: beats so far */
} mb_shm_state;

#define MB_SHM_HEARTBEAT_NS 50000000ll /* 50 ms between beats */

/* A mapped segment as one process sees it. */
typedef struct {
    uint8_t *base; /* the mapping, segment_bytes long */
    size_t bytes;
    mb_shm_header hdr; /* private, validated copy: the only one pointers come from */
} mb_shm_segment;

/* Fills *hdr with the layout for the given sizes (already range-checked by
 * the caller). MB_STATUS_OVERFLOW if the total does not fit 64 bits/size_t. */
mb_status mb_shm_layout_compute(uint32_t n_slots, uint64_t request_bytes, uint64_t reply_bytes,
                                uint64_t spin_ns, pid_t creator_pid, mb_shm_header *hdr);

/* Validates a private copy of a header against the file size: BAD_MAGIC,
 * BAD_VERSION, or CORRUPT for any size, offset, alignment, bound or overlap
 * that is wrong. Pure function, safe on arbitrary bytes (a fuzz target). */
mb_status mb_shm_header_validate(const mb_shm_header *hdr, uint64_t file_bytes);

/* Creates a sealed memfd of hdr->segment_bytes, writes the header, maps it.
 * On success *fd_out is the memfd (FD_CLOEXEC unless inheritable) and the
 * caller owns it; *seg owns the mapping. IO/NOMEM on system failures. */
mb_status mb_shm_segment_create(const mb_shm_header *hdr, int inheritable, mb_shm_segment *seg,
                                int *fd_out);

/* Reads the header of fd once, validates it (size from fstat, seals against
 * shrinking), maps the segment. Does not take ownership of fd. */
mb_status mb_shm_segment_attach(int fd, mb_shm_segment *seg);

/* Unmaps. Cannot fail. */
void mb_shm_segment_unmap(mb_shm_segment *seg);

/* The shared state line. */
static inline mb_shm_state *mb_shm_segment_state(const mb_shm_segment *seg)
{
    return (mb_shm_state *)(void *)(seg->base + seg->hdr.state_offset);
}

#endif
