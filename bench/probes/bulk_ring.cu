// bulk_ring.cu — probe: can one block per SM stream weights at the card's read bandwidth through a
// ring of shared-memory slots filled by cp.async.bulk (the megakernel's weight stream), and what
// does each ingredient cost? Build and run on the GPU machine:
//   nvcc -O3 -gencode=arch=compute_90a,code=sm_90a -o build/bulk_ring bench/probes/bulk_ring.cu && build/bulk_ring
// Prints GB/s for: plain 16-byte loads (8 in flight per thread), the ring with several slot
// counts and sizes, with and without the block reading each slot before releasing it, and both
// with grid-wide hand-offs between task-sized slices (the megakernel's shape, `layered`).
#include "probe.cuh"

__device__ __forceinline__ uint32_t sa(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

// The ring's three operations, as in src/kernels/cuda/stream.cuh (thread 0 inits and issues).
__device__ __forceinline__ void ring_init(unsigned long long *bar, int slots) {
    for (int i = 0; i < slots; i++) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(sa(&bar[i])));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// Chunk n (`bytes` from src) into slot n % slots of smem.
__device__ __forceinline__ void ring_issue(char *smem, unsigned long long *bar, int slots, uint32_t n,
                                          const char *src, int bytes) {
    const uint32_t b = sa(&bar[n % slots]);
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(b), "r"(bytes) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"(sa(smem + (size_t)(n % slots) * bytes)), "l"(src), "r"(bytes), "r"(b) : "memory");
}

// Waits until chunk n has landed.
__device__ __forceinline__ void ring_wait(unsigned long long *bar, int slots, uint32_t n) {
    const uint32_t b = sa(&bar[n % slots]), par = (n / slots) & 1u;
    uint32_t done = 0;
    while (!done)
        asm volatile("{\n .reg .pred q;\n mbarrier.try_wait.parity.shared::cta.b64 q, [%1], %2;\n selp.u32 %0, 1, 0, q;\n}\n"
                     : "=r"(done) : "r"(b), "r"(par) : "memory");
}

// Each block streams its own contiguous share of the buffer in chunks of `chunk` bytes through
// `slots` slots. read: the block sums each slot (16-byte loads) before the barrier that frees it.
__global__ void __launch_bounds__(512, 1) ring(const char *p, size_t bytes, int slots, int chunk, int read,
                                              unsigned *sink) {
    extern __shared__ __align__(128) char smem[];
    __shared__ unsigned long long bar[16];
    const size_t share = bytes / gridDim.x / chunk * chunk;
    const char *base = p + share * blockIdx.x;
    const uint32_t nchunks = (uint32_t)(share / chunk);
    if (threadIdx.x == 0) ring_init(bar, slots);
    __syncthreads();
    uint32_t produced = 0;
    unsigned acc = 0;
    if (threadIdx.x == 0)
        for (; produced < (uint32_t)slots && produced < nchunks; produced++)
            ring_issue(smem, bar, slots, produced, base + (size_t)produced * chunk, chunk);
    for (uint32_t c = 0; c < nchunks; c++) {
        ring_wait(bar, slots, c);
        if (read) {
            const uint4 *s = (const uint4 *)(smem + (size_t)(c % slots) * chunk);
            for (int i = threadIdx.x; i < chunk / 16; i += blockDim.x) acc ^= s[i].x;
        }
        __syncthreads();
        if (threadIdx.x == 0 && produced < nchunks) {
            ring_issue(smem, bar, slots, produced, base + (size_t)produced * chunk, chunk);
            produced++;
        }
    }
    if (acc == 0x12345678u) *sink = acc;
}

// The megakernel's shape: every block streams `tasks` consecutive task slices of `task_bytes`
// (its own region of each "layer"), and between tasks all blocks meet at a grid-wide hand-off
// (an atomic counter polled with back-off, as events are). mode 0: the ring as in stream.cuh
// (chunks keep flowing across the hand-off); mode 1: direct 16-byte loads, 16 warps x 4 loads in
// flight per lane (the megakernel's default GEMV). pf: bytes of the next task asked of L2 at each
// task start (as mpk_prefetch_weights).
__device__ void handoff(unsigned long long *ctr, unsigned long long target) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(ctr, 1ull);
        unsigned ns = 32;
        while (*(volatile unsigned long long *)ctr < target) {
            __nanosleep(ns);
            if (ns < 256) ns <<= 1;
        }
    }
    __syncthreads();
}

__global__ void __launch_bounds__(512, 1) layered(const char *p, int tasks, int task_bytes, int mode, int pf,
                                                 unsigned long long *ctr, unsigned *sink) {
    extern __shared__ __align__(128) char smem[];
    __shared__ unsigned long long bar[4];
    const int slots = 4, chunk = 24576;
    const uint32_t per_task = (uint32_t)(task_bytes / chunk);
    auto src = [&](uint32_t n) {  // chunk n of this block's stream: task n / per_task, layer-major
        const uint32_t t = n / per_task, c = n % per_task;
        return p + ((size_t)t * gridDim.x + blockIdx.x) * (size_t)task_bytes + (size_t)c * chunk;
    };
    const uint32_t total = per_task * (uint32_t)tasks;
    uint32_t produced = 0;
    unsigned acc = 0;
    if (mode == 0 && threadIdx.x == 0) {
        ring_init(bar, slots);
        for (; produced < (uint32_t)slots && produced < total; produced++)
            ring_issue(smem, bar, slots, produced, src(produced), chunk);
    }
    __syncthreads();
    for (int t = 0; t < tasks; t++) {
        if (pf && t + 1 < tasks) {
            const char *next = p + ((size_t)(t + 1) * gridDim.x + blockIdx.x) * (size_t)task_bytes;
            for (int off = threadIdx.x * 128; off < pf && off < task_bytes; off += blockDim.x * 128)
                asm volatile("prefetch.global.L2 [%0];" ::"l"(next + off));
        }
        if (mode == 0) {
            for (uint32_t c = t * per_task; c < (t + 1) * per_task; c++) {
                ring_wait(bar, slots, c);
                const uint4 *s = (const uint4 *)(smem + (size_t)(c % slots) * chunk);
                for (int i = threadIdx.x; i < chunk / 16; i += blockDim.x) acc ^= s[i].x;
                __syncthreads();
                if (threadIdx.x == 0 && produced < total) {
                    ring_issue(smem, bar, slots, produced, src(produced), chunk);
                    produced++;
                }
            }
        } else {
            const uint4 *base = (const uint4 *)(p + ((size_t)t * gridDim.x + blockIdx.x) * (size_t)task_bytes);
            const int n16 = task_bytes / 16;
            for (int i = threadIdx.x; i < n16; i += 4 * blockDim.x) {
                uint4 v[4];
#pragma unroll
                for (int u = 0; u < 4; u++) v[u] = i + u * (int)blockDim.x < n16 ? __ldcs(base + i + u * blockDim.x) : make_uint4(0, 0, 0, 0);
#pragma unroll
                for (int u = 0; u < 4; u++) acc ^= v[u].x;
            }
        }
        handoff(ctr, (unsigned long long)gridDim.x * (t + 1));
    }
    if (acc == 0x12345678u) *sink = acc;
}

int main() {
    const size_t bytes = (size_t)1 << 30;
    char *buf;
    unsigned *sink;
    int sms;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    CK(cudaMalloc(&buf, bytes));
    CK(cudaMalloc(&sink, 4));
    CK(cudaMemset(buf, 1, bytes));
    CK(cudaFuncSetAttribute(ring, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    auto time = [&](auto launch) {
        float best = 1e9f;
        for (int r = 0; r < 5; r++) {
            cudaEventRecord(e0);
            launch();
            cudaEventRecord(e1);
            cudaEventSynchronize(e1);
            float ms;
            cudaEventElapsedTime(&ms, e0, e1);
            if (r > 0 && ms < best) best = ms;
        }
        return bytes / (best * 1e-3) / 1e9;
    };
    printf("plain 16-byte loads, %d blocks x 512: %.0f GB/s\n", sms,
           time([&] { plain_read<<<sms, 512>>>((const uint4 *)buf, bytes / 16, sink); }));
    const int cfg[][2] = {{2, 32768}, {4, 32768}, {6, 32768}, {4, 16384}, {8, 16384}, {12, 16384}, {4, 24576}, {6, 24576}, {16, 8192}};
    for (auto &c : cfg)
        for (int read = 0; read < 2; read++) {
            double gbs = time([&] { ring<<<sms, 512, (size_t)c[0] * c[1]>>>(buf, bytes, c[0], c[1], read, sink); });
            printf("ring %2d slots x %5d B, read %d: %.0f GB/s\n", c[0], c[1], read, gbs);
        }
    // Hand-offs between tasks, as in the megakernel: Qwen3-8B-like task slices (786 KB: a down
    // projection task) and Qwen3-0.6B-like ones (72 KB), ring vs direct loads, with and without
    // the L2 prefetch of the next task.
    unsigned long long *ctr;
    CK(cudaMalloc(&ctr, 8));
    CK(cudaFuncSetAttribute(layered, cudaFuncAttributeMaxDynamicSharedMemorySize, 4 * 24576));
    const int tb[] = {786432, 73728};
    for (int b : tb)
        for (int mode = 0; mode < 2; mode++)
            for (int pf : {0, 49152, 196608}) {
                const int tasks = (int)(bytes / ((size_t)b * sms));
                double gbs = time([&] {
                    cudaMemset(ctr, 0, 8);
                    layered<<<sms, 512, 4 * 24576>>>(buf, tasks, b, mode, pf, ctr, sink);
                });
                gbs = gbs * ((double)tasks * b * sms) / (double)bytes;  // bytes actually read
                printf("layered %6d B tasks, %s, L2 prefetch %6d B: %.0f GB/s, %.2f us per task\n", b,
                       mode ? "direct loads" : "ring        ", pf, gbs, (double)b * sms / (gbs * 1e3));
            }
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    return 0;
}
