// kernels.h — the CPU task kernels: plain C, bf16 storage with fp32 accumulation, written to be
// read. They are the oracle the CUDA task kernels (src/kernels/cuda/<stem>.cuh, same stem and
// argument order) are tested against. Pointers are already offset to the task's slice; `rows` is
// the number of token rows to compute; ld_* are row strides in elements.
#ifndef MPK_KERNELS_CPU_KERNELS_H
#define MPK_KERNELS_CPU_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../../runtime/batch.h"
#include "../task.h"  // MPK_ATTENTION_LINEAR_MAX_ROW_BYTES

typedef uint16_t mpk_bf16;

static inline float mpk_bf16_to_f32(mpk_bf16 h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

// Round to nearest even; NaN stays NaN.
static inline mpk_bf16 mpk_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (mpk_bf16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (mpk_bf16)(u >> 16);
}

static inline float mpk_round_bf16(float f) { return mpk_bf16_to_f32(mpk_f32_to_bf16(f)); }

// out[r, c] = weight[ids[r], c] for c < cols; an id outside [0, vocab) gives a zero row.
void mpk_embed_cpu(const int32_t *ids, const mpk_bf16 *weight, mpk_bf16 *out, int32_t rows,
                   int32_t cols, int32_t ld_w, int32_t ld_out, int32_t vocab);

// out[r, :] = x[r, :] * rsqrt(mean(x[r, :]^2) + eps) * weight, one rounding to bf16.
void mpk_rmsnorm_cpu(const mpk_bf16 *x, const mpk_bf16 *weight, mpk_bf16 *out, int32_t rows,
                     int32_t H, int32_t ld_x, int32_t ld_out, float eps);

// out[r, j] = sum_k bf16(rmsnorm(x)[r, k]) * w[j, k] for j < n. The normalised row is rounded to
// bf16 first, so the fused task equals rmsnorm followed by linear exactly.
void mpk_rmsnorm_linear_cpu(const mpk_bf16 *x, const mpk_bf16 *norm_w, const mpk_bf16 *w,
                            mpk_bf16 *out, int32_t rows, int32_t K, int32_t n, int32_t ld_x,
                            int32_t ld_w, int32_t ld_out, float eps);

// out[r, j] = sum_k x[r, k] * w[j, k] for j < n.
void mpk_linear_cpu(const mpk_bf16 *x, const mpk_bf16 *w, mpk_bf16 *out, int32_t rows, int32_t K,
                    int32_t n, int32_t ld_x, int32_t ld_w, int32_t ld_out);

// out[r, j] = sum_k x[r, k] * w[j, k] + res[r, j]; out may equal res.
void mpk_linear_residual_cpu(const mpk_bf16 *x, const mpk_bf16 *w, const mpk_bf16 *res,
                             mpk_bf16 *out, int32_t rows, int32_t K, int32_t n, int32_t ld_x,
                             int32_t ld_w, int32_t ld_res, int32_t ld_out);

// The CPU attention keeps a few head-sized rows on the stack; the attention layer must reject a
// larger head_dim (a larger D makes the task fill its output with NaN rather than overflow).
#define MPK_ATTENTION_MAX_HEAD_DIM 512

// One kv head's attention for every row of the batch. qkv points at the head group's columns:
// G query heads, then k, then v (each D wide). For each row: q/k per-head RMSNorm when the
// weights are non-NULL, RoPE (rotate-half) at the row's position when inv_freq is non-NULL,
// k and v appended to the paged cache at that position, then causal softmax attention over
// positions [0, pos] of the row's request. k_cache/v_cache point at page 0 of this head;
// element (page, i, d) is at page * page_stride + i * D + d. out points at the group's G*D
// output columns. With split (S > 1), this is split s of S of the head (task.h:
// mpk_attention_split_range): ws is the head's split workspace, whose ticket must be 0 between
// iterations (the layer's tensor is zeroed at every run start).
typedef struct mpk_attention_split {
    int32_t s, S;
    float *ws;  // (MPK_ATTENTION_SPLIT_HEADER + S * G * (D + 2)) floats
} mpk_attention_split;

void mpk_attention_cpu(const mpk_bf16 *qkv, mpk_bf16 *k_cache, mpk_bf16 *v_cache,
                       const mpk_bf16 *q_norm, const mpk_bf16 *k_norm, const float *inv_freq,
                       mpk_bf16 *out, const mpk_batch *batch, int32_t G, int32_t D,
                       int32_t ld_qkv, int32_t ld_out, int32_t page_size, int64_t page_stride,
                       float eps, float scale, const mpk_attention_split *split);

// Attention of kv heads [0, hpt) (qkv, caches at the first; head h at + h * (G + 2) * D and
// + h * page_size * D) for every row, as mpk_attention_cpu, then the product of the heads'
// outputs (rounded to bf16; row of hpt * G * D) with w (n rows, stride ld_w) into fp32 part[r, j].
// Only with `append` are the rows' keys and values written to the cache; otherwise a position of
// this batch is read from qkv (its key normalised and rotated again, the same bits) and only
// earlier positions from the cache.
void mpk_attention_linear_cpu(const mpk_bf16 *qkv, mpk_bf16 *k_cache, mpk_bf16 *v_cache,
                              const mpk_bf16 *q_norm, const mpk_bf16 *k_norm,
                              const float *inv_freq, const mpk_bf16 *w, float *part,
                              const mpk_batch *batch, int32_t G, int32_t D, int32_t ld_qkv,
                              int32_t ld_w, int32_t page_size, int64_t page_stride, int32_t hpt,
                              int32_t n, int32_t ld_part, float eps, float scale, int append);

// s = bf16(x[r, k] + part[r, k] + part[r, K + k] + ... (P groups, added in order in fp32));
// x_out[r, c0 .. c0 + count) = s there; out[r, j] = sum_k bf16(rmsnorm(s)[k]) * w[j, k].
void mpk_residual_rmsnorm_linear_cpu(const mpk_bf16 *x, const float *part, const mpk_bf16 *norm_w,
                                     const mpk_bf16 *w, mpk_bf16 *out, mpk_bf16 *x_out,
                                     int32_t rows, int32_t K, int32_t n, int32_t ld_x,
                                     int32_t ld_w, int32_t ld_out, int32_t P, int32_t ld_part,
                                     int32_t ld_xo, int32_t c0, int32_t count, float eps);

// out[r, j] = silu(gate[r, j]) * up[r, j] for j < n.
void mpk_silu_mul_cpu(const mpk_bf16 *gate, const mpk_bf16 *up, mpk_bf16 *out, int32_t rows,
                      int32_t n, int32_t ld_in, int32_t ld_out);

// h = bf16(silu(in[:, :I]) * in[:, I:2I]); out[r, j] = sum_i h[r, i] * w[j, i] + res[r, j].
void mpk_silu_mul_linear_residual_cpu(const mpk_bf16 *in, const mpk_bf16 *w, const mpk_bf16 *res,
                                      mpk_bf16 *out, int32_t rows, int32_t I, int32_t n,
                                      int32_t ld_in, int32_t ld_w, int32_t ld_res,
                                      int32_t ld_out);

// Per row, the maximum of logits[r, 0..n) and its index first_id + j (lowest on ties; NaN never
// wins, an all-NaN chunk gives -inf and first_id).
void mpk_argmax_partial_cpu(const mpk_bf16 *logits, float *part_val, int32_t *part_idx,
                            int32_t rows, int32_t n, int32_t ld_logits, int32_t ld_part,
                            int32_t first_id);

// out[r] = the index of the largest of P partial maxima (lowest index on ties).
void mpk_argmax_reduce_cpu(const float *part_val, const int32_t *part_idx, int32_t *out,
                           int32_t rows, int32_t P, int32_t ld_part);

// For each row in [row_begin, row_end) that the batch samples (the last row of an entry whose
// sample flag is set): temperature / top-k / top-p sampling with the request's settings and a
// counter-based random number from (seed, position); temperature <= 0 is argmax. Other rows are
// left untouched.
void mpk_sampling_cpu(const mpk_bf16 *logits, int32_t *out, const mpk_batch *batch,
                      int32_t row_begin, int32_t row_end, int32_t V, int32_t ld_logits);

// out = in (a single rank's all-reduce).
void mpk_allreduce_cpu(const mpk_bf16 *in, mpk_bf16 *out, int32_t rows, int32_t n,
                       int32_t ld_in, int32_t ld_out);

#endif  // MPK_KERNELS_CPU_KERNELS_H
