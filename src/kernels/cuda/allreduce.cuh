// allreduce.cuh — ALLREDUCE on the GPU for a single rank: out = in (src/kernels/cpu/allreduce.c).
// Several ranks need symmetric memory and peer signalling (DESIGN.md §2.6), not built yet.
#ifndef MPK_KERNELS_CUDA_ALLREDUCE_CUH
#define MPK_KERNELS_CUDA_ALLREDUCE_CUH

#include "common.cuh"

MPK_DEV void mpk_allreduce_cuda(const mpk_bf16 *in, mpk_bf16 *out, int32_t rows, int32_t n,
                                int32_t ld_in, int32_t ld_out) {
    const int64_t total = (int64_t)rows * n;
    for (int64_t i = threadIdx.x; i < total; i += MPK_DEV_THREADS) {
        const int32_t r = (int32_t)(i / n), j = (int32_t)(i % n);
        out[(int64_t)r * ld_out + j] = in[(int64_t)r * ld_in + j];
    }
}

#endif  // MPK_KERNELS_CUDA_ALLREDUCE_CUH
