// embed.cuh — EMBED on the GPU: copies each token's embedding row (this task's column slice);
// an id outside [0, vocab) gives a zero row, as src/kernels/cpu/embed.c. One warp per row.
#ifndef MPK_KERNELS_CUDA_EMBED_CUH
#define MPK_KERNELS_CUDA_EMBED_CUH

#include "common.cuh"

MPK_DEV void mpk_embed_cuda(const int32_t *ids, const mpk_bf16 *weight, mpk_bf16 *out,
                            int32_t rows, int32_t cols, int32_t ld_w, int32_t ld_out,
                            int32_t vocab) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = MPK_DEV_THREADS / 32;
    for (int32_t r = warp; r < rows; r += nwarps) {
        const int32_t id = ids[r];
        mpk_bf16 *o = out + (int64_t)r * ld_out;  // (cols)
        if (id < 0 || id >= vocab) {
            for (int32_t c = lane; c < cols; c += 32) o[c] = 0;
            continue;
        }
        const mpk_bf16 *src = weight + (int64_t)id * ld_w;  // (cols)
        if (cols % 8 == 0 && mpk_aligned16(src) && mpk_aligned16(o)) {
            for (int32_t c = lane * 8; c < cols; c += 256)
                *(uint4 *)(o + c) = mpk_ld16_ro(src + c);
        } else {
            for (int32_t c = lane; c < cols; c += 32) o[c] = src[c];
        }
    }
}

#endif  // MPK_KERNELS_CUDA_EMBED_CUH
