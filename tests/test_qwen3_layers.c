// test_qwen3_layers.c — a two-layer Qwen3-shaped model built through the public layer API with
// random weights (GQA, head_dim independent of hidden, q/k norm, RoPE, paged KV cache), run with
// two requests of different prompt lengths (one longer than max_batched_tokens, so prefill is
// chunked) for several decode steps, checked against a straight-line reference forward pass
// written here in double precision with the same bf16 rounding points as the task kernels.
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpk.h"
#include "core/internal.h"
#include "kernels/cpu/kernels.h"

// Shapes: awkward on purpose. Hq*D (32) != H (24); G = Hq/Hkv = 2.
enum { H = 24, HQ = 4, HKV = 2, D = 8, GQ = HQ / HKV, I = 40, V = 50, NL = 2 };
enum { QKV = HKV * (GQ + 2) * D, OUTW = HQ * D };
static const float EPS = 1e-6f, THETA = 10000.0f;

typedef struct weights {
    mpk_bf16 *emb, *final_norm, *lm_head;
    mpk_bf16 *in_norm[NL], *qkv[NL], *q_norm[NL], *k_norm[NL], *o[NL], *post_norm[NL], *gu[NL], *down[NL];
    float inv_freq[D / 2];
} weights;

static uint64_t rs = 0x2545f4914f6cdd1dull;
static double urnd(void) {
    rs ^= rs >> 12; rs ^= rs << 25; rs ^= rs >> 27;
    return (double)((rs * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}
static double nrnd(void) { return sqrt(-2 * log(urnd() + 1e-300)) * cos(6.283185307179586 * urnd()); }
static mpk_bf16 *rnd(int n, double scale, double offset) {
    mpk_bf16 *p = malloc((size_t)n * sizeof *p);
    for (int i = 0; i < n; i++) p[i] = mpk_f32_to_bf16((float)(offset + scale * nrnd()));
    return p;
}
static double bf(mpk_bf16 x) { return mpk_bf16_to_f32(x); }
static double r16(double x) { return mpk_round_bf16((float)x); }

static void free_weights(weights *w) {
    free(w->emb);
    free(w->final_norm);
    free(w->lm_head);
    for (int l = 0; l < NL; l++) {
        free(w->in_norm[l]); free(w->qkv[l]); free(w->q_norm[l]); free(w->k_norm[l]);
        free(w->o[l]); free(w->post_norm[l]); free(w->gu[l]); free(w->down[l]);
    }
}

static void make_weights(weights *w) {
    w->emb = rnd(V * H, 1.0, 0);
    w->final_norm = rnd(H, 0.1, 1);
    w->lm_head = rnd(V * H, 0.2, 0);
    for (int l = 0; l < NL; l++) {
        w->in_norm[l] = rnd(H, 0.1, 1);
        w->qkv[l] = rnd(QKV * H, 0.2, 0);
        w->q_norm[l] = rnd(D, 0.1, 1);
        w->k_norm[l] = rnd(D, 0.1, 1);
        w->o[l] = rnd(H * OUTW, 0.2, 0);
        w->post_norm[l] = rnd(H, 0.1, 1);
        w->gu[l] = rnd(2 * I * H, 0.2, 0);
        w->down[l] = rnd(H * I, 0.2, 0);
    }
    for (int i = 0; i < D / 2; i++) w->inv_freq[i] = powf(THETA, -2.0f * (float)i / D);
}

// ---- the reference -----------------------------------------------------------------------------

static void ref_rmsnorm(const double *x, const mpk_bf16 *w, double *y, int n) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double rstd = 1.0 / sqrt(ss / n + EPS);
    for (int i = 0; i < n; i++) y[i] = r16(x[i] * rstd * bf(w[i]));
}

static void ref_matvec(const double *x, const mpk_bf16 *w, int n, int k, const double *res, double *y) {
    for (int j = 0; j < n; j++) {
        double acc = 0;
        for (int i = 0; i < k; i++) acc += x[i] * bf(w[(size_t)j * k + i]);
        y[j] = r16(acc + (res ? res[j] : 0));
    }
}

static void ref_rope(double *v, int pos, const float *inv_freq) {
    for (int i = 0; i < D / 2; i++) {
        double a = (double)pos * inv_freq[i], c = cos(a), s = sin(a);
        double x1 = v[i], x2 = v[i + D / 2];
        v[i] = r16(x1 * c - x2 * s);
        v[i + D / 2] = r16(x2 * c + x1 * s);
    }
}

// Logits (L, V) of every position of one sequence.
static void ref_forward(const weights *w, const int32_t *tok, int L, double *logits) {
    double (*x)[H] = calloc((size_t)L, sizeof *x);
    double (*kc)[HKV][D] = calloc((size_t)L, sizeof *kc);
    double (*vc)[HKV][D] = calloc((size_t)L, sizeof *vc);
    double xn[H], att[OUTW], x2[H], gu[2 * I], hbuf[I], q[D];
    for (int p = 0; p < L; p++)
        for (int i = 0; i < H; i++) x[p][i] = bf(w->emb[(size_t)tok[p] * H + i]);
    for (int l = 0; l < NL; l++) {
        // K and V of every position first (the cache), then attention per position.
        double (*qs)[QKV] = calloc((size_t)L, sizeof *qs);
        for (int p = 0; p < L; p++) {
            ref_rmsnorm(x[p], w->in_norm[l], xn, H);
            ref_matvec(xn, w->qkv[l], QKV, H, NULL, qs[p]);
            for (int h = 0; h < HKV; h++) {
                double *kk = &qs[p][(h * (GQ + 2) + GQ) * D], *vv = kk + D;
                double kn[D];
                ref_rmsnorm(kk, w->k_norm[l], kn, D);
                ref_rope(kn, p, w->inv_freq);
                memcpy(kc[p][h], kn, sizeof kn);
                memcpy(vc[p][h], vv, sizeof(double) * D);
            }
        }
        for (int p = 0; p < L; p++) {
            for (int h = 0; h < HKV; h++)
                for (int g = 0; g < GQ; g++) {
                    ref_rmsnorm(&qs[p][(h * (GQ + 2) + g) * D], w->q_norm[l], q, D);
                    ref_rope(q, p, w->inv_freq);
                    double sc[64], mx = -1e300, sum = 0;
                    for (int t = 0; t <= p; t++) {
                        double dot = 0;
                        for (int d = 0; d < D; d++) dot += q[d] * kc[t][h][d];
                        sc[t] = dot / sqrt((double)D);
                        if (sc[t] > mx) mx = sc[t];
                    }
                    for (int t = 0; t <= p; t++) sum += (sc[t] = exp(sc[t] - mx));
                    for (int d = 0; d < D; d++) {
                        double o = 0;
                        for (int t = 0; t <= p; t++) o += sc[t] / sum * vc[t][h][d];
                        att[(h * GQ + g) * D + d] = r16(o);
                    }
                }
            ref_matvec(att, w->o[l], H, OUTW, x[p], x2);
            ref_rmsnorm(x2, w->post_norm[l], xn, H);
            ref_matvec(xn, w->gu[l], 2 * I, H, NULL, gu);
            for (int i = 0; i < I; i++) hbuf[i] = r16(gu[i] / (1 + exp(-gu[i])) * gu[I + i]);
            ref_matvec(hbuf, w->down[l], H, I, x2, x[p]);
        }
        free(qs);
    }
    for (int p = 0; p < L; p++) {
        ref_rmsnorm(x[p], w->final_norm, xn, H);
        ref_matvec(xn, w->lm_head, V, H, NULL, &logits[(size_t)p * V]);
    }
    free(x);
    free(kc);
    free(vc);
}

// ---- the model through the public API ----------------------------------------------------------

#define OK(expr) cr_assert_eq((expr), MPK_OK, "%s: %s", #expr, mpk_last_error(k))

static mpk_tensor *attach(mpk_kernel *k, void *data, int ndim, int64_t d0, int64_t d1, mpk_dtype dt, const char *base, int l) {
    char name[64];
    snprintf(name, sizeof name, "%s%d", base, l);
    mpk_tensor *t;
    int64_t dims[2] = {d0, d1};
    OK(mpk_attach_input(k, data, ndim, dims, dt, name, &t));
    return t;
}

static mpk_tensor *act(mpk_kernel *k, int64_t T, int64_t n, const char *base, int l) {
    char name[64];
    snprintf(name, sizeof name, "%s%d", base, l);
    mpk_tensor *t;
    OK(mpk_new_tensor(k, 2, (int64_t[]){T, n}, MPK_BF16, name, MPK_IO_DEVICE, &t));
    return t;
}

static void build(mpk_kernel *k, weights *w) {
    mpk_kernel_params p = k->params;
    int64_t T = p.max_batched_tokens, P = p.num_pages, S = p.page_size;
    mpk_dim3 nb = {0, 0, 0};
    mpk_tensor *ids, *out_ids, *inv;
    OK(mpk_meta_tensor(k, MPK_META_INPUT_IDS, &ids));
    OK(mpk_meta_tensor(k, MPK_META_OUTPUT_IDS, &out_ids));
    inv = attach(k, w->inv_freq, 1, D / 2, 1, MPK_F32, "rope_inv_freq", 0);
    mpk_tensor *x = act(k, T, H, "x", 0);
    OK(mpk_embed_layer(k, ids, attach(k, w->emb, 2, V, H, MPK_BF16, "embed_tokens", 0), x, (mpk_dim3){3, 1, 1}, nb, "embed"));
    for (int l = 0; l < NL; l++) {
        mpk_tensor *qkv = act(k, T, QKV, "qkv", l), *ao = act(k, T, OUTW, "attn_out", l);
        mpk_tensor *x2 = act(k, T, H, "x_mid", l), *gu = act(k, T, 2 * I, "gate_up", l);
        mpk_tensor *x3 = act(k, T, H, "x", l + 1), *kc, *vc;
        char nm[32];
        snprintf(nm, sizeof nm, "k_cache%d", l);
        OK(mpk_new_tensor(k, 4, (int64_t[]){P, HKV, S, D}, MPK_BF16, nm, MPK_IO_DEVICE, &kc));
        snprintf(nm, sizeof nm, "v_cache%d", l);
        OK(mpk_new_tensor(k, 4, (int64_t[]){P, HKV, S, D}, MPK_BF16, nm, MPK_IO_DEVICE, &vc));
        OK(mpk_rmsnorm_linear_layer(k, x, attach(k, w->in_norm[l], 1, H, 1, MPK_BF16, "in_norm", l),
                                    attach(k, w->qkv[l], 2, QKV, H, MPK_BF16, "wqkv", l), qkv, EPS,
                                    (mpk_dim3){4, 1, 1}, nb, "qkv_proj"));
        mpk_attention_desc ad = {
            .qkv = qkv, .k_cache = kc, .v_cache = vc,
            .q_norm = attach(k, w->q_norm[l], 1, D, 1, MPK_BF16, "q_norm", l),
            .k_norm = attach(k, w->k_norm[l], 1, D, 1, MPK_BF16, "k_norm", l),
            .rope_inv_freq = inv, .output = ao, .num_q_heads = HQ, .num_kv_heads = HKV,
            .head_dim = D, .norm_eps = EPS,
        };
        OK(mpk_attention_layer(k, &ad, (mpk_dim3){HKV, 1, 1}, nb, "attention"));
        OK(mpk_linear_with_residual_layer(k, ao, attach(k, w->o[l], 2, H, OUTW, MPK_BF16, "wo", l), x, x2,
                                          (mpk_dim3){3, 1, 1}, nb, "o_proj"));
        OK(mpk_rmsnorm_linear_layer(k, x2, attach(k, w->post_norm[l], 1, H, 1, MPK_BF16, "post_norm", l),
                                    attach(k, w->gu[l], 2, 2 * I, H, MPK_BF16, "wgu", l), gu, EPS,
                                    (mpk_dim3){5, 1, 1}, nb, "gate_up"));
        OK(mpk_silu_mul_linear_with_residual_layer(k, gu, attach(k, w->down[l], 2, H, I, MPK_BF16, "wdown", l),
                                                   x2, x3, (mpk_dim3){2, 1, 1}, nb, "down"));
        x = x3;
    }
    mpk_tensor *logits = act(k, T, V, "logits", 0);
    OK(mpk_rmsnorm_linear_layer(k, x, attach(k, w->final_norm, 1, H, 1, MPK_BF16, "final_norm", 0),
                                attach(k, w->lm_head, 2, V, H, MPK_BF16, "lm_head", 0), logits, EPS,
                                (mpk_dim3){5, 1, 1}, nb, "lm_head"));
    OK(mpk_argmax_layer(k, logits, out_ids, (mpk_dim3){5, 1, 1}, nb, "argmax"));
}

typedef struct stream_log {
    int32_t tokens[2][64];
    int32_t count[2];
    int finished[2];
    int order_ok;
} stream_log;

static void on_tokens(void *user, int32_t req, const int32_t *toks, int32_t n, int finished) {
    stream_log *s = user;
    if (req < 0 || req > 1 || s->finished[req]) {
        s->order_ok = 0;
        return;
    }
    for (int i = 0; i < n; i++) s->tokens[req][s->count[req]++] = toks[i];
    s->finished[req] = finished;
}

static void run_config(weights *w, int workers, int schedulers, int jit, int32_t out[2][64], int32_t len[2]) {
    mpk_kernel_params p = mpk_kernel_default_params();
    p.backend = MPK_BACKEND_CPU;
    p.num_workers = workers;
    p.num_local_schedulers = schedulers;
    p.jit_dispatch = jit;
    p.max_batched_tokens = 8;  // < the first prompt: chunked prefill
    p.max_seq_len = 40;
    p.max_requests = 2;
    p.page_size = 3;           // does not divide the lengths
    p.timeout_s = 60;
    mpk_kernel *k = NULL;
    cr_assert_eq(mpk_kernel_create(&p, &k), MPK_OK);
    build(k, w);
    OK(mpk_compile(k));
    OK(mpk_graph_check(k));
    int32_t prompt0[13], prompt1[5];
    for (int i = 0; i < 13; i++) prompt0[i] = (i * 7 + 3) % V;
    for (int i = 0; i < 5; i++) prompt1[i] = (i * 11 + 5) % V;
    int32_t id0, id1;
    OK(mpk_request_add(k, prompt0, 13, 9, NULL, &id0));
    OK(mpk_request_add(k, prompt1, 5, 12, NULL, &id1));
    stream_log log = {.order_ok = 1};
    OK(mpk_run(k, on_tokens, &log));
    for (int r = 0; r < 2; r++) {
        const int32_t *toks;
        int32_t pl, tl;
        OK(mpk_request_tokens(k, r, &toks, &pl, &tl));
        cr_assert_eq(tl, pl + (r == 0 ? 9 : 12), "request %d has %d tokens", r, tl);
        memcpy(out[r], toks, (size_t)tl * sizeof *toks);
        len[r] = tl;
        // The stream delivered exactly the generated tokens, in order, then finished.
        cr_expect(log.order_ok);
        cr_expect(log.finished[r]);
        cr_expect_eq(log.count[r], tl - pl);
        cr_expect(memcmp(log.tokens[r], toks + pl, (size_t)(tl - pl) * sizeof *toks) == 0);
    }
    mpk_run_stats st;
    OK(mpk_run_get_stats(k, &st));
    cr_expect_eq(st.generated_tokens, 21);
    cr_expect_eq(st.prompt_tokens, 18);
    cr_expect_geq(st.prefill_iterations, 2);  // 18 prompt rows need at least 3 iterations of 8
    mpk_kernel_free(k);
}

Test(qwen3_layers, matches_reference_and_is_deterministic, .timeout = 120) {
    weights w;
    make_weights(&w);
    int32_t out[2][64], len[2];
    run_config(&w, 3, 1, 0, out, len);
    // Every generated token is the reference's argmax given the same prefix, unless the
    // reference's top two logits are within bf16 noise of each other (then either may win).
    int exact = 0, total = 0;
    for (int r = 0; r < 2; r++) {
        int L = len[r];
        double *logits = malloc((size_t)L * V * sizeof *logits);
        ref_forward(&w, out[r], L, logits);
        int pl = r == 0 ? 13 : 5;
        for (int p = pl; p < L; p++) {
            const double *lg = &logits[(size_t)(p - 1) * V];
            int best = 0;
            for (int v = 1; v < V; v++)
                if (lg[v] > lg[best]) best = v;
            double margin = lg[best] - lg[out[r][p]];
            double scale = fabs(lg[best]) + 1;
            cr_expect_leq(margin, 0.02 * scale, "request %d position %d: mpk chose %d (%.4f), reference %d (%.4f)",
                          r, p, out[r][p], lg[out[r][p]], best, lg[best]);
            exact += best == out[r][p];
            total++;
        }
        free(logits);
    }
    cr_expect_geq(exact, total - 1, "only %d of %d tokens equal the reference argmax", exact, total);
    // The same tokens with other worker counts and scheduling modes.
    static const int cfg[][3] = {{1, 1, 0}, {4, 2, 1}, {2, 0, 0}, {5, 0, 0}};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        int32_t o2[2][64], l2[2];
        run_config(&w, cfg[c][0], cfg[c][1], cfg[c][2], o2, l2);
        for (int r = 0; r < 2; r++) {
            cr_assert_eq(l2[r], len[r]);
            cr_assert(memcmp(o2[r], out[r], (size_t)len[r] * sizeof(int32_t)) == 0,
                      "config %zu: request %d differs", c, r);
        }
    }
    free_weights(&w);
}
