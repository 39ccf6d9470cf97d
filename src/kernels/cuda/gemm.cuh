// gemm.cuh — the product of many input rows at once (a prefill chunk) on the tensor cores.
//
// The GEMV (linear.cuh) takes rows four at a time and streams the task's weights once per four
// rows: a 64-row prefill chunk read every weight 16 times, and Qwen3-8B prefilled at ~460
// tokens/s, 24x slower than transformers eager on the same H100 (bench/NOTES.md, v13). Here a
// tile of up to MPK_MMA_MAX_M rows is staged in shared memory in chunks of K, and each warp
// multiplies its 8-column tiles of the weights with mma.sync (m16n8k16, bf16 in, fp32 sums), so a
// 64-row tile reads each weight once.
//
// Fragments without a shuffle: a lane loads 16 bytes of one weight row (column j = tile * 8 +
// lane / 4, elements k .. k + 7 from k = 32 * step + 8 * (lane % 4)) and the matching 16 bytes of
// its two input rows. Within a step of 32 elements the first MMA takes each lane's elements 0-3,
// the second 4-7: the A and B fragments name the same k for every product, so the two MMAs
// together take each of the step's 32 products exactly once. Sums are fp32 and
// per (row, column) independent of the other rows; their rounding differs from the GEMV's (another
// order of the same products), which the GPU tests allow for (tolerance against the CPU oracle).
//
// Warps and columns: ceil(n / 8) column tiles; with fewer tiles than warps, ks warps share a tile,
// each taking every ks-th step of K, and their sums meet in shared memory in a fixed order (results
// repeat run to run). A warp holds sums for TILES tiles at once (MPK_MMA_TILES, or
// MPK_MMA_TILES_WIDE in the prompt kernel's tiles of rows x columns, linear.cuh); wider tasks take
// several passes over K (the LM head of a batch of sequences).
//
// The staged rows: the input kinds of linear.cuh (plain, normalised, residual + normalised,
// silu * up) give 8 elements of a row at a time (stage8), after prep() has computed what a row
// needs as a whole (its RMS scale). Row r's 16-byte unit u sits at unit u ^ 4 * (r & 1): the two
// rows that a quarter-warp's 16-byte fragment loads touch then fall in different banks.
#ifndef MPK_KERNELS_CUDA_GEMM_CUH
#define MPK_KERNELS_CUDA_GEMM_CUH

#include "common.cuh"

#define MPK_MMA_MAX_M 64    // rows per tile: 16 fp32 sums per lane per column tile
// Column tiles per warp per pass over K, and steps of 32 elements of K whose weight loads are in
// flight. Only the prompt kernel has this code (runtime.cuh), so its registers no longer cost
// decode. pp512 ms/token on the H100 (bench/NOTES.md v14), 1 tile x 4 steps against 1 x 2 and
// 2 x 4: Qwen3-0.6B 0.092 / 0.095 / 0.095, 1.7B 0.161 / 0.166 / 0.171, 8B 0.479 / 0.509 / 0.464.
// 8 steps spilled in the Qwen3-8B kernel (v13).
#ifndef MPK_MMA_TILES
#define MPK_MMA_TILES 1
#endif
// The same for the prompt kernel's tiles of rows x columns (linear.cuh: mpk_gemv with a tile
// block), whose tasks are wide: pp512 ms/token on the H100 (bench/NOTES.md v16), 2 tiles against
// 1: Qwen3-0.6B 0.040 / 0.040, 1.7B 0.068 / 0.087, 8B 0.237 / 0.313.
#ifndef MPK_MMA_TILES_WIDE
#define MPK_MMA_TILES_WIDE 2
#endif
#ifndef MPK_MMA_UNROLL
#define MPK_MMA_UNROLL 4
#endif
// 0 builds the GEMV only (prompt rows too): to compare decode speed with and without this path.
#ifndef MPK_MMA
#define MPK_MMA 1
#endif

// The prompt kernel's wide tiles: MPK_GEMM_RING (common.cuh) 1 = mpk_gemm_wide below.
#define MPK_GEMM_WIDE_TILES 4  // column tiles per warp per pass
// Steps of 32 elements of K in the ring (MPK_GEMM_RING_STEPS - 1 in flight): what 96 KB holds.
#ifndef MPK_GEMM_RING_STEPS
#define MPK_GEMM_RING_STEPS (96 * 1024 / (MPK_DEV_THREADS * 16 * MPK_GEMM_WIDE_TILES))
#endif
// Input pieces a thread stages at once there (its sums are live meanwhile; 2 and 4 measured alike).
#ifndef MPK_GEMM_STAGE_BATCH
#define MPK_GEMM_STAGE_BATCH 2
#endif
#define MPK_GEMM_RING_BYTES (MPK_GEMM_RING_STEPS * MPK_DEV_THREADS * 16 * MPK_GEMM_WIDE_TILES)
// The staging area before the ring: the task area and the prompt kernel's extra, less the ring.
#define MPK_GEMM_STAGE_BYTES (MPK_DYN_SMEM_BYTES + MPK_PROMPT_SMEM_EXTRA - MPK_GEMM_RING_BYTES)

MPK_DEV void mpk_mma_bf16(float d[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                          uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Where row r's 16-byte unit u of the staged chunk lives (in units of 8 elements).
MPK_DEV int32_t mpk_mma_unit(int32_t r, int32_t u) { return u ^ ((r & 1) << 2); }

// Rows [r0, r0 + nr) of the input, columns [k0, k0 + KC) of K, into the staging area xs (M rows
// of KC elements, rows past nr and elements past K zero): a thread loads its XRows::batch pieces
// before storing the first (one at a time they form a chain of round trips; measured no faster on
// Qwen3-8B, where the products wait on their weight loads instead: bench/NOTES.md v13).
// BATCH (at most XRows::batch) bounds the registers held.
template <class XRows, int BATCH = XRows::batch>
MPK_DEV void mpk_gemm_stage(const XRows &xr, mpk_bf16 *xs, const float *scale, int32_t r0, int32_t nr, int32_t M,
                            int32_t k0, int32_t KC, int32_t K) {
    const int32_t units = KC / 8, total = M * units;
    for (int32_t i0 = threadIdx.x; i0 < total; i0 += MPK_DEV_THREADS * BATCH) {
        uint4 v[BATCH];
#pragma unroll
        for (int bi = 0; bi < BATCH; bi++) {
            const int32_t i = i0 + bi * MPK_DEV_THREADS, r = i / units, k = k0 + (i % units) * 8;
            v[bi] = make_uint4(0u, 0u, 0u, 0u);
            if (i < total && r < nr && k < K) v[bi] = xr.stage8(r0 + r, k, scale[r]);
        }
#pragma unroll
        for (int bi = 0; bi < BATCH; bi++) {
            const int32_t i = i0 + bi * MPK_DEV_THREADS, r = i / units;
            if (i < total) *(uint4 *)(xs + (int64_t)r * KC + mpk_mma_unit(r, i % units) * 8) = v[bi];
        }
    }
}

template <int TILES>
MPK_DEV void mpk_gemm_zero(float (&acc)[TILES][4][4]) {
#pragma unroll
    for (int t = 0; t < TILES; t++)
#pragma unroll
        for (int m = 0; m < 4; m++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[t][m][e] = 0.0f;
}

// One step of 32 elements of K (step st of the staged chunk) for the lane's TILES column tiles:
// wv[t] the lane's 16 bytes of tile t's weight row (elements 32 st + 8 q ..), the A fragments from
// xs. Tiles t with live[t] false are skipped.
template <int TILES>
MPK_DEV void mpk_gemm_step(float (&acc)[TILES][4][4], const uint4 (&wv)[TILES], const mpk_bf16 *xs, int32_t KC,
                           int32_t st, int32_t MT, const bool (&live)[TILES]) {
    const int lane = threadIdx.x % 32, g = lane >> 2, q = lane & 3;
    const int32_t un = st * 4 + q;
#pragma unroll
    for (int m = 0; m < 4; m++) {
        if (m >= MT) break;
        const int32_t ra = m * 16 + g, rb = ra + 8;  // the lane's two rows
        const uint4 lo = *(const uint4 *)(xs + (int64_t)ra * KC + mpk_mma_unit(ra, un) * 8);
        const uint4 hi = *(const uint4 *)(xs + (int64_t)rb * KC + mpk_mma_unit(rb, un) * 8);
#pragma unroll
        for (int t = 0; t < TILES; t++) {
            if (!live[t]) continue;
            mpk_mma_bf16(acc[t][m], lo.x, hi.x, lo.y, hi.y, wv[t].x, wv[t].y);
            mpk_mma_bf16(acc[t][m], lo.z, hi.z, lo.w, hi.w, wv[t].z, wv[t].w);
        }
    }
}

// The sums of the lane's tiles (tile t is column tile tile0 + t * tstride) into out (bf16, + res)
// or outf (fp32), rows [r0, r0 + nr).
template <int TILES>
MPK_DEV void mpk_gemm_store(const float (&acc)[TILES][4][4], int32_t tile0, int32_t tstride, int32_t tiles,
                            int32_t r0, int32_t nr, int32_t MT, int32_t n, const mpk_bf16 *res, mpk_bf16 *out,
                            float *outf, int32_t ld_res, int32_t ld_out) {
    const int lane = threadIdx.x % 32, g = lane >> 2, q = lane & 3;
#pragma unroll
    for (int t = 0; t < TILES; t++) {
        const int32_t tile = tile0 + t * tstride;
        if (tile >= tiles) break;
#pragma unroll
        for (int m = 0; m < 4; m++) {
            if (m >= MT) break;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int32_t r = m * 16 + g + (e >> 1) * 8, j = tile * 8 + q * 2 + (e & 1);
                if (r >= nr || j >= n) continue;
                const int64_t row = r0 + r;
                float s = acc[t][m][e];
                if (outf) {
                    outf[row * ld_out + j] = s;
                    continue;
                }
                if (res) s += mpk_bf2f(res[row * ld_res + j]);
                out[row * ld_out + j] = mpk_f2bf(s);
            }
        }
    }
}

// out[r][j] = bf16(sum_k x[r][k] * w[j][k] (+ res[r][j])), or the fp32 sum into outf when set,
// for rows [row0, rows) and columns [0, n). A row's sums do not depend on the other rows, on the
// tile's height or on the chunks of K (warp seg adds the steps s with s % ks == seg, counted from
// k = 0, in order), so a request's prompt rows get the same values in any batch. Requires what the GEMV's staged path requires (K % 8 == 0,
// ld_w % 8 == 0, w 16-byte aligned, xr.vec_ok()). Not inlined: one copy per input kind, not one
// per task variant (prefill is bound by the weights, not by this code's constants).
template <class XRows, int TILES = MPK_MMA_TILES>
__device__ __noinline__ void mpk_gemm_rows(XRows xr, const mpk_bf16 *w, const mpk_bf16 *res,
                                           mpk_bf16 *out, float *outf, int32_t row0, int32_t rows, int32_t K,
                                           int32_t n, int32_t ld_w, int32_t ld_res, int32_t ld_out) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = MPK_DEV_THREADS / 32;
    const int g = lane >> 2, q = lane & 3;
    const int32_t tiles = (n + 7) / 8, K64 = (K + 63) / 64 * 64;
    mpk_bf16 *xs = (mpk_bf16 *)mpk_dyn_smem();
    float *scale = mpk_smem()->f + MPK_SCRATCH_FLOATS - MPK_MMA_MAX_M;  // (the tile's rows)
    bool marked = false;
    for (int32_t r0 = row0; r0 < rows; r0 += MPK_MMA_MAX_M) {
        const int32_t nr = min(MPK_MMA_MAX_M, rows - r0), M = (nr + 15) / 16 * 16, MT = M / 16;
        // Chunks of K: as long as the staging area allows, of equal length, multiples of 64.
        const int32_t kc_max = MPK_DYN_SMEM_BYTES / 2 / M / 64 * 64;  // (the staging area, bf16)
        const int32_t nch = (K64 + kc_max - 1) / kc_max;
        const int32_t KC = ((K64 + nch - 1) / nch + 63) / 64 * 64;
        const int32_t ks = tiles >= nwarps ? 1 : min(nwarps / tiles, KC / 32);
        const int32_t slots = nwarps / ks, seg = warp % ks, slot = warp / ks;
        const bool busy = slot < slots;
        // Staged once for all passes over the column tiles when K fits in one chunk and no
        // partial sums go through the staging area (a wide task: the prompt kernel's tiles).
        const bool once = nch == 1 && ks == 1;
        xr.prep(r0, nr, scale);
        mpk_sync();
        for (int32_t t0 = 0; t0 < tiles; t0 += slots * TILES) {
            float acc[TILES][4][4];
            mpk_gemm_zero<TILES>(acc);
            for (int32_t k0 = 0; k0 < K; k0 += KC) {
                if (!(once && t0 > 0)) mpk_gemm_stage(xr, xs, scale, r0, nr, M, k0, KC, K);
                mpk_sync();
                if (!marked) {
                    mpk_mark_inputs();
                    marked = true;
                }
                const int32_t steps = min(KC, K - k0 + 31) / 32;  // steps with an element below K
                const int32_t first = ((seg - k0 / 32) % ks + ks) % ks;  // this segment's first step
                for (int32_t s0 = first; busy && s0 < steps; s0 += ks * MPK_MMA_UNROLL) {
                    uint4 wv[MPK_MMA_UNROLL][TILES];
#pragma unroll
                    for (int u = 0; u < MPK_MMA_UNROLL; u++)
#pragma unroll
                        for (int t = 0; t < TILES; t++) {
                            const int32_t st = s0 + u * ks, tile = t0 + slot + t * slots;
                            const int32_t k = k0 + st * 32 + q * 8;
                            wv[u][t] = make_uint4(0u, 0u, 0u, 0u);
                            if (st < steps && tile < tiles && k < K) {
                                const int32_t j = min(tile * 8 + g, n - 1);  // (a partial last tile)
                                wv[u][t] = mpk_ld16_ro(w + (int64_t)j * ld_w + k);
                            }
                        }
                    bool live[TILES];
#pragma unroll
                    for (int t = 0; t < TILES; t++) live[t] = t0 + slot + t * slots < tiles;
#pragma unroll
                    for (int u = 0; u < MPK_MMA_UNROLL; u++) {
                        const int32_t st = s0 + u * ks;
                        if (st >= steps) break;
                        mpk_gemm_step<TILES>(acc, wv[u], xs, KC, st, MT, live);
                    }
                }
                mpk_sync();  // the next chunk (or the partial sums) overwrite xs
            }
            // The ks warps of a tile add up in segment order, through the staging area.
            if (ks > 1) {
                // (ks - 1, slots, TILES * 16, 32): segment s's sums, lane-major
                float *part = (float *)xs + (int64_t)slot * TILES * 16 * 32 + lane;
                const int64_t seg_stride = (int64_t)slots * TILES * 16 * 32;
                if (busy && seg > 0) {
#pragma unroll
                    for (int t = 0; t < TILES; t++)
#pragma unroll
                        for (int m = 0; m < 4; m++)
#pragma unroll
                            for (int e = 0; e < 4; e++) part[(seg - 1) * seg_stride + (t * 16 + m * 4 + e) * 32] = acc[t][m][e];
                }
                mpk_sync();
                if (busy && seg == 0) {
                    for (int32_t s = 1; s < ks; s++)
#pragma unroll
                        for (int t = 0; t < TILES; t++)
#pragma unroll
                            for (int m = 0; m < 4; m++)
#pragma unroll
                                for (int e = 0; e < 4; e++) acc[t][m][e] += part[(s - 1) * seg_stride + (t * 16 + m * 4 + e) * 32];
                }
            }
            if (busy && seg == 0)
                mpk_gemm_store<TILES>(acc, t0 + slot, slots, tiles, r0, nr, MT, n, res, out, outf, ld_res, ld_out);
            if (ks > 1) mpk_sync();  // the next pass stages over the partial sums
        }
    }
}

#if MPK_GEMM_RING
// The prompt kernel's tiles of rows x columns (linear.cuh: mpk_gemv with a tile block): a task
// multiplies up to 64 rows by hundreds of columns, so each pass over K restages the rows, and
// with the weights loaded into registers (mpk_gemm_rows) a warp holds only MPK_MMA_UNROLL steps of
// two column tiles in flight: Qwen3-8B's products ran at 50-88 TFLOP/s (bench/NOTES.md v16).
// Here each lane copies its own 16 bytes of each of its MPK_GEMM_WIDE_TILES tiles' weight rows per
// step with cp.async into a ring of MPK_GEMM_RING_STEPS steps in shared memory after the staging
// area (the prompt kernel's extra MPK_PROMPT_SMEM_EXTRA bytes), MPK_GEMM_RING_STEPS - 1 steps
// ahead, across the staged chunks of K: more bytes in flight without holding registers, and
// twice the columns per pass (half the restaging). A lane reads back only its own copies, so the
// ring needs no barrier; the slot a copy overwrites was read into registers a step earlier. Same
// products in the same order per (row, column) as mpk_gemm_rows with ks = 1. For warps with at
// least two tiles (linear.cuh: MPK_GEMM_RING_MIN_TILES); measured (bench/NOTES.md v17, H100) on
// thin tasks the register path is faster (Qwen3-0.6B's o_proj and down: 1 tile a warp, 8 MMAs a
// step), and copies grouped several steps at a time for such warps did not change that.
template <class XRows>
__device__ __noinline__ void mpk_gemm_wide(XRows xr, const mpk_bf16 *w, const mpk_bf16 *res, mpk_bf16 *out,
                                           int32_t row0, int32_t rows, int32_t K, int32_t n, int32_t ld_w,
                                           int32_t ld_res, int32_t ld_out) {
    constexpr int TW = MPK_GEMM_WIDE_TILES, DS = MPK_GEMM_RING_STEPS;
    static_assert(DS >= 2, "the weight ring needs two steps");
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = MPK_DEV_THREADS / 32;
    const int g = lane >> 2, q = lane & 3;
    const int32_t tiles = (n + 7) / 8, K64 = (K + 63) / 64 * 64, ksteps = (K + 31) / 32;
    mpk_bf16 *xs = (mpk_bf16 *)mpk_dyn_smem();
    // The lane's slot (step d, tile t): 16 bytes, the block's lanes side by side.
    char *ring = (char *)mpk_dyn_smem() + MPK_GEMM_STAGE_BYTES + threadIdx.x * 16;
    const uint32_t ring_s = (uint32_t)__cvta_generic_to_shared(ring);
    float *scale = mpk_smem()->f + MPK_SCRATCH_FLOATS - MPK_MMA_MAX_M;  // (the tile's rows)
    bool marked = false;
    for (int32_t r0 = row0; r0 < rows; r0 += MPK_MMA_MAX_M) {
        const int32_t nr = min(MPK_MMA_MAX_M, rows - r0), M = (nr + 15) / 16 * 16, MT = M / 16;
        const int32_t kc_max = MPK_GEMM_STAGE_BYTES / 2 / M / 64 * 64;
        const int32_t nch = (K64 + kc_max - 1) / kc_max;
        const int32_t KC = ((K64 + nch - 1) / nch + 63) / 64 * 64;
        xr.prep(r0, nr, scale);
        mpk_sync();
        for (int32_t t0 = 0; t0 < tiles; t0 += nwarps * TW) {
            bool live[TW];
#pragma unroll
            for (int t = 0; t < TW; t++) live[t] = t0 + warp + t * nwarps < tiles;
            // Step s's copies (a group; empty past K) into slot s % DS.
            auto issue = [&](int32_t s) {
                if (s < ksteps) {
#pragma unroll
                    for (int t = 0; t < TW; t++) {
                        const int32_t k = s * 32 + q * 8, j = min((t0 + warp + t * nwarps) * 8 + g, n - 1);
                        const bool in = live[t] && k < K;  // (else zeros; j clamped: a partial last tile)
                        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(
                                         ring_s + (uint32_t)(((s % DS) * TW + t) * MPK_DEV_THREADS * 16)),
                                     "l"(w + (int64_t)j * ld_w + (in ? k : 0)), "r"(in ? 16u : 0u)
                                     : "memory");
                    }
                }
                asm volatile("cp.async.commit_group;" ::: "memory");
            };
            float acc[TW][4][4];
            mpk_gemm_zero<TW>(acc);
            for (int32_t s = 0; s < DS - 1; s++) issue(s);
            for (int32_t k0 = 0; k0 < K; k0 += KC) {
                if (!(nch == 1 && t0 > 0))
                    mpk_gemm_stage<XRows, (XRows::batch < MPK_GEMM_STAGE_BATCH ? XRows::batch : MPK_GEMM_STAGE_BATCH)>(
                        xr, xs, scale, r0, nr, M, k0, KC, K);
                mpk_sync();
                if (!marked) {
                    mpk_mark_inputs();
                    marked = true;
                }
                const int32_t steps = min(KC, K - k0 + 31) / 32, s0 = k0 / 32;
                for (int32_t st = 0; st < steps; st++) {
                    const int32_t s = s0 + st;
                    asm volatile("cp.async.wait_group %0;" ::"n"(DS - 2) : "memory");  // step s is in
                    uint4 wv[TW];
#pragma unroll
                    for (int t = 0; t < TW; t++) wv[t] = *(const uint4 *)(ring + ((s % DS) * TW + t) * MPK_DEV_THREADS * 16);
                    issue(s + DS - 1);  // into the slot read at step s - 1
                    mpk_gemm_step<TW>(acc, wv, xs, KC, st, MT, live);
                }
                mpk_sync();  // the next chunk overwrites xs
            }
            asm volatile("cp.async.wait_all;" ::: "memory");  // (the groups past K) before the next pass
            mpk_gemm_store<TW>(acc, t0 + warp, nwarps, tiles, r0, nr, MT, n, res, out, (float *)0, ld_res, ld_out);
        }
    }
}
#endif

#endif  // MPK_KERNELS_CUDA_GEMM_CUH
