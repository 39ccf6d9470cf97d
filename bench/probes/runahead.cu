// runahead.cu — probe: how fast can a decode step's chain of GEMV stages go when each worker's
// weights stream into shared memory ahead of the hand-offs, fed by a producer warp that never
// waits for activations (only for free slots)? Against the same chain read directly from global
// memory after each hand-off (the megakernel's design since v1).
//
// The chain has a Qwen3 decode step's shape: per layer qkv, an attention-like stage (8 blocks
// busy for a fixed time, the others idle), o_proj, gate/up, down; then the LM head. 128 blocks,
// each owns rows / 128 rows of every matrix (its own region of the weights), grid-wide counter
// hand-offs between stages (release add, acquire poll with back-off, as the megakernel's events).
// Each stage: wait for the previous stage's counter, stage the input vector (K bf16) in shared
// memory, multiply the block's rows, write the outputs, publish.
//   direct: 12 warps load their rows with 16-byte loads, `depth` loads in flight per lane.
//   ring:   a 13th warp (one lane) copies the block's slices, chunk after chunk of whole rows, with
//           cp.async.bulk into `slots` shared-memory slots (one full and one empty mbarrier per
//           slot, per-warp releases: no block barrier per slot), across stages and iterations;
//           the 12 consumer warps multiply each chunk as it lands.
// Build and run on the GPU machine:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o build/runahead bench/probes/runahead.cu
//   build/runahead [qwen3-0.6b|qwen3-1.7b|qwen3-8b|all]
// Prints one table: us per token per mode, GB/s of weights, and the outputs' largest difference
// from the direct mode (same products, a different order of the cross-warp sums).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "probe.cuh"

static_assert(12 * 32 == 384, "consumers_sync counts 384 threads");
enum { MAX_STAGES = 200, CONSUMERS = 12, CTHREADS = CONSUMERS * 32, THREADS = CTHREADS + 32, BLOCKS = 128 };
enum { XS_BYTES = 24576, OUTS_FLOATS = 2048 };  // input vector (K <= 12288 bf16), outputs per block

struct Stage {
    long long w_off;   // the matrix's first byte in the weight buffer
    long long y_off;   // its outputs' first float in y
    int rows;          // rows per block (0: an attention-like stage)
    int K;             // elements per row
    int chunk_rows;    // rows per ring chunk (1 when a row is split into parts)
    int parts;         // chunks per row (rows larger than a slot), else 1
    int ks_chunk;      // warps per row within a chunk (K split)
    int ks_direct;     // warps per row in direct mode
    int busy_ns;       // attention-like: blocks [0, 8) are busy this long
};
__constant__ Stage c_st[MAX_STAGES];

struct Args {
    const char *w;
    const uint4 *x;
    float *y;
    unsigned long long *counters;
    int nstages, iters, ring, slots, slot_bytes, depth, prefetch, publish, inflight, chase;
    long long wbytes;
    int *err;
    long long *tm;  // (stage, block, 4) times of the last iteration: waited, input staged, multiplied, published
};

__device__ __forceinline__ uint32_t sa(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ long long gtime() {
    long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float dot8(uint4 a, uint4 b) {
    const __nv_bfloat162 *x = (const __nv_bfloat162 *)&a, *y = (const __nv_bfloat162 *)&b;
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 p = __bfloat1622float2(x[i]), q = __bfloat1622float2(y[i]);
        s = fmaf(p.x, q.x, s);
        s = fmaf(p.y, q.y, s);
    }
    return s;
}

__device__ __forceinline__ uint4 ld_w(const uint4 *p, bool global) {
    if (!global) return *p;
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ bool mbar_try(uint32_t bar, uint32_t parity) {
    uint32_t done;
    asm volatile("{\n .reg .pred q;\n mbarrier.try_wait.parity.shared::cta.b64 q, [%1], %2;\n selp.u32 %0, 1, 0, q;\n}\n"
                 : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    return done != 0;
}

// Waits for the phase of `parity`; false after ~1 s (the probe then reports an error).
__device__ bool mbar_wait(uint32_t bar, uint32_t parity) {
    if (mbar_try(bar, parity)) return true;
    const long long t0 = gtime();
    for (;;) {
        if (mbar_try(bar, parity)) return true;
        if (gtime() - t0 > 1000000000ll) return false;
    }
}

__device__ bool counter_wait(const unsigned long long *p, unsigned long long target) {
    unsigned long long v;
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    if (v >= target) return true;
    const long long t0 = gtime();
    unsigned ns = 32;
    for (;;) {
        __nanosleep(ns);
        if (ns < 256) ns <<= 1;
        asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
        if (v >= target) return true;
        if (gtime() - t0 > 1000000000ll) return false;
    }
}

// Named barrier 1 over the 12 consumer warps (384 threads).
__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, 384;" ::: "memory"); }

// One unit: rows w0 and w1 (the same row when NR == 1) over spu steps of 32 pieces (a step: one
// 16-byte piece of each row and of x per lane), DEPTH steps in flight; the warp's two sums.
template <int DEPTH, int NR>
__device__ void unit_dots(const uint4 *w0, const uint4 *w1, const uint4 *xr, int spu, bool global, float &a0,
                          float &a1) {
    a0 = a1 = 0.f;
    for (int i = 0; i < spu; i += DEPTH) {
        uint4 v0[DEPTH], v1[DEPTH];
#pragma unroll
        for (int j = 0; j < DEPTH; j++)
            if (i + j < spu) {
                v0[j] = ld_w(w0 + (i + j) * 32, global);
                if (NR == 2) v1[j] = ld_w(w1 + (i + j) * 32, global);
            }
#pragma unroll
        for (int j = 0; j < DEPTH; j++)
            if (i + j < spu) {
                const uint4 xv = xr[(i + j) * 32];
                a0 += dot8(v0[j], xv);
                if (NR == 2) a1 += dot8(v1[j], xv);
            }
    }
    a0 = warp_sum(a0);
    if (NR == 2) a1 = warp_sum(a1);
}

// Rows [0, R) of K elements at src (P = K / 8 pieces of 16 bytes each), in units of (row pair,
// K segment of P / ks pieces): unit u to warp u % 12, which adds the pair's two sums to
// outs[row0 + row]. An odd last row is computed twice and stored once.
template <int DEPTH>
__device__ void gemv_rows(const uint4 *src, int R, int P, int ks, const uint4 *xs, float *outs, int row0,
                          bool global) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int per = P / ks, spu = per / 32;  // (P / ks is a multiple of 32)
    const int pairs = (R + 1) / 2, units = pairs * ks;
    for (int u = warp; u < units; u += CONSUMERS) {
        const int pr = u / ks, seg = u - pr * ks;
        const int r0 = 2 * pr, r1 = min(2 * pr + 1, R - 1);
        float a0, a1;
        unit_dots<DEPTH, 2>(src + (size_t)r0 * P + seg * per + lane, src + (size_t)r1 * P + seg * per + lane,
                            xs + seg * per + lane, spu, global, a0, a1);
        if (lane == 0) {
            atomicAdd(&outs[row0 + r0], a0);
            if (r1 != r0) atomicAdd(&outs[row0 + r1], a1);
        }
    }
}

// Ring mode: chunk n holds rows [r0, r0 + R) of the stage (whole rows). Its work is split into
// units of (rows, K segment): row pairs when the chunk has two rows or more, single rows when a
// chunk is one row; the units of a stage are numbered across its chunks (base = the units of the
// stage's earlier chunks) and unit g goes to warp g % 12, so the warps spread over the chunks in
// flight instead of splitting each chunk finely. Every warp passes every chunk (waits for it,
// takes its units, releases it): the empty barrier counts 12 arrivals per phase.
template <int DEPTH, int NR>
__device__ void chunk_units(const uint4 *src, int R, int P, int ks, const uint4 *xs, float *outs, int row0,
                            int base, bool add) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int per = P / ks, spu = per / 32;
    const int groups = (R + NR - 1) / NR, units = groups * ks;
    int first = (warp - base) % CONSUMERS;
    if (first < 0) first += CONSUMERS;
    for (int u = first; u < units; u += CONSUMERS) {
        const int gr = u / ks, seg = u - gr * ks;
        const int r0 = NR * gr, r1 = min(r0 + NR - 1, R - 1);
        float a0, a1;
        unit_dots<DEPTH, NR>(src + (size_t)r0 * P + seg * per + lane, src + (size_t)r1 * P + seg * per + lane,
                             xs + seg * per + lane, spu, false, a0, a1);
        if (lane == 0) {
            if (ks == 1 && !add) outs[row0 + r0] = a0; else atomicAdd(&outs[row0 + r0], a0);
            if (NR == 2 && r1 != r0) {
                if (ks == 1) outs[row0 + r1] = a1; else atomicAdd(&outs[row0 + r1], a1);
            }
        }
    }
}

template <int DEPTH>
__global__ void __launch_bounds__(THREADS, 1) chain(Args a) {
    extern __shared__ __align__(128) char smem[];
    __shared__ alignas(8) unsigned long long full[32], empty[32];
    __shared__ int pause_flag;  // publish mode 4: set while the block publishes, the producer holds back
    int *pause = &pause_flag;
    if (threadIdx.x == 0) pause_flag = 0;
    uint4 *xs = (uint4 *)smem;
    float *outs = (float *)(smem + XS_BYTES);
    char *ring = smem + XS_BYTES + OUTS_FLOATS * 4;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    if (tid == 0 && a.ring) {
        for (int i = 0; i < a.slots; i++) {
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(sa(&full[i])));
            asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(sa(&empty[i])), "r"(CONSUMERS));
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();

    if (warp == CONSUMERS) {  // the producer: this block's slices, stage after stage, every iteration
        if (!a.ring || lane != 0) return;
        uint32_t n = 0;
        int stages_issued = 0;  // publish mode 5: streamed stages started
        for (int it = 0; it < a.iters; it++)
            for (int s = 0; s < a.nstages; s++) {
                const Stage st = c_st[s];
                if (!st.rows) continue;
                const size_t row_bytes = (size_t)st.K * 2;
                const char *base = a.w + st.w_off + (size_t)blockIdx.x * st.rows * row_bytes;
                const int nch = st.parts > 1 ? st.rows * st.parts : (st.rows + st.chunk_rows - 1) / st.chunk_rows;
                if (a.publish == 5) {  // the previous streamed stage of this block has published
                    while (*(volatile int *)pause < stages_issued) {
                    }
                }
                stages_issued++;
                for (int c = 0; c < nch; c++, n++) {
                    const uint32_t bytes = st.parts > 1 ? (uint32_t)(row_bytes / st.parts)
                                                        : (uint32_t)(min(st.chunk_rows, st.rows - c * st.chunk_rows) * row_bytes);
                    const size_t off = st.parts > 1 ? (size_t)c * bytes : (size_t)c * st.chunk_rows * row_bytes;
                    while (a.publish == 4 && *(volatile int *)pause) {
                    }
                    const int slot = (int)(n % (uint32_t)a.slots);
                    if (n >= (uint32_t)a.slots && !mbar_wait(sa(&empty[slot]), (n / a.slots - 1) & 1u)) {
                        atomicExch(a.err, 1);
                        return;
                    }
                    // At most `inflight` chunks travelling: chunk n - inflight has landed.
                    if (n >= (uint32_t)a.inflight) {
                        const uint32_t m = n - (uint32_t)a.inflight;
                        if (!mbar_wait(sa(&full[m % a.slots]), (m / a.slots) & 1u)) {
                            atomicExch(a.err, 4);
                            return;
                        }
                    }
                    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(sa(&full[slot])), "r"(bytes) : "memory");
                    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                                 ::"r"(sa(ring + (size_t)slot * a.slot_bytes)), "l"(base + off), "r"(bytes),
                                 "r"(sa(&full[slot])) : "memory");
                }
            }
        return;
    }

    uint32_t n = 0;  // ring chunks consumed
    int published = 0;  // (thread 0, publish mode 5) streamed stages published
    int prev = -1;   // the stage this one waits for
    for (int it = 1; it <= a.iters; it++)
        for (int s = 0; s < a.nstages; s++) {
            const Stage st = c_st[s];
            if (st.rows && a.prefetch && !a.ring) {  // the megakernel's L2 request before the wait
                const char *mine = a.w + st.w_off + (size_t)blockIdx.x * st.rows * st.K * 2;
                const int bytes = min(a.prefetch, st.rows * st.K * 2);
                for (int off = tid * 128; off < bytes; off += CTHREADS * 128)
                    asm volatile("prefetch.global.L2 [%0];" ::"l"(mine + off));
            }
            if (tid == 0 && prev >= 0) {
                const int pc = c_st[prev].rows ? BLOCKS : 8;
                const unsigned long long target = (unsigned long long)pc * (prev < s ? it : it - 1);
                if (!counter_wait(a.counters + (size_t)prev * 16, target)) atomicExch(a.err, 2);
            }
            prev = s;
            consumers_sync();
            long long *tm = a.tm + ((size_t)s * BLOCKS + blockIdx.x) * 4;
            const bool rec = tid == 0 && it == a.iters;
            if (rec) tm[0] = tm[1] = tm[2] = tm[3] = gtime();
            if (!st.rows) {  // attention-like: 8 blocks busy, the others go on to wait for them
                if (blockIdx.x < 8) {
                    if (a.chase > 0 && tid < 32 * 8) {  // 8 warps, each a chain of dependent loads
                        size_t idx = ((size_t)blockIdx.x * 8 + warp) * 7919u * 4096u + lane * 16u;
                        unsigned acc = 0;
                        for (int r = 0; r < a.chase; r++) {
                            const uint4 v = ld_w((const uint4 *)(a.w + (idx % (size_t)a.wbytes & ~(size_t)15)), true);
                            acc += v.x;
                            idx = idx * 2654435761u + v.x + 104729u * 4096u;
                        }
                        if (acc == 0x12345678u) a.y[0] = 1.f;
                    }
                    consumers_sync();
                    if (tid == 0) {
                        const long long t0 = gtime();
                        while (a.chase == 0 && gtime() - t0 < st.busy_ns) {
                        }
                        asm volatile("fence.acq_rel.gpu;" ::: "memory");
                        asm volatile("red.relaxed.gpu.global.add.u64 [%0], 1;" ::"l"(a.counters + (size_t)s * 16) : "memory");
                        if (rec) tm[3] = gtime();
                    }
                } else if (a.chase > 0) {
                    consumers_sync();  // (every block passes the same barriers)
                }
                continue;
            }
            const int P = st.K / 8;
            for (int i = tid; i < P; i += CTHREADS) xs[i] = a.x[i];
            for (int i = tid; i < st.rows; i += CTHREADS) outs[i] = 0.f;
            consumers_sync();
            if (rec) tm[1] = gtime();
            if (a.ring) {
                int base = 0;  // units of this stage's earlier chunks
                const int nch = st.parts > 1 ? st.rows * st.parts : (st.rows + st.chunk_rows - 1) / st.chunk_rows;
                const int Pc = P / st.parts;  // pieces of a row in a chunk
                for (int c = 0; c < nch; c++, n++) {
                    const int slot = (int)(n % (uint32_t)a.slots);
                    const int r0 = st.parts > 1 ? c / st.parts : c * st.chunk_rows;
                    const int R = st.parts > 1 ? 1 : min(st.chunk_rows, st.rows - r0);
                    const uint4 *xc = xs + (st.parts > 1 ? (c % st.parts) * Pc : 0);
                    if (!mbar_wait(sa(&full[slot]), (n / a.slots) & 1u)) atomicExch(a.err, 3);
                    const uint4 *cs = (const uint4 *)(ring + (size_t)slot * a.slot_bytes);
                    if (st.chunk_rows >= 2) {
                        chunk_units<DEPTH, 2>(cs, R, Pc, st.ks_chunk, xc, outs, r0, base, false);
                        base += (R + 1) / 2 * st.ks_chunk;
                    } else {
                        chunk_units<DEPTH, 1>(cs, R, Pc, st.ks_chunk, xc, outs, r0, base, st.parts > 1);
                        base += R * st.ks_chunk;
                    }
                    __syncwarp();
                    if (lane == 0) asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(sa(&empty[slot])) : "memory");
                }
            } else {
                const uint4 *mine = (const uint4 *)(a.w + st.w_off + (size_t)blockIdx.x * st.rows * st.K * 2);
                gemv_rows<DEPTH>(mine, st.rows, P, st.ks_direct, xs, outs, 0, true);
            }
            if (tid == 0 && a.publish == 4) *(volatile int *)pause = 1;
            if (tid == 0 && a.publish == 5) published++;
            consumers_sync();
            if (rec) tm[2] = gtime();
            for (int i = tid; i < st.rows; i += CTHREADS) a.y[st.y_off + (size_t)blockIdx.x * st.rows + i] = outs[i];
            consumers_sync();
            if (tid == 0) {
                // publish 0: a release fence, then a relaxed add (the megakernel's); 1: one
                // release add; 2: no ordering at all (a timing probe, not a correct hand-off);
                // 3: a release-only fence; 4: as 0, the producer holding back its copies from
                // the multiply's end until the add
                unsigned long long *ctr = a.counters + (size_t)s * 16;
                if (a.publish == 0) {
                    asm volatile("fence.acq_rel.gpu;" ::: "memory");
                    asm volatile("red.relaxed.gpu.global.add.u64 [%0], 1;" ::"l"(ctr) : "memory");
                } else if (a.publish == 1) {
                    asm volatile("red.release.gpu.global.add.u64 [%0], 1;" ::"l"(ctr) : "memory");
                } else if (a.publish == 3) {
                    asm volatile("fence.release.gpu;" ::: "memory");
                    asm volatile("red.relaxed.gpu.global.add.u64 [%0], 1;" ::"l"(ctr) : "memory");
                } else if (a.publish == 4) {
                    asm volatile("fence.acq_rel.gpu;" ::: "memory");
                    asm volatile("red.relaxed.gpu.global.add.u64 [%0], 1;" ::"l"(ctr) : "memory");
                    *(volatile int *)pause = 0;
                } else if (a.publish == 5) {
                    asm volatile("fence.acq_rel.gpu;" ::: "memory");
                    asm volatile("red.relaxed.gpu.global.add.u64 [%0], 1;" ::"l"(ctr) : "memory");
                    *(volatile int *)pause = published;  // the producer may start the next stage
                } else {
                    asm volatile("red.relaxed.gpu.global.add.u64 [%0], 1;" ::"l"(ctr) : "memory");
                }
                if (rec) tm[3] = gtime();
            }
        }
}

__global__ void fill(uint16_t *p, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)(i * 2654435761u) ^ (uint32_t)(i >> 32);
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        const float v = ((float)(h & 0xffff) / 65536.f - 0.5f) * 0.0625f;
        __nv_bfloat16 b = __float2bfloat16(v);
        p[i] = *(uint16_t *)&b;
    }
}

struct Model {
    const char *name;
    int H, I, Hq, Hkv, D, L, V, attn_ns;
};

// The fewest steps of the busiest warp: ks warps per row pair, ks dividing P / 32.
static int pick_ks(int R, int P) {
    int best = 1, best_cost = 1 << 30;
    for (int ks = 1; ks <= P / 32; ks++) {
        if ((P / 32) % ks) continue;
        const int cost = ((R + 1) / 2 * ks + CONSUMERS - 1) / CONSUMERS * (P / 32 / ks);
        if (cost < best_cost) best_cost = cost, best = ks;
    }
    return best;
}

// Ring mode: K segments of about 8 steps (16-byte pieces per lane) per unit.
static int unit_ks(int P) {
    int ks = 1;
    while ((P / 32) % (ks * 2) == 0 && P / 32 / ks > 8) ks *= 2;
    while ((P / 32) % 3 == 0 && P / 32 / ks > 8 && (P / 32) % (ks * 3) == 0) ks *= 3;
    return ks;
}

static int build(const Model &m, int slot_bytes, int attn, std::vector<Stage> &st, long long *w_bytes, long long *y_floats) {
    long long w = 0, y = 0;
    st.clear();
    auto gemv = [&](int N, int K) {
        Stage s{};
        s.w_off = w;
        s.y_off = y;
        s.rows = N / BLOCKS;
        s.K = K;
        const int row_bytes = K * 2;
        s.chunk_rows = slot_bytes / row_bytes;
        if (s.chunk_rows > s.rows) s.chunk_rows = s.rows;
        s.parts = 1;
        if (s.chunk_rows < 1) {  // a row in parts of at most a slot, each a multiple of 32 pieces
            s.chunk_rows = 1;
            s.parts = (row_bytes + slot_bytes - 1) / slot_bytes;
            while ((K / 8) % (32 * s.parts)) s.parts++;
        }
        s.ks_chunk = unit_ks(K / 8 / s.parts);
        s.ks_direct = pick_ks(s.rows, K / 8);
        w += (long long)N * K * 2;
        y += N;
        st.push_back(s);
        return s.chunk_rows >= 1 && row_bytes / s.parts <= slot_bytes && s.rows <= OUTS_FLOATS && K * 2 <= XS_BYTES && N % BLOCKS == 0;
    };
    bool ok = true;
    for (int l = 0; l < m.L; l++) {
        ok &= gemv((m.Hq + 2 * m.Hkv) * m.D, m.H);
        if (attn) {
            Stage s{};
            s.busy_ns = m.attn_ns;
            st.push_back(s);
        }
        ok &= gemv(m.H, m.Hq * m.D);
        ok &= gemv(2 * m.I, m.H);
        ok &= gemv(m.H, m.I);
    }
    ok &= gemv(m.V, m.H);
    *w_bytes = w;
    *y_floats = y;
    return ok && (int)st.size() <= MAX_STAGES;
}

// Per stage of a layer (mean over layers and blocks, us, the last iteration of the last
// repetition): the block's wait before it (from its previous publish), input staging, the
// multiply, the publish, and the stage's span (first block waited .. last block published).
static void stage_times(const std::vector<Stage> &st, const long long *dtm, int attn) {
    std::vector<long long> t(st.size() * BLOCKS * 4);
    if (cudaMemcpy(t.data(), dtm, t.size() * 8, cudaMemcpyDeviceToHost) != cudaSuccess) return;
    const int per = attn ? 5 : 4;
    const char *names5[] = {"qkv", "attention", "o_proj", "gate_up", "down"};
    const char *names4[] = {"qkv", "o_proj", "gate_up", "down"};
    printf("|   | stage | wait | inputs | multiply | publish | span |\n");
    for (int k = 0; k <= per; k++) {
        double sw = 0, si = 0, sm = 0, sp = 0, ss = 0;
        int n = 0, ns = 0;
        for (size_t s = 1; s < st.size(); s++) {
            const bool head = s + 1 == st.size();
            if (head ? k != per : (k == per || (int)(s % per) != k)) continue;
            long long lo = 1ll << 62, hi = 0;
            for (int b = 0; b < BLOCKS; b++) {
                const long long *q = &t[(s * BLOCKS + b) * 4], *p = &t[((s - 1) * BLOCKS + b) * 4];
                if (!st[s].rows && b >= 8) continue;
                sw += (q[0] - p[3]) * 1e-3;
                si += (q[1] - q[0]) * 1e-3;
                sm += (q[2] - q[1]) * 1e-3;
                sp += (q[3] - q[2]) * 1e-3;
                n++;
                lo = q[0] < lo ? q[0] : lo;
                hi = q[3] > hi ? q[3] : hi;
            }
            ss += (hi - lo) * 1e-3;
            ns++;
        }
        if (n)
            printf("|   | %s | %.2f | %.2f | %.2f | %.2f | %.2f |\n", k == per ? "lm_head" : attn ? names5[k] : names4[k],
                   sw / n, si / n, sm / n, sp / n, ss / ns);
    }
}

struct Mode {
    const char *name;
    int ring, slots, slot_bytes, depth, prefetch, attn, publish, detail, inflight, chase;
};

int main(int argc, char **argv) {
    const Model models[] = {
        {"qwen3-0.6b", 1024, 3072, 16, 8, 128, 28, 151936, 8000},
        {"qwen3-1.7b", 2048, 6144, 16, 8, 128, 28, 151936, 9000},
        {"qwen3-8b", 4096, 12288, 32, 8, 128, 36, 151936, 13000},
    };
    const Mode modes[] = {
        {"direct, 4 steps in flight", 0, 0, 32768, 4, 0, 1, 0, 1, 0, 0},
        {"ring 6 x 32 KB, 1 in flight", 1, 6, 32768, 4, 0, 1, 0, 1, 1, 0},
        {"ring 6 x 32 KB, 1 in flight, none in flight from a stage's last chunk to its publish", 1, 6, 32768, 4, 0, 1, 5, 1, 1, 0},
        {"ring 6 x 32 KB, 2 in flight, none in flight from a stage's last chunk to its publish", 1, 6, 32768, 4, 0, 1, 5, 0, 2, 0},
        {"direct, attention = 8 warps x 12 dependent loads", 0, 0, 32768, 4, 0, 1, 0, 1, 0, 12},
        {"ring 6 x 32 KB, 1 in flight, attention = 12 dependent loads", 1, 6, 32768, 4, 0, 1, 0, 1, 1, 12},
        {"ring, 1 in flight, stop to publish, attention = 12 dependent loads", 1, 6, 32768, 4, 0, 1, 5, 0, 1, 12},
    };
    const char *want = argc > 1 ? argv[1] : "all";
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    CK(cudaFuncSetAttribute(chain<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, XS_BYTES + OUTS_FLOATS * 4 + 196608));
    CK(cudaFuncSetAttribute(chain<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, XS_BYTES + OUTS_FLOATS * 4 + 196608));
    CK(cudaFuncSetAttribute(chain<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, XS_BYTES + OUTS_FLOATS * 4 + 196608));
    printf("| model | mode | us/token | GB/s | max |diff| vs direct |\n| --- | --- | ---: | ---: | ---: |\n");
    for (const Model &m : models) {
        if (strcmp(want, "all") && strcmp(want, m.name)) continue;
        std::vector<Stage> st;
        long long wb, yf;
        if (!build(m, 32768, 1, st, &wb, &yf)) {
            printf("%s: shapes do not fit the probe\n", m.name);
            continue;
        }
        char *w;
        uint4 *x;
        float *y;
        unsigned long long *ctr;
        int *err;
        unsigned *sink;
        long long *tm;
        CK(cudaMalloc(&tm, (size_t)MAX_STAGES * BLOCKS * 4 * 8));
        CK(cudaMalloc(&w, wb));
        CK(cudaMalloc(&x, XS_BYTES));
        CK(cudaMalloc(&y, yf * 4));
        CK(cudaMalloc(&ctr, (size_t)MAX_STAGES * 16 * 8));
        CK(cudaMalloc(&err, 4));
        CK(cudaMalloc(&sink, 4));
        fill<<<1024, 256>>>((uint16_t *)w, (size_t)(wb / 2));
        fill<<<16, 256>>>((uint16_t *)x, XS_BYTES / 2);
        CK(cudaDeviceSynchronize());
        cudaEvent_t e0, e1;
        CK(cudaEventCreate(&e0));
        CK(cudaEventCreate(&e1));
        {  // the card's plain streaming read of the same buffer
            const size_t n = (size_t)(wb / 16);
            plain_read<<<prop.multiProcessorCount * 2, 1024>>>((const uint4 *)w, n, sink);
            CK(cudaEventRecord(e0));
            plain_read<<<prop.multiProcessorCount * 2, 1024>>>((const uint4 *)w, n, sink);
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            printf("| %s | plain streaming read (the floor) | %.1f | %.0f | - |\n", m.name, ms * 1e3, wb / (ms * 1e6));
        }
        std::vector<float> ref(yf), out(yf);
        for (const Mode &md : modes) {
            if (!build(m, md.slot_bytes, md.attn, st, &wb, &yf)) {
                printf("| %s | %s | (shapes do not fit) | | |\n", m.name, md.name);
                continue;
            }
            CK(cudaMemcpyToSymbol(c_st, st.data(), st.size() * sizeof(Stage)));
            const int smem = XS_BYTES + OUTS_FLOATS * 4 + (md.ring ? md.slots * md.slot_bytes : 0);
            double best = 1e30;
            for (int rep = 0; rep < 3; rep++) {
                CK(cudaMemset(ctr, 0, (size_t)MAX_STAGES * 16 * 8));
                CK(cudaMemset(err, 0, 4));
                Args a{w, x, y, ctr, (int)st.size(), 8, md.ring, md.slots, md.slot_bytes, md.depth, md.prefetch, md.publish, md.inflight, md.chase, wb, err, tm};
                CK(cudaEventRecord(e0));
                if (md.depth == 8)
                    chain<8><<<BLOCKS, THREADS, smem>>>(a);
                else if (md.depth == 2)
                    chain<2><<<BLOCKS, THREADS, smem>>>(a);
                else
                    chain<4><<<BLOCKS, THREADS, smem>>>(a);
                CK(cudaGetLastError());
                CK(cudaEventRecord(e1));
                CK(cudaEventSynchronize(e1));
                float ms;
                CK(cudaEventElapsedTime(&ms, e0, e1));
                int herr;
                CK(cudaMemcpy(&herr, err, 4, cudaMemcpyDeviceToHost));
                if (herr) {
                    printf("| %s | %s | error %d (timeout) | | |\n", m.name, md.name, herr);
                    best = -1;
                    break;
                }
                if (ms / a.iters < best) best = ms / a.iters;
            }
            if (best < 0) continue;
            CK(cudaMemcpy(out.data(), y, yf * 4, cudaMemcpyDeviceToHost));
            double diff = 0;
            if (&md == &modes[0])
                ref = out;
            else
                for (long long i = 0; i < yf; i++) diff = fmax(diff, fabs((double)out[i] - ref[i]));
            printf("| %s | %s | %.1f | %.0f | %.2g |\n", m.name, md.name, best * 1e3, wb / (best * 1e6), diff);
            if (md.detail) stage_times(st, tm, md.attn);
        }
        cudaFree(w);
        cudaFree(x);
        cudaFree(y);
        cudaFree(ctr);
        cudaFree(err);
        cudaFree(sink);
        cudaFree(tm);
    }
    return 0;
}
