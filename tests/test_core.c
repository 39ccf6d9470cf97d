// test_core.c — the public API, the compiler and the CPU runtime: error paths of every public
// call, random layer graphs (the checker's proof, then bitwise-identical results over worker
// counts, scheduling modes and repeated runs), the stall report, and a two-layer Qwen3-shaped
// model built through the layer API checked against a straight-line reference forward pass.
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpk.h"
#include "core/internal.h"
#include "kernels/cpu/kernels.h"

// ---- helpers -----------------------------------------------------------------------------------

static const mpk_dim3 NOBLOCK = {0, 0, 0};
static mpk_dim3 G(int x, int y) { return (mpk_dim3){x, y, 1}; }

static uint64_t rng_state;
static double urand(void) {  // xorshift64*, [0, 1)
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}
static double nrand(void) { return sqrt(-2 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand()); }

// Weights draw from their own generator, so that making them (only on the first build of a
// graph) does not shift the random choices of the graph's structure.
static mpk_bf16 *rand_bf16(int64_t n, double scale, double offset) {
    static uint64_t weight_state = 0x12345678abcdefull;
    uint64_t saved = rng_state;
    rng_state = weight_state;
    mpk_bf16 *p = malloc((size_t)n * sizeof *p);
    cr_assert(p);
    for (int64_t i = 0; i < n; i++) p[i] = mpk_f32_to_bf16((float)(offset + scale * nrand()));
    weight_state = rng_state;
    rng_state = saved;
    return p;
}

static mpk_kernel_params small_params(int workers, int schedulers, int jit) {
    mpk_kernel_params p = mpk_kernel_default_params();
    p.backend = MPK_BACKEND_CPU;
    p.num_workers = workers;
    p.num_local_schedulers = schedulers;
    p.jit_dispatch = jit;
    p.max_batched_tokens = 6;
    p.max_seq_len = 32;
    p.max_requests = 2;
    p.page_size = 4;
    p.timeout_s = 60;
    return p;
}

static mpk_kernel *new_kernel(const mpk_kernel_params *p) {
    mpk_kernel *k = NULL;
    cr_assert_eq(mpk_kernel_create(p, &k), MPK_OK);
    cr_assert(k);
    return k;
}

#define OK(k, expr) cr_assert_eq((expr), MPK_OK, "%s: %s", #expr, mpk_last_error(k))

// ---- parameters and tensors --------------------------------------------------------------------

Test(core, params_rejected) {
    mpk_kernel *k = (mpk_kernel *)1;
    cr_expect_eq(mpk_kernel_create(NULL, NULL), MPK_ERR_INVALID_ARG);
    mpk_kernel_params p = small_params(1, 1, 0);
    p.max_seq_len = 0;
    cr_expect_eq(mpk_kernel_create(&p, &k), MPK_ERR_INVALID_ARG);
    cr_expect_null(k);
    p = small_params(1, 1, 0);
    p.rank = 3;
    cr_expect_eq(mpk_kernel_create(&p, &k), MPK_ERR_INVALID_ARG);
    p = small_params(1, 1, 0);
    p.num_eos_token_ids = 99;
    cr_expect_eq(mpk_kernel_create(&p, &k), MPK_ERR_INVALID_ARG);
    p = small_params(1, 1, 0);
    p.world_size = 2;
    cr_expect_eq(mpk_kernel_create(&p, &k), MPK_ERR_UNSUPPORTED);
    mpk_kernel_free(NULL);  // a no-op
    cr_expect_str_eq(mpk_last_error(NULL), "");
    cr_expect_str_eq(mpk_status_string(MPK_ERR_SHAPE), "shape mismatch");
}

Test(core, tensor_errors) {
    mpk_kernel_params p = small_params(2, 1, 0);
    mpk_kernel *k = new_kernel(&p);
    mpk_tensor *t = NULL, *u = NULL;
    float buf[64];
    cr_expect_eq(mpk_new_tensor(k, 2, (int64_t[]){6, 8}, MPK_BF16, "x", MPK_IO_DEVICE, &t), MPK_OK);
    cr_expect_eq(mpk_new_tensor(k, 2, (int64_t[]){6, 8}, MPK_BF16, "x", MPK_IO_DEVICE, &u), MPK_ERR_INVALID_ARG);
    cr_expect(strstr(mpk_last_error(k), "'x' is already used"), "%s", mpk_last_error(k));
    cr_expect_eq(mpk_new_tensor(k, 0, (int64_t[]){6}, MPK_BF16, "y", MPK_IO_DEVICE, &u), MPK_ERR_SHAPE);
    cr_expect_eq(mpk_new_tensor(k, 2, (int64_t[]){6, -1}, MPK_BF16, "y", MPK_IO_DEVICE, &u), MPK_ERR_SHAPE);
    cr_expect_eq(mpk_new_tensor(k, 2, (int64_t[]){6, 8}, (mpk_dtype)77, "y", MPK_IO_DEVICE, &u), MPK_ERR_INVALID_ARG);
    cr_expect_eq(mpk_new_tensor(k, 2, (int64_t[]){6, 8}, MPK_BF16, NULL, MPK_IO_DEVICE, &u), MPK_ERR_INVALID_ARG);
    cr_expect_eq(mpk_new_tensor(k, 2, (int64_t[]){6, 8}, MPK_BF16, "y", MPK_IO_DEVICE, NULL), MPK_ERR_INVALID_ARG);
    cr_expect_eq(mpk_attach_input(k, NULL, 1, (int64_t[]){8}, MPK_F32, "z", &u), MPK_ERR_INVALID_ARG);
    cr_expect_eq(mpk_attach_input(k, buf, 1, (int64_t[]){8}, MPK_F32, "z", &u), MPK_OK);
    cr_expect_eq(mpk_attach_device_input(k, buf, 1, (int64_t[]){8}, MPK_F32, "zz", &u), MPK_ERR_UNSUPPORTED);
    cr_expect_eq(mpk_tensor_find(k, "z", &u), MPK_OK);
    cr_expect_eq(mpk_tensor_dim(u, 0), 8);
    cr_expect_eq(mpk_tensor_find(k, "nope", &u), MPK_ERR_NOT_FOUND);
    cr_expect_eq(mpk_meta_tensor(k, (mpk_meta)9, &u), MPK_ERR_INVALID_ARG);
    cr_expect_eq(mpk_tensor_read(k, t, buf, sizeof buf), MPK_ERR_STATE);  // before compile
    mpk_kernel_free(k);
}

Test(core, layer_errors) {
    mpk_kernel_params p = small_params(2, 1, 0);
    mpk_kernel *k = new_kernel(&p);
    mpk_kernel_params p2 = small_params(1, 1, 0);
    mpk_kernel *other = new_kernel(&p2);
    mpk_tensor *x, *y, *w, *w2, *ids, *foreign;
    OK(k, mpk_new_tensor(k, 2, (int64_t[]){6, 10}, MPK_BF16, "x", MPK_IO_DEVICE, &x));
    OK(k, mpk_new_tensor(k, 2, (int64_t[]){6, 12}, MPK_BF16, "y", MPK_IO_DEVICE, &y));
    OK(k, mpk_new_tensor(k, 2, (int64_t[]){12, 10}, MPK_BF16, "w", MPK_IO_DEVICE, &w));
    OK(k, mpk_new_tensor(k, 2, (int64_t[]){12, 9}, MPK_BF16, "w2", MPK_IO_DEVICE, &w2));
    OK(other, mpk_new_tensor(other, 2, (int64_t[]){12, 10}, MPK_BF16, "w", MPK_IO_DEVICE, &foreign));
    OK(k, mpk_meta_tensor(k, MPK_META_INPUT_IDS, &ids));
    cr_expect_eq(mpk_compile(k), MPK_ERR_STATE);  // no layers
    cr_expect_eq(mpk_linear_layer(k, x, w, y, G(5, 1), NOBLOCK, "q_proj"), MPK_ERR_SHAPE);
    cr_expect_str_eq(mpk_last_error(k), "linear 'q_proj': grid.x=5 does not divide 12 output columns");
    cr_expect_eq(mpk_linear_layer(k, x, w, y, G(2, 4), NOBLOCK, "q_proj"), MPK_ERR_SHAPE);
    cr_expect_eq(mpk_linear_layer(k, x, w2, y, G(2, 1), NOBLOCK, "q_proj"), MPK_ERR_SHAPE);
    cr_expect(strstr(mpk_last_error(k), "weight 'w2' has shape (12, 9), expected (*, 10)"), "%s", mpk_last_error(k));
    cr_expect_eq(mpk_linear_layer(k, x, foreign, y, G(2, 1), NOBLOCK, "q_proj"), MPK_ERR_INVALID_ARG);
    cr_expect_eq(mpk_linear_layer(k, x, NULL, y, G(2, 1), NOBLOCK, "q_proj"), MPK_ERR_INVALID_ARG);
    cr_expect_eq(mpk_linear_layer(k, x, w, y, G(0, 1), NOBLOCK, "q_proj"), MPK_ERR_SHAPE);
    cr_expect_eq(mpk_linear_layer(k, x, w, y, (mpk_dim3){2, 1, 2}, NOBLOCK, "q_proj"), MPK_ERR_SHAPE);
    cr_expect_eq(mpk_rmsnorm_layer(k, x, w, x, 1e-6f, G(1, 1), NOBLOCK, "n"), MPK_ERR_SHAPE);
    cr_expect_eq(mpk_embed_layer(k, x, w, y, G(1, 1), NOBLOCK, "e"), MPK_ERR_SHAPE);  // ids not i32
    cr_expect_eq(mpk_silu_mul_layer(k, x, y, G(1, 1), NOBLOCK, "s"), MPK_ERR_SHAPE);
    cr_expect_eq(mpk_argmax_layer(k, y, ids, G(5, 1), NOBLOCK, "a"), MPK_ERR_SHAPE);
    cr_expect_eq(mpk_sampling_layer(k, y, ids, G(2, 1), NOBLOCK, "s"), MPK_ERR_SHAPE);
    cr_expect_eq(mpk_attention_layer(k, NULL, G(1, 1), NOBLOCK, "attn"), MPK_ERR_INVALID_ARG);
    mpk_attention_desc ad = {.qkv = y, .num_q_heads = 3, .num_kv_heads = 2, .head_dim = 2};
    cr_expect_eq(mpk_attention_layer(k, &ad, G(1, 1), NOBLOCK, "attn"), MPK_ERR_SHAPE);
    cr_expect_eq(mpk_allreduce_layer(k, y, y, G(1, 1), NOBLOCK, "ar"), MPK_ERR_INVALID_ARG);
    // Nothing half-built stays behind: a good layer still compiles.
    OK(k, mpk_linear_layer(k, x, w, y, G(3, 2), NOBLOCK, "q_proj"));
    cr_expect_eq(mpk_run(k, NULL, NULL), MPK_ERR_STATE);  // before compile
    int32_t prompt[2] = {1, 2};
    cr_expect_eq(mpk_request_add(k, prompt, 2, 1, NULL, NULL), MPK_ERR_STATE);
    OK(k, mpk_compile(k));
    mpk_graph_stats gs;
    OK(k, mpk_graph_get_stats(k, &gs));
    cr_expect_eq(gs.num_layers, 1);
    cr_expect_eq(gs.num_tasks, 6);
    cr_expect_eq(mpk_compile(k), MPK_ERR_STATE);
    cr_expect_eq(mpk_linear_layer(k, x, w, y, G(3, 1), NOBLOCK, "again"), MPK_ERR_STATE);
    cr_expect_eq(mpk_new_tensor(k, 1, (int64_t[]){4}, MPK_F32, "late", MPK_IO_DEVICE, &foreign), MPK_ERR_STATE);
    cr_expect_eq(mpk_run(k, NULL, NULL), MPK_ERR_STATE);  // no requests
    cr_expect_eq(mpk_request_add(k, prompt, 0, 1, NULL, NULL), MPK_ERR_INVALID_ARG);
    cr_expect_eq(mpk_request_add(k, prompt, 2, 0, NULL, NULL), MPK_ERR_INVALID_ARG);
    cr_expect_eq(mpk_request_add(k, prompt, 2, 31, NULL, NULL), MPK_ERR_LIMIT);
    mpk_sampling_params bad = mpk_sampling_default_params();
    bad.top_p = 0;
    cr_expect_eq(mpk_request_add(k, prompt, 2, 1, &bad, NULL), MPK_ERR_INVALID_ARG);
    OK(k, mpk_request_add(k, prompt, 2, 1, NULL, NULL));
    OK(k, mpk_request_add(k, prompt, 2, 1, NULL, NULL));
    cr_expect_eq(mpk_request_add(k, prompt, 2, 1, NULL, NULL), MPK_ERR_LIMIT);  // 2 slots
    char small[4];
    cr_expect_eq(mpk_tensor_read(k, y, small, sizeof small), MPK_ERR_SHAPE);
    cr_expect_eq(mpk_profile_get(k, NULL, NULL, NULL), MPK_ERR_INVALID_ARG);
    mpk_kernel_free(k);
    mpk_kernel_free(other);
}

Test(core, in_place_alias_rules) {
    mpk_kernel_params p = small_params(2, 1, 0);
    mpk_kernel *k = new_kernel(&p);
    mpk_tensor *x, *w;
    OK(k, mpk_new_tensor(k, 2, (int64_t[]){6, 8}, MPK_BF16, "x", MPK_IO_DEVICE, &x));
    OK(k, mpk_new_tensor(k, 2, (int64_t[]){8, 8}, MPK_BF16, "w", MPK_IO_DEVICE, &w));
    cr_expect_eq(mpk_linear_layer(k, x, w, x, G(2, 1), NOBLOCK, "self"), MPK_ERR_INVALID_ARG);
    // The residual may be the output (each task reads and writes its own slice) ...
    mpk_tensor *h;
    OK(k, mpk_new_tensor(k, 2, (int64_t[]){6, 8}, MPK_BF16, "h", MPK_IO_DEVICE, &h));
    OK(k, mpk_linear_with_residual_layer(k, h, w, x, x, G(4, 1), NOBLOCK, "o_proj"));
    OK(k, mpk_compile(k));
    OK(k, mpk_graph_check(k));
    mpk_kernel_free(k);
    // ... but a norm that writes rows other tasks read is rejected at compile.
    k = new_kernel(&p);
    OK(k, mpk_new_tensor(k, 2, (int64_t[]){6, 8}, MPK_BF16, "x", MPK_IO_DEVICE, &x));
    OK(k, mpk_new_tensor(k, 2, (int64_t[]){8, 8}, MPK_BF16, "w", MPK_IO_DEVICE, &w));
    mpk_tensor *nw;
    OK(k, mpk_new_tensor(k, 1, (int64_t[]){8}, MPK_BF16, "nw", MPK_IO_DEVICE, &nw));
    OK(k, mpk_rmsnorm_layer(k, x, nw, x, 1e-6f, G(1, 3), NOBLOCK, "norm_in_place"));  // row slices: fine
    OK(k, mpk_compile(k));
    OK(k, mpk_graph_check(k));
    mpk_kernel_free(k);
}

// ---- random layer graphs -----------------------------------------------------------------------

// Builds the same random graph for a given seed: an embedding, then a chain of random layers over
// activation tensors of awkward widths, reading earlier activations and sometimes updating one in
// place. Weight buffers are made once per seed and shared by all builds.
#define RG_MAX_T 40
typedef struct rg_weights {
    mpk_bf16 *buf[RG_MAX_T * 3];
    int n;
} rg_weights;

static int divisor_of(int n, double u) {
    int d[64], nd = 0;
    for (int i = 1; i <= n && nd < 64; i++)
        if (n % i == 0) d[nd++] = i;
    return d[(int)(u * nd) % nd];
}

static mpk_bf16 *rg_weight(rg_weights *W, int *wi, int64_t n, double scale, double offset) {
    if (*wi >= W->n) {
        W->buf[W->n++] = rand_bf16(n, scale, offset);
    }
    return W->buf[(*wi)++];
}

static int build_random_graph(mpk_kernel *k, uint64_t seed, rg_weights *W, int nlayers,
                              mpk_tensor **acts, int *nacts) {
    rng_state = seed * 0x9e3779b97f4a7c15ull + 1;
    static const int widths[] = {6, 10, 12, 20, 14};
    const int T = k->params.max_batched_tokens, V = 23;
    int wi = 0;
    char nm[64];
    mpk_tensor *ids, *emb, *x;
    mpk_meta_tensor(k, MPK_META_INPUT_IDS, &ids);
    int H = widths[(int)(urand() * 5)];
    if (mpk_attach_input(k, rg_weight(W, &wi, (int64_t)V * H, 1.0, 0), 2, (int64_t[]){V, H}, MPK_BF16, "emb", &emb)) return 0;
    if (mpk_new_tensor(k, 2, (int64_t[]){T, H}, MPK_BF16, "act0", MPK_IO_DEVICE, &x)) return 0;
    if (mpk_embed_layer(k, ids, emb, x, G(divisor_of(H, urand()), divisor_of(T, urand())), NOBLOCK, "embed")) return 0;
    acts[0] = x;
    int na = 1;
    for (int l = 0; l < nlayers; l++) {
        mpk_tensor *in = acts[(int)(urand() * na)];
        int K = (int)in->dims[1];
        int op = (int)(urand() * 6);
        int N = widths[(int)(urand() * 5)];
        mpk_tensor *w, *nw, *out;
        snprintf(nm, sizeof nm, "w%d", l);
        int gy = divisor_of(T, urand());
        mpk_status st;
        switch (op) {
        case 0:  // linear
        case 1:  // rmsnorm_linear
            if (mpk_attach_input(k, rg_weight(W, &wi, (int64_t)N * K, 0.3, 0), 2, (int64_t[]){N, K}, MPK_BF16, nm, &w)) return 0;
            snprintf(nm, sizeof nm, "act%d", na);
            if (mpk_new_tensor(k, 2, (int64_t[]){T, N}, MPK_BF16, nm, MPK_IO_DEVICE, &out)) return 0;
            if (op == 0) {
                st = mpk_linear_layer(k, in, w, out, G(divisor_of(N, urand()), gy), NOBLOCK, NULL);
            } else {
                snprintf(nm, sizeof nm, "nw%d", l);
                if (mpk_attach_input(k, rg_weight(W, &wi, K, 0.1, 1), 1, (int64_t[]){K}, MPK_BF16, nm, &nw)) return 0;
                st = mpk_rmsnorm_linear_layer(k, in, nw, w, out, 1e-5f, G(divisor_of(N, urand()), gy), NOBLOCK, NULL);
            }
            if (st) return 0;
            acts[na++] = out;
            break;
        case 2: {  // linear with residual into an existing activation of width N, often in place
            mpk_tensor *res = NULL;
            for (int i = 0; i < na && !res; i++)
                if (acts[(i + l) % na] != in) res = acts[(i + l) % na];
            if (!res) res = in;
            N = (int)res->dims[1];
            if (mpk_attach_input(k, rg_weight(W, &wi, (int64_t)N * K, 0.3, 0), 2, (int64_t[]){N, K}, MPK_BF16, nm, &w)) return 0;
            if (res != in && urand() < 0.6) {
                out = res;
            } else {
                snprintf(nm, sizeof nm, "act%d", na);
                if (mpk_new_tensor(k, 2, (int64_t[]){T, N}, MPK_BF16, nm, MPK_IO_DEVICE, &out)) return 0;
                acts[na++] = out;
            }
            if (mpk_linear_with_residual_layer(k, in, w, res, out, G(divisor_of(N, urand()), gy), NOBLOCK, NULL)) return 0;
            break;
        }
        case 3:  // rmsnorm into a new tensor
            snprintf(nm, sizeof nm, "nw%d", l);
            if (mpk_attach_input(k, rg_weight(W, &wi, K, 0.1, 1), 1, (int64_t[]){K}, MPK_BF16, nm, &nw)) return 0;
            snprintf(nm, sizeof nm, "act%d", na);
            if (mpk_new_tensor(k, 2, (int64_t[]){T, K}, MPK_BF16, nm, MPK_IO_DEVICE, &out)) return 0;
            if (mpk_rmsnorm_layer(k, in, nw, out, 1e-5f, G(1, gy), NOBLOCK, NULL)) return 0;
            acts[na++] = out;
            break;
        case 4:  // silu_mul (needs an even width)
        case 5:  // silu_mul + linear + residual
            if (K % 2) { l--; continue; }
            if (op == 4) {
                snprintf(nm, sizeof nm, "act%d", na);
                if (mpk_new_tensor(k, 2, (int64_t[]){T, K / 2}, MPK_BF16, nm, MPK_IO_DEVICE, &out)) return 0;
                if (mpk_silu_mul_layer(k, in, out, G(divisor_of(K / 2, urand()), gy), NOBLOCK, NULL)) return 0;
                acts[na++] = out;
            } else {
                mpk_tensor *res = acts[(int)(urand() * na)];
                if (res == in) { l--; continue; }
                N = (int)res->dims[1];
                if (mpk_attach_input(k, rg_weight(W, &wi, (int64_t)N * K / 2, 0.3, 0), 2, (int64_t[]){N, K / 2}, MPK_BF16, nm, &w)) return 0;
                if (mpk_silu_mul_linear_with_residual_layer(k, in, w, res, res, G(divisor_of(N, urand()), gy), NOBLOCK, NULL)) return 0;
            }
            break;
        }
        if (na >= RG_MAX_T - 1) break;
    }
    *nacts = na;
    return 1;
}

// Runs the graph for one request (prompt of 5 tokens, 3 generated: a 5-row iteration, then
// decode iterations) and returns a copy of every activation tensor.
static uint8_t *run_random_graph(uint64_t seed, rg_weights *W, int workers, int schedulers, int jit,
                                 size_t *bytes_out) {
    mpk_kernel_params p = small_params(workers, schedulers, jit);
    mpk_kernel *k = new_kernel(&p);
    mpk_tensor *acts[RG_MAX_T];
    int na = 0;
    cr_assert(build_random_graph(k, seed, W, 14, acts, &na), "build: %s", mpk_last_error(k));
    OK(k, mpk_compile(k));
    OK(k, mpk_graph_check(k));
    int32_t prompt[5] = {3, 1, 4, 1, 5};
    OK(k, mpk_request_add(k, prompt, 5, 3, NULL, NULL));
    OK(k, mpk_run(k, NULL, NULL));
    size_t total = 0;
    for (int i = 0; i < na; i++) total += acts[i]->bytes;
    uint8_t *out = malloc(total), *q = out;
    for (int i = 0; i < na; i++) {
        OK(k, mpk_tensor_read(k, acts[i], q, acts[i]->bytes));
        for (size_t j = 0; j < acts[i]->bytes / 2; j++) {
            mpk_bf16 v;
            memcpy(&v, q + 2 * j, 2);
            cr_assert(isfinite(mpk_bf16_to_f32(v)), "non-finite value in %s", acts[i]->name);
        }
        q += acts[i]->bytes;
    }
    *bytes_out = total;
    mpk_kernel_free(k);
    return out;
}

Test(core, random_graphs_deterministic, .timeout = 120) {
    static const int cfg[][3] = {{1, 1, 0}, {3, 1, 0}, {4, 2, 1}, {2, 0, 0}, {7, 0, 0}, {5, 3, 0}};
    for (uint64_t seed = 1; seed <= 6; seed++) {
        rg_weights W = {0};
        size_t ref_bytes = 0;
        uint8_t *ref = run_random_graph(seed, &W, 1, 1, 0, &ref_bytes);
        for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++)
            for (int rep = 0; rep < 2; rep++) {
                size_t bytes = 0;
                uint8_t *got = run_random_graph(seed, &W, cfg[c][0], cfg[c][1], cfg[c][2], &bytes);
                cr_assert_eq(bytes, ref_bytes);
                cr_assert(memcmp(got, ref, bytes) == 0,
                          "seed %llu: workers=%d schedulers=%d jit=%d differs from the 1-worker run",
                          (unsigned long long)seed, cfg[c][0], cfg[c][1], cfg[c][2]);
                free(got);
            }
        free(ref);
        for (int i = 0; i < W.n; i++) free(W.buf[i]);
    }
}

Test(core, random_graphs_checker_and_reduction) {
    for (uint64_t seed = 10; seed < 40; seed++) {
        rg_weights W = {0};
        mpk_kernel_params p = small_params(3, 1, 0);
        mpk_kernel *k = new_kernel(&p);
        mpk_tensor *acts[RG_MAX_T];
        int na = 0;
        cr_assert(build_random_graph(k, seed, &W, 25, acts, &na), "build: %s", mpk_last_error(k));
        OK(k, mpk_compile(k));
        OK(k, mpk_graph_check(k));
        mpk_graph_stats gs;
        OK(k, mpk_graph_get_stats(k, &gs));
        cr_expect_leq(gs.num_dependencies_reduced, gs.num_dependencies_exact);
        // Sabotage 1: an event that needs one trigger more than it gets never fires.
        mpk_graph *g = &k->graph;
        int32_t e = g->num_begin_events + (int32_t)(seed % (uint64_t)(g->num_events - 1 - g->num_begin_events));
        g->events[e].num_triggers++;
        cr_expect_neq(mpk_graph_check(k), MPK_OK, "seed %llu: an event that cannot fire passed", (unsigned long long)seed);
        g->events[e].num_triggers--;
        OK(k, mpk_graph_check(k));
        // Sabotage 2: a producer of an event that feeds a real dependency is rerouted to the end
        // event (the counts stay consistent); after transitive reduction every producer is needed,
        // so the proof must find an unordered conflict.
        int found = 0;
        for (int32_t t = 0; t < g->num_tasks && !found; t++)
            for (uint32_t j = g->tasks[t].trigger_begin; j < g->tasks[t].trigger_end && !found; j++) {
                uint32_t f = g->triggers[j];
                if (f == (uint32_t)(g->num_events - 1) || g->events[f].num_triggers < 2) continue;
                g->triggers[j] = (uint32_t)(g->num_events - 1);
                g->events[f].num_triggers--;
                g->events[g->num_events - 1].num_triggers++;
                cr_expect_neq(mpk_graph_check(k), MPK_OK, "seed %llu: a missing dependency passed", (unsigned long long)seed);
                cr_expect(strstr(mpk_last_error(k), "not ordered") || strstr(mpk_last_error(k), "end event"),
                          "%s", mpk_last_error(k));
                found = 1;
            }
        mpk_kernel_free(k);
        for (int i = 0; i < W.n; i++) free(W.buf[i]);
    }
}

// The block of interchangeable tasks the compiler gives each product layer (compile.c:
// mark_tile_blocks, iparam[1]; the GPU's prompt kernel tiles by it): the largest power of two B
// such that every consumer depends on whole aligned blocks of B tasks and the tasks of a block
// wait for the same event; iparam[2] is the task's index in its layer.
static int32_t layer_tile_block(const mpk_kernel *k, const char *name, int32_t *tasks) {
    int32_t li = -1, b = -1;
    for (int32_t i = 0; i < k->num_layers; i++)
        if (strcmp(k->layers[i].name, name) == 0) li = i;
    cr_assert_geq(li, 0, "layer %s", name);
    *tasks = 0;
    for (int32_t t = 0; t < k->graph.num_tasks; t++) {
        const mpk_task_desc *d = &k->graph.tasks[t];
        if ((int32_t)d->layer != li) continue;
        if (b < 0) b = d->iparam[1];
        cr_expect_eq(d->iparam[1], b, "%s: every task has the same block", name);
        if (b >= 2) cr_expect_lt(d->iparam[2], k->layers[li].num_tasks);
        (*tasks)++;
    }
    return b;
}

Test(core, tile_blocks) {
    mpk_kernel_params p = small_params(2, 1, 0);
    mpk_kernel *k = new_kernel(&p);
    mpk_tensor *x, *y, *z, *s, *u, *o;
    mpk_bf16 *wy = rand_bf16(32 * 16, 0.1, 0), *wz = rand_bf16(8 * 32, 0.1, 0), *wu = rand_bf16(16 * 16, 0.1, 0);
    mpk_bf16 *wo = rand_bf16(16 * 16, 0.1, 0);
    mpk_tensor *Wy, *Wz, *Wu, *Wo;
    OK(k, mpk_new_tensor(k, 2, (int64_t[]){6, 16}, MPK_BF16, "x", MPK_IO_DEVICE, &x));
    OK(k, mpk_new_tensor(k, 2, (int64_t[]){6, 32}, MPK_BF16, "y", MPK_IO_DEVICE, &y));
    OK(k, mpk_new_tensor(k, 2, (int64_t[]){6, 8}, MPK_BF16, "z", MPK_IO_DEVICE, &z));
    OK(k, mpk_new_tensor(k, 2, (int64_t[]){6, 16}, MPK_BF16, "s", MPK_IO_DEVICE, &s));
    OK(k, mpk_new_tensor(k, 2, (int64_t[]){6, 16}, MPK_BF16, "u", MPK_IO_DEVICE, &u));
    OK(k, mpk_new_tensor(k, 2, (int64_t[]){6, 16}, MPK_BF16, "o", MPK_IO_DEVICE, &o));
    OK(k, mpk_attach_input(k, wy, 2, (int64_t[]){32, 16}, MPK_BF16, "wy", &Wy));
    OK(k, mpk_attach_input(k, wz, 2, (int64_t[]){8, 32}, MPK_BF16, "wz", &Wz));
    OK(k, mpk_attach_input(k, wu, 2, (int64_t[]){16, 16}, MPK_BF16, "wu", &Wu));
    OK(k, mpk_attach_input(k, wo, 2, (int64_t[]){16, 16}, MPK_BF16, "wo", &Wo));
    // y's 8 tasks of 4 columns: z reads whole rows (all 8), silu_mul's 2 tasks read gate columns
    // [8i, 8i + 8) and up columns [16 + 8i, 16 + 8i + 8), i.e. y's tasks {2i, 2i + 1, 4 + 2i, 5 + 2i}:
    // blocks of 2.
    OK(k, mpk_linear_layer(k, x, Wy, y, G(8, 1), NOBLOCK, "y"));
    OK(k, mpk_linear_layer(k, y, Wz, z, G(4, 1), NOBLOCK, "z"));
    OK(k, mpk_silu_mul_layer(k, y, s, G(2, 1), NOBLOCK, "silu"));
    // u's 4 tasks are read by o's 4 tasks through the residual, column for column (and s, all of
    // it, does not depend on u): u's blocks are of 1 (no tiles), and o's tasks wait for 4
    // different events.
    OK(k, mpk_linear_layer(k, x, Wu, u, G(4, 1), NOBLOCK, "u"));
    OK(k, mpk_linear_with_residual_layer(k, s, Wo, u, o, G(4, 1), NOBLOCK, "o"));
    OK(k, mpk_compile(k));
    int32_t n;
    cr_expect_eq(layer_tile_block(k, "y", &n), 2);
    cr_expect_eq(n, 8);
    cr_expect_eq(layer_tile_block(k, "z", &n), 4, "a sink: one event, nothing depends on it");
    cr_expect_eq(layer_tile_block(k, "u", &n), 0);
    cr_expect_eq(layer_tile_block(k, "o", &n), 0);
    cr_expect_eq(layer_tile_block(k, "silu", &n), 0, "not a product");
    char *dump = NULL;
    OK(k, mpk_graph_dump_string(k, &dump));
    cr_expect(strstr(dump, "y                        grid (8, 1, 1)  8 tasks, prompt tiles in blocks of 2\n"), "%s", dump);
    cr_expect(strstr(dump, "u                        grid (4, 1, 1)  4 tasks\n"), "%s", dump);
    mpk_free_string(dump);
    // The checker proves the marks independently: blocks of 2 on u, whose consumers take one
    // column slice each, or a block that straddles two events, are refused.
    OK(k, mpk_graph_check(k));
    mpk_graph *g = &k->graph;
    for (int32_t t = 0; t < g->num_tasks; t++)
        if (strcmp(k->layers[g->tasks[t].layer].name, "u") == 0) {
            g->tasks[t].iparam[1] = 2;
            g->tasks[t].iparam[2] = k->task_rec[t] - k->layers[g->tasks[t].layer].first_task;
        }
    cr_expect_eq(mpk_graph_check(k), MPK_ERR_INTERNAL);
    cr_expect(strstr(mpk_last_error(k), "tile block of layer 'u'"), "%s", mpk_last_error(k));
    for (int32_t t = 0; t < g->num_tasks; t++)
        if (strcmp(k->layers[g->tasks[t].layer].name, "u") == 0) g->tasks[t].iparam[1] = 0;
    OK(k, mpk_graph_check(k));
    for (int32_t t = 0; t < g->num_tasks; t++)
        if (strcmp(k->layers[g->tasks[t].layer].name, "o") == 0) {
            g->tasks[t].iparam[1] = 4;
            g->tasks[t].iparam[2] = 0;
        }
    cr_expect_eq(mpk_graph_check(k), MPK_ERR_INTERNAL, "o's marks lack the task indices");
    mpk_kernel_free(k);
    free(wy);
    free(wz);
    free(wu);
    free(wo);
}

Test(core, dump_lists_tasks_and_events) {
    rg_weights W = {0};
    mpk_kernel_params p = small_params(2, 1, 0);
    mpk_kernel *k = new_kernel(&p);
    mpk_tensor *acts[RG_MAX_T];
    int na = 0;
    cr_assert(build_random_graph(k, 5, &W, 6, acts, &na));
    char *dump = NULL;
    cr_expect_eq(mpk_graph_dump_string(k, &dump), MPK_ERR_STATE);
    OK(k, mpk_compile(k));
    OK(k, mpk_graph_dump_string(k, &dump));
    cr_expect(strstr(dump, "# mpk task graph:"));
    cr_expect(strstr(dump, "E0    begin"));
    cr_expect(strstr(dump, "releases tasks [0,"));
    cr_expect(strstr(dump, "end   aot"));
    cr_expect(strstr(dump, "T0 "));
    mpk_free_string(dump);
    mpk_kernel_free(k);
    for (int i = 0; i < W.n; i++) free(W.buf[i]);
}

// A stalled event is reported with its name, not hung on.
Test(core, stall_is_reported, .timeout = 60) {
    rg_weights W = {0};
    mpk_kernel_params p = small_params(3, 1, 0);
    p.timeout_s = 1.0;
    for (int mode = 0; mode < 2; mode++) {
        p.num_local_schedulers = mode;  // dynamic, then static
        mpk_kernel *k = new_kernel(&p);
        mpk_tensor *acts[RG_MAX_T];
        int na = 0;
        cr_assert(build_random_graph(k, 3, &W, 6, acts, &na));
        OK(k, mpk_compile(k));
        setenv("MPK_TEST_STALL_EVENT", "1", 1);
        mpk_kernel_free(k);
        k = new_kernel(&p);
        cr_assert(build_random_graph(k, 3, &W, 6, acts, &na));
        OK(k, mpk_compile(k));  // the hook is read at load
        unsetenv("MPK_TEST_STALL_EVENT");
        int32_t prompt[3] = {1, 2, 3};
        OK(k, mpk_request_add(k, prompt, 3, 2, NULL, NULL));
        cr_expect_eq(mpk_run(k, NULL, NULL), MPK_ERR_TIMEOUT);
        cr_expect(strstr(mpk_last_error(k), "timeout after"), "%s", mpk_last_error(k));
        cr_expect(strstr(mpk_last_error(k), "event 1"), "%s", mpk_last_error(k));
        mpk_kernel_free(k);
    }
    for (int i = 0; i < W.n; i++) free(W.buf[i]);
}

// The batch puts decode rows (generated tokens) first and counts them; a prompt's rows, even its
// last one alone, are prompt chunks after them. The GPU multiplies the two kinds differently
// (linear.cuh), so this order is what keeps a row's values independent of its batch.
static void batch_add_request(mpk_batch *b, int32_t *tokens, int32_t s, int32_t prompt_len, int32_t max_new) {
    mpk_request_state *r = &mpk_batch_requests(b)[s];
    r->state = MPK_REQ_ACTIVE;
    r->prompt_len = r->length = prompt_len;
    r->max_length = prompt_len + max_new;
    for (int32_t i = 0; i < prompt_len; i++) tokens[(int64_t)s * b->max_seq_len + i] = 100 + i;
}

Test(core, batch_decode_rows_first) {
    const uint32_t bytes = mpk_batch_layout(NULL, 8, 3, 32, 4, 24);
    cr_assert_gt(bytes, 0);
    mpk_batch *b = calloc(1, bytes);
    mpk_batch_layout(b, 8, 3, 32, 4, 24);
    mpk_batch_reset(b);
    int32_t tokens[3 * 32] = {0}, step[3] = {0}, out_ids[8] = {0}, in_ids[8];
    batch_add_request(b, tokens, 0, 3, 5);
    batch_add_request(b, tokens, 1, 13, 5);
    batch_add_request(b, tokens, 2, 1, 5);  // a one-token prompt: a prompt chunk of one row
    // Iteration 1: prompt rows only (3 + 5 of 13; the one-token prompt waits for room).
    cr_assert_eq(mpk_batch_prepare(b, tokens, step, out_ids, in_ids), MPK_BATCH_RUNNING);
    cr_expect_eq(b->decode_rows, 0);
    cr_expect_eq(b->num_tokens, 8);
    // The rows whose tokens are sampled (the LM head's and argmax's rows): request 0's last
    // prompt row only; request 1's chunk is not its prompt's end.
    int32_t lo = 3, start = -1;
    cr_expect_eq(mpk_batch_next_sampled_run(b, &lo, 8, &start), 0);  // (none from row 3 on)
    cr_expect_eq(lo, 8);
    lo = 0;
    cr_expect_eq(mpk_batch_next_sampled_run(b, &lo, 8, &start), 1);
    cr_expect_eq(start, 2);
    cr_expect_eq(lo, 3);
    cr_expect_eq(mpk_batch_next_sampled_run(b, &lo, 8, &start), 0);
    cr_expect_eq(lo, 8);
    // Iteration 2: request 0 decodes (one row, first), request 1 continues its prompt.
    cr_assert_eq(mpk_batch_prepare(b, tokens, step, out_ids, in_ids), MPK_BATCH_RUNNING);
    cr_expect_eq(b->decode_rows, 1);
    cr_expect_eq(mpk_batch_row_pos(b)[0], 3);
    cr_expect_eq(mpk_batch_entry_slot(b)[mpk_batch_row_entry(b)[0]], 0);
    cr_expect_eq(b->num_tokens, 8);  // request 1: 7 more prompt rows
    // Iteration 3: request 1's last prompt row (position 12) alone is a prompt chunk, after the
    // decode row; then the one-token prompt.
    cr_assert_eq(mpk_batch_prepare(b, tokens, step, out_ids, in_ids), MPK_BATCH_RUNNING);
    cr_expect_eq(b->decode_rows, 1);
    cr_expect_eq(b->num_tokens, 3);
    cr_expect_eq(mpk_batch_row_pos(b)[1], 12);
    cr_expect_eq(mpk_batch_entry_slot(b)[mpk_batch_row_entry(b)[1]], 1);
    cr_expect_eq(mpk_batch_row_pos(b)[2], 0);
    cr_expect_eq(mpk_batch_entry_slot(b)[mpk_batch_row_entry(b)[2]], 2);
    cr_expect_eq(b->iter_prompt_tokens, 2);
    // Every row samples: one run of 3, of 2 from row 1, of 2 below row 2.
    lo = 0;
    cr_expect_eq(mpk_batch_next_sampled_run(b, &lo, 3, &start), 3);
    cr_expect_eq(start, 0);
    cr_expect_eq(lo, 3);
    lo = 1;
    cr_expect_eq(mpk_batch_next_sampled_run(b, &lo, 3, &start), 2);
    cr_expect_eq(start, 1);
    lo = 0;
    cr_expect_eq(mpk_batch_next_sampled_run(b, &lo, 2, &start), 2);
    cr_expect_eq(start, 0);
    // Iteration 4: all three decode.
    cr_assert_eq(mpk_batch_prepare(b, tokens, step, out_ids, in_ids), MPK_BATCH_RUNNING);
    cr_expect_eq(b->decode_rows, 3);
    cr_expect_eq(b->num_tokens, 3);
    cr_expect_eq(b->iter_prompt_tokens, 0);
    free(b);
}
