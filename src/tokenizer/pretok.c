// pretok.c — the encode pipeline in front of BPE, in Hugging Face's order: split the text on added
// tokens (leftmost-longest), normalize the pieces between them (NFC via utf8proc), split those with
// the pre-tokenizers (PCRE2 regexes read from tokenizer.json, the ByteLevel step), then hand every
// pre-token to BPE. Also the public mpk_tokenizer_encode, which adds the post-processor's ids.
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer/tok_internal.h"

// ---- added-token trie ---------------------------------------------------------------------------

int tok_trie_add(tok_trie *t, const char *s, size_t len, int32_t added_index) {
    if (t->cap_nodes == 0) {
        t->terminal = malloc(64 * sizeof *t->terminal);
        if (!t->terminal) return -1;
        t->cap_nodes = 64;
        t->num_nodes = 1;
        t->terminal[0] = -1;
    }
    int32_t node = 0;
    for (size_t i = 0; i < len; i++) {
        uint64_t key = (uint64_t)(uint32_t)node << 8 | (uint8_t)s[i], child;
        if (tok_u64map_get(&t->edges, key, &child)) {
            node = (int32_t)child;
            continue;
        }
        if (t->num_nodes == t->cap_nodes) {
            int32_t *p = realloc(t->terminal, (size_t)t->cap_nodes * 2 * sizeof *p);
            if (!p) return -1;
            t->terminal = p;
            t->cap_nodes *= 2;
        }
        int32_t fresh = t->num_nodes++;
        t->terminal[fresh] = -1;
        if (tok_u64map_put(&t->edges, key, (uint64_t)fresh) != 0) return -1;
        node = fresh;
    }
    t->terminal[node] = added_index;
    t->num_tokens++;
    return 0;
}

void tok_trie_free(tok_trie *t) {
    tok_u64map_free(&t->edges);
    free(t->terminal);
    memset(t, 0, sizeof *t);
}

// The longest added token starting at s[p] (an index into tok->added, or -1) and its end.
static int32_t trie_longest(const tok_trie *t, const char *s, size_t n, size_t p, size_t *end) {
    int32_t node = 0, best = -1;
    for (size_t i = p; i < n; i++) {
        uint64_t child;
        if (!tok_u64map_get(&t->edges, (uint64_t)(uint32_t)node << 8 | (uint8_t)s[i], &child))
            break;
        node = (int32_t)child;
        if (t->terminal[node] >= 0) {
            best = t->terminal[node];
            *end = i + 1;
        }
    }
    return best;
}

static int is_space_byte(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static int is_word_byte(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           c == '_' || (unsigned char)c >= 0x80;
}

// Finds the first added token in s[from..n): *mstart/*mend is the text it takes (lstrip/rstrip
// extend it over neighbouring whitespace, never before from). Returns its index or -1.
static int32_t next_added(const mpk_tokenizer *tok, const tok_trie *t, const char *s, size_t n,
                          size_t from, size_t *mstart, size_t *mend) {
    if (t->num_tokens == 0) return -1;
    for (size_t p = from; p < n; p++) {
        size_t end = 0;
        int32_t a = trie_longest(t, s, n, p, &end);
        if (a < 0) continue;
        const tok_added *ad = &tok->added[a];
        if (ad->single_word && ((p > 0 && is_word_byte(s[p - 1])) ||
                                (end < n && is_word_byte(s[end]))))
            continue;
        size_t start = p;
        if (ad->lstrip)
            while (start > from && is_space_byte(s[start - 1])) start--;
        if (ad->rstrip)
            while (end < n && is_space_byte(s[end])) end++;
        *mstart = start;
        *mend = end;
        return a;
    }
    return -1;
}

// ---- normalizers --------------------------------------------------------------------------------

static int all_ascii(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80) return 0;
    return 1;
}

mpk_status tok_normalize(const mpk_tokenizer *tok, const char *s, size_t n, tok_buf *out) {
    out->len = 0;
    if (tok_buf_append(out, s, n) != 0) return MPK_ERR_NOMEM;
    // ASCII is invariant under all four normal forms.
    if (all_ascii(s, n)) return MPK_OK;
    for (int k = 0; k < tok->num_norm; k++) {
        utf8proc_option_t opt = UTF8PROC_STABLE;
        switch (tok->norm[k]) {
        case TOK_NORM_NFC: opt |= UTF8PROC_COMPOSE; break;
        case TOK_NORM_NFD: opt |= UTF8PROC_DECOMPOSE; break;
        case TOK_NORM_NFKC: opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
        case TOK_NORM_NFKD: opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
        }
        utf8proc_uint8_t *dst = NULL;
        utf8proc_ssize_t m =
            utf8proc_map((const utf8proc_uint8_t *)out->data, (utf8proc_ssize_t)out->len, &dst, opt);
        if (m < 0) return m == UTF8PROC_ERROR_NOMEM ? MPK_ERR_NOMEM : MPK_ERR_INTERNAL;
        out->len = 0;
        int rc = tok_buf_append(out, dst, (size_t)m);
        free(dst);
        if (rc != 0) return MPK_ERR_NOMEM;
    }
    return MPK_OK;
}

// ---- regexes ------------------------------------------------------------------------------------

// Hugging Face compiles these patterns with Oniguruma, whose \s is exactly Unicode's White_Space;
// PCRE2's \s (with UCP) adds U+180E MONGOLIAN VOWEL SEPARATOR. Spelling \s and \S out as
// White_Space makes both engines split alike. Inside a class \s becomes the member list (\S
// there is left to PCRE2: no tokenizer we know writes it).
#define WHITE_SPACE "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}" \
                    "\\x{202F}\\x{205F}\\x{3000}"

static int rewrite_spaces(const char *p, size_t n, tok_buf *out) {
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        const char *put = NULL;
        size_t skip = 1;
        if (c == '\\' && i + 1 < n) {
            char e = p[i + 1];
            skip = 2;
            if (e == 's') put = in_class ? WHITE_SPACE : "[" WHITE_SPACE "]";
            else if (e == 'S' && !in_class) put = "[^" WHITE_SPACE "]";
        } else if (c == '[' && !in_class) {
            // A ']' right after '[' or '[^' is a literal member, not the end.
            in_class = 1;
            size_t j = i + 1;
            if (j < n && p[j] == '^') j++;
            if (j < n && p[j] == ']') j++;
            skip = j - i;
        } else if (c == '[' && in_class && i + 1 < n && p[i + 1] == ':') {
            const char *end = strstr(p + i, ":]");  // a POSIX class such as [:alpha:]
            skip = end && (size_t)(end - p) < n ? (size_t)(end - p) - i + 2 : 1;
        } else if (c == ']' && in_class) {
            in_class = 0;
        }
        int rc = put ? tok_buf_append(out, put, strlen(put)) : tok_buf_append(out, p + i, skip);
        if (rc != 0) return -1;
        i += skip - 1;
    }
    return 0;
}

pcre2_code *tok_regex_compile(const char *pattern, size_t len, int literal, char *err,
                              size_t err_len) {
    int code;
    PCRE2_SIZE offset;
    tok_buf rewritten = {0};
    if (!literal) {
        if (rewrite_spaces(pattern, len, &rewritten) != 0) {
            free(rewritten.data);
            tok_errorf(err, err_len, "out of memory compiling a regex");
            return NULL;
        }
    }
    const char *src = literal ? pattern : rewritten.data;
    size_t src_len = literal ? len : rewritten.len;
    // A literal takes no UCP (PCRE2 refuses the combination; it has no classes to affect).
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(src ? src : ""), src_len, opts, &code, &offset, NULL);
    free(rewritten.data);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        (void)offset;  // an offset into the rewritten pattern would mislead
        tok_errorf(err, err_len, "regex /%.*s/ does not compile: %s", (int)(len > 200 ? 200 : len),
                   pattern, (const char *)msg);
        return NULL;
    }
    // JIT is an optimisation: where it is unavailable the interpreter gives the same matches.
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    return re;
}

// ---- pre-token lists ----------------------------------------------------------------------------

// Pre-tokens are byte ranges of one work buffer (steps may append to it, so offsets, not
// pointers).
typedef struct span {
    size_t off, len;
} span;

typedef struct spans {
    span *a;
    size_t n, cap;
} spans;

static int spans_push(spans *v, size_t off, size_t len) {
    if (len == 0) return 0;  // empty pieces are dropped, as in HF
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        span *p = realloc(v->a, cap * sizeof *p);
        if (!p) return -1;
        v->a = p;
        v->cap = cap;
    }
    v->a[v->n++] = (span){off, len};
    return 0;
}

// What one encode call needs for matching: match data and a JIT stack large enough for long
// whitespace runs (the default 32 KiB overflows on patterns like \s+(?!\S) over megabytes).
typedef struct match_env {
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit;
} match_env;

static void match_env_free(match_env *e) {
    pcre2_match_data_free(e->md);
    pcre2_match_context_free(e->mctx);
    pcre2_jit_stack_free(e->jit);
}

static mpk_status match_env_init(match_env *e) {
    memset(e, 0, sizeof *e);
    e->md = pcre2_match_data_create(1, NULL);
    e->mctx = pcre2_match_context_create(NULL);
    e->jit = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    if (!e->md || !e->mctx || !e->jit) {
        match_env_free(e);
        return MPK_ERR_NOMEM;
    }
    pcre2_jit_stack_assign(e->mctx, NULL, e->jit);
    return MPK_OK;
}

// Splits one piece by a regex and appends the results to out by the Split behaviour. Matches and
// the gaps between them form a cover of the piece; `invert` swaps which of them are "matches".
static mpk_status split_piece(const tok_pretok *p, match_env *env, const char *base, span piece,
                              spans *out) {
    const char *s = base + piece.off;
    size_t n = piece.len, pos = 0, prev = 0;
    // Each cover element is pushed in order; the merged behaviours grow the last one pushed.
    int prev_was_match = 0;
    size_t out_first = out->n;
    while (prev < n) {
        size_t ms = n, me = n;
        int found = 0;
        if (pos <= n) {
            int rc = pcre2_match(p->re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, env->md,
                                 env->mctx);
            if (rc >= 0) {
                PCRE2_SIZE *ov = pcre2_get_ovector_pointer(env->md);
                ms = ov[0];
                me = ov[1];
                found = 1;
            } else if (rc != PCRE2_ERROR_NOMATCH) {
                return rc == PCRE2_ERROR_NOMEMORY ? MPK_ERR_NOMEM : MPK_ERR_LIMIT;
            }
        }
        // The cover: the gap [prev, ms) (not a match) then the match [ms, me).
        for (int part = 0; part < 2; part++) {
            size_t a = part == 0 ? prev : ms, b = part == 0 ? ms : me;
            if (a >= b) continue;
            int is_match = (part == 1) != (p->invert != 0);
            size_t off = piece.off + a, len = b - a;
            int merge = 0;
            switch (p->behavior) {
            case TOK_SPLIT_ISOLATED: break;
            case TOK_SPLIT_REMOVED:
                if (is_match) continue;
                break;
            case TOK_SPLIT_MERGED_WITH_PREVIOUS: merge = is_match && !prev_was_match; break;
            case TOK_SPLIT_MERGED_WITH_NEXT: merge = !is_match && prev_was_match; break;
            case TOK_SPLIT_CONTIGUOUS: merge = is_match == prev_was_match && out->n > out_first; break;
            }
            if (merge && out->n > out_first) {
                out->a[out->n - 1].len += len;
            } else if (spans_push(out, off, len) != 0) {
                return MPK_ERR_NOMEM;
            }
            prev_was_match = is_match;
        }
        if (!found) break;
        prev = me;
        // An empty match would repeat forever: step over one character.
        if (me == ms) {
            if (me >= n) break;
            uint32_t cp;
            pos = me + tok_utf8_next(s + me, n - me, &cp);
        } else {
            pos = me;
        }
    }
    return MPK_OK;
}

const char tok_gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static mpk_status run_pretok(const tok_pretok *p, match_env *env, tok_buf *work, spans *cur,
                             spans *next) {
    next->n = 0;
    if (p->kind == TOK_PRETOK_BYTELEVEL && p->add_prefix_space) {
        // A space in front of every piece that lacks one: copied to the end of the buffer.
        for (size_t i = 0; i < cur->n; i++) {
            span sp = cur->a[i];
            if (work->data[sp.off] == ' ') continue;
            // Reserve first: the copy's source lies in the buffer that may move.
            if (tok_buf_reserve(work, sp.len + 1) != 0) return MPK_ERR_NOMEM;
            size_t off = work->len;
            work->data[off] = ' ';
            memcpy(work->data + off + 1, work->data + sp.off, sp.len);
            work->len += sp.len + 1;
            work->data[work->len] = '\0';
            cur->a[i] = (span){off, sp.len + 1};
        }
    }
    if (!p->re) {
        spans t = *cur;
        *cur = *next;
        *next = t;
        return MPK_OK;
    }
    for (size_t i = 0; i < cur->n; i++) {
        mpk_status st = split_piece(p, env, work->data, cur->a[i], next);
        if (st != MPK_OK) return st;
    }
    return MPK_OK;
}

// Pre-tokenizes and BPE-encodes text without added tokens (already normalized).
static mpk_status encode_plain(const mpk_tokenizer *tok, match_env *env, const char *s, size_t n,
                               tok_ids *ids) {
    if (n == 0) return MPK_OK;
    tok_buf work = {0};
    spans a = {0}, b = {0};
    mpk_status st = MPK_ERR_NOMEM;
    if (tok_buf_append(&work, s, n) != 0 || spans_push(&a, 0, n) != 0) goto done;
    for (int k = 0; k < tok->num_pretok; k++) {
        st = run_pretok(&tok->pretok[k], env, &work, &a, &b);
        if (st != MPK_OK) goto done;
        spans t = a;
        a = b;
        b = t;
    }
    st = MPK_OK;
    for (size_t i = 0; i < a.n && st == MPK_OK; i++)
        st = tok_bpe_word(tok, work.data + a.a[i].off, a.a[i].len, ids);
done:
    free(work.data);
    free(a.a);
    free(b.a);
    return st;
}

// Normalizes a piece between raw added tokens, then splits it on the normalized added tokens.
static mpk_status encode_segment(const mpk_tokenizer *tok, match_env *env, const char *s, size_t n,
                                 tok_buf *norm, tok_ids *ids) {
    if (n == 0) return MPK_OK;
    const char *t = s;
    size_t tn = n;
    if (tok->num_norm > 0) {
        mpk_status st = tok_normalize(tok, s, n, norm);
        if (st != MPK_OK) return st;
        t = norm->data;
        tn = norm->len;
    }
    size_t pos = 0;
    for (;;) {
        size_t ms = tn, me = tn;
        int32_t a = next_added(tok, &tok->trie_norm, t, tn, pos, &ms, &me);
        mpk_status st = encode_plain(tok, env, t + pos, (a >= 0 ? ms : tn) - pos, ids);
        if (st != MPK_OK) return st;
        if (a < 0) return MPK_OK;
        if (tok_ids_push(ids, tok->added[a].id) != 0) return MPK_ERR_NOMEM;
        pos = me;
    }
}

mpk_status tok_encode_text(const mpk_tokenizer *tok, const char *s, size_t n, tok_ids *ids) {
    match_env env;
    mpk_status st = match_env_init(&env);
    if (st != MPK_OK) return st;
    tok_buf norm = {0};
    size_t pos = 0;
    for (;;) {
        size_t ms = n, me = n;
        int32_t a = next_added(tok, &tok->trie_raw, s, n, pos, &ms, &me);
        st = encode_segment(tok, &env, s + pos, (a >= 0 ? ms : n) - pos, &norm, ids);
        if (st != MPK_OK || a < 0) break;
        if (tok_ids_push(ids, tok->added[a].id) != 0) {
            st = MPK_ERR_NOMEM;
            break;
        }
        pos = me;
    }
    free(norm.data);
    match_env_free(&env);
    return st;
}

// ---- public encode ------------------------------------------------------------------------------

mpk_status mpk_tokenizer_encode(const mpk_tokenizer *tok, const char *text, size_t len,
                                int add_special, int32_t **ids, int32_t *n) {
    if (ids) *ids = NULL;
    if (n) *n = 0;
    if (!tok || !ids || !n || (!text && len > 0)) return MPK_ERR_INVALID_ARG;
    if (len > (size_t)INT32_MAX / 2) return MPK_ERR_LIMIT;
    tok_ids out = {0};
    tok_buf fixed = {0};
    mpk_status st = MPK_OK;
    if (add_special)
        for (int i = 0; i < tok->num_prefix && st == MPK_OK; i++)
            if (tok_ids_push(&out, tok->special_prefix[i]) != 0) st = MPK_ERR_NOMEM;
    // Invalid UTF-8 is read as U+FFFD, as a lenient decoder hands text to HF.
    if (st == MPK_OK && len > 0 && !tok_utf8_valid(text, len)) {
        tok_utf8_state u = {0};
        if (tok_utf8_lossy(&u, text, len, 1, &fixed) != 0) st = MPK_ERR_NOMEM;
        text = fixed.data;
        len = fixed.len;
    }
    if (st == MPK_OK && len > 0) st = tok_encode_text(tok, text, len, &out);
    if (add_special)
        for (int i = 0; i < tok->num_suffix && st == MPK_OK; i++)
            if (tok_ids_push(&out, tok->special_suffix[i]) != 0) st = MPK_ERR_NOMEM;
    free(fixed.data);
    if (st == MPK_OK && out.len > (size_t)INT32_MAX) st = MPK_ERR_LIMIT;
    if (st != MPK_OK) {
        free(out.data);
        return st;
    }
    if (!out.data) {  // an empty result still hands back a freeable pointer
        out.data = malloc(sizeof(int32_t));
        if (!out.data) return MPK_ERR_NOMEM;
    }
    *ids = out.data;
    *n = (int32_t)out.len;
    return MPK_OK;
}

void mpk_tokenizer_free_ids(int32_t *ids) {
    free(ids);
}
