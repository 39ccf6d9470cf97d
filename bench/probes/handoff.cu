// handoff.cu — probe: what does the grid-wide hand-off between two decode stages cost under load,
// counter + acquire (the megakernel's events) against an LL hand-off (data words that carry their
// own validity flag, as NCCL's LL protocol), and, for a consumer that needs only its own group's
// outputs, a hand-off inside a thread-block cluster through distributed shared memory? Build and
// run on the GPU machine:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o build/handoff bench/probes/handoff.cu && build/handoff [stages]
// One launch of `stages` (128 blocks x 512 threads) runs a chain of S stages (default 256). Per
// stage each block waits for the whole previous output vector (4096 bf16 = 2048 32-bit pairs),
// stages it in shared memory, streams its own weight slice (W bytes, 16-byte loads, 4 in flight
// per lane, as layered's direct mode in bulk_ring.cu), reduces to 32 bf16 outputs (16 pairs) and
// publishes them. Prints one markdown row per (protocol, group, W, early): us per stage (median of 5
// launches / S, launch overhead included), GB/s of weights, and the count of corrupt or stale
// words consumers saw (nonzero: FAIL, exit 1). W = 0 is the bare hand-off latency chain.
//   counter: the megakernel today. __syncthreads, thread 0 fence.acq_rel.gpu + red.relaxed.gpu
//            add on the stage counter; consumers: thread 0 polls it (ld.acquire.gpu, __nanosleep
//            back-off 32 -> 256 ns), __syncthreads, every thread loads the vector (plain loads).
//   ll:      each 8-byte word = {pair of bf16, 32-bit flag = the stage's epoch}, written with one
//            relaxed 8-byte store, no fence, barrier or counter; every consumer thread loads its
//            words and re-loads any whose flag is not the epoch, then one __syncthreads.
//   early:   each thread issues its first 4 weight loads before it waits (weights never depend on
//            activations), as a task could once it knows its next slice.
// Group rows (column "group" = C, 8 or 16; "-" for the grid-wide rows above): a consumer that
// needs only the outputs of a group of C blocks (attention of one kv head needs only the q/k/v
// columns produced by 8-16 blocks). Each block of group g = blockIdx.x / C then consumes only the
// group's C x 16 pairs (C x 32 bf16) instead of the whole vector; the compute is unchanged (same
// weight stream, same reads of xs, indices taken modulo the C x 16 pairs held).
//   cluster:       the C blocks of a group form one thread-block cluster (cudaLaunchKernelEx with
//                  cudaLaunchAttributeClusterDimension; C = 16 is a non-portable size). Each block
//                  writes its 16 pairs into its own shared memory (two buffers, by stage parity),
//                  then every thread barrier.cluster.arrive.release; the next stage begins with
//                  barrier.cluster.wait.acquire, after which threads read the C x 16 pairs from the
//                  cluster's blocks through DSMEM (mapa + ld.shared::cluster, 16 bytes a thread).
//                  No global memory, counter or polling; `early` loads go between arrive and wait.
//                  Buffer p = s & 1, rewritten at stage s + 2, is safe: its readers (stage s + 1)
//                  read it before arriving at the barrier that its writer waits on first. A final
//                  wait keeps every block alive until the cluster's last DSMEM reads are done.
//   counter-local: counter, but with one counter per group (its own 128-byte line): thread 0 waits
//                  for C arrivals per stage, and the block loads only the group's C x 16 pairs.
//                  Against `counter` it isolates "fewer producers"; against `cluster`, "DSMEM and
//                  the cluster barrier instead of global memory and a polled counter".
// The cluster rows need cluster launch (sm_90). A row reads "unsupported" where the device has
// no cluster launch, C = 16 is refused, cudaOccupancyMaxActiveClusters says fewer than 128 / C
// clusters fit at once (the chain is meant to run with all blocks resident), or the launch fails.
// A cluster barrier cannot time out, so the cluster mode never leaves its loop: every block runs
// all S + 1 arrive/wait pairs, and a bad word only counts as an error.
// Check words: one bf16 of each pair is a tag (a hash of epoch and index, so a word left from an
// earlier stage or launch is caught), the other the real output, which depends on the weights
// and on every element the block consumed. The traffic is the real one (8 KB / 16 KB per stage);
// half the slots are tags, so the vector holds 2048 real values. In cluster mode the tags are
// checked on the words read through DSMEM (a word left from stage s - 2 in the same buffer, or a
// word of the wrong rank, is caught).
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <cuda_runtime.h>

#include "probe.cuh"

constexpr int NB = 128, NT = 512, PAIRS = 2048;  // blocks, threads, 32-bit pairs per vector
constexpr int OUT = PAIRS / NB;                    // pairs each block produces (16 = 32 bf16)
constexpr size_t WBUF = (size_t)1 << 30;           // weight buffer; slices wrap modulo it
constexpr unsigned long long TIMEOUT_NS = 2000000000ull;
constexpr int CTR_STRIDE = 16;                     // one 128-byte line per counter
constexpr int CTR_LAUNCH = NB / 8 * CTR_STRIDE;    // per launch: a line per group (C >= 8)

enum Mode { COUNTER = 0, LL = 1, COUNTER_LOCAL = 2, CLUSTER = 3 };

struct Status { unsigned long long errors; unsigned timeout; };

__host__ __device__ __forceinline__ uint32_t mix32(uint32_t x) {
    x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
    return x;
}
// The tag half of pair `idx` of the vector published with epoch e (e = 0: the input vector).
__host__ __device__ __forceinline__ uint32_t tag_of(uint32_t e, uint32_t idx) { return mix32(e * PAIRS + idx) & 0xffffu; }

// Four consumed pairs {tag, value} into xs[i0 .. i0 + 4): the values, and how many tags are not
// those of epoch e (a stale or misplaced word).
__device__ __forceinline__ int take_pairs(uint4 in, int i0, uint32_t e, uint32_t base, float *xs) {
    const uint32_t pair[4] = {in.x, in.y, in.z, in.w};
    int bad = 0;
#pragma unroll
    for (int q = 0; q < 4; q++) {
        if ((pair[q] & 0xffffu) != tag_of(e, base + i0 + q)) bad++;
        xs[i0 + q] = __uint_as_float(pair[q] >> 16 << 16);
    }
    return bad;
}

__device__ __forceinline__ uint64_t gtimer() {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ unsigned long long ld_acquire(const unsigned long long *p) {
    unsigned long long v;
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
// LL words: one scalar 64-bit access. A .v2.b32 access is, in the PTX memory model, two 32-bit
// accesses in no defined order (flag and payload could tear); a .b64 one is a single access.
__device__ __forceinline__ uint64_t ld_ll(const uint64_t *p) {
    uint64_t v;
    asm volatile("ld.relaxed.gpu.global.b64 %0, [%1];" : "=l"(v) : "l"(p));
    return v;
}
__device__ __forceinline__ void st_ll(uint64_t *p, uint64_t v) {
    asm volatile("st.relaxed.gpu.global.b64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
// Weight stream: read-only, not kept in L1. volatile so that `early` loads stay before the wait.
__device__ __forceinline__ uint4 ld_w(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// Cluster mode. Every thread of every block of the cluster executes each arrive and each wait,
// alternately, at converged points (hence .aligned). arrive.release orders the thread's earlier
// accesses (its shared-memory outputs, and its DSMEM reads of the stage) before the barrier;
// wait.acquire orders the later ones (the DSMEM reads, the rewrite of a buffer) after it.
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }
__device__ __forceinline__ uint32_t cluster_rank() {
    uint32_t r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
__device__ __forceinline__ uint32_t cluster_nblocks() {
    uint32_t n;
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
    return n;
}
// 16 bytes at shared address p (of this block) in the shared memory of block `rank` of the cluster.
__device__ __forceinline__ uint4 ld_dsmem(const void *p, uint32_t rank) {
    uint32_t a;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(a) : "r"((uint32_t)__cvta_generic_to_shared(p)), "r"(rank));
    uint4 v;
    asm volatile("ld.shared::cluster.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(a) : "memory");
    return v;
}

// Called every spin of a wait: true when the wait must be abandoned, because it has lasted
// TIMEOUT_NS (it then raises the global flag) or because some other thread raised it.
__device__ __forceinline__ bool give_up(uint64_t t0, unsigned spins, volatile unsigned *timeout) {
    if (spins & 63) return false;
    if (*timeout) return true;
    if (gtimer() - t0 < TIMEOUT_NS) return false;
    *timeout = 1;
    return true;
}

__global__ void fill(uint4 *w, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        w[i] = make_uint4(mix32((uint32_t)i * 4), mix32((uint32_t)i * 4 + 1), mix32((uint32_t)i * 4 + 2), mix32((uint32_t)i * 4 + 3));
}

// Slot 0 of both output buffers is the input of stage 0: values 1.0, flag 0 (epoch "0").
__global__ void init_input(uint32_t *cv, uint64_t *ll) {
    for (int i = threadIdx.x; i < PAIRS; i += blockDim.x) {
        const uint32_t pair = tag_of(0, i) | 0x3f80u << 16;
        cv[i] = pair;
        ll[i] = pair;
    }
}

// cv: (S+1) x 2048 pairs (counter modes); ll: (S+1) x 2048 words (ll mode). Stage s reads slot s
// and writes slot s+1, which carries epoch launch*S + s + 1 (slot 0: epoch 0). ctr: this launch's
// counters (CTR_LAUNCH words), zero at launch: counter uses the first, counter-local group g the
// one at g * CTR_STRIDE. C: the group size (counter-local, cluster; unused otherwise). Cluster
// mode keeps the hand-off in shared memory: its stage 0 input (epoch 0) is written there.
template <int MODE>
__global__ void __launch_bounds__(NT, 1) stages(const char *wbuf, int S, int W, int C, int early,
                                                uint32_t launch, uint32_t *cv, uint64_t *ll,
                                                unsigned long long *ctr, Status *st) {
    constexpr bool local = MODE == COUNTER_LOCAL || MODE == CLUSTER;
    __shared__ float xs[PAIRS];        // the staged vector (real halves, as float)
    __shared__ float red[NT / 32][OUT];  // per-warp partial outputs
    __shared__ __align__(16) uint32_t pub[local ? 2 : 1][OUT];  // cluster: this block's outputs, by stage parity
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, b = blockIdx.x;
    const int n16 = W / 16;
    const size_t nslices = W ? WBUF / W : 1;
    const int nin = local ? C * OUT : PAIRS;  // pairs consumed per stage (a power of 2)
    const int mask = nin - 1;
    // The group's first block, and its first pair. Cluster: blocks b - rank .. b - rank + C - 1
    // (a 1-D cluster is C consecutive blocks; the tags catch any other numbering).
    const uint32_t rank = MODE == CLUSTER ? cluster_rank() : 0;
    const int g0 = MODE == CLUSTER ? b - (int)rank : local ? b / C * C : 0;
    const uint32_t base = (uint32_t)g0 * OUT;
    const unsigned long long per_stage = local ? C : NB;  // arrivals on the counter per stage
    if (MODE == COUNTER_LOCAL) ctr += (size_t)(b / C) * CTR_STRIDE;
    volatile unsigned *timeout = &st->timeout;
    unsigned errs = 0;
    bool shape_ok = true;
    if constexpr (MODE == CLUSTER) {
        shape_ok = cluster_nblocks() == (uint32_t)C;  // (else no DSMEM read: all count as errors)
        if (tid < OUT) pub[0][tid] = tag_of(0, b * OUT + tid) | 0x3f80u << 16;  // stage 0's input
        cluster_arrive();
    }
    for (int s = 0; s < S; s++) {
        const uint32_t ep_in = s ? launch * S + s : 0, ep_out = launch * S + s + 1;
        const uint4 *wp = (const uint4 *)(wbuf + ((size_t)s * NB + b) % nslices * W);
        uint4 v[4];
        auto load = [&](int i) {
#pragma unroll
            for (int u = 0; u < 4; u++) v[u] = i + u * NT < n16 ? ld_w(wp + i + u * NT) : make_uint4(0, 0, 0, 0);
        };
        if (early) load(tid);
        // 1+2. Wait for stage s-1's vector (or the group's part) and stage it in shared memory,
        // checking every pair.
        if constexpr (MODE == LL) {
            bool bad = false;
            uint32_t pair[4];
            const uint64_t *src = ll + (size_t)s * PAIRS;
            uint64_t w[4];
#pragma unroll
            for (int q = 0; q < 4; q++) w[q] = ld_ll(src + tid + q * NT);  // 4 loads in flight
#pragma unroll
            for (int q = 0; q < 4; q++) {
                if ((uint32_t)(w[q] >> 32) != ep_in && !bad) {
                    const uint64_t t0 = gtimer();
                    for (unsigned spins = 1; (uint32_t)(w[q] >> 32) != ep_in; spins++) {
                        if (give_up(t0, spins, timeout)) { bad = true; break; }
                        w[q] = ld_ll(src + tid + q * NT);
                    }
                }
                if ((uint32_t)(w[q] >> 32) != ep_in && !bad) errs++;  // (cannot happen: the spin's exit)
                pair[q] = (uint32_t)w[q];
            }
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const int idx = tid + q * NT;
                if ((pair[q] & 0xffffu) != tag_of(ep_in, idx)) errs += !bad;
                xs[idx] = __uint_as_float(pair[q] >> 16 << 16);
            }
            if (__syncthreads_or(bad)) break;
        } else if constexpr (MODE == CLUSTER) {
            cluster_wait();  // every block of the cluster has published stage s-1 (or the input)
            if (tid < nin / 4) {
                const uint32_t r = 4 * tid / OUT;  // the rank whose outputs 4*tid .. 4*tid+3 are
                uint4 in = make_uint4(0, 0, 0, 0);
                if (shape_ok) in = ld_dsmem(&pub[s & 1][4 * tid % OUT], r);
                errs += take_pairs(in, 4 * tid, ep_in, base, xs);
            }
            __syncthreads();
        } else {
            bool bad = false;
            if (tid == 0) {
                const unsigned long long target = per_stage * s;
                if (ld_acquire(ctr) < target) {
                    const uint64_t t0 = gtimer();
                    unsigned ns = 32;
                    for (unsigned spins = 1;; spins++) {
                        __nanosleep(ns);
                        if (ns < 256) ns <<= 1;
                        if (ld_acquire(ctr) >= target) break;
                        if (give_up(t0, spins, timeout)) { bad = true; break; }
                    }
                }
            }
            if (__syncthreads_or(bad)) break;
            if (!local || tid < nin / 4) {
                const uint4 in = *(const uint4 *)(cv + (size_t)s * PAIRS + base + 4 * tid);  // ordinary load
                errs += take_pairs(in, 4 * tid, ep_in, base, xs);
            }
            __syncthreads();
        }
        // 3. Stream the weight slice. Thread t feeds output t % 16 (word i goes to output i % 16);
        // every element of the staged vector (nin pairs: all 2048, or the group's C x 16) enters
        // some output: 4 directly per thread, and one per weight word (index i mod nin), times a
        // [0, 1) number made of the word's bits.
        float acc = xs[tid & mask] + xs[(tid + NT) & mask] + xs[(tid + 2 * NT) & mask] + xs[(tid + 3 * NT) & mask];
        for (int i = tid; i < n16; i += 4 * NT) {
            if (!early || i != tid) load(i);
#pragma unroll
            for (int u = 0; u < 4; u++)
                if (i + u * NT < n16) {
                    const uint32_t x = v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
                    const float m = __uint_as_float((x & 0x007fffffu) | 0x3f800000u) - 1.0f;
                    acc = fmaf(m, xs[(i + u * NT) & mask], acc);
                }
        }
        acc += __shfl_xor_sync(0xffffffffu, acc, 16);
        if (lane < OUT) red[warp][lane] = acc;
        __syncthreads();
        // 4. Publish the 16 pairs: real half in [1, 2), a hash of the sum's bits and position.
        if (tid < OUT) {
            float o = 0;
#pragma unroll
            for (int k = 0; k < NT / 32; k++) o += red[k][tid];
            const uint32_t idx = b * OUT + tid;
            const uint32_t val = 0x3f80u | (mix32(__float_as_uint(o) ^ (ep_out * PAIRS + idx)) & 0x7fu);
            const uint32_t p = tag_of(ep_out, idx) | val << 16;
            if constexpr (MODE == LL) st_ll(ll + (size_t)(s + 1) * PAIRS + idx, (uint64_t)ep_out << 32 | p);
            else if constexpr (MODE == CLUSTER) pub[(s + 1) & 1][tid] = p;  // read at stage s+1, after its wait
            else cv[(size_t)(s + 1) * PAIRS + idx] = p;
        }
        if constexpr (MODE == COUNTER || MODE == COUNTER_LOCAL) {
            __syncthreads();  // the block's outputs are thread 0's to publish
            if (tid == 0) {
                asm volatile("fence.acq_rel.gpu;" ::: "memory");
                asm volatile("red.relaxed.gpu.global.add.u64 [%0], 1;" ::"l"(ctr) : "memory");
            }
        }
        // Cluster: outputs written (and this stage's DSMEM reads done) before the arrival; the
        // matching wait is at the top of stage s+1 (or after the loop).
        if constexpr (MODE == CLUSTER) cluster_arrive();
        // (No barrier needed before the next stage's staging: every read of xs is before the
        // reduction barrier above, and red is rewritten only after the next wait's barrier.)
    }
    // Cluster: no block may exit (its shared memory gone) before the others' last DSMEM reads.
    if constexpr (MODE == CLUSTER) cluster_wait();
    if (errs) atomicAdd(&st->errors, (unsigned long long)errs);
}

// The launch shape of the cluster mode: NB blocks of NT threads in clusters of C (attr: its one
// attribute, owned by the caller).
static cudaLaunchConfig_t cluster_config(int C, cudaLaunchAttribute *attr) {
    cudaLaunchConfig_t cfg = {};
    attr->id = cudaLaunchAttributeClusterDimension;
    attr->val.clusterDim.x = C;
    attr->val.clusterDim.y = 1;
    attr->val.clusterDim.z = 1;
    cfg.gridDim = dim3(NB);
    cfg.blockDim = dim3(NT);
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cfg;
}

// Launches stages<MODE>: a plain launch, or with clusters of C blocks in cluster mode.
template <int MODE>
cudaError_t launch_stages(const char *wbuf, int S, int W, int C, int early, uint32_t launch, uint32_t *cv,
                          uint64_t *ll, unsigned long long *ctr, Status *st) {
    if (MODE != CLUSTER) {
        stages<MODE><<<NB, NT>>>(wbuf, S, W, C, early, launch, cv, ll, ctr, st);
        return cudaGetLastError();
    }
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg = cluster_config(C, &attr);
    return cudaLaunchKernelEx(&cfg, stages<MODE>, wbuf, S, W, C, early, launch, cv, ll, ctr, st);
}

int main(int argc, char **argv) {
    const int S = argc > 1 ? atoi(argv[1]) : 256;
    if (S < 1) { printf("usage: %s [stages >= 1]\n", argv[0]); return 1; }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("%s, %d SMs, %d stages per launch, 128 blocks x 512 threads\n", prop.name, prop.multiProcessorCount, S);
    if (prop.multiProcessorCount < NB) { printf("needs at least %d SMs (all blocks resident)\n", NB); return 1; }
    const int max_launches = 1024;
    char *wbuf;
    uint32_t *cv;
    uint64_t *ll;
    unsigned long long *ctrs;
    Status *st;
    CK(cudaMalloc(&wbuf, WBUF));
    CK(cudaMalloc(&cv, (size_t)(S + 1) * PAIRS * 4));
    CK(cudaMalloc(&ll, (size_t)(S + 1) * PAIRS * 8));
    CK(cudaMalloc(&ctrs, (size_t)max_launches * CTR_LAUNCH * 8));
    CK(cudaMalloc(&st, sizeof(Status)));
    CK(cudaMemset(cv, 0, (size_t)(S + 1) * PAIRS * 4));  // once: epochs never repeat
    CK(cudaMemset(ll, 0, (size_t)(S + 1) * PAIRS * 8));
    CK(cudaMemset(ctrs, 0, (size_t)max_launches * CTR_LAUNCH * 8));
    fill<<<1024, 256>>>((uint4 *)wbuf, WBUF / 16);
    init_input<<<1, 512>>>(cv, ll);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));

    // Cluster support, per group size: cluster launch, the non-portable size 16, and all 128 / C
    // clusters co-resident. cl_ok[i] for Cs[i]; why not, in the notes under the table.
    const int Cs[] = {8, 16};
    bool cl_ok[2] = {false, false};
    char notes[1024] = "";
    auto note = [&](const char *fmt, auto... args) {
        char line[256];
        snprintf(line, sizeof line, fmt, args...);
        strncat(notes, line, sizeof notes - strlen(notes) - 1);
    };
    {
        int has_cluster = 0;
        CK(cudaDeviceGetAttribute(&has_cluster, cudaDevAttrClusterLaunch, 0));
        for (int i = 0; i < 2; i++) {
            const int C = Cs[i];
            if (!has_cluster) { note("cluster C=%d: unsupported (no cluster launch on this device)\n", C); continue; }
            if (C > 8) {
                const cudaError_t e = cudaFuncSetAttribute(stages<CLUSTER>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
                if (e != cudaSuccess) {
                    cudaGetLastError();
                    note("cluster C=%d: unsupported (non-portable cluster size refused: %s)\n", C, cudaGetErrorString(e));
                    continue;
                }
            }
            cudaLaunchAttribute attr;
            cudaLaunchConfig_t cfg = cluster_config(C, &attr);
            int ncl = 0;
            const cudaError_t e = cudaOccupancyMaxActiveClusters(&ncl, stages<CLUSTER>, &cfg);
            if (e != cudaSuccess) {
                cudaGetLastError();
                note("cluster C=%d: unsupported (cudaOccupancyMaxActiveClusters: %s)\n", C, cudaGetErrorString(e));
                continue;
            }
            if (ncl < NB / C) {
                note("cluster C=%d: unsupported (cudaOccupancyMaxActiveClusters says %d, fewer than %d)\n", C, ncl, NB / C);
                continue;
            }
            note("cluster C=%d: cudaOccupancyMaxActiveClusters says %d (%d needed)\n", C, ncl, NB / C);
            cl_ok[i] = true;
        }
    }

    uint32_t launch = 1;  // epoch base: launch * S + stage + 1
    bool fail = false;
    // One row: 5 timed launches after a warm-up. Returns nonzero on a CUDA error (the probe stops).
    auto row = [&](int mode, int C, int W, int early) -> int {
        static const char *names[] = {"counter", "ll", "counter-local", "cluster"};
        const char *name = names[mode];
        char group[8] = "-";
        if (mode == COUNTER_LOCAL || mode == CLUSTER) snprintf(group, sizeof group, "%d", C);
        if (mode == CLUSTER && !cl_ok[C == 16]) {
            printf("| %s | %s | %d | %d | unsupported | - | - |\n", name, group, W, early);
            return 0;
        }
        float ms[5];
        unsigned long long errors = 0;
        bool timed_out = false;
        for (int r = 0; r < 6 && !timed_out; r++) {  // r = 0: warm-up
            if (launch >= (uint32_t)max_launches) { printf("too many launches\n"); return 1; }
            unsigned long long *ctr = ctrs + (size_t)launch * CTR_LAUNCH;
            CK(cudaMemset(st, 0, sizeof(Status)));
            CK(cudaEventRecord(e0));
            cudaError_t le = cudaSuccess;
            switch (mode) {
            case COUNTER: le = launch_stages<COUNTER>(wbuf, S, W, C, early, launch, cv, ll, ctr, st); break;
            case LL: le = launch_stages<LL>(wbuf, S, W, C, early, launch, cv, ll, ctr, st); break;
            case COUNTER_LOCAL: le = launch_stages<COUNTER_LOCAL>(wbuf, S, W, C, early, launch, cv, ll, ctr, st); break;
            default: le = launch_stages<CLUSTER>(wbuf, S, W, C, early, launch, cv, ll, ctr, st); break;
            }
            if (le != cudaSuccess && mode == CLUSTER && r == 0) {  // a refused cluster launch: not fatal
                cudaGetLastError();
                printf("| %s | %s | %d | %d | unsupported | - | - |\n", name, group, W, early);
                note("cluster C=%d, W=%d, early=%d: unsupported (launch failed: %s)\n", C, W, early, cudaGetErrorString(le));
                return 0;
            }
            CK(le);
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            launch++;
            Status h;
            CK(cudaMemcpy(&h, st, sizeof h, cudaMemcpyDeviceToHost));
            errors += h.errors;
            timed_out = h.timeout != 0;
            if (r > 0) CK(cudaEventElapsedTime(&ms[r - 1], e0, e1));
        }
        if (errors || timed_out) fail = true;
        if (timed_out) {
            printf("| %s | %s | %d | %d | TIMEOUT | TIMEOUT | %llu |\n", name, group, W, early, errors);
            return 0;
        }
        std::sort(ms, ms + 5);
        const double sec = ms[2] * 1e-3;
        char gbs[32] = "-";
        if (W) snprintf(gbs, sizeof gbs, "%.0f", (double)NB * W * S / sec / 1e9);
        printf("| %s | %s | %d | %d | %.2f | %s | %llu |\n", name, group, W, early, sec * 1e6 / S, gbs, errors);
        return 0;
    };

    printf("\n| protocol | group | W bytes per block | early | us per stage | GB/s of weights | errors |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|\n");
    const int Ws[] = {0, 32768, 73728, 262144};
    for (int W : Ws) {
        for (int llm = 0; llm < 2; llm++)
            for (int early = 0; early < 2; early++) {
                if (W == 0 && early) continue;  // nothing to load early
                if (row(llm ? LL : COUNTER, NB, W, early)) return 1;
            }
        if (W > 73728) continue;  // the group rows: W in {0, 32768, 73728}
        for (int mode : {CLUSTER, COUNTER_LOCAL})
            for (int C : Cs)
                for (int early = 0; early < 2; early++) {
                    if (W == 0 && early) continue;
                    if (row(mode, C, W, early)) return 1;
                }
    }
    CK(cudaDeviceSynchronize());
    printf("\n%s", notes);
    if (fail) { printf("FAIL\n"); return 1; }
    printf("all checks passed\n");
    return 0;
}
