// bpe.c — byte-pair encoding of one pre-token: start from one symbol per character (per byte for
// byte-level models) and repeatedly apply the lowest-ranked merge, leftmost first, as Hugging
// Face's BPE does. A binary heap of candidate pairs keeps long words (a 100k-space run) at
// O(n log n) instead of rescanning the word after every merge.
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

// ---- the heap of candidate merges ---------------------------------------------------------------

// Key = rank << 32 | position of the left symbol: the smallest key is the lowest rank, and among
// equal ranks the leftmost pair, which is the order Hugging Face applies merges in.
typedef struct heap {
    uint64_t *a;
    size_t n, cap;
} heap;

static int heap_push(heap *h, uint64_t key) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        uint64_t *p = realloc(h->a, cap * sizeof *p);
        if (!p) return -1;
        h->a = p;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (h->a[parent] <= key) break;
        h->a[i] = h->a[parent];
        i = parent;
    }
    h->a[i] = key;
    return 0;
}

static uint64_t heap_pop(heap *h) {
    uint64_t top = h->a[0];
    uint64_t last = h->a[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && h->a[c + 1] < h->a[c]) c++;
        if (last <= h->a[c]) break;
        h->a[i] = h->a[c];
        i = c;
    }
    if (h->n) h->a[i] = last;
    return top;
}

// ---- symbols ------------------------------------------------------------------------------------

// A doubly linked list over an array: merging symbol i with its right neighbour j keeps i (with
// the merged id) and unlinks j, so positions stay stable for the heap keys.
typedef struct symbols {
    int32_t *id;
    int32_t *prev, *next;
    uint8_t *alive;
    int32_t n;
} symbols;

static int merge_of(const mpk_tokenizer *tok, int32_t a, int32_t b, uint32_t *rank,
                    int32_t *merged) {
    uint64_t v;
    if (!tok_u64map_get(&tok->merges, (uint64_t)(uint32_t)a << 32 | (uint32_t)b, &v)) return 0;
    *rank = (uint32_t)(v >> 32);
    *merged = (int32_t)(uint32_t)v;
    return 1;
}

static int push_pair(const mpk_tokenizer *tok, const symbols *s, heap *h, int32_t left) {
    int32_t right = s->next[left];
    if (right < 0) return 0;
    uint32_t rank;
    int32_t merged;
    if (!merge_of(tok, s->id[left], s->id[right], &rank, &merged)) return 0;
    return heap_push(h, (uint64_t)rank << 32 | (uint32_t)left);
}

static int apply_merges(const mpk_tokenizer *tok, symbols *s) {
    heap h = {0};
    for (int32_t i = 0; i + 1 < s->n; i++)
        if (push_pair(tok, s, &h, i) != 0) goto oom;
    while (h.n) {
        uint64_t key = heap_pop(&h);
        int32_t left = (int32_t)(uint32_t)key;
        if (!s->alive[left] || s->next[left] < 0) continue;
        int32_t right = s->next[left];
        uint32_t rank;
        int32_t merged;
        // A stale entry: the pair at this position changed since it was pushed.
        if (!merge_of(tok, s->id[left], s->id[right], &rank, &merged) || rank != (key >> 32))
            continue;
        s->id[left] = merged;
        s->alive[right] = 0;
        s->next[left] = s->next[right];
        if (s->next[right] >= 0) s->prev[s->next[right]] = left;
        if (s->prev[left] >= 0 && push_pair(tok, s, &h, s->prev[left]) != 0) goto oom;
        if (push_pair(tok, s, &h, left) != 0) goto oom;
    }
    free(h.a);
    return 0;
oom:
    free(h.a);
    return -1;
}

// ---- one word -----------------------------------------------------------------------------------

// Appends the initial symbol for one character (or byte). Unknown characters become the unk token
// (consecutive ones fused when fuse_unk) or are dropped when the model has none, as in HF.
static void add_symbol(const mpk_tokenizer *tok, symbols *s, int32_t id) {
    if (id < 0) {
        if (tok->unk_id < 0) return;
        if (tok->fuse_unk && s->n > 0 && s->id[s->n - 1] == tok->unk_id) return;
        id = tok->unk_id;
    }
    int32_t i = s->n++;
    s->id[i] = id;
    s->prev[i] = i - 1;
    s->next[i] = -1;
    if (i > 0) s->next[i - 1] = i;
    s->alive[i] = 1;
}

mpk_status tok_bpe_word(const mpk_tokenizer *tok, const char *w, size_t n, tok_ids *ids) {
    if (n == 0) return MPK_OK;
    if (tok->ignore_merges) {
        // The whole pre-token in the model's alphabet, looked up before any merge.
        int32_t id;
        if (tok->byte_level) {
            char small[512];
            tok_buf big = {0};
            char *m = small;
            size_t mlen = 0;
            if (n * 2 > sizeof small) {
                if (tok_buf_reserve(&big, n * 2) != 0) return MPK_ERR_NOMEM;
                m = big.data;
            }
            for (size_t i = 0; i < n; i++) {
                const char *c = tok_byte_char[(uint8_t)w[i]];
                m[mlen++] = c[0];
                if (c[1]) m[mlen++] = c[1];
            }
            id = tok_strmap_get(&tok->vocab, m, mlen);
            free(big.data);
        } else {
            id = tok_strmap_get(&tok->vocab, w, n);
        }
        if (id >= 0) return tok_ids_push(ids, id) == 0 ? MPK_OK : MPK_ERR_NOMEM;
    }

    // One symbol per byte (byte-level) or per character; up to n symbols either way.
    enum { STACK_SYMBOLS = 128 };
    int32_t st_id[STACK_SYMBOLS], st_prev[STACK_SYMBOLS], st_next[STACK_SYMBOLS];
    uint8_t st_alive[STACK_SYMBOLS];
    symbols s = {st_id, st_prev, st_next, st_alive, 0};
    void *heap_mem = NULL;
    if (n > STACK_SYMBOLS) {
        heap_mem = malloc(n * (3 * sizeof(int32_t) + 1));
        if (!heap_mem) return MPK_ERR_NOMEM;
        s.id = heap_mem;
        s.prev = s.id + n;
        s.next = s.prev + n;
        s.alive = (uint8_t *)(s.next + n);
    }
    if (tok->byte_level) {
        for (size_t i = 0; i < n; i++) add_symbol(tok, &s, tok->byte_ids[(uint8_t)w[i]]);
    } else {
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            size_t len = tok_utf8_next(w + i, n - i, &cp);
            add_symbol(tok, &s, tok_strmap_get(&tok->vocab, w + i, len));
            i += len;
        }
    }

    mpk_status st = MPK_OK;
    if (s.n > 1 && apply_merges(tok, &s) != 0) st = MPK_ERR_NOMEM;
    for (int32_t i = 0; st == MPK_OK && i >= 0 && i < s.n; i = s.next[i])
        if (tok_ids_push(ids, s.id[i]) != 0) st = MPK_ERR_NOMEM;
    free(heap_mem);
    return st;
}
