// wgmma.cu — probe: the prompt kernel's wide tile product (64 rows x 1536 columns x K = 4096 per
// block, Qwen3-8B's gate/up at 512 rows: 128 blocks, 8 row shares x 16 column groups) on Hopper's
// wgmma, to check the shared-memory layout and descriptors before the megakernel takes them, and to
// measure the rate they reach. bench/NOTES.md v17 measured the megakernel's mma.sync path on this
// shape: 831 us per layer, of which ~573 us of product loops bound by the fragments' shared-memory
// reads.
//
// Each of a block's three warpgroups takes 128 columns per pass (m64n128k16, 64 fp32 sums per
// thread), four passes. Per k-block of 64 elements a warpgroup copies the 64 x 64 rows of A and its
// 128 x 64 weights with cp.async into one of STAGES ring stages, in the layout wgmma reads with the
// 128-byte swizzle (rows of 128 bytes, 16-byte chunk c of row r at chunk c ^ (r % 8), 1024-byte
// aligned 8-row groups: descriptor stride 1024 bytes), then: its own copies waited for, a proxy
// fence (cp.async writes are generic-proxy writes, wgmma reads through the async proxy), a
// warpgroup barrier, four wgmma k16 steps (the descriptor's start advanced 32 bytes each), commit,
// and a wait for the previous k-block's group before its stage is refilled. Warpgroups never wait
// for each other (each copies its own A; A is re-read from L2 by 3 warpgroups x 4 passes).
//
// Build and run on the GPU machine:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o build/wgmma bench/probes/wgmma.cu
//   build/wgmma
// Prints the largest error of 4096 sampled outputs against a double-precision product of the same
// bf16 inputs (a layout or descriptor mistake shows as errors of the outputs' own size), the time
// per launch and TFLOP/s. (Written in v17 without a GPU at hand: its first run checks it.)
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "probe.cuh"

enum { ROWS = 512, N = 24576, K = 4096, SHARES = 8, BLOCKS = 128, COLS = N / (BLOCKS / SHARES) };  // COLS 1536
enum { WG = 3, THREADS = WG * 128, WG_COLS = 128, STAGES = 3, KB = 64 };
enum { A_BYTES = 64 * KB * 2, B_BYTES = WG_COLS * KB * 2, STAGE_BYTES = A_BYTES + B_BYTES };  // 8 + 16 KB
enum { SMEM = WG * STAGES * STAGE_BYTES + 1024 };  // (+ alignment to 1024 bytes)

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

// The descriptor of a K-major tile in the 128-byte swizzle: start address, leading byte offset
// (unused by this layout: 1), stride byte offset 1024 (between 8-row groups), swizzle mode 1.
__device__ __forceinline__ uint64_t desc128(uint32_t addr) {
    return (uint64_t)((addr >> 4) & 0x3FFF) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}

// d += A B for one k16 step: m64n128k16, bf16 operands from shared memory (descriptors), fp32 sums in
// d (64 per thread); scale_d 0 overwrites d instead of adding.
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(da), "l"(db), "r"(scale_d));
}

// Rows [0, rows) of a K-major matrix (row length K), k-block kb, into a 128-byte-swizzled tile at
// dst by the warpgroup's 128 threads (thread t takes chunks t, t + 128, ...).
__device__ __forceinline__ void copy_tile(char *dst, const __nv_bfloat16 *src, int rows, int kb, int t) {
    for (int i = t; i < rows * 8; i += 128) {
        const int r = i / 8, c = i % 8;
        const __nv_bfloat16 *g = src + (size_t)r * K + kb * KB + c * 8;
        const uint32_t s = smem_u32(dst + r * 128 + ((c ^ (r % 8)) * 16));
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(g) : "memory");
    }
}

__global__ void __launch_bounds__(THREADS, 1) wide_tiles(const __nv_bfloat16 *x, const __nv_bfloat16 *w, float *out) {
    extern __shared__ char smem_raw[];
    char *smem = (char *)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023);
    const int wg = threadIdx.x / 128, t = threadIdx.x % 128, warp = t / 32, lane = t % 32;
    const int share = blockIdx.x % SHARES, group = blockIdx.x / SHARES;
    const __nv_bfloat16 *xa = x + (size_t)share * 64 * K;
    char *ring = smem + wg * STAGES * STAGE_BYTES;
    const int kbs = K / KB;
    for (int pass = 0; pass < COLS / (WG * WG_COLS); pass++) {
        const int c0 = group * COLS + (pass * WG + wg) * WG_COLS;
        const __nv_bfloat16 *wb = w + (size_t)c0 * K;
        float d[64];
#pragma unroll
        for (int i = 0; i < 64; i++) d[i] = 0.0f;
        for (int kb = 0; kb < STAGES - 1; kb++) {
            copy_tile(ring + kb * STAGE_BYTES, xa, 64, kb, t);
            copy_tile(ring + kb * STAGE_BYTES + A_BYTES, wb, WG_COLS, kb, t);
            asm volatile("cp.async.commit_group;" ::: "memory");
        }
        for (int kb = 0; kb < kbs; kb++) {
            char *st = ring + (kb % STAGES) * STAGE_BYTES;
            asm volatile("cp.async.wait_group %0;" ::"n"(STAGES - 2) : "memory");
            asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
            asm volatile("bar.sync %0, 128;" ::"r"(1 + wg) : "memory");
            asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
            for (int k = 0; k < KB / 16; k++)
                wgmma_m64n128k16(d, desc128(smem_u32(st) + k * 32), desc128(smem_u32(st + A_BYTES) + k * 32), 1);
            asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
            asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");  // k-block kb - 1 is done
            const int nk = kb + STAGES - 1;  // into the stage of k-block kb - 1
            if (nk < kbs) {
                char *ns = ring + (nk % STAGES) * STAGE_BYTES;
                copy_tile(ns, xa, 64, nk, t);
                copy_tile(ns + A_BYTES, wb, WG_COLS, nk, t);
            }
            asm volatile("cp.async.commit_group;" ::: "memory");
        }
        asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
        asm volatile("cp.async.wait_all;" ::: "memory");
        asm volatile("bar.sync %0, 128;" ::"r"(1 + wg) : "memory");  // (the next pass refills the ring)
        // D's layout: thread (warp, lane) holds rows 16 warp + lane / 4 (+ 8), columns 8 i + 2 (lane % 4) (+ 1).
        const int row = share * 64 + warp * 16 + lane / 4;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const int col = c0 + 8 * i + 2 * (lane % 4);
            out[(size_t)row * N + col] = d[4 * i];
            out[(size_t)row * N + col + 1] = d[4 * i + 1];
            out[(size_t)(row + 8) * N + col] = d[4 * i + 2];
            out[(size_t)(row + 8) * N + col + 1] = d[4 * i + 3];
        }
    }
}

int main() {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s\n", prop.name);
    std::vector<__nv_bfloat16> hx((size_t)ROWS * K), hw((size_t)N * K);
    uint32_t s = 12345u;
    auto rnd = [&]() { s = s * 1664525u + 1013904223u; return ((s >> 8) & 0xFFFF) / 32768.0f - 1.0f; };
    for (auto &v : hx) v = __float2bfloat16(rnd());
    for (auto &v : hw) v = __float2bfloat16(rnd() * 0.05f);
    __nv_bfloat16 *x, *w;
    float *out;
    CK(cudaMalloc(&x, hx.size() * 2));
    CK(cudaMalloc(&w, hw.size() * 2));
    CK(cudaMalloc(&out, (size_t)ROWS * N * 4));
    CK(cudaMemcpy(x, hx.data(), hx.size() * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(w, hw.data(), hw.size() * 2, cudaMemcpyHostToDevice));
    CK(cudaMemset(out, 0xFF, (size_t)ROWS * N * 4));  // (NaN: an output never written shows)
    CK(cudaFuncSetAttribute(wide_tiles, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM));
    wide_tiles<<<BLOCKS, THREADS, SMEM>>>(x, w, out);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<float> ho((size_t)ROWS * N);
    CK(cudaMemcpy(ho.data(), out, ho.size() * 4, cudaMemcpyDeviceToHost));
    double worst = 0.0, scale = 0.0;
    for (int i = 0; i < 4096; i++) {
        const int r = (int)((rnd() + 1.0f) * 0.5f * ROWS) % ROWS, c = (int)((rnd() + 1.0f) * 0.5f * N) % N;
        double ref = 0.0, mag = 0.0;
        for (int k = 0; k < K; k++) {
            const double p = (double)__bfloat162float(hx[(size_t)r * K + k]) * (double)__bfloat162float(hw[(size_t)c * K + k]);
            ref += p;
            mag += fabs(p);
        }
        const double e = fabs((double)ho[(size_t)r * N + c] - ref);
        if (!(e <= worst)) worst = e;  // (NaN too)
        scale = fmax(scale, mag);
    }
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    const int reps = 20;
    CK(cudaEventRecord(e0));
    for (int i = 0; i < reps; i++) wide_tiles<<<BLOCKS, THREADS, SMEM>>>(x, w, out);
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms = 0.0f;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    const double us = 1e3 * ms / reps, flop = 2.0 * ROWS * (double)N * K;
    printf("| shape (rows x N x K) | largest error / largest sum of |products| | us per launch | TFLOP/s |\n");
    printf("| --- | ---: | ---: | ---: |\n");
    printf("| %d x %d x %d | %.2e | %.1f | %.1f |\n", ROWS, N, K, worst / scale, us, flop / us * 1e-6);
    printf("%s\n", worst / scale < 1e-3 ? "check: ok" : "check: WRONG (layout or descriptors)");
    return worst / scale < 1e-3 ? 0 : 1;
}
