/* Host memory the caller registers (the worker's shared-memory segment, a
 * mapped checkpoint): a table of regions, each imported as a device-visible
 * buffer through VK_EXT_external_memory_host the first time a request's
 * activations or a fetch's destination lie inside it, so that the device
 * copies them in place instead of the host copying them through staging.
 * A region is never imported only because it was registered: checkpoints
 * would be pinned whole for nothing. Nothing here trusts a pointer it is
 * given: every range is checked against a region with overflow-safe
 * arithmetic before an offset is handed out. */
#include <stdint.h>
#include <string.h>

#include "backends/vulkan/vk_internal.h"

void mb_vk_note(mb_vk_backend *be, const char *msg)
{
    if (be->verbose) fprintf(stderr, "vulkan:%d: %s\n", be->device, msg);
}

mb_status mb_vk_register_host(void *state, void *ptr, size_t bytes)
{
    mb_vk_backend *be = state;
    if (!be || !ptr || bytes == 0) return MB_STATUS_INVALID_ARG;
    if ((uintptr_t)ptr + bytes < (uintptr_t)ptr) return MB_STATUS_OVERFLOW;
    if (be->host_import == MB_VK_IMPORT_OFF) return MB_STATUS_UNSUPPORTED;
    if (!be->ctx.has_host_import) {
        if (!be->host_note_done)
            mb_vk_note(be, "no VK_EXT_external_memory_host: activations and results go through staging");
        be->host_note_done = 1;
        return MB_STATUS_UNSUPPORTED;
    }
    mb_vk_host_region *free_entry = NULL;
    for (int i = 0; i < MB_VK_MAX_HOST; i++) {
        if (be->host[i].base == ptr) return MB_STATUS_INVALID_ARG; /* registered twice */
        if (!be->host[i].base && !free_entry) free_entry = &be->host[i];
    }
    if (!free_entry) return MB_STATUS_FULL;
    /* The importable part: start rounded up, end rounded down to the
     * driver's alignment (rounding outward could reach pages that are not
     * ours). Ranges outside it go through staging. */
    const uintptr_t a = (uintptr_t)be->ctx.host_import_align, b0 = (uintptr_t)ptr, b1 = b0 + bytes;
    const uintptr_t i0 = b0 > UINTPTR_MAX - (a - 1) ? 0 : (b0 + a - 1) & ~(a - 1), i1 = b1 & ~(a - 1);
    *free_entry = (mb_vk_host_region){.base = ptr, .bytes = bytes};
    if (i0 != 0 && i1 > i0) {
        free_entry->ibase = (uint8_t *)i0;
        free_entry->ibytes = i1 - i0;
    } else {
        free_entry->state = -1;
    }
    return MB_STATUS_OK;
}

void mb_vk_unregister_host(void *state, void *ptr)
{
    mb_vk_backend *be = state;
    if (!be || !ptr) return;
    for (int i = 0; i < MB_VK_MAX_HOST; i++) {
        mb_vk_host_region *h = &be->host[i];
        if (h->base != ptr) continue;
        /* Requests may still copy from or into it: the memory is about to
         * be unmapped. A failed wait means a lost device, which reads no
         * more. */
        if (h->buf.buf) (void)mb_vk_reqs_wait(be);
        mb_vk_buffer_destroy(&be->ctx, &h->buf);
        memset(h, 0, sizeof *h);
        return;
    }
}

void mb_vk_host_free(mb_vk_backend *be)
{
    for (int i = 0; i < MB_VK_MAX_HOST; i++) {
        mb_vk_buffer_destroy(&be->ctx, &be->host[i].buf);
        memset(&be->host[i], 0, sizeof be->host[i]);
    }
}

/* Imports h now; on failure it is staged from then on, with a note. */
static void mb_vk_host_import(mb_vk_backend *be, mb_vk_host_region *h)
{
    mb_status st = mb_vk_buffer_import(&be->ctx, h->ibase, (VkDeviceSize)h->ibytes, &h->buf);
    char msg[160];
    if (st == MB_STATUS_OK) {
        h->state = 1;
        snprintf(msg, sizeof msg, "imported %.1f MiB of registered host memory: activations and results move in place",
                 h->ibytes / 1048576.0);
    } else {
        h->state = -1;
        snprintf(msg, sizeof msg,
                 "importing %.1f MiB of host memory failed (%s): activations and results go through staging",
                 h->ibytes / 1048576.0, mb_status_name(st));
    }
    mb_vk_note(be, msg);
}

const mb_vk_host_region *mb_vk_host_find(mb_vk_backend *be, const void *p, size_t bytes, size_t *off)
{
    if (be->host_import == MB_VK_IMPORT_OFF || !be->ctx.has_host_import || !p || bytes == 0) return NULL;
    const uintptr_t q = (uintptr_t)p;
    for (int i = 0; i < MB_VK_MAX_HOST; i++) {
        mb_vk_host_region *h = &be->host[i];
        if (!h->base || h->state < 0) continue;
        const uintptr_t b = (uintptr_t)h->ibase;
        if (q < b || q - b > h->ibytes || bytes > h->ibytes - (q - b)) continue;
        if (h->state == 0) mb_vk_host_import(be, h);
        if (h->state != 1) return NULL;
        *off = (size_t)(q - b);
        return h;
    }
    return NULL;
}
