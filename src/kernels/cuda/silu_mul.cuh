// silu_mul.cuh — SILU_MUL on the GPU: out = bf16(silu(gate) * up), the element arithmetic of
// src/kernels/cpu/silu_mul.c (mpk_silu_mul_elem in linear.cuh, shared with the fused task).
#ifndef MPK_KERNELS_CUDA_SILU_MUL_CUH
#define MPK_KERNELS_CUDA_SILU_MUL_CUH

#include "common.cuh"
#include "linear.cuh"

MPK_DEV void mpk_silu_mul_cuda(const mpk_bf16 *gate, const mpk_bf16 *up, mpk_bf16 *out,
                               int32_t rows, int32_t n, int32_t ld_in, int32_t ld_out) {
    const int64_t total = (int64_t)rows * n;
    for (int64_t i = threadIdx.x; i < total; i += MPK_DEV_THREADS) {
        const int32_t r = (int32_t)(i / n), j = (int32_t)(i % n);
        const int64_t a = (int64_t)r * ld_in + j;
        out[(int64_t)r * ld_out + j] = mpk_f2bf(mpk_silu_mul_elem(mpk_bf2f(gate[a]), mpk_bf2f(up[a])));
    }
}

#endif  // MPK_KERNELS_CUDA_SILU_MUL_CUH
