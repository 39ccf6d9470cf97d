// util.c — the small pieces the tokenizer is built from: open-addressing hash tables (vocab,
// merges, the added-token trie), growable buffers, UTF-8 decoding with lossy repair, and GPT-2's
// byte ↔ character table used by byte-level BPE.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

// ---- errors -------------------------------------------------------------------------------------

void tok_errorf(char *err, size_t err_len, const char *fmt, ...) {
    if (!err || err_len == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

// ---- hashing ------------------------------------------------------------------------------------

// 64-bit FNV-1a over 8-byte words with a final mix: tokens are short, so speed is in the setup,
// not the loop. The mix spreads the low bits, which pick the slot.
uint64_t tok_hash_bytes(const char *s, size_t len) {
    uint64_t h = 0xcbf29ce484222325ull ^ len;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    for (; i < len; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static size_t capacity_for(size_t expected) {
    size_t cap = 16;
    while (cap < expected * 2 + 2) cap *= 2;
    return cap;
}

// ---- string → int32 -----------------------------------------------------------------------------

int tok_strmap_init(tok_strmap *m, size_t expected) {
    size_t cap = capacity_for(expected);
    m->slots = calloc(cap, sizeof *m->slots);
    m->mask = cap - 1;
    m->count = 0;
    return m->slots ? 0 : -1;
}

void tok_strmap_free(tok_strmap *m) {
    free(m->slots);
    m->slots = NULL;
    m->mask = 0;
    m->count = 0;
}

static int strmap_grow(tok_strmap *m) {
    tok_strmap bigger;
    if (tok_strmap_init(&bigger, (m->mask + 1)) != 0) return -1;
    for (size_t i = 0; i <= m->mask; i++) {
        tok_strmap_slot *s = &m->slots[i];
        if (s->key) tok_strmap_put(&bigger, s->key, s->len, s->value);
    }
    free(m->slots);
    *m = bigger;
    return 0;
}

int tok_strmap_put(tok_strmap *m, const char *key, size_t len, int32_t value) {
    if ((m->count + 1) * 2 > m->mask + 1 && strmap_grow(m) != 0) return -1;
    size_t i = tok_hash_bytes(key, len) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        tok_strmap_slot *s = &m->slots[i];
        if (!s->key) {
            s->key = key;
            s->len = (uint32_t)len;
            s->value = value;
            m->count++;
            return 0;
        }
        if (s->len == len && memcmp(s->key, key, len) == 0) {
            s->value = value;
            return 0;
        }
    }
}

int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len) {
    if (!m->slots) return -1;
    size_t i = tok_hash_bytes(key, len) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        const tok_strmap_slot *s = &m->slots[i];
        if (!s->key) return -1;
        if (s->len == len && memcmp(s->key, key, len) == 0) return s->value;
    }
}

// ---- uint64 → uint64 ----------------------------------------------------------------------------

int tok_u64map_init(tok_u64map *m, size_t expected) {
    size_t cap = capacity_for(expected);
    m->keys = malloc(cap * sizeof *m->keys);
    m->values = malloc(cap * sizeof *m->values);
    m->mask = cap - 1;
    m->count = 0;
    if (!m->keys || !m->values) {
        tok_u64map_free(m);
        return -1;
    }
    memset(m->keys, 0xff, cap * sizeof *m->keys);
    return 0;
}

void tok_u64map_free(tok_u64map *m) {
    free(m->keys);
    free(m->values);
    m->keys = NULL;
    m->values = NULL;
    m->mask = 0;
    m->count = 0;
}

static int u64map_grow(tok_u64map *m) {
    tok_u64map bigger;
    if (tok_u64map_init(&bigger, m->mask + 1) != 0) return -1;
    for (size_t i = 0; i <= m->mask; i++)
        if (m->keys[i] != UINT64_MAX) tok_u64map_put(&bigger, m->keys[i], m->values[i]);
    tok_u64map_free(m);
    *m = bigger;
    return 0;
}

int tok_u64map_put(tok_u64map *m, uint64_t key, uint64_t value) {
    if (!m->keys && tok_u64map_init(m, 16) != 0) return -1;
    if ((m->count + 1) * 2 > m->mask + 1 && u64map_grow(m) != 0) return -1;
    size_t i = hash_u64(key) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        if (m->keys[i] == UINT64_MAX) {
            m->keys[i] = key;
            m->values[i] = value;
            m->count++;
            return 0;
        }
        if (m->keys[i] == key) {
            m->values[i] = value;
            return 0;
        }
    }
}

int tok_u64map_get(const tok_u64map *m, uint64_t key, uint64_t *value) {
    if (!m->keys) return 0;
    size_t i = hash_u64(key) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        if (m->keys[i] == UINT64_MAX) return 0;
        if (m->keys[i] == key) {
            *value = m->values[i];
            return 1;
        }
    }
}

// ---- buffers ------------------------------------------------------------------------------------

int tok_buf_reserve(tok_buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int tok_buf_append(tok_buf *b, const void *p, size_t n) {
    if (tok_buf_reserve(b, n) != 0) return -1;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int tok_ids_push(tok_ids *v, int32_t id) {
    if (v->len == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int32_t *p = realloc(v->data, cap * sizeof *p);
        if (!p) return -1;
        v->data = p;
        v->cap = cap;
    }
    v->data[v->len++] = id;
    return 0;
}

// ---- UTF-8 --------------------------------------------------------------------------------------

size_t tok_utf8_next(const char *s, size_t n, uint32_t *cp) {
    const uint8_t *u = (const uint8_t *)s;
    if (u[0] < 0x80 || n < 2) {
        *cp = u[0];
        return 1;
    }
    if (u[0] < 0xE0) {
        *cp = ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
        return 2;
    }
    if (u[0] < 0xF0 || n < 4) {
        if (n < 3) {
            *cp = u[0];
            return 1;
        }
        *cp = ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) |
          ((uint32_t)(u[2] & 0x3F) << 6) | (u[3] & 0x3F);
    return 4;
}

// The lead byte decides how many continuation bytes follow and the range the first of them may
// take (this is what excludes overlong forms, surrogates and code points above U+10FFFF).
static int lead_byte(uint8_t b, int *needed, uint8_t *lower, uint8_t *upper) {
    *lower = 0x80;
    *upper = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
        *needed = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
        *needed = 2;
        if (b == 0xE0) *lower = 0xA0;
        if (b == 0xED) *upper = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        *needed = 3;
        if (b == 0xF0) *lower = 0x90;
        if (b == 0xF4) *upper = 0x8F;
    } else {
        return 0;
    }
    return 1;
}

int tok_utf8_valid(const char *s, size_t n) {
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        int needed;
        uint8_t lo, hi;
        if (!lead_byte(u[i], &needed, &lo, &hi) || n - i <= (size_t)needed) return 0;
        if (u[i + 1] < lo || u[i + 1] > hi) return 0;
        for (int k = 2; k <= needed; k++)
            if (u[i + k] < 0x80 || u[i + k] > 0xBF) return 0;
        i += (size_t)needed + 1;
    }
    return 1;
}

static const char REPLACEMENT[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

int tok_utf8_lossy(tok_utf8_state *st, const char *s, size_t n, int final, tok_buf *out) {
    const uint8_t *u = (const uint8_t *)s;
    if (tok_buf_reserve(out, n + 8) != 0) return -1;
    size_t run = 0;  // start of the pending run of complete, valid bytes in s
    size_t i = 0;
    // A run of valid bytes is copied in one go; held bytes of a character begun in an earlier
    // call are completed (or replaced) first.
    while (i < n) {
        uint8_t b = u[i];
        if (st->needed == 0) {
            if (b < 0x80) {
                i++;
                continue;
            }
            int needed;
            uint8_t lo, hi;
            if (tok_buf_append(out, s + run, i - run) != 0) return -1;
            run = i;
            if (!lead_byte(b, &needed, &lo, &hi)) {
                if (tok_buf_append(out, REPLACEMENT, 3) != 0) return -1;
                run = ++i;
                continue;
            }
            st->needed = needed;
            st->lower = lo;
            st->upper = hi;
            st->held[0] = b;
            st->n_held = 1;
            i++;
            continue;
        }
        if (b < st->lower || b > st->upper) {
            // The held bytes are a maximal invalid subpart: one U+FFFD; b is looked at again.
            if (tok_buf_append(out, REPLACEMENT, 3) != 0) return -1;
            st->needed = 0;
            st->n_held = 0;
            run = i;
            continue;
        }
        st->lower = 0x80;
        st->upper = 0xBF;
        st->held[st->n_held++] = b;
        i++;
        if (st->n_held == st->needed + 1) {
            if (tok_buf_append(out, st->held, (size_t)st->n_held) != 0) return -1;
            st->needed = 0;
            st->n_held = 0;
            run = i;
        }
    }
    if (st->needed == 0 && tok_buf_append(out, s + run, n - run) != 0) return -1;
    if (final && st->needed != 0) {
        if (tok_buf_append(out, REPLACEMENT, 3) != 0) return -1;
        st->needed = 0;
        st->n_held = 0;
    }
    return 0;
}

// ---- GPT-2 byte-level alphabet ------------------------------------------------------------------

// Bytes that are printable Latin-1 characters stand for themselves; the other 68 bytes (controls,
// space, 0x7F-0xA0, 0xAD) stand for U+0100, U+0101, ... in byte order. So every byte string maps
// to a string of printable characters and back.
static int printable_byte(int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static uint32_t byte_code_point(int b) {
    if (printable_byte(b)) return (uint32_t)b;
    uint32_t k = 0;
    for (int i = 0; i < b; i++)
        if (!printable_byte(i)) k++;
    return 256 + k;
}

// Filled once by tok_byte_table_init (the loader calls it before any tokenizer exists).
char tok_byte_char[256][3];

static int byte_table_ready;
static int char_byte_table[0x144];

static void byte_table_init(void) {
    char(*t)[3] = tok_byte_char;
    for (int i = 0; i < 0x144; i++) char_byte_table[i] = -1;
    for (int b = 0; b < 256; b++) {
        uint32_t cp = byte_code_point(b);
        if (cp < 0x80) {
            t[b][0] = (char)cp;
            t[b][1] = 0;
        } else {
            t[b][0] = (char)(0xC0 | (cp >> 6));
            t[b][1] = (char)(0x80 | (cp & 0x3F));
        }
        t[b][2] = 0;
        char_byte_table[cp] = b;
    }
    __atomic_store_n(&byte_table_ready, 1, __ATOMIC_RELEASE);
}

// Idempotent; racing first callers write the same values.
void tok_byte_table_init(void) {
    if (!__atomic_load_n(&byte_table_ready, __ATOMIC_ACQUIRE)) byte_table_init();
}

int tok_char_to_byte(uint32_t cp) {
    return cp < 0x144 ? char_byte_table[cp] : -1;
}
