// bulk_ring.cu — probe: can one block per SM stream weights at the card's read bandwidth through a
// ring of shared-memory slots filled by cp.async.bulk (the megakernel's weight stream), and what
// does each ingredient cost? Build and run on the GPU machine:
//   nvcc -O3 -gencode=arch=compute_90a,code=sm_90a -o build/bulk_ring bench/probes/bulk_ring.cu && build/bulk_ring
// Prints GB/s for: plain 16-byte loads (8 in flight per thread), and the ring with several slot
// counts and sizes, with and without the block reading each slot before releasing it.
#include <cstdio>
#include <cstdint>
#include <cuda_runtime.h>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)

__global__ void __launch_bounds__(512, 1) plain(const uint4 *p, size_t n, unsigned *sink) {
    unsigned acc = 0;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i + 7 * stride < n; i += 8 * stride) {
        uint4 v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) v[u] = __ldcs(p + i + u * stride);
#pragma unroll
        for (int u = 0; u < 8; u++) acc ^= v[u].x ^ v[u].w;
    }
    if (acc == 0x12345678u) *sink = acc;
}

__device__ __forceinline__ uint32_t sa(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

// Each block streams its own contiguous share of the buffer in chunks of `chunk` bytes through
// `slots` slots. read: the block sums each slot (16-byte loads) before the barrier that frees it.
__global__ void __launch_bounds__(512, 1) ring(const char *p, size_t bytes, int slots, int chunk, int read,
                                              unsigned *sink) {
    extern __shared__ __align__(128) char smem[];
    __shared__ unsigned long long bar[16];
    const size_t share = bytes / gridDim.x / chunk * chunk;
    const char *base = p + share * blockIdx.x;
    const uint32_t nchunks = (uint32_t)(share / chunk);
    if (threadIdx.x == 0) {
        for (int i = 0; i < slots; i++) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(sa(&bar[i])));
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    uint32_t produced = 0;
    unsigned acc = 0;
    if (threadIdx.x == 0)
        for (; produced < (uint32_t)slots && produced < nchunks; produced++) {
            uint32_t b = sa(&bar[produced % slots]);
            asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(b), "r"(chunk) : "memory");
            asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                         ::"r"(sa(smem + (size_t)(produced % slots) * chunk)), "l"(base + (size_t)produced * chunk), "r"(chunk), "r"(b) : "memory");
        }
    for (uint32_t c = 0; c < nchunks; c++) {
        uint32_t b = sa(&bar[c % slots]), par = (c / slots) & 1u, done = 0;
        while (!done)
            asm volatile("{\n .reg .pred q;\n mbarrier.try_wait.parity.shared::cta.b64 q, [%1], %2;\n selp.u32 %0, 1, 0, q;\n}\n"
                         : "=r"(done) : "r"(b), "r"(par) : "memory");
        if (read) {
            const uint4 *s = (const uint4 *)(smem + (size_t)(c % slots) * chunk);
            for (int i = threadIdx.x; i < chunk / 16; i += blockDim.x) acc ^= s[i].x;
        }
        __syncthreads();
        if (threadIdx.x == 0 && produced < nchunks) {
            uint32_t b2 = sa(&bar[produced % slots]);
            asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(b2), "r"(chunk) : "memory");
            asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                         ::"r"(sa(smem + (size_t)(produced % slots) * chunk)), "l"(base + (size_t)produced * chunk), "r"(chunk), "r"(b2) : "memory");
            produced++;
        }
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
           time([&] { plain<<<sms, 512>>>((const uint4 *)buf, bytes / 16, sink); }));
    const int cfg[][2] = {{2, 32768}, {4, 32768}, {6, 32768}, {4, 16384}, {8, 16384}, {12, 16384}, {4, 24576}, {6, 24576}, {16, 8192}};
    for (auto &c : cfg)
        for (int read = 0; read < 2; read++) {
            double gbs = time([&] { ring<<<sms, 512, (size_t)c[0] * c[1]>>>(buf, bytes, c[0], c[1], read, sink); });
            printf("ring %2d slots x %5d B, read %d: %.0f GB/s\n", c[0], c[1], read, gbs);
        }
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    return 0;
}
