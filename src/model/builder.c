// builder.c — emits the decode graph of a loaded Qwen3 / Llama 3 model through the public layer
// API, the same sequence of layers the seed's Qwen3 demo builds: embed; per layer rmsnorm+QKV,
// attention, o_proj+residual, rmsnorm+gate/up, silu*up+down+residual; final norm+LM head; argmax
// or sampling. Activations are (T = max_batched_tokens, features) bf16, one buffer per layer
// output, so no buffer is rewritten within an iteration.
#include <math.h>
#include <stdio.h>

#include "core/internal.h"  // mpk_fail: errors land on the kernel like the layer functions' do
#include "kernels/task.h"  // MPK_ATTENTION_LINEAR_MAX_ROW_BYTES
#include "model/model_internal.h"

mpk_build_options mpk_build_default_options(void) {
    mpk_build_options o = {.sampling = 0, .num_workers_hint = 0, .attention_output = MPK_ATTN_OUT_AUTO,
                           .attention_splits = 0, .logits = MPK_LOGITS_SAMPLED};
    return o;
}

// ---- grids -------------------------------------------------------------------------------------

// grid.x for a layer that splits n output columns among W workers: a divisor of n, at most 4W.
int32_t mpk_build_pick_grid(int64_t n, int32_t W) {
    // Tasks run in waves of W (one per worker): prefer a grid that fills its last wave, then
    // fewer waves (bigger tasks stream better and cost fewer hand-offs), then slices whose width
    // is a multiple of 16 columns (16-byte loads, two columns per warp on the GPU).
    int32_t best = 1;
    double best_score = -INFINITY;
    for (int64_t g = 1; g <= n && g <= 4 * (int64_t)W; g++) {
        if (n % g) continue;
        int64_t width = n / g, waves = (g + W - 1) / W;
        double score = (double)g / (double)(waves * W) - 0.03 * (double)waves;
        if (width % 16) score -= 0.1;
        if (score > best_score) {
            best_score = score;
            best = (int32_t)g;
        }
    }
    return best;
}

// The largest divisor of n that is <= W: argmax partial maxima, one per worker at most.
int32_t mpk_build_argmax_grid(int64_t n, int32_t W) {
    for (int32_t g = W; g > 1; g--)
        if (n % g == 0) return g;
    return 1;
}

static mpk_dim3 gx(int32_t x) {
    mpk_dim3 d = {x, 1, 1};
    return d;
}

// ---- tensors -----------------------------------------------------------------------------------

// Weights are attached, not copied: the model outlives the kernel. The layers only read weights;
// the API takes a non-const pointer because attached inputs may also be written in general.
static mpk_status attach(mpk_kernel *k, const void *data, int32_t ndim, int64_t d0, int64_t d1,
                         mpk_dtype dtype, const char *name, mpk_tensor **out) {
    int64_t dims[2] = {d0, d1};
    return mpk_attach_input(k, (void *)data, ndim, dims, dtype, name, out);
}

static mpk_status activation(mpk_kernel *k, int64_t T, int64_t n, const char *name,
                             mpk_tensor **out) {
    int64_t dims[2] = {T, n};
    return mpk_new_tensor(k, 2, dims, MPK_BF16, name, MPK_IO_DEVICE, out);
}

// ---- one decoder layer -------------------------------------------------------------------------

typedef struct build_ctx {
    mpk_kernel *k;
    const mpk_model *m;
    int64_t T;          // token rows per iteration
    int32_t W;          // workers the grids are sized for
    int64_t P, S;       // KV pages, tokens per page
    mpk_tensor *inv_freq;
    mpk_dim3 block;     // {0,0,0}: each task's default
    int32_t attention_output;  // MPK_ATTN_OUT_*
    int32_t attention_splits;  // mpk_attention_layer's grid.y
    int32_t ctx;               // the kernel's max_seq_len
} build_ctx;

// Splits of a kv head's attention over positions (long contexts at batch 1): by default the
// workers per kv head, so that a split iteration puts the whole card on the attention, at most
// MPK_BUILD_MAX_SPLITS (each split adds its partial to the combine of the last arrival).
#define MPK_BUILD_MAX_SPLITS 16
int32_t mpk_build_attention_splits(int32_t Hkv, int32_t W) {
    int32_t S = Hkv > 0 ? W / Hkv : 1;
    return S < 1 ? 1 : S > MPK_BUILD_MAX_SPLITS ? MPK_BUILD_MAX_SPLITS : S;
}

// Column chunks of the fused attention + o_proj layer: one kv head per group, the chunks of a
// group spread over its share of the workers.
int32_t mpk_build_attention_linear_chunks(int64_t H, int32_t Hkv, int32_t W) {
    return mpk_build_pick_grid(H, W / Hkv > 0 ? W / Hkv : 1);
}

// Whether attention and the output projection go in one stage (one kv head per group, so the
// group's outputs kept on chip are T * G * D bf16). Automatically only where it measured faster
// (bench/NOTES.md, v9): when a task's slice of the projection (H / chunks rows of G * D) is at
// most MPK_BUILD_FUSE_MAX_SLICE bytes (Qwen3-0.6B: 32 KB, 3% faster). With larger slices
// (Qwen3-1.7B 64 KB: 3% slower, Qwen3-8B 256 KB: 10% slower) the product after the attention,
// K = G * D short and many rows per warp, outweighs the hand-off it saves. And only for kernels
// of short contexts (max_seq_len <= MPK_BUILD_FUSE_MAX_CONTEXT): the fused attention cannot be
// split over positions, and from ~100 positions on the separate one, split, is faster (v12:
// Qwen3-0.6B at depth 1024 1.16 against 2.14 ms/token).
#define MPK_BUILD_FUSE_MAX_SLICE (32 * 1024)
#define MPK_BUILD_FUSE_MAX_CONTEXT 256
static int fuse_attention(const build_ctx *b) {
    const mpk_model_config *c = &b->m->cfg;
    const int64_t G = c->num_heads / c->num_kv_heads, D = c->head_dim, H = c->hidden_size;
    if (b->attention_output == MPK_ATTN_OUT_SEPARATE) return 0;
    if (b->attention_output == MPK_ATTN_OUT_FUSED) return 1;
    const int64_t slice = H / mpk_build_attention_linear_chunks(H, c->num_kv_heads, b->W) * G * D * 2;
    return (G * D) % 8 == 0 && b->T * G * D * 2 <= MPK_ATTENTION_LINEAR_MAX_ROW_BYTES &&
           slice <= MPK_BUILD_FUSE_MAX_SLICE && b->ctx <= MPK_BUILD_FUSE_MAX_CONTEXT;
}

// x (T, H) in, *x_out (T, H) out.
static mpk_status build_layer(build_ctx *b, int32_t l, mpk_tensor *x, mpk_tensor **x_out) {
    mpk_kernel *k = b->k;
    const mpk_model_config *c = &b->m->cfg;
    const mpk_layer_weights *lw = &b->m->layers[l];
    const int64_t H = c->hidden_size, D = c->head_dim, I = c->intermediate_size;
    const int64_t Hq = c->num_heads, Hkv = c->num_kv_heads, QKV = mpk_model_qkv_rows(c);
    char n[160];
    mpk_status st;
#define NM(fmt) (snprintf(n, sizeof n, "model.layers.%d." fmt, l), n)

    mpk_tensor *wqkv, *wo, *wgu, *wdown, *in_norm, *post_norm, *q_norm = NULL, *k_norm = NULL;
    if ((st = attach(k, lw->wqkv, 2, QKV, H, MPK_BF16, NM("self_attn.qkv_proj.weight"), &wqkv)) ||
        (st = attach(k, lw->wo, 2, H, Hq * D, MPK_BF16, NM("self_attn.o_proj.weight"), &wo)) ||
        (st = attach(k, lw->wgu, 2, 2 * I, H, MPK_BF16, NM("mlp.gate_up_proj.weight"), &wgu)) ||
        (st = attach(k, lw->wdown, 2, H, I, MPK_BF16, NM("mlp.down_proj.weight"), &wdown)) ||
        (st = attach(k, lw->input_norm, 1, H, 0, MPK_BF16, NM("input_layernorm.weight"),
                     &in_norm)) ||
        (st = attach(k, lw->post_norm, 1, H, 0, MPK_BF16, NM("post_attention_layernorm.weight"),
                     &post_norm)))
        return st;
    if (c->qk_norm &&
        ((st = attach(k, lw->q_norm, 1, D, 0, MPK_BF16, NM("self_attn.q_norm.weight"), &q_norm)) ||
         (st = attach(k, lw->k_norm, 1, D, 0, MPK_BF16, NM("self_attn.k_norm.weight"), &k_norm))))
        return st;

    // KV cache (num_pages, Hkv, page_size, D), as mpk_attention_layer wants it.
    int64_t cache_dims[4] = {b->P, Hkv, b->S, D};
    mpk_tensor *qkv, *kc, *vc, *attn, *x2, *gu, *x3;
    if ((st = activation(k, b->T, QKV, NM("qkv"), &qkv)) ||
        (st = mpk_new_tensor(k, 4, cache_dims, MPK_BF16, NM("k_cache"), MPK_IO_DEVICE, &kc)) ||
        (st = mpk_new_tensor(k, 4, cache_dims, MPK_BF16, NM("v_cache"), MPK_IO_DEVICE, &vc)) ||
        (st = activation(k, b->T, H, NM("attn_residual"), &x2)) ||
        (st = activation(k, b->T, 2 * I, NM("gate_up"), &gu)) ||
        (st = activation(k, b->T, H, NM("output"), &x3)))
        return st;

    float eps = c->rms_norm_eps;
    mpk_dim3 g_qkv = gx(mpk_build_pick_grid(QKV, b->W)), g_h = gx(mpk_build_pick_grid(H, b->W));
    mpk_dim3 g_gu = gx(mpk_build_pick_grid(2 * I, b->W)), g_attn = {(int32_t)Hkv, b->attention_splits, 1};
    mpk_attention_desc ad = {
        .qkv = qkv, .k_cache = kc, .v_cache = vc, .q_norm = q_norm, .k_norm = k_norm,
        .rope_inv_freq = b->inv_freq, .output = NULL, .num_q_heads = (int32_t)Hq,
        .num_kv_heads = (int32_t)Hkv, .head_dim = (int32_t)D, .norm_eps = eps, .scale = 0.0f,
    };
    if ((st = mpk_rmsnorm_linear_layer(k, x, in_norm, wqkv, qkv, eps, g_qkv, b->block, NM("qkv_proj"))))
        return st;
    if (fuse_attention(b)) {
        // attention + o_proj per (kv head, column chunk), one kv head per group: fp32 partial
        // sums per head that the gate/up task adds to the residual (writing x2 on the way).
        mpk_dim3 g_ao = {mpk_build_attention_linear_chunks(H, (int32_t)Hkv, b->W), (int32_t)Hkv, 1};
        int64_t pdims[2] = {b->T, Hkv * H};
        mpk_tensor *part;
        if ((st = mpk_new_tensor(k, 2, pdims, MPK_F32, NM("o_proj.partial"), MPK_IO_DEVICE, &part)) ||
            (st = mpk_attention_linear_layer(k, &ad, wo, part, g_ao, b->block, NM("attention_o_proj"))) ||
            (st = mpk_residual_rmsnorm_linear_layer(k, x, part, post_norm, wgu, gu, x2, eps, g_gu,
                                                    b->block, NM("gate_up_proj"))))
            return st;
    } else {
        if ((st = activation(k, b->T, Hq * D, NM("attn_out"), &attn))) return st;
        ad.output = attn;
        if ((st = mpk_attention_layer(k, &ad, g_attn, b->block, NM("attention"))) ||
            (st = mpk_linear_with_residual_layer(k, attn, wo, x, x2, g_h, b->block, NM("o_proj"))) ||
            (st = mpk_rmsnorm_linear_layer(k, x2, post_norm, wgu, gu, eps, g_gu, b->block,
                                           NM("gate_up_proj"))))
            return st;
    }
    if ((st = mpk_silu_mul_linear_with_residual_layer(k, gu, wdown, x2, x3, g_h, b->block,
                                                      NM("down_proj"))))
        return st;
#undef NM
    *x_out = x3;
    return MPK_OK;
}

// ---- the whole model ---------------------------------------------------------------------------

mpk_status mpk_model_build(mpk_model *m, mpk_kernel *k, const mpk_build_options *opt) {
    if (!k) return MPK_ERR_INVALID_ARG;
    if (!m) return mpk_fail(k, MPK_ERR_INVALID_ARG, "mpk_model_build: model is NULL");
    mpk_build_options o = opt ? *opt : mpk_build_default_options();
    const mpk_model_config *c = &m->cfg;
    const mpk_kernel_params *p = mpk_kernel_get_params(k);
    build_ctx b = {
        .k = k, .m = m, .T = p->max_batched_tokens, .P = p->num_pages, .S = p->page_size,
        .ctx = p->max_seq_len,
        .W = o.num_workers_hint > 0 ? o.num_workers_hint
             : p->num_workers > 0   ? p->num_workers
                                    : 8,
    };
    b.attention_output = o.attention_output;
    if (o.attention_splits < 0 || o.attention_splits > MPK_ATTENTION_MAX_SPLITS)
        return mpk_fail(k, MPK_ERR_INVALID_ARG, "mpk_model_build: attention_splits %d is outside [0, %d]",
                        o.attention_splits, MPK_ATTENTION_MAX_SPLITS);
    b.attention_splits = o.attention_splits > 0 ? o.attention_splits
                                                : mpk_build_attention_splits(c->num_kv_heads, b.W);
    const int32_t GD = c->num_kv_heads > 0 ? c->num_heads / c->num_kv_heads * c->head_dim : 1;
    if (b.attention_splits > GD) b.attention_splits = GD > 0 ? GD : 1;  // (the layer's bound)
    if (o.logits != MPK_LOGITS_SAMPLED && o.logits != MPK_LOGITS_ALL)
        return mpk_fail(k, MPK_ERR_INVALID_ARG, "mpk_model_build: logits %d is not one of MPK_LOGITS_SAMPLED, _ALL",
                        o.logits);
    if (o.attention_output < MPK_ATTN_OUT_AUTO || o.attention_output > MPK_ATTN_OUT_SEPARATE)
        return mpk_fail(k, MPK_ERR_INVALID_ARG, "mpk_model_build: attention_output %d is not one of MPK_ATTN_OUT_AUTO, _FUSED, _SEPARATE",
                        o.attention_output);
    const int64_t V = c->vocab_size, H = c->hidden_size, D = c->head_dim;
    mpk_status st;
    mpk_tensor *in_ids, *out_ids, *embed, *lm_head, *final_norm, *x, *logits;
    if ((st = mpk_meta_tensor(k, MPK_META_INPUT_IDS, &in_ids)) ||
        (st = mpk_meta_tensor(k, MPK_META_OUTPUT_IDS, &out_ids)) ||
        (st = attach(k, m->inv_freq, 1, D / 2, 0, MPK_F32, "rope.inv_freq", &b.inv_freq)) ||
        (st = attach(k, m->embed, 2, V, H, MPK_BF16, "model.embed_tokens.weight", &embed)) ||
        (st = attach(k, m->final_norm, 1, H, 0, MPK_BF16, "model.norm.weight", &final_norm)))
        return st;
    lm_head = embed;
    if (m->lm_head != m->embed &&
        (st = attach(k, m->lm_head, 2, V, H, MPK_BF16, "lm_head.weight", &lm_head)))
        return st;

    if ((st = activation(k, b.T, H, "model.embed_tokens.output", &x)) ||
        (st = mpk_embed_layer(k, in_ids, embed, x, gx(mpk_build_pick_grid(H, b.W)), b.block,
                              "embed")))
        return st;
    for (int32_t l = 0; l < c->num_layers; l++)
        if ((st = build_layer(&b, l, x, &x))) return st;

    if ((st = activation(k, b.T, V, "logits", &logits))) return st;
    if (o.logits == MPK_LOGITS_ALL)
        st = mpk_rmsnorm_linear_layer(k, x, final_norm, lm_head, logits, c->rms_norm_eps,
                                      gx(mpk_build_pick_grid(V, b.W)), b.block, "lm_head");
    else
        st = mpk_rmsnorm_linear_sampled_layer(k, x, final_norm, lm_head, logits, c->rms_norm_eps,
                                              gx(mpk_build_pick_grid(V, b.W)), b.block, "lm_head");
    if (st) return st;
    if (o.sampling)
        return mpk_sampling_layer(k, logits, out_ids, gx(1), b.block, "sampling");
    return mpk_argmax_layer(k, logits, out_ids, gx(mpk_build_argmax_grid(V, b.W)), b.block,
                            "argmax");
}
