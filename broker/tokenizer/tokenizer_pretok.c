/* The text stages before the model: normalizers (Unicode normal forms via
 * utf8proc, lowercase, prepend, replace, strip) and pre-tokenizers (regex
 * splits via PCRE2 with Hugging Face's five split behaviours, byte-level
 * mapping, Metaspace, digits). Input is always valid UTF-8. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "broker/tokenizer/tokenizer_impl.h"

static int all_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80) return 0;
    return 1;
}

static mb_status unicode_form(mb_tok_norm_kind kind, const char *s, size_t n, mb_tok_buf *out)
{
    if (all_ascii(s, n)) return mb_tok_buf_put(out, s, n) ? MB_STATUS_NOMEM : MB_STATUS_OK;
    int opts = UTF8PROC_STABLE;
    opts |= kind == MB_TOK_NORM_NFC || kind == MB_TOK_NORM_NFKC ? UTF8PROC_COMPOSE
                                                                : UTF8PROC_DECOMPOSE;
    if (kind == MB_TOK_NORM_NFKC || kind == MB_TOK_NORM_NFKD) opts |= UTF8PROC_COMPAT;
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t len = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
                                        (utf8proc_option_t)opts);
    if (len < 0) return len == UTF8PROC_ERROR_NOMEM ? MB_STATUS_NOMEM : MB_STATUS_FORMAT;
    int rc = mb_tok_buf_put(out, dst, (size_t)len);
    free(dst);
    return rc ? MB_STATUS_NOMEM : MB_STATUS_OK;
}

static mb_status lowercase(const char *s, size_t n, mb_tok_buf *out)
{
    for (size_t i = 0; i < n;) {
        size_t l;
        uint32_t cp = mb_tok_utf8_decode(s + i, n - i, &l);
        utf8proc_uint8_t enc[4];
        utf8proc_ssize_t k = utf8proc_encode_char(utf8proc_tolower((utf8proc_int32_t)cp), enc);
        if (mb_tok_buf_put(out, enc, (size_t)k)) return MB_STATUS_NOMEM;
        i += l;
    }
    return MB_STATUS_OK;
}

static mb_status replace(const mb_tok_norm *st, mb_tok_scratch *sc, const char *s, size_t n,
                         mb_tok_buf *out)
{
    size_t at = 0;
    while (at <= n) {
        size_t ms, me;
        if (st->re) {
            if (pcre2_match(st->re, (PCRE2_SPTR)s, n, at, PCRE2_NO_UTF_CHECK, sc->md, NULL) < 0)
                break;
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(sc->md);
            ms = ov[0];
            me = ov[1];
        } else {
            const char *hit = memmem(s + at, n - at, st->a, st->a_len);
            if (!hit) break;
            ms = (size_t)(hit - s);
            me = ms + st->a_len;
        }
        if (mb_tok_buf_put(out, s + at, ms - at) || mb_tok_buf_put(out, st->b, st->b_len))
            return MB_STATUS_NOMEM;
        if (me == ms) { /* an empty match: keep one character and move on */
            if (ms == n) {
                at = n + 1;
                break;
            }
            size_t l = mb_tok_utf8_len((unsigned char)s[ms]);
            if (mb_tok_buf_put(out, s + ms, l)) return MB_STATUS_NOMEM;
            me = ms + l;
        }
        at = me;
    }
    if (at < n && mb_tok_buf_put(out, s + at, n - at)) return MB_STATUS_NOMEM;
    return MB_STATUS_OK;
}

static mb_status strip(const mb_tok_norm *st, const char *s, size_t n, mb_tok_buf *out)
{
    size_t b = 0, e = n, l;
    while (st->left && b < e && mb_tok_is_space(mb_tok_utf8_decode(s + b, e - b, &l)))
        b += l;
    while (st->right && e > b) {
        size_t p = e - 1;
        while (p > b && ((unsigned char)s[p] & 0xc0) == 0x80)
            p--;
        if (!mb_tok_is_space(mb_tok_utf8_decode(s + p, e - p, &l))) break;
        e = p;
    }
    return mb_tok_buf_put(out, s + b, e - b) ? MB_STATUS_NOMEM : MB_STATUS_OK;
}

mb_status mb_tok_normalize(const mb_tokenizer *tok, mb_tok_scratch *sc, const char *text, size_t n,
                           mb_tok_buf *out)
{
    out->len = 0;
    if (mb_tok_buf_put(out, text, n)) return MB_STATUS_NOMEM;
    mb_tok_buf *tmp = &sc->buf[2];
    for (uint32_t i = 0; i < tok->n_norm; i++) {
        const mb_tok_norm *st = &tok->norm[i];
        mb_status rc = MB_STATUS_OK;
        tmp->len = 0;
        switch (st->kind) {
        case MB_TOK_NORM_NFC:
        case MB_TOK_NORM_NFD:
        case MB_TOK_NORM_NFKC:
        case MB_TOK_NORM_NFKD: rc = unicode_form(st->kind, out->data, out->len, tmp); break;
        case MB_TOK_NORM_LOWERCASE: rc = lowercase(out->data, out->len, tmp); break;
        case MB_TOK_NORM_PREPEND:
            if (out->len && (mb_tok_buf_put(tmp, st->a, st->a_len) ||
                             mb_tok_buf_put(tmp, out->data, out->len)))
                rc = MB_STATUS_NOMEM;
            else if (!out->len && mb_tok_buf_put(tmp, "", 0))
                rc = MB_STATUS_NOMEM;
            break;
        case MB_TOK_NORM_REPLACE: rc = replace(st, sc, out->data, out->len, tmp); break;
        case MB_TOK_NORM_STRIP: rc = strip(st, out->data, out->len, tmp); break;
        }
        if (rc != MB_STATUS_OK) return rc;
        mb_tok_buf swap = *out;
        *out = *tmp;
        *tmp = swap;
    }
    return MB_STATUS_OK;
}

void mb_tok_pieces_free(mb_tok_pieces *p)
{
    free(p->text.data);
    free(p->spans);
    memset(p, 0, sizeof *p);
}

/* Appends bytes as a new piece (empty pieces are dropped, as Hugging Face
 * filters them). */
static mb_status piece_add(mb_tok_pieces *p, const char *s, size_t n, int at_origin)
{
    if (n == 0) return MB_STATUS_OK;
    if (p->text.len + n > UINT32_MAX) return MB_STATUS_OVERFLOW;
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 64;
        mb_tok_span *grown = realloc(p->spans, cap * sizeof *grown);
        if (!grown) return MB_STATUS_NOMEM;
        p->spans = grown;
        p->cap = cap;
    }
    p->spans[p->n++] = (mb_tok_span){(uint32_t)p->text.len, (uint32_t)n, (uint8_t)at_origin};
    return mb_tok_buf_put(&p->text, s, n) ? MB_STATUS_NOMEM : MB_STATUS_OK;
}

static mb_status seg_add(mb_tok_scratch *sc, size_t *n, size_t start, size_t end, int is_match)
{
    if (*n == sc->segs_cap) {
        size_t cap = sc->segs_cap ? 2 * sc->segs_cap : 256;
        mb_tok_seg *grown = realloc(sc->segs, cap * sizeof *grown);
        if (!grown) return MB_STATUS_NOMEM;
        sc->segs = grown;
        sc->segs_cap = cap;
    }
    sc->segs[(*n)++] = (mb_tok_seg){(uint32_t)start, (uint32_t)end, (uint8_t)is_match};
    return MB_STATUS_OK;
}

/* Splits s[0..n) by re's matches with behaviour b (Hugging Face's
 * NormalizedString::split), appending the pieces to out. */
static mb_status split_regex(mb_tok_scratch *sc, const pcre2_code *re, mb_tok_split_behavior b,
                             int invert, const char *s, size_t n, int at_origin,
                             mb_tok_pieces *out)
{
    size_t n_segs = 0, prev = 0, at = 0;
    mb_status st = MB_STATUS_OK;
    while (at <= n && st == MB_STATUS_OK) {
        if (pcre2_match(re, (PCRE2_SPTR)s, n, at, PCRE2_NO_UTF_CHECK, sc->md, NULL) < 0) break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(sc->md);
        size_t ms = ov[0], me = ov[1];
        if (prev != ms) st = seg_add(sc, &n_segs, prev, ms, 0);
        if (st == MB_STATUS_OK) st = seg_add(sc, &n_segs, ms, me, 1);
        prev = me;
        at = me > ms ? me : ms < n ? ms + mb_tok_utf8_len((unsigned char)s[ms]) : n + 1;
    }
    if (st == MB_STATUS_OK && prev < n) st = seg_add(sc, &n_segs, prev, n, 0);
    if (st != MB_STATUS_OK) return st;
    mb_tok_seg *g = sc->segs;
    if (invert)
        for (size_t i = 0; i < n_segs; i++)
            g[i].is_match = !g[i].is_match;

    /* Fold the segments per behaviour, in place; then emit. */
    size_t k = 0;
    int prev_match = 0;
    switch (b) {
    case MB_TOK_SPLIT_ISOLATED: k = n_segs; break;
    case MB_TOK_SPLIT_REMOVED:
        for (size_t i = 0; i < n_segs; i++)
            if (!g[i].is_match) g[k++] = g[i];
        break;
    case MB_TOK_SPLIT_MERGED_WITH_PREVIOUS:
        for (size_t i = 0; i < n_segs; i++) {
            if (g[i].is_match && !prev_match && k > 0)
                g[k - 1].end = g[i].end;
            else
                g[k++] = g[i];
            prev_match = g[i].is_match;
        }
        break;
    case MB_TOK_SPLIT_MERGED_WITH_NEXT:
        for (size_t i = n_segs; i-- > 0;) { /* right to left, kept in place from the end */
            if (g[i].is_match && !prev_match && k > 0) {
                g[n_segs - k].start = g[i].start;
            } else {
                prev_match = g[i].is_match;
                g[n_segs - ++k] = g[i];
                continue;
            }
            prev_match = g[i].is_match;
        }
        memmove(g, g + n_segs - k, k * sizeof *g);
        break;
    case MB_TOK_SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < n_segs; i++) {
            if (g[i].is_match == prev_match && k > 0)
                g[k - 1].end = g[i].end;
            else
                g[k++] = g[i];
            prev_match = g[i].is_match;
        }
        break;
    }
    for (size_t i = 0; i < k && st == MB_STATUS_OK; i++)
        st = piece_add(out, s + g[i].start, g[i].end - g[i].start, at_origin && g[i].start == 0);
    return st;
}

/* Byte-level: the piece's bytes in GPT-2's printable alphabet. */
static mb_status byte_level_map(const char *s, size_t n, mb_tok_buf *out)
{
    for (size_t i = 0; i < n; i++) {
        char c[2];
        size_t l;
        mb_tok_byte_level_char((unsigned char)s[i], c, &l);
        if (mb_tok_buf_put(out, c, l)) return MB_STATUS_NOMEM;
    }
    return MB_STATUS_OK;
}

/* One pre-tokenizer over one piece, appending to out. */
static mb_status pre_piece(const mb_tok_pre *p, mb_tok_scratch *sc, const char *s, size_t n,
                           int at_origin, mb_tok_pieces *out)
{
    mb_tok_buf *t = &sc->buf[2];
    t->len = 0;
    switch (p->kind) {
    case MB_TOK_PRE_SPLIT:
    case MB_TOK_PRE_DIGITS:
        return split_regex(sc, p->re, p->behavior, p->invert, s, n, at_origin, out);
    case MB_TOK_PRE_BYTE_LEVEL: {
        if (p->add_prefix_space && (n == 0 || s[0] != ' ') && mb_tok_buf_put(t, " ", 1))
            return MB_STATUS_NOMEM;
        if (mb_tok_buf_put(t, s, n)) return MB_STATUS_NOMEM;
        mb_tok_pieces *raw = &sc->pieces[2];
        raw->n = 0;
        raw->text.len = 0;
        mb_status st = p->re ? split_regex(sc, p->re, MB_TOK_SPLIT_ISOLATED, 0, t->data, t->len,
                                           at_origin, raw)
                             : piece_add(raw, t->data, t->len, at_origin);
        mb_tok_buf *m = &sc->buf[1];
        for (size_t i = 0; i < raw->n && st == MB_STATUS_OK; i++) {
            m->len = 0;
            st = byte_level_map(raw->text.data + raw->spans[i].off, raw->spans[i].len, m);
            if (st == MB_STATUS_OK) st = piece_add(out, m->data, m->len, raw->spans[i].at_origin);
        }
        return st;
    }
    case MB_TOK_PRE_METASPACE: {
        int starts = n >= p->a_len && memcmp(s, p->a, p->a_len) == 0;
        int prepend = p->prepend_scheme == MB_TOK_PREPEND_ALWAYS ||
                      (p->prepend_scheme == MB_TOK_PREPEND_FIRST && at_origin);
        if (prepend && !starts && mb_tok_buf_put(t, p->a, p->a_len)) return MB_STATUS_NOMEM;
        for (size_t i = 0; i < n; i++) {
            if (s[i] == ' ' ? mb_tok_buf_put(t, p->a, p->a_len) : mb_tok_buf_put(t, s + i, 1))
                return MB_STATUS_NOMEM;
        }
        if (!p->split) return piece_add(out, t->data, t->len, at_origin);
        /* t lives in scratch that split_regex does not touch */
        return split_regex(sc, p->re, MB_TOK_SPLIT_MERGED_WITH_NEXT, 0, t->data, t->len,
                           at_origin, out);
    }
    }
    return MB_STATUS_OK;
}

mb_status mb_tok_pretokenize(const mb_tokenizer *tok, mb_tok_scratch *sc, const char *text,
                             size_t n, int at_origin, mb_tok_pieces **out)
{
    mb_tok_pieces *cur = &sc->pieces[0], *next = &sc->pieces[1];
    cur->n = 0;
    cur->text.len = 0;
    mb_status st = piece_add(cur, text, n, at_origin);
    for (uint32_t i = 0; i < tok->n_pre && st == MB_STATUS_OK; i++) {
        next->n = 0;
        next->text.len = 0;
        for (size_t k = 0; k < cur->n && st == MB_STATUS_OK; k++)
            st = pre_piece(&tok->pre[i], sc, cur->text.data + cur->spans[k].off,
                           cur->spans[k].len, cur->spans[k].at_origin, next);
        mb_tok_pieces *swap = cur;
        cur = next;
        next = swap;
    }
    *out = cur;
    return st;
}
