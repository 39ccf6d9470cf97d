// rmsnorm_linear.c — RMSNORM_LINEAR on the CPU (the oracle): each task recomputes the RMS norm of
// its input rows and multiplies the bf16-rounded normalised row by its slice of the weight, so
// the result equals rmsnorm followed by linear bit for bit.
#include "matvec.h"

typedef struct norm_rows {
    const mpk_bf16 *x;       // (rows, ld_x)
    const mpk_bf16 *norm_w;  // (K)
    int32_t ld_x, K;
    float eps;
    float scale;             // of the row begun last
} norm_rows;

static void norm_begin(void *ctx, int32_t r) {
    norm_rows *p = ctx;
    p->scale = mpk_cpu_rms_scale(p->x + (int64_t)r * p->ld_x, p->K, p->eps);
}

static void norm_load(void *ctx, int32_t r, int32_t k0, int32_t len, float *dst) {
    const norm_rows *p = ctx;
    const mpk_bf16 *src = p->x + (int64_t)r * p->ld_x + k0;
    const mpk_bf16 *w = p->norm_w + k0;
    for (int32_t k = 0; k < len; k++) dst[k] = mpk_cpu_rms_elem(src[k], p->scale, w[k]);
}

void mpk_rmsnorm_linear_cpu(const mpk_bf16 *x, const mpk_bf16 *norm_w, const mpk_bf16 *w,
                            mpk_bf16 *out, int32_t rows, int32_t K, int32_t n, int32_t ld_x,
                            int32_t ld_w, int32_t ld_out, float eps) {
    norm_rows p = {x, norm_w, ld_x, K, eps, 0.0f};
    mpk_cpu_rows src = {norm_begin, norm_load, &p};
    mpk_cpu_matvec(&src, w, NULL, out, rows, K, n, ld_w, 0, ld_out);
}
