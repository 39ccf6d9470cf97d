// linear.cuh — LINEAR, LINEAR_RESIDUAL, RMSNORM_LINEAR and SILU_MUL_LINEAR_RESIDUAL on the GPU:
// one matrix-vector product (the decode hot path) with pluggable input rows, so the fused tasks
// round their computed inputs exactly as the CPU oracle does (src/kernels/cpu/matvec.h).
#ifndef MPK_KERNELS_CUDA_LINEAR_CUH
#define MPK_KERNELS_CUDA_LINEAR_CUH

#include "common.cuh"
#include "gemm.cuh"
#include "stream.cuh"

// ---- the shared product -------------------------------------------------------------------------
//
// Decode is a matrix-vector product per layer, bound by streaming the weights once. A task first
// stages its input rows in shared memory as bf16 (computing them when the task is fused: the
// normalised row of rmsnorm_linear, silu(gate)*up of the down projection — once per task, not
// once per output column), then each warp owns pairs of output columns j, j + 1 (warp * 2,
// + 2 * nwarps, ...) and streams both weight rows with 16-byte loads, MPK_GEMV_UNROLL per row in
// flight per lane (8 loads, 128 bytes per lane; 64 KB per block of 16 warps, 48 KB at 12),
// multiplying with up to MPK_GEMV_ROWS staged rows, then reduces across the warp. Per column the
// lane's sum runs over k = lane*8 + 256*i in order, so results do not depend on the pairing or the
// row tile.
//   stage(r0, nr, xs, ldk)  block-wide: rows [r0, r0 + nr) into xs[(r - r0) * ldk + k], bf16
//   load8(r, k, f[8]) / load1(r, k) / prologue(r0, nr): the direct path, for inputs that do not
//   fit the staging area or are not 16-byte aligned (weights are read once per row tile there).
//   prep(r0, nr, scale) / stage8(r, k, scale[r - r0]): the tensor-core product of many rows
//   (gemm.cuh): what a row needs as a whole (its RMS scale) for up to MPK_MMA_MAX_M rows, then its
//   elements 8 at a time, the same values stage() would store.
// MPK_GEMV_OUTLINE marks the loops that do not depend on the input kind. Inlined (the default)
// each variant gets its own copy specialised on its shape constants; -DMPK_GEMV_OUTLINE=__noinline__
// keeps one copy for all, which halves the generated kernel's compile time but was measured
// 5-20% slower per token on the H100 (bench/NOTES.md, v6).
#ifndef MPK_GEMV_OUTLINE
#define MPK_GEMV_OUTLINE __forceinline__
#endif
#define MPK_GEMV_ROWS 4
#ifndef MPK_GEMV_UNROLL
#define MPK_GEMV_UNROLL 4
#endif
#define MPK_GEMV_STAGE_ELEMS (MPK_DYN_SMEM_BYTES / 2)

MPK_DEV void mpk_fma8(float &acc, const uint4 xv, const float wf[8]) {
    float xf[8];
    mpk_unpack8(xv, xf);
#pragma unroll
    for (int e = 0; e < 8; e++) acc = fmaf(xf[e], wf[e], acc);
}

// How many warps share a column pair (each takes every ks-th 256-element block of K): the ks
// that gives the busiest warp the fewest dependent round trips of MPK_GEMV_UNROLL loads per row,
// then the fewest blocks, then the smallest ks (a warp runs ceil(pairs / (nwarps / ks)) units of
// ceil(blocks / ks) blocks). E.g. Qwen3-1.7B's down projection (8 column pairs, K = 6144, 12
// warps): ks = 3, 4 round trips, where the earlier rule (the largest power of two that gives
// every (pair, part) its own warp) left 4 warps idle and 6 round trips: Qwen3-0.6B -1.5%, 1.7B
// -2.5% per token (bench/NOTES.md, v10). n and K are the variant's compile-time constants and
// nwarps MPK_DEV_THREADS / 32, so the search folds to a constant — it must: computed at run time
// it cost 7-13% per token (v10).
MPK_DEV int32_t mpk_gemv_split(int32_t n, int32_t K, int32_t nwarps) {
    const int32_t pairs = (n + 1) / 2, blocks = (K + 255) / 256;
    int32_t best = 1, best_rt = 0x7fffffff, best_bl = 0x7fffffff;
    for (int32_t ks = 1; ks <= nwarps && ks <= blocks; ks++) {
        if (ks > 1 && ks * MPK_GEMV_ROWS * n > MPK_SCRATCH_FLOATS) break;  // partial sums
        const int32_t ps = nwarps / ks, units = (pairs + ps - 1) / ps, bps = (blocks + ks - 1) / ks;
        const int32_t rt = units * ((bps + MPK_GEMV_UNROLL - 1) / MPK_GEMV_UNROLL), bl = units * bps;
        if (rt < best_rt || (rt == best_rt && bl < best_bl)) {
            best = ks;
            best_rt = rt;
            best_bl = bl;
        }
    }
    return best;
}

// The sum of a column's ks partial sums (ks, nr, n) for row r, column j, in a fixed order.
MPK_DEV float mpk_gemv_part_sum(const float *part, int32_t ks, int32_t nr, int32_t n, int32_t r, int32_t j) {
    float sum = 0.0f;
    for (int32_t g = 0; g < ks; g++) sum += part[((int64_t)g * nr + r) * n + j];
    return sum;
}

// Columns of one row tile whose nr (<= MPK_GEMV_ROWS) rows are staged in xs. A task with few
// columns (small models: 8 columns of 1024 on 128 tasks) would leave most warps idle, so ks warps
// share a column pair, each taking every ks-th 256-element block of K; their partial sums meet in
// shared memory and are added in a fixed order (results repeat run to run; they depend on ks, so
// on the task's width). With outf the sums are stored unrounded there (fp32 partial sums; out and
// res unused).
__device__ MPK_GEMV_OUTLINE void mpk_gemv_staged_tile(const mpk_bf16 *xs, int32_t ldk, int32_t r0,
                                                     int32_t nr, const mpk_bf16 *w,
                                                     const mpk_bf16 *res, mpk_bf16 *out, int32_t K,
                                                     int32_t n, int32_t ld_w, int32_t ld_res,
                                                     int32_t ld_out, float *outf = nullptr) {
    // (nwarps: the launch's block size, a constant the split and the strides fold with)
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = MPK_DEV_THREADS / 32;
    const int32_t ks = mpk_gemv_split(n, K, nwarps);
    float *part = mpk_smem()->f;  // (ks, nr, n) partial sums when ks > 1
    const int32_t seg = warp % ks, pstride = nwarps / ks;
    for (int32_t j = (warp / ks) * 2; j < n && warp / ks < pstride; j += pstride * 2) {
        const bool two = j + 1 < n;
        const mpk_bf16 *w0 = w + (int64_t)j * ld_w;    // (K)
        const mpk_bf16 *w1 = two ? w0 + ld_w : w0;      // (K)
        float a0[MPK_GEMV_ROWS], a1[MPK_GEMV_ROWS];
#pragma unroll
        for (int r = 0; r < MPK_GEMV_ROWS; r++) a0[r] = a1[r] = 0.0f;
        const int32_t step = 256 * ks;
        for (int32_t kb = lane * 8 + 256 * seg; kb < K; kb += step * MPK_GEMV_UNROLL) {
            uint4 v0[MPK_GEMV_UNROLL], v1[MPK_GEMV_UNROLL];
#pragma unroll
            for (int u = 0; u < MPK_GEMV_UNROLL; u++) {
                const int32_t k = kb + u * step;
                if (k < K) {
                    v0[u] = mpk_ld16_ro(w0 + k);
                    v1[u] = mpk_ld16_ro(w1 + k);
                }
            }
#pragma unroll
            for (int u = 0; u < MPK_GEMV_UNROLL; u++) {
                const int32_t k = kb + u * step;
                if (k >= K) break;
                float f0[8], f1[8];
                mpk_unpack8(v0[u], f0);
                mpk_unpack8(v1[u], f1);
#pragma unroll
                for (int r = 0; r < MPK_GEMV_ROWS; r++) {
                    if (r >= nr) break;
                    const uint4 xv = *(const uint4 *)(xs + (int64_t)r * ldk + k);
                    mpk_fma8(a0[r], xv, f0);
                    mpk_fma8(a1[r], xv, f1);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < MPK_GEMV_ROWS; r++) {
            if (r >= nr) break;  // (decode has one row: 10 shuffles, not 40)
            a0[r] = mpk_warp_sum(a0[r]);
            a1[r] = mpk_warp_sum(a1[r]);
        }
        if (lane == 0) {
            for (int r = 0; r < nr; r++) {
                if (ks > 1) {
                    part[((int64_t)seg * nr + r) * n + j] = a0[r];
                    if (two) part[((int64_t)seg * nr + r) * n + j + 1] = a1[r];
                    continue;
                }
                const int64_t row = r0 + r;
                float s0 = a0[r], s1 = a1[r];
                if (outf) {
                    outf[row * ld_out + j] = s0;
                    if (two) outf[row * ld_out + j + 1] = s1;
                    continue;
                }
                if (res) s0 += mpk_bf2f(res[row * ld_res + j]);
                out[row * ld_out + j] = mpk_f2bf(s0);
                if (two) {
                    if (res) s1 += mpk_bf2f(res[row * ld_res + j + 1]);
                    out[row * ld_out + j + 1] = mpk_f2bf(s1);
                }
            }
        }
    }
    if (ks > 1) {
        mpk_sync();
        for (int32_t i = threadIdx.x; i < nr * n; i += MPK_DEV_THREADS) {
            const int32_t r = i / n, j = i % n;
            float sum = mpk_gemv_part_sum(part, ks, nr, n, r, j);
            const int64_t row = r0 + r;
            if (outf) {
                outf[row * ld_out + j] = sum;
                continue;
            }
            if (res) sum += mpk_bf2f(res[row * ld_res + j]);
            out[row * ld_out + j] = mpk_f2bf(sum);
        }
    }
}

template <class XRows>
__device__ MPK_GEMV_OUTLINE void mpk_gemv_direct(XRows &xr, const mpk_bf16 *w, const mpk_bf16 *res,
                                                mpk_bf16 *out, int32_t rows, int32_t K, int32_t n,
                                                int32_t ld_w, int32_t ld_res, int32_t ld_out, bool vec) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = MPK_DEV_THREADS / 32;
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
            for (int r = 0; r < MPK_GEMV_ROWS; r++)
                if (r < nr) acc[r] = mpk_warp_sum(acc[r]);
            if (lane == 0) {
                for (int r = 0; r < nr; r++) {
                    float s = acc[r];
                    if (res) s += mpk_bf2f(res[(int64_t)(r0 + r) * ld_res + j]);
                    out[(int64_t)(r0 + r) * ld_out + j] = mpk_f2bf(s);
                }
            }
        }
        mpk_sync();  // the next tile's prologue may overwrite what this tile read
    }
}

// K segments of a streamed product's columns: about 8 steps of 256 elements per unit, ks >= 1,
// and the (ks, rows, n) partial sums within the shared scratch. n and K are the variant's
// compile-time constants, so this folds to a constant.
MPK_DEV int32_t mpk_gemv_stream_split(int32_t n, int32_t K, int32_t rows) {
    const int32_t blocks = (K + 255) / 256;
    int32_t ks = (blocks + 7) / 8;
    while (ks > 1 && ks * rows * n > MPK_SCRATCH_FLOATS) ks--;
    return ks;
}

// The product with the task's weights coming from the block's weight stream (stream.cuh), for
// rows <= MPK_GEMV_ROWS (decode). The input rows (and the residual) are staged once; then chunk
// c (columns [c * rpc, c * rpc + rc), whole rows of K) is multiplied as soon as it has landed, in
// units of (column pair, K segment of ~8 steps of 256 elements). The units of the task are
// numbered across its chunks and unit g goes to warp g % nwarps, so the warps spread over the
// chunks on chip instead of all splitting each chunk finely; each warp releases a chunk's slot
// when it has read its units of it, without a block barrier. Per column the lane's sum runs over
// its elements in order, then the warp's sum, then the segments' partial sums in order: results
// repeat run to run (they depend on ks, so on the shape). False when the task has no stream or
// does not fit here: the caller reads the weights itself and the runtime passes the chunks.
template <class XRows>
MPK_DEV bool mpk_gemv_streamed(XRows &xr, const mpk_bf16 *res, mpk_bf16 *out, int32_t rows,
                               int32_t K, int32_t n, int32_t ld_res, int32_t ld_out) {
    mpk_stream *s = mpk_stream_state();
    const uint32_t chunks = mpk_stream_task_chunks(s);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = MPK_DEV_THREADS / 32;
    if (chunks == 0 || rows < 1 || rows > MPK_GEMV_ROWS || K < 8 || K % 8 != 0 || !xr.vec_ok()) return false;
    const int32_t rpc = (int32_t)(s->desc->stream_chunk_bytes / (2u * (uint32_t)K));  // columns per chunk
    if (rpc < 1 || (uint32_t)rpc * 2u * (uint32_t)K != s->desc->stream_chunk_bytes ||
        (int64_t)(chunks - 1) * rpc >= n || (int64_t)chunks * rpc < n)
        return false;  // not the layout the host promised: never happens, but stay correct
    // Shared memory: the rows (rows, K) bf16, then the residual (rows, n) floats.
    const int64_t xs_bytes = ((int64_t)rows * K * 2 + 15) / 16 * 16;
    const bool res_staged = res != nullptr;
    if (xs_bytes + (res_staged ? (int64_t)rows * n * 4 : 0) > MPK_DYN_SMEM_BYTES) return false;
    mpk_bf16 *xs = (mpk_bf16 *)mpk_dyn_smem();
    float *resv = (float *)((char *)mpk_dyn_smem() + xs_bytes);
    const int32_t ks = mpk_gemv_stream_split(n, K, rows);
    const int32_t blocks = (K + 255) / 256, bps = (blocks + ks - 1) / ks;  // 256-element blocks per segment
    float *part = mpk_smem()->f;  // (ks, rows, n) partial sums when ks > 1
    if (threadIdx.x == 0) s->used = 1;
    xr.stage(0, rows, xs, K);
    if (res_staged)
        for (int32_t i = threadIdx.x; i < rows * n; i += MPK_DEV_THREADS)
            resv[i] = mpk_bf2f(res[(int64_t)(i / n) * ld_res + i % n]);
    mpk_sync();
    mpk_mark_inputs();
    const uint32_t first = s->task_first;
    int32_t base = 0;  // units of the earlier chunks
    for (uint32_t c = 0; c < chunks; c++) {
        const int32_t j0 = (int32_t)c * rpc, rc = min(rpc, n - j0), units = (rc + 1) / 2 * ks;
        int32_t u = (warp - base) % nwarps;
        if (u < 0) u += nwarps;
        if (u < units) {
            const mpk_bf16 *ws = mpk_stream_acquire(s, first + c);  // (rc, K)
            for (; u < units; u += nwarps) {
                const int32_t pr = u / ks, seg = u - pr * ks, jj = 2 * pr;
                const bool two = jj + 1 < rc;
                const mpk_bf16 *w0 = ws + (int64_t)jj * K, *w1 = two ? w0 + K : w0;
                float a0[MPK_GEMV_ROWS], a1[MPK_GEMV_ROWS];
#pragma unroll
                for (int r = 0; r < MPK_GEMV_ROWS; r++) a0[r] = a1[r] = 0.0f;
                const int32_t kend = min(K, (seg + 1) * bps * 256);
                for (int32_t kb = seg * bps * 256 + lane * 8; kb < kend; kb += 256 * MPK_GEMV_UNROLL) {
                    uint4 v0[MPK_GEMV_UNROLL], v1[MPK_GEMV_UNROLL];
#pragma unroll
                    for (int t = 0; t < MPK_GEMV_UNROLL; t++) {
                        const int32_t k = kb + t * 256;
                        if (k < kend) {
                            v0[t] = *(const uint4 *)(w0 + k);
                            v1[t] = *(const uint4 *)(w1 + k);
                        }
                    }
#pragma unroll
                    for (int t = 0; t < MPK_GEMV_UNROLL; t++) {
                        const int32_t k = kb + t * 256;
                        if (k >= kend) break;
                        float f0[8], f1[8];
                        mpk_unpack8(v0[t], f0);
                        mpk_unpack8(v1[t], f1);
#pragma unroll
                        for (int r = 0; r < MPK_GEMV_ROWS; r++) {
                            if (r >= rows) break;
                            const uint4 xv = *(const uint4 *)(xs + (int64_t)r * K + k);
                            mpk_fma8(a0[r], xv, f0);
                            mpk_fma8(a1[r], xv, f1);
                        }
                    }
                }
#pragma unroll
                for (int r = 0; r < MPK_GEMV_ROWS; r++) {
                    if (r >= rows) break;
                    a0[r] = mpk_warp_sum(a0[r]);
                    a1[r] = mpk_warp_sum(a1[r]);
                }
                if (lane == 0) {
                    const int32_t j = j0 + jj;
#pragma unroll
                    for (int r = 0; r < MPK_GEMV_ROWS; r++) {  // (unrolled: a0, a1 stay in registers)
                        if (r >= rows) break;
                        if (ks > 1) {
                            part[((int64_t)seg * rows + r) * n + j] = a0[r];
                            if (two) part[((int64_t)seg * rows + r) * n + j + 1] = a1[r];
                            continue;
                        }
                        float s0 = a0[r], s1 = a1[r];
                        if (res_staged) s0 += resv[r * n + j];
                        out[(int64_t)r * ld_out + j] = mpk_f2bf(s0);
                        if (two) {
                            if (res_staged) s1 += resv[r * n + j + 1];
                            out[(int64_t)r * ld_out + j + 1] = mpk_f2bf(s1);
                        }
                    }
                }
            }
        } else {
            mpk_stream_acquire(s, first + c);  // (a phase is released only after it completed)
        }
        mpk_stream_release(s, first + c);
        base += units;
    }
    if (ks > 1) {
        mpk_sync();
        for (int32_t i = threadIdx.x; i < rows * n; i += MPK_DEV_THREADS) {
            const int32_t r = i / n, j = i % n;
            float sum = mpk_gemv_part_sum(part, ks, rows, n, r, j);
            if (res_staged) sum += resv[i];
            out[(int64_t)r * ld_out + j] = mpk_f2bf(sum);
        }
    }
    return true;
}

// Rows [0, nd) are decode rows (the batch puts them first), the others prompt rows: decode rows
// take the GEMV below, prompt rows the tensor cores (gemm.cuh), so each row gets the same values
// whatever else its iteration holds (the e2e tests decode two requests together and alone).
// prompt (a literal in the generated code, so each call keeps one side): false does the decode
// rows — all rows where the tensor-core path does not apply — and true the prompt rows.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && MPK_MMA
#define MPK_MMA_BUILT 1
#else
#define MPK_MMA_BUILT 0
#endif
//
// Tiles (tile_b >= 2, the prompt kernel only): the compiler found the layer's tasks
// interchangeable in aligned blocks of tile_b (compile.c: mark_tile_blocks), and this is task
// tile_j of the layer. The prompt rows then go in R row shares (R a power of two <= tile_b, about
// one per MPK_MMA_MAX_M rows), and task j takes share j % R for the columns of all R tasks of
// its aligned group of R: each weight is read by R tasks instead of once per 64-row tile by one,
// and each input row by the layer's tasks / R instead of by every task (bench/NOTES.md v16).
// The wide tiles take the weight ring (gemm.cuh: mpk_gemm_wide) when there are at least this many
// 8-column tiles per warp. pp512 ms/token on the H100 (bench/NOTES.md v17), this rule / always /
// never: Qwen3-0.6B 0.027 / 0.029 / 0.027, 1.7B 0.047 / 0.050 / 0.052, 8B 0.147 / 0.147 / 0.203.
#ifndef MPK_GEMM_RING_MIN_TILES
#define MPK_GEMM_RING_MIN_TILES 2
#endif
template <class XRows>
MPK_DEV void mpk_gemv(XRows &xr, const mpk_bf16 *w, const mpk_bf16 *res, mpk_bf16 *out,
                      int32_t rows, int32_t K, int32_t n, int32_t ld_w, int32_t ld_res,
                      int32_t ld_out, int32_t nd, bool prompt, int32_t tile_j = 0, int32_t tile_b = 0) {
    const bool vec = (K % 8 == 0) && (ld_w % 8 == 0) && mpk_aligned16(w) && xr.vec_ok();
    const int32_t cap = K > 0 ? MPK_GEMV_STAGE_ELEMS / K : 0;  // rows the staging area holds
    const bool mma = MPK_MMA_BUILT && vec && cap >= 1 && MPK_STREAM_SLOTS == 0;
    if (prompt) {
        if (!mma || nd >= rows) return;
        const int32_t P = rows - nd;
        int32_t R = 1;
        while (R < tile_b && R * MPK_MMA_MAX_M < P) R *= 2;
        if (R == 1) {
            mpk_gemm_rows(xr, w, res, out, (float *)0, nd, rows, K, n, ld_w, ld_res, ld_out);
            return;
        }
        const int32_t r = tile_j % R, Mt = ((P + R - 1) / R + 15) / 16 * 16;
        const int32_t a0 = nd + r * Mt, a1 = min(rows, a0 + Mt);
        const int64_t dc = (int64_t)r * n;  // the group's first column, relative to this task's
        if (a0 >= a1) return;
#if MPK_GEMM_RING
        if ((R * n + 7) / 8 >= MPK_GEMM_RING_MIN_TILES * (MPK_DEV_THREADS / 32)) {
            mpk_gemm_wide(xr, w - dc * ld_w, res ? res - dc : res, out - dc, a0, a1, K, R * n, ld_w, ld_res, ld_out);
            return;
        }
#endif
        mpk_gemm_rows<XRows, MPK_MMA_TILES_WIDE>(xr, w - dc * ld_w, res ? res - dc : res, out - dc, (float *)0, a0, a1,
                                                 K, R * n, ld_w, ld_res, ld_out);
        return;
    }
#if MPK_STREAM_SLOTS > 0
    if (mpk_gemv_streamed(xr, res, out, rows, K, n, ld_res, ld_out)) return;
#endif
    if (!vec || cap < 1) {
        mpk_gemv_direct(xr, w, res, out, rows, K, n, ld_w, ld_res, ld_out, vec);
        return;
    }
    const int32_t ng = mma && nd < rows ? nd : rows;  // (the prompt rows were done before)
    const int32_t tile = cap < MPK_GEMV_ROWS ? cap : MPK_GEMV_ROWS;
    mpk_bf16 *xs = (mpk_bf16 *)mpk_dyn_smem();  // (tile, K)
    for (int32_t r0 = 0; r0 < ng; r0 += tile) {
        const int32_t nr = min(tile, ng - r0);
        xr.stage(r0, nr, xs, K);
        mpk_sync();
        if (r0 == 0) mpk_mark_inputs();
        mpk_gemv_staged_tile(xs, K, r0, nr, w, res, out, K, n, ld_w, ld_res, ld_out);
        mpk_sync();  // the next tile overwrites xs
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
    static constexpr int batch = 8;  // stage8 calls in flight per thread (gemm.cuh)
    MPK_DEV void prep(int32_t, int32_t, float *) const {}
    MPK_DEV uint4 stage8(int32_t r, int32_t k, float) const { return mpk_ld16(x + (int64_t)r * ld_x + k); }
    // K % 8 == 0 and 16-byte alignment hold here (vec_ok).
    MPK_DEV void stage(int32_t r0, int32_t nr, mpk_bf16 *xs, int32_t K) const {
        const int32_t per = K / 8;
        for (int32_t i = threadIdx.x; i < nr * per; i += MPK_DEV_THREADS) {
            const int32_t r = i / per, k = (i % per) * 8;
            *(uint4 *)(xs + (int64_t)r * K + k) = mpk_ld16(x + (int64_t)(r0 + r) * ld_x + k);
        }
    }
};

// 1 / sqrt(mean(x^2) + eps) of one row, computed by one warp (all lanes get it).
MPK_DEV float mpk_rms_scale_warp(const mpk_bf16 *x, int32_t H, float eps) {
    float s = 0.0f;
    const int lane = threadIdx.x % 32;
    if (H % 8 == 0 && mpk_aligned16(x)) {
        // 16-byte loads, all of a lane's in flight at once: the norm sits between a task's
        // event and its first weight loads, so its latency is the task's.
        for (int32_t k = lane * 8; k < H; k += 256) {
            float f[8];
            mpk_unpack8(mpk_ld16(x + k), f);
#pragma unroll
            for (int e = 0; e < 8; e++) s = fmaf(f[e], f[e], s);
        }
    } else {
        for (int32_t k = lane; k < H; k += 32) {
            const float v = mpk_bf2f(x[k]);
            s = fmaf(v, v, s);
        }
    }
    s = mpk_warp_sum(s);
    return 1.0f / sqrtf(s / (float)H + eps);
}

// The normalised element exactly as the CPU computes it (matvec.h: mpk_cpu_rms_elem).
MPK_DEV float mpk_rms_elem(float x, float scale, float w) { return mpk_round_bf(x * scale * w); }

MPK_DEV uint4 mpk_norm_pack8(const float f[8], float s, const float nw[8]) {
    uint4 v;
    v.x = mpk_pack2(mpk_rms_elem(f[0], s, nw[0]), mpk_rms_elem(f[1], s, nw[1]));
    v.y = mpk_pack2(mpk_rms_elem(f[2], s, nw[2]), mpk_rms_elem(f[3], s, nw[3]));
    v.z = mpk_pack2(mpk_rms_elem(f[4], s, nw[4]), mpk_rms_elem(f[5], s, nw[5]));
    v.w = mpk_pack2(mpk_rms_elem(f[6], s, nw[6]), mpk_rms_elem(f[7], s, nw[7]));
    return v;
}

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
        mpk_sync();
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
    static constexpr int batch = 8;
    MPK_DEV void prep(int32_t r0, int32_t nr, float *sc) const {
        for (int32_t i = threadIdx.x / 32; i < nr; i += MPK_DEV_THREADS / 32) {
            const float s = mpk_rms_scale_warp(x + (int64_t)(r0 + i) * ld_x, K, eps);
            if (threadIdx.x % 32 == 0) sc[i] = s;
        }
    }
    MPK_DEV uint4 stage8(int32_t r, int32_t k, float s) const {
        float f[8], nw[8];
        mpk_unpack8(mpk_ld16(x + (int64_t)r * ld_x + k), f);
        mpk_unpack8(mpk_ld16(norm_w + k), nw);
        return mpk_norm_pack8(f, s, nw);
    }
    MPK_DEV void stage(int32_t r0, int32_t nr, mpk_bf16 *xs, int32_t) {
        const int32_t per = K / 8;
        prologue(r0, nr);  // the rows' scales, then a barrier
        for (int32_t i = threadIdx.x; i < nr * per; i += MPK_DEV_THREADS) {
            const int32_t r = i / per, k = (i % per) * 8;
            float f[8], nw[8];
            mpk_unpack8(mpk_ld16(x + (int64_t)(r0 + r) * ld_x + k), f);
            mpk_unpack8(mpk_ld16(norm_w + k), nw);
            *(uint4 *)(xs + (int64_t)r * K + k) = mpk_norm_pack8(f, scale[r], nw);
        }
    }
};

// RESIDUAL_RMSNORM_LINEAR's input rows: s = bf16(x + part_0 + part_1 + ...), the P fp32 partial
// sums added in group order as the CPU does (rmsnorm_linear.c), the task's columns
// [c0, c0 + count) of s stored to x_out, and s normalised as mpk_norm_rows does.
struct mpk_residual_rows {
    const mpk_bf16 *x;       // (rows, ld_x)
    const float *part;       // (rows, ld_part): P groups of K columns
    const mpk_bf16 *norm_w;  // (K)
    mpk_bf16 *x_out;         // (rows, ld_xo)
    int32_t ld_x, K, P, ld_part, ld_xo, c0, count;
    float eps;
    float *scale;            // (MPK_GEMV_ROWS) shared memory
    MPK_DEV bool vec_ok() const {
        return ld_x % 8 == 0 && K % 8 == 0 && ld_part % 4 == 0 && mpk_aligned16(x) &&
               mpk_aligned16(part) && mpk_aligned16(norm_w);
    }
    MPK_DEV float elem(int32_t r, int32_t k) const {
        float s = mpk_bf2f(x[(int64_t)r * ld_x + k]);
        const float *p = part + (int64_t)r * ld_part + k;
        for (int32_t g = 0; g < P; g++) s += p[(int64_t)g * K];
        return mpk_round_bf(s);
    }
    // Four elements from k (vec_ok): every partial's 16 bytes loaded before the first add (up
    // to 16 groups in registers), then added in group order, then rounded.
    MPK_DEV void elem4(int32_t r, int32_t k, float f[4]) const {
        const uint2 xv = *(const uint2 *)(x + (int64_t)r * ld_x + k);
        const float *p = part + (int64_t)r * ld_part + k;
        f[0] = __uint_as_float(xv.x << 16), f[1] = __uint_as_float(xv.x & 0xffff0000u);
        f[2] = __uint_as_float(xv.y << 16), f[3] = __uint_as_float(xv.y & 0xffff0000u);
        for (int32_t g0 = 0; g0 < P; g0 += 16) {
            uint4 a[16];
#pragma unroll
            for (int g = 0; g < 16; g++)
                if (g0 + g < P) a[g] = mpk_ld16(p + (int64_t)(g0 + g) * K);
#pragma unroll
            for (int g = 0; g < 16; g++)
                if (g0 + g < P) {
                    f[0] += __uint_as_float(a[g].x); f[1] += __uint_as_float(a[g].y);
                    f[2] += __uint_as_float(a[g].z); f[3] += __uint_as_float(a[g].w);
                }
        }
#pragma unroll
        for (int e = 0; e < 4; e++) f[e] = mpk_round_bf(f[e]);
    }
    // The direct path: the rows' scales (recomputing s) and their x_out columns, then a barrier.
    MPK_DEV void prologue(int32_t r0, int32_t nr) {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        if (warp < nr) {
            float ss = 0.0f;
            for (int32_t k = lane; k < K; k += 32) {
                const float v = elem(r0 + warp, k);
                ss = fmaf(v, v, ss);
            }
            ss = mpk_warp_sum(ss);
            if (lane == 0) scale[warp] = 1.0f / sqrtf(ss / (float)K + eps);
        }
        for (int32_t i = threadIdx.x; i < nr * count; i += MPK_DEV_THREADS) {
            const int32_t r = r0 + i / count, k = c0 + i % count;
            x_out[(int64_t)r * ld_xo + k] = mpk_f2bf(elem(r, k));
        }
        mpk_sync();
    }
    MPK_DEV void load8(int32_t r, int32_t k, float f[8]) const {
        float nw[8];
        elem4(r, k, f);
        elem4(r, k + 4, f + 4);
        mpk_unpack8(mpk_ld16(norm_w + k), nw);
        const float s = scale[r % MPK_GEMV_ROWS];
#pragma unroll
        for (int e = 0; e < 8; e++) f[e] = mpk_rms_elem(f[e], s, nw[e]);
    }
    MPK_DEV float load1(int32_t r, int32_t k) const {
        return mpk_rms_elem(elem(r, k), scale[r % MPK_GEMV_ROWS], mpk_bf2f(norm_w[k]));
    }
    // Per row (one warp): the scale, summed as stage() sums it (lane order, then the warp), and
    // the row's x_out columns. (stage8 holds up to 16 partials' loads itself: 2 in flight.)
    static constexpr int batch = 2;
    MPK_DEV void prep(int32_t r0, int32_t nr, float *sc) const {
        const int lane = threadIdx.x % 32;
        for (int32_t i = threadIdx.x / 32; i < nr; i += MPK_DEV_THREADS / 32) {
            const int32_t r = r0 + i;
            float ss = 0.0f;
            for (int32_t k = lane * 8; k < K; k += 256) {
                float f[8];
                elem4(r, k, f);
                elem4(r, k + 4, f + 4);
#pragma unroll
                for (int e = 0; e < 8; e++) ss = fmaf(f[e], f[e], ss);
            }
            ss = mpk_warp_sum(ss);
            if (lane == 0) sc[i] = 1.0f / sqrtf(ss / (float)K + eps);
            for (int32_t k = c0 + lane; k < c0 + count; k += 32) x_out[(int64_t)r * ld_xo + k] = mpk_f2bf(elem(r, k));
        }
    }
    MPK_DEV uint4 stage8(int32_t r, int32_t k, float s) const {
        float f[8], nw[8];
        elem4(r, k, f);
        elem4(r, k + 4, f + 4);
        mpk_unpack8(mpk_ld16(norm_w + k), nw);
        return mpk_norm_pack8(f, s, nw);
    }
    // s into xs, then the scales from xs, the x_out columns from xs, and xs normalised in place.
    MPK_DEV void stage(int32_t r0, int32_t nr, mpk_bf16 *xs, int32_t) {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        const int32_t per = K / 8;
        // Four columns per thread: twice the threads that eight would keep busy.
        const int32_t per4 = K / 4;
        for (int32_t i = threadIdx.x; i < nr * per4; i += MPK_DEV_THREADS) {
            const int32_t r = i / per4, k = (i % per4) * 4;
            float f[4];
            elem4(r0 + r, k, f);
            *(uint2 *)(xs + (int64_t)r * K + k) = make_uint2(mpk_pack2(f[0], f[1]), mpk_pack2(f[2], f[3]));
        }
        mpk_sync();
        if (warp < nr) {
            float ss = 0.0f;
            for (int32_t k = lane * 8; k < K; k += 256) {
                float f[8];
                mpk_unpack8(*(const uint4 *)(xs + (int64_t)warp * K + k), f);
#pragma unroll
                for (int e = 0; e < 8; e++) ss = fmaf(f[e], f[e], ss);
            }
            ss = mpk_warp_sum(ss);
            if (lane == 0) scale[warp] = 1.0f / sqrtf(ss / (float)K + eps);
        }
        for (int32_t i = threadIdx.x; i < nr * count; i += MPK_DEV_THREADS) {
            const int32_t r = i / count, k = c0 + i % count;
            x_out[(int64_t)(r0 + r) * ld_xo + k] = xs[(int64_t)r * K + k];
        }
        mpk_sync();
        for (int32_t i = threadIdx.x; i < nr * per; i += MPK_DEV_THREADS) {
            const int32_t r = i / per, k = (i % per) * 8;
            float f[8], nw[8];
            mpk_unpack8(*(const uint4 *)(xs + (int64_t)r * K + k), f);
            mpk_unpack8(mpk_ld16(norm_w + k), nw);
            *(uint4 *)(xs + (int64_t)r * K + k) = mpk_norm_pack8(f, scale[r], nw);
        }
    }
};

// silu(g) * u rounded, exactly as the CPU computes it (matvec.h: mpk_cpu_silu_mul_elem).
// silu(g) * u rounded to bf16, as the CPU oracle stores it. MPK_SILU_FAST (default) takes the
// hardware exponential and reciprocal (__expf, __fdividef: a few ulp of fp32, so the bf16 result
// differs from the oracle's by one unit in rare cases, within the tests' tolerance): in a prefill
// chunk every down-projection task computes it for all of the chunk's rows (0 = expf and an IEEE
// division, as on the CPU).
#ifndef MPK_SILU_FAST
#define MPK_SILU_FAST 1
#endif
MPK_DEV float mpk_silu_mul_elem(float g, float u) {
    if (MPK_SILU_FAST) return mpk_round_bf(__fdividef(g, 1.0f + __expf(-g)) * u);
    return mpk_round_bf(g / (1.0f + expf(-g)) * u);
}

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
    static constexpr int batch = 8;
    MPK_DEV void prep(int32_t, int32_t, float *) const {}
    MPK_DEV uint4 stage8(int32_t r, int32_t k, float) const {
        const mpk_bf16 *g = in + (int64_t)r * ld_in + k;
        float f[8], u[8];
        mpk_unpack8(mpk_ld16(g), f);
        mpk_unpack8(mpk_ld16(g + I), u);
        uint4 v;
        v.x = mpk_pack2(mpk_silu_mul_elem(f[0], u[0]), mpk_silu_mul_elem(f[1], u[1]));
        v.y = mpk_pack2(mpk_silu_mul_elem(f[2], u[2]), mpk_silu_mul_elem(f[3], u[3]));
        v.z = mpk_pack2(mpk_silu_mul_elem(f[4], u[4]), mpk_silu_mul_elem(f[5], u[5]));
        v.w = mpk_pack2(mpk_silu_mul_elem(f[6], u[6]), mpk_silu_mul_elem(f[7], u[7]));
        return v;
    }
    MPK_DEV void stage(int32_t r0, int32_t nr, mpk_bf16 *xs, int32_t) const {
        const int32_t per = I / 8;
        for (int32_t i = threadIdx.x; i < nr * per; i += MPK_DEV_THREADS) {
            const int32_t r = i / per, k = (i % per) * 8;
            *(uint4 *)(xs + (int64_t)r * I + k) = stage8(r0 + r, k, 0.0f);
        }
    }
};

// ---- the tasks (same argument order as src/kernels/cpu/kernels.h, then nd) -------------------

// The decode rows among a task's rows [r0, r1), the iteration's first nd rows
// (mpk_batch.decode_rows, read by the runtime with the row count: no load on the task's path).
MPK_DEV int32_t mpk_decode_rows(int32_t nd, int32_t r0, int32_t r1) { return max(0, min(nd, r1) - r0); }

MPK_DEV void mpk_linear_cuda(const mpk_bf16 *x, const mpk_bf16 *w, mpk_bf16 *out, int32_t rows,
                             int32_t K, int32_t n, int32_t ld_x, int32_t ld_w, int32_t ld_out,
                             int32_t nd, bool prompt, int32_t tile_j = 0, int32_t tile_b = 0) {
    mpk_plain_rows xr = {x, ld_x};
    mpk_gemv(xr, w, (const mpk_bf16 *)0, out, rows, K, n, ld_w, 0, ld_out, nd, prompt, tile_j, tile_b);
}

MPK_DEV void mpk_linear_residual_cuda(const mpk_bf16 *x, const mpk_bf16 *w, const mpk_bf16 *res,
                                      mpk_bf16 *out, int32_t rows, int32_t K, int32_t n,
                                      int32_t ld_x, int32_t ld_w, int32_t ld_res,
                                      int32_t ld_out, int32_t nd, bool prompt, int32_t tile_j = 0,
                                      int32_t tile_b = 0) {
    mpk_plain_rows xr = {x, ld_x};
    mpk_gemv(xr, w, res, out, rows, K, n, ld_w, ld_res, ld_out, nd, prompt, tile_j, tile_b);
}

MPK_DEV void mpk_rmsnorm_linear_cuda(const mpk_bf16 *x, const mpk_bf16 *norm_w, const mpk_bf16 *w,
                                     mpk_bf16 *out, int32_t rows, int32_t K, int32_t n,
                                     int32_t ld_x, int32_t ld_w, int32_t ld_out, float eps,
                                     int32_t nd, bool prompt, int32_t tile_j = 0,
                                     int32_t tile_b = 0) {
    mpk_norm_rows xr = {x, norm_w, ld_x, K, eps, mpk_smem()->red};
    mpk_gemv(xr, w, (const mpk_bf16 *)0, out, rows, K, n, ld_w, 0, ld_out, nd, prompt, tile_j, tile_b);
}

// Prompt rows of a sampled-rows-only RMSNORM_LINEAR (the LM head, mpk_rmsnorm_linear_sampled_layer):
// the rows of [lo, hi) whose tokens are sampled, by the GEMV, one weight pass per run of
// consecutive rows (a prompt chunk has one row, or none), when there are at most
// MPK_SAMPLED_GEMV_ROWS of them; returns false when there are more, and the caller computes every
// prompt row on the tensor cores instead. x and out point at row 0.
#ifndef MPK_SAMPLED_GEMV_ROWS
#define MPK_SAMPLED_GEMV_ROWS 8
#endif
// Not inlined: its GEMV's registers stay out of the prompt dispatch's allocation.
static __device__ __noinline__ bool mpk_rmsnorm_linear_sampled_cuda(const mpk_batch *b, int32_t lo, int32_t hi, const mpk_bf16 *x,
                                             const mpk_bf16 *norm_w, const mpk_bf16 *w, mpk_bf16 *out,
                                             int32_t K, int32_t n, int32_t ld_x, int32_t ld_w,
                                             int32_t ld_out, float eps) {
    int32_t rows = 0;
    for (int32_t l = lo, s, m; (m = mpk_batch_next_sampled_run(b, &l, hi, &s)) > 0;) rows += m;
    if (rows > MPK_SAMPLED_GEMV_ROWS) return false;
    for (int32_t l = lo, s, m; (m = mpk_batch_next_sampled_run(b, &l, hi, &s)) > 0;)
        mpk_rmsnorm_linear_cuda(x + (int64_t)s * ld_x, norm_w, w, out + (int64_t)s * ld_out, m, K, n, ld_x, ld_w,
                                ld_out, eps, m, false);
    return true;
}

MPK_DEV void mpk_residual_rmsnorm_linear_cuda(const mpk_bf16 *x, const float *part,
                                              const mpk_bf16 *norm_w, const mpk_bf16 *w,
                                              mpk_bf16 *out, mpk_bf16 *x_out, int32_t rows,
                                              int32_t K, int32_t n, int32_t ld_x, int32_t ld_w,
                                              int32_t ld_out, int32_t P, int32_t ld_part,
                                              int32_t ld_xo, int32_t c0, int32_t count, float eps,
                                              int32_t nd, bool prompt) {
    mpk_residual_rows xr = {x, part, norm_w, x_out, ld_x, K, P, ld_part, ld_xo, c0, count, eps,
                            mpk_smem()->red};
    mpk_gemv(xr, w, (const mpk_bf16 *)0, out, rows, K, n, ld_w, 0, ld_out, nd, prompt);
}

MPK_DEV void mpk_silu_mul_linear_residual_cuda(const mpk_bf16 *in, const mpk_bf16 *w,
                                               const mpk_bf16 *res, mpk_bf16 *out, int32_t rows,
                                               int32_t I, int32_t n, int32_t ld_in, int32_t ld_w,
                                               int32_t ld_res, int32_t ld_out, int32_t nd,
                                               bool prompt, int32_t tile_j = 0, int32_t tile_b = 0) {
    mpk_silu_rows xr = {in, ld_in, I};
    mpk_gemv(xr, w, res, out, rows, I, n, ld_w, ld_res, ld_out, nd, prompt, tile_j, tile_b);
}

#endif  // MPK_KERNELS_CUDA_LINEAR_CUH
