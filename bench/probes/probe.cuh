// probe.cuh — what the probes in bench/probes share: the checked-call macro and the plain
// streaming read every probe measures itself against (16-byte loads, eight in flight per thread).
#ifndef MPK_BENCH_PROBE_CUH
#define MPK_BENCH_PROBE_CUH

#include <cstdint>
#include <cstdio>
#include <cuda_runtime.h>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e)); return 1; } } while (0)

// Reads p[0, n) once (uint4 words); the sum is stored only if it is impossible, so the loads stay.
__global__ void plain_read(const uint4 *p, size_t n, unsigned *sink) {
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

#endif  // MPK_BENCH_PROBE_CUH
