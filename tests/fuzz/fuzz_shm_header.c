/* libFuzzer target for the shared-memory segment header validator: any
 * header bytes, against any file size, are accepted or refused; an accepted
 * header's rings lie inside the segment. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shm/segment.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mb_shm_header h;
    uint64_t file_bytes = 0;
    if (size < sizeof h) return 0;
    memcpy(&h, data, sizeof h);
    if (size >= sizeof h + 8) memcpy(&file_bytes, data + sizeof h, 8);
    else file_bytes = h.segment_bytes;
    if (mb_shm_header_validate(&h, file_bytes) != MB_STATUS_OK) return 0;
    for (unsigned r = 0; r < MB_SHM_N_RINGS; r++) {
        const mb_shm_ring_layout *l = &h.ring[r];
        if (l->payload_offset > file_bytes || l->payload_bytes > file_bytes - l->payload_offset) abort();
        if (l->slots_offset > file_bytes || l->ctrl_offset > file_bytes) abort();
    }
    return 0;
}
