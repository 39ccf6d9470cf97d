// argmax.cuh — ARGMAX_PARTIAL and ARGMAX_REDUCE on the GPU: greedy decoding as a two-level
// reduction over vocabulary chunks, with the tie and NaN rules of src/kernels/cpu/argmax.c
// (largest value, then lowest id; NaN never wins; an all-NaN chunk gives -inf and first_id).
#ifndef MPK_KERNELS_CUDA_ARGMAX_CUH
#define MPK_KERNELS_CUDA_ARGMAX_CUH

#include "common.cuh"

MPK_DEV void mpk_argmax_partial_cuda(const mpk_bf16 *logits, float *part_val, int32_t *part_idx,
                                     int32_t rows, int32_t n, int32_t ld_logits, int32_t ld_part,
                                     int32_t first_id) {
    mpk_task_smem *sm = mpk_smem();
    for (int32_t r = 0; r < rows; r++) {
        const mpk_bf16 *l = logits + (int64_t)r * ld_logits;  // (n)
        mpk_argmax_pair best = {-INFINITY, INT32_MAX};
        for (int32_t j = threadIdx.x; j < n; j += MPK_DEV_THREADS) {
            const float v = mpk_bf2f(l[j]);
            if (v == v && mpk_argmax_better(v, j, best.val, best.idx)) { best.val = v; best.idx = j; }
        }
        best = mpk_block_argmax(best, sm->pairs);
        if (threadIdx.x == 0) {
            part_val[(int64_t)r * ld_part] = best.val;
            part_idx[(int64_t)r * ld_part] = first_id + (best.idx == INT32_MAX ? 0 : best.idx);
        }
    }
}

MPK_DEV void mpk_argmax_reduce_cuda(const float *part_val, const int32_t *part_idx, int32_t *out,
                                    int32_t rows, int32_t P, int32_t ld_part) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = MPK_DEV_THREADS / 32;
    for (int32_t r = warp; r < rows; r += nwarps) {
        const float *v = part_val + (int64_t)r * ld_part;     // (P)
        const int32_t *id = part_idx + (int64_t)r * ld_part;  // (P)
        mpk_argmax_pair best = {-INFINITY, INT32_MAX};
        for (int32_t p = lane; p < P; p += 32)
            if (v[p] == v[p] && mpk_argmax_better(v[p], id[p], best.val, best.idx)) {
                best.val = v[p];
                best.idx = id[p];
            }
        best = mpk_warp_argmax(best);
        if (lane == 0) out[r] = best.idx != INT32_MAX ? best.idx : (P > 0 ? id[0] : 0);
    }
}

#endif  // MPK_KERNELS_CUDA_ARGMAX_CUH
