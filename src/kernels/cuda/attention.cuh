// attention.cuh — ATTENTION on the GPU: one kv head of one layer for every row of the batch, the
// steps and rounding points of src/kernels/cpu/attention.c: per-head RMSNorm (rounded), RoPE
// rotate-half (rounded), k/v appended to the paged cache, then causal online-softmax attention.
#ifndef MPK_KERNELS_CUDA_ATTENTION_CUH
#define MPK_KERNELS_CUDA_ATTENTION_CUH

#include "common.cuh"
#include "linear.cuh"

#define MPK_ATTN_MAX_D 512                 // as MPK_ATTENTION_MAX_HEAD_DIM on the CPU
#define MPK_ATTN_LANE_D (MPK_ATTN_MAX_D / 32)  // head elements per lane
// Probe: where attention's "inputs" mark is taken (0: keys appended, all warps; 1: partial
// products done; 2: combined; 3: warp 0 done appending row 0's key, before waiting for the warps
// that prepare the query heads), to split its time in a profile.
#ifndef MPK_ATTN_MARK
#define MPK_ATTN_MARK 0
#endif

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

// mpk_attn_prepare_head for D = 32 * ND (the real head sizes), every operand loaded up front in
// one round: lane holds elements d = lane + 32 i, so both halves of each RoPE pair (d, d + D/2)
// are the lane's own and the head never leaves registers until it is stored. Same operations
// and rounding points as the general version.
template <int ND>
MPK_DEV void mpk_attn_prepare_head_reg(const mpk_bf16 *x, const mpk_bf16 *norm_w,
                                       const float *inv_freq, int32_t pos, float eps, float *dst) {
    const int lane = threadIdx.x % 32;
    float v[ND], nw[ND], fr[ND / 2 > 0 ? ND / 2 : 1];
#pragma unroll
    for (int i = 0; i < ND; i++) {
        v[i] = mpk_bf2f(x[lane + 32 * i]);
        nw[i] = norm_w ? mpk_bf2f(norm_w[lane + 32 * i]) : 1.0f;
    }
#pragma unroll
    for (int i = 0; i < ND / 2; i++) fr[i] = inv_freq ? inv_freq[lane + 32 * i] : 0.0f;
    if (norm_w) {
        float ss = 0.0f;
#pragma unroll
        for (int i = 0; i < ND; i++) ss = fmaf(v[i], v[i], ss);
        const float scale = 1.0f / sqrtf(mpk_warp_sum(ss) / (float)(32 * ND) + eps);
#pragma unroll
        for (int i = 0; i < ND; i++) v[i] = mpk_rms_elem(v[i], scale, nw[i]);
    }
    if (inv_freq) {
#pragma unroll
        for (int i = 0; i < ND / 2; i++) {
            float sn, cs;
            sincosf((float)pos * fr[i], &sn, &cs);
            const float x1 = v[i], x2 = v[i + ND / 2];
            v[i] = mpk_round_bf(x1 * cs - x2 * sn);
            v[i + ND / 2] = mpk_round_bf(x2 * cs + x1 * sn);
        }
    }
#pragma unroll
    for (int i = 0; i < ND; i++) dst[lane + 32 * i] = v[i];
    __syncwarp();
}

// One head into dst (D floats of shared memory), by one warp.
MPK_DEV void mpk_attn_prepare(const mpk_bf16 *x, const mpk_bf16 *norm_w, const float *inv_freq,
                              int32_t pos, int32_t D, float eps, float *dst) {
    if (D == 128)
        mpk_attn_prepare_head_reg<4>(x, norm_w, inv_freq, pos, eps, dst);
    else if (D == 64)
        mpk_attn_prepare_head_reg<2>(x, norm_w, inv_freq, pos, eps, dst);
    else
        mpk_attn_prepare_head(x, norm_w, inv_freq, pos, D, eps, dst);
}

// The prompt kernel's appends: rows [a0, a1) of a chunk, their cache offsets looked up already
// (offs[r - a0], -1 = not mapped), MPK_ATTN_APPEND_ROWS rows per warp at once, so that a warp's
// loads of several rows are in flight together (one row at a time, each row was two dependent
// round trips: 63 of a Qwen3-0.6B attention task's 155 us at 512 rows, bench/NOTES.md v16; now
// 41, the stage 186 -> 165 us per layer, v17). The same operations and rounding as
// mpk_attn_prepare_head_reg, stored straight from registers. 1, 4 and 8 rows per warp measured
// alike (pp512; the k and v loads of one row are in flight together either way).
#ifndef MPK_ATTN_APPEND_ROWS
#define MPK_ATTN_APPEND_ROWS 4
#endif
template <int ND>
MPK_DEV void mpk_attn_append_rows(const mpk_bf16 *qkv, const int64_t *offs, const int32_t *row_pos, int32_t a0,
                                  int32_t a1, int32_t G, int32_t ld_qkv, const mpk_bf16 *norm_w,
                                  const float *inv_freq, float eps, mpk_bf16 *k_cache, mpk_bf16 *v_cache) {
    constexpr int RB = MPK_ATTN_APPEND_ROWS, D = 32 * ND;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = MPK_DEV_THREADS / 32;
    float nw[ND], fr[ND / 2 > 0 ? ND / 2 : 1];
#pragma unroll
    for (int i = 0; i < ND; i++) nw[i] = norm_w ? mpk_bf2f(norm_w[lane + 32 * i]) : 1.0f;
#pragma unroll
    for (int i = 0; i < ND / 2; i++) fr[i] = inv_freq ? inv_freq[lane + 32 * i] : 0.0f;
    for (int32_t r0 = a0 + warp * RB; r0 < a1; r0 += nwarps * RB) {
        float k[RB][ND];
        mpk_bf16 v[RB][ND];
        int64_t off[RB];
#pragma unroll
        for (int j = 0; j < RB; j++) {
            off[j] = r0 + j < a1 ? offs[r0 + j - a0] : -1;
            const mpk_bf16 *x = qkv + (int64_t)min(r0 + j, a1 - 1) * ld_qkv + (int64_t)G * D;  // (D), then v (D)
#pragma unroll
            for (int i = 0; i < ND; i++) {
                k[j][i] = mpk_bf2f(x[lane + 32 * i]);
                v[j][i] = x[D + lane + 32 * i];
            }
        }
#pragma unroll
        for (int j = 0; j < RB; j++) {
            if (norm_w) {
                float ss = 0.0f;
#pragma unroll
                for (int i = 0; i < ND; i++) ss = fmaf(k[j][i], k[j][i], ss);
                const float scale = 1.0f / sqrtf(mpk_warp_sum(ss) / (float)D + eps);
#pragma unroll
                for (int i = 0; i < ND; i++) k[j][i] = mpk_rms_elem(k[j][i], scale, nw[i]);
            }
            if (inv_freq) {
                const int32_t pos = row_pos[min(r0 + j, a1 - 1)];
#pragma unroll
                for (int i = 0; i < ND / 2; i++) {
                    float sn, cs;
                    sincosf((float)pos * fr[i], &sn, &cs);
                    const float x1 = k[j][i], x2 = k[j][i + ND / 2];
                    k[j][i] = mpk_round_bf(x1 * cs - x2 * sn);
                    k[j][i + ND / 2] = mpk_round_bf(x2 * cs + x1 * sn);
                }
            }
            if (off[j] < 0) continue;
#pragma unroll
            for (int i = 0; i < ND; i++) {
                k_cache[off[j] + lane + 32 * i] = mpk_f2bf(k[j][i]);
                v_cache[off[j] + lane + 32 * i] = v[j][i];
            }
        }
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

// Positions per round of key/value loads in the decode fast path (2, 4 or 8). Measured
// (bench/NOTES.md v10, per token): 2 against 4: Qwen3-0.6B +0.5%, 1.7B -1.4%, 8B -1.5%; 8 is
// slower on all three.
#ifndef MPK_ATTN_ROUND
#define MPK_ATTN_ROUND 2
#endif
// Long chunks (a warp's share of a long context, from MPK_ATTN_LONG_CHUNK positions) may take
// MPK_ATTN_ROUND_LONG positions per round instead. Measured (H100, bench/NOTES.md v11; same tokens
// at every size): 4 against 2, Qwen3-8B decode at depth 4096 16.94 against 17.59 ms/token but
// 6.014 against 5.999 at depth 0 (spills); Qwen3-1.7B at depth 4096 9.54 with 2 and 4, 9.03 with 8
// (which spills in attention). The rounds are not what bounds long-context attention, so the
// default stays 2; spreading the positions over more workers is the way (NOTES "Next" 1).
#ifndef MPK_ATTN_ROUND_LONG
#define MPK_ATTN_ROUND_LONG 2
#endif
#ifndef MPK_ATTN_LONG_CHUNK
#define MPK_ATTN_LONG_CHUNK 64
#endif
// The prompt kernel's round (its translation unit, runtime.cuh: MPK_KERNEL_PART 2), for every
// chunk: a prompt chunk's rows attend row after row, each to all earlier positions, so their
// rounds are a chain of round trips per row; their registers no longer cost decode, which has a
// kernel of its own. The rounds group loads only: scores and softmax updates go position by
// position, so every round size gives the same values.
#ifndef MPK_ATTN_ROUND_PROMPT
#define MPK_ATTN_ROUND_PROMPT 4
#endif

// The decode fast path of mpk_attn_row for G <= 4 heads and D = 32 * ND: each warp takes one
// chunk of positions for all G heads at once (a key and value row is loaded once for the group),
// R positions at a time (MPK_ATTN_ROUND, or MPK_ATTN_ROUND_LONG for a long chunk) so that their
// loads are in flight together, and leaves per head (acc[D], max, sum) in shared memory for the
// combine. The cache offsets of the chunk's
// positions are looked up once, one per lane (32 at a time), and shuffled to the rounds: one
// dependent page-table round trip per chunk instead of one per round (measured,
// bench/NOTES.md v10: Qwen3-0.6B -5%, 1.7B -2%, 8B -1.5% per token).
// kvs (or null): positions [t0, t1) already in shared memory, (position, key | value, D) bf16.
template <int ND, int R>
MPK_DEV void mpk_attn_chunk_grouped(const float *qs, const mpk_bf16 *k_cache, const mpk_bf16 *v_cache,
                                    const mpk_batch *b, const int32_t *pt, int32_t t0, int32_t t1,
                                    int32_t G, int32_t D, int32_t page_size, int64_t page_stride,
                                    float scale, float *unit, const mpk_bf16 *kvs) {
    const int lane = threadIdx.x % 32;
    float q[4][ND], acc[4][ND], m[4], l[4];
#pragma unroll
    for (int g = 0; g < 4; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < ND; i++) {
            q[g][i] = g < G ? qs[g * D + lane + 32 * i] : 0.0f;
            acc[g][i] = 0.0f;
        }
    }
    int64_t lane_off = -1;  // the cache offset of position t0 + 32 i + lane (this round of 32)
    for (int32_t t = t0; t < t1; t += R) {
        int64_t off[R];
        float kf[R][ND], vv[R][ND];
        if (!kvs && ((t - t0) & 31) == 0) {  // (t advances by R, which divides 32)
            const int32_t p = t + lane;
            lane_off = p < t1 ? mpk_attn_cache_offset(b, pt, p, D, page_size, page_stride) : -1;
        }
        // Keys and values of the round's positions in one round of loads (the values do not wait
        // for the scores).
#pragma unroll
        for (int j = 0; j < R; j++) {
            if (kvs) {
                off[j] = t + j < t1 ? (int64_t)(t + j) * 2 * D : -1;
#pragma unroll
                for (int i = 0; i < ND; i++) {
                    kf[j][i] = off[j] >= 0 ? mpk_bf2f(kvs[off[j] + lane + 32 * i]) : 0.0f;
                    vv[j][i] = off[j] >= 0 ? mpk_bf2f(kvs[off[j] + D + lane + 32 * i]) : 0.0f;
                }
                continue;
            }
            off[j] = __shfl_sync(0xffffffffu, lane_off, (t - t0 + j) & 31);  // (-1 past t1)
#pragma unroll
            for (int i = 0; i < ND; i++) {
                kf[j][i] = off[j] >= 0 ? mpk_bf2f(k_cache[off[j] + lane + 32 * i]) : 0.0f;
                vv[j][i] = off[j] >= 0 ? mpk_bf2f(v_cache[off[j] + lane + 32 * i]) : 0.0f;
            }
        }
        float sc[R][4];
#pragma unroll
        for (int j = 0; j < R; j++)
#pragma unroll
            for (int g = 0; g < 4; g++) {
                float p = 0.0f;
#pragma unroll
                for (int i = 0; i < ND; i++) p = fmaf(q[g][i], kf[j][i], p);
                sc[j][g] = g < G ? mpk_warp_sum(p) * scale : 0.0f;
            }
#pragma unroll
        for (int j = 0; j < R; j++) {
            if (off[j] < 0) continue;
            const float *vf = vv[j];
#pragma unroll
            for (int g = 0; g < 4; g++) {
                const float sj = sc[j][g];
                if (g >= G || !(sj == sj)) continue;  // a NaN score attends to nothing
                const float mn = fmaxf(m[g], sj);
                const float corr = expf(m[g] - mn), p = expf(sj - mn);
                l[g] = l[g] * corr + p;
                m[g] = mn;
#pragma unroll
                for (int i = 0; i < ND; i++) acc[g][i] = fmaf(p, vf[i], acc[g][i] * corr);
            }
        }
    }
#pragma unroll
    for (int g = 0; g < 4; g++) {
        if (g >= G) continue;
        float *dst = unit + (int64_t)g * (D + 2);
#pragma unroll
        for (int i = 0; i < ND; i++) dst[lane + 32 * i] = acc[g][i];
        if (lane == 0) {
            dst[D] = m[g];
            dst[D + 1] = l[g];
        }
    }
}

// mpk_attn_chunk_grouped with the round size of the chunk's length.
template <int ND>
MPK_DEV void mpk_attn_chunk(const float *qs, const mpk_bf16 *k_cache, const mpk_bf16 *v_cache,
                            const mpk_batch *b, const int32_t *pt, int32_t t0, int32_t t1, int32_t G,
                            int32_t D, int32_t page_size, int64_t page_stride, float scale, float *unit,
                            const mpk_bf16 *kvs) {
#if defined(MPK_KERNEL_PART) && MPK_KERNEL_PART == 2
    if (MPK_ATTN_ROUND_PROMPT != MPK_ATTN_ROUND) {
        mpk_attn_chunk_grouped<ND, MPK_ATTN_ROUND_PROMPT>(qs, k_cache, v_cache, b, pt, t0, t1, G, D, page_size, page_stride, scale, unit, kvs);
        return;
    }
#endif
    if (MPK_ATTN_ROUND_LONG != MPK_ATTN_ROUND && t1 - t0 >= MPK_ATTN_LONG_CHUNK)
        mpk_attn_chunk_grouped<ND, MPK_ATTN_ROUND_LONG>(qs, k_cache, v_cache, b, pt, t0, t1, G, D, page_size, page_stride, scale, unit, kvs);
    else
        mpk_attn_chunk_grouped<ND, MPK_ATTN_ROUND>(qs, k_cache, v_cache, b, pt, t0, t1, G, D, page_size, page_stride, scale, unit, kvs);
}

// The combined chunk partials of head g, element d (and, for d == 0, its max and sum) into
// `part` (G, D + 2) unnormalised, or the normalised bf16 output into out_row. Unit c of head g
// is at units + (c * cs + g * gs) * (D + 2).
MPK_DEV void mpk_attn_combine_units(const float *units, int32_t C, int32_t cs, int32_t gs,
                                    int32_t g, int32_t d, int32_t D, float *part, mpk_bf16 *out_row) {
    float M = -INFINITY;
    for (int32_t c = 0; c < C; c++) M = fmaxf(M, units[((int64_t)c * cs + g * gs) * (D + 2) + D]);
    float num = 0.0f, den = 0.0f;
    for (int32_t c = 0; c < C; c++) {
        const float *un = units + ((int64_t)c * cs + g * gs) * (D + 2);
        if (un[D + 1] <= 0.0f) continue;  // the chunk attended to nothing
        const float f = expf(un[D] - M);
        num = fmaf(f, un[d], num);
        den = fmaf(f, un[D + 1], den);
    }
    if (part) {
        float *pg = part + (int64_t)g * (D + 2);
        pg[d] = num;
        if (d == 0) {
            pg[D] = M;
            pg[D + 1] = den;
        }
    } else {
        out_row[(int64_t)g * D + d] = mpk_f2bf(den > 0.0f ? num / den : __int_as_float(0x7fc00000));
    }
}

// Attention of one row for the G query heads of a kv head over positions [t_lo, t_hi), by the
// whole block. Decode has one row and a short context, so the work is spread over positions: the
// block's warps take (head g, position chunk c) units, each runs an online softmax over its chunk
// (the lanes split the head dimension: element d = lane + 32 i; a score is one warp reduction),
// and leaves (max, sum, acc[D]) in shared memory; then the chunks of each head are combined into
// out_row, or, with part (a split of the row's positions, task.h), left unnormalised there as
// (acc[D], max, sum) per head.
// Shared memory (dynamic): q (G, D) floats, then units (G * C, D + 2) floats.
// Not inlined: keeps its registers out of the GEMV variants' allocation (spills).
static __device__ __noinline__ void mpk_attn_row(const mpk_bf16 *qkv_row, const mpk_bf16 *k_cache,
                          const mpk_bf16 *v_cache, const mpk_bf16 *q_norm, const float *inv_freq,
                          const mpk_batch *b, const int32_t *pt, int32_t pos, int32_t t_lo,
                          int32_t t_hi, int32_t G, int32_t D, int32_t page_size, int64_t page_stride,
                          float eps, float scale, mpk_bf16 *out_row, float *part, bool q_ready,
                          const mpk_bf16 *kvs) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = MPK_DEV_THREADS / 32;
    float *qs = (float *)mpk_dyn_smem();  // (G, D), already prepared when q_ready
    float *units = qs + G * D;             // (G * C, D + 2)
    const int32_t fit = (int32_t)((MPK_DYN_SMEM_BYTES / 4 - G * D) / (G * (D + 2)));
    const int32_t n = t_hi - t_lo > 1 ? t_hi - t_lo : 1;
    int32_t C = nwarps / G;
    if (C > fit) C = fit;
    if (C < 1) C = 1;
    if (C > n) C = n;
    if (!q_ready) {
        for (int32_t g = warp; g < G; g += nwarps)
            mpk_attn_prepare(qkv_row + (int64_t)g * D, q_norm, inv_freq, pos, D, eps, qs + g * D);
        mpk_sync();
    }
    const int32_t nd = (D + 31) / 32;
    if (G <= 4 && (D == 64 || D == 128)) {
        // All warps on position chunks, each for the whole head group; units (C, G, D + 2).
        int32_t Cg = nwarps < n ? nwarps : n;
        const int32_t fitg = (int32_t)((MPK_DYN_SMEM_BYTES / 4 - G * D) / (G * (D + 2)));
        if (Cg > fitg) Cg = fitg;
        const int32_t chunk = (n + Cg - 1) / Cg;
        if (warp < Cg) {
            const int32_t t0 = t_lo + warp * chunk, t1 = min(t_hi, t0 + chunk);
            float *unit = units + (int64_t)warp * G * (D + 2);
            if (D == 128)
                mpk_attn_chunk<4>(qs, k_cache, v_cache, b, pt, t0, t1, G, D, page_size, page_stride, scale, unit, kvs);
            else
                mpk_attn_chunk<2>(qs, k_cache, v_cache, b, pt, t0, t1, G, D, page_size, page_stride, scale, unit, kvs);
        }
        mpk_sync();
        if (MPK_ATTN_MARK == 1) mpk_mark_inputs();
        for (int32_t i = threadIdx.x; i < G * D; i += MPK_DEV_THREADS)
            mpk_attn_combine_units(units, Cg, G, 1, i / D, i % D, D, part, out_row);
        mpk_sync();
        if (MPK_ATTN_MARK == 2) mpk_mark_inputs();
        return;
    }
    const int32_t chunk = (n + C - 1) / C;
    for (int32_t u = warp; u < G * C; u += nwarps) {
        const int32_t g = u / C, c = u % C;
        const float *q = qs + g * D;
        float qv[MPK_ATTN_LANE_D], acc[MPK_ATTN_LANE_D];
#pragma unroll
        for (int i = 0; i < MPK_ATTN_LANE_D; i++) {
            const int32_t d = lane + 32 * i;
            qv[i] = (i < nd && d < D) ? q[d] : 0.0f;
            acc[i] = 0.0f;
        }
        float m = -INFINITY, l = 0.0f;
        const int32_t t1 = min(t_hi, t_lo + (c + 1) * chunk);
        for (int32_t t = t_lo + c * chunk; t < t1; t++) {
            const int64_t off = mpk_attn_cache_offset(b, pt, t, D, page_size, page_stride);
            if (off < 0) continue;
            const mpk_bf16 *kr = k_cache + off, *vr = v_cache + off;  // (D)
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < MPK_ATTN_LANE_D; i++) {
                const int32_t d = lane + 32 * i;
                if (i < nd && d < D) s = fmaf(qv[i], mpk_bf2f(kr[d]), s);
            }
            s = mpk_warp_sum(s) * scale;
            if (!(s == s)) continue;  // a NaN score attends to nothing
            const float mn = fmaxf(m, s);
            const float corr = expf(m - mn), p = expf(s - mn);
            l = l * corr + p;
            m = mn;
#pragma unroll
            for (int i = 0; i < MPK_ATTN_LANE_D; i++) {
                const int32_t d = lane + 32 * i;
                if (i < nd && d < D) acc[i] = fmaf(p, mpk_bf2f(vr[d]), acc[i] * corr);
            }
        }
        float *dst = units + (int64_t)u * (D + 2);
#pragma unroll
        for (int i = 0; i < MPK_ATTN_LANE_D; i++) {
            const int32_t d = lane + 32 * i;
            if (i < nd && d < D) dst[d] = acc[i];
        }
        if (lane == 0) {
            dst[D] = m;
            dst[D + 1] = l;
        }
    }
    mpk_sync();
    for (int32_t i = threadIdx.x; i < G * D; i += MPK_DEV_THREADS)
        mpk_attn_combine_units(units, C, 1, C, i / D, i % D, D, part, out_row);
    mpk_sync();  // qs and units are reused by the next row
}

// ---- prompt rows on the tensor cores (the prompt kernel) ------------------------------------------
// A prefill chunk's rows attend row after row through mpk_attn_row: a chain of round trips per row,
// 408 us per layer for a 512-row chunk of Qwen3-0.6B (bench/NOTES.md v16). Here a tile of up to
// 64 / G consecutive rows of one request (64 query vectors: row-major, a row's G heads adjacent)
// attends key blocks of 64 positions from the paged cache: S = Q K^T and O += P V with mma.sync
// (m16n8k16, bf16 in, fp32 sums) under an online softmax, flash-attention style. Same rounding
// points as the row path: q and k are the bf16 values the row path uses, so the scores' products
// are exact (fp32 sums in another order); p = exp(s - m) is fp32 and enters P V as two bf16 halves
// (hi + lo, two MMAs), so P V keeps ~16 bits of p and the row path's tolerance holds; the output
// is rounded to bf16 once. Warps 0-7 compute (8 positions of S, all 64 vectors) and (D / 8 / 8
// column tiles of O, all vectors); all warps load. Shared memory (dynamic, bf16 unless named):
// Qs (64, D), Ks (64, D), Vt (D, 64) the block's values transposed, Ph and Pl (64, 64), then fp32
// wmax and wsum (8, 64), m, l, corr (64), the block's cache offsets (64, int64) and per-warp q
// buffers (nwarps, D) fp32. Rows of 16-byte units swizzled as gemm.cuh's (mpk_mma_unit).
#ifndef MPK_ATTN_MMA
#define MPK_ATTN_MMA 1
#endif
#if defined(MPK_KERNEL_PART) && MPK_KERNEL_PART == 2 && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && MPK_ATTN_MMA
#define MPK_ATTN_MMA_BUILT 1
#else
#define MPK_ATTN_MMA_BUILT 0
#endif
#define MPK_ATTN_MMA_M 64  // query vectors per tile
#define MPK_ATTN_OFFS 1024  // rows whose cache offsets a pass of the prompt kernel's appends looks up
#define MPK_ATTN_MMA_N 64  // positions per key block

#if MPK_ATTN_MMA_BUILT
// Whether the tensor-core path takes a batch's prompt rows of this head shape.
MPK_DEV bool mpk_attn_mma_ok(int32_t G, int32_t D) {
    return (D == 64 || D == 128) && G >= 1 && MPK_ATTN_MMA_M % G == 0 &&
           MPK_DEV_THREADS / 32 >= 8;
}

// The element offset of (row r, column c) in a swizzled bf16 matrix of `units` 16-byte units a row.
MPK_DEV int32_t mpk_attn_sw(int32_t r, int32_t c, int32_t units) {
    return r * units * 8 + mpk_mma_unit(r, c >> 3) * 8 + (c & 7);
}

// One step of 32 elements of K for rows [m16, m16 + 16) of A (bf16 in shared memory, ld elements a
// row, swizzled) against the lane's 16 bytes b of an 8-column tile: gemm.cuh's fragments (a lane's
// elements 0-3 in the first MMA, 4-7 in the second, in A and b alike), un the step's 16-byte unit.
MPK_DEV void mpk_attn_mma_step(float d[4], const mpk_bf16 *a, int32_t ld, int32_t m16, int32_t un, uint4 b) {
    const int32_t ra = m16 + (int32_t)(threadIdx.x % 32 >> 2), rb = ra + 8;
    const uint4 lo = *(const uint4 *)(a + (int64_t)ra * ld + mpk_mma_unit(ra, un) * 8);
    const uint4 hi = *(const uint4 *)(a + (int64_t)rb * ld + mpk_mma_unit(rb, un) * 8);
    mpk_mma_bf16(d, lo.x, hi.x, lo.y, hi.y, b.x, b.y);
    mpk_mma_bf16(d, lo.z, hi.z, lo.w, hi.w, b.z, b.w);
}

template <int D>
static __device__ __noinline__ void mpk_attn_prompt_tile(const mpk_bf16 *qkv, const mpk_bf16 *k_cache,
                                                         const mpk_bf16 *v_cache, const mpk_bf16 *q_norm,
                                                         const float *inv_freq, const mpk_batch *b,
                                                         const int32_t *pt, const int32_t *row_pos, int32_t r0,
                                                         int32_t nr, int32_t G, int32_t ld_qkv, int32_t page_size,
                                                         int64_t page_stride, float eps, float scale, mpk_bf16 *out,
                                                         int32_t ld_out) {
    constexpr int M = MPK_ATTN_MMA_M, N = MPK_ATTN_MMA_N, DU = D / 8, NU = N / 8, OT = D / 64;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = MPK_DEV_THREADS / 32;
    const int g8 = lane >> 2, q4 = lane & 3;
    char *base = (char *)mpk_dyn_smem();
    mpk_bf16 *Qs = (mpk_bf16 *)base, *Ks = Qs + M * D, *Vt = Ks + N * D, *Ph = Vt + D * N, *Pl = Ph + M * N;
    float *wmax = (float *)(Pl + M * N), *wsum = wmax + 8 * M, *mrow = wsum + 8 * M, *lrow = mrow + M,
          *corr = lrow + M;
    int64_t *koff = (int64_t *)(corr + M);
    float *qbuf = (float *)(koff + N) + warp * D;
    // The tile's queries: vector v is row r0 + v / G, head v % G (rows past nr: zeros).
    for (int32_t v = warp; v < M; v += nwarps) {
        const int32_t r = v / G, h = v % G;
        if (r < nr) {
            mpk_attn_prepare(qkv + (int64_t)(r0 + r) * ld_qkv + (int64_t)h * D, q_norm, inv_freq, row_pos[r0 + r], D, eps,
                             qbuf);
            for (int32_t d = lane; d < D; d += 32) Qs[mpk_attn_sw(v, d, DU)] = mpk_f2bf(qbuf[d]);
            __syncwarp();
        } else {
            for (int32_t d = lane; d < D; d += 32) Qs[mpk_attn_sw(v, d, DU)] = mpk_f2bf(0.0f);
        }
    }
    for (int32_t v = threadIdx.x; v < M; v += MPK_DEV_THREADS) {
        mrow[v] = -INFINITY;
        lrow[v] = 0.0f;
    }
    float o[OT][4][4];
    mpk_gemm_zero<OT>(o);
    const int32_t pos_hi = row_pos[r0 + nr - 1];
    for (int32_t kb = 0; kb <= pos_hi; kb += N) {
        mpk_sync();  // the previous block's Ks, Vt and P are consumed (and Qs, m, l written)
        for (int32_t i = threadIdx.x; i < N; i += MPK_DEV_THREADS)
            koff[i] = kb + i <= pos_hi ? mpk_attn_cache_offset(b, pt, kb + i, D, page_size, page_stride) : -1;
        mpk_sync();
        for (int32_t i = threadIdx.x; i < N * DU; i += MPK_DEV_THREADS) {
            const int32_t p = i / DU, u = i % DU;
            const int64_t off = koff[p];
            uint4 kv = make_uint4(0u, 0u, 0u, 0u), vv = kv;
            if (off >= 0) {
                kv = mpk_ld16(k_cache + off + u * 8);
                vv = mpk_ld16(v_cache + off + u * 8);
            }
            *(uint4 *)(Ks + (int64_t)p * D + mpk_mma_unit(p, u) * 8) = kv;
            const mpk_bf16 *ve = (const mpk_bf16 *)&vv;
#pragma unroll
            for (int e = 0; e < 8; e++) Vt[mpk_attn_sw(u * 8 + e, p, NU)] = ve[e];
        }
        mpk_sync();
        float sc[4][4];  // warp w < 8: positions kb + 8 w .., all vectors
        if (warp < 8) {
#pragma unroll
            for (int m = 0; m < 4; m++)
#pragma unroll
                for (int e = 0; e < 4; e++) sc[m][e] = 0.0f;
#pragma unroll
            for (int st = 0; st < D / 32; st++) {
                const int32_t j = warp * 8 + g8, un = st * 4 + q4;
                const uint4 kf = *(const uint4 *)(Ks + (int64_t)j * D + mpk_mma_unit(j, un) * 8);
#pragma unroll
                for (int m = 0; m < 4; m++) mpk_attn_mma_step(sc[m], Qs, D, m * 16, un, kf);
            }
            // Scores, masked: causal (a row attends to positions up to its own), unmapped
            // positions, and NaN scores (the row path: a NaN score attends to nothing).
#pragma unroll
            for (int m = 0; m < 4; m++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int32_t v = m * 16 + g8 + (e >> 1) * 8, t = warp * 8 + q4 * 2 + (e & 1);
                    const int32_t r = v / G;
                    float s = sc[m][e] * scale;
                    if (r >= nr || kb + t > row_pos[r0 + r] || koff[t] < 0 || !(s == s)) s = -INFINITY;
                    sc[m][e] = s;
                }
#pragma unroll
            for (int m = 0; m < 4; m++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    float x = fmaxf(sc[m][hh * 2], sc[m][hh * 2 + 1]);
                    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
                    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
                    if (q4 == 0) wmax[warp * M + m * 16 + g8 + hh * 8] = x;
                }
        }
        mpk_sync();
        for (int32_t v = threadIdx.x; v < M; v += MPK_DEV_THREADS) {
            float bm = wmax[v];
            for (int w = 1; w < 8; w++) bm = fmaxf(bm, wmax[w * M + v]);
            const float mo = mrow[v], mn = fmaxf(mo, bm);
            corr[v] = mn == -INFINITY ? 1.0f : expf(mo - mn);  // (mo = -inf: 0)
            mrow[v] = mn;
        }
        mpk_sync();
        if (warp < 8) {
#pragma unroll
            for (int m = 0; m < 4; m++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    const int32_t v = m * 16 + g8 + hh * 8;
                    const float mv = mrow[v];
                    float x = 0.0f;
#pragma unroll
                    for (int c = 0; c < 2; c++) {
                        const float s = sc[m][hh * 2 + c];
                        const float p = s == -INFINITY ? 0.0f : expf(s - mv);
                        const mpk_bf16 ph = mpk_f2bf(p);
                        const int32_t t = warp * 8 + q4 * 2 + c;
                        Ph[mpk_attn_sw(v, t, NU)] = ph;
                        Pl[mpk_attn_sw(v, t, NU)] = mpk_f2bf(p - mpk_bf2f(ph));
                        x += p;
                    }
                    x += __shfl_xor_sync(0xffffffffu, x, 1);
                    x += __shfl_xor_sync(0xffffffffu, x, 2);
                    if (q4 == 0) wsum[warp * M + v] = x;
                }
        }
        mpk_sync();
        for (int32_t v = threadIdx.x; v < M; v += MPK_DEV_THREADS) {
            float sum = 0.0f;
            for (int w = 0; w < 8; w++) sum += wsum[w * M + v];
            lrow[v] = lrow[v] * corr[v] + sum;
        }
        if (warp < 8) {
#pragma unroll
            for (int t = 0; t < OT; t++)
#pragma unroll
                for (int m = 0; m < 4; m++)
#pragma unroll
                    for (int e = 0; e < 4; e++) o[t][m][e] *= corr[m * 16 + g8 + (e >> 1) * 8];
#pragma unroll
            for (int st = 0; st < N / 32; st++) {
                const int32_t un = st * 4 + q4;
#pragma unroll
                for (int t = 0; t < OT; t++) {
                    const int32_t j = (warp * OT + t) * 8 + g8;  // the column d of O
                    const uint4 vf = *(const uint4 *)(Vt + (int64_t)j * N + mpk_mma_unit(j, un) * 8);
#pragma unroll
                    for (int m = 0; m < 4; m++) {  // p = hi + lo
                        mpk_attn_mma_step(o[t][m], Ph, N, m * 16, un, vf);
                        mpk_attn_mma_step(o[t][m], Pl, N, m * 16, un, vf);
                    }
                }
            }
        }
    }
    mpk_sync();  // lrow's last update
    if (warp < 8) {
#pragma unroll
        for (int t = 0; t < OT; t++)
#pragma unroll
            for (int m = 0; m < 4; m++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int32_t v = m * 16 + g8 + (e >> 1) * 8, d = (warp * OT + t) * 8 + q4 * 2 + (e & 1);
                    const int32_t r = v / G, h = v % G;
                    if (r >= nr) continue;
                    const float l = lrow[v];
                    out[(int64_t)(r0 + r) * ld_out + (int64_t)h * D + d] =
                        mpk_f2bf(l > 0.0f ? o[t][m][e] / l : __int_as_float(0x7fc00000));
                }
    }
    mpk_sync();  // the next tile reuses the shared memory
}

// The prompt rows [nd, rows) of the batch in tiles of consecutive rows of one request (at most
// MPK_ATTN_MMA_M / G rows), tile i taken by split i % R of R (row_first: this task's).
MPK_DEV void mpk_attn_prompt_rows(const mpk_bf16 *qkv, const mpk_bf16 *k_cache, const mpk_bf16 *v_cache,
                                  const mpk_bf16 *q_norm, const float *inv_freq, const mpk_batch *b,
                                  const int32_t *row_entry, const int32_t *row_pos, const int32_t *entry_slot,
                                  const int32_t *page_tables, int32_t nd, int32_t rows, int32_t row_first,
                                  int32_t R, int32_t G, int32_t D, int32_t ld_qkv, int32_t page_size,
                                  int64_t page_stride, float eps, float scale, mpk_bf16 *out, int32_t ld_out) {
    const int32_t T = MPK_ATTN_MMA_M / G;
    int32_t tile = 0;
    for (int32_t r0 = nd; r0 < rows;) {
        int32_t r1 = r0 + 1;
        while (r1 < rows && r1 - r0 < T && row_entry[r1] == row_entry[r0]) r1++;
        if (tile++ % R == row_first) {
            const int32_t *pt = page_tables + (int64_t)entry_slot[row_entry[r0]] * b->max_pages_per_request;
            if (D == 128)
                mpk_attn_prompt_tile<128>(qkv, k_cache, v_cache, q_norm, inv_freq, b, pt, row_pos, r0, r1 - r0, G,
                                          ld_qkv, page_size, page_stride, eps, scale, out, ld_out);
            else
                mpk_attn_prompt_tile<64>(qkv, k_cache, v_cache, q_norm, inv_freq, b, pt, row_pos, r0, r1 - r0, G,
                                         ld_qkv, page_size, page_stride, eps, scale, out, ld_out);
        }
        r0 = r1;
    }
}
#endif  // MPK_ATTN_MMA_BUILT

// ---- a split of the row's positions (flash-decoding, task.h) -------------------------------------
// After mpk_attn_row left this split's partial in its slot of the head's workspace ws (and its
// closing barrier ordered those stores before thread 0): take a ticket; the A-th arrival combines
// the A active slots into out_row and sets the ticket back to 0 for the next iteration (whose splits
// run after this task's completion is published, by the event chain). The slots are read from
// L2 (__ldcg): another SM wrote them, and this SM may hold a line of an earlier iteration in L1.
MPK_DEV void mpk_attn_split_finish(float *ws, int32_t A, int32_t G, int32_t D, mpk_bf16 *out_row) {
    mpk_task_smem *sm = mpk_smem();
    unsigned int *ticket = (unsigned int *)ws;
    if (threadIdx.x == 0) {
        unsigned int old;
        asm volatile("fence.acq_rel.gpu;" ::: "memory");  // release the block's partial
        asm volatile("atom.relaxed.gpu.global.add.u32 %0, [%1], 1;" : "=r"(old) : "l"(ticket) : "memory");
        const bool last = old == (unsigned int)A - 1;
        if (last) asm volatile("fence.acq_rel.gpu;" ::: "memory");  // acquire the others'
        sm->split_last = last;
    }
    mpk_sync();
    if (!sm->split_last) return;
    const float *slots = ws + MPK_ATTENTION_SPLIT_HEADER;  // (A, G, D + 2) of (S, G, D + 2)
    for (int32_t i = threadIdx.x; i < G * D; i += MPK_DEV_THREADS) {
        const int32_t g = i / D, d = i % D;
        float M = -INFINITY;
        for (int32_t s = 0; s < A; s++) M = fmaxf(M, __ldcg(slots + ((int64_t)s * G + g) * (D + 2) + D));
        float num = 0.0f, den = 0.0f;
        for (int32_t s = 0; s < A; s++) {
            const float *u = slots + ((int64_t)s * G + g) * (D + 2);
            const float l = __ldcg(u + D + 1);
            if (!(l > 0.0f)) continue;  // the split attended to nothing
            const float f = expf(__ldcg(u + D) - M);
            num = fmaf(f, __ldcg(u + d), num);
            den = fmaf(f, l, den);
        }
        out_row[(int64_t)g * D + d] = mpk_f2bf(den > 0.0f ? num / den : __int_as_float(0x7fc00000));
    }
    if (threadIdx.x == 0) *(volatile unsigned int *)ticket = 0u;
    mpk_sync();
}

// ---- keys and values of earlier positions, copied before the task's event -----------------------
// Positions before the decode row's were written by earlier iterations: they do not depend on
// this iteration's qkv row, so while the worker waits for the attention task's event its threads
// copy them (and look up the row's own cache offset) into shared memory with cp.async; after the
// event only the row's own key and value are computed, and the product reads shared memory. Only
// for one decode row (batch 1), the grouped fast path, and contexts that fit: others read the
// cache as before. Shared memory (dynamic, floats): [0, MPK_ATTN_KV_OFF) the body's q and
// partials, then (position, key | value, D) bf16, up to the key buffers at the end.
#define MPK_ATTN_KV_OFF 10240
// Off by default (the runtime then never calls the generated preload, and attention reads the
// cache as in v6): measured on the H100 (bench/NOTES.md, v7) it made no task faster and the step
// 2-3% slower (the copies' page-table lookups run before thread 0 polls the event, and the
// attention body did not shrink: its time is not in the key/value loads).
#ifndef MPK_ATTN_PRELOAD
#define MPK_ATTN_PRELOAD 0
#endif

MPK_DEV int32_t mpk_attn_kv_cap(int32_t G, int32_t D) {
    const int32_t nwarps = MPK_DEV_THREADS / 32;
    if (G > 4 || !(D == 64 || D == 128) || G * D + nwarps * G * (D + 2) > MPK_ATTN_KV_OFF) return 0;
    return (MPK_DYN_SMEM_BYTES / 4 - nwarps * D - MPK_ATTN_KV_OFF) / D;  // a position: 2 D bf16 = D floats
}

MPK_DEV mpk_bf16 *mpk_attn_kv_smem() { return (mpk_bf16 *)((float *)mpk_dyn_smem() + MPK_ATTN_KV_OFF); }

// All threads, before the event; nt is the iteration's row count.
MPK_DEV void mpk_attention_preload(const mpk_bf16 *k_cache, const mpk_bf16 *v_cache, const mpk_batch *b,
                                   int32_t nt, int32_t G, int32_t D, int32_t page_size,
                                   int64_t page_stride) {
    mpk_task_smem *s = mpk_smem();
    if (threadIdx.x == 0) s->pre_k = 0;
    if (nt != 1 || !MPK_ATTN_PRELOAD) return;
    const int32_t cap = mpk_attn_kv_cap(G, D);
    const int32_t *row_entry = MPK_BATCH_CARRAY(b, off_row_entry, int32_t);
    const int32_t *row_pos = MPK_BATCH_CARRAY(b, off_row_pos, int32_t);
    const int32_t *entry_slot = MPK_BATCH_CARRAY(b, off_entry_slot, int32_t);
    const int32_t *pt = MPK_BATCH_CARRAY(b, off_page_table, int32_t) +
                        (int64_t)entry_slot[row_entry[0]] * b->max_pages_per_request;
    const int32_t pos = row_pos[0];
    if (pos < 0 || pos >= cap) return;
    const int64_t off_cur = mpk_attn_cache_offset(b, pt, pos, D, page_size, page_stride);
    if (off_cur < 0) return;
    mpk_bf16 *kv = mpk_attn_kv_smem();
    const int32_t per = D / 8;  // 16-byte pieces of a row
    for (int32_t i = threadIdx.x; i < pos * 2 * per; i += MPK_DEV_THREADS) {
        const int32_t t = i / (2 * per), c = i % (2 * per);
        const int64_t off = mpk_attn_cache_offset(b, pt, t, D, page_size, page_stride);
        if (off < 0) {
            s->pre_bad = 1;
            continue;
        }
        const mpk_bf16 *src = (c < per ? k_cache : v_cache) + off + (c % per) * 8;
        const uint32_t dst = (uint32_t)__cvta_generic_to_shared(kv + (int64_t)t * 2 * D + (c < per ? 0 : D) + (c % per) * 8);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
    }
    if (threadIdx.x == 0) {
        s->pre_k = k_cache;
        s->pre_pos = pos;
        s->pre_off = off_cur;
    }
}

// Weights a task asks L2 for while its attention runs (ATTENTION_LINEAR): `rows` rows of `bytes`
// each, `ld` elements apart.
struct mpk_l2_ask {
    const mpk_bf16 *w;
    int32_t rows, bytes, ld;
};

MPK_DEV void mpk_l2_ask_issue(const mpk_l2_ask *a) {
    const int32_t lines = (a->bytes + 127) / 128;
    for (int32_t i = threadIdx.x; i < a->rows * lines; i += MPK_DEV_THREADS)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(a->w + (int64_t)(i / lines) * a->ld + (i % lines) * 64));
}

// ask (or null): weights asked of L2 once the keys are appended (the product that follows needs them).
// split of S (S > 1) with ws, the head's split workspace: a split of the positions when the
// iteration splits (task.h: mpk_attention_split_range), else split 0 attends all and the others
// return at once.
// Not inlined: keeps its registers out of the GEMV variants' allocation (spills).
static __device__ __noinline__ void mpk_attention_cuda(const mpk_bf16 *qkv, mpk_bf16 *k_cache, mpk_bf16 *v_cache,
                                const mpk_bf16 *q_norm, const mpk_bf16 *k_norm,
                                const float *inv_freq, mpk_bf16 *out, const mpk_batch *b,
                                int32_t G, int32_t D, int32_t ld_qkv, int32_t ld_out,
                                int32_t page_size, int64_t page_stride, float eps, float scale,
                                const mpk_l2_ask *ask = nullptr, int32_t split = 0, int32_t S = 1,
                                float *ws = nullptr) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = MPK_DEV_THREADS / 32;
    const int32_t *row_entry = MPK_BATCH_CARRAY(b, off_row_entry, int32_t);
    const int32_t *row_pos = MPK_BATCH_CARRAY(b, off_row_pos, int32_t);
    const int32_t *entry_slot = MPK_BATCH_CARRAY(b, off_entry_slot, int32_t);
    const int32_t *page_tables = MPK_BATCH_CARRAY(b, off_page_table, int32_t);
    const int32_t rows = b->num_tokens;
    int32_t t_lo, t_hi;
    const int32_t A = ws ? mpk_attention_split_range(S, split, rows, rows == 1 ? row_pos[0] : -1, &t_lo, &t_hi) : 0;
    const bool split_now = A > 0;
    // An iteration of several rows (a prefill chunk, several requests' decode rows) spreads its rows
    // over R = min(S, rows) splits: split s attends rows s, s + R, ... Every one of them appends
    // all the rows' keys and values first (a chunk's rows attend to each other's positions): the
    // same bytes to the same places, as ATTENTION_LINEAR's tasks do, and each reads back its own
    // stores. A row's result does not depend on which split computes it, so the CPU, which leaves
    // them all to split 0, gives the same values.
    const int32_t R = ws && !split_now && S > 1 && rows > 1 ? min(S, rows) : 1;
    if (A ? split >= A : split >= R) return;  // (one row, unsplit: split 0 runs the whole attention)
    const int32_t row_first = R > 1 ? split : 0;
    if (G <= 0 || D <= 0) return;
    if (D > MPK_ATTN_MAX_D || (G + nwarps) * D > MPK_DYN_SMEM_BYTES / 4 || G * D + G * (D + 2) > MPK_DYN_SMEM_BYTES / 4) {
        for (int64_t i = threadIdx.x; i < (int64_t)rows * G * D; i += MPK_DEV_THREADS)
            out[(i / (G * D)) * ld_out + i % (G * D)] = mpk_f2bf(__int_as_float(0x7fc00000));
        return;
    }
    // (D) this warp's key being prepared, at the end of the area: the start holds row 0's q.
    float *buf = (float *)mpk_dyn_smem() + (MPK_DYN_SMEM_BYTES / 4 - nwarps * D) + warp * D;
    // Earlier positions copied before the event (mpk_attention_preload), for this very row.
    mpk_task_smem *sm = mpk_smem();
    const bool pre = MPK_ATTN_PRELOAD && sm->pre_k == (const void *)k_cache && rows == 1 &&
                     sm->pre_pos == row_pos[0] && !sm->pre_bad;
    mpk_bf16 *kvs = pre ? mpk_attn_kv_smem() : (mpk_bf16 *)0;
    // Decode (few rows): the warps left over prepare the first row's query heads while the others append
    // the keys, saving the attention one dependent round of loads, norms and rotations.
    const bool early_q = rows >= 1 && rows + G <= nwarps;
    if (early_q && warp >= rows && warp < rows + G) {
        const int32_t g = warp - rows;
        mpk_attn_prepare(qkv + (int64_t)row_first * ld_qkv + (int64_t)g * D, q_norm, inv_freq,
                         row_pos[row_first], D, eps, (float *)mpk_dyn_smem() + g * D);
    }

    // Every row's k and v first: a prefill chunk's rows attend to each other's positions. Of a
    // split, only the last (it holds the row's position) appends.
    const int32_t append_rows = !split_now || split == A - 1 ? rows : 0;
    // A prompt chunk's rows (the prompt kernel): their cache offsets first, one row per thread,
    // so that a warp's row after row is one round trip each, not three (the page-table lookups),
    // MPK_ATTN_OFFS rows per pass, in shared memory below the per-warp key buffers (not where
    // ATTENTION_LINEAR keeps its outputs).
    int64_t *offs = (int64_t *)0;
#if MPK_ATTN_MMA_BUILT
    if (!pre && append_rows > nwarps && !__isShared(out))
        offs = (int64_t *)((char *)mpk_dyn_smem() + MPK_DYN_SMEM_BYTES - (int64_t)nwarps * D * 4 - MPK_ATTN_OFFS * 8);
#endif
    const int32_t pass = offs ? MPK_ATTN_OFFS : (append_rows > 0 ? append_rows : 1);
    for (int32_t a0 = 0; a0 < append_rows; a0 += pass) {
        const int32_t a1 = min(append_rows, a0 + pass);
        if (offs) {
            for (int32_t r = a0 + threadIdx.x; r < a1; r += MPK_DEV_THREADS) {
                const int32_t *pt = page_tables + (int64_t)entry_slot[row_entry[r]] * b->max_pages_per_request;
                offs[r - a0] = mpk_attn_cache_offset(b, pt, row_pos[r], D, page_size, page_stride);
            }
            mpk_sync();
            if (D == 128 || D == 64) {
                if (D == 128)
                    mpk_attn_append_rows<4>(qkv, offs, row_pos, a0, a1, G, ld_qkv, k_norm, inv_freq, eps, k_cache, v_cache);
                else
                    mpk_attn_append_rows<2>(qkv, offs, row_pos, a0, a1, G, ld_qkv, k_norm, inv_freq, eps, k_cache, v_cache);
                mpk_sync();  // the next pass overwrites offs
                continue;
            }
        }
        for (int32_t r = a0 + warp; r < a1; r += nwarps) {
            int64_t off = sm->pre_off;
            if (offs) {
                off = offs[r - a0];
            } else if (!pre) {
                const int32_t *pt = page_tables + (int64_t)entry_slot[row_entry[r]] * b->max_pages_per_request;
                off = mpk_attn_cache_offset(b, pt, row_pos[r], D, page_size, page_stride);
            }
            if (off < 0) continue;
            const mpk_bf16 *k = qkv + (int64_t)r * ld_qkv + (int64_t)G * D;  // (D), then v (D)
            mpk_attn_prepare(k, k_norm, inv_freq, row_pos[r], D, eps, buf);
            mpk_bf16 *ks = kvs ? kvs + (int64_t)row_pos[r] * 2 * D : (mpk_bf16 *)0;  // (the row's slot)
            for (int32_t d = lane; d < D; d += 32) {
                const mpk_bf16 kb = mpk_f2bf(buf[d]), vb = k[D + d];
                k_cache[off + d] = kb;
                v_cache[off + d] = vb;
                if (ks) {
                    ks[d] = kb;
                    ks[D + d] = vb;
                }
            }
            __syncwarp();
            if (MPK_ATTN_MARK == 3) mpk_mark_inputs();  // (thread 0 only: row 0's warp)
        }
        if (offs) mpk_sync();  // the next pass overwrites offs
    }
    if (MPK_ATTN_PRELOAD) asm volatile("cp.async.wait_all;" ::: "memory");  // this thread's copies of the preload
    mpk_sync();  // the block's cache writes are visible to all its threads after this
    if (MPK_ATTN_MARK == 0) mpk_mark_inputs();
    if (ask) mpk_l2_ask_issue(ask);

    // Prompt rows on the tensor cores (the prompt kernel; mpk_attn_prompt_rows above) after the
    // decode rows (the first of which may have its query prepared at the start of shared memory,
    // which the tiles use), unless the output is on chip (ATTENTION_LINEAR keeps it at the top of
    // the area the tiles use).
#if MPK_ATTN_MMA_BUILT
    const bool tiles = !split_now && !kvs && mpk_attn_mma_ok(G, D) && b->decode_rows < rows && !__isShared(out);
#else
    const bool tiles = false;
#endif
    const int32_t row_end = tiles ? b->decode_rows : rows;
    for (int32_t r = row_first; r < row_end; r += R) {
        // (with kvs the product reads shared memory only: no page-table lookups)
        const int32_t *pt = kvs ? page_tables : page_tables + (int64_t)entry_slot[row_entry[r]] * b->max_pages_per_request;
        float *part = split_now ? ws + MPK_ATTENTION_SPLIT_HEADER + (int64_t)split * G * (D + 2) : nullptr;
        mpk_attn_row(qkv + (int64_t)r * ld_qkv, k_cache, v_cache, q_norm, inv_freq, b, pt, row_pos[r],
                     split_now ? t_lo : 0, split_now ? t_hi : row_pos[r] + 1, G, D, page_size,
                     page_stride, eps, scale, out + (int64_t)r * ld_out, part, r == row_first && early_q, kvs);
    }
#if MPK_ATTN_MMA_BUILT
    if (tiles)
        mpk_attn_prompt_rows(qkv, k_cache, v_cache, q_norm, inv_freq, b, row_entry, row_pos, entry_slot, page_tables,
                             b->decode_rows, rows, row_first, R, G, D, ld_qkv, page_size, page_stride, eps, scale, out,
                             ld_out);
#endif
    if (split_now) mpk_attn_split_finish(ws, A, G, D, out);
    if (MPK_ATTN_PRELOAD && threadIdx.x == 0) sm->pre_bad = 0;  // (after the body's last barrier)
}

// ---- attention and the output projection in one task --------------------------------------------
// ATTENTION_LINEAR (src/kernels/cpu/attention.c: mpk_attention_linear_cpu): the attention of hpt kv
// heads for every row, its outputs (bf16) kept in shared memory, then multiplied by the task's
// slice of the output projection into fp32 partial sums. Every task of a head group appends the
// rows' keys and values, not only the first (the one the layer declares as the writer, so that no
// task of the layer waits on another): the others store the same bytes to the same places, which
// leaves the cache as one store would, and each task then reads back its own stores. (The CPU's
// other tasks write nothing and recompute the keys instead: there concurrent stores would be a
// data race in C.)
// The heads' outputs (rows, hpt * G * D) sit at the top of the dynamic area, below the per-warp
// key buffers of mpk_attention_cuda and above its q and chunk partials; the layer bounds their
// size (MPK_ATTENTION_LINEAR_MAX_ROW_BYTES), and a shape that does not fit gives NaN sums.

MPK_DEV void mpk_attention_linear_cuda(const mpk_bf16 *qkv, mpk_bf16 *k_cache, mpk_bf16 *v_cache,
                                       const mpk_bf16 *q_norm, const mpk_bf16 *k_norm,
                                       const float *inv_freq, const mpk_bf16 *w, float *part,
                                       const mpk_batch *b, int32_t G, int32_t D, int32_t ld_qkv,
                                       int32_t ld_w, int32_t page_size, int64_t page_stride,
                                       int32_t hpt, int32_t n, int32_t ld_part, float eps,
                                       float scale) {
    const int nwarps = MPK_DEV_THREADS / 32;
    const int32_t rows = b->num_tokens, Kg = hpt * G * D;
    if (rows <= 0 || G <= 0 || D <= 0 || hpt <= 0) return;
    const int64_t top = (int64_t)MPK_DYN_SMEM_BYTES - (int64_t)nwarps * D * 4;
    const int64_t bytes = ((int64_t)rows * Kg * 2 + 15) / 16 * 16;
    const int64_t low = 4 * ((int64_t)G * D + (int64_t)nwarps * G * (D + 2));
    const int64_t xs_off = (top - bytes) & ~(int64_t)15;
    if (Kg % 8 || ld_w % 8 || !mpk_aligned16(w) || D > MPK_ATTN_MAX_D || xs_off < low) {
        for (int64_t i = threadIdx.x; i < (int64_t)rows * n; i += MPK_DEV_THREADS)
            part[(i / n) * ld_part + i % n] = __int_as_float(0x7fc00000);
        return;
    }
    mpk_bf16 *xs = (mpk_bf16 *)((char *)mpk_dyn_smem() + xs_off);  // (rows, Kg)
    // The weights do not depend on the attention: ask L2 for them once the first head's keys are
    // appended, so that the product after the attention finds them on chip (asked before the
    // attention instead, or not at all, measured no better; copied into shared memory, slower:
    // bench/NOTES.md v9).
    const mpk_l2_ask ask = {w, n, Kg * 2, ld_w};
    for (int32_t h = 0; h < hpt; h++)
        mpk_attention_cuda(qkv + (int64_t)h * (G + 2) * D, k_cache + (int64_t)h * page_size * D,
                           v_cache + (int64_t)h * page_size * D, q_norm, k_norm, inv_freq,
                           xs + (int64_t)h * G * D, b, G, D, ld_qkv, Kg, page_size, page_stride, eps, scale,
                           h == 0 ? &ask : nullptr);
    mpk_sync();
    for (int32_t r0 = 0; r0 < rows; r0 += MPK_GEMV_ROWS) {
        const int32_t nr = min(MPK_GEMV_ROWS, rows - r0);
        mpk_gemv_staged_tile(xs + (int64_t)r0 * Kg, Kg, r0, nr, w, (const mpk_bf16 *)0, (mpk_bf16 *)0,
                             Kg, n, ld_w, 0, ld_part, part);
        mpk_sync();  // the split sums' scratch is reused by the next tile
    }
}

#endif  // MPK_KERNELS_CUDA_ATTENTION_CUH
