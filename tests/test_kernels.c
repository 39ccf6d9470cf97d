// test_kernels.c — the CPU task kernels (src/kernels/cpu) against straightforward double-precision
// references written here, on awkward shapes with fresh random inputs; sentinels around every
// output catch stray writes and NaN pre-fill catches unwritten outputs. Suite "kernels".
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kernels.h"

// Normalised squared error bound for bf16 outputs, ‖out − ref‖² / ‖ref‖². One rounding to bf16
// has a relative error below 2^-9, roughly uniform, so its mean square is about
// (2^-9)² / 3 ≈ 1.3e-6; the fused kernels round one or two intermediates as well (the
// normalised row, h, q and k after norm and after RoPE), each adding an error of the same
// order that partly cancels in the sums. 1e-4 leaves room for that and still catches any
// wrong index, missing term or misplaced scale, which give errors of order 1e-2 or more.
#define BF16_BOUND 1e-4

// ---- random inputs -----------------------------------------------------------------------------

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Uniform in [lo, hi).
static double rng_uniform(rng *r, double lo, double hi) {
    return lo + (hi - lo) * (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

static void fill_bf16(rng *r, mpk_bf16 *x, size_t n, double lo, double hi) {
    for (size_t i = 0; i < n; i++) x[i] = mpk_f32_to_bf16((float)rng_uniform(r, lo, hi));
}

static mpk_bf16 *random_bf16(rng *r, size_t n, double lo, double hi) {
    mpk_bf16 *x = malloc(sizeof *x * (n ? n : 1));
    cr_assert_not_null(x);
    fill_bf16(r, x, n, lo, hi);
    return x;
}

static double bf(mpk_bf16 h) { return (double)mpk_bf16_to_f32(h); }

// ---- guarded outputs ---------------------------------------------------------------------------

// An output of `rows` rows of `cols` elements at stride `ld`, with GUARD elements either side.
// Every byte outside the output elements (guards and the gaps between rows) holds SENTINEL and
// must keep it; every output element starts as `unset` (NaN for floats) and must be written.
#define GUARD 64
#define SENTINEL 0xa5

typedef struct guarded {
    unsigned char *base;
    void *p;  // the first output element
    size_t esize, rows, ld, cols, total;
} guarded;

static int in_output(const guarded *g, size_t i) {
    if (i < GUARD || i >= GUARD + g->rows * g->ld) return 0;
    return (i - GUARD) % g->ld < g->cols;
}

static guarded guarded_new(size_t esize, size_t rows, size_t ld, size_t cols,
                           const void *unset) {
    guarded g = {NULL, NULL, esize, rows, ld, cols, 2 * GUARD + rows * ld};
    g.base = malloc(g.total * esize);
    cr_assert_not_null(g.base);
    memset(g.base, SENTINEL, g.total * esize);
    for (size_t i = 0; i < g.total; i++)
        if (in_output(&g, i)) memcpy(g.base + i * esize, unset, esize);
    g.p = g.base + GUARD * esize;
    return g;
}

// Guards and gaps unchanged, every output element changed from `unset`.
static void guarded_check(const guarded *g, const void *unset, const char *what) {
    for (size_t i = 0; i < g->total; i++) {
        const unsigned char *e = g->base + i * g->esize;
        if (in_output(g, i)) {
            cr_assert(memcmp(e, unset, g->esize) != 0, "%s: output element %zu not written", what,
                      i - GUARD);
        } else {
            for (size_t b = 0; b < g->esize; b++)
                cr_assert_eq(e[b], SENTINEL, "%s: write outside the output at element %td", what,
                             (ptrdiff_t)i - GUARD);
        }
    }
}

// Only the guards unchanged (for buffers such as the KV cache that are read and written inside).
static void guarded_check_guards(const guarded *g, const char *what) {
    for (size_t i = 0; i < g->total; i++) {
        if (i >= GUARD && i < GUARD + g->rows * g->ld) continue;
        for (size_t b = 0; b < g->esize; b++)
            cr_assert_eq(g->base[i * g->esize + b], SENTINEL, "%s: write outside at element %td",
                         what, (ptrdiff_t)i - GUARD);
    }
}

static const mpk_bf16 BF16_UNSET = 0x7fc1;  // a NaN

static guarded guarded_bf16(size_t rows, size_t ld, size_t cols) {
    return guarded_new(sizeof(mpk_bf16), rows, ld, cols, &BF16_UNSET);
}

static void guarded_free(guarded *g) { free(g->base); }

// ‖out − ref‖² / ‖ref‖² over rows × cols; every output must be finite.
static double norm_error(const mpk_bf16 *out, size_t ld_out, const double *ref, size_t rows,
                         size_t cols, const char *what) {
    double num = 0, den = 0;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) {
            double v = bf(out[r * ld_out + c]), t = ref[r * cols + c];
            cr_assert(isfinite(v), "%s: output (%zu, %zu) is %g", what, r, c, v);
            num += (v - t) * (v - t);
            den += t * t;
        }
    cr_assert_gt(den, 0.0, "%s: reference is all zero", what);
    return num / den;
}

static void expect_close(const mpk_bf16 *out, size_t ld_out, const double *ref, size_t rows,
                         size_t cols, const char *what) {
    double err = norm_error(out, ld_out, ref, rows, cols, what);
    cr_assert_leq(err, BF16_BOUND, "%s: normalised error %.3g > %.1g", what, err, BF16_BOUND);
}

// ---- references --------------------------------------------------------------------------------

static double ref_rms_scale(const mpk_bf16 *x, int n, double eps) {
    double ss = 0;
    for (int k = 0; k < n; k++) ss += bf(x[k]) * bf(x[k]);
    return 1.0 / sqrt(ss / n + eps);
}

static double ref_silu(double g) { return g / (1.0 + exp(-g)); }

// ---- embed, rmsnorm, allreduce, silu_mul -----------------------------------------------------

Test(kernels, embed) {
    rng r = {1};
    const int vocab = 19, cols = 13, ld_w = 41, ld_out = 17, rows = 7;
    mpk_bf16 *w = random_bf16(&r, (size_t)vocab * ld_w, -2, 2);
    int32_t ids[7] = {3, 0, 18, -1, 19, 7, 3};
    guarded out = guarded_bf16(rows, ld_out, cols);
    mpk_bf16 *o = out.p;
    mpk_embed_cpu(ids, w + 5, o, rows, cols, ld_w, ld_out, vocab);
    guarded_check(&out, &BF16_UNSET, "embed");
    for (int i = 0; i < rows; i++)
        for (int c = 0; c < cols; c++) {
            mpk_bf16 want = ids[i] >= 0 && ids[i] < vocab ? w[ids[i] * ld_w + 5 + c] : 0;
            cr_assert_eq(o[i * ld_out + c], want, "embed row %d col %d", i, c);
        }
    guarded_free(&out);
    free(w);
}

Test(kernels, rmsnorm) {
    static const int shapes[][2] = {{1, 77}, {5, 77}, {3, 13}, {2, 1000}, {4, 4099}};
    rng r = {2};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], H = shapes[s][1], ld_x = H + 3, ld_out = H + 7;
        const float eps = 1e-6f;
        mpk_bf16 *x = random_bf16(&r, (size_t)rows * ld_x, -3, 3);
        mpk_bf16 *w = random_bf16(&r, (size_t)H, 0.5, 1.5);
        guarded out = guarded_bf16(rows, ld_out, H);
        mpk_rmsnorm_cpu(x, w, out.p, rows, H, ld_x, ld_out, eps);
        guarded_check(&out, &BF16_UNSET, "rmsnorm");
        double *ref = malloc(sizeof *ref * (size_t)rows * H);
        for (int i = 0; i < rows; i++) {
            double sc = ref_rms_scale(x + i * ld_x, H, eps);
            for (int k = 0; k < H; k++) ref[i * H + k] = bf(x[i * ld_x + k]) * sc * bf(w[k]);
        }
        expect_close(out.p, ld_out, ref, rows, H, "rmsnorm");
        free(ref);
        guarded_free(&out);
        free(x);
        free(w);
    }
}

Test(kernels, allreduce) {
    rng r = {3};
    const int rows = 5, n = 29, ld_in = 40, ld_out = 33;
    mpk_bf16 *x = random_bf16(&r, (size_t)rows * ld_in, -1, 1);
    guarded out = guarded_bf16(rows, ld_out, n);
    mpk_allreduce_cpu(x, out.p, rows, n, ld_in, ld_out);
    guarded_check(&out, &BF16_UNSET, "allreduce");
    const mpk_bf16 *o = out.p;
    for (int i = 0; i < rows; i++)
        cr_assert(memcmp(o + i * ld_out, x + i * ld_in, sizeof *o * n) == 0, "allreduce row %d", i);
    guarded_free(&out);
    free(x);
}

Test(kernels, silu_mul) {
    static const int shapes[][2] = {{1, 13}, {5, 77}, {3, 301}};
    rng r = {4};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], n = shapes[s][1], ld_in = 2 * n + 5, ld_out = n + 1;
        mpk_bf16 *in = random_bf16(&r, (size_t)rows * ld_in, -6, 6);
        guarded out = guarded_bf16(rows, ld_out, n);
        mpk_silu_mul_cpu(in, in + n, out.p, rows, n, ld_in, ld_out);
        guarded_check(&out, &BF16_UNSET, "silu_mul");
        double *ref = malloc(sizeof *ref * (size_t)rows * n);
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < n; j++)
                ref[i * n + j] = ref_silu(bf(in[i * ld_in + j])) * bf(in[i * ld_in + n + j]);
        expect_close(out.p, ld_out, ref, rows, n, "silu_mul");
        free(ref);
        guarded_free(&out);
        free(in);
    }
}

// ---- linear and the fused linears --------------------------------------------------------------

// rows, K, n: K above 8192 crosses the kernels' input chunk, n above 64 their column block.
static const int linear_shapes[][3] = {
    {1, 77, 13}, {5, 77, 13}, {3, 130, 33}, {2, 16, 1}, {7, 2100, 19}, {1, 4500, 70}, {2, 8300, 67},
};
#define NUM_LINEAR_SHAPES (sizeof linear_shapes / sizeof linear_shapes[0])

// ref[r, j] = sum_k x[r, k] w[j, k] (+ res[r, j]), x given as doubles (rows, K).
static double *ref_linear(const double *x, const mpk_bf16 *w, const mpk_bf16 *res, int rows,
                          int K, int n, int ld_w, int ld_res) {
    double *ref = malloc(sizeof *ref * (size_t)rows * n);
    cr_assert_not_null(ref);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < n; j++) {
            double s = res ? bf(res[i * ld_res + j]) : 0.0;
            for (int k = 0; k < K; k++) s += x[(size_t)i * K + k] * bf(w[(size_t)j * ld_w + k]);
            ref[i * n + j] = s;
        }
    return ref;
}

static double *rows_to_double(const mpk_bf16 *x, int rows, int K, int ld_x) {
    double *d = malloc(sizeof *d * (size_t)rows * K);
    cr_assert_not_null(d);
    for (int i = 0; i < rows; i++)
        for (int k = 0; k < K; k++) d[(size_t)i * K + k] = bf(x[(size_t)i * ld_x + k]);
    return d;
}

Test(kernels, linear) {
    rng r = {5};
    for (size_t s = 0; s < NUM_LINEAR_SHAPES; s++) {
        int rows = linear_shapes[s][0], K = linear_shapes[s][1], n = linear_shapes[s][2];
        int ld_x = K + 3, ld_w = K + 5, ld_out = n + 2;
        mpk_bf16 *x = random_bf16(&r, (size_t)rows * ld_x, -1, 1);
        mpk_bf16 *w = random_bf16(&r, (size_t)n * ld_w, -1, 1);
        guarded out = guarded_bf16(rows, ld_out, n);
        mpk_linear_cpu(x, w, out.p, rows, K, n, ld_x, ld_w, ld_out);
        guarded_check(&out, &BF16_UNSET, "linear");
        double *xd = rows_to_double(x, rows, K, ld_x);
        double *ref = ref_linear(xd, w, NULL, rows, K, n, ld_w, 0);
        expect_close(out.p, ld_out, ref, rows, n, "linear");
        free(ref);
        free(xd);
        guarded_free(&out);
        free(x);
        free(w);
    }
}

Test(kernels, linear_residual) {
    rng r = {6};
    for (size_t s = 0; s < NUM_LINEAR_SHAPES; s++) {
        int rows = linear_shapes[s][0], K = linear_shapes[s][1], n = linear_shapes[s][2];
        int ld_x = K + 1, ld_w = K, ld_res = n + 4, ld_out = n + 3;
        mpk_bf16 *x = random_bf16(&r, (size_t)rows * ld_x, -1, 1);
        mpk_bf16 *w = random_bf16(&r, (size_t)n * ld_w, -1, 1);
        mpk_bf16 *res = random_bf16(&r, (size_t)rows * ld_res, -4, 4);
        guarded out = guarded_bf16(rows, ld_out, n);
        mpk_linear_residual_cpu(x, w, res, out.p, rows, K, n, ld_x, ld_w, ld_res, ld_out);
        guarded_check(&out, &BF16_UNSET, "linear_residual");
        double *xd = rows_to_double(x, rows, K, ld_x);
        double *ref = ref_linear(xd, w, res, rows, K, n, ld_w, ld_res);
        expect_close(out.p, ld_out, ref, rows, n, "linear_residual");

        // In place (out == res), as the residual stream is updated: the same bits.
        mpk_linear_residual_cpu(x, w, res, res, rows, K, n, ld_x, ld_w, ld_res, ld_res);
        const mpk_bf16 *o = out.p;
        for (int i = 0; i < rows; i++)
            cr_assert(memcmp(res + i * ld_res, o + i * ld_out, sizeof *o * n) == 0,
                      "linear_residual in place differs, row %d", i);
        free(ref);
        free(xd);
        guarded_free(&out);
        free(x);
        free(w);
        free(res);
    }
}

Test(kernels, rmsnorm_linear) {
    rng r = {7};
    const float eps = 1e-5f;
    for (size_t s = 0; s < NUM_LINEAR_SHAPES; s++) {
        int rows = linear_shapes[s][0], K = linear_shapes[s][1], n = linear_shapes[s][2];
        int ld_x = K + 2, ld_w = K + 7, ld_out = n + 5;
        mpk_bf16 *x = random_bf16(&r, (size_t)rows * ld_x, -3, 3);
        mpk_bf16 *nw = random_bf16(&r, (size_t)K, 0.5, 1.5);
        mpk_bf16 *w = random_bf16(&r, (size_t)n * ld_w, -1, 1);
        guarded out = guarded_bf16(rows, ld_out, n);
        mpk_rmsnorm_linear_cpu(x, nw, w, out.p, rows, K, n, ld_x, ld_w, ld_out, eps);
        guarded_check(&out, &BF16_UNSET, "rmsnorm_linear");

        double *xn = malloc(sizeof *xn * (size_t)rows * K);
        for (int i = 0; i < rows; i++) {
            double sc = ref_rms_scale(x + i * ld_x, K, eps);
            for (int k = 0; k < K; k++)
                xn[(size_t)i * K + k] = bf(x[(size_t)i * ld_x + k]) * sc * bf(nw[k]);
        }
        double *ref = ref_linear(xn, w, NULL, rows, K, n, ld_w, 0);
        expect_close(out.p, ld_out, ref, rows, n, "rmsnorm_linear");

        // Fused == rmsnorm then linear, bit for bit.
        mpk_bf16 *tmp = malloc(sizeof *tmp * (size_t)rows * K);
        mpk_bf16 *unfused = malloc(sizeof *unfused * (size_t)rows * n);
        mpk_rmsnorm_cpu(x, nw, tmp, rows, K, ld_x, K, eps);
        mpk_linear_cpu(tmp, w, unfused, rows, K, n, K, ld_w, n);
        const mpk_bf16 *o = out.p;
        for (int i = 0; i < rows; i++)
            cr_assert(memcmp(unfused + i * n, o + i * ld_out, sizeof *o * n) == 0,
                      "rmsnorm_linear != rmsnorm + linear (rows %d K %d n %d), row %d", rows, K,
                      n, i);
        free(tmp);
        free(unfused);
        free(ref);
        free(xn);
        guarded_free(&out);
        free(x);
        free(nw);
        free(w);
    }
}

// RESIDUAL_RMSNORM_LINEAR == rmsnorm_linear of bf16(x + partials added in order), bit for bit,
// and the task's columns of that sum stored to x_out (nothing else).
Test(kernels, residual_rmsnorm_linear) {
    rng r = {17};
    const float eps = 1e-6f;
    const int shapes[][4] = {{1, 64, 24, 8}, {3, 200, 17, 3}, {5, 40, 9, 1}};  // rows, K, n, P
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], K = shapes[s][1], n = shapes[s][2], P = shapes[s][3];
        int ld_x = K + 3, ld_w = K + 1, ld_out = n + 2, ld_part = P * K + 5, ld_xo = K + 4;
        int c0 = K / 3, count = K / 4;
        mpk_bf16 *x = random_bf16(&r, (size_t)rows * ld_x, -3, 3);
        mpk_bf16 *nw = random_bf16(&r, (size_t)K, 0.5, 1.5);
        mpk_bf16 *w = random_bf16(&r, (size_t)n * ld_w, -1, 1);
        float *part = malloc(sizeof *part * (size_t)rows * ld_part);
        for (int i = 0; i < rows * ld_part; i++) part[i] = (float)rng_uniform(&r, -2, 2);
        guarded out = guarded_bf16(rows, ld_out, n);
        mpk_bf16 *xo = malloc(sizeof *xo * (size_t)rows * ld_xo);
        memset(xo, SENTINEL, sizeof *xo * (size_t)rows * ld_xo);
        mpk_residual_rmsnorm_linear_cpu(x, part, nw, w, out.p, xo, rows, K, n, ld_x, ld_w, ld_out, P,
                                        ld_part, ld_xo, c0, count, eps);
        guarded_check(&out, &BF16_UNSET, "residual_rmsnorm_linear");
        mpk_bf16 *sum = malloc(sizeof *sum * (size_t)rows * K);
        for (int i = 0; i < rows; i++)
            for (int k = 0; k < K; k++) {
                float v = mpk_bf16_to_f32(x[(size_t)i * ld_x + k]);
                for (int g = 0; g < P; g++) v += part[(size_t)i * ld_part + (size_t)g * K + k];
                sum[(size_t)i * K + k] = mpk_f32_to_bf16(v);
            }
        mpk_bf16 *want = malloc(sizeof *want * (size_t)rows * n);
        mpk_rmsnorm_linear_cpu(sum, nw, w, want, rows, K, n, K, ld_w, n, eps);
        const mpk_bf16 *o = out.p;
        mpk_bf16 sent;
        memset(&sent, SENTINEL, sizeof sent);
        for (int i = 0; i < rows; i++) {
            cr_assert(memcmp(want + (size_t)i * n, o + (size_t)i * ld_out, sizeof *o * n) == 0,
                      "residual_rmsnorm_linear != rmsnorm_linear of the sum (K %d P %d), row %d",
                      K, P, i);
            for (int k = 0; k < ld_xo; k++) {
                mpk_bf16 got = xo[(size_t)i * ld_xo + k];
                if (k >= c0 && k < c0 + count)
                    cr_assert_eq(got, sum[(size_t)i * K + k], "x_out row %d col %d", i, k);
                else
                    cr_assert_eq(got, sent, "x_out row %d col %d: outside the task's columns", i,
                                 k);
            }
        }
        free(want);
        free(sum);
        free(xo);
        guarded_free(&out);
        free(part);
        free(w);
        free(nw);
        free(x);
    }
}

Test(kernels, silu_mul_linear_residual) {
    rng r = {8};
    for (size_t s = 0; s < NUM_LINEAR_SHAPES; s++) {
        int rows = linear_shapes[s][0], I = linear_shapes[s][1], n = linear_shapes[s][2];
        int ld_in = 2 * I + 3, ld_w = I + 1, ld_res = n + 2, ld_out = n + 6;
        mpk_bf16 *in = random_bf16(&r, (size_t)rows * ld_in, -5, 5);
        mpk_bf16 *w = random_bf16(&r, (size_t)n * ld_w, -1, 1);
        mpk_bf16 *res = random_bf16(&r, (size_t)rows * ld_res, -2, 2);
        guarded out = guarded_bf16(rows, ld_out, n);
        mpk_silu_mul_linear_residual_cpu(in, w, res, out.p, rows, I, n, ld_in, ld_w, ld_res,
                                         ld_out);
        guarded_check(&out, &BF16_UNSET, "silu_mul_linear_residual");

        double *h = malloc(sizeof *h * (size_t)rows * I);
        for (int i = 0; i < rows; i++)
            for (int k = 0; k < I; k++)
                h[(size_t)i * I + k] = ref_silu(bf(in[(size_t)i * ld_in + k])) *
                                       bf(in[(size_t)i * ld_in + I + k]);
        double *ref = ref_linear(h, w, res, rows, I, n, ld_w, ld_res);
        expect_close(out.p, ld_out, ref, rows, n, "silu_mul_linear_residual");

        // Fused == silu_mul then linear_residual, bit for bit.
        mpk_bf16 *tmp = malloc(sizeof *tmp * (size_t)rows * I);
        mpk_bf16 *unfused = malloc(sizeof *unfused * (size_t)rows * n);
        mpk_silu_mul_cpu(in, in + I, tmp, rows, I, ld_in, I);
        mpk_linear_residual_cpu(tmp, w, res, unfused, rows, I, n, I, ld_w, ld_res, n);
        const mpk_bf16 *o = out.p;
        for (int i = 0; i < rows; i++)
            cr_assert(memcmp(unfused + i * n, o + i * ld_out, sizeof *o * n) == 0,
                      "silu_mul_linear_residual != silu_mul + linear_residual, row %d", i);
        free(tmp);
        free(unfused);
        free(ref);
        free(h);
        guarded_free(&out);
        free(in);
        free(w);
        free(res);
    }
}

// ---- argmax ------------------------------------------------------------------------------------

static int ref_argmax(const mpk_bf16 *l, int n) {
    int best = -1;
    for (int j = 0; j < n; j++) {
        double v = bf(l[j]);
        if (isnan(v)) continue;
        if (best < 0 || v > bf(l[best])) best = j;
    }
    return best < 0 ? 0 : best;
}

// Runs partial over chunks of `chunk` columns (the last one shorter) and reduce, as the graph
// does; returns the ids in out (rows).
static void run_argmax(const mpk_bf16 *logits, int rows, int V, int ld, int chunk, int32_t *out) {
    int P = (V + chunk - 1) / chunk, ld_part = P + 2;
    float unset_f = NAN;
    int32_t unset_i = INT32_MIN + 7;
    guarded val = guarded_new(sizeof(float), rows, ld_part, P, &unset_f);
    guarded idx = guarded_new(sizeof(int32_t), rows, ld_part, P, &unset_i);
    for (int p = 0; p < P; p++) {
        int n = V - p * chunk < chunk ? V - p * chunk : chunk;
        mpk_argmax_partial_cpu(logits + p * chunk, (float *)val.p + p, (int32_t *)idx.p + p, rows,
                               n, ld, ld_part, p * chunk);
    }
    guarded_check(&val, &unset_f, "argmax_partial values");
    guarded_check(&idx, &unset_i, "argmax_partial indices");
    guarded ids = guarded_new(sizeof(int32_t), 1, rows, rows, &unset_i);
    mpk_argmax_reduce_cpu(val.p, idx.p, ids.p, rows, P, ld_part);
    guarded_check(&ids, &unset_i, "argmax_reduce");
    memcpy(out, ids.p, sizeof *out * rows);
    guarded_free(&val);
    guarded_free(&idx);
    guarded_free(&ids);
}

Test(kernels, argmax_random) {
    static const int shapes[][3] = {{1, 1000, 77}, {5, 1013, 100}, {3, 13, 5}, {2, 77, 77}};
    rng r = {9};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], V = shapes[s][1], chunk = shapes[s][2], ld = V + 3;
        mpk_bf16 *l = random_bf16(&r, (size_t)rows * ld, -10, 10);
        int32_t out[8];
        run_argmax(l, rows, V, ld, chunk, out);
        for (int i = 0; i < rows; i++)
            cr_assert_eq(out[i], ref_argmax(l + i * ld, V), "argmax row %d (V %d)", i, V);
        free(l);
    }
}

Test(kernels, argmax_ties_and_nan) {
    const int V = 50, ld = 50, chunk = 16;
    mpk_bf16 l[5 * 50];
    const mpk_bf16 nan = mpk_f32_to_bf16(NAN), one = mpk_f32_to_bf16(1.0f);
    const mpk_bf16 ninf = mpk_f32_to_bf16(-INFINITY);
    for (int i = 0; i < 5 * 50; i++) l[i] = mpk_f32_to_bf16(-1.0f);
    // row 0: ties across chunks (ids 40, 21, 35): the lowest id wins.
    l[40] = l[21] = l[35] = one;
    // row 1: NaN everywhere in the first chunk and at a later spot; the max is at 30.
    for (int j = 0; j < 16; j++) l[50 + j] = nan;
    l[50 + 44] = nan;
    l[50 + 30] = mpk_f32_to_bf16(0.5f);
    // row 2: all NaN: id 0.
    for (int j = 0; j < V; j++) l[100 + j] = nan;
    // row 3: all -inf except NaN at 0: the lowest -inf, id 1.
    for (int j = 0; j < V; j++) l[150 + j] = ninf;
    l[150] = nan;
    // row 4: a tie inside one chunk (ids 3 and 9) and +inf-free values elsewhere.
    l[200 + 9] = l[200 + 3] = mpk_f32_to_bf16(7.0f);
    int32_t out[5];
    run_argmax(l, 5, V, ld, chunk, out);
    cr_assert_eq(out[0], 21);
    cr_assert_eq(out[1], 30);
    cr_assert_eq(out[2], 0);
    cr_assert_eq(out[3], 1);
    cr_assert_eq(out[4], 3);

    // An all-NaN chunk gives -inf and its first id.
    float v = 0;
    int32_t id = -1;
    mpk_argmax_partial_cpu(l + 100, &v, &id, 1, 16, ld, 1, 32);
    cr_assert(v == -INFINITY && id == 32, "all-NaN chunk gave %g at %d", v, id);
    // reduce: equal partial maxima listed out of id order still give the lowest id.
    float pv[3] = {2.0f, 2.0f, 1.0f};
    int32_t pi[3] = {90, 12, 3}, o = -1;
    mpk_argmax_reduce_cpu(pv, pi, &o, 1, 3, 3);
    cr_assert_eq(o, 12);
}

// ---- batch blobs ---------------------------------------------------------------------------------

static mpk_batch *batch_new(int max_tokens, int max_requests, int max_seq_len, int page_size,
                            int num_pages) {
    uint32_t bytes = mpk_batch_layout(NULL, max_tokens, max_requests, max_seq_len, page_size,
                                      num_pages);
    cr_assert_gt(bytes, 0u);
    mpk_batch *b = aligned_alloc(64, (bytes + 63u) & ~63u);
    cr_assert_not_null(b);
    memset(b, 0, bytes);
    mpk_batch_layout(b, max_tokens, max_requests, max_seq_len, page_size, num_pages);
    mpk_batch_reset(b);
    return b;
}

// Appends an entry for `slot` with rows at positions [pos0, pos0 + n).
static void batch_add(mpk_batch *b, int slot, int pos0, int n, int sample) {
    int e = b->num_entries++;
    for (int j = 0; j < n; j++) {
        mpk_batch_row_entry(b)[b->num_tokens + j] = e;
        mpk_batch_row_pos(b)[b->num_tokens + j] = pos0 + j;
    }
    b->num_tokens += n;
    mpk_batch_entry_slot(b)[e] = slot;
    mpk_batch_entry_kv_len(b)[e] = pos0 + n;
    mpk_batch_entry_sample(b)[e] = sample;
    mpk_batch_entry_row_begin(b)[e + 1] = b->num_tokens;
}

// ---- attention -----------------------------------------------------------------------------------

typedef struct attn_case {
    int G, D;
    int q_norm, k_norm, rope;
    int hist_a;  // request A (slot 2): one decode row at position hist_a
    int hist_b;  // request B (slot 0): a prefill chunk at positions [hist_b, hist_b + rows_b)
    int rows_b;
    int page_size;
} attn_case;

// Norm and RoPE of one head in double, as documented in kernels.h.
static void ref_head(const mpk_bf16 *x, const mpk_bf16 *nw, const float *inv_freq, int pos, int D,
                     double eps, double *dst) {
    double t[MPK_ATTENTION_MAX_HEAD_DIM];
    double sc = nw ? ref_rms_scale(x, D, eps) : 1.0;
    for (int d = 0; d < D; d++) t[d] = bf(x[d]) * sc * (nw ? bf(nw[d]) : 1.0);
    for (int d = 0; d < D; d++) dst[d] = t[d];
    if (!inv_freq) return;
    for (int i = 0; i < D / 2; i++) {
        double a = (double)pos * (double)inv_freq[i], c = cos(a), s = sin(a);
        dst[i] = t[i] * c - t[i + D / 2] * s;
        dst[i + D / 2] = t[i + D / 2] * c + t[i] * s;
    }
}

static void run_attention_case(const attn_case *ac, uint64_t seed) {
    rng r = {seed};
    const int G = ac->G, D = ac->D, ps = ac->page_size;
    const int len_a = ac->hist_a + 1, len_b = ac->hist_b + ac->rows_b;
    const int rows = 1 + ac->rows_b, max_seq = 200;
    const int pages_a = (len_a + ps - 1) / ps, pages_b = (len_b + ps - 1) / ps;
    const int num_pages = pages_a + pages_b + 3;  // 3 pages nobody owns
    const int64_t page_stride = (int64_t)ps * D + 7;  // a gap after each page's rows
    const int ld_qkv = (G + 2) * D * 2 + 3, col0 = (G + 2) * D + 1;  // the group sits mid-row
    const int ld_out = G * D + 5;
    const float eps = 1e-6f, scale = 1.0f / sqrtf((float)D);
    cr_assert(len_a <= max_seq && len_b <= max_seq && D <= MPK_ATTENTION_MAX_HEAD_DIM);

    // Two requests in a paged cache: pages handed out in a scrambled order.
    mpk_batch *b = batch_new(rows, 3, max_seq, ps, num_pages);
    int *perm = malloc(sizeof *perm * num_pages);
    for (int i = 0; i < num_pages; i++) perm[i] = i;
    for (int i = num_pages - 1; i > 0; i--) {
        int j = (int)(rng_next(&r) % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int32_t *pt_a = mpk_batch_page_table(b) + 2 * b->max_pages_per_request;
    int32_t *pt_b = mpk_batch_page_table(b);
    for (int i = 0; i < pages_a; i++) pt_a[i] = perm[i];
    for (int i = 0; i < pages_b; i++) pt_b[i] = perm[pages_a + i];
    batch_add(b, 2, ac->hist_a, 1, 1);
    batch_add(b, 0, ac->hist_b, ac->rows_b, 1);

    // The cache: sentinel everywhere, then the history of both requests.
    size_t cache_n = (size_t)num_pages * page_stride;
    guarded kc = guarded_bf16(1, cache_n, cache_n), vc = guarded_bf16(1, cache_n, cache_n);
    mpk_bf16 *k_cache = kc.p, *v_cache = vc.p;
    memset(k_cache, SENTINEL, sizeof *k_cache * cache_n);
    memset(v_cache, SENTINEL, sizeof *v_cache * cache_n);
    const int hist[2] = {ac->hist_a, ac->hist_b};
    const int32_t *pts[2] = {pt_a, pt_b};
    for (int q = 0; q < 2; q++)
        for (int p = 0; p < hist[q]; p++) {
            size_t off = (size_t)pts[q][p / ps] * page_stride + (size_t)(p % ps) * D;
            fill_bf16(&r, k_cache + off, D, -1, 1);
            fill_bf16(&r, v_cache + off, D, -1, 1);
        }
    mpk_bf16 *k_before = malloc(sizeof *k_before * cache_n);
    mpk_bf16 *v_before = malloc(sizeof *v_before * cache_n);
    memcpy(k_before, k_cache, sizeof *k_before * cache_n);
    memcpy(v_before, v_cache, sizeof *v_before * cache_n);

    mpk_bf16 *qkv = random_bf16(&r, (size_t)rows * ld_qkv, -2, 2);
    mpk_bf16 *qn = ac->q_norm ? random_bf16(&r, D, 0.5, 1.5) : NULL;
    mpk_bf16 *kn = ac->k_norm ? random_bf16(&r, D, 0.5, 1.5) : NULL;
    float inv_freq[MPK_ATTENTION_MAX_HEAD_DIM / 2];
    for (int i = 0; i < D / 2; i++) inv_freq[i] = powf(1000.0f, -2.0f * i / D);
    guarded out = guarded_bf16(rows, ld_out, G * D);

    mpk_attention_cpu(qkv + col0, k_cache, v_cache, qn, kn, ac->rope ? inv_freq : NULL, out.p, b,
                      G, D, ld_qkv, ld_out, ps, page_stride, eps, scale, NULL);
    guarded_check(&out, &BF16_UNSET, "attention output");

    // Reference keys and values of every position of both requests, in double.
    double *keys[2], *vals[2];
    const int lens[2] = {len_a, len_b}, row0[2] = {0, 1};
    double *k_new = malloc(sizeof *k_new * (size_t)rows * D);  // reference k of each row
    for (int q = 0; q < 2; q++) {
        keys[q] = malloc(sizeof(double) * (size_t)lens[q] * D);
        vals[q] = malloc(sizeof(double) * (size_t)lens[q] * D);
        for (int p = 0; p < lens[q]; p++) {
            double *kd = keys[q] + (size_t)p * D, *vd = vals[q] + (size_t)p * D;
            if (p < hist[q]) {
                size_t off = (size_t)pts[q][p / ps] * page_stride + (size_t)(p % ps) * D;
                for (int d = 0; d < D; d++) kd[d] = bf(k_before[off + d]);
                for (int d = 0; d < D; d++) vd[d] = bf(v_before[off + d]);
            } else {
                int row = row0[q] + p - hist[q];
                const mpk_bf16 *kx = qkv + (size_t)row * ld_qkv + col0 + (size_t)G * D;
                ref_head(kx, kn, ac->rope ? inv_freq : NULL, p, D, eps, kd);
                memcpy(k_new + (size_t)row * D, kd, sizeof *kd * D);
                for (int d = 0; d < D; d++) vd[d] = bf(kx[D + d]);
            }
        }
    }

    // The cache: new positions hold k (within bf16 error) and v (exactly); nothing else moved.
    mpk_bf16 *k_got = malloc(sizeof *k_got * (size_t)rows * D);
    unsigned char *written = calloc(cache_n, 1);
    for (int row = 0; row < rows; row++) {
        int q = row == 0 ? 0 : 1, p = mpk_batch_row_pos(b)[row];
        size_t off = (size_t)pts[q][p / ps] * page_stride + (size_t)(p % ps) * D;
        const mpk_bf16 *vx = qkv + (size_t)row * ld_qkv + col0 + (size_t)(G + 1) * D;
        memcpy(k_got + (size_t)row * D, k_cache + off, sizeof *k_got * D);
        cr_assert(memcmp(v_cache + off, vx, sizeof *vx * D) == 0, "v cache of row %d", row);
        memset(written + off, 1, D);
    }
    expect_close(k_got, D, k_new, rows, D, "attention k cache");
    for (size_t i = 0; i < cache_n; i++)
        if (!written[i])
            cr_assert(k_cache[i] == k_before[i] && v_cache[i] == v_before[i],
                      "cache element %zu changed", i);
    guarded_check_guards(&kc, "k cache");
    guarded_check_guards(&vc, "v cache");

    // The outputs: softmax(q . k * scale) v over [0, pos] per row and query head.
    double *ref = malloc(sizeof *ref * (size_t)rows * G * D);
    double *sc = malloc(sizeof *sc * max_seq);
    for (int row = 0; row < rows; row++) {
        int q = row == 0 ? 0 : 1, pos = mpk_batch_row_pos(b)[row];
        for (int g = 0; g < G; g++) {
            double qd[MPK_ATTENTION_MAX_HEAD_DIM];
            ref_head(qkv + (size_t)row * ld_qkv + col0 + (size_t)g * D, qn,
                     ac->rope ? inv_freq : NULL, pos, D, eps, qd);
            double m = -INFINITY, sum = 0;
            for (int t = 0; t <= pos; t++) {
                double s = 0;
                for (int d = 0; d < D; d++) s += qd[d] * keys[q][(size_t)t * D + d];
                sc[t] = s * scale;
                if (sc[t] > m) m = sc[t];
            }
            for (int t = 0; t <= pos; t++) sum += (sc[t] = exp(sc[t] - m));
            double *o = ref + ((size_t)row * G + g) * D;
            for (int d = 0; d < D; d++) {
                double acc = 0;
                for (int t = 0; t <= pos; t++) acc += sc[t] * vals[q][(size_t)t * D + d];
                o[d] = acc / sum;
            }
        }
    }
    expect_close(out.p, ld_out, ref, rows, G * D, "attention output");

    // ATTENTION_LINEAR on the same inputs: the attention's bf16 outputs times a slice of W_o, in
    // fp32. The task that appends leaves the cache exactly as mpk_attention_cpu did; one that does
    // not (it recomputes this batch's keys from qkv) leaves the cache untouched and gives the same
    // partial sums bit for bit.
    if ((int64_t)rows * G * D * 2 <= MPK_ATTENTION_LINEAR_MAX_ROW_BYTES) {
        const int n = 13, ld_w = G * D + 9, ld_part = n + 3;
        mpk_bf16 *w = random_bf16(&r, (size_t)n * ld_w, -1, 1);
        float *part[2];
        mpk_bf16 *kc2 = malloc(sizeof *kc2 * cache_n), *vc2 = malloc(sizeof *vc2 * cache_n);
        for (int append = 1; append >= 0; append--) {
            memcpy(kc2, k_before, sizeof *kc2 * cache_n);
            memcpy(vc2, v_before, sizeof *vc2 * cache_n);
            part[append] = malloc(sizeof(float) * (size_t)rows * ld_part);
            for (int i = 0; i < rows * ld_part; i++) part[append][i] = NAN;
            mpk_attention_linear_cpu(qkv + col0, kc2, vc2, qn, kn, ac->rope ? inv_freq : NULL, w,
                                     part[append], b, G, D, ld_qkv, ld_w, ps, page_stride, 1, n,
                                     ld_part, eps, scale, append);
            cr_assert(memcmp(kc2, append ? k_cache : k_before, sizeof *kc2 * cache_n) == 0 &&
                          memcmp(vc2, append ? v_cache : v_before, sizeof *vc2 * cache_n) == 0,
                      "attention_linear (append %d) left the cache differently", append);
        }
        for (int row = 0; row < rows; row++)
            for (int j = 0; j < n; j++) {
                double want = 0;
                const mpk_bf16 *heads = (const mpk_bf16 *)out.p + (size_t)row * ld_out;
                for (int k = 0; k < G * D; k++) want += bf(heads[k]) * bf(w[(size_t)j * ld_w + k]);
                float got = part[1][(size_t)row * ld_part + j];
                cr_assert(fabs(got - want) <= 1e-4 * (1 + fabs(want)),
                          "attention_linear row %d col %d: %g, want %g", row, j, got, want);
            }
        for (int row = 0; row < rows; row++)
            cr_assert(memcmp(part[0] + (size_t)row * ld_part, part[1] + (size_t)row * ld_part,
                             sizeof(float) * n) == 0,
                      "attention_linear: the task that does not append differs (row %d)", row);
        free(part[0]);
        free(part[1]);
        free(kc2);
        free(vc2);
        free(w);
    }

    free(sc);
    free(ref);
    free(written);
    free(k_got);
    free(k_new);
    for (int q = 0; q < 2; q++) {
        free(keys[q]);
        free(vals[q]);
    }
    free(qkv);
    free(qn);
    free(kn);
    free(k_before);
    free(v_before);
    guarded_free(&out);
    guarded_free(&kc);
    guarded_free(&vc);
    free(perm);
    free(b);
}

Test(kernels, attention_norm_rope_gqa) {
    attn_case c = {3, 24, 1, 1, 1, 20, 5, 7, 3};
    run_attention_case(&c, 100);
}

Test(kernels, attention_plain) {
    attn_case c = {2, 40, 0, 0, 0, 13, 4, 6, 5};
    run_attention_case(&c, 101);
}

Test(kernels, attention_rope_only) {
    attn_case c = {1, 64, 0, 0, 1, 9, 0, 11, 4};  // B is a first prefill chunk (no history)
    run_attention_case(&c, 102);
}

Test(kernels, attention_norm_only) {
    attn_case c = {4, 18, 1, 1, 0, 2, 7, 3, 3};
    run_attention_case(&c, 103);
}

Test(kernels, attention_long) {
    attn_case c = {2, 128, 1, 1, 1, 150, 61, 9, 16};  // spans several blocks of 64 scores
    run_attention_case(&c, 104);
}

// ---- attention split over positions ---------------------------------------------------------------

// One decode row at position pos attended by S splits (run in a scrambled order, as workers may)
// against the whole attention: same cache afterwards, the output within bf16 error of the whole
// one (the splits sum in another order), the ticket back at 0. Below the split threshold the
// splits other than 0 must leave the output alone and split 0 must give the whole attention.
static void run_attention_split(int G, int D, int pos, int S, uint64_t seed) {
    rng r = {seed};
    const int ps = 16, max_seq = pos + 1, pages = (pos + ps) / ps + 2;
    const int64_t page_stride = (int64_t)ps * D;
    const int ld_qkv = (G + 2) * D, ld_out = G * D;
    const float eps = 1e-6f, scale = 1.0f / sqrtf((float)D);
    mpk_batch *b = batch_new(1, 1, max_seq, ps, pages);
    int32_t *pt = mpk_batch_page_table(b);
    for (int i = 0; i < (pos + ps) / ps; i++) pt[i] = pages - 1 - i;  // pages in reverse order
    batch_add(b, 0, pos, 1, 1);
    const size_t cache_n = (size_t)pages * page_stride;
    mpk_bf16 *kc[2], *vc[2];
    for (int i = 0; i < 2; i++) {
        kc[i] = malloc(sizeof(mpk_bf16) * cache_n);
        vc[i] = malloc(sizeof(mpk_bf16) * cache_n);
    }
    fill_bf16(&r, kc[0], cache_n, -1, 1);
    fill_bf16(&r, vc[0], cache_n, -1, 1);
    memcpy(kc[1], kc[0], sizeof(mpk_bf16) * cache_n);
    memcpy(vc[1], vc[0], sizeof(mpk_bf16) * cache_n);
    mpk_bf16 *qkv = random_bf16(&r, (size_t)ld_qkv, -2, 2);
    mpk_bf16 *qn = random_bf16(&r, D, 0.5, 1.5), *kn = random_bf16(&r, D, 0.5, 1.5);
    float inv_freq[MPK_ATTENTION_MAX_HEAD_DIM / 2];
    for (int i = 0; i < D / 2; i++) inv_freq[i] = powf(1000.0f, -2.0f * i / D);
    guarded whole = guarded_bf16(1, ld_out, G * D), split = guarded_bf16(1, ld_out, G * D);

    mpk_attention_cpu(qkv, kc[0], vc[0], qn, kn, inv_freq, whole.p, b, G, D, ld_qkv, ld_out, ps,
                      page_stride, eps, scale, NULL);
    const int64_t wsn = MPK_ATTENTION_SPLIT_WS_FLOATS(S, G, D);
    float *ws = calloc((size_t)wsn, sizeof *ws);
    int t0, t1;
    const int splits = mpk_attention_split_range(S, 0, 1, pos, &t0, &t1);
    int arrived = 0;
    cr_assert(splits == 0 || (splits >= 2 && splits <= S && splits == ((pos + 1) / 64 < S ? (pos + 1) / 64 : S)),
              "%d active splits at %d positions, S = %d", splits, pos + 1, S);
    for (int i = 0; i < S; i++) {
        const int s = (int)((i * 5 + 3) % S);  // (5 is prime to the S used below)
        mpk_attention_split sp = {s, S, ws};
        mpk_bf16 before[MPK_ATTENTION_MAX_HEAD_DIM * 8];
        cr_assert(G * D <= (int)(sizeof before / sizeof before[0]));
        memcpy(before, split.p, sizeof(mpk_bf16) * G * D);
        mpk_attention_cpu(qkv, kc[1], vc[1], qn, kn, inv_freq, split.p, b, G, D, ld_qkv, ld_out,
                          ps, page_stride, eps, scale, &sp);
        if (splits ? s >= splits : s != 0)
            cr_assert(memcmp(before, split.p, sizeof(mpk_bf16) * G * D) == 0,
                      "split %d, which has nothing to do, wrote", s);
        if (s < splits && ++arrived < splits)
            cr_assert(memcmp(before, split.p, sizeof(mpk_bf16) * G * D) == 0,
                      "split %d wrote before the last arrival", s);
    }
    guarded_check(&split, &BF16_UNSET, "split attention output");
    cr_assert(memcmp(kc[0], kc[1], sizeof(mpk_bf16) * cache_n) == 0 &&
                  memcmp(vc[0], vc[1], sizeof(mpk_bf16) * cache_n) == 0,
              "the splits left the cache differently from the whole attention");
    cr_assert_eq(*(uint32_t *)ws, 0u, "the ticket is back at 0");
    double ref[MPK_ATTENTION_MAX_HEAD_DIM * 8];
    cr_assert(G * D <= (int)(sizeof ref / sizeof ref[0]));
    const mpk_bf16 *w = whole.p;
    for (int c = 0; c < G * D; c++) ref[c] = bf(w[c]);
    if (splits) expect_close(split.p, ld_out, ref, 1, G * D, "split attention against the whole");
    else cr_assert(memcmp(split.p, whole.p, sizeof(mpk_bf16) * G * D) == 0, "split 0 alone is the whole attention");
    for (int i = 0; i < 2; i++) {
        free(kc[i]);
        free(vc[i]);
    }
    free(ws);
    free(qkv);
    free(qn);
    free(kn);
    guarded_free(&whole);
    guarded_free(&split);
    free(b);
}

Test(kernels, attention_split_over_positions) {
    run_attention_split(2, 128, 8 * 64 - 1, 8, 110);  // exactly S * 64 positions: all 8 splits attend
    run_attention_split(2, 128, 700, 8, 111);         // the last split shorter than the others
    run_attention_split(4, 64, 1500, 16, 112);
    run_attention_split(1, 40, 300, 3, 113);          // odd S and head size, G = 1
    run_attention_split(2, 128, 127, 8, 116);         // 128 positions: 2 of the 8 splits attend
    run_attention_split(2, 64, 8 * 64 - 2, 8, 117);   // 7 of 8
}

Test(kernels, attention_split_below_threshold) {
    run_attention_split(2, 128, 126, 8, 114);  // one position short of two splits: split 0 does it all
    run_attention_split(2, 64, 5, 4, 115);
}

// ---- sampling ------------------------------------------------------------------------------------

// A batch of `rows` single-row decode entries, one per slot, all sampled, at position `pos`.
static mpk_batch *sampling_batch(int rows, int pos, float temperature, int top_k, float top_p,
                                 uint64_t seed) {
    mpk_batch *b = batch_new(rows, rows, pos + 2, 16, 64);
    for (int s = 0; s < rows; s++) {
        mpk_request_state *rq = &mpk_batch_requests(b)[s];
        rq->state = MPK_REQ_ACTIVE;
        rq->temperature = temperature;
        rq->top_k = top_k;
        rq->top_p = top_p;
        rq->seed = seed + (uint64_t)s;
        batch_add(b, s, pos, 1, 1);
    }
    return b;
}

// The documented algorithm in double. Returns the id; *margin is how close the draw or the top-p
// cut came to a boundary (where float and double may rightly disagree).
static int ref_sample(const mpk_bf16 *l, int V, double temperature, int top_k, double top_p,
                      double u, double *margin) {
    int *order = malloc(sizeof *order * V);
    double *z = malloc(sizeof *z * V);
    for (int j = 0; j < V; j++) {
        order[j] = j;
        z[j] = bf(l[j]) / temperature;
    }
    // Insertion sort by z descending, index ascending (V is small in these tests).
    for (int i = 1; i < V; i++)
        for (int j = i; j > 0; j--) {
            int a = order[j - 1], c = order[j];
            if (z[c] > z[a] || (z[c] == z[a] && c < a)) {
                order[j - 1] = c;
                order[j] = a;
            } else {
                break;
            }
        }
    int k = top_k <= 0 || top_k >= V ? V : top_k;
    double sum = 0, *p = malloc(sizeof *p * k);
    for (int i = 0; i < k; i++) sum += (p[i] = exp(z[order[i]] - z[order[0]]));
    for (int i = 0; i < k; i++) p[i] /= sum;
    int kept = k;
    *margin = 1.0;
    if (top_p < 1.0) {
        double c = 0;
        for (kept = 0; kept < k;) {
            c += p[kept++];
            if (fabs(c - top_p) < *margin) *margin = fabs(c - top_p);
            if (c >= top_p) break;
        }
    }
    double total = 0;
    for (int i = 0; i < kept; i++) total += p[i];
    double target = u * total, c = 0;
    int id = order[kept - 1];
    for (int i = 0; i < kept; i++) {
        c += p[i];
        if (fabs(c - target) < *margin) *margin = fabs(c - target);
        if (target < c) {
            id = order[i];
            break;
        }
    }
    free(order);
    free(z);
    free(p);
    return id;
}

// Draws from one row of logits with settings (t, top_k, top_p) for `trials` seeds and returns
// the counts per id (V entries).
static void sample_counts(const mpk_bf16 *l, int V, float t, int top_k, float top_p, int trials,
                          int *counts) {
    const int rows = 50;
    mpk_bf16 *logits = malloc(sizeof *logits * rows * V);
    for (int i = 0; i < rows; i++) memcpy(logits + i * V, l, sizeof *l * V);
    int32_t out[50];
    memset(counts, 0, sizeof *counts * V);
    for (int t0 = 0; t0 < trials; t0 += rows) {
        mpk_batch *b = sampling_batch(rows, 11, t, top_k, top_p, 1000u + (uint64_t)t0);
        mpk_sampling_cpu(logits, out, b, 0, rows, V, V);
        for (int i = 0; i < rows; i++) {
            cr_assert(out[i] >= 0 && out[i] < V);
            counts[out[i]]++;
        }
        free(b);
    }
    free(logits);
}

// Pearson's chi-square of counts against probabilities p (zero-probability ids must not occur).
static double chi_square(const int *counts, const double *p, int V, int trials) {
    double chi = 0;
    for (int j = 0; j < V; j++) {
        if (p[j] == 0) {
            cr_assert_eq(counts[j], 0, "id %d has probability 0 but was drawn", j);
            continue;
        }
        double e = p[j] * trials;
        chi += (counts[j] - e) * (counts[j] - e) / e;
    }
    return chi;
}

Test(kernels, sampling_greedy_cases) {
    rng r = {11};
    const int V = 1013, rows = 4, ld = V + 9;
    mpk_bf16 *l = random_bf16(&r, (size_t)rows * ld, -8, 8);
    l[2 * ld + 500] = l[2 * ld + 17] = mpk_f32_to_bf16(9.0f);  // a tie: 17 wins
    int32_t unset = -12345;
    // temperature 0 and temperature > 0 with top_k 1 are both argmax.
    const float temps[2] = {0.0f, 0.7f};
    const int top_ks[2] = {50, 1};
    for (int c = 0; c < 2; c++) {
        mpk_batch *b = sampling_batch(rows, 30, temps[c], top_ks[c], 0.9f, 5);
        guarded out = guarded_new(sizeof(int32_t), 1, rows, rows, &unset);
        mpk_sampling_cpu(l, out.p, b, 0, rows, V, ld);
        guarded_check(&out, &unset, "sampling");
        for (int i = 0; i < rows; i++)
            cr_assert_eq(((int32_t *)out.p)[i], ref_argmax(l + i * ld, V), "case %d row %d", c, i);
        guarded_free(&out);
        free(b);
    }
    free(l);
}

Test(kernels, sampling_matches_reference_and_is_deterministic) {
    rng r = {12};
    const int V = 300, rows = 50;
    mpk_bf16 *row = random_bf16(&r, V, -4, 4);
    mpk_bf16 *l = malloc(sizeof *l * rows * V);
    for (int i = 0; i < rows; i++) memcpy(l + i * V, row, sizeof *row * V);
    static const struct {
        float t;
        int k;
        float p;
    } settings[] = {{1.0f, 0, 1.0f}, {0.8f, 40, 1.0f}, {1.3f, 0, 0.7f}, {0.6f, 25, 0.9f}};
    int compared = 0;
    for (size_t s = 0; s < sizeof settings / sizeof settings[0]; s++) {
        for (int rep = 0; rep < 4; rep++) {
            mpk_batch *b = sampling_batch(rows, 17 + rep, settings[s].t, settings[s].k,
                                          settings[s].p, 77u * (rep + 1));
            int32_t out[50], again[50];
            mpk_sampling_cpu(l, out, b, 0, rows, V, V);
            mpk_sampling_cpu(l, again, b, 0, rows, V, V);
            cr_assert(memcmp(out, again, sizeof out) == 0, "equal seeds gave different tokens");
            for (int i = 0; i < rows; i++) {
                const mpk_request_state *rq = &mpk_batch_requests(b)[i];
                double margin, u = mpk_sample_uniform(rq->seed, 17 + rep);
                int want = ref_sample(row, V, settings[s].t, settings[s].k, settings[s].p, u,
                                      &margin);
                if (margin < 1e-5) continue;  // too close to a boundary for float vs double
                compared++;
                cr_assert_eq(out[i], want, "setting %zu rep %d row %d", s, rep, i);
            }
            free(b);
        }
    }
    cr_assert_gt(compared, 700, "only %d draws compared", compared);
    free(l);
    free(row);
}

// Frequencies over many seeds follow softmax(logits / t) on a vocabulary of 5. With 4 degrees of
// freedom chi-square exceeds 25 with probability about 5e-5, so the test is not flaky, while a
// wrong temperature or an off-by-one in the walk gives chi-square in the hundreds.
Test(kernels, sampling_frequencies) {
    const float logits[5] = {1.0f, 0.5f, 0.0f, -0.5f, 2.0f};
    mpk_bf16 l[5];
    for (int j = 0; j < 5; j++) l[j] = mpk_f32_to_bf16(logits[j]);
    const int trials = 20000;
    int counts[5];
    double p[5], sum = 0;
    const double t = 1.3;
    for (int j = 0; j < 5; j++) sum += (p[j] = exp(logits[j] / t));
    for (int j = 0; j < 5; j++) p[j] /= sum;
    sample_counts(l, 5, (float)t, 0, 1.0f, trials, counts);
    double chi = chi_square(counts, p, 5, trials);
    cr_assert_lt(chi, 25.0, "chi-square %.1f (counts %d %d %d %d %d)", chi, counts[0], counts[1],
                 counts[2], counts[3], counts[4]);

    // top_k = 2 keeps ids 4 and 0, renormalised (1 degree of freedom: 25 is again ~1e-6).
    double pk[5] = {0};
    pk[4] = exp(2.0 / t) / (exp(2.0 / t) + exp(1.0 / t));
    pk[0] = 1 - pk[4];
    sample_counts(l, 5, (float)t, 2, 1.0f, trials, counts);
    chi = chi_square(counts, pk, 5, trials);
    cr_assert_lt(chi, 25.0, "top_k chi-square %.1f", chi);
}

// top_p cuts the tail: probabilities 0.5, 0.3, 0.15, 0.05 (ids 2, 0, 3, 1) with top_p 0.7 keep
// ids 2 and 0 in proportion 5:3; top_p 0.85 keeps three; a tiny top_p is argmax.
Test(kernels, sampling_top_p) {
    const double probs[4] = {0.3, 0.05, 0.5, 0.15};
    mpk_bf16 l[4];
    for (int j = 0; j < 4; j++) l[j] = mpk_f32_to_bf16((float)log(probs[j]));
    double lp[4], sum = 0;  // the probabilities of the rounded logits
    for (int j = 0; j < 4; j++) sum += (lp[j] = exp(bf(l[j])));
    for (int j = 0; j < 4; j++) lp[j] /= sum;
    const int trials = 20000;
    int counts[4];

    sample_counts(l, 4, 1.0f, 0, 0.7f, trials, counts);
    double p2[4] = {lp[0] / (lp[0] + lp[2]), 0, lp[2] / (lp[0] + lp[2]), 0};
    double chi = chi_square(counts, p2, 4, trials);
    cr_assert_lt(chi, 25.0, "top_p 0.7 chi-square %.1f", chi);

    sample_counts(l, 4, 1.0f, 0, 0.85f, trials, counts);
    double s3 = lp[0] + lp[2] + lp[3];
    double p3[4] = {lp[0] / s3, 0, lp[2] / s3, lp[3] / s3};
    chi = chi_square(counts, p3, 4, trials);
    cr_assert_lt(chi, 25.0, "top_p 0.85 chi-square %.1f", chi);

    sample_counts(l, 4, 1.0f, 0, 0.01f, 500, counts);
    cr_assert_eq(counts[2], 500);
}

// Only the last row of a sampled entry is written, and only inside [row_begin, row_end).
Test(kernels, sampling_rows) {
    rng r = {13};
    const int V = 77;
    mpk_batch *b = batch_new(8, 3, 64, 16, 8);
    for (int s = 0; s < 3; s++) {
        mpk_request_state *rq = &mpk_batch_requests(b)[s];
        rq->temperature = 0.9f;
        rq->top_k = 10;
        rq->top_p = 0.95f;
        rq->seed = 42u + (uint64_t)s;
    }
    batch_add(b, 1, 0, 3, 1);  // rows 0-2, prompt done: row 2 sampled
    batch_add(b, 0, 5, 3, 0);  // rows 3-5, a prefill chunk that is not finished: none
    batch_add(b, 2, 9, 1, 1);  // row 6
    mpk_bf16 *l = random_bf16(&r, (size_t)7 * V, -3, 3);
    int32_t unset = -7;
    guarded out = guarded_new(sizeof(int32_t), 1, 7, 7, &unset);
    int32_t *o = out.p;
    mpk_sampling_cpu(l, o, b, 3, 7, V, V);  // rows 3..6 only
    for (int i = 0; i < 6; i++) cr_assert_eq(o[i], unset, "row %d written", i);
    cr_assert(o[6] >= 0 && o[6] < V);
    mpk_sampling_cpu(l, o, b, 0, 3, V, V);
    cr_assert(o[2] >= 0 && o[2] < V);
    for (int i = 0; i < 6; i++)
        if (i != 2) cr_assert_eq(o[i], unset, "row %d written", i);
    o[0] = o[1] = o[3] = o[4] = o[5] = 0;  // so that guarded_check sees the whole row written
    guarded_check(&out, &unset, "sampling rows");
    guarded_free(&out);
    free(l);
    free(b);
}

// NaN logits are never drawn, greedy or sampled.
Test(kernels, sampling_nan) {
    const float logits[5] = {NAN, 1.0f, NAN, 0.5f, NAN};
    mpk_bf16 l[5];
    for (int j = 0; j < 5; j++) l[j] = mpk_f32_to_bf16(logits[j]);
    int counts[5];
    sample_counts(l, 5, 1.0f, 0, 1.0f, 2000, counts);
    cr_assert(counts[0] == 0 && counts[2] == 0 && counts[4] == 0, "a NaN logit was drawn");
    cr_assert(counts[1] > counts[3] && counts[3] > 0, "counts %d %d", counts[1], counts[3]);
    sample_counts(l, 5, 0.0f, 0, 1.0f, 50, counts);
    cr_assert_eq(counts[1], 50);
}
