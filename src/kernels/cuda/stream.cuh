// stream.cuh — the weight stream of a worker block. Weights never depend on activations, so in
// the static schedule (each worker's task list known at compile time) a producer warp keeps the
// block's next tasks' weights flowing into a ring of shared-memory slots with bulk asynchronous
// copies (cp.async.bulk), across task boundaries and event waits, while the block's task threads
// run the current task or wait for the next task's event. A GEMV then finds its weights on chip,
// or landing, when its inputs become ready.
//
// The stream is the worker's plan (mpk_dev_stream_entry: its tasks that have stream chunks, in
// list order), repeated every iteration: task t contributes tasks[t].stream_chunks chunks (set by
// the host, src/runtime/cuda/backend.c), chunk c being bytes [c * stream_chunk_bytes, ...) of its
// weights (whole weight rows), one slot each. Chunk n of the stream goes to slot n % SLOTS; the
// slot's `full` mbarrier completes phase n / SLOTS when the chunk has landed, its `empty`
// mbarrier when every task warp has read it (one arrival per warp, no block barrier per chunk).
//
// The producer is one lane of the block's last warp (warp MPK_DEV_THREADS / 32, outside the task
// threads' barrier mpk_sync). It issues chunk n once slot n % SLOTS is empty and chunk
// n - MPK_STREAM_INFLIGHT has landed: the ring holds up to SLOTS chunks ahead, but only
// MPK_STREAM_INFLIGHT travel at a time, because every byte in flight queues ahead of the block's
// latency-bound loads (input rows, event polls) and delays the release fence of each publish.
// Measured in the probe bench/probes/runahead.cu (H100, bench/NOTES.md v11): 6 slots of 32 KB,
// all in flight: 0.6B-shaped chain 980 us/token against 930 with one in flight (direct loads
// 1037); smaller chunks lose (8 KB: 1190).
//
// Every task consumes exactly its own chunks, in order: a body that does not use them (no rows
// this iteration, a prefill too large for the streamed product) leaves them to the runtime, whose
// task warps pass them (wait, release) after the task (mpk_stream_pass).
#ifndef MPK_KERNELS_CUDA_STREAM_CUH
#define MPK_KERNELS_CUDA_STREAM_CUH

#include "../../runtime/cuda/abi.cuh"
#include "../task.h"
#include "common.cuh"

// Off by default (0 slots: no ring, no producer warp, the block is MPK_DEV_THREADS threads).
// Measured in the megakernel (H100, bench/NOTES.md v11, same call): Qwen3-0.6B 1.180 against
// 1.037 ms/token, 1.7B 2.191 against 1.801. No stage got faster (1.7B qkv 9.8 against 9.1 us:
// the weights do not arrive ahead of the hand-off as they did in the probe, whose direct loads
// were slower than the megakernel's GEMV), every publish waits ~1.2 us longer (its release fence
// waits for the chunk in flight), attention slows from 7 to 12.5 us per task (cause not found;
// holding the producer during it did not help), and the producer warp costs a task warp (the register file holds 12 warps of 168
// registers; 13 warps get 128 and spill), which alone costs the down projection 4 us per layer.
// The results are correct (end-to-end checks pass with it on). To build it:
// MPK_NVCC_FLAGS="-DMPK_STREAM_SLOTS=4 -DMPK_DYN_SMEM_BYTES=65536 -DMPK_DEV_THREADS=352", and run
// with MPK_CUDA_STREAM=1 (the host then plans the chunks; without a ring the plan is ignored).
#ifndef MPK_STREAM_SLOTS
#define MPK_STREAM_SLOTS 0
#endif
#ifndef MPK_STREAM_INFLIGHT
#define MPK_STREAM_INFLIGHT 1
#endif

#define MPK_STREAM_NSLOTS (MPK_STREAM_SLOTS > 0 ? MPK_STREAM_SLOTS : 1)  // for arrays and modulo
#define MPK_STREAM_SLOT_BYTES MPK_DEV_STREAM_SLOT_BYTES
#define MPK_STREAM_RING_BYTES (MPK_STREAM_SLOTS * MPK_STREAM_SLOT_BYTES)
// Threads of a worker block: the task threads, and the producer warp when there is a ring.
#define MPK_BLOCK_THREADS (MPK_DEV_THREADS + (MPK_STREAM_SLOTS > 0 ? 32 : 0))

struct mpk_stream {
    unsigned long long full[MPK_STREAM_NSLOTS];   // mbarriers: the slot's chunk has landed
    unsigned long long empty[MPK_STREAM_NSLOTS];  // mbarriers: every task warp has read it
    int32_t active;        // the producer streams this worker's plan (static mode)
    int32_t stop;          // set when the task threads leave: the producer stops and drains
    uint32_t consumed;     // chunks of the tasks run so far (thread 0)
    uint32_t task_first;   // the running task's first chunk (set by thread 0 before its body)
    int32_t used;          // the running task's body consumed its chunks
    const mpk_task_desc *desc;  // the running task's descriptor (the block's shared copy)
};

MPK_DEV mpk_stream *mpk_stream_state() {
    __shared__ mpk_stream s;
    return &s;
}

MPK_DEV uint32_t mpk_smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

// Slot of stream chunk n.
MPK_DEV const mpk_bf16 *mpk_stream_slot(uint32_t n) {
    return (const mpk_bf16 *)((const char *)mpk_dyn_smem() + MPK_DYN_SMEM_BYTES +
                              (size_t)(n % MPK_STREAM_NSLOTS) * MPK_STREAM_SLOT_BYTES);
}

// Chunks of the running task (0 without a stream; a constant 0 when built without a ring, so
// the runtime's stream bookkeeping compiles away).
MPK_DEV uint32_t mpk_stream_task_chunks(const mpk_stream *s) {
    if (MPK_STREAM_SLOTS == 0) return 0u;
    return s->active ? s->desc->stream_chunks : 0u;
}

// Thread 0, before a task's body: its chunks are the stream's next ones (nothing without a ring).
MPK_DEV void mpk_stream_begin_task(mpk_stream *s) {
    if (MPK_STREAM_SLOTS == 0) return;
    s->task_first = s->consumed;
    s->used = 0;
}

MPK_DEV bool mpk_mbar_test(uint32_t bar, uint32_t parity) {
    uint32_t done;
    asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                 " selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    return done != 0;
}

// Task warps (all lanes): chunk n has landed; returns its slot.
MPK_DEV const mpk_bf16 *mpk_stream_acquire(mpk_stream *s, uint32_t n) {
    const uint32_t bar = mpk_smem_addr(&s->full[n % MPK_STREAM_NSLOTS]), parity = (n / MPK_STREAM_NSLOTS) & 1u;
    while (!mpk_mbar_test(bar, parity)) {
    }
    return mpk_stream_slot(n);
}

// Task warps (all lanes), once the warp has read chunk n: its share of the slot's release.
MPK_DEV void mpk_stream_release(mpk_stream *s, uint32_t n) {
    __syncwarp();
    if (threadIdx.x % 32 == 0)
        asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(mpk_smem_addr(&s->empty[n % MPK_STREAM_NSLOTS]))
                     : "memory");
}

// Task warps: chunks [first, first + count) pass unread.
MPK_DEV void mpk_stream_pass(mpk_stream *s, uint32_t first, uint32_t count) {
    for (uint32_t c = 0; c < count; c++) {
        mpk_stream_acquire(s, first + c);
        mpk_stream_release(s, first + c);
    }
}

// The producer: waits for a phase, or returns false once the task threads have left.
MPK_DEV bool mpk_stream_wait_or_stop(const mpk_stream *s, uint32_t bar, uint32_t parity) {
    for (uint32_t spins = 0;; spins++) {
        if (mpk_mbar_test(bar, parity)) return true;
        if ((spins & 15u) == 15u && *(const volatile int32_t *)&s->stop) return false;
    }
}

// Thread 0 of a static worker, before the block's first barrier: the stream over plan[p0, p1)
// begins (the producer starts after that barrier).
MPK_DEV void mpk_stream_init(mpk_stream *s, const mpk_task_desc *desc, bool on) {
    s->active = MPK_STREAM_SLOTS > 0 && on;
    s->stop = 0;
    s->consumed = s->task_first = 0;
    s->used = 0;
    s->desc = desc;
    if (!s->active) return;
    for (int i = 0; i < MPK_STREAM_SLOTS; i++) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(mpk_smem_addr(&s->full[i])) : "memory");
        asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(mpk_smem_addr(&s->empty[i])),
                     "r"(MPK_DEV_THREADS / 32) : "memory");
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// The producer lane: the worker's plan, entry after entry, iteration after iteration, until the
// task threads leave; then it waits for its copies in flight, so that none outlives the block.
MPK_DEV void mpk_stream_produce(mpk_stream *s, const mpk_dev_stream_entry *plan, int32_t p0, int32_t p1) {
    if (MPK_STREAM_SLOTS == 0 || !s->active || p1 <= p0) return;
    uint32_t n = 0;  // chunks issued
    mpk_dev_stream_entry next = plan[p0];
    for (int32_t e = p0; !*(const volatile int32_t *)&s->stop; e = e + 1 < p1 ? e + 1 : p0) {
        const mpk_dev_stream_entry en = next;
        next = plan[e + 1 < p1 ? e + 1 : p0];  // (loaded while this entry streams)
        const char *src = (const char *)(uintptr_t)en.src;
        for (uint32_t off = 0; off < en.bytes; off += en.chunk_bytes, n++) {
            const uint32_t bytes = min(en.chunk_bytes, en.bytes - off), slot = n % MPK_STREAM_NSLOTS;
            const uint32_t full = mpk_smem_addr(&s->full[slot]);
            if (n >= (uint32_t)MPK_STREAM_NSLOTS &&
                !mpk_stream_wait_or_stop(s, mpk_smem_addr(&s->empty[slot]), (n / MPK_STREAM_NSLOTS - 1u) & 1u))
                goto drain;
            if (n >= (uint32_t)MPK_STREAM_INFLIGHT) {
                const uint32_t m = n - MPK_STREAM_INFLIGHT;
                if (!mpk_stream_wait_or_stop(s, mpk_smem_addr(&s->full[m % MPK_STREAM_NSLOTS]), (m / MPK_STREAM_NSLOTS) & 1u))
                    goto drain;
            }
            asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(full), "r"(bytes) : "memory");
            asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                         ::"r"(mpk_smem_addr(mpk_stream_slot(n))), "l"(src + off), "r"(bytes), "r"(full) : "memory");
        }
    }
drain:
    // The last chunks issued (at most SLOTS: earlier slots were waited empty, so landed) land.
    for (uint32_t m = n > (uint32_t)MPK_STREAM_NSLOTS ? n - MPK_STREAM_NSLOTS : 0u; m < n; m++) {
        const uint32_t bar = mpk_smem_addr(&s->full[m % MPK_STREAM_NSLOTS]), parity = (m / MPK_STREAM_NSLOTS) & 1u;
        while (!mpk_mbar_test(bar, parity)) {
        }
    }
}

#endif  // MPK_KERNELS_CUDA_STREAM_CUH
