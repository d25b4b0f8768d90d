/* Reading a hotness file (--hotness): the "routing" member of an earlier
 * run's --stats-json report, checked field by field against the model's
 * shape before any count is believed. */
#include "broker/hotness.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#define MB_HOTNESS_MAX_COUNT 9007199254740992.0 /* 2^53: a JSON double counts exactly below it */

void mb_hotness_free(mb_hotness *h)
{
    if (!h) return;
    free(h->counts);
    memset(h, 0, sizeof *h);
}

/* An integer 0..2^53 held in a JSON number: 0 and *out, or -1. */
static int mb_hotness_count(const cJSON *n, uint64_t *out)
{
    if (!cJSON_IsNumber(n)) return -1;
    double v = n->valuedouble;
    if (!isfinite(v) || v < 0 || v > MB_HOTNESS_MAX_COUNT || floor(v) != v) return -1;
    *out = (uint64_t)v;
    return 0;
}

/* The shape member name of routing ("n_layers", "n_experts"): 0 and *out. */
static int mb_hotness_dim(const cJSON *routing, const char *name, uint32_t *out)
{
    uint64_t v = 0;
    if (mb_hotness_count(cJSON_GetObjectItemCaseSensitive(routing, name), &v) != 0 ||
        v > UINT32_MAX)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

mb_status mb_hotness_parse(const char *text, size_t len, const char *what, uint32_t n_layers,
                           uint32_t n_experts, mb_hotness *out, char *err, size_t err_cap)
{
    if (!text || !what || !out || n_layers == 0 || n_experts == 0) return MB_STATUS_INVALID_ARG;
    mb_status st = MB_STATUS_CONFIG;
    uint64_t *counts = NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    /* Nothing but spaces may follow the value. */
    for (const char *q = end; root && q && q < text + len; q++)
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
            cJSON_Delete(root);
            root = NULL;
        }
    const cJSON *routing =
        cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "routing") : NULL;
    uint32_t L = 0, E = 0;
    if (!root) {
        snprintf(err, err_cap, "%s is not valid JSON", what);
        goto done;
    }
    if (!cJSON_IsObject(routing)) {
        snprintf(err, err_cap,
                 "%s has no \"routing\" object (a --stats-json report of an earlier run, or "
                 "{\"routing\":{\"n_layers\":L,\"n_experts\":E,\"counts\":[[...]]}})",
                 what);
        goto done;
    }
    if (mb_hotness_dim(routing, "n_layers", &L) != 0 ||
        mb_hotness_dim(routing, "n_experts", &E) != 0) {
        snprintf(err, err_cap,
                 "%s: routing.n_layers and routing.n_experts must be non-negative integers", what);
        goto done;
    }
    if (L != n_layers || E != n_experts) {
        snprintf(err, err_cap,
                 "%s counts %u layers x %u experts; this model has %u layers x %u experts (a file "
                 "from another model?)",
                 what, L, E, n_layers, n_experts);
        goto done;
    }
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(routing, "counts");
    if (!cJSON_IsArray(rows) || cJSON_GetArraySize(rows) != (int)L) {
        snprintf(err, err_cap, "%s: routing.counts must be an array of %u rows (one per layer)",
                 what, L);
        goto done;
    }
    counts = calloc((size_t)L * E, sizeof *counts);
    if (!counts) {
        st = MB_STATUS_NOMEM;
        goto done;
    }
    uint64_t total = 0;
    uint32_t layer = 0;
    const cJSON *row = NULL;
    cJSON_ArrayForEach(row, rows)
    {
        if (!cJSON_IsArray(row) || cJSON_GetArraySize(row) != (int)E) {
            snprintf(err, err_cap,
                     "%s: routing.counts[%u] must be an array of %u counts (one per expert)", what,
                     layer, E);
            goto done;
        }
        uint32_t e = 0;
        const cJSON *c = NULL;
        cJSON_ArrayForEach(c, row)
        {
            uint64_t v = 0;
            if (mb_hotness_count(c, &v) != 0) {
                snprintf(err, err_cap,
                         "%s: routing.counts[%u][%u] is not an integer count (0..2^53)", what,
                         layer, e);
                goto done;
            }
            counts[(size_t)layer * E + e] = v;
            total = __builtin_add_overflow(total, v, &total) ? UINT64_MAX : total;
            e++;
        }
        layer++;
    }
    *out = (mb_hotness){.n_layers = L, .n_experts = E, .counts = counts, .total = total};
    counts = NULL;
    st = MB_STATUS_OK;
done:
    free(counts);
    cJSON_Delete(root);
    return st;
}

mb_status mb_hotness_load(const char *path, uint32_t n_layers, uint32_t n_experts, mb_hotness *out,
                          char *err, size_t err_cap)
{
    if (!path || !out) return MB_STATUS_INVALID_ARG;
    char what[300];
    snprintf(what, sizeof what, "hotness file %.200s", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        snprintf(err, err_cap, "cannot read %s: %s", what, strerror(errno));
        if (fd >= 0) close(fd);
        return MB_STATUS_IO;
    }
    if (!S_ISREG(sb.st_mode) || sb.st_size <= 0 ||
        (uint64_t)sb.st_size > MB_HOTNESS_MAX_FILE_BYTES) {
        snprintf(err, err_cap, "%s must be a regular, non-empty file of at most %u MiB", what,
                 MB_HOTNESS_MAX_FILE_BYTES >> 20);
        close(fd);
        return MB_STATUS_CONFIG;
    }
    size_t len = (size_t)sb.st_size, got = 0;
    char *text = malloc(len);
    if (!text) {
        close(fd);
        return MB_STATUS_NOMEM;
    }
    while (got < len) {
        ssize_t n = read(fd, text + got, len - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    close(fd);
    mb_status st = MB_STATUS_IO;
    if (got != len)
        snprintf(err, err_cap, "cannot read %s: it changed while being read", what);
    else
        st = mb_hotness_parse(text, len, what, n_layers, n_experts, out, err, err_cap);
    free(text);
    return st;
}
