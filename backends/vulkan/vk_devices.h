/* Vulkan device discovery for programs (moe-worker --list-devices), without
 * opening a backend. Built only with the Vulkan backend (MB_HAVE_VULKAN). */
#ifndef MB_BACKENDS_VULKAN_VK_DEVICES_H
#define MB_BACKENDS_VULKAN_VK_DEVICES_H

#include <stdio.h>

/* Prints the physical devices the Vulkan loader reports, one a line, as
 * "vulkan:N  NAME (TYPE, Vulkan X.Y), M MiB device-local"; N is the index
 * that --backend vulkan:N takes. Returns how many; 0 when there is no
 * driver or no device. Blocking (creates and destroys an instance). */
int mb_vk_devices_print(FILE *f);

#endif
