// matvec.h — private helpers shared by the CPU task kernels: the one matrix-vector product that
// linear, linear_residual, rmsnorm_linear and silu_mul_linear_residual all go through, and the
// per-row arithmetic the fused tasks must repeat bit for bit (RMS scale, SiLU·mul).
#ifndef MPK_KERNELS_CPU_MATVEC_H
#define MPK_KERNELS_CPU_MATVEC_H

#include "kernels.h"

// Dot products accumulate element k into lane k % MPK_CPU_LANES and add the lanes in a fixed
// tree at the end, so the result does not depend on how K is chunked and loops vectorise
// without -ffast-math. The input row is produced in chunks of MPK_CPU_CHUNK floats (a multiple
// of the lane count; 32 KiB of stack), once per row when K fits one chunk (every hidden size
// and most MLP widths), else once per MPK_CPU_BLOCK output columns.
#define MPK_CPU_LANES 16
#define MPK_CPU_CHUNK 8192
#define MPK_CPU_BLOCK 64

// A producer of the input rows of a matrix-vector product, chunk by chunk, so that no
// row-sized buffer is needed. begin(ctx, r) (may be NULL) runs before the loads of row r;
// load(ctx, r, k0, len, dst) writes elements [k0, k0 + len) of row r as floats that are
// already bf16 values (the fused tasks round their computed inputs before the product).
typedef struct mpk_cpu_rows {
    void (*begin)(void *ctx, int32_t r);
    void (*load)(void *ctx, int32_t r, int32_t k0, int32_t len, float *dst);
    void *ctx;
} mpk_cpu_rows;

// out[r, j] = bf16(sum_k x[r, k] * w[j, k] (+ res[r, j])) for r < rows, j < n; res may be NULL
// and may equal out. Defined in linear.c.
void mpk_cpu_matvec(const mpk_cpu_rows *x, const mpk_bf16 *w, const mpk_bf16 *res,
                    mpk_bf16 *out, int32_t rows, int32_t K, int32_t n, int32_t ld_w,
                    int32_t ld_res, int32_t ld_out);

// The same product without rounding: out[r, j] = sum_k x[r, k] * w[j, k] in fp32 (partial sums
// that a later task adds up). Defined in linear.c.
void mpk_cpu_matvec_f32(const mpk_cpu_rows *x, const mpk_bf16 *w, float *out, int32_t rows,
                        int32_t K, int32_t n, int32_t ld_w, int32_t ld_out);

// Plain bf16 input rows for mpk_cpu_matvec: ctx points at {const mpk_bf16 *x; int32_t ld_x;}.
typedef struct mpk_cpu_plain {
    const mpk_bf16 *x;
    int32_t ld_x;
} mpk_cpu_plain;
void mpk_cpu_plain_rows_load(void *ctx, int32_t r, int32_t k0, int32_t len, float *dst);

// acc[k % LANES] += x[k] * w[k] for k < len; callers' chunks start at multiples of LANES.
static inline void mpk_cpu_dot_accumulate(float acc[MPK_CPU_LANES], const float *x,
                                          const mpk_bf16 *w, int32_t len) {
    int32_t k = 0;
    for (; k + MPK_CPU_LANES <= len; k += MPK_CPU_LANES)
        for (int i = 0; i < MPK_CPU_LANES; i++) acc[i] += x[k + i] * mpk_bf16_to_f32(w[k + i]);
    for (; k < len; k++) acc[k % MPK_CPU_LANES] += x[k] * mpk_bf16_to_f32(w[k]);
}

// Adds the lane sums in a fixed order.
static inline float mpk_cpu_lane_sum(const float acc[MPK_CPU_LANES]) {
    float t[MPK_CPU_LANES];
    for (int i = 0; i < MPK_CPU_LANES; i++) t[i] = acc[i];
    for (int w = MPK_CPU_LANES / 2; w > 0; w /= 2)
        for (int i = 0; i < w; i++) t[i] += t[i + w];
    return t[0];
}

// 1 / sqrt(mean(x^2) + eps) of one bf16 row of H elements.
static inline float mpk_cpu_rms_scale(const mpk_bf16 *x, int32_t H, float eps) {
    float acc[MPK_CPU_LANES] = {0};
    int32_t k = 0;
    for (; k + MPK_CPU_LANES <= H; k += MPK_CPU_LANES)
        for (int i = 0; i < MPK_CPU_LANES; i++) {
            float v = mpk_bf16_to_f32(x[k + i]);
            acc[i] += v * v;
        }
    for (; k < H; k++) {
        float v = mpk_bf16_to_f32(x[k]);
        acc[k % MPK_CPU_LANES] += v * v;
    }
    float mean = H > 0 ? mpk_cpu_lane_sum(acc) / (float)H : 0.0f;
    return 1.0f / sqrtf(mean + eps);
}

// One normalised element, rounded: what rmsnorm stores and what rmsnorm_linear multiplies.
static inline float mpk_cpu_rms_elem(mpk_bf16 x, float scale, mpk_bf16 w) {
    return mpk_round_bf16(mpk_bf16_to_f32(x) * scale * mpk_bf16_to_f32(w));
}

// silu(g) * u, rounded: what silu_mul stores and what silu_mul_linear_residual multiplies.
static inline float mpk_cpu_silu_mul_elem(mpk_bf16 g, mpk_bf16 u) {
    float gf = mpk_bf16_to_f32(g);
    return mpk_round_bf16(gf / (1.0f + expf(-gf)) * mpk_bf16_to_f32(u));
}

#endif  // MPK_KERNELS_CPU_MATVEC_H
