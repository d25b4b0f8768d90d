/* Decoding, whole or one token at a time: each token's text flows through
 * the decoder steps (byte-level, replace, byte fallback, fuse, strip,
 * Metaspace) as Hugging Face's decode_chain does, and the resulting bytes
 * leave through a UTF-8 gate that holds an incomplete sequence back until
 * it completes. Whole decoding is a stream pushed at once, so both agree by
 * construction. */
#include <stdlib.h>
#include <string.h>

#include "broker/tokenizer/tokenizer_impl.h"

struct mb_tokenizer_stream {
    const mb_tokenizer *tok;
    int skip_special;
    uint64_t n_tokens;                  /* tokens decoded since the text began */
    uint64_t step_count[MB_TOK_MAX_STAGES]; /* tokens that reached each step */
    uint32_t strip_left[MB_TOK_MAX_STAGES]; /* fused Strip: start characters left */
    mb_tok_buf run;   /* pending <0xXX> bytes of a byte-fallback run */
    int run_step;     /* the step that holds run */
    mb_tok_buf held;  /* bytes not yet known to be complete UTF-8 */
    mb_tok_buf out;   /* the text returned by the last call */
};

static const char replacement_char[3] = {(char)0xef, (char)0xbf, (char)0xbd};

/* The UTF-8 gate: appends complete text to s->out, keeps the rest held. */
static mb_status emit(mb_tokenizer_stream *s, const char *p, size_t n, int final)
{
    if (mb_tok_buf_put(&s->held, p, n)) return MB_STATUS_NOMEM;
    size_t used = mb_tok_utf8_lossy(s->held.data, s->held.len, final, &s->out);
    if (used == SIZE_MAX) return MB_STATUS_NOMEM;
    memmove(s->held.data, s->held.data + used, s->held.len - used);
    s->held.len -= used;
    return MB_STATUS_OK;
}

static int byte_token(const char *t, size_t n, unsigned char *b)
{
    static const char hex[] = "0123456789ABCDEF";
    if (n != 6 || memcmp(t, "<0x", 3) != 0 || t[5] != '>') return 0;
    const char *hi = memchr(hex, t[3], 16), *lo = memchr(hex, t[4], 16);
    if (!hi || !lo || !t[3] || !t[4]) return 0;
    *b = (unsigned char)((hi - hex) << 4 | (lo - hex));
    return 1;
}

static int fused_before(const mb_tokenizer *tok, uint32_t step)
{
    for (uint32_t i = 0; i < step; i++)
        if (tok->dec[i].kind == MB_TOK_DEC_FUSE || tok->dec[i].kind == MB_TOK_DEC_BYTE_LEVEL)
            return 1;
    return 0;
}

static mb_status flow(mb_tokenizer_stream *s, uint32_t step, const char *t, size_t n);

/* Ends a byte-fallback run: its bytes as text when valid UTF-8, else one
 * U+FFFD per byte; the result continues after the run's step. */
static mb_status run_flush(mb_tokenizer_stream *s)
{
    if (s->run.len == 0) return MB_STATUS_OK;
    mb_tok_buf text = {0};
    mb_status st = MB_STATUS_NOMEM;
    size_t used = mb_tok_utf8_lossy(s->run.data, s->run.len, 1, &text);
    if (used == SIZE_MAX) goto done;
    if (text.len != s->run.len || memcmp(text.data, s->run.data, text.len) != 0) {
        text.len = 0;
        for (size_t i = 0; i < s->run.len; i++)
            if (mb_tok_buf_put(&text, replacement_char, 3)) goto done;
    }
    s->run.len = 0;
    st = flow(s, (uint32_t)s->run_step + 1, text.data, text.len);
done:
    free(text.data);
    return st;
}

/* Token text t enters decoder step `step`. */
static mb_status flow(mb_tokenizer_stream *s, uint32_t step, const char *t, size_t n)
{
    const mb_tokenizer *tok = s->tok;
    mb_tok_buf own = {0}; /* this level's rewritten text */
    mb_status st = MB_STATUS_OK;
    for (; step < tok->n_dec && st == MB_STATUS_OK; step++) {
        const mb_tok_dec *d = &tok->dec[step];
        uint64_t index = s->step_count[step]++;
        mb_tok_buf next = {0};
        switch (d->kind) {
        case MB_TOK_DEC_FUSE: continue;
        case MB_TOK_DEC_BYTE_FALLBACK: {
            unsigned char b;
            if (byte_token(t, n, &b)) {
                s->run_step = (int)step;
                st = mb_tok_buf_put(&s->run, &b, 1) ? MB_STATUS_NOMEM : MB_STATUS_OK;
                goto done;
            }
            st = run_flush(s);
            continue;
        }
        case MB_TOK_DEC_BYTE_LEVEL: {
            int ok = 1;
            for (size_t i = 0; i < n && ok;) {
                size_t l;
                int b = mb_tok_byte_level_byte(mb_tok_utf8_decode(t + i, n - i, &l));
                unsigned char c = (unsigned char)b;
                ok = b >= 0 && !mb_tok_buf_put(&next, &c, 1);
                i += l;
            }
            if (!ok) { /* a character outside the alphabet: the text as it is */
                next.len = 0;
                if (mb_tok_buf_put(&next, t, n)) st = MB_STATUS_NOMEM;
            }
            break;
        }
        case MB_TOK_DEC_REPLACE:
            for (size_t i = 0; i < n && st == MB_STATUS_OK;) {
                int hit = n - i >= d->a_len && memcmp(t + i, d->a, d->a_len) == 0;
                if (mb_tok_buf_put(&next, hit ? d->b : t + i, hit ? d->b_len : 1))
                    st = MB_STATUS_NOMEM;
                i += hit ? d->a_len : 1;
            }
            break;
        case MB_TOK_DEC_METASPACE:
            for (size_t i = 0; i < n && st == MB_STATUS_OK;) {
                int hit = n - i >= d->a_len && memcmp(t + i, d->a, d->a_len) == 0;
                if (hit && index == 0 && d->prepend_scheme != MB_TOK_PREPEND_NEVER) {
                    i += d->a_len;
                    continue;
                }
                if (mb_tok_buf_put(&next, hit ? " " : t + i, 1)) st = MB_STATUS_NOMEM;
                i += hit ? d->a_len : 1;
            }
            break;
        case MB_TOK_DEC_STRIP: {
            /* After a fuse the whole text is one token: strip its start once. */
            int fused = fused_before(tok, step);
            uint32_t left = fused ? s->strip_left[step] : d->start;
            size_t b = 0, e = n;
            while (left > 0 && b < e && e - b >= d->a_len && memcmp(t + b, d->a, d->a_len) == 0) {
                b += d->a_len;
                left--;
            }
            if (b < e) left = 0; /* a different character ends the stripping */
            if (fused) s->strip_left[step] = left;
            for (uint32_t k = 0; !fused && k < d->stop && e - b >= d->a_len &&
                                 memcmp(t + e - d->a_len, d->a, d->a_len) == 0;
                 k++)
                e -= d->a_len;
            if (mb_tok_buf_put(&next, t + b, e - b)) st = MB_STATUS_NOMEM;
            break;
        }
        }
        free(own.data);
        own = next;
        t = own.data ? own.data : "";
        n = own.len;
    }
    if (st == MB_STATUS_OK) st = emit(s, t, n, 0);
done:
    free(own.data);
    return st;
}

static void stream_reset(mb_tokenizer_stream *s)
{
    s->n_tokens = 0;
    memset(s->step_count, 0, sizeof s->step_count);
    for (uint32_t i = 0; i < s->tok->n_dec; i++)
        s->strip_left[i] = s->tok->dec[i].start;
    s->run.len = 0;
    s->held.len = 0;
}

mb_status mb_tokenizer_stream_create(const mb_tokenizer *tok, int skip_special,
                                     mb_tokenizer_stream **out)
{
    if (!tok || !out) return MB_STATUS_INVALID_ARG;
    mb_tokenizer_stream *s = calloc(1, sizeof *s);
    if (!s) return MB_STATUS_NOMEM;
    s->tok = tok;
    s->skip_special = skip_special;
    stream_reset(s);
    *out = s;
    return MB_STATUS_OK;
}

void mb_tokenizer_stream_destroy(mb_tokenizer_stream *s)
{
    if (!s) return;
    free(s->run.data);
    free(s->held.data);
    free(s->out.data);
    free(s);
}

mb_status mb_tokenizer_stream_push(mb_tokenizer_stream *s, int32_t id, const char **text,
                                   size_t *bytes)
{
    if (!s || !text || !bytes) return MB_STATUS_INVALID_ARG;
    const mb_tokenizer *tok = s->tok;
    s->out.len = 0;
    if (mb_tok_buf_put(&s->out, "", 0)) return MB_STATUS_NOMEM;
    *text = s->out.data;
    *bytes = 0;
    size_t n;
    const char *t = mb_tokenizer_token_text(tok, id, &n);
    if (!t) return MB_STATUS_OK; /* no such token: skipped, as Hugging Face does */
    if (s->skip_special && tok->added_of_id[id] >= 0 && tok->added[tok->added_of_id[id]].special)
        return MB_STATUS_OK;
    mb_status st = MB_STATUS_OK;
    if (!tok->has_decoder && s->n_tokens > 0) st = emit(s, " ", 1, 0); /* tokens joined by ' ' */
    s->n_tokens++;
    if (st == MB_STATUS_OK) st = flow(s, 0, t, n);
    *text = s->out.data;
    *bytes = s->out.len;
    return st;
}

mb_status mb_tokenizer_stream_finish(mb_tokenizer_stream *s, const char **text, size_t *bytes)
{
    if (!s || !text || !bytes) return MB_STATUS_INVALID_ARG;
    s->out.len = 0;
    mb_status st = mb_tok_buf_put(&s->out, "", 0) ? MB_STATUS_NOMEM : run_flush(s);
    if (st == MB_STATUS_OK) st = emit(s, "", 0, 1);
    *text = s->out.data;
    *bytes = s->out.len;
    stream_reset(s);
    return st;
}

mb_status mb_tokenizer_decode(const mb_tokenizer *tok, const int32_t *ids, size_t n_ids,
                              int skip_special, char **text, size_t *bytes)
{
    if (!tok || (!ids && n_ids) || !text || !bytes) return MB_STATUS_INVALID_ARG;
    mb_tokenizer_stream *s;
    mb_tok_buf all = {0};
    const char *piece;
    size_t n;
    mb_status st = mb_tokenizer_stream_create(tok, skip_special, &s);
    if (st != MB_STATUS_OK) return st;
    if (mb_tok_buf_put(&all, "", 0)) st = MB_STATUS_NOMEM;
    for (size_t i = 0; i < n_ids && st == MB_STATUS_OK; i++) {
        st = mb_tokenizer_stream_push(s, ids[i], &piece, &n);
        if (st == MB_STATUS_OK && mb_tok_buf_put(&all, piece, n)) st = MB_STATUS_NOMEM;
    }
    if (st == MB_STATUS_OK) st = mb_tokenizer_stream_finish(s, &piece, &n);
    if (st == MB_STATUS_OK && mb_tok_buf_put(&all, piece, n)) st = MB_STATUS_NOMEM;
    mb_tokenizer_stream_destroy(s);
    if (st != MB_STATUS_OK) {
        free(all.data);
        return st;
    }
    *text = all.data;
    *bytes = all.len;
    return MB_STATUS_OK;
}
