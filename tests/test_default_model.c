// test_default_model.c — the bundled model in models/default (suite "default_model"): it loads, its
// tokenizer encodes as Hugging Face's does and round-trips, and greedy generation on the CPU
// backend is non-empty, repeatable and independent of the worker count.
#include <criterion/criterion.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mpk.h"
#include "mpk/model.h"
#include "mpk/tokenizer.h"

#define DIR "models/default"

// ---- reference ids ------------------------------------------------------------------------------
// Written by tools/train_default_model.py when it made this model (the "reference:" line of
// models/default/train_log.txt): Hugging Face `tokenizers` encoding the two texts below, and
// transformers' greedy continuation of the prompt computed in float32 from the saved bf16 weights.

static const char SENTENCE[] = "Call me Ishmael. The whale, he said, isn't 42 feet long\xe2\x80\x94"
                               "it's \"huge\"!";
static const int32_t SENTENCE_IDS[] = {35,  472, 480, 2287, 3951, 65,  776, 14,  351, 1297,
                                       12,  402, 1444, 12,  327,  78,  1336, 221, 20,  18,
                                       3823, 804, 789, 271, 516,  856, 72,  3905, 2,   1};
static const char PROMPT[] = "Once upon a time";
static const int32_t PROMPT_IDS[] = {47, 1053, 543, 259, 625};
static const int32_t GREEDY_FP32[] = {268, 652, 12,  340,  367, 259, 707, 281,
                                      2227, 316, 340, 778, 298, 1835, 281, 1006};
// mpk keeps activations in bf16 (fp32 accumulation), transformers' reference is fp32: the two
// agree until a step whose best two logits are close enough for bf16 rounding to swap them (the
// 22nd token here is such a step: bf16 transformers picks " aided" where fp32 picks " a"). mpk
// matched all 16 listed tokens when this was written; 12 leaves room for rounding changes.
#define GREEDY_MATCH 12
#define NEW_TOKENS 24

#define COUNT(a) ((int32_t)(sizeof(a) / sizeof((a)[0])))

// ---- helpers ------------------------------------------------------------------------------------

static mpk_model *load_model(void) {
    mpk_model *m = NULL;
    char err[512] = "";
    cr_assert_eq(mpk_model_load(DIR, &m, err, sizeof err), MPK_OK, "%s", err);
    return m;
}

static mpk_tokenizer *load_tokenizer(void) {
    mpk_tokenizer *tok = NULL;
    char err[512] = "";
    cr_assert_eq(mpk_tokenizer_load(DIR "/tokenizer.json", &tok, err, sizeof err), MPK_OK, "%s",
                 err);
    return tok;
}

// Greedy generation of NEW_TOKENS after the prompt on the CPU backend with `workers` threads;
// EOS does not stop it, so every run yields exactly NEW_TOKENS ids into out.
static void generate(mpk_model *m, int32_t workers, int32_t *out) {
    mpk_kernel_params p = mpk_kernel_default_params();
    p.backend = MPK_BACKEND_CPU;
    p.num_workers = workers;
    p.max_requests = 1;
    p.max_seq_len = 64;
    p.max_batched_tokens = 16;
    p.page_size = 16;  // the generation crosses page boundaries
    p.num_eos_token_ids = 0;
    mpk_kernel *k = NULL;
    cr_assert_eq(mpk_kernel_create(&p, &k), MPK_OK);
    cr_assert_eq(mpk_model_build(m, k, NULL), MPK_OK, "%s", mpk_last_error(k));
    cr_assert_eq(mpk_compile(k), MPK_OK, "%s", mpk_last_error(k));
    cr_assert_eq(mpk_request_add(k, PROMPT_IDS, COUNT(PROMPT_IDS), NEW_TOKENS, NULL, NULL), MPK_OK,
                 "%s", mpk_last_error(k));
    cr_assert_eq(mpk_run(k, NULL, NULL), MPK_OK, "%s", mpk_last_error(k));
    const int32_t *toks;
    int32_t plen, total;
    cr_assert_eq(mpk_request_tokens(k, 0, &toks, &plen, &total), MPK_OK);
    cr_assert_eq(plen, COUNT(PROMPT_IDS));
    cr_assert_eq(total - plen, NEW_TOKENS, "%d tokens generated", total - plen);
    memcpy(out, toks + plen, NEW_TOKENS * sizeof *out);
    mpk_kernel_free(k);
}

// ---- tests --------------------------------------------------------------------------------------

Test(default_model, loads_and_is_small) {
    mpk_model *m = load_model();
    const mpk_model_config *c = mpk_model_get_config(m);
    cr_expect_str_eq(c->model_type, "qwen3");
    cr_expect_eq(c->vocab_size, 4096);
    cr_expect_eq(c->num_layers, 4);
    cr_expect_eq(c->num_heads, 2 * c->num_kv_heads, "GQA ratio 2");
    cr_expect_eq(c->tie_word_embeddings, 1);
    cr_expect_eq(c->qk_norm, 1);
    cr_expect(c->num_eos_token_ids >= 1 && c->eos_token_ids[0] == 0, "EOS is <|endoftext|> (0)");
    mpk_model_free(m);

    // The repository carries it: weights plus tokenizer stay near 5 MB.
    struct stat st;
    long long total = 0;
    static const char *const files[] = {"config.json", "model.safetensors", "tokenizer.json",
                                        "tokenizer_config.json", "README.md"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[256];
        snprintf(path, sizeof path, DIR "/%s", files[i]);
        cr_assert_eq(stat(path, &st), 0, "%s is missing", path);
        total += st.st_size;
    }
    cr_expect(total < 5500000, "models/default holds %lld bytes", total);
}

Test(default_model, tokenizer_matches_hugging_face_and_round_trips) {
    mpk_tokenizer *tok = load_tokenizer();
    cr_expect_eq(mpk_tokenizer_token_to_id(tok, "<|endoftext|>"), 0);

    int32_t *ids = NULL, n = 0;
    cr_assert_eq(mpk_tokenizer_encode(tok, SENTENCE, strlen(SENTENCE), 1, &ids, &n), MPK_OK);
    cr_assert_eq(n, COUNT(SENTENCE_IDS), "%d ids, Hugging Face %d", n, COUNT(SENTENCE_IDS));
    for (int32_t i = 0; i < n; i++)
        cr_expect_eq(ids[i], SENTENCE_IDS[i], "id %d: %d, Hugging Face %d", i, ids[i],
                     SENTENCE_IDS[i]);
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(mpk_tokenizer_decode(tok, ids, (size_t)n, 1, &text, &len), MPK_OK);
    cr_expect_eq(len, strlen(SENTENCE));
    cr_expect_str_eq(text, SENTENCE);
    free(text);
    mpk_tokenizer_free_ids(ids);

    cr_assert_eq(mpk_tokenizer_encode(tok, PROMPT, strlen(PROMPT), 1, &ids, &n), MPK_OK);
    cr_assert_eq(n, COUNT(PROMPT_IDS));
    cr_expect(memcmp(ids, PROMPT_IDS, sizeof PROMPT_IDS) == 0, "the prompt encodes differently");
    mpk_tokenizer_free_ids(ids);
    mpk_tokenizer_free(tok);
}

Test(default_model, greedy_generation_is_repeatable_and_reads_as_words, .timeout = 120) {
    mpk_model *m = load_model();
    int32_t a[NEW_TOKENS], b[NEW_TOKENS], c[NEW_TOKENS];
    generate(m, 1, a);
    generate(m, 1, b);
    generate(m, 3, c);
    cr_expect(memcmp(a, b, sizeof a) == 0, "two runs with 1 worker differ");
    cr_expect(memcmp(a, c, sizeof a) == 0, "1 and 3 workers differ");

    int same = 0;
    while (same < COUNT(GREEDY_FP32) && a[same] == GREEDY_FP32[same]) same++;
    cr_expect(same >= GREEDY_MATCH, "only %d leading greedy tokens equal transformers' (token %d "
              "is %d, reference %d)", same, same, a[same], GREEDY_FP32[same]);

    mpk_tokenizer *tok = load_tokenizer();
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(mpk_tokenizer_decode(tok, a, NEW_TOKENS, 1, &text, &len), MPK_OK);
    size_t letters = 0;
    for (size_t i = 0; i < len; i++) letters += isalpha((unsigned char)text[i]) != 0;
    cr_expect(len > 0 && letters * 2 > len, "the continuation is not words: '%s'", text);
    cr_log_info("default model: '%s%s' (%d tokens equal transformers')", PROMPT, text, same);
    free(text);
    mpk_tokenizer_free(tok);
    mpk_model_free(m);
}
