// rmsnorm.cuh — RMSNORM on the GPU: out = x * (1 / sqrt(mean(x^2) + eps)) * weight per row, fp32
// arithmetic and one rounding to bf16, element for element as src/kernels/cpu/rmsnorm.c.
// One warp per row: rows are short (hidden size) and independent.
#ifndef MPK_KERNELS_CUDA_RMSNORM_CUH
#define MPK_KERNELS_CUDA_RMSNORM_CUH

#include "common.cuh"
#include "linear.cuh"

MPK_DEV void mpk_rmsnorm_cuda(const mpk_bf16 *x, const mpk_bf16 *weight, mpk_bf16 *out,
                              int32_t rows, int32_t H, int32_t ld_x, int32_t ld_out, float eps) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = MPK_DEV_THREADS / 32;
    for (int32_t r = warp; r < rows; r += nwarps) {
        const mpk_bf16 *xr = x + (int64_t)r * ld_x;  // (H)
        mpk_bf16 *o = out + (int64_t)r * ld_out;     // (H)
        const float scale = mpk_rms_scale_warp(xr, H, eps);
        for (int32_t k = lane; k < H; k += 32)
            o[k] = mpk_f2bf(mpk_rms_elem(mpk_bf2f(xr[k]), scale, mpk_bf2f(weight[k])));
    }
}

#endif  // MPK_KERNELS_CUDA_RMSNORM_CUH
