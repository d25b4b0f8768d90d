/* The BPE model: a word's characters become vocabulary ids (or byte-fallback
 * or unknown tokens), then the lowest-ranked adjacent pair is merged until
 * none merges, with a heap over the pairs, as Hugging Face's Word::merge_all
 * does. Words up to 256 bytes are memoised per encode call. */
#include <stdlib.h>
#include <string.h>

#include "broker/tokenizer/tokenizer_impl.h"

#define CACHE_MAX_WORD 256
#define CACHE_FIRST_SLOTS 4096u
#define CACHE_MAX_SLOTS (1u << 20)

static uint64_t word_hash(const char *s, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h | 1; /* 0 marks an empty slot */
}

static int merge_less(const mb_tok_merge *a, const mb_tok_merge *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static int heap_push(mb_tok_scratch *sc, size_t *n, mb_tok_merge m)
{
    if (*n == sc->heap_cap) {
        size_t cap = sc->heap_cap ? 2 * sc->heap_cap : 256;
        mb_tok_merge *grown = realloc(sc->heap, cap * sizeof *grown);
        if (!grown) return -1;
        sc->heap = grown;
        sc->heap_cap = cap;
    }
    size_t i = (*n)++;
    while (i > 0 && merge_less(&m, &sc->heap[(i - 1) / 2])) {
        sc->heap[i] = sc->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    sc->heap[i] = m;
    return 0;
}

static mb_tok_merge heap_pop(mb_tok_scratch *sc, size_t *n)
{
    mb_tok_merge top = sc->heap[0], last = sc->heap[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && merge_less(&sc->heap[c + 1], &sc->heap[c])) c++;
        if (!merge_less(&sc->heap[c], &last)) break;
        sc->heap[i] = sc->heap[c];
        i = c;
    }
    if (*n) sc->heap[i] = last;
    return top;
}

static int sym_push(mb_tok_scratch *sc, size_t *n, int32_t id)
{
    if (*n == sc->sym_cap) {
        size_t cap = sc->sym_cap ? 2 * sc->sym_cap : 256;
        mb_tok_sym *grown = realloc(sc->sym, cap * sizeof *grown);
        if (!grown) return -1;
        sc->sym = grown;
        sc->sym_cap = cap;
    }
    sc->sym[*n] = (mb_tok_sym){id, (int32_t)*n - 1, (int32_t)*n + 1};
    (*n)++;
    return 0;
}

/* The initial symbols: one per character, else its bytes' <0xXX> tokens,
 * else the unknown token (consecutive unknowns fused when fuse_unk). */
static int initial_symbols(const mb_tokenizer *tok, mb_tok_scratch *sc, const char *w, size_t n,
                           size_t *n_sym)
{
    int unk_pending = 0;
    for (size_t i = 0; i < n;) {
        size_t l;
        uint32_t cp = mb_tok_utf8_decode(w + i, n - i, &l);
        int32_t id = cp < MB_TOK_CP_TABLE ? tok->cp_id[cp] : mb_tok_vocab_find(tok, w + i, l);
        int fallback = id < 0 && tok->byte_fallback;
        for (size_t k = 0; fallback && k < l; k++)
            fallback = tok->byte_id[(unsigned char)w[i + k]] >= 0;
        if (id >= 0 || fallback) {
            if (unk_pending && sym_push(sc, n_sym, tok->unk_id)) return -1;
            unk_pending = 0;
            if (id >= 0 && sym_push(sc, n_sym, id)) return -1;
            for (size_t k = 0; id < 0 && k < l; k++)
                if (sym_push(sc, n_sym, tok->byte_id[(unsigned char)w[i + k]])) return -1;
        } else if (tok->unk_id >= 0) {
            if (unk_pending && !tok->fuse_unk && sym_push(sc, n_sym, tok->unk_id)) return -1;
            unk_pending = 1;
        }
        i += l;
    }
    if (unk_pending && sym_push(sc, n_sym, tok->unk_id)) return -1;
    return 0;
}

static int merge_all(const mb_tokenizer *tok, mb_tok_scratch *sc, size_t n_sym)
{
    size_t n_heap = 0;
    mb_tok_sym *s;
    for (size_t i = 0; i + 1 < n_sym; i++) {
        mb_tok_merge m = {0, (uint32_t)i, 0};
        s = sc->sym;
        if (mb_tok_merge_find(tok, s[i].id, s[i + 1].id, &m.rank, &m.merged) == 0 &&
            heap_push(sc, &n_heap, m))
            return -1;
    }
    while (n_heap) {
        mb_tok_merge top = heap_pop(sc, &n_heap);
        s = sc->sym;
        mb_tok_sym *cur = &s[top.pos];
        if (cur->id < 0 || cur->next < 0 || (size_t)cur->next >= n_sym) continue;
        int32_t right = cur->next;
        uint32_t rank;
        int32_t merged;
        if (mb_tok_merge_find(tok, cur->id, s[right].id, &rank, &merged) || merged != top.merged)
            continue;
        cur->id = merged;
        cur->next = s[right].next;
        s[right].id = -1;
        if (cur->next >= 0 && (size_t)cur->next < n_sym) s[cur->next].prev = (int32_t)top.pos;
        mb_tok_merge m = {0, 0, 0};
        if (cur->prev >= 0 &&
            mb_tok_merge_find(tok, s[cur->prev].id, cur->id, &m.rank, &m.merged) == 0) {
            m.pos = (uint32_t)cur->prev;
            if (heap_push(sc, &n_heap, m)) return -1;
        }
        s = sc->sym;
        cur = &s[top.pos];
        if (cur->next >= 0 && (size_t)cur->next < n_sym &&
            mb_tok_merge_find(tok, cur->id, s[cur->next].id, &m.rank, &m.merged) == 0) {
            m.pos = top.pos;
            if (heap_push(sc, &n_heap, m)) return -1;
        }
    }
    return 0;
}

static mb_tok_cache_slot *cache_find(mb_tok_scratch *sc, uint64_t h, const char *w, size_t n)
{
    if (!sc->cache) return NULL;
    uint32_t mask = sc->cache_slots - 1;
    for (uint32_t i = (uint32_t)h & mask;; i = (i + 1) & mask) {
        mb_tok_cache_slot *c = &sc->cache[i];
        if (c->hash == 0) return c;
        if (c->hash == h && c->key_len == n && memcmp(sc->cache_keys.data + c->key_off, w, n) == 0)
            return c;
    }
}

/* Remembers word -> out[first..]; silently skipped when full or short of
 * memory (the cache is only a speed-up). */
static void cache_put(mb_tok_scratch *sc, uint64_t h, const char *w, size_t n,
                      const mb_tok_ids *out, size_t first)
{
    if (!sc->cache) {
        sc->cache = calloc(CACHE_FIRST_SLOTS, sizeof *sc->cache);
        if (!sc->cache) return;
        sc->cache_slots = CACHE_FIRST_SLOTS;
    }
    if (4 * (sc->cache_used + 1) > 3 * sc->cache_slots) {
        if (sc->cache_slots >= CACHE_MAX_SLOTS) return;
        mb_tok_cache_slot *old = sc->cache;
        uint32_t old_n = sc->cache_slots;
        sc->cache = calloc(2 * (size_t)old_n, sizeof *sc->cache);
        if (!sc->cache) {
            sc->cache = old;
            return;
        }
        sc->cache_slots = 2 * old_n;
        for (uint32_t i = 0; i < old_n; i++) {
            if (!old[i].hash) continue;
            uint32_t mask = sc->cache_slots - 1, k = (uint32_t)old[i].hash & mask;
            while (sc->cache[k].hash)
                k = (k + 1) & mask;
            sc->cache[k] = old[i];
        }
        free(old);
    }
    size_t key_off = sc->cache_keys.len, ids_off = sc->cache_ids.len;
    if (key_off + n > UINT32_MAX || ids_off + (out->len - first) > UINT32_MAX) return;
    if (mb_tok_buf_put(&sc->cache_keys, w, n)) return;
    for (size_t i = first; i < out->len; i++)
        if (mb_tok_ids_put(&sc->cache_ids, out->data[i])) return;
    mb_tok_cache_slot *c = cache_find(sc, h, w, n);
    *c = (mb_tok_cache_slot){h, (uint32_t)key_off, (uint32_t)n, (uint32_t)ids_off,
                             (uint32_t)(out->len - first)};
    sc->cache_used++;
}

mb_status mb_tok_bpe_word(const mb_tokenizer *tok, mb_tok_scratch *sc, const char *w, size_t n,
                          mb_tok_ids *out)
{
    uint64_t h = 0;
    if (n <= CACHE_MAX_WORD) {
        h = word_hash(w, n);
        mb_tok_cache_slot *c = cache_find(sc, h, w, n);
        if (c && c->hash) {
            for (uint32_t i = 0; i < c->n_ids; i++)
                if (mb_tok_ids_put(out, sc->cache_ids.data[c->ids_off + i])) return MB_STATUS_NOMEM;
            return MB_STATUS_OK;
        }
    }
    size_t first = out->len;
    int32_t whole = tok->ignore_merges ? mb_tok_vocab_find(tok, w, n) : -1;
    if (whole >= 0) {
        if (mb_tok_ids_put(out, whole)) return MB_STATUS_NOMEM;
    } else {
        size_t n_sym = 0;
        if (initial_symbols(tok, sc, w, n, &n_sym) || merge_all(tok, sc, n_sym))
            return MB_STATUS_NOMEM;
        for (size_t i = 0; i < n_sym; i++)
            if (sc->sym[i].id >= 0 && mb_tok_ids_put(out, sc->sym[i].id)) return MB_STATUS_NOMEM;
    }
    if (h) cache_put(sc, h, w, n, out, first);
    return MB_STATUS_OK;
}
