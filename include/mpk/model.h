// mpk/model.h — models on top of the layer API: load a Hugging Face Qwen3 / Llama 3 directory
// (config.json + safetensors), or make a random-weight one from a named config, and emit the whole
// decode graph into an mpk_kernel. Included at the end of mpk.h; uses nothing but that header.
//
// Ownership: an mpk_model owns its weights (mapped files and converted/fused copies). A kernel
// built from a model points into those weights, so the model must outlive every such kernel.
#ifndef MPK_MODEL_H
#define MPK_MODEL_H

#include "../mpk.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mpk_model mpk_model;  // opaque: config + weights

typedef enum mpk_rope_type {
    MPK_ROPE_DEFAULT = 0,  // inv_freq[i] = theta^(-2i/D)
    MPK_ROPE_LLAMA3 = 1,   // Llama 3.1+ frequency-dependent scaling of the default frequencies
} mpk_rope_type;

// What a decoder needs from config.json. Names follow the Hugging Face fields.
typedef struct mpk_model_config {
    char model_type[32];               // "qwen3" or "llama"
    int32_t vocab_size;
    int32_t hidden_size;
    int32_t intermediate_size;
    int32_t num_layers;                // num_hidden_layers
    int32_t num_heads;                 // num_attention_heads
    int32_t num_kv_heads;              // num_key_value_heads (= num_heads when absent)
    int32_t head_dim;                  // head_dim (= hidden_size / num_heads when absent)
    int32_t max_position_embeddings;
    float rms_norm_eps;
    double rope_theta;
    int32_t rope_type;                 // mpk_rope_type
    float rope_factor;                 // llama3 only: factor, low/high_freq_factor,
    float rope_low_freq_factor;        //   original_max_position_embeddings
    float rope_high_freq_factor;
    int32_t rope_original_max_position;
    int32_t tie_word_embeddings;       // 1: the LM head is embed_tokens (no lm_head.weight)
    int32_t bos_token_id;              // -1 when absent
    int32_t eos_token_ids[MPK_MAX_EOS_TOKENS];  // config.json's, then generation_config.json's
    int32_t num_eos_token_ids;
    mpk_dtype dtype;                   // torch_dtype / dtype of the checkpoint (weights are bf16 in
                                       // memory whatever it is)
    int32_t qk_norm;                   // 1: per-head RMSNorm of q and k before RoPE (Qwen3)
} mpk_model_config;

// ---- loading -----------------------------------------------------------------------------------

// Loads a Hugging Face model directory: config.json, generation_config.json (optional, for EOS
// ids), and model.safetensors or model.safetensors.index.json with its shards. BF16 weights are
// used in place from the mapped files; F16/F32 ones are converted to bf16 copies. Q/K/V and
// gate/up are fused into new buffers in the layout the layers want. On failure *out is NULL and
// err (if non-NULL) holds a sentence naming the file and the problem. Free with mpk_model_free.
mpk_status mpk_model_load(const char *dir, mpk_model **out, char *err, size_t err_len);

// Parses a config.json file into *out (also reads generation_config.json beside it when present).
// Exposed for tools and tests; mpk_model_load calls it.
mpk_status mpk_model_config_load(const char *config_path, mpk_model_config *out, char *err,
                                 size_t err_len);

// The config of a known model, with the numbers of its real config.json: "qwen3-0.6b",
// "qwen3-1.7b", "qwen3-8b", "llama-3.2-1b", and "qwen3-tiny" (the test fixture's shape).
// MPK_ERR_NOT_FOUND for another name.
mpk_status mpk_model_config_preset(const char *name, mpk_model_config *out);

// Checks that a config is one this library can run (positive sizes, heads divide, even head_dim,
// known model_type and rope). err as above.
mpk_status mpk_model_config_validate(const mpk_model_config *cfg, char *err, size_t err_len);

// A model with random bf16 weights for benchmarks and tests without files: deterministic in
// `seed`, linear weights ~N(0, 0.02^2), norm weights ~1 + N(0, 0.02^2). The config is copied.
mpk_status mpk_model_create_random(const mpk_model_config *cfg, uint64_t seed, mpk_model **out,
                                   char *err, size_t err_len);

// The model's config; valid while the model lives.
const mpk_model_config *mpk_model_get_config(const mpk_model *model);

// Bytes of weights one decode step streams at batch 1: every linear weight, the norms, the LM
// head and one embedding row. The numerator of "GB/s" in benchmarks.
int64_t mpk_model_weight_bytes_per_token(const mpk_model *model);

// The RoPE inverse frequencies (head_dim / 2 floats) the model's attention uses, as transformers
// computes them (default or llama3 scaling). Valid while the model lives.
const float *mpk_model_rope_inv_freq(const mpk_model *model);

// Computes RoPE inverse frequencies for a config into out[head_dim / 2].
void mpk_rope_inv_freq_compute(const mpk_model_config *cfg, float *out);

// Frees the model and its weights. NULL is a no-op. Free kernels built from it first.
void mpk_model_free(mpk_model *model);

// ---- building the graph ------------------------------------------------------------------------

typedef struct mpk_build_options {
    int32_t sampling;          // 0: argmax layer (greedy); 1: sampling layer (per-request settings)
    int32_t num_workers_hint;  // workers to size the grids for; 0 = the kernel's num_workers
                               // (or 8 when that is 0 too)
    // How attention meets the output projection: MPK_ATTN_OUT_AUTO (0) fuses them
    // (mpk_attention_linear_layer, one stage less per layer) where that measured faster (small
    // projection slices, kernels of max_seq_len <= 256: the fused attention is not split),
    // MPK_ATTN_OUT_FUSED requires it, MPK_ATTN_OUT_SEPARATE keeps attention and o_proj apart.
    int32_t attention_output;
    // Tasks per kv head that split a long decode row's attention over its positions
    // (mpk_attention_layer's grid.y; separate attention only): 0 = automatic (the workers per kv
    // head, at most 16), 1 = never split, 2-64 = that many.
    int32_t attention_splits;
    // Rows of "logits" the LM head computes: MPK_LOGITS_SAMPLED (0, the default) those whose
    // tokens are sampled (mpk_rmsnorm_linear_sampled_layer: a prompt's last row, every decode
    // row), MPK_LOGITS_ALL every row (teacher-forced evaluation, per-position log-probabilities
    // of a prompt).
    int32_t logits;
} mpk_build_options;

enum { MPK_ATTN_OUT_AUTO = 0, MPK_ATTN_OUT_FUSED = 1, MPK_ATTN_OUT_SEPARATE = 2 };
enum { MPK_LOGITS_SAMPLED = 0, MPK_LOGITS_ALL = 1 };

mpk_build_options mpk_build_default_options(void);

// Emits the whole decoder into a kernel made with mpk_kernel_create and not yet compiled: embed,
// per layer rmsnorm+QKV, attention (paged KV cache, q/k norm for Qwen3, RoPE), o_proj + residual,
// rmsnorm+gate/up, silu*up+down + residual (attention and o_proj fused per
// opt->attention_output, the residual then added by the gate/up task), then the final norm + LM head into a tensor named
// "logits" (max_batched_tokens, vocab) bf16, and argmax or sampling into MPK_META_OUTPUT_IDS.
// Weight tensors are attached without copying: the model must outlive the kernel. opt may be NULL
// (defaults). On failure mpk_last_error(kernel) names the layer.
mpk_status mpk_model_build(mpk_model *model, mpk_kernel *kernel, const mpk_build_options *opt);

#ifdef __cplusplus
}
#endif

#endif  // MPK_MODEL_H
