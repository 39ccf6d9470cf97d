// load.c — reads a Hugging Face tokenizer.json (and the tokenizer_config.json beside it) into an
// mpk_tokenizer: the BPE vocabulary and merges (both merge encodings), added tokens, normalizer,
// pre-tokenizers, post-processor and decoder. Anything this implementation would get wrong is
// refused with a sentence naming the file and the field, never guessed at.
#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

// Ids above this are refused: they would size the per-id tables, and no real vocabulary is near.
#define TOK_MAX_ID (1 << 24)

// ---- arena --------------------------------------------------------------------------------------

const char *tok_arena_strdup(mpk_tokenizer *tok, const char *s, size_t n) {
    if (tok->arena_used + n + 1 > tok->arena_cap) {
        size_t cap = n + 1 > (1u << 20) ? n + 1 : (1u << 20);
        char **blocks = realloc(tok->arena_blocks, (tok->num_arena_blocks + 1) * sizeof *blocks);
        if (!blocks) return NULL;
        tok->arena_blocks = blocks;
        char *block = malloc(cap);
        if (!block) return NULL;
        blocks[tok->num_arena_blocks++] = block;
        tok->arena_used = 0;
        tok->arena_cap = cap;
    }
    char *dst = tok->arena_blocks[tok->num_arena_blocks - 1] + tok->arena_used;
    memcpy(dst, s, n);
    dst[n] = '\0';
    tok->arena_used += n + 1;
    return dst;
}

// ---- small JSON helpers -------------------------------------------------------------------------

typedef struct loader {
    mpk_tokenizer *tok;
    const char *name;  // file name for messages
    char *err;
    size_t err_len;
} loader;

#define FAIL(L, status, ...)                                  \
    do {                                                      \
        tok_errorf((L)->err, (L)->err_len, __VA_ARGS__);      \
        return (status);                                      \
    } while (0)

static const char *json_str(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int json_bool(const cJSON *obj, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

// A non-negative integral id below TOK_MAX_ID, else -1.
static int32_t json_id(const cJSON *v) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d < TOK_MAX_ID) || d != (double)(int32_t)d) return -1;
    return (int32_t)d;
}

// ---- model (BPE) --------------------------------------------------------------------------------

static mpk_status set_id_token(loader *L, int32_t id, const char *s, size_t n, uint8_t kind) {
    mpk_tokenizer *tok = L->tok;
    if (id >= tok->num_ids) FAIL(L, MPK_ERR_INTERNAL, "%s: id %d outside the id table", L->name, id);
    if (!tok->id_token[id] || kind != 0) {
        tok->id_token[id] = s;
        tok->id_len[id] = (uint32_t)n;
    }
    if (kind) tok->id_special[id] = kind;
    return MPK_OK;
}

static mpk_status load_vocab(loader *L, const cJSON *vocab) {
    mpk_tokenizer *tok = L->tok;
    int count = cJSON_GetArraySize(vocab);
    if (tok_strmap_init(&tok->vocab, (size_t)count) != 0) return MPK_ERR_NOMEM;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        int32_t id = json_id(e);
        if (id < 0)
            FAIL(L, MPK_ERR_FORMAT, "%s: model.vocab entry '%.80s' has no valid id (0..%d)",
                 L->name, e->string ? e->string : "", TOK_MAX_ID - 1);
        size_t n = strlen(e->string);
        const char *s = tok_arena_strdup(tok, e->string, n);
        if (!s || tok_strmap_put(&tok->vocab, s, n, id) != 0) return MPK_ERR_NOMEM;
        mpk_status st = set_id_token(L, id, s, n, 0);
        if (st != MPK_OK) return st;
    }
    return MPK_OK;
}

// One merge, either "left right" or ["left", "right"]; rank = its index.
static mpk_status load_merge(loader *L, const cJSON *m, int rank, tok_buf *scratch) {
    mpk_tokenizer *tok = L->tok;
    const char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring, *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' '))
            FAIL(L, MPK_ERR_FORMAT, "%s: model.merges[%d] '%.80s' is not two tokens split by one "
                 "space", L->name, rank, s);
        a = s;
        na = (size_t)(sp - s);
        b = sp + 1;
        nb = strlen(b);
    } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 &&
               cJSON_IsString(cJSON_GetArrayItem(m, 0)) && cJSON_IsString(cJSON_GetArrayItem(m, 1))) {
        a = cJSON_GetArrayItem(m, 0)->valuestring;
        b = cJSON_GetArrayItem(m, 1)->valuestring;
        na = strlen(a);
        nb = strlen(b);
    } else {
        FAIL(L, MPK_ERR_FORMAT, "%s: model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]",
             L->name, rank);
    }
    int32_t ia = tok_strmap_get(&tok->vocab, a, na), ib = tok_strmap_get(&tok->vocab, b, nb);
    scratch->len = 0;
    if (tok_buf_append(scratch, a, na) != 0 || tok_buf_append(scratch, b, nb) != 0)
        return MPK_ERR_NOMEM;
    int32_t im = tok_strmap_get(&tok->vocab, scratch->data, scratch->len);
    if (ia < 0 || ib < 0 || im < 0)
        FAIL(L, MPK_ERR_FORMAT, "%s: model.merges[%d] ('%.*s' + '%.*s') uses a token that is not "
             "in model.vocab", L->name, rank, (int)(na > 60 ? 60 : na), a, (int)(nb > 60 ? 60 : nb), b);
    // Like HF's map construction, a repeated pair keeps its last rank.
    uint64_t key = (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib;
    if (tok_u64map_put(&tok->merges, key, (uint64_t)(uint32_t)rank << 32 | (uint32_t)im) != 0)
        return MPK_ERR_NOMEM;
    return MPK_OK;
}

static mpk_status load_model(loader *L, const cJSON *model) {
    mpk_tokenizer *tok = L->tok;
    const char *type = json_str(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!type) {
        // HF reads untagged models by their fields: only BPE has merges.
        if (cJSON_IsArray(vocab))
            FAIL(L, MPK_ERR_UNSUPPORTED, "%s: the model is a Unigram model; only byte-level BPE "
                 "tokenizers are supported", L->name);
        if (!merges)
            FAIL(L, MPK_ERR_FORMAT, "%s: model has no \"type\" and no \"merges\"", L->name);
    } else if (strcmp(type, "BPE") != 0) {
        FAIL(L, MPK_ERR_UNSUPPORTED, "%s: model type '%.40s' is not supported; only byte-level "
             "BPE tokenizers are", L->name, type);
    }
    if (json_bool(model, "byte_fallback", 0))
        FAIL(L, MPK_ERR_UNSUPPORTED, "%s: model.byte_fallback (SentencePiece-style BPE) is not "
             "supported", L->name);
    const char *csp = json_str(model, "continuing_subword_prefix");
    const char *eow = json_str(model, "end_of_word_suffix");
    if ((csp && *csp) || (eow && *eow))
        FAIL(L, MPK_ERR_UNSUPPORTED, "%s: model.continuing_subword_prefix / end_of_word_suffix "
             "are not supported", L->name);
    if (!cJSON_IsObject(vocab))
        FAIL(L, MPK_ERR_FORMAT, "%s: model.vocab is missing or not an object", L->name);
    if (!cJSON_IsArray(merges))
        FAIL(L, MPK_ERR_FORMAT, "%s: model.merges is missing or not an array", L->name);

    mpk_status st = load_vocab(L, vocab);
    if (st != MPK_OK) return st;
    if (tok_u64map_init(&tok->merges, (size_t)cJSON_GetArraySize(merges)) != 0)
        return MPK_ERR_NOMEM;
    tok_buf scratch = {0};
    int rank = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) {
        st = load_merge(L, m, rank++, &scratch);
        if (st != MPK_OK) break;
    }
    free(scratch.data);
    if (st != MPK_OK) return st;

    tok->ignore_merges = json_bool(model, "ignore_merges", 0);
    tok->fuse_unk = json_bool(model, "fuse_unk", 0);
    const char *unk = json_str(model, "unk_token");
    tok->unk_id = unk ? tok_strmap_get(&tok->vocab, unk, strlen(unk)) : -1;
    return MPK_OK;
}

// ---- added tokens -------------------------------------------------------------------------------

static mpk_status load_added(loader *L, const cJSON *added) {
    mpk_tokenizer *tok = L->tok;
    if (!added || cJSON_IsNull(added)) return MPK_OK;
    if (!cJSON_IsArray(added)) FAIL(L, MPK_ERR_FORMAT, "%s: added_tokens is not an array", L->name);
    int count = cJSON_GetArraySize(added);
    tok->added = calloc((size_t)count + 1, sizeof *tok->added);
    if (!tok->added || tok_strmap_init(&tok->added_map, (size_t)count) != 0) return MPK_ERR_NOMEM;
    const cJSON *a;
    int i = 0;
    cJSON_ArrayForEach(a, added) {
        const char *content = json_str(a, "content");
        int32_t id = json_id(cJSON_GetObjectItemCaseSensitive(a, "id"));
        if (!content || !*content || id < 0)
            FAIL(L, MPK_ERR_FORMAT, "%s: added_tokens[%d] needs a non-empty \"content\" and a valid "
                 "\"id\"", L->name, i);
        tok_added *t = &tok->added[tok->num_added];
        t->id = id;
        t->len = (uint32_t)strlen(content);
        t->content = tok_arena_strdup(tok, content, t->len);
        if (!t->content) return MPK_ERR_NOMEM;
        t->special = (uint8_t)json_bool(a, "special", 0);
        // HF's default: special tokens are matched on the raw text, others after normalization.
        t->normalized = (uint8_t)json_bool(a, "normalized", !t->special);
        t->lstrip = (uint8_t)json_bool(a, "lstrip", 0);
        t->rstrip = (uint8_t)json_bool(a, "rstrip", 0);
        t->single_word = (uint8_t)json_bool(a, "single_word", 0);
        if (tok_strmap_put(&tok->added_map, t->content, t->len, id) != 0) return MPK_ERR_NOMEM;
        tok->num_added++;
        i++;
    }
    return MPK_OK;
}

// Tables indexed by id exist once the largest id is known (vocab and added tokens together).
static mpk_status size_id_tables(loader *L, const cJSON *vocab, const cJSON *added) {
    mpk_tokenizer *tok = L->tok;
    int32_t max_id = -1;
    const cJSON *e;
    if (cJSON_IsObject(vocab)) cJSON_ArrayForEach(e, vocab) {
            int32_t id = json_id(e);
            if (id > max_id) max_id = id;
        }
    if (cJSON_IsArray(added)) cJSON_ArrayForEach(e, added) {
            int32_t id = json_id(cJSON_GetObjectItemCaseSensitive(e, "id"));
            if (id > max_id) max_id = id;
        }
    tok->num_ids = max_id + 1;
    size_t n = (size_t)tok->num_ids + 1;
    tok->id_token = calloc(n, sizeof *tok->id_token);
    tok->id_len = calloc(n, sizeof *tok->id_len);
    tok->id_special = calloc(n, sizeof *tok->id_special);
    if (!tok->id_token || !tok->id_len || !tok->id_special) return MPK_ERR_NOMEM;
    return MPK_OK;
}

static mpk_status index_added(loader *L) {
    mpk_tokenizer *tok = L->tok;
    for (int32_t i = 0; i < tok->num_added; i++) {
        tok_added *t = &tok->added[i];
        mpk_status st = set_id_token(L, t->id, t->content, t->len, t->special ? 1 : 2);
        if (st != MPK_OK) return st;
        tok_trie *trie = t->normalized ? &tok->trie_norm : &tok->trie_raw;
        if (tok_trie_add(trie, t->content, t->len, i) != 0) return MPK_ERR_NOMEM;
    }
    return MPK_OK;
}

// ---- normalizer ---------------------------------------------------------------------------------

static mpk_status load_normalizer(loader *L, const cJSON *n, int depth) {
    mpk_tokenizer *tok = L->tok;
    if (!n || cJSON_IsNull(n)) return MPK_OK;
    const char *type = json_str(n, "type");
    if (!type) FAIL(L, MPK_ERR_FORMAT, "%s: normalizer has no \"type\"", L->name);
    if (strcmp(type, "Sequence") == 0 && depth == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers"), *e;
        if (!cJSON_IsArray(list))
            FAIL(L, MPK_ERR_FORMAT, "%s: normalizer Sequence has no \"normalizers\" array", L->name);
        cJSON_ArrayForEach(e, list) {
            mpk_status st = load_normalizer(L, e, depth + 1);
            if (st != MPK_OK) return st;
        }
        return MPK_OK;
    }
    static const struct { const char *name; tok_norm_kind kind; } forms[] = {
        {"NFC", TOK_NORM_NFC}, {"NFD", TOK_NORM_NFD}, {"NFKC", TOK_NORM_NFKC}, {"NFKD", TOK_NORM_NFKD}};
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        if (strcmp(type, forms[i].name) != 0) continue;
        if (tok->num_norm == TOK_MAX_NORM)
            FAIL(L, MPK_ERR_UNSUPPORTED, "%s: more than %d normalizers", L->name, TOK_MAX_NORM);
        tok->norm[tok->num_norm++] = forms[i].kind;
        return MPK_OK;
    }
    FAIL(L, MPK_ERR_UNSUPPORTED, "%s: normalizer '%.40s' is not supported (NFC, NFD, NFKC, NFKD "
         "and Sequence are)", L->name, type);
}

// ---- pre-tokenizers -----------------------------------------------------------------------------

static mpk_status add_pretok(loader *L, tok_pretok p) {
    mpk_tokenizer *tok = L->tok;
    if (tok->num_pretok == TOK_MAX_PRETOK) {
        pcre2_code_free(p.re);
        FAIL(L, MPK_ERR_UNSUPPORTED, "%s: more than %d pre-tokenizers", L->name, TOK_MAX_PRETOK);
    }
    tok->pretok[tok->num_pretok++] = p;
    return MPK_OK;
}

static mpk_status load_split(loader *L, const cJSON *n) {
    const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(n, "pattern");
    const char *regex = json_str(pattern, "Regex"), *literal = json_str(pattern, "String");
    if (!regex && !literal)
        FAIL(L, MPK_ERR_FORMAT, "%s: Split pre-tokenizer needs pattern.Regex or pattern.String",
             L->name);
    static const struct { const char *name; tok_split_behavior b; } behaviors[] = {
        {"Isolated", TOK_SPLIT_ISOLATED},
        {"Removed", TOK_SPLIT_REMOVED},
        {"MergedWithPrevious", TOK_SPLIT_MERGED_WITH_PREVIOUS},
        {"MergedWithNext", TOK_SPLIT_MERGED_WITH_NEXT},
        {"Contiguous", TOK_SPLIT_CONTIGUOUS},
    };
    const char *behavior = json_str(n, "behavior");
    tok_pretok p = {.kind = TOK_PRETOK_SPLIT, .behavior = TOK_SPLIT_ISOLATED};
    int known = 0;
    for (size_t i = 0; behavior && i < sizeof behaviors / sizeof behaviors[0]; i++)
        if (strcmp(behavior, behaviors[i].name) == 0) {
            p.behavior = behaviors[i].b;
            known = 1;
        }
    if (!known)
        FAIL(L, MPK_ERR_UNSUPPORTED, "%s: Split behavior '%.40s' is not supported", L->name,
             behavior ? behavior : "(missing)");
    p.invert = json_bool(n, "invert", 0);
    const char *src = regex ? regex : literal;
    char msg[300];
    p.re = tok_regex_compile(src, strlen(src), !regex, msg, sizeof msg);
    if (!p.re) FAIL(L, MPK_ERR_FORMAT, "%s: Split pre-tokenizer: %s", L->name, msg);
    return add_pretok(L, p);
}

static mpk_status load_pretok(loader *L, const cJSON *n, int depth) {
    mpk_tokenizer *tok = L->tok;
    if (!n || cJSON_IsNull(n)) return MPK_OK;
    const char *type = json_str(n, "type");
    if (!type) FAIL(L, MPK_ERR_FORMAT, "%s: pre_tokenizer has no \"type\"", L->name);
    if (tok->byte_level)
        FAIL(L, MPK_ERR_UNSUPPORTED, "%s: a pre-tokenizer after ByteLevel is not supported",
             L->name);
    if (strcmp(type, "Sequence") == 0 && depth == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "pretokenizers"), *e;
        if (!cJSON_IsArray(list))
            FAIL(L, MPK_ERR_FORMAT, "%s: pre_tokenizer Sequence has no \"pretokenizers\" array",
                 L->name);
        cJSON_ArrayForEach(e, list) {
            mpk_status st = load_pretok(L, e, depth + 1);
            if (st != MPK_OK) return st;
        }
        return MPK_OK;
    }
    if (strcmp(type, "Split") == 0) return load_split(L, n);
    if (strcmp(type, "ByteLevel") == 0) {
        tok_pretok p = {.kind = TOK_PRETOK_BYTELEVEL};
        p.add_prefix_space = json_bool(n, "add_prefix_space", 1);
        if (json_bool(n, "use_regex", 1)) {
            char msg[300];
            p.re = tok_regex_compile(tok_gpt2_pattern, strlen(tok_gpt2_pattern), 0, msg, sizeof msg);
            if (!p.re) FAIL(L, MPK_ERR_INTERNAL, "%s: ByteLevel: %s", L->name, msg);
        }
        tok->byte_level = 1;
        return add_pretok(L, p);
    }
    FAIL(L, MPK_ERR_UNSUPPORTED, "%s: pre-tokenizer '%.40s' is not supported (Split, ByteLevel "
         "and Sequence are)", L->name, type);
}

// ---- post-processor -----------------------------------------------------------------------------

// Ids of a TemplateProcessing special token by name, appended to ids[*n].
static mpk_status template_special(loader *L, const cJSON *specials, const char *name, int32_t *ids,
                                   int *n) {
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(specials, name);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(sp, "ids"), *e;
    if (!cJSON_IsArray(list))
        FAIL(L, MPK_ERR_FORMAT, "%s: TemplateProcessing special token '%.60s' has no ids", L->name,
             name);
    cJSON_ArrayForEach(e, list) {
        int32_t id = json_id(e);
        if (id < 0 || id >= L->tok->num_ids)
            FAIL(L, MPK_ERR_FORMAT, "%s: TemplateProcessing '%.60s' has an invalid id", L->name, name);
        if (*n == TOK_MAX_SPECIAL_ADD)
            FAIL(L, MPK_ERR_UNSUPPORTED, "%s: more than %d special tokens around a sequence",
                 L->name, TOK_MAX_SPECIAL_ADD);
        ids[(*n)++] = id;
    }
    return MPK_OK;
}

// Ids one processor puts before and after the sequence.
static mpk_status post_one(loader *L, const cJSON *n, int32_t *pre, int *npre, int32_t *suf,
                           int *nsuf) {
    const char *type = json_str(n, "type");
    if (!type) FAIL(L, MPK_ERR_FORMAT, "%s: post_processor has no \"type\"", L->name);
    if (strcmp(type, "ByteLevel") == 0) return MPK_OK;  // offsets only; no tokens
    if (strcmp(type, "TemplateProcessing") == 0) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(n, "single"), *item;
        const cJSON *specials = cJSON_GetObjectItemCaseSensitive(n, "special_tokens");
        if (!cJSON_IsArray(single))
            FAIL(L, MPK_ERR_FORMAT, "%s: TemplateProcessing has no \"single\" array", L->name);
        int seen_sequence = 0;
        cJSON_ArrayForEach(item, single) {
            const cJSON *sp = cJSON_GetObjectItemCaseSensitive(item, "SpecialToken");
            if (cJSON_GetObjectItemCaseSensitive(item, "Sequence")) {
                seen_sequence = 1;
            } else if (sp && json_str(sp, "id")) {
                mpk_status st = seen_sequence
                                    ? template_special(L, specials, json_str(sp, "id"), suf, nsuf)
                                    : template_special(L, specials, json_str(sp, "id"), pre, npre);
                if (st != MPK_OK) return st;
            } else {
                FAIL(L, MPK_ERR_FORMAT, "%s: TemplateProcessing item is neither SpecialToken nor "
                     "Sequence", L->name);
            }
        }
        return MPK_OK;
    }
    if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0) {
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(n, "cls");
        const cJSON *sep = cJSON_GetObjectItemCaseSensitive(n, "sep");
        int32_t c = json_id(cJSON_GetArrayItem(cls, 1)), s = json_id(cJSON_GetArrayItem(sep, 1));
        if (c < 0 || s < 0 || c >= L->tok->num_ids || s >= L->tok->num_ids)
            FAIL(L, MPK_ERR_FORMAT, "%s: %s needs cls and sep as [token, id]", L->name, type);
        pre[(*npre)++] = c;
        suf[(*nsuf)++] = s;
        return MPK_OK;
    }
    FAIL(L, MPK_ERR_UNSUPPORTED, "%s: post-processor '%.40s' is not supported", L->name, type);
}

static mpk_status load_post(loader *L, const cJSON *n) {
    mpk_tokenizer *tok = L->tok;
    if (!n || cJSON_IsNull(n)) return MPK_OK;
    const char *type = json_str(n, "type");
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "processors");
    if (type && strcmp(type, "Sequence") == 0 && !cJSON_IsArray(list))
        FAIL(L, MPK_ERR_FORMAT, "%s: post_processor Sequence has no \"processors\"", L->name);
    int count = type && strcmp(type, "Sequence") == 0 ? cJSON_GetArraySize(list) : 1;
    for (int i = 0; i < count; i++) {
        const cJSON *p = type && strcmp(type, "Sequence") == 0 ? cJSON_GetArrayItem(list, i) : n;
        // Each processor wraps what the ones before it produced.
        int32_t pre[TOK_MAX_SPECIAL_ADD], suf[TOK_MAX_SPECIAL_ADD];
        int npre = 0, nsuf = 0;
        mpk_status st = post_one(L, p, pre, &npre, suf, &nsuf);
        if (st != MPK_OK) return st;
        if (tok->num_prefix + npre > TOK_MAX_SPECIAL_ADD ||
            tok->num_suffix + nsuf > TOK_MAX_SPECIAL_ADD)
            FAIL(L, MPK_ERR_UNSUPPORTED, "%s: too many special tokens around a sequence", L->name);
        memmove(tok->special_prefix + npre, tok->special_prefix,
                (size_t)tok->num_prefix * sizeof(int32_t));
        memcpy(tok->special_prefix, pre, (size_t)npre * sizeof(int32_t));
        tok->num_prefix += npre;
        memcpy(tok->special_suffix + tok->num_suffix, suf, (size_t)nsuf * sizeof(int32_t));
        tok->num_suffix += nsuf;
    }
    return MPK_OK;
}

// ---- decoder ------------------------------------------------------------------------------------

static mpk_status load_decoder(loader *L, const cJSON *n) {
    mpk_tokenizer *tok = L->tok;
    if (!n || cJSON_IsNull(n)) return MPK_OK;
    const char *type = json_str(n, "type");
    if (type && strcmp(type, "ByteLevel") == 0) {
        tok->has_decoder = 1;
        tok->decoder_byte_level = 1;
        return MPK_OK;
    }
    FAIL(L, MPK_ERR_UNSUPPORTED, "%s: decoder '%.40s' is not supported (ByteLevel is)", L->name,
         type ? type : "(no type)");
}

// ---- the whole file -----------------------------------------------------------------------------

static const char *const EOS_GUESSES[] = {"<|im_end|>", "<|eot_id|>", "<|endoftext|>",
                                          "<|end_of_text|>", "</s>", "<eos>"};

static mpk_status load_root(loader *L, const cJSON *root) {
    mpk_tokenizer *tok = L->tok;
    if (!cJSON_IsObject(root)) FAIL(L, MPK_ERR_FORMAT, "%s: not a JSON object", L->name);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) FAIL(L, MPK_ERR_FORMAT, "%s: no \"model\" object", L->name);
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    mpk_status st = size_id_tables(L, cJSON_GetObjectItemCaseSensitive(model, "vocab"), added);
    if (st == MPK_OK) st = load_model(L, model);
    if (st == MPK_OK) st = load_added(L, added);
    if (st == MPK_OK) st = index_added(L);
    if (st == MPK_OK) st = load_normalizer(L, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), 0);
    if (st == MPK_OK)
        st = load_pretok(L, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), 0);
    if (st == MPK_OK) st = load_post(L, cJSON_GetObjectItemCaseSensitive(root, "post_processor"));
    if (st == MPK_OK) st = load_decoder(L, cJSON_GetObjectItemCaseSensitive(root, "decoder"));
    if (st != MPK_OK) return st;

    for (int b = 0; b < 256; b++)
        tok->byte_ids[b] = tok_strmap_get(&tok->vocab, tok_byte_char[b], strlen(tok_byte_char[b]));
    tok->bos_id = tok->num_prefix > 0 ? tok->special_prefix[0] : -1;
    tok->eos_id = -1;
    for (size_t i = 0; i < sizeof EOS_GUESSES / sizeof EOS_GUESSES[0] && tok->eos_id < 0; i++)
        tok->eos_id = mpk_tokenizer_token_to_id(tok, EOS_GUESSES[i]);
    return MPK_OK;
}

mpk_status mpk_tokenizer_load_from_memory(const char *json, size_t len, const char *name,
                                          mpk_tokenizer **out, char *err, size_t err_len) {
    if (err && err_len) err[0] = '\0';
    if (out) *out = NULL;
    if (!out || (!json && len)) {
        tok_errorf(err, err_len, "tokenizer: NULL argument");
        return MPK_ERR_INVALID_ARG;
    }
    if (!name) name = "tokenizer.json";
    tok_byte_table_init();
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = at && at >= json && at <= json + len ? (size_t)(at - json) : len;
        tok_errorf(err, err_len, "%s: not valid JSON (parse error near byte %zu of %zu)", name, off,
                   len);
        return MPK_ERR_FORMAT;
    }
    mpk_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        cJSON_Delete(root);
        tok_errorf(err, err_len, "%s: out of memory", name);
        return MPK_ERR_NOMEM;
    }
    tok->unk_id = -1;
    tok->bos_id = tok->eos_id = -1;
    loader L = {tok, name, err, err_len};
    mpk_status st = load_root(&L, root);
    cJSON_Delete(root);
    if (st != MPK_OK) {
        if (st == MPK_ERR_NOMEM) tok_errorf(err, err_len, "%s: out of memory while loading", name);
        mpk_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return MPK_OK;
}

// ---- files --------------------------------------------------------------------------------------

// Reads a whole file; NULL with errno set on failure.
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *data = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 1 << 16;
            char *p = realloc(data, cap + 1);
            if (!p) {
                free(data);
                fclose(f);
                errno = ENOMEM;
                return NULL;
            }
            data = p;
        }
        size_t got = fread(data + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(data);
        errno = EIO;
        return NULL;
    }
    data[n] = '\0';
    *len = n;
    return data;
}

// A special token in tokenizer_config.json: a string or {"content": "..."} (an AddedToken).
static const char *config_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v)) return v->valuestring;
    return json_str(v, "content");
}

// The template text: a string, or a list of {name, template} where "default" is the one used.
static const char *config_template(const cJSON *cfg) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"), *e;
    if (cJSON_IsString(v)) return v->valuestring;
    const char *first = NULL;
    if (!cJSON_IsArray(v)) return NULL;
    cJSON_ArrayForEach(e, v) {
        const char *name = json_str(e, "name"), *text = json_str(e, "template");
        if (!first) first = text;
        if (name && text && strcmp(name, "default") == 0) return text;
    }
    return first;
}

// Reads tokenizer_config.json (NULL config = parse failure reported through err).
static cJSON *read_config(const char *path, char *err, size_t err_len, mpk_status *st) {
    size_t len = 0;
    char *text = read_file(path, &len);
    if (!text) {
        tok_errorf(err, err_len, "%s: cannot read: %s", path, strerror(errno));
        *st = MPK_ERR_IO;
        return NULL;
    }
    cJSON *cfg = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        tok_errorf(err, err_len, "%s: not a valid JSON object", path);
        *st = MPK_ERR_FORMAT;
        return NULL;
    }
    *st = MPK_OK;
    return cfg;
}

mpk_status mpk_chat_template_detect_file(const char *tokenizer_config_path, const char *model_type,
                                         mpk_chat_template *out, char *err, size_t err_len) {
    if (err && err_len) err[0] = '\0';
    if (!tokenizer_config_path || !out) {
        tok_errorf(err, err_len, "chat template: NULL argument");
        return MPK_ERR_INVALID_ARG;
    }
    *out = MPK_CHAT_TEMPLATE_UNKNOWN;
    mpk_status st;
    cJSON *cfg = read_config(tokenizer_config_path, err, err_len, &st);
    if (!cfg) return st;
    *out = mpk_chat_template_detect(config_template(cfg), model_type);
    cJSON_Delete(cfg);
    return MPK_OK;
}

mpk_status mpk_tokenizer_load(const char *tokenizer_json_path, mpk_tokenizer **out, char *err,
                              size_t err_len) {
    if (err && err_len) err[0] = '\0';
    if (out) *out = NULL;
    if (!tokenizer_json_path || !out) {
        tok_errorf(err, err_len, "tokenizer: NULL argument");
        return MPK_ERR_INVALID_ARG;
    }
    size_t len = 0;
    char *json = read_file(tokenizer_json_path, &len);
    if (!json) {
        tok_errorf(err, err_len, "%s: cannot read: %s", tokenizer_json_path, strerror(errno));
        return MPK_ERR_IO;
    }
    mpk_tokenizer *tok = NULL;
    mpk_status st = mpk_tokenizer_load_from_memory(json, len, tokenizer_json_path, &tok, err, err_len);
    free(json);
    if (st != MPK_OK) return st;

    // tokenizer_config.json beside it, when there is one: BOS, EOS and the chat template.
    const char *slash = strrchr(tokenizer_json_path, '/');
    size_t dir_len = slash ? (size_t)(slash - tokenizer_json_path + 1) : 0;
    char *cfg_path = malloc(dir_len + sizeof "tokenizer_config.json");
    if (!cfg_path) {
        mpk_tokenizer_free(tok);
        tok_errorf(err, err_len, "%s: out of memory", tokenizer_json_path);
        return MPK_ERR_NOMEM;
    }
    memcpy(cfg_path, tokenizer_json_path, dir_len);
    strcpy(cfg_path + dir_len, "tokenizer_config.json");
    FILE *probe = fopen(cfg_path, "rb");
    if (probe) {
        fclose(probe);
        cJSON *cfg = read_config(cfg_path, err, err_len, &st);
        if (!cfg) {
            free(cfg_path);
            mpk_tokenizer_free(tok);
            return st;
        }
        const char *bos = config_token(cfg, "bos_token"), *eos = config_token(cfg, "eos_token");
        if (bos && mpk_tokenizer_token_to_id(tok, bos) >= 0)
            tok->bos_id = mpk_tokenizer_token_to_id(tok, bos);
        if (eos && mpk_tokenizer_token_to_id(tok, eos) >= 0)
            tok->eos_id = mpk_tokenizer_token_to_id(tok, eos);
        tok->chat_template = mpk_chat_template_detect(config_template(cfg), NULL);
        cJSON_Delete(cfg);
    }
    free(cfg_path);
    *out = tok;
    return MPK_OK;
}

void mpk_tokenizer_free(mpk_tokenizer *tok) {
    if (!tok) return;
    for (size_t i = 0; i < tok->num_arena_blocks; i++) free(tok->arena_blocks[i]);
    free(tok->arena_blocks);
    tok_strmap_free(&tok->vocab);
    tok_u64map_free(&tok->merges);
    free(tok->id_token);
    free(tok->id_len);
    free(tok->id_special);
    free(tok->added);
    tok_strmap_free(&tok->added_map);
    tok_trie_free(&tok->trie_raw);
    tok_trie_free(&tok->trie_norm);
    for (int i = 0; i < tok->num_pretok; i++) pcre2_code_free(tok->pretok[i].re);
    free(tok);
}

// ---- queries ------------------------------------------------------------------------------------

int32_t mpk_tokenizer_vocab_size(const mpk_tokenizer *tok) {
    return tok ? tok->num_ids : 0;
}

int32_t mpk_tokenizer_token_to_id(const mpk_tokenizer *tok, const char *token) {
    if (!tok || !token) return -1;
    size_t n = strlen(token);
    int32_t id = tok_strmap_get(&tok->added_map, token, n);
    return id >= 0 ? id : tok_strmap_get(&tok->vocab, token, n);
}

const char *mpk_tokenizer_id_to_token(const mpk_tokenizer *tok, int32_t id) {
    if (!tok || id < 0 || id >= tok->num_ids) return NULL;
    return tok->id_token[id];
}

int mpk_tokenizer_is_special(const mpk_tokenizer *tok, int32_t id) {
    return tok && id >= 0 && id < tok->num_ids && tok->id_special[id] == 1;
}

int32_t mpk_tokenizer_bos_id(const mpk_tokenizer *tok) {
    return tok ? tok->bos_id : -1;
}

int32_t mpk_tokenizer_eos_id(const mpk_tokenizer *tok) {
    return tok ? tok->eos_id : -1;
}

mpk_chat_template mpk_tokenizer_chat_template(const mpk_tokenizer *tok) {
    return tok ? tok->chat_template : MPK_CHAT_TEMPLATE_UNKNOWN;
}
