/* Text plumbing the tokenizer's stages share: growable buffers, UTF-8
 * decoding and lossy repair, and the GPT-2 byte-level alphabet. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/tokenizer/tokenizer_impl.h"

int mb_tok_buf_put(mb_tok_buf *b, const void *p, size_t n)
{
    if (b->len + n + 1 > b->cap) { /* + 1: room for a terminating NUL */
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) return -1;
        b->data = grown;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int mb_tok_ids_put(mb_tok_ids *v, int32_t id)
{
    if (v->len == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int32_t *grown = realloc(v->data, cap * sizeof *grown);
        if (!grown) return -1;
        v->data = grown;
        v->cap = cap;
    }
    v->data[v->len++] = id;
    return 0;
}

void mb_tok_errf(char *err, size_t err_cap, const char *fmt, ...)
{
    if (!err || err_cap == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_cap, fmt, ap);
    va_end(ap);
}

uint32_t mb_tok_utf8_decode(const char *s, size_t n, size_t *len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t l = mb_tok_utf8_len(u[0]);
    if (l > n) l = n;
    *len = l;
    switch (l) {
    case 1: return u[0];
    case 2: return (uint32_t)(u[0] & 0x1f) << 6 | (u[1] & 0x3f);
    case 3: return (uint32_t)(u[0] & 0x0f) << 12 | (uint32_t)(u[1] & 0x3f) << 6 | (u[2] & 0x3f);
    default:
        return (uint32_t)(u[0] & 0x07) << 18 | (uint32_t)(u[1] & 0x3f) << 12 |
               (uint32_t)(u[2] & 0x3f) << 6 | (u[3] & 0x3f);
    }
}

/* The valid range of the second byte after lead byte c (Unicode table 3-7);
 * 0 when c cannot start a sequence. */
static size_t lead_info(unsigned char c, unsigned char *lo, unsigned char *hi)
{
    *lo = 0x80;
    *hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) return 2;
    if (c >= 0xe0 && c <= 0xef) {
        if (c == 0xe0) *lo = 0xa0;
        if (c == 0xed) *hi = 0x9f; /* no surrogates */
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (c == 0xf0) *lo = 0x90;
        if (c == 0xf4) *hi = 0x8f;
        return 4;
    }
    return 0;
}

static const char replacement[3] = {(char)0xef, (char)0xbf, (char)0xbd};

size_t mb_tok_utf8_lossy(const char *src, size_t n, int final, mb_tok_buf *out)
{
    const unsigned char *u = (const unsigned char *)src;
    size_t i = 0, run = 0; /* run: start of valid bytes not yet copied */
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        unsigned char lo, hi;
        size_t need = lead_info(u[i], &lo, &hi), k = 1;
        for (; k < need && i + k < n; k++) {
            unsigned char c = u[i + k];
            if (c < (k == 1 ? lo : 0x80) || c > (k == 1 ? hi : 0xbf)) break;
        }
        if (need && k == need) {
            i += need;
            continue;
        }
        if (need && i + k == n && !final) break; /* incomplete so far: hold it */
        if (mb_tok_buf_put(out, src + run, i - run) || mb_tok_buf_put(out, replacement, 3))
            return SIZE_MAX;
        i += k; /* the maximal subpart: the lead byte and the valid continuations */
        run = i;
    }
    if (mb_tok_buf_put(out, src + run, i - run)) return SIZE_MAX;
    return i;
}

/* Bytes outside the printable ranges 33..126, 161..172 and 174..255 map to
 * code points 256 and up, in byte order (GPT-2's bytes_to_unicode). */
void mb_tok_byte_level_char(unsigned char b, char out[2], size_t *len)
{
    uint32_t cp = b;
    if (b <= 32)
        cp = 256u + b;
    else if (b >= 127 && b <= 160)
        cp = 256u + 33u + (b - 127u);
    else if (b == 173)
        cp = 256u + 67u;
    if (cp < 0x80) {
        out[0] = (char)cp;
        *len = 1;
    } else {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        *len = 2;
    }
}

int mb_tok_byte_level_byte(uint32_t cp)
{
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255))
        return (int)cp;
    if (cp < 256 || cp > 256 + 67) return -1;
    uint32_t idx = cp - 256;
    if (idx <= 32) return (int)idx;
    if (idx <= 66) return (int)(127 + idx - 33);
    return 173;
}

int mb_tok_is_space(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0d) || cp == 0x20 || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f ||
           cp == 0x205f || cp == 0x3000;
}
