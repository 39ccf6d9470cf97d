// config.c — config.json (and generation_config.json) of Qwen3 and Llama 3 checkpoints into an
// mpk_model_config. Accepts both spellings transformers has written over time: rope_theta +
// rope_scaling {rope_type|type} and the newer rope_parameters; torch_dtype or dtype; eos_token_id
// as an int or a list; head_dim absent. Also the named presets with real models' numbers.
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"

// ---- small JSON helpers ------------------------------------------------------------------------

static const cJSON *field(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNull(v) ? NULL : v;
}

// An integer field in [lo, hi]. Absent: *out = def, or an error when required.
static mpk_status get_int(const cJSON *obj, const char *key, int required, int32_t def,
                          int64_t lo, int64_t hi, const char *label, int32_t *out, char *err,
                          size_t err_len) {
    const cJSON *v = field(obj, key);
    if (!v) {
        if (required) {
            mpk_model_seterr(err, err_len, "%s: missing '%s'", label, key);
            return MPK_ERR_FORMAT;
        }
        *out = def;
        return MPK_OK;
    }
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= (double)lo && d <= (double)hi) || floor(d) != d) {
        mpk_model_seterr(err, err_len, "%s: '%s' must be an integer in [%lld, %lld]", label, key,
                         (long long)lo, (long long)hi);
        return MPK_ERR_FORMAT;
    }
    *out = (int32_t)d;
    return MPK_OK;
}

static mpk_status get_num(const cJSON *obj, const char *key, int required, double def,
                          const char *label, double *out, char *err, size_t err_len) {
    const cJSON *v = field(obj, key);
    if (!v) {
        if (required) {
            mpk_model_seterr(err, err_len, "%s: missing '%s'", label, key);
            return MPK_ERR_FORMAT;
        }
        *out = def;
        return MPK_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        mpk_model_seterr(err, err_len, "%s: '%s' must be a number", label, key);
        return MPK_ERR_FORMAT;
    }
    *out = v->valuedouble;
    return MPK_OK;
}

static int get_bool(const cJSON *obj, const char *key, int def) {
    const cJSON *v = field(obj, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return def;
}

// Appends the ids of an int-or-list field to ids[*n] (skipping duplicates, at most `cap`).
static mpk_status add_token_ids(const cJSON *v, const char *key, const char *label, int32_t *ids,
                                int32_t *n, int32_t cap, char *err, size_t err_len) {
    if (!v) return MPK_OK;
    const cJSON *items = cJSON_IsArray(v) ? v->child : v;
    for (const cJSON *it = items; it; it = cJSON_IsArray(v) ? it->next : NULL) {
        double d = cJSON_IsNumber(it) ? it->valuedouble : NAN;
        if (!(d >= 0 && d <= 2147483647.0) || floor(d) != d) {
            mpk_model_seterr(err, err_len, "%s: '%s' must be a token id or a list of them", label,
                             key);
            return MPK_ERR_FORMAT;
        }
        int32_t id = (int32_t)d;
        int dup = 0;
        for (int32_t i = 0; i < *n; i++) dup |= ids[i] == id;
        if (dup) continue;
        if (*n >= cap) {
            mpk_model_seterr(err, err_len, "%s: '%s' lists more than %d distinct tokens", label,
                             key, cap);
            return MPK_ERR_LIMIT;
        }
        ids[(*n)++] = id;
    }
    return MPK_OK;
}

// ---- rope --------------------------------------------------------------------------------------

// rope_parameters may also be keyed by layer type ({"full_attention": {...}}): use full attention.
static const cJSON *rope_source(const cJSON *root) {
    const cJSON *p = field(root, "rope_parameters");
    if (cJSON_IsObject(p)) {
        const cJSON *full = field(p, "full_attention");
        if (cJSON_IsObject(full) && !field(p, "rope_type") && !field(p, "rope_theta")) return full;
        return p;
    }
    const cJSON *s = field(root, "rope_scaling");
    return cJSON_IsObject(s) ? s : NULL;
}

static mpk_status parse_rope(const cJSON *root, const char *label, mpk_model_config *c,
                             char *err, size_t err_len) {
    mpk_status st = get_num(root, "rope_theta", 0, 10000.0, label, &c->rope_theta, err, err_len);
    if (st) return st;
    c->rope_type = MPK_ROPE_DEFAULT;
    const cJSON *src = rope_source(root);
    if (!src) return MPK_OK;
    if (field(src, "rope_theta")) {
        st = get_num(src, "rope_theta", 1, 0, label, &c->rope_theta, err, err_len);
        if (st) return st;
    }
    const cJSON *type = field(src, "rope_type");
    if (!type) type = field(src, "type");
    if (type && !cJSON_IsString(type)) {
        mpk_model_seterr(err, err_len, "%s: rope_type must be a string", label);
        return MPK_ERR_FORMAT;
    }
    if (!type || strcmp(type->valuestring, "default") == 0) return MPK_OK;
    if (strcmp(type->valuestring, "llama3") != 0) {
        mpk_model_seterr(err, err_len, "%s: unsupported rope_type '%.40s' (supported: default, "
                         "llama3)", label, type->valuestring);
        return MPK_ERR_UNSUPPORTED;
    }
    c->rope_type = MPK_ROPE_LLAMA3;
    double factor, low, high;
    if ((st = get_num(src, "factor", 1, 0, label, &factor, err, err_len)) ||
        (st = get_num(src, "low_freq_factor", 1, 0, label, &low, err, err_len)) ||
        (st = get_num(src, "high_freq_factor", 1, 0, label, &high, err, err_len)) ||
        (st = get_int(src, "original_max_position_embeddings", 1, 0, 1, INT32_MAX, label,
                      &c->rope_original_max_position, err, err_len)))
        return st;
    c->rope_factor = (float)factor;
    c->rope_low_freq_factor = (float)low;
    c->rope_high_freq_factor = (float)high;
    return MPK_OK;
}

// ---- config.json -------------------------------------------------------------------------------

static mpk_status parse_dtype(const cJSON *root, const char *label, mpk_dtype *out, char *err,
                              size_t err_len) {
    const cJSON *v = field(root, "dtype");
    if (!v) v = field(root, "torch_dtype");
    *out = MPK_BF16;
    if (!v) return MPK_OK;
    const char *s = cJSON_IsString(v) ? v->valuestring : "";
    if (strcmp(s, "bfloat16") == 0) *out = MPK_BF16;
    else if (strcmp(s, "float16") == 0) *out = MPK_F16;
    else if (strcmp(s, "float32") == 0) *out = MPK_F32;
    else {
        mpk_model_seterr(err, err_len, "%s: unsupported dtype '%.40s' (supported: bfloat16, "
                         "float16, float32)", label, s);
        return MPK_ERR_UNSUPPORTED;
    }
    return MPK_OK;
}

// Architecture switches our layers do not implement: refuse rather than compute something else.
static mpk_status check_unsupported(const cJSON *root, const char *label, char *err,
                                    size_t err_len) {
    const cJSON *act = field(root, "hidden_act");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0)) {
        mpk_model_seterr(err, err_len, "%s: unsupported hidden_act (only 'silu')", label);
        return MPK_ERR_UNSUPPORTED;
    }
    static const char *const flags[] = {"attention_bias", "mlp_bias", "use_sliding_window"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        if (get_bool(root, flags[i], 0)) {
            mpk_model_seterr(err, err_len, "%s: '%s: true' is not supported", label, flags[i]);
            return MPK_ERR_UNSUPPORTED;
        }
    }
    return MPK_OK;
}

static mpk_status parse_root(const cJSON *root, const char *label, mpk_model_config *c,
                             char *err, size_t err_len) {
    const cJSON *mt = field(root, "model_type");
    if (!cJSON_IsString(mt)) {
        mpk_model_seterr(err, err_len, "%s: missing 'model_type'", label);
        return MPK_ERR_FORMAT;
    }
    if (strcmp(mt->valuestring, "qwen3") != 0 && strcmp(mt->valuestring, "llama") != 0) {
        mpk_model_seterr(err, err_len, "%s: unsupported model_type '%.40s' (supported: qwen3, "
                         "llama)", label, mt->valuestring);
        return MPK_ERR_UNSUPPORTED;
    }
    snprintf(c->model_type, sizeof c->model_type, "%s", mt->valuestring);
    c->qk_norm = strcmp(c->model_type, "qwen3") == 0;
    mpk_status st = check_unsupported(root, label, err, err_len);
    if (st) return st;

    const int64_t big = 1 << 30;
    if ((st = get_int(root, "vocab_size", 1, 0, 1, big, label, &c->vocab_size, err, err_len)) ||
        (st = get_int(root, "hidden_size", 1, 0, 1, big, label, &c->hidden_size, err, err_len)) ||
        (st = get_int(root, "intermediate_size", 1, 0, 1, big, label, &c->intermediate_size, err,
                      err_len)) ||
        (st = get_int(root, "num_hidden_layers", 1, 0, 1, 100000, label, &c->num_layers, err,
                      err_len)) ||
        (st = get_int(root, "num_attention_heads", 1, 0, 1, 1 << 16, label, &c->num_heads, err,
                      err_len)) ||
        (st = get_int(root, "num_key_value_heads", 0, c->num_heads, 1, 1 << 16, label,
                      &c->num_kv_heads, err, err_len)))
        return st;
    if (c->hidden_size % c->num_heads != 0 && !field(root, "head_dim")) {
        mpk_model_seterr(err, err_len, "%s: no 'head_dim' and hidden_size %d is not a multiple "
                         "of num_attention_heads %d", label, c->hidden_size, c->num_heads);
        return MPK_ERR_FORMAT;
    }
    if ((st = get_int(root, "head_dim", 0, c->hidden_size / c->num_heads, 1, 1 << 16, label,
                      &c->head_dim, err, err_len)) ||
        (st = get_int(root, "max_position_embeddings", 0, 4096, 1, INT32_MAX, label,
                      &c->max_position_embeddings, err, err_len)) ||
        (st = get_int(root, "bos_token_id", 0, -1, -1, INT32_MAX, label, &c->bos_token_id, err,
                      err_len)))
        return st;
    double eps;
    if ((st = get_num(root, "rms_norm_eps", 0, 1e-6, label, &eps, err, err_len))) return st;
    c->rms_norm_eps = (float)eps;
    if ((st = parse_rope(root, label, c, err, err_len))) return st;
    if ((st = parse_dtype(root, label, &c->dtype, err, err_len))) return st;
    // Both Qwen3Config and LlamaConfig default to untied embeddings.
    c->tie_word_embeddings = get_bool(root, "tie_word_embeddings", 0);
    c->num_eos_token_ids = 0;
    return add_token_ids(field(root, "eos_token_id"), "eos_token_id", label, c->eos_token_ids,
                         &c->num_eos_token_ids, MPK_MAX_EOS_TOKENS, err, err_len);
}

static cJSON *parse_json(const char *text, size_t len, const char *label, char *err,
                         size_t err_len) {
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!cJSON_IsObject(root)) {
        mpk_model_seterr(err, err_len, "%s: not a JSON object", label);
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

mpk_status mpk_config_parse(const char *text, size_t len, const char *label,
                            mpk_model_config *out, char *err, size_t err_len) {
    memset(out, 0, sizeof *out);
    cJSON *root = parse_json(text, len, label, err, err_len);
    if (!root) return MPK_ERR_FORMAT;
    mpk_status st = parse_root(root, label, out, err, err_len);
    cJSON_Delete(root);
    if (st) return st;
    return mpk_model_config_validate(out, err, err_len);
}

mpk_status mpk_generation_config_parse(const char *text, size_t len, const char *label,
                                       mpk_model_config *cfg, char *err, size_t err_len) {
    cJSON *root = parse_json(text, len, label, err, err_len);
    if (!root) return MPK_ERR_FORMAT;
    mpk_status st = add_token_ids(field(root, "eos_token_id"), "eos_token_id", label,
                                  cfg->eos_token_ids, &cfg->num_eos_token_ids,
                                  MPK_MAX_EOS_TOKENS, err, err_len);
    cJSON_Delete(root);
    return st;
}

mpk_status mpk_read_text_file(const char *path, const char *label, char **out, size_t *len,
                              char *err, size_t err_len) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        mpk_model_seterr(err, err_len, "%s: cannot open %s: %s", label, path, strerror(errno));
        return errno == ENOENT ? MPK_ERR_NOT_FOUND : MPK_ERR_IO;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - 1 - n, f);
        if (n < cap - 1) break;
        // JSON files of a model directory are small; refuse absurd ones.
        char *bigger = cap < ((size_t)256 << 20) ? realloc(buf, cap * 2) : NULL;
        if (!bigger) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        mpk_model_seterr(err, err_len, "%s: cannot read (%s)", label,
                         bad ? "I/O error" : "too large or out of memory");
        return bad ? MPK_ERR_IO : MPK_ERR_NOMEM;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return MPK_OK;
}

mpk_status mpk_model_config_load(const char *config_path, mpk_model_config *out, char *err,
                                 size_t err_len) {
    char *text;
    size_t len;
    memset(out, 0, sizeof *out);
    mpk_status st = mpk_read_text_file(config_path, "config.json", &text, &len, err, err_len);
    if (st) return st == MPK_ERR_NOT_FOUND ? MPK_ERR_IO : st;
    st = mpk_config_parse(text, len, "config.json", out, err, err_len);
    free(text);
    if (st) return st;

    // generation_config.json beside config.json: generate() stops at its EOS ids too.
    const char *slash = strrchr(config_path, '/');
    size_t dir_len = slash ? (size_t)(slash - config_path) + 1 : 0;
    size_t plen = dir_len + sizeof "generation_config.json";
    char *gen_path = malloc(plen);
    if (!gen_path) return MPK_ERR_NOMEM;
    memcpy(gen_path, config_path, dir_len);
    memcpy(gen_path + dir_len, "generation_config.json", sizeof "generation_config.json");
    st = mpk_read_text_file(gen_path, "generation_config.json", &text, &len, err, err_len);
    free(gen_path);
    if (st == MPK_ERR_NOT_FOUND) {
        if (err && err_len) err[0] = '\0';
        return MPK_OK;
    }
    if (st) return st;
    st = mpk_generation_config_parse(text, len, "generation_config.json", out, err, err_len);
    free(text);
    return st;
}

// ---- validation --------------------------------------------------------------------------------

mpk_status mpk_model_config_validate(const mpk_model_config *c, char *err, size_t err_len) {
    if (strcmp(c->model_type, "qwen3") != 0 && strcmp(c->model_type, "llama") != 0) {
        mpk_model_seterr(err, err_len, "config: unsupported model_type '%.32s'", c->model_type);
        return MPK_ERR_UNSUPPORTED;
    }
    if (c->vocab_size <= 0 || c->hidden_size <= 0 || c->intermediate_size <= 0 ||
        c->num_layers <= 0 || c->num_heads <= 0 || c->num_kv_heads <= 0 || c->head_dim <= 0) {
        mpk_model_seterr(err, err_len, "config: sizes must be positive (vocab %d, hidden %d, "
                         "intermediate %d, layers %d, heads %d, kv heads %d, head_dim %d)",
                         c->vocab_size, c->hidden_size, c->intermediate_size, c->num_layers,
                         c->num_heads, c->num_kv_heads, c->head_dim);
        return MPK_ERR_INVALID_ARG;
    }
    if (c->num_heads % c->num_kv_heads != 0) {
        mpk_model_seterr(err, err_len, "config: num_attention_heads %d is not a multiple of "
                         "num_key_value_heads %d", c->num_heads, c->num_kv_heads);
        return MPK_ERR_INVALID_ARG;
    }
    if (c->head_dim % 2 != 0) {
        mpk_model_seterr(err, err_len, "config: head_dim %d must be even for RoPE", c->head_dim);
        return MPK_ERR_INVALID_ARG;
    }
    if (!(c->rms_norm_eps > 0) || !(c->rope_theta > 1)) {
        mpk_model_seterr(err, err_len, "config: rms_norm_eps (%g) must be > 0 and rope_theta "
                         "(%g) > 1", (double)c->rms_norm_eps, c->rope_theta);
        return MPK_ERR_INVALID_ARG;
    }
    if (c->rope_type == MPK_ROPE_LLAMA3) {
        if (!(c->rope_factor > 0) || !(c->rope_low_freq_factor > 0) ||
            !(c->rope_high_freq_factor > c->rope_low_freq_factor) ||
            c->rope_original_max_position <= 0) {
            mpk_model_seterr(err, err_len, "config: llama3 rope needs factor > 0, "
                             "high_freq_factor > low_freq_factor > 0 and "
                             "original_max_position_embeddings > 0");
            return MPK_ERR_INVALID_ARG;
        }
    } else if (c->rope_type != MPK_ROPE_DEFAULT) {
        mpk_model_seterr(err, err_len, "config: unknown rope_type %d", c->rope_type);
        return MPK_ERR_UNSUPPORTED;
    }
    if (c->num_eos_token_ids < 0 || c->num_eos_token_ids > MPK_MAX_EOS_TOKENS) {
        mpk_model_seterr(err, err_len, "config: %d eos tokens (at most %d)", c->num_eos_token_ids,
                         MPK_MAX_EOS_TOKENS);
        return MPK_ERR_INVALID_ARG;
    }
    return MPK_OK;
}

// ---- rope frequencies --------------------------------------------------------------------------

// inv_freq[i] = theta^(-2i/D); llama3 then divides the low frequencies (wavelength above
// original_max / low_freq_factor) by `factor`, keeps the high ones (wavelength below
// original_max / high_freq_factor) and blends linearly in 1/wavelength between, as transformers'
// _compute_llama3_parameters does. Computed in double, rounded once to float.
void mpk_rope_inv_freq_compute(const mpk_model_config *c, float *out) {
    int32_t half = c->head_dim / 2;
    for (int32_t i = 0; i < half; i++) {
        double f = 1.0 / pow(c->rope_theta, (double)(2 * i) / (double)c->head_dim);
        if (c->rope_type == MPK_ROPE_LLAMA3) {
            double old_len = c->rope_original_max_position;
            double low_wavelen = old_len / c->rope_low_freq_factor;
            double high_wavelen = old_len / c->rope_high_freq_factor;
            double wavelen = 2.0 * M_PI / f;
            if (wavelen > low_wavelen) {
                f = f / c->rope_factor;
            } else if (wavelen >= high_wavelen) {
                double smooth = (old_len / wavelen - c->rope_low_freq_factor) /
                                (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1.0 - smooth) * f / c->rope_factor + smooth * f;
            }
        }
        out[i] = (float)f;
    }
}

// ---- presets -----------------------------------------------------------------------------------

typedef struct preset {
    const char *name;
    mpk_model_config cfg;
} preset;

// Numbers from each model's config.json on the Hugging Face hub (Qwen/Qwen3-0.6B, Qwen/Qwen3-1.7B,
// Qwen/Qwen3-8B, meta-llama/Llama-3.2-1B). qwen3-tiny is the shape of tests/fixtures' qwen3-tiny.
static const preset presets[] = {
    {"qwen3-0.6b", {.model_type = "qwen3", .vocab_size = 151936, .hidden_size = 1024,
                    .intermediate_size = 3072, .num_layers = 28, .num_heads = 16,
                    .num_kv_heads = 8, .head_dim = 128, .max_position_embeddings = 40960,
                    .rms_norm_eps = 1e-6f, .rope_theta = 1000000.0, .tie_word_embeddings = 1,
                    .bos_token_id = 151643, .eos_token_ids = {151645}, .num_eos_token_ids = 1,
                    .dtype = MPK_BF16, .qk_norm = 1}},
    {"qwen3-1.7b", {.model_type = "qwen3", .vocab_size = 151936, .hidden_size = 2048,
                    .intermediate_size = 6144, .num_layers = 28, .num_heads = 16,
                    .num_kv_heads = 8, .head_dim = 128, .max_position_embeddings = 40960,
                    .rms_norm_eps = 1e-6f, .rope_theta = 1000000.0, .tie_word_embeddings = 1,
                    .bos_token_id = 151643, .eos_token_ids = {151645}, .num_eos_token_ids = 1,
                    .dtype = MPK_BF16, .qk_norm = 1}},
    {"qwen3-8b", {.model_type = "qwen3", .vocab_size = 151936, .hidden_size = 4096,
                  .intermediate_size = 12288, .num_layers = 36, .num_heads = 32,
                  .num_kv_heads = 8, .head_dim = 128, .max_position_embeddings = 40960,
                  .rms_norm_eps = 1e-6f, .rope_theta = 1000000.0, .tie_word_embeddings = 0,
                  .bos_token_id = 151643, .eos_token_ids = {151645}, .num_eos_token_ids = 1,
                  .dtype = MPK_BF16, .qk_norm = 1}},
    {"llama-3.2-1b", {.model_type = "llama", .vocab_size = 128256, .hidden_size = 2048,
                      .intermediate_size = 8192, .num_layers = 16, .num_heads = 32,
                      .num_kv_heads = 8, .head_dim = 64, .max_position_embeddings = 131072,
                      .rms_norm_eps = 1e-5f, .rope_theta = 500000.0,
                      .rope_type = MPK_ROPE_LLAMA3, .rope_factor = 32.0f,
                      .rope_low_freq_factor = 1.0f, .rope_high_freq_factor = 4.0f,
                      .rope_original_max_position = 8192, .tie_word_embeddings = 1,
                      .bos_token_id = 128000, .eos_token_ids = {128001}, .num_eos_token_ids = 1,
                      .dtype = MPK_BF16, .qk_norm = 0}},
    {"qwen3-tiny", {.model_type = "qwen3", .vocab_size = 512, .hidden_size = 64,
                    .intermediate_size = 96, .num_layers = 2, .num_heads = 4, .num_kv_heads = 2,
                    .head_dim = 32, .max_position_embeddings = 512, .rms_norm_eps = 1e-6f,
                    .rope_theta = 10000.0, .tie_word_embeddings = 0, .bos_token_id = 1,
                    .eos_token_ids = {2}, .num_eos_token_ids = 1, .dtype = MPK_BF16,
                    .qk_norm = 1}},
};

mpk_status mpk_model_config_preset(const char *name, mpk_model_config *out) {
    if (!name || !out) return MPK_ERR_INVALID_ARG;
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        if (strcmp(presets[i].name, name) == 0) {
            *out = presets[i].cfg;
            return MPK_OK;
        }
    }
    return MPK_ERR_NOT_FOUND;
}
