// model.c — loads a Hugging Face Qwen3 / Llama 3 directory into an mpk_model: finds every tensor
// by its HF name (single file or sharded through model.safetensors.index.json), checks its shape
// against config.json, keeps bf16 weights in place in the mapped file and converts others, and
// fuses Q/K/V and gate/up into the layouts the layers want. Also random-weight models.
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model_internal.h"

// ---- ownership ---------------------------------------------------------------------------------

static void *model_alloc(mpk_model *m, size_t bytes) {
    if (m->num_owned == m->cap_owned) {
        int32_t cap = m->cap_owned ? 2 * m->cap_owned : 64;
        void **p = realloc(m->owned, (size_t)cap * sizeof *p);
        if (!p) return NULL;
        m->owned = p;
        m->cap_owned = cap;
    }
    void *buf = malloc(bytes ? bytes : 1);
    if (buf) m->owned[m->num_owned++] = buf;
    return buf;
}

void mpk_model_free(mpk_model *m) {
    if (!m) return;
    for (int32_t i = 0; i < m->num_owned; i++) free(m->owned[i]);
    free(m->owned);
    for (int32_t i = 0; i < m->num_files; i++) mpk_st_close(m->files[i]);
    free(m->files);
    free(m->layers);
    free(m);
}

static mpk_model *model_new(const mpk_model_config *cfg) {
    mpk_model *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->cfg = *cfg;
    m->layers = calloc((size_t)cfg->num_layers, sizeof *m->layers);
    m->inv_freq = m->layers ? model_alloc(m, sizeof(float) * (size_t)(cfg->head_dim / 2)) : NULL;
    if (!m->inv_freq) {
        mpk_model_free(m);
        return NULL;
    }
    mpk_rope_inv_freq_compute(cfg, m->inv_freq);
    return m;
}

int64_t mpk_model_qkv_rows(const mpk_model_config *c) {
    return (int64_t)(c->num_heads + 2 * c->num_kv_heads) * c->head_dim;
}

// ---- finding tensors ---------------------------------------------------------------------------

static const mpk_st_tensor *find_tensor(const mpk_model *m, const char *name,
                                        const mpk_st_file **file) {
    for (int32_t i = 0; i < m->num_files; i++) {
        const mpk_st_tensor *t = mpk_st_find(m->files[i], name);
        if (t) {
            *file = m->files[i];
            return t;
        }
    }
    return NULL;
}

static void format_shape(char *buf, size_t len, int32_t ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(buf, len, "[");
    for (int32_t i = 0; i < ndim && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < len) snprintf(buf + n, len - n, "]");
}

// The tensor `name` with exactly the shape [d0] (ndim 1) or [d0, d1] (ndim 2).
static mpk_status lookup(const mpk_model *m, const char *name, int32_t ndim, int64_t d0,
                         int64_t d1, const mpk_st_tensor **out, char *err, size_t err_len) {
    const mpk_st_file *f = NULL;
    const mpk_st_tensor *t = find_tensor(m, name, &f);
    if (!t) {
        mpk_model_seterr(err, err_len, "%s: tensor '%s' not found",
                         m->num_files == 1 ? m->files[0]->label : "model.safetensors.index.json",
                         name);
        return MPK_ERR_NOT_FOUND;
    }
    int64_t want[2] = {d0, d1};
    int ok = t->ndim == ndim;
    for (int32_t i = 0; ok && i < ndim; i++) ok = t->shape[i] == want[i];
    if (!ok) {
        char have_s[128], want_s[64];
        format_shape(have_s, sizeof have_s, t->ndim, t->shape);
        format_shape(want_s, sizeof want_s, ndim, want);
        mpk_model_seterr(err, err_len,
                         "%s: tensor '%s' has shape %s but config.json implies %s", f->label, name,
                         have_s, want_s);
        return MPK_ERR_SHAPE;
    }
    *out = t;
    return MPK_OK;
}

// A bf16 view of a whole tensor: in place when it is bf16 and 2-byte aligned, else a copy.
static mpk_status load_weight(mpk_model *m, const char *name, int32_t ndim, int64_t d0, int64_t d1,
                              const uint16_t **out, char *err, size_t err_len) {
    const mpk_st_tensor *t;
    mpk_status st = lookup(m, name, ndim, d0, d1, &t, err, err_len);
    if (st) return st;
    if (t->dtype == MPK_BF16 && ((uintptr_t)t->data & 1) == 0) {
        *out = (const uint16_t *)t->data;
        return MPK_OK;
    }
    uint16_t *buf = model_alloc(m, (size_t)t->numel * 2);
    if (!buf) {
        mpk_model_seterr(err, err_len, "tensor '%s': out of memory", name);
        return MPK_ERR_NOMEM;
    }
    mpk_st_copy_bf16(t, 0, t->numel, buf);
    *out = buf;
    return MPK_OK;
}

// Copies rows [r0, r0 + n) of a (rows, cols) tensor into dst as bf16.
static mpk_status copy_rows(const mpk_model *m, const char *name, int64_t rows, int64_t cols,
                            int64_t r0, int64_t n, uint16_t *dst, char *err, size_t err_len) {
    const mpk_st_tensor *t;
    mpk_status st = lookup(m, name, 2, rows, cols, &t, err, err_len);
    if (st) return st;
    mpk_st_copy_bf16(t, r0 * cols, n * cols, dst);
    return MPK_OK;
}

// ---- fused weights -----------------------------------------------------------------------------

static mpk_status load_layer(mpk_model *m, int32_t l, char *err, size_t err_len) {
    const mpk_model_config *c = &m->cfg;
    const int64_t H = c->hidden_size, D = c->head_dim, I = c->intermediate_size;
    const int64_t Hq = c->num_heads, Hkv = c->num_kv_heads, G = Hq / Hkv;
    mpk_layer_weights *w = &m->layers[l];
    char name[160];
    mpk_status st;
#define NAME(suffix) (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix), name)

    // Wqkv rows: for kv head h, q heads h*G .. h*G+G-1, then k head h, then v head h.
    w->wqkv = model_alloc(m, (size_t)(mpk_model_qkv_rows(c) * H) * 2);
    w->wgu = model_alloc(m, (size_t)(2 * I * H) * 2);
    if (!w->wqkv || !w->wgu) {
        mpk_model_seterr(err, err_len, "layer %d: out of memory for fused weights", l);
        return MPK_ERR_NOMEM;
    }
    uint16_t *dst = w->wqkv;
    for (int64_t h = 0; h < Hkv; h++) {
        if ((st = copy_rows(m, NAME("self_attn.q_proj.weight"), Hq * D, H, h * G * D, G * D, dst,
                            err, err_len)))
            return st;
        dst += G * D * H;
        if ((st = copy_rows(m, NAME("self_attn.k_proj.weight"), Hkv * D, H, h * D, D, dst, err,
                            err_len)))
            return st;
        dst += D * H;
        if ((st = copy_rows(m, NAME("self_attn.v_proj.weight"), Hkv * D, H, h * D, D, dst, err,
                            err_len)))
            return st;
        dst += D * H;
    }
    if ((st = copy_rows(m, NAME("mlp.gate_proj.weight"), I, H, 0, I, w->wgu, err, err_len)) ||
        (st = copy_rows(m, NAME("mlp.up_proj.weight"), I, H, 0, I, w->wgu + I * H, err,
                        err_len)) ||
        (st = load_weight(m, NAME("self_attn.o_proj.weight"), 2, H, Hq * D, &w->wo, err,
                          err_len)) ||
        (st = load_weight(m, NAME("mlp.down_proj.weight"), 2, H, I, &w->wdown, err, err_len)) ||
        (st = load_weight(m, NAME("input_layernorm.weight"), 1, H, 0, &w->input_norm, err,
                          err_len)) ||
        (st = load_weight(m, NAME("post_attention_layernorm.weight"), 1, H, 0, &w->post_norm,
                          err, err_len)))
        return st;
    if (c->qk_norm) {
        if ((st = load_weight(m, NAME("self_attn.q_norm.weight"), 1, D, 0, &w->q_norm, err,
                              err_len)) ||
            (st = load_weight(m, NAME("self_attn.k_norm.weight"), 1, D, 0, &w->k_norm, err,
                              err_len)))
            return st;
    }
#undef NAME
    return MPK_OK;
}

static mpk_status load_weights(mpk_model *m, char *err, size_t err_len) {
    const mpk_model_config *c = &m->cfg;
    const int64_t V = c->vocab_size, H = c->hidden_size;
    mpk_status st;
    if ((st = load_weight(m, "model.embed_tokens.weight", 2, V, H, &m->embed, err, err_len)) ||
        (st = load_weight(m, "model.norm.weight", 1, H, 0, &m->final_norm, err, err_len)))
        return st;
    if (c->tie_word_embeddings) {
        m->lm_head = m->embed;
    } else {
        st = load_weight(m, "lm_head.weight", 2, V, H, &m->lm_head, err, err_len);
        if (st == MPK_ERR_NOT_FOUND)
            mpk_model_seterr(err, err_len, "tensor 'lm_head.weight' not found and config.json "
                             "has tie_word_embeddings false");
        if (st) return st;
    }
    for (int32_t l = 0; l < c->num_layers; l++)
        if ((st = load_layer(m, l, err, err_len))) return st;
    return MPK_OK;
}

// ---- files -------------------------------------------------------------------------------------

static char *join_path(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t n = a;
    if (a > 0 && dir[a - 1] != '/') p[n++] = '/';
    memcpy(p + n, name, b + 1);
    return p;
}

static mpk_status add_file(mpk_model *m, const char *dir, const char *name, char *err,
                           size_t err_len) {
    char *path = join_path(dir, name);
    mpk_st_file **files = realloc(m->files, (size_t)(m->num_files + 1) * sizeof *files);
    if (!path || !files) {
        free(path);
        if (files) m->files = files;
        mpk_model_seterr(err, err_len, "%s: out of memory", name);
        return MPK_ERR_NOMEM;
    }
    m->files = files;
    mpk_status st = mpk_st_open(path, name, &m->files[m->num_files], err, err_len);
    free(path);
    if (st == MPK_OK) m->num_files++;
    return st;
}

// The shard files of model.safetensors.index.json's weight_map, each opened once. Shard names
// must be plain file names inside the directory.
static mpk_status open_sharded(mpk_model *m, const char *dir, const char *text, size_t len,
                               char *err, size_t err_len) {
    const char *label = "model.safetensors.index.json";
    cJSON *root = cJSON_ParseWithLength(text, len);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map)) {
        cJSON_Delete(root);
        mpk_model_seterr(err, err_len, "%s: no 'weight_map' object", label);
        return MPK_ERR_FORMAT;
    }
    mpk_status st = MPK_OK;
    for (const cJSON *e = map->child; e && st == MPK_OK; e = e->next) {
        const char *file = cJSON_IsString(e) ? e->valuestring : NULL;
        if (!file || !file[0] || strchr(file, '/') || strcmp(file, "..") == 0 ||
            strcmp(file, ".") == 0) {
            mpk_model_seterr(err, err_len, "%s: weight_map entry '%.80s' must name a file in the "
                             "model directory", label, e->string ? e->string : "");
            st = MPK_ERR_FORMAT;
            break;
        }
        int seen = 0;
        for (int32_t i = 0; i < m->num_files && !seen; i++)
            seen = strcmp(m->files[i]->label, file) == 0;
        if (!seen) st = add_file(m, dir, file, err, err_len);
    }
    cJSON_Delete(root);
    if (st == MPK_OK && m->num_files == 0) {
        mpk_model_seterr(err, err_len, "%s: weight_map is empty", label);
        st = MPK_ERR_FORMAT;
    }
    return st;
}

static mpk_status open_weights(mpk_model *m, const char *dir, char *err, size_t err_len) {
    char *index_path = join_path(dir, "model.safetensors.index.json");
    if (!index_path) return MPK_ERR_NOMEM;
    char *text;
    size_t len;
    mpk_status st = mpk_read_text_file(index_path, "model.safetensors.index.json", &text, &len,
                                       err, err_len);
    free(index_path);
    if (st == MPK_ERR_NOT_FOUND) return add_file(m, dir, "model.safetensors", err, err_len);
    if (st) return st;
    st = open_sharded(m, dir, text, len, err, err_len);
    free(text);
    return st;
}

mpk_status mpk_model_load(const char *dir, mpk_model **out, char *err, size_t err_len) {
    if (out) *out = NULL;
    if (!dir || !out) {
        mpk_model_seterr(err, err_len, "mpk_model_load: NULL argument");
        return MPK_ERR_INVALID_ARG;
    }
    char *config_path = join_path(dir, "config.json");
    if (!config_path) return MPK_ERR_NOMEM;
    mpk_model_config cfg;
    mpk_status st = mpk_model_config_load(config_path, &cfg, err, err_len);
    free(config_path);
    if (st) return st;
    mpk_model *m = model_new(&cfg);
    if (!m) {
        mpk_model_seterr(err, err_len, "%s: out of memory", dir);
        return MPK_ERR_NOMEM;
    }
    if ((st = open_weights(m, dir, err, err_len)) || (st = load_weights(m, err, err_len))) {
        mpk_model_free(m);
        return st;
    }
    *out = m;
    return MPK_OK;
}

// ---- random models -----------------------------------------------------------------------------

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Values mean + std * (approximately standard normal): the sum of four 16-bit uniforms
// (Irwin-Hall, variance 1/3 before scaling) is close enough for benchmark weights and costs one
// 64-bit random number per value. Element i of a tensor depends only on (seed, stream, i / CHUNK,
// i), so the result does not depend on how many threads fill it.
#define RANDOM_CHUNK ((int64_t)1 << 20)

typedef struct fill_job {
    uint16_t *dst;
    int64_t n;
    uint64_t seed, stream;
    float mean, std;
    int64_t next_chunk;       // shared work counter
    pthread_mutex_t lock;
} fill_job;

static void fill_chunk(const fill_job *j, int64_t chunk) {
    uint64_t state = j->seed ^ (j->stream * 0xd1b54a32d192ed03ull) ^
                     ((uint64_t)chunk * 0x9e3779b97f4a7c15ull);
    const float scale = j->std * 1.7320508f / 65536.0f;  // sqrt(3): unit variance
    int64_t end = (chunk + 1) * RANDOM_CHUNK < j->n ? (chunk + 1) * RANDOM_CHUNK : j->n;
    for (int64_t i = chunk * RANDOM_CHUNK; i < end; i++) {
        uint64_t r = splitmix64(&state);
        float s = (float)(r & 0xffff) + (float)((r >> 16) & 0xffff) +
                  (float)((r >> 32) & 0xffff) + (float)(r >> 48);
        j->dst[i] = mpk_st_f32_to_bf16(j->mean + (s - 2.0f * 65535.0f) * scale);
    }
}

static void *fill_worker(void *arg) {
    fill_job *j = arg;
    for (;;) {
        pthread_mutex_lock(&j->lock);
        int64_t chunk = j->next_chunk++;
        pthread_mutex_unlock(&j->lock);
        if (chunk * RANDOM_CHUNK >= j->n) return NULL;
        fill_chunk(j, chunk);
    }
}

static void fill_random(uint16_t *dst, int64_t n, uint64_t seed, uint64_t stream, float mean,
                        float std) {
    fill_job j = {.dst = dst, .n = n, .seed = seed, .stream = stream, .mean = mean, .std = std};
    pthread_mutex_init(&j.lock, NULL);
    pthread_t threads[16];
    int nt = 0;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int64_t chunks = (n + RANDOM_CHUNK - 1) / RANDOM_CHUNK;
    int want = (int)(cores < 1 ? 1 : cores > 16 ? 16 : cores);
    if (want > chunks) want = (int)chunks;
    // Extra threads are a speed-up only: if one cannot start, the others (and this one) finish.
    for (int t = 1; t < want; t++)
        if (pthread_create(&threads[nt], NULL, fill_worker, &j) == 0) nt++;
    fill_worker(&j);
    for (int t = 0; t < nt; t++) pthread_join(threads[t], NULL);
    pthread_mutex_destroy(&j.lock);
}

static uint16_t *random_tensor(mpk_model *m, int64_t n, uint64_t seed, uint64_t *stream,
                               float mean, float std) {
    uint16_t *buf = model_alloc(m, (size_t)n * 2);
    if (buf) fill_random(buf, n, seed, ++*stream, mean, std);
    return buf;
}

mpk_status mpk_model_create_random(const mpk_model_config *cfg, uint64_t seed, mpk_model **out,
                                   char *err, size_t err_len) {
    if (out) *out = NULL;
    if (!cfg || !out) {
        mpk_model_seterr(err, err_len, "mpk_model_create_random: NULL argument");
        return MPK_ERR_INVALID_ARG;
    }
    mpk_status st = mpk_model_config_validate(cfg, err, err_len);
    if (st) return st;
    mpk_model *m = model_new(cfg);
    if (!m) {
        mpk_model_seterr(err, err_len, "random model: out of memory");
        return MPK_ERR_NOMEM;
    }
    const int64_t V = cfg->vocab_size, H = cfg->hidden_size, D = cfg->head_dim;
    const int64_t I = cfg->intermediate_size, Hq = cfg->num_heads;
    const float wstd = 0.02f, nstd = 0.02f;
    uint64_t stream = 0;
    int ok = (m->embed = random_tensor(m, V * H, seed, &stream, 0.0f, wstd)) != NULL &&
             (m->final_norm = random_tensor(m, H, seed, &stream, 1.0f, nstd)) != NULL;
    m->lm_head = m->embed;
    if (ok && !cfg->tie_word_embeddings)
        ok = (m->lm_head = random_tensor(m, V * H, seed, &stream, 0.0f, wstd)) != NULL;
    for (int32_t l = 0; ok && l < cfg->num_layers; l++) {
        mpk_layer_weights *w = &m->layers[l];
        ok = (w->wqkv = random_tensor(m, mpk_model_qkv_rows(cfg) * H, seed, &stream, 0, wstd)) &&
             (w->wo = random_tensor(m, H * Hq * D, seed, &stream, 0.0f, wstd)) &&
             (w->wgu = random_tensor(m, 2 * I * H, seed, &stream, 0.0f, wstd)) &&
             (w->wdown = random_tensor(m, H * I, seed, &stream, 0.0f, wstd)) &&
             (w->input_norm = random_tensor(m, H, seed, &stream, 1.0f, nstd)) &&
             (w->post_norm = random_tensor(m, H, seed, &stream, 1.0f, nstd));
        if (ok && cfg->qk_norm)
            ok = (w->q_norm = random_tensor(m, D, seed, &stream, 1.0f, nstd)) &&
                 (w->k_norm = random_tensor(m, D, seed, &stream, 1.0f, nstd));
    }
    if (!ok) {
        mpk_model_free(m);
        mpk_model_seterr(err, err_len, "random model: out of memory");
        return MPK_ERR_NOMEM;
    }
    *out = m;
    return MPK_OK;
}

// ---- queries -----------------------------------------------------------------------------------

const mpk_model_config *mpk_model_get_config(const mpk_model *m) { return m ? &m->cfg : NULL; }

const float *mpk_model_rope_inv_freq(const mpk_model *m) { return m ? m->inv_freq : NULL; }

int64_t mpk_model_weight_bytes_per_token(const mpk_model *m) {
    if (!m) return 0;
    const mpk_model_config *c = &m->cfg;
    const int64_t V = c->vocab_size, H = c->hidden_size, D = c->head_dim;
    const int64_t I = c->intermediate_size, Hq = c->num_heads;
    int64_t per_layer = mpk_model_qkv_rows(c) * H  // q, k, v
                        + H * Hq * D                // o
                        + 3 * I * H                 // gate, up, down
                        + 2 * H                     // the two norms
                        + (c->qk_norm ? 2 * D : 0);
    int64_t elems = per_layer * c->num_layers + H /* final norm */ + V * H /* LM head */ +
                    H /* one embedding row */;
    return 2 * elems;
}
