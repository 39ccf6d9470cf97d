// attention.cuh — ATTENTION on the GPU: one kv head of one layer for every row of the batch, the
// steps and rounding points of src/kernels/cpu/attention.c: per-head RMSNorm (rounded), RoPE
// rotate-half (rounded), k/v appended to the paged cache, then causal online-softmax attention.
#ifndef MPK_KERNELS_CUDA_ATTENTION_CUH
#define MPK_KERNELS_CUDA_ATTENTION_CUH

#include "common.cuh"
#include "linear.cuh"

#define MPK_ATTN_MAX_D 512                 // as MPK_ATTENTION_MAX_HEAD_DIM on the CPU
#define MPK_ATTN_LANE_D (MPK_ATTN_MAX_D / 32)  // head elements per lane

// dst = RoPE(RMSNorm(x)) for one head, by one warp; dst is the warp's D floats of shared memory.
MPK_DEV void mpk_attn_prepare_head(const mpk_bf16 *x, const mpk_bf16 *norm_w,
                                   const float *inv_freq, int32_t pos, int32_t D, float eps,
                                   float *dst) {
    const int lane = threadIdx.x % 32;
    if (norm_w) {
        const float scale = mpk_rms_scale_warp(x, D, eps);
        for (int32_t d = lane; d < D; d += 32)
            dst[d] = mpk_rms_elem(mpk_bf2f(x[d]), scale, mpk_bf2f(norm_w[d]));
    } else {
        for (int32_t d = lane; d < D; d += 32) dst[d] = mpk_bf2f(x[d]);
    }
    __syncwarp();
    if (inv_freq) {
        const int32_t half = D / 2;
        for (int32_t i = lane; i < half; i += 32) {
            const float a = (float)pos * inv_freq[i];
            const float c = cosf(a), s = sinf(a);
            const float x1 = dst[i], x2 = dst[i + half];
            dst[i] = mpk_round_bf(x1 * c - x2 * s);
            dst[i + half] = mpk_round_bf(x2 * c + x1 * s);
        }
        __syncwarp();
    }
}

// Offset of position p in this head's cache, or -1 when the batch does not map it.
MPK_DEV int64_t mpk_attn_cache_offset(const mpk_batch *b, const int32_t *page_table, int32_t p,
                                      int32_t D, int32_t page_size, int64_t page_stride) {
    if (p < 0 || page_size <= 0 || p / page_size >= b->max_pages_per_request) return -1;
    const int32_t page = page_table[p / page_size];
    if (page < 0 || page >= b->num_pages) return -1;
    return (int64_t)page * page_stride + (int64_t)(p % page_size) * D;
}

// softmax(q . k_t * scale) v_t over t in [0, pos] by one warp. Scores come 32 at a time, one
// position per lane (the lane reads its key row whole); the running max and sum are rescaled
// once per block as on the CPU. acc holds elements d = lane + 32 i.
MPK_DEV void mpk_attn_attend(const float *q, const mpk_bf16 *k_cache, const mpk_bf16 *v_cache,
                             const mpk_batch *b, const int32_t *page_table, int32_t pos,
                             int32_t D, int32_t page_size, int64_t page_stride, float scale,
                             mpk_bf16 *out) {
    const int lane = threadIdx.x % 32;
    float acc[MPK_ATTN_LANE_D];
#pragma unroll
    for (int i = 0; i < MPK_ATTN_LANE_D; i++) acc[i] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    const bool vec = D % 8 == 0 && mpk_aligned16(k_cache) && page_stride % 8 == 0;
    for (int32_t t0 = 0; t0 <= pos; t0 += 32) {
        const int32_t t = t0 + lane;
        const int64_t off = t <= pos ? mpk_attn_cache_offset(b, page_table, t, D, page_size, page_stride) : -1;
        float sc = -INFINITY;
        if (off >= 0) {
            const mpk_bf16 *k = k_cache + off;  // (D)
            float s = 0.0f;
            if (vec) {
                for (int32_t d = 0; d < D; d += 8) {
                    float kf[8];
                    mpk_unpack8(mpk_ld16(k + d), kf);
#pragma unroll
                    for (int e = 0; e < 8; e++) s = fmaf(q[d + e], kf[e], s);
                }
            } else {
                for (int32_t d = 0; d < D; d++) s = fmaf(q[d], mpk_bf2f(k[d]), s);
            }
            sc = s * scale;
        }
        float bm = mpk_warp_max(sc);  // fmaxf: NaN scores leave the maximum alone
        if (!(bm > m)) bm = m;
        if (bm == -INFINITY) continue;  // nothing attendable yet
        const float corr = expf(m - bm);
        m = bm;
        const float p = off >= 0 ? expf(sc - m) : 0.0f;
        l = l * corr + mpk_warp_sum(p);
#pragma unroll
        for (int i = 0; i < MPK_ATTN_LANE_D; i++) acc[i] *= corr;
        const int32_t nb = min(32, pos + 1 - t0);
        for (int32_t j = 0; j < nb; j++) {
            const float pj = __shfl_sync(0xffffffffu, p, j);
            const int64_t oj = __shfl_sync(0xffffffffu, off, j);
            if (oj < 0) continue;
            const mpk_bf16 *v = v_cache + oj;  // (D)
#pragma unroll
            for (int i = 0; i < MPK_ATTN_LANE_D; i++) {
                const int32_t d = lane + 32 * i;
                if (d < D) acc[i] = fmaf(pj, mpk_bf2f(v[d]), acc[i]);
            }
        }
    }
    const float inv = l > 0.0f ? 1.0f / l : __int_as_float(0x7fc00000);  // NaN: loud, not silent
#pragma unroll
    for (int i = 0; i < MPK_ATTN_LANE_D; i++) {
        const int32_t d = lane + 32 * i;
        if (d < D) out[d] = mpk_f2bf(acc[i] * inv);
    }
}

MPK_DEV void mpk_attention_cuda(const mpk_bf16 *qkv, mpk_bf16 *k_cache, mpk_bf16 *v_cache,
                                const mpk_bf16 *q_norm, const mpk_bf16 *k_norm,
                                const float *inv_freq, mpk_bf16 *out, const mpk_batch *b,
                                int32_t G, int32_t D, int32_t ld_qkv, int32_t ld_out,
                                int32_t page_size, int64_t page_stride, float eps, float scale) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    const int32_t *row_entry = MPK_BATCH_CARRAY(b, off_row_entry, int32_t);
    const int32_t *row_pos = MPK_BATCH_CARRAY(b, off_row_pos, int32_t);
    const int32_t *entry_slot = MPK_BATCH_CARRAY(b, off_entry_slot, int32_t);
    const int32_t *page_tables = MPK_BATCH_CARRAY(b, off_page_table, int32_t);
    const int32_t rows = b->num_tokens;
    if (G <= 0 || D <= 0) return;
    if (D > MPK_ATTN_MAX_D || D * nwarps > MPK_SCRATCH_FLOATS) {
        for (int64_t i = threadIdx.x; i < (int64_t)rows * G * D; i += blockDim.x)
            out[(i / (G * D)) * ld_out + i % (G * D)] = mpk_f2bf(__int_as_float(0x7fc00000));
        return;
    }
    float *buf = mpk_smem()->f + warp * D;  // (D) this warp's head being prepared

    // Every row's k and v first: a prefill chunk's rows attend to each other's positions.
    for (int32_t r = warp; r < rows; r += nwarps) {
        const int32_t *pt = page_tables + (int64_t)entry_slot[row_entry[r]] * b->max_pages_per_request;
        const int64_t off = mpk_attn_cache_offset(b, pt, row_pos[r], D, page_size, page_stride);
        if (off < 0) continue;
        const mpk_bf16 *k = qkv + (int64_t)r * ld_qkv + (int64_t)G * D;  // (D), then v (D)
        mpk_attn_prepare_head(k, k_norm, inv_freq, row_pos[r], D, eps, buf);
        for (int32_t d = lane; d < D; d += 32) {
            k_cache[off + d] = mpk_f2bf(buf[d]);
            v_cache[off + d] = k[D + d];
        }
        __syncwarp();
    }
    __syncthreads();  // the block's cache writes are visible to all its threads after this

    for (int32_t i = warp; i < rows * G; i += nwarps) {
        const int32_t r = i / G, g = i % G;
        const int32_t *pt = page_tables + (int64_t)entry_slot[row_entry[r]] * b->max_pages_per_request;
        const mpk_bf16 *q = qkv + (int64_t)r * ld_qkv + (int64_t)g * D;  // (D)
        mpk_attn_prepare_head(q, q_norm, inv_freq, row_pos[r], D, eps, buf);
        mpk_attn_attend(buf, k_cache, v_cache, b, pt, row_pos[r], D, page_size, page_stride,
                        scale, out + (int64_t)r * ld_out + (int64_t)g * D);
        __syncwarp();
    }
}

#endif  // MPK_KERNELS_CUDA_ATTENTION_CUH
