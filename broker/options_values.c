/* Text-to-value parsing for the run options: decimal numbers, byte sizes,
 * booleans, token-id lists (inline or from a file) and --worker specs. Every
 * parser is strict (the whole text must match) and overflow-checked, since
 * all of it comes from the user. */
#include "broker/options.h"
#include "broker/options_internal.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

void mb_options_errf(char *err, size_t err_cap, const char *fmt, ...)
{
    if (!err || err_cap == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_cap, fmt, ap);
    va_end(ap);
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Reads the run of digits at *p into *out, advancing *p. Returns -1 when
 * there is no digit or the value overflows uint64_t. */
static int take_u64(const char **p, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    if (!is_digit(*s)) return -1;
    for (; is_digit(*s); s++) {
        uint64_t d = (uint64_t)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *p = s;
    *out = v;
    return 0;
}

int mb_options_text_to_u64(const char *text, uint64_t min, uint64_t max, uint64_t *out)
{
    uint64_t v;
    const char *p = text;
    if (!text || take_u64(&p, &v) != 0 || *p != '\0' || v < min || v > max) return -1;
    *out = v;
    return 0;
}

int mb_options_text_to_bytes(const char *text, uint64_t *out)
{
    uint64_t v, mult = 1;
    const char *p = text;
    if (!text || take_u64(&p, &v) != 0) return -1;
    switch (*p) {
    case 'k':
    case 'K':
        mult = 1ull << 10;
        p++;
        break;
    case 'm':
    case 'M':
        mult = 1ull << 20;
        p++;
        break;
    case 'g':
    case 'G':
        mult = 1ull << 30;
        p++;
        break;
    case 't':
    case 'T':
        mult = 1ull << 40;
        p++;
        break;
    default:
        break;
    }
    if (mult != 1 && (*p == 'i' || *p == 'I')) p++;
    if (*p == 'b' || *p == 'B') p++;
    if (*p != '\0' || v > UINT64_MAX / mult) return -1;
    *out = v * mult;
    return 0;
}

int mb_options_text_to_f64(const char *text, double min, double max, double *out)
{
    if (!text || !text[0]) return -1;
    for (const char *p = text; *p; p++) { /* plain decimal: no hex, inf, nan or spaces */
        if (!is_digit(*p) && *p != '.' && *p != 'e' && *p != 'E' && *p != '-' && *p != '+')
            return -1;
    }
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (*end != '\0' || errno != 0 || !isfinite(v) || v < min || v > max) return -1;
    *out = v;
    return 0;
}

int mb_options_text_to_bool(const char *text, int *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    if (!text) return -1;
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(text, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(text, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Parses len bytes of ids separated by one comma and/or whitespace. The
 * buffer need not be NUL-terminated. source names it for messages. */
static mb_status ids_from_buffer(const char *buf, size_t len, const char *what, const char *source,
                                 int32_t **ids, size_t *n_ids, char *err, size_t err_cap)
{
    static const char valid[] = "valid: token ids 0..2147483647 separated by commas or whitespace";
    size_t count = 0;
    /* Pass 1: check the grammar and count. A comma must follow an id (with
     * only whitespace between) and be followed by one. after_id: 0 none yet
     * or a comma since, 1 inside an id, 2 whitespace after an id. */
    int after_id = 0, after_comma = 0;
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        if (is_digit(c)) {
            if (after_id != 1) count++; /* a new id starts */
            after_id = 1;
            after_comma = 0;
            continue;
        }
        if (is_space(c)) {
            if (after_id) after_id = 2; /* an id ended; a comma may still follow */
            continue;
        }
        if (c == ',' && after_id) {
            after_id = 0;
            after_comma = 1;
            continue;
        }
        if (c == ',')
            mb_options_errf(err, err_cap,
                            "moe-broker: invalid %s %s: empty entry before the ',' at byte %zu "
                            "(%s)",
                            what, source, i, valid);
        else if (c == '-')
            mb_options_errf(err, err_cap,
                            "moe-broker: invalid %s %s: negative id at byte %zu (%s)", what, source,
                            i, valid);
        else if ((unsigned char)c >= 0x20 && (unsigned char)c < 0x7f)
            mb_options_errf(err, err_cap,
                            "moe-broker: invalid %s %s: unexpected '%c' at byte %zu (%s)", what,
                            source, c, i, valid);
        else
            mb_options_errf(err, err_cap,
                            "moe-broker: invalid %s %s: unexpected byte 0x%02x at byte %zu (%s)",
                            what, source, (unsigned char)c, i, valid);
        return MB_STATUS_CONFIG;
    }
    if (after_comma) {
        mb_options_errf(err, err_cap, "moe-broker: invalid %s %s: trailing ',' (%s)", what, source,
                        valid);
        return MB_STATUS_CONFIG;
    }
    if (count == 0) {
        mb_options_errf(err, err_cap, "moe-broker: invalid %s %s: no token ids (%s)", what, source,
                        valid);
        return MB_STATUS_CONFIG;
    }
    if (count > MB_OPTIONS_MAX_INPUT_IDS) {
        mb_options_errf(err, err_cap, "moe-broker: invalid %s %s: %zu ids, more than %u", what,
                        source, count, MB_OPTIONS_MAX_INPUT_IDS);
        return MB_STATUS_CONFIG;
    }
    int32_t *out = malloc(count * sizeof *out);
    if (!out) return MB_STATUS_NOMEM;
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        if (!is_digit(buf[i])) {
            i++;
            continue;
        }
        uint64_t v = 0;
        size_t start = i;
        for (; i < len && is_digit(buf[i]); i++) {
            v = v * 10 + (uint64_t)(buf[i] - '0');
            if (v > INT32_MAX) {
                mb_options_errf(
                    err, err_cap,
                    "moe-broker: invalid %s %s: id at byte %zu is above 2147483647 (%s)", what,
                    source, start, valid);
                free(out);
                return MB_STATUS_CONFIG;
            }
        }
        out[n++] = (int32_t)v;
    }
    *ids = out;
    *n_ids = n;
    return MB_STATUS_OK;
}

/* Reads a whole file of at most MB_OPTIONS_MAX_IDS_FILE_BYTES; *buf is
 * malloc'd. The size comes from reading, not from stat, so pipes work. */
static mb_status read_small_file(const char *path, const char *what, char **buf, size_t *len,
                                 char *err, size_t err_cap)
{
    mb_status st = MB_STATUS_OK;
    size_t cap = 4096, n = 0;
    char *data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        mb_options_errf(err, err_cap, "moe-broker: cannot read %s file '%s': %s", what, path,
                        strerror(errno));
        return MB_STATUS_IO;
    }
    data = malloc(cap);
    if (!data) {
        st = MB_STATUS_NOMEM;
        goto done;
    }
    for (;;) {
        if (n == cap) {
            if (cap > MB_OPTIONS_MAX_IDS_FILE_BYTES) {
                mb_options_errf(err, err_cap,
                                "moe-broker: invalid %s file '%s': larger than %u bytes", what,
                                path, MB_OPTIONS_MAX_IDS_FILE_BYTES);
                st = MB_STATUS_CONFIG;
                goto done;
            }
            char *bigger = realloc(data, cap * 2);
            if (!bigger) {
                st = MB_STATUS_NOMEM;
                goto done;
            }
            data = bigger;
            cap *= 2;
        }
        size_t got = fread(data + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                mb_options_errf(err, err_cap, "moe-broker: cannot read %s file '%s': read error",
                                what, path);
                st = MB_STATUS_IO;
            }
            break;
        }
    }
done:
    fclose(f);
    if (st != MB_STATUS_OK) {
        free(data);
        return st;
    }
    *buf = data;
    *len = n;
    return MB_STATUS_OK;
}

mb_status mb_options_ids_parse(const char *text, const char *what, int32_t **ids, size_t *n_ids,
                               char *err, size_t err_cap)
{
    struct stat sb;
    if (stat(text, &sb) != 0 || S_ISDIR(sb.st_mode)) {
        /* Not a file: the text is the list. Say so when it fails, since the
         * user may have meant a file. */
        char source[300];
        snprintf(source, sizeof source, "'%.200s' (not a file, so read as a list)", text);
        return ids_from_buffer(text, strlen(text), what, source, ids, n_ids, err, err_cap);
    }
    char *buf = NULL;
    size_t len = 0;
    mb_status st = read_small_file(text, what, &buf, &len, err, err_cap);
    if (st != MB_STATUS_OK) return st;
    char source[300];
    snprintf(source, sizeof source, "file '%.200s'", text);
    st = ids_from_buffer(buf, len, what, source, ids, n_ids, err, err_cap);
    free(buf);
    return st;
}

/* ---- --worker SPEC ---- */

static const char *const worker_backends[] = {"cpu", "cuda", "vulkan"};
#define WORKER_VALID "valid: cpu[:N], cuda[:N], vulkan[:N], tcp://HOST:PORT, ipc:///PATH"

static mb_status worker_remote(const char *head, size_t head_len, mb_worker_spec *w,
                               const char *text, char *err, size_t err_cap)
{
    if (head_len >= sizeof w->endpoint) {
        mb_options_errf(err, err_cap, "invalid worker spec '%s': endpoint longer than %zu bytes",
                        text, sizeof w->endpoint - 1);
        return MB_STATUS_CONFIG;
    }
    memcpy(w->endpoint, head, head_len);
    w->endpoint[head_len] = '\0';
    w->kind = MB_WORKER_KIND_REMOTE;
    if (strncmp(w->endpoint, "ipc://", 6) == 0) {
        if (w->endpoint[6] == '\0') {
            mb_options_errf(err, err_cap,
                            "invalid worker spec '%s': empty ipc path (" WORKER_VALID ")", text);
            return MB_STATUS_CONFIG;
        }
        return MB_STATUS_OK;
    }
    /* tcp://HOST:PORT: the port follows the last ':' so IPv6 "[::1]:5555" works. */
    const char *hostport = w->endpoint + 6;
    const char *colon = strrchr(hostport, ':');
    uint64_t port;
    if (!colon || colon == hostport || mb_options_text_to_u64(colon + 1, 1, 65535, &port) != 0) {
        mb_options_errf(err, err_cap,
                        "invalid worker spec '%s': tcp endpoint needs HOST:PORT, port 1..65535",
                        text);
        return MB_STATUS_CONFIG;
    }
    return MB_STATUS_OK;
}

static mb_status worker_local(const char *head, size_t head_len, mb_worker_spec *w,
                              const char *text, char *err, size_t err_cap)
{
    const char *colon = memchr(head, ':', head_len);
    size_t name_len = colon ? (size_t)(colon - head) : head_len;
    int found = 0;
    for (size_t i = 0; i < sizeof worker_backends / sizeof worker_backends[0]; i++) {
        if (strlen(worker_backends[i]) == name_len &&
            strncmp(worker_backends[i], head, name_len) == 0) {
            strcpy(w->backend, worker_backends[i]);
            found = 1;
        }
    }
    if (!found) {
        mb_options_errf(err, err_cap,
                        "invalid worker spec '%s': unknown backend '%.*s' (" WORKER_VALID ")", text,
                        (int)name_len, head);
        return MB_STATUS_CONFIG;
    }
    w->kind = MB_WORKER_KIND_LOCAL;
    if (colon) {
        char dev[16];
        size_t dev_len = head_len - name_len - 1;
        uint64_t v;
        if (dev_len >= sizeof dev)
            dev_len = sizeof dev - 1; /* still invalid: too many digits for 0..1023 */
        memcpy(dev, colon + 1, dev_len);
        dev[dev_len] = '\0';
        if (mb_options_text_to_u64(dev, 0, 1023, &v) != 0) {
            mb_options_errf(err, err_cap, "invalid worker spec '%s': device must be 0..1023", text);
            return MB_STATUS_CONFIG;
        }
        w->device = (int)v;
    }
    return MB_STATUS_OK;
}

/* One KEY=VALUE of a spec's tail; item is NUL-terminated. */
static mb_status worker_key(char *item, mb_worker_spec *w, const char *text, char *err,
                            size_t err_cap)
{
    char *eq = strchr(item, '=');
    if (!eq) {
        mb_options_errf(
            err, err_cap,
            "invalid worker spec '%s': '%s' is not KEY=VALUE (valid keys: weight, threads, key)", text,
            item);
        return MB_STATUS_CONFIG;
    }
    *eq = '\0';
    const char *value = eq + 1;
    if (strcmp(item, "weight") == 0) {
        char *end = NULL;
        errno = 0;
        double v = strtod(value, &end);
        if (*value == '\0' || *end != '\0' || errno != 0 || !isfinite(v) || v <= 0.0 || v > 1e6) {
            mb_options_errf(
                err, err_cap,
                "invalid worker spec '%s': weight '%s' (valid: a number > 0 and <= 1e6)", text,
                value);
            return MB_STATUS_CONFIG;
        }
        w->weight = v;
    } else if (strcmp(item, "threads") == 0) {
        uint64_t v;
        if (mb_options_text_to_u64(value, 0, 1024, &v) != 0) {
            mb_options_errf(err, err_cap, "invalid worker spec '%s': threads '%s' (valid: 0..1024)",
                            text, value);
            return MB_STATUS_CONFIG;
        }
        w->threads = (uint32_t)v;
    } else if (strcmp(item, "key") == 0) {
        /* The worker's CURVE public key file: only a running worker has one. */
        size_t len = strlen(value);
        if (w->kind != MB_WORKER_KIND_REMOTE || len == 0 || len >= sizeof w->key_file) {
            mb_options_errf(err, err_cap,
                            "invalid worker spec '%s': key '%s' (valid: the public key file of a tcp:// or "
                            "ipc:// worker)",
                            text, value);
            return MB_STATUS_CONFIG;
        }
        memcpy(w->key_file, value, len + 1);
    } else {
        mb_options_errf(err, err_cap,
                        "invalid worker spec '%s': unknown key '%s' (valid keys: weight, threads, key)",
                        text, item);
        return MB_STATUS_CONFIG;
    }
    return MB_STATUS_OK;
}

mb_status mb_worker_spec_parse(const char *text, mb_worker_spec *out, char *err, size_t err_cap)
{
    if (!text || !out) return MB_STATUS_INVALID_ARG;
    mb_worker_spec w;
    memset(&w, 0, sizeof w);
    w.device = -1;
    w.weight = 1.0;

    const char *comma = strchr(text, ',');
    size_t head_len = comma ? (size_t)(comma - text) : strlen(text);
    if (head_len == 0) {
        mb_options_errf(err, err_cap, "invalid worker spec '%s': empty (" WORKER_VALID ")", text);
        return MB_STATUS_CONFIG;
    }
    mb_status st;
    if (strncmp(text, "tcp://", 6) == 0 || strncmp(text, "ipc://", 6) == 0)
        st = worker_remote(text, head_len, &w, text, err, err_cap);
    else
        st = worker_local(text, head_len, &w, text, err, err_cap);
    if (st != MB_STATUS_OK || !comma) goto done;

    char *tail = strdup(comma + 1);
    if (!tail) return MB_STATUS_NOMEM;
    char *save = NULL;
    int n_keys = 0;
    for (char *item = strtok_r(tail, ",", &save); item && st == MB_STATUS_OK;
         item = strtok_r(NULL, ",", &save)) {
        st = worker_key(item, &w, text, err, err_cap);
        n_keys++;
    }
    free(tail);
    if (st == MB_STATUS_OK && n_keys == 0) {
        mb_options_errf(err, err_cap,
                        "invalid worker spec '%s': trailing ',' (valid keys: weight, threads, key)",
                        text);
        st = MB_STATUS_CONFIG;
    }
done:
    if (st == MB_STATUS_OK) *out = w;
    return st;
}
