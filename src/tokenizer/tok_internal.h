// tok_internal.h — what the tokenizer's files share: the mpk_tokenizer struct, the small
// open-addressing hash tables behind the vocabulary and the merges, and the pipeline stages
// (load.c → pretok.c → bpe.c, decode.c) as read from tokenizer.json.
#ifndef MPK_TOK_INTERNAL_H
#define MPK_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "mpk/tokenizer.h"

// ---- hash tables -------------------------------------------------------------------------------

// String → int32. Keys are not copied: they must outlive the table (they point into the
// tokenizer's string arena). Capacity is a power of two, at most half full.
typedef struct tok_strmap_slot {
    const char *key;  // NULL = empty
    uint32_t len;
    int32_t value;
} tok_strmap_slot;

typedef struct tok_strmap {
    tok_strmap_slot *slots;
    size_t mask;  // capacity - 1
    size_t count;
} tok_strmap;

int tok_strmap_init(tok_strmap *m, size_t expected);  // 0 on success, -1 out of memory
void tok_strmap_free(tok_strmap *m);
// Inserts or overwrites. 0 on success, -1 out of memory.
int tok_strmap_put(tok_strmap *m, const char *key, size_t len, int32_t value);
int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len);  // -1 when absent

// uint64 → uint64, for merges ((left id << 32 | right id) → (rank << 32 | merged id)) and the
// added-token trie ((node << 8 | byte) → child). Key UINT64_MAX is reserved (empty slot).
typedef struct tok_u64map {
    uint64_t *keys;
    uint64_t *values;
    size_t mask;
    size_t count;
} tok_u64map;

int tok_u64map_init(tok_u64map *m, size_t expected);
void tok_u64map_free(tok_u64map *m);
int tok_u64map_put(tok_u64map *m, uint64_t key, uint64_t value);
int tok_u64map_get(const tok_u64map *m, uint64_t key, uint64_t *value);  // 1 found, 0 absent

uint64_t tok_hash_bytes(const char *s, size_t len);

// ---- growable buffers --------------------------------------------------------------------------

typedef struct tok_buf {
    char *data;
    size_t len, cap;
} tok_buf;

int tok_buf_reserve(tok_buf *b, size_t extra);  // room for extra more bytes + a NUL; -1 OOM
int tok_buf_append(tok_buf *b, const void *p, size_t n);

typedef struct tok_ids {
    int32_t *data;
    size_t len, cap;
} tok_ids;

int tok_ids_push(tok_ids *v, int32_t id);

// ---- pipeline stages as read from tokenizer.json -----------------------------------------------

typedef enum tok_norm_kind {
    TOK_NORM_NFC,
    TOK_NORM_NFD,
    TOK_NORM_NFKC,
    TOK_NORM_NFKD,
} tok_norm_kind;

typedef enum tok_split_behavior {
    TOK_SPLIT_ISOLATED,
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_MERGED_WITH_PREVIOUS,
    TOK_SPLIT_MERGED_WITH_NEXT,
    TOK_SPLIT_CONTIGUOUS,
} tok_split_behavior;

typedef enum tok_pretok_kind {
    TOK_PRETOK_SPLIT,      // a regex (or literal) split
    TOK_PRETOK_BYTELEVEL,  // optional prefix space, optional GPT-2 regex split; bytes → chars
} tok_pretok_kind;

typedef struct tok_pretok {
    tok_pretok_kind kind;
    pcre2_code *re;               // SPLIT, or BYTELEVEL with use_regex; JIT-compiled when possible
    tok_split_behavior behavior;  // SPLIT
    int invert;                   // SPLIT
    int add_prefix_space;         // BYTELEVEL
} tok_pretok;

typedef struct tok_added {
    int32_t id;
    const char *content;  // in the arena
    uint32_t len;
    uint8_t special, normalized, lstrip, rstrip, single_word;
} tok_added;

// A byte trie over added-token contents, for leftmost-longest matching. Node 0 is the root;
// terminal[node] is an index into added[] or -1.
typedef struct tok_trie {
    tok_u64map edges;  // (node << 8 | byte) → child node
    int32_t *terminal;
    int32_t num_nodes, cap_nodes;
    int32_t num_tokens;  // 0: the trie is empty and matching is skipped
} tok_trie;

#define TOK_MAX_PRETOK 8
#define TOK_MAX_NORM 4
#define TOK_MAX_SPECIAL_ADD 8

struct mpk_tokenizer {
    // Strings (tokens, added contents) live in arena blocks freed with the tokenizer.
    char **arena_blocks;
    size_t num_arena_blocks, arena_used, arena_cap;

    // The model (BPE).
    tok_strmap vocab;            // model token → id
    tok_u64map merges;           // (a << 32 | b) → (rank << 32 | merged id)
    int ignore_merges;           // a pre-token found whole in the vocabulary is one token
    int32_t unk_id;              // -1: characters outside the vocabulary are dropped
    int fuse_unk;
    int32_t byte_ids[256];       // byte-level: id of each byte's character, -1 if missing

    // Everything indexed by id: the token string and whether it is a special added token.
    const char **id_token;
    uint32_t *id_len;
    uint8_t *id_special;         // 1 special added token, 2 other added token, 0 model token
    int32_t num_ids;             // largest id + 1

    // Added tokens, matched on the raw text (normalized = false) and on normalized text.
    tok_added *added;
    int32_t num_added;
    tok_strmap added_map;        // content → id
    tok_trie trie_raw, trie_norm;

    tok_norm_kind norm[TOK_MAX_NORM];
    int num_norm;
    tok_pretok pretok[TOK_MAX_PRETOK];
    int num_pretok;
    int byte_level;              // a ByteLevel pre-tokenizer maps bytes to characters before BPE

    // Post-processor for a single sequence: ids around the text when add_special is set.
    int32_t special_prefix[TOK_MAX_SPECIAL_ADD], special_suffix[TOK_MAX_SPECIAL_ADD];
    int num_prefix, num_suffix;

    int decoder_byte_level;      // 1: ByteLevel decoder; 0: no decoder (tokens joined by " ")
    int has_decoder;

    int32_t bos_id, eos_id;
    mpk_chat_template chat_template;
};

// ---- shared helpers ----------------------------------------------------------------------------

// printf into err (may be NULL or err_len 0).
void tok_errorf(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

// Copies n bytes into the tokenizer's arena (NUL-terminated); NULL when out of memory.
const char *tok_arena_strdup(mpk_tokenizer *tok, const char *s, size_t n);

// GPT-2's byte ↔ character table: the UTF-8 of the character standing for each byte (1 or 2
// bytes, in a 3-byte slot with a NUL), and for characters below U+0144 the byte they stand for.
// Read-only after tok_byte_table_init(), which the loader calls.
extern char tok_byte_char[256][3];
void tok_byte_table_init(void);
int tok_char_to_byte(uint32_t cp);  // -1 when cp stands for no byte

// Decodes one UTF-8 character at s[0..n) (valid input assumed). Returns its length, *cp its code.
size_t tok_utf8_next(const char *s, size_t n, uint32_t *cp);
// Whether s[0..n) is valid UTF-8.
int tok_utf8_valid(const char *s, size_t n);
// Appends s[0..n) to out with every maximal invalid subsequence replaced by U+FFFD (the WHATWG /
// Unicode "maximal subpart" rule that Rust's from_utf8_lossy and JS's TextDecoder follow).
// *state carries an incomplete trailing sequence between calls (0-initialised); final = 1 ends the
// stream (held bytes become U+FFFD). Returns -1 when out of memory.
typedef struct tok_utf8_state {
    uint8_t held[4];
    int n_held, needed;
    uint8_t lower, upper;
} tok_utf8_state;
int tok_utf8_lossy(tok_utf8_state *st, const char *s, size_t n, int final, tok_buf *out);

// ---- stages (pretok.c, bpe.c) ------------------------------------------------------------------

int tok_trie_add(tok_trie *t, const char *s, size_t len, int32_t added_index);
void tok_trie_free(tok_trie *t);

// Normalizes s[0..n) with the tokenizer's normalizers into out (replacing its content).
mpk_status tok_normalize(const mpk_tokenizer *tok, const char *s, size_t n, tok_buf *out);

// Runs the whole encode pipeline on valid UTF-8 (no post-processor): added tokens, normalizer,
// pre-tokenizers, BPE. Appends to ids.
mpk_status tok_encode_text(const mpk_tokenizer *tok, const char *s, size_t n, tok_ids *ids);

// BPE of one pre-token (already in the model's alphabet: byte-level characters). Appends ids.
mpk_status tok_bpe_word(const mpk_tokenizer *tok, const char *w, size_t n, tok_ids *ids);

// GPT-2's pre-tokenizer regex, used by a ByteLevel step with use_regex = true.
extern const char tok_gpt2_pattern[];

// Compiles a regex for a Split pre-tokenizer (UTF + UCP, JIT when available); NULL on failure with
// the message in err.
pcre2_code *tok_regex_compile(const char *pattern, size_t len, int literal, char *err,
                              size_t err_len);

#endif  // MPK_TOK_INTERNAL_H
