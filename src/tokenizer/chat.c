// chat.c — the chat templates of the supported models, written out in C: Qwen3's ChatML (with its
// <think> rules) and Llama 3's header format (3.0, and 3.1+ with the default system message).
// Each function follows its model's Jinja template line by line for conversations without tools;
// the golden renders in tests/fixtures/tokenizer/golden/ come from the real templates.
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

// ---- Python string semantics the templates rely on ----------------------------------------------

typedef struct str {
    const char *p;
    size_t n;
} str;

static str cstr(const char *s) {
    return (str){s ? s : "", s ? strlen(s) : 0};
}

// str.strip('\n') and its one-sided forms.
static str lstrip_nl(str s) {
    while (s.n && s.p[0] == '\n') s.p++, s.n--;
    return s;
}

static str rstrip_nl(str s) {
    while (s.n && s.p[s.n - 1] == '\n') s.n--;
    return s;
}

// Python's str.isspace() characters, which Jinja's `trim` filter (str.strip()) removes.
static int py_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 ||
           cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// The code point that ends at s.p[s.n-1] and its length (valid UTF-8 assumed; else one byte).
static size_t last_char(str s, uint32_t *cp) {
    size_t k = 1;
    while (k < s.n && k < 4 && ((uint8_t)s.p[s.n - k] & 0xC0) == 0x80) k++;
    tok_utf8_next(s.p + s.n - k, k, cp);
    return k;
}

static str py_trim(str s) {
    while (s.n) {
        uint32_t cp;
        size_t k = tok_utf8_next(s.p, s.n, &cp);
        if (!py_space(cp)) break;
        s.p += k;
        s.n -= k;
    }
    while (s.n) {
        uint32_t cp;
        size_t k = last_char(s, &cp);
        if (!py_space(cp)) break;
        s.n -= k;
    }
    return s;
}

// Position of the first (or last) occurrence of needle in s, or -1.
static ptrdiff_t find(str s, const char *needle, int last) {
    size_t m = strlen(needle);
    ptrdiff_t found = -1;
    for (size_t i = 0; i + m <= s.n; i++)
        if (memcmp(s.p + i, needle, m) == 0) {
            found = (ptrdiff_t)i;
            if (!last) break;
        }
    return found;
}

static int starts_with(str s, const char *p) {
    size_t m = strlen(p);
    return s.n >= m && memcmp(s.p, p, m) == 0;
}

static int ends_with(str s, const char *p) {
    size_t m = strlen(p);
    return s.n >= m && memcmp(s.p + s.n - m, p, m) == 0;
}

static int role_is(const mpk_chat_message *m, const char *role) {
    return m->role && strcmp(m->role, role) == 0;
}

// ---- output -------------------------------------------------------------------------------------

typedef struct out {
    tok_buf b;
    int oom;
} out;

static void put(out *o, const char *s) {
    if (!o->oom && tok_buf_append(&o->b, s, strlen(s)) != 0) o->oom = 1;
}

static void put_str(out *o, str s) {
    if (!o->oom && tok_buf_append(&o->b, s.p, s.n) != 0) o->oom = 1;
}

static mpk_status finish(out *o, char **result) {
    if (!o->oom && !o->b.data && tok_buf_reserve(&o->b, 0) != 0) o->oom = 1;
    if (o->oom) {
        free(o->b.data);
        return MPK_ERR_NOMEM;
    }
    *result = o->b.data;
    return MPK_OK;
}

// ---- Qwen3 --------------------------------------------------------------------------------------

// The reasoning and the answer of an assistant turn. With no separate reasoning_content, the text
// before the first "</think>" (after the last "<think>" in it) is the reasoning, and the text after
// the last "</think>" the answer, each with newlines trimmed as the template does.
static void qwen3_split(const mpk_chat_message *m, str *reasoning, str *content) {
    *content = cstr(m->content);
    *reasoning = cstr("");
    if (m->reasoning_content) {
        *reasoning = cstr(m->reasoning_content);
        return;
    }
    str all = *content;
    ptrdiff_t last_end = find(all, "</think>", 1);
    if (last_end < 0) return;
    size_t after = (size_t)last_end + strlen("</think>");
    *content = lstrip_nl((str){all.p + after, all.n - after});
    str before = rstrip_nl((str){all.p, (size_t)find(all, "</think>", 0)});
    ptrdiff_t open = find(before, "<think>", 1);
    if (open >= 0) {
        size_t skip = (size_t)open + strlen("<think>");
        before = (str){before.p + skip, before.n - skip};
    }
    *reasoning = lstrip_nl(before);
}

static mpk_status render_qwen3(const mpk_chat_message *msgs, int n, int add_generation_prompt,
                               int enable_thinking, char **result) {
    out o = {0};
    if (role_is(&msgs[0], "system")) {
        put(&o, "<|im_start|>system\n");
        put(&o, msgs[0].content);
        put(&o, "<|im_end|>\n");
    }
    // The last real user query: turns after it keep their reasoning (a tool-call chain in
    // progress); earlier assistant turns lose it.
    int last_query = n - 1;
    for (int i = n - 1; i >= 0; i--) {
        str c = cstr(msgs[i].content);
        if (role_is(&msgs[i], "user") &&
            !(starts_with(c, "<tool_response>") && ends_with(c, "</tool_response>"))) {
            last_query = i;
            break;
        }
    }
    for (int i = 0; i < n; i++) {
        const mpk_chat_message *m = &msgs[i];
        if (role_is(m, "user") || (role_is(m, "system") && i > 0)) {
            put(&o, "<|im_start|>");
            put(&o, m->role);
            put(&o, "\n");
            put(&o, m->content);
            put(&o, "<|im_end|>\n");
        } else if (role_is(m, "assistant")) {
            str reasoning, content;
            qwen3_split(m, &reasoning, &content);
            put(&o, "<|im_start|>assistant\n");
            if (i > last_query && (i == n - 1 || reasoning.n > 0)) {
                put(&o, "<think>\n");
                put_str(&o, lstrip_nl(rstrip_nl(reasoning)));
                put(&o, "\n</think>\n\n");
                put_str(&o, lstrip_nl(content));
            } else {
                put_str(&o, content);
            }
            put(&o, "<|im_end|>\n");
        } else if (role_is(m, "tool")) {
            // Consecutive tool results share one user turn.
            if (i == 0 || !role_is(&msgs[i - 1], "tool")) put(&o, "<|im_start|>user");
            put(&o, "\n<tool_response>\n");
            put(&o, m->content);
            put(&o, "\n</tool_response>");
            if (i == n - 1 || !role_is(&msgs[i + 1], "tool")) put(&o, "<|im_end|>\n");
        }
    }
    if (add_generation_prompt) {
        put(&o, "<|im_start|>assistant\n");
        if (!enable_thinking) put(&o, "<think>\n\n</think>\n\n");
    }
    return finish(&o, result);
}

// ---- Llama 3 ------------------------------------------------------------------------------------

static void llama3_turn(out *o, const char *role, const char *content) {
    put(o, "<|start_header_id|>");
    put(o, role);
    put(o, "<|end_header_id|>\n\n");
    put_str(o, py_trim(cstr(content)));
    put(o, "<|eot_id|>");
}

// Llama 3.1 / 3.2 / 3.3: the system turn always comes first and carries the knowledge cut-off and
// the date the template falls back to when none is given.
static mpk_status render_llama3(const mpk_chat_message *msgs, int n, int add_generation_prompt,
                                const char *date_string, char **result) {
    for (int i = 0; i < n; i++)
        if (role_is(&msgs[i], "tool") || role_is(&msgs[i], "ipython")) return MPK_ERR_UNSUPPORTED;
    out o = {0};
    int first = 0;
    str system = cstr("");
    if (role_is(&msgs[0], "system")) {
        system = py_trim(cstr(msgs[0].content));
        first = 1;
    }
    put(&o, "<|begin_of_text|>");
    put(&o, "<|start_header_id|>system<|end_header_id|>\n\n");
    put(&o, "Cutting Knowledge Date: December 2023\n");
    put(&o, "Today Date: ");
    put(&o, date_string ? date_string : "26 Jul 2024");
    put(&o, "\n\n");
    put_str(&o, system);
    put(&o, "<|eot_id|>");
    for (int i = first; i < n; i++) llama3_turn(&o, msgs[i].role, msgs[i].content);
    if (add_generation_prompt) put(&o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    return finish(&o, result);
}

// Llama 3 (3.0): every turn in headers, BOS before the first.
static mpk_status render_llama3_0(const mpk_chat_message *msgs, int n, int add_generation_prompt,
                                  char **result) {
    out o = {0};
    put(&o, "<|begin_of_text|>");
    for (int i = 0; i < n; i++) llama3_turn(&o, msgs[i].role, msgs[i].content);
    if (add_generation_prompt) put(&o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    return finish(&o, result);
}

// ---- public -------------------------------------------------------------------------------------

mpk_chat_options mpk_chat_default_options(void) {
    return (mpk_chat_options){.add_generation_prompt = 1, .enable_thinking = 1, .date_string = NULL};
}

mpk_status mpk_chat_render_opts(mpk_chat_template kind, const mpk_chat_message *msgs, int n,
                                const mpk_chat_options *opts, char **out_text) {
    if (out_text) *out_text = NULL;
    if (!msgs || n < 1 || !opts || !out_text) return MPK_ERR_INVALID_ARG;
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content) return MPK_ERR_INVALID_ARG;
    int gen = opts->add_generation_prompt;
    switch (kind) {
    case MPK_CHAT_TEMPLATE_QWEN3:
        return render_qwen3(msgs, n, gen, opts->enable_thinking, out_text);
    case MPK_CHAT_TEMPLATE_LLAMA3:
        return render_llama3(msgs, n, gen, opts->date_string, out_text);
    case MPK_CHAT_TEMPLATE_LLAMA3_0:
        return render_llama3_0(msgs, n, gen, out_text);
    case MPK_CHAT_TEMPLATE_UNKNOWN:
        break;
    }
    return MPK_ERR_UNSUPPORTED;
}

mpk_status mpk_chat_render(mpk_chat_template kind, const mpk_chat_message *msgs, int n,
                           int add_generation_prompt, int enable_thinking, char **out_text) {
    mpk_chat_options opts = mpk_chat_default_options();
    opts.add_generation_prompt = add_generation_prompt;
    opts.enable_thinking = enable_thinking;
    return mpk_chat_render_opts(kind, msgs, n, &opts, out_text);
}

mpk_chat_template mpk_chat_template_detect(const char *chat_template, const char *model_type) {
    if (chat_template) {
        str t = cstr(chat_template);
        if (find(t, "<|im_start|>", 0) >= 0 && find(t, "<think>", 0) >= 0)
            return MPK_CHAT_TEMPLATE_QWEN3;
        if (find(t, "<|start_header_id|>", 0) >= 0)
            return find(t, "Cutting Knowledge Date", 0) >= 0 ? MPK_CHAT_TEMPLATE_LLAMA3
                                                             : MPK_CHAT_TEMPLATE_LLAMA3_0;
    }
    if (model_type) {
        if (strcmp(model_type, "qwen3") == 0 || strcmp(model_type, "qwen3_moe") == 0)
            return MPK_CHAT_TEMPLATE_QWEN3;
        if (strcmp(model_type, "llama") == 0) return MPK_CHAT_TEMPLATE_LLAMA3;
    }
    return MPK_CHAT_TEMPLATE_UNKNOWN;
}

const char *mpk_chat_template_name(mpk_chat_template kind) {
    switch (kind) {
    case MPK_CHAT_TEMPLATE_QWEN3: return "qwen3";
    case MPK_CHAT_TEMPLATE_LLAMA3: return "llama3";
    case MPK_CHAT_TEMPLATE_LLAMA3_0: return "llama3.0";
    case MPK_CHAT_TEMPLATE_UNKNOWN: break;
    }
    return "unknown";
}
