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

// ---- residual + partial sums, then rmsnorm_linear ----------------------------------------------

typedef struct residual_rows {
    const mpk_bf16 *x;       // (rows, ld_x) the residual
    const float *part;       // (rows, ld_part): P partial sums of K columns each
    const mpk_bf16 *norm_w;  // (K)
    mpk_bf16 *x_out;         // (rows, ld_xo): columns [c0, c0 + count) written
    int32_t ld_x, K, P, ld_part, ld_xo, c0, count;
    float eps;
    float scale;             // of the row begun last
} residual_rows;

// bf16(x + part_0 + part_1 + ...) at (r, k): the groups added in order, in fp32.
static float residual_elem(const residual_rows *p, int32_t r, int32_t k) {
    float s = mpk_bf16_to_f32(p->x[(int64_t)r * p->ld_x + k]);
    const float *pr = p->part + (int64_t)r * p->ld_part + k;
    for (int32_t g = 0; g < p->P; g++) s += pr[(int64_t)g * p->K];
    return mpk_round_bf16(s);
}

// The row's scale as mpk_cpu_rms_scale computes it of the stored row, and the row's slice of x_out.
static void residual_begin(void *ctx, int32_t r) {
    residual_rows *p = ctx;
    float acc[MPK_CPU_LANES] = {0};
    for (int32_t k = 0; k < p->K; k++) {
        float v = residual_elem(p, r, k);
        acc[k % MPK_CPU_LANES] += v * v;
    }
    float mean = p->K > 0 ? mpk_cpu_lane_sum(acc) / (float)p->K : 0.0f;
    p->scale = 1.0f / sqrtf(mean + p->eps);
    for (int32_t k = p->c0; k < p->c0 + p->count; k++)
        p->x_out[(int64_t)r * p->ld_xo + k] = mpk_f32_to_bf16(residual_elem(p, r, k));
}

static void residual_load(void *ctx, int32_t r, int32_t k0, int32_t len, float *dst) {
    const residual_rows *p = ctx;
    for (int32_t k = 0; k < len; k++)
        dst[k] = mpk_round_bf16(residual_elem(p, r, k0 + k) * p->scale * mpk_bf16_to_f32(p->norm_w[k0 + k]));
}

void mpk_residual_rmsnorm_linear_cpu(const mpk_bf16 *x, const float *part, const mpk_bf16 *norm_w,
                                     const mpk_bf16 *w, mpk_bf16 *out, mpk_bf16 *x_out,
                                     int32_t rows, int32_t K, int32_t n, int32_t ld_x,
                                     int32_t ld_w, int32_t ld_out, int32_t P, int32_t ld_part,
                                     int32_t ld_xo, int32_t c0, int32_t count, float eps) {
    residual_rows p = {x, part, norm_w, x_out, ld_x, K, P, ld_part, ld_xo, c0, count, eps, 0.0f};
    mpk_cpu_rows src = {residual_begin, residual_load, &p};
    mpk_cpu_matvec(&src, w, NULL, out, rows, K, n, ld_w, 0, ld_out);
}
