// decode.c — ids back to text, whole or one id at a time. Each token yields bytes (byte-level
// characters mapped back to their bytes, as HF's ByteLevel decoder does), and the byte stream is
// turned into UTF-8 with invalid sequences replaced by U+FFFD. The streaming decoder holds back
// the bytes of a character split across tokens, so it never emits broken UTF-8, and its pieces
// concatenate to exactly the whole-sequence decode.
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

// ---- one token's bytes --------------------------------------------------------------------------

// Appends the bytes id stands for. Returns 0, 1 when the id is skipped (unknown, or special with
// skip_special), -1 when out of memory. `first` tells whether a token was emitted before (for the
// no-decoder case, where HF joins tokens with spaces).
static int token_bytes(const mpk_tokenizer *tok, int32_t id, int skip_special, int first,
                       tok_buf *out) {
    if (id < 0 || id >= tok->num_ids || !tok->id_token[id]) return 1;
    if (skip_special && tok->id_special[id] == 1) return 1;
    const char *t = tok->id_token[id];
    size_t n = tok->id_len[id];
    if (!tok->decoder_byte_level) {
        if (!first && tok_buf_append(out, " ", 1) != 0) return -1;
        return tok_buf_append(out, t, n) == 0 ? 0 : -1;
    }
    // ByteLevel: every character must stand for a byte; a token with any other character (an
    // added token such as "<|im_end|>" is all printable ASCII, so it does map) is copied as is.
    if (tok_buf_reserve(out, n) != 0) return -1;
    size_t start = out->len;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = tok_utf8_next(t + i, n - i, &cp);
        int b = tok_char_to_byte(cp);
        if (b < 0) {
            out->len = start;
            return tok_buf_append(out, t, n) == 0 ? 0 : -1;
        }
        out->data[out->len++] = (char)b;
        i += len;
    }
    out->data[out->len] = '\0';
    return 0;
}

// ---- whole sequences ----------------------------------------------------------------------------

mpk_status mpk_tokenizer_decode(const mpk_tokenizer *tok, const int32_t *ids, size_t n,
                                int skip_special, char **out, size_t *out_len) {
    if (out) *out = NULL;
    if (out_len) *out_len = 0;
    if (!tok || !out || (!ids && n)) return MPK_ERR_INVALID_ARG;
    tok_buf bytes = {0}, text = {0};
    mpk_status st = MPK_OK;
    int first = 1;
    for (size_t i = 0; i < n && st == MPK_OK; i++) {
        int rc = token_bytes(tok, ids[i], skip_special, first, &bytes);
        if (rc < 0) st = MPK_ERR_NOMEM;
        if (rc == 0) first = 0;
    }
    tok_utf8_state u = {0};
    if (st == MPK_OK && tok_utf8_lossy(&u, bytes.data ? bytes.data : "", bytes.len, 1, &text) != 0)
        st = MPK_ERR_NOMEM;
    if (st == MPK_OK && !text.data && tok_buf_reserve(&text, 0) != 0) st = MPK_ERR_NOMEM;
    free(bytes.data);
    if (st != MPK_OK) {
        free(text.data);
        return st;
    }
    text.data[text.len] = '\0';
    *out = text.data;
    if (out_len) *out_len = text.len;
    return MPK_OK;
}

// ---- streaming ----------------------------------------------------------------------------------

struct mpk_tokenizer_stream {
    const mpk_tokenizer *tok;
    int skip_special;
    int first;             // no token emitted yet (for the space-joined no-decoder case)
    tok_utf8_state utf8;   // bytes of an unfinished character
    tok_buf bytes, text;   // scratch: this push's token bytes and the text handed back
};

mpk_status mpk_tokenizer_stream_create(const mpk_tokenizer *tok, int skip_special,
                                       mpk_tokenizer_stream **out) {
    if (out) *out = NULL;
    if (!tok || !out) return MPK_ERR_INVALID_ARG;
    mpk_tokenizer_stream *s = calloc(1, sizeof *s);
    if (!s) return MPK_ERR_NOMEM;
    s->tok = tok;
    s->skip_special = skip_special;
    s->first = 1;
    *out = s;
    return MPK_OK;
}

mpk_status mpk_tokenizer_stream_push(mpk_tokenizer_stream *s, int32_t id, const char **text,
                                     size_t *len) {
    if (text) *text = "";
    if (len) *len = 0;
    if (!s || !text || !len) return MPK_ERR_INVALID_ARG;
    s->bytes.len = 0;
    s->text.len = 0;
    int rc = token_bytes(s->tok, id, s->skip_special, s->first, &s->bytes);
    if (rc < 0) return MPK_ERR_NOMEM;
    if (rc == 0) s->first = 0;
    if (tok_utf8_lossy(&s->utf8, s->bytes.data ? s->bytes.data : "", s->bytes.len, 0, &s->text) != 0)
        return MPK_ERR_NOMEM;
    if (s->text.data) {
        *text = s->text.data;
        *len = s->text.len;
    }
    return MPK_OK;
}

mpk_status mpk_tokenizer_stream_flush(mpk_tokenizer_stream *s, const char **text, size_t *len) {
    if (text) *text = "";
    if (len) *len = 0;
    if (!s || !text || !len) return MPK_ERR_INVALID_ARG;
    s->text.len = 0;
    if (tok_utf8_lossy(&s->utf8, "", 0, 1, &s->text) != 0) return MPK_ERR_NOMEM;
    memset(&s->utf8, 0, sizeof s->utf8);
    s->first = 1;
    if (s->text.data) {
        *text = s->text.data;
        *len = s->text.len;
    }
    return MPK_OK;
}

void mpk_tokenizer_stream_free(mpk_tokenizer_stream *s) {
    if (!s) return;
    free(s->bytes.data);
    free(s->text.data);
    free(s);
}
