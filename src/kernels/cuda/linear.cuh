// linear.cuh — LINEAR, LINEAR_RESIDUAL, RMSNORM_LINEAR and SILU_MUL_LINEAR_RESIDUAL on the GPU:
// one matrix-vector product (the decode hot path) with pluggable input rows, so the fused tasks
// round their computed inputs exactly as the CPU oracle does (src/kernels/cpu/matvec.h).
#ifndef MPK_KERNELS_CUDA_LINEAR_CUH
#define MPK_KERNELS_CUDA_LINEAR_CUH

#include "common.cuh"

// ---- the shared product -------------------------------------------------------------------------
//
// Each warp owns output columns j = warp, warp + nwarps, ...; for column j it streams the weight
// row w[j, 0..K) with 16-byte loads (8 bf16 per lane, 256 per warp load, MPK_GEMV_UNROLL loads in
// flight per lane), multiplies with up to MPK_GEMV_ROWS input rows at once (so the weight row is
// read once per row tile) and reduces across the warp. Input rows come from an XRows object:
//   prologue(r0, nr)   block-wide, before the rows [r0, r0 + nr) are used (all threads call it)
//   load8(r, k, f[8])  elements [k, k + 8) of row r as floats holding bf16 values
//   load1(r, k)        element k of row r
//   vec_ok()           whether load8 may be used (alignment)
// Row tiles beyond the first re-read the weights: prefill is correct but not yet fast.
#define MPK_GEMV_ROWS 4
#define MPK_GEMV_UNROLL 4

template <class XRows>
MPK_DEV void mpk_gemv(XRows &xr, const mpk_bf16 *w, const mpk_bf16 *res, mpk_bf16 *out,
                      int32_t rows, int32_t K, int32_t n, int32_t ld_w, int32_t ld_res,
                      int32_t ld_out) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    const bool vec = (K % 8 == 0) && (ld_w % 8 == 0) && mpk_aligned16(w) && xr.vec_ok();
    for (int32_t r0 = 0; r0 < rows; r0 += MPK_GEMV_ROWS) {
        const int32_t nr = min(MPK_GEMV_ROWS, rows - r0);
        xr.prologue(r0, nr);
        for (int32_t j = warp; j < n; j += nwarps) {
            const mpk_bf16 *wr = w + (int64_t)j * ld_w;  // (K)
            float acc[MPK_GEMV_ROWS];
#pragma unroll
            for (int r = 0; r < MPK_GEMV_ROWS; r++) acc[r] = 0.0f;
            if (vec) {
                for (int32_t kb = lane * 8; kb < K; kb += 256 * MPK_GEMV_UNROLL) {
                    uint4 wv[MPK_GEMV_UNROLL];
#pragma unroll
                    for (int u = 0; u < MPK_GEMV_UNROLL; u++)
                        if (kb + u * 256 < K) wv[u] = mpk_ld16_ro(wr + kb + u * 256);
#pragma unroll
                    for (int u = 0; u < MPK_GEMV_UNROLL; u++) {
                        const int32_t k = kb + u * 256;
                        if (k >= K) break;
                        float wf[8];
                        mpk_unpack8(wv[u], wf);
#pragma unroll
                        for (int r = 0; r < MPK_GEMV_ROWS; r++) {
                            if (r >= nr) break;
                            float xf[8];
                            xr.load8(r0 + r, k, xf);
#pragma unroll
                            for (int e = 0; e < 8; e++) acc[r] = fmaf(xf[e], wf[e], acc[r]);
                        }
                    }
                }
            } else {
                for (int32_t k = lane; k < K; k += 32) {
                    const float wf = mpk_bf2f(wr[k]);
#pragma unroll
                    for (int r = 0; r < MPK_GEMV_ROWS; r++)
                        if (r < nr) acc[r] = fmaf(xr.load1(r0 + r, k), wf, acc[r]);
                }
            }
#pragma unroll
            for (int r = 0; r < MPK_GEMV_ROWS; r++) acc[r] = mpk_warp_sum(acc[r]);
            if (lane == 0) {
                for (int r = 0; r < nr; r++) {
                    float s = acc[r];
                    if (res) s += mpk_bf2f(res[(int64_t)(r0 + r) * ld_res + j]);
                    out[(int64_t)(r0 + r) * ld_out + j] = mpk_f2bf(s);
                }
            }
        }
        __syncthreads();  // the next tile's prologue may overwrite what this tile read
    }
}

// ---- input rows ---------------------------------------------------------------------------------

struct mpk_plain_rows {
    const mpk_bf16 *x;  // (rows, ld_x)
    int32_t ld_x;
    MPK_DEV bool vec_ok() const { return ld_x % 8 == 0 && mpk_aligned16(x); }
    MPK_DEV void prologue(int32_t, int32_t) {}
    MPK_DEV void load8(int32_t r, int32_t k, float f[8]) const {
        mpk_unpack8(mpk_ld16(x + (int64_t)r * ld_x + k), f);
    }
    MPK_DEV float load1(int32_t r, int32_t k) const { return mpk_bf2f(x[(int64_t)r * ld_x + k]); }
};

// 1 / sqrt(mean(x^2) + eps) of one row, computed by one warp (all lanes get it).
MPK_DEV float mpk_rms_scale_warp(const mpk_bf16 *x, int32_t H, float eps) {
    float s = 0.0f;
    for (int32_t k = threadIdx.x % 32; k < H; k += 32) {
        const float v = mpk_bf2f(x[k]);
        s = fmaf(v, v, s);
    }
    s = mpk_warp_sum(s);
    return 1.0f / sqrtf(s / (float)H + eps);
}

// The normalised element exactly as the CPU computes it (matvec.h: mpk_cpu_rms_elem).
MPK_DEV float mpk_rms_elem(float x, float scale, float w) { return mpk_round_bf(x * scale * w); }

struct mpk_norm_rows {
    const mpk_bf16 *x;       // (rows, ld_x)
    const mpk_bf16 *norm_w;  // (K)
    int32_t ld_x, K;
    float eps;
    float *scale;            // (MPK_GEMV_ROWS) shared memory
    MPK_DEV bool vec_ok() const { return ld_x % 8 == 0 && mpk_aligned16(x) && mpk_aligned16(norm_w); }
    MPK_DEV void prologue(int32_t r0, int32_t nr) {
        const int warp = threadIdx.x / 32;
        if (warp < nr) {
            const float s = mpk_rms_scale_warp(x + (int64_t)(r0 + warp) * ld_x, K, eps);
            if (threadIdx.x % 32 == 0) scale[warp] = s;
        }
        __syncthreads();
    }
    MPK_DEV void load8(int32_t r, int32_t k, float f[8]) const {
        float nw[8];
        mpk_unpack8(mpk_ld16(x + (int64_t)r * ld_x + k), f);
        mpk_unpack8(mpk_ld16(norm_w + k), nw);
        const float s = scale[r % MPK_GEMV_ROWS];
#pragma unroll
        for (int e = 0; e < 8; e++) f[e] = mpk_rms_elem(f[e], s, nw[e]);
    }
    MPK_DEV float load1(int32_t r, int32_t k) const {
        return mpk_rms_elem(mpk_bf2f(x[(int64_t)r * ld_x + k]), scale[r % MPK_GEMV_ROWS],
                            mpk_bf2f(norm_w[k]));
    }
};

// silu(g) * u rounded, exactly as the CPU computes it (matvec.h: mpk_cpu_silu_mul_elem).
MPK_DEV float mpk_silu_mul_elem(float g, float u) { return mpk_round_bf(g / (1.0f + expf(-g)) * u); }

struct mpk_silu_rows {
    const mpk_bf16 *in;  // (rows, ld_in): gate in [0, I), up in [I, 2I)
    int32_t ld_in, I;
    MPK_DEV bool vec_ok() const { return ld_in % 8 == 0 && I % 8 == 0 && mpk_aligned16(in); }
    MPK_DEV void prologue(int32_t, int32_t) {}
    MPK_DEV void load8(int32_t r, int32_t k, float f[8]) const {
        const mpk_bf16 *g = in + (int64_t)r * ld_in + k;
        float u[8];
        mpk_unpack8(mpk_ld16(g), f);
        mpk_unpack8(mpk_ld16(g + I), u);
#pragma unroll
        for (int e = 0; e < 8; e++) f[e] = mpk_silu_mul_elem(f[e], u[e]);
    }
    MPK_DEV float load1(int32_t r, int32_t k) const {
        const mpk_bf16 *g = in + (int64_t)r * ld_in + k;
        return mpk_silu_mul_elem(mpk_bf2f(g[0]), mpk_bf2f(g[I]));
    }
};

// ---- the tasks (same argument order as src/kernels/cpu/kernels.h) ----------------------------

MPK_DEV void mpk_linear_cuda(const mpk_bf16 *x, const mpk_bf16 *w, mpk_bf16 *out, int32_t rows,
                             int32_t K, int32_t n, int32_t ld_x, int32_t ld_w, int32_t ld_out) {
    mpk_plain_rows xr = {x, ld_x};
    mpk_gemv(xr, w, (const mpk_bf16 *)0, out, rows, K, n, ld_w, 0, ld_out);
}

MPK_DEV void mpk_linear_residual_cuda(const mpk_bf16 *x, const mpk_bf16 *w, const mpk_bf16 *res,
                                      mpk_bf16 *out, int32_t rows, int32_t K, int32_t n,
                                      int32_t ld_x, int32_t ld_w, int32_t ld_res,
                                      int32_t ld_out) {
    mpk_plain_rows xr = {x, ld_x};
    mpk_gemv(xr, w, res, out, rows, K, n, ld_w, ld_res, ld_out);
}

MPK_DEV void mpk_rmsnorm_linear_cuda(const mpk_bf16 *x, const mpk_bf16 *norm_w, const mpk_bf16 *w,
                                     mpk_bf16 *out, int32_t rows, int32_t K, int32_t n,
                                     int32_t ld_x, int32_t ld_w, int32_t ld_out, float eps) {
    mpk_norm_rows xr = {x, norm_w, ld_x, K, eps, mpk_smem()->red};
    mpk_gemv(xr, w, (const mpk_bf16 *)0, out, rows, K, n, ld_w, 0, ld_out);
}

MPK_DEV void mpk_silu_mul_linear_residual_cuda(const mpk_bf16 *in, const mpk_bf16 *w,
                                               const mpk_bf16 *res, mpk_bf16 *out, int32_t rows,
                                               int32_t I, int32_t n, int32_t ld_in, int32_t ld_w,
                                               int32_t ld_res, int32_t ld_out) {
    mpk_silu_rows xr = {in, ld_in, I};
    mpk_gemv(xr, w, res, out, rows, I, n, ld_w, ld_res, ld_out);
}

#endif  // MPK_KERNELS_CUDA_LINEAR_CUH
