// common.cuh — helpers every CUDA task kernel uses: bf16 as raw 16-bit words rounded exactly like
// the CPU oracle (kernels.h), 16-byte loads, warp and block reductions. Task kernels are
// __device__ functions run by the MPK_DEV_THREADS task threads of a worker block.
#ifndef MPK_KERNELS_CUDA_COMMON_CUH
#define MPK_KERNELS_CUDA_COMMON_CUH

#include <stdint.h>

#include "../../runtime/cuda/abi.cuh"  // MPK_DEV_THREADS

typedef uint16_t mpk_bf16;

#define MPK_DEV __device__ __forceinline__

// The barrier of a task: the block's MPK_DEV_THREADS task threads (named barrier 1). A block
// that streams weights has one more warp, the producer (stream.cuh), which never joins it.
MPK_DEV void mpk_sync() { asm volatile("bar.sync 1, %0;" ::"n"(MPK_DEV_THREADS) : "memory"); }

MPK_DEV float mpk_bf2f(mpk_bf16 h) { return __uint_as_float((uint32_t)h << 16); }

// Round to nearest even; NaN stays NaN (the same bits as mpk_f32_to_bf16 on the host).
MPK_DEV mpk_bf16 mpk_f2bf(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (mpk_bf16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (mpk_bf16)(u >> 16);
}

MPK_DEV float mpk_round_bf(float f) { return mpk_bf2f(mpk_f2bf(f)); }

// Eight bf16 of a 16-byte word as floats.
MPK_DEV void mpk_unpack8(const uint4 v, float f[8]) {
    f[0] = __uint_as_float(v.x << 16); f[1] = __uint_as_float(v.x & 0xffff0000u);
    f[2] = __uint_as_float(v.y << 16); f[3] = __uint_as_float(v.y & 0xffff0000u);
    f[4] = __uint_as_float(v.z << 16); f[5] = __uint_as_float(v.z & 0xffff0000u);
    f[6] = __uint_as_float(v.w << 16); f[7] = __uint_as_float(v.w & 0xffff0000u);
}

MPK_DEV uint32_t mpk_pack2(float a, float b) {
    return (uint32_t)mpk_f2bf(a) | ((uint32_t)mpk_f2bf(b) << 16);
}

// A 16-byte load of data that other blocks write during the launch (activations, KV cache):
// an ordinary coherent load, ordered by the acquire on the task's event.
MPK_DEV uint4 mpk_ld16(const void *p) { return *(const uint4 *)p; }

// A 16-byte load of data that no one writes during the launch (weights): the read-only path,
// not kept in L1 since each weight is read once per iteration.
MPK_DEV uint4 mpk_ld16_ro(const void *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

MPK_DEV bool mpk_aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

MPK_DEV float mpk_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

MPK_DEV float mpk_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block; every thread gets the result. `scratch` holds 32 floats of shared memory
// and is free again when the function returns. The order is fixed, so results are repeatable.
MPK_DEV float mpk_block_sum(float v, float *scratch) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = MPK_DEV_THREADS / 32;
    v = mpk_warp_sum(v);
    mpk_sync();  // scratch may still be read by a previous reduction
    if (lane == 0) scratch[warp] = v;
    mpk_sync();
    float s = 0.0f;
    for (int i = 0; i < nwarps; i++) s += scratch[i];
    return s;
}

// (value, index) pairs for argmax: larger value wins, then the lower index. NaN never wins: it
// enters as (-inf, INT32_MAX), below every real candidate.
struct mpk_argmax_pair {
    float val;
    int32_t idx;
};

MPK_DEV bool mpk_argmax_better(float v, int32_t i, float bv, int32_t bi) {
    return v > bv || (v == bv && i < bi);
}

MPK_DEV mpk_argmax_pair mpk_warp_argmax(mpk_argmax_pair p) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float v = __shfl_xor_sync(0xffffffffu, p.val, o);
        int32_t i = __shfl_xor_sync(0xffffffffu, p.idx, o);
        if (mpk_argmax_better(v, i, p.val, p.idx)) { p.val = v; p.idx = i; }
    }
    return p;
}

// Block-wide argmax; every thread gets the result. `scratch` holds 32 pairs of shared memory.
MPK_DEV mpk_argmax_pair mpk_block_argmax(mpk_argmax_pair p, mpk_argmax_pair *scratch) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = MPK_DEV_THREADS / 32;
    p = mpk_warp_argmax(p);
    mpk_sync();
    if (lane == 0) scratch[warp] = p;
    mpk_sync();
    mpk_argmax_pair best = scratch[0];
    for (int i = 1; i < nwarps; i++)
        if (mpk_argmax_better(scratch[i].val, scratch[i].idx, best.val, best.idx)) best = scratch[i];
    return best;
}

// Shared scratch every task may use (reductions, per-row scales, per-warp vectors); tasks run
// one at a time per block, so they share it.
#define MPK_SCRATCH_FLOATS 4096
struct mpk_task_smem {
    float f[MPK_SCRATCH_FLOATS];
    float red[32];
    mpk_argmax_pair pairs[32];
    // Attention's keys and values copied to shared memory before its event (attention.cuh):
    const void *pre_k;      // the k cache they come from (null: none)
    long long pre_off;      // cache offset of the decode row's position
    int32_t pre_pos;        // the decode row's position; [0, pre_pos) are being copied
    int32_t pre_bad;        // a position was not mapped: do not use them
    long long inputs_mark;  // profiling: %globaltimer when the running task's inputs were on chip
    int32_t marking;        // profiling: tasks mark their phases
    int32_t split_last;     // attention split: this task was the last of its head to arrive
};

MPK_DEV mpk_task_smem *mpk_smem() {
    __shared__ mpk_task_smem s;
    return &s;
}

// A task body calls this (all threads, after a barrier) once its inputs are on chip, so that a
// profile tells the time to get the inputs from the time of the work (mpk_profile_record).
MPK_DEV void mpk_mark_inputs() {
    mpk_task_smem *s = mpk_smem();
    if (threadIdx.x == 0 && s->marking) {
        long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        s->inputs_mark = t;
    }
}

// Dynamic shared memory every task may use whole (staged GEMV inputs, attention partials).
// The launch asks for this plus the weight stream's ring (MPK_STREAM_RING_BYTES, stream.cuh),
// which sits after it and which task bodies only read through stream.cuh.
#ifndef MPK_DYN_SMEM_BYTES
#define MPK_DYN_SMEM_BYTES (128 * 1024)
#endif
// The prompt kernel's wide tiles of rows x columns (gemm.cuh): 1 = their weights through a
// cp.async ring in shared memory (mpk_gemm_wide), 0 = loaded into registers (mpk_gemm_rows).
#ifndef MPK_GEMM_RING
#define MPK_GEMM_RING 1
#endif
// The prompt kernel's blocks get this much more for that ring; 80 KB keeps a block within the
// SM's 227 KB with the ~17 KB of static shared memory.
#ifndef MPK_PROMPT_SMEM_EXTRA
#define MPK_PROMPT_SMEM_EXTRA (MPK_GEMM_RING ? 80 * 1024 : 0)
#endif
MPK_DEV uint4 *mpk_dyn_smem() {
    extern __shared__ uint4 mpk_dyn_smem_area[];
    return mpk_dyn_smem_area;
}

#endif  // MPK_KERNELS_CUDA_COMMON_CUH
