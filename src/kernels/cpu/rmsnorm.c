// rmsnorm.c — RMSNORM on the CPU (the oracle): out = x * rsqrt(mean(x^2) + eps) * weight per row,
// fp32 arithmetic with one rounding to bf16 (the same element arithmetic as rmsnorm_linear.c).
#include "matvec.h"

void mpk_rmsnorm_cpu(const mpk_bf16 *x, const mpk_bf16 *weight, mpk_bf16 *out, int32_t rows,
                     int32_t H, int32_t ld_x, int32_t ld_out, float eps) {
    for (int32_t r = 0; r < rows; r++) {
        const mpk_bf16 *xr = x + (int64_t)r * ld_x;  // (H)
        mpk_bf16 *o = out + (int64_t)r * ld_out;     // (H)
        float scale = mpk_cpu_rms_scale(xr, H, eps);
        for (int32_t k = 0; k < H; k++)
            o[k] = mpk_f32_to_bf16(mpk_cpu_rms_elem(xr[k], scale, weight[k]));
    }
}
