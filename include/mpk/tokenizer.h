// mpk/tokenizer.h — the tokenizer and chat templates of mpk: byte-level BPE read from a Hugging
// Face tokenizer.json (the Qwen3 and Llama 3 kind), producing the same ids as Hugging Face's
// `tokenizers`, and the Qwen3 / Llama 3 chat templates rendered as their Jinja templates would.
//
// Conventions as in mpk.h: fallible calls return an mpk_status and hand objects back through
// out-pointers; freeing NULL is a no-op. There is no kernel here, so a failed load writes its
// sentence into the caller's err buffer. A loaded tokenizer is never modified, so one tokenizer may
// be used from several threads at once.
#ifndef MPK_TOKENIZER_H
#define MPK_TOKENIZER_H

#include "mpk.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mpk_tokenizer mpk_tokenizer;                // opaque: vocab, merges, pipeline
typedef struct mpk_tokenizer_stream mpk_tokenizer_stream;  // opaque: incremental decoder state

// ---- chat templates ----------------------------------------------------------------------------

typedef enum mpk_chat_template {
    MPK_CHAT_TEMPLATE_UNKNOWN = 0,
    MPK_CHAT_TEMPLATE_QWEN3 = 1,     // ChatML with <think> handling (Qwen3)
    MPK_CHAT_TEMPLATE_LLAMA3 = 2,    // Llama 3.1 / 3.2 / 3.3 instruct: system header with dates
    MPK_CHAT_TEMPLATE_LLAMA3_0 = 3,  // Llama 3 (3.0): headers only, no default system message
} mpk_chat_template;

// One turn of a conversation. role is "system", "user", "assistant" or "tool" (Qwen3).
// reasoning_content (Qwen3, may be NULL): the assistant's thinking when it is kept apart from
// content; when NULL it is taken from a "<think>...</think>" prefix of content, as the template
// does.
typedef struct mpk_chat_message {
    const char *role;
    const char *content;
    const char *reasoning_content;
} mpk_chat_message;

// Renders a conversation as the model's own chat template would for ordinary conversations (no
// tools): Qwen3's ChatML, where past assistant turns lose their <think> blocks, and with
// enable_thinking = 0 the generation prompt ends in an empty "<think>\n\n</think>\n\n"; Llama 3.x
// with "<|begin_of_text|>" and the default system header ("Cutting Knowledge Date: December 2023",
// "Today Date: 26 Jul 2024"). Encode the result with add_special = 0: the text already holds the
// BOS where the template writes one. *out is a malloc'd NUL-terminated string the caller frees
// with free(). n must be ≥ 1 (the templates index messages[0]). Tool turns render for Qwen3;
// for Llama 3 they are MPK_ERR_UNSUPPORTED (its template JSON-encodes them).
mpk_status mpk_chat_render(mpk_chat_template kind, const mpk_chat_message *msgs, int n,
                           int add_generation_prompt, int enable_thinking, char **out);

// mpk_chat_render with every knob. date_string replaces Llama 3.1+'s "Today Date" (transformers
// passes today's, "26 Nov 2026" style); NULL keeps the template's own fallback "26 Jul 2024".
typedef struct mpk_chat_options {
    int add_generation_prompt;  // end with the assistant header, ready to generate (1)
    int enable_thinking;        // Qwen3: 0 = the generation prompt closes an empty <think> (1)
    const char *date_string;    // Llama 3.1+: the "Today Date" line (NULL)
} mpk_chat_options;

mpk_chat_options mpk_chat_default_options(void);
mpk_status mpk_chat_render_opts(mpk_chat_template kind, const mpk_chat_message *msgs, int n,
                                const mpk_chat_options *opts, char **out);

// Which of the templates above a chat template text is (from tokenizer_config.json's
// "chat_template"), falling back to config.json's model_type ("qwen3", "llama", ...) when the
// text is NULL or not recognised. Either argument may be NULL.
mpk_chat_template mpk_chat_template_detect(const char *chat_template, const char *model_type);

// The same, read from a tokenizer_config.json file. A file without "chat_template" is not an
// error (the model_type decides then); a missing or malformed file is.
mpk_status mpk_chat_template_detect_file(const char *tokenizer_config_path, const char *model_type,
                                         mpk_chat_template *out, char *err, size_t err_len);

// "qwen3", "llama3", "llama3.0" or "unknown".
const char *mpk_chat_template_name(mpk_chat_template kind);

// ---- loading -----------------------------------------------------------------------------------

// Loads a tokenizer.json (model type BPE, byte-level). When a tokenizer_config.json lies beside
// it, its bos_token, eos_token and chat_template are read too (special ids, template kind).
// On failure *out is NULL and err (may be NULL) holds a sentence naming the file and the problem:
// MPK_ERR_IO (cannot read), MPK_ERR_FORMAT (bad JSON or a missing/invalid field),
// MPK_ERR_UNSUPPORTED (e.g. a WordPiece model or an unknown pre-tokenizer).
mpk_status mpk_tokenizer_load(const char *tokenizer_json_path, mpk_tokenizer **out, char *err,
                              size_t err_len);

// The same from the JSON text itself (len bytes, need not be NUL-terminated). name is used in
// error messages. No tokenizer_config.json is read.
mpk_status mpk_tokenizer_load_from_memory(const char *json, size_t len, const char *name,
                                          mpk_tokenizer **out, char *err, size_t err_len);

void mpk_tokenizer_free(mpk_tokenizer *tok);

// ---- encoding ----------------------------------------------------------------------------------

// Encodes len bytes of UTF-8 text (NULs allowed; invalid UTF-8 is read as U+FFFD, as a lenient
// decoder would). Added tokens in the text ("<|im_end|>", "<think>") become their ids.
// add_special: add what the tokenizer's post-processor adds (Llama 3: the BOS in front; Qwen3:
// nothing). *ids is malloc'd (free with mpk_tokenizer_free_ids); *n its length.
mpk_status mpk_tokenizer_encode(const mpk_tokenizer *tok, const char *text, size_t len,
                                int add_special, int32_t **ids, int32_t *n);

void mpk_tokenizer_free_ids(int32_t *ids);

// ---- decoding ----------------------------------------------------------------------------------

// Decodes ids to UTF-8 as Hugging Face's decode does: byte-level tokens back to bytes, byte
// sequences that are not valid UTF-8 replaced by U+FFFD. skip_special drops special added tokens.
// Ids the tokenizer does not know (a model's padded vocabulary) are skipped, as Hugging Face does.
// *out is malloc'd, NUL-terminated, freed with free();
// *out_len (may be NULL) is its length in bytes.
mpk_status mpk_tokenizer_decode(const mpk_tokenizer *tok, const int32_t *ids, size_t n,
                                int skip_special, char **out, size_t *out_len);

// An incremental decoder for streaming generation: feed one id at a time and get back only
// complete UTF-8 characters; bytes of a character split across tokens are held until it is whole.
// The concatenation of all pieces (and the final flush) equals mpk_tokenizer_decode of all ids.
mpk_status mpk_tokenizer_stream_create(const mpk_tokenizer *tok, int skip_special,
                                       mpk_tokenizer_stream **out);
// Pushes one id. *text points into the stream and stays valid until its next call; *len is its
// length in bytes, often 0 (it is NUL-terminated too, but the text itself may contain NULs).
mpk_status mpk_tokenizer_stream_push(mpk_tokenizer_stream *s, int32_t id, const char **text,
                                     size_t *len);
// Ends the stream: held bytes that never became a character come out as U+FFFD. The stream can
// be reused afterwards as if new.
mpk_status mpk_tokenizer_stream_flush(mpk_tokenizer_stream *s, const char **text, size_t *len);
void mpk_tokenizer_stream_free(mpk_tokenizer_stream *s);

// ---- vocabulary ---------------------------------------------------------------------------------

// Number of ids: the model's vocabulary plus the added tokens (the largest id + 1).
int32_t mpk_tokenizer_vocab_size(const mpk_tokenizer *tok);
// The id of a token as written in the vocabulary (byte-level form, "Ġhello") or an added token
// ("<|im_end|>"); -1 when absent.
int32_t mpk_tokenizer_token_to_id(const mpk_tokenizer *tok, const char *token);
// The token string of an id (pointer into the tokenizer), NULL when out of range or unused.
const char *mpk_tokenizer_id_to_token(const mpk_tokenizer *tok, int32_t id);
// Whether id is a special added token (skipped by skip_special).
int mpk_tokenizer_is_special(const mpk_tokenizer *tok, int32_t id);

// Special ids, -1 when unknown. BOS: tokenizer_config.json's bos_token, else the first special
// token the post-processor adds. EOS: tokenizer_config.json's eos_token, else a well-known end
// token present in the vocabulary ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", ...).
int32_t mpk_tokenizer_bos_id(const mpk_tokenizer *tok);
int32_t mpk_tokenizer_eos_id(const mpk_tokenizer *tok);
// The chat template kind read from tokenizer_config.json beside the tokenizer (UNKNOWN if none).
mpk_chat_template mpk_tokenizer_chat_template(const mpk_tokenizer *tok);

#ifdef __cplusplus
}
#endif

#endif  // MPK_TOKENIZER_H
