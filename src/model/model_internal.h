// model_internal.h — the mpk_model object shared by the loader (model.c), the config parser
// (config.c) and the graph builder (builder.c). Weights are bf16; each pointer either points into
// a mapped safetensors file or into a buffer the model owns.
#ifndef MPK_MODEL_INTERNAL_H
#define MPK_MODEL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "mpk.h"
#include "mpk/model.h"
#include "model/safetensors.h"

// One decoder layer. H = hidden, Hq/Hkv heads, G = Hq/Hkv, D = head_dim, I = intermediate.
typedef struct mpk_layer_weights {
    uint16_t *wqkv;               // (Hkv*(G+2)*D, H) owned: per kv head h, its G query heads'
                                  // rows, then k_h's rows, then v_h's rows
    const uint16_t *wo;           // (H, Hq*D)
    uint16_t *wgu;                // (2I, H) owned: gate rows, then up rows
    const uint16_t *wdown;        // (H, I)
    const uint16_t *input_norm;   // (H)
    const uint16_t *post_norm;    // (H)
    const uint16_t *q_norm;       // (D), NULL unless qk_norm
    const uint16_t *k_norm;       // (D), NULL unless qk_norm
} mpk_layer_weights;

struct mpk_model {
    mpk_model_config cfg;
    mpk_st_file **files;          // mapped checkpoint files (none for random models)
    int32_t num_files;
    void **owned;                 // buffers freed with the model
    int32_t num_owned, cap_owned;
    const uint16_t *embed;        // (V, H)
    const uint16_t *final_norm;   // (H)
    const uint16_t *lm_head;      // (V, H); == embed when tied
    mpk_layer_weights *layers;    // (num_layers)
    float *inv_freq;              // (D/2) owned
};

// Parses config.json text (label names the file in errors). Does not read generation_config.
mpk_status mpk_config_parse(const char *text, size_t len, const char *label,
                            mpk_model_config *out, char *err, size_t err_len);

// Adds the EOS ids of a generation_config.json text to cfg (skipping duplicates). A missing or
// null eos_token_id adds nothing.
mpk_status mpk_generation_config_parse(const char *text, size_t len, const char *label,
                                       mpk_model_config *cfg, char *err, size_t err_len);

// Reads a whole file into a NUL-terminated malloc'd buffer. MPK_ERR_NOT_FOUND when it does not
// exist, MPK_ERR_IO for other failures.
mpk_status mpk_read_text_file(const char *path, const char *label, char **out, size_t *len,
                              char *err, size_t err_len);

// Rows of the fused QKV weight: Hkv * (G + 2) * D.
int64_t mpk_model_qkv_rows(const mpk_model_config *cfg);

// The builder's grid choices (builder.c), exposed for tests: grid.x for a layer that splits n
// output columns among `workers`, and the argmax layer's number of partial maxima.
int32_t mpk_build_pick_grid(int64_t n, int32_t workers);
// Column chunks (grid.x) of the fused attention + o_proj layer for hidden size H.
int32_t mpk_build_attention_linear_chunks(int64_t H, int32_t num_kv_heads, int32_t workers);
// Default splits of a kv head's attention over positions (mpk_build_options.attention_splits 0).
int32_t mpk_build_attention_splits(int32_t num_kv_heads, int32_t workers);
int32_t mpk_build_argmax_grid(int64_t vocab, int32_t workers);

#endif  // MPK_MODEL_INTERNAL_H
