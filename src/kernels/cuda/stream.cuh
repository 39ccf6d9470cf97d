// stream.cuh — the weight stream of a worker block. Weights never depend on activations, so in
// the static schedule (each worker's task list known at compile time) a block keeps its next
// tasks' weights flowing into a ring of shared-memory slots with bulk asynchronous copies
// (cp.async.bulk, completion counted on one mbarrier per slot) while it runs the current task or
// waits for the next task's event. A GEMV task then finds its first chunks already on chip when
// its inputs become ready, and the memory system never idles across hand-offs.
//
// The stream is the worker's plan (mpk_dev_stream_entry: its tasks that have stream chunks, in
// list order), repeated every iteration: task t contributes tasks[t].stream_chunks chunks (set by
// the host, src/runtime/cuda/backend.c), chunk c being bytes [c * stream_chunk_bytes, ...) of its
// weights, at most one slot. Chunk n of the stream goes to slot n % MPK_STREAM_NSLOTS, whose
// mbarrier completes phase n / SLOTS. Thread 0 is the producer: it issues a chunk as soon as its
// slot is released, so up to SLOTS chunks are in flight or waiting, and it fetches the plan entry
// after the current one with an asynchronous copy, so crossing into the next task never waits on
// memory. Every task consumes exactly its own chunks, in order: a body that does not use them (no
// rows this iteration, a prefill too large to stage) is drained by the runtime after it.
#ifndef MPK_KERNELS_CUDA_STREAM_CUH
#define MPK_KERNELS_CUDA_STREAM_CUH

#include "../../runtime/cuda/abi.cuh"
#include "../task.h"
#include "common.cuh"

// Off by default (0 slots, no ring): measured on the H100 (bench/NOTES.md, v6), the stream as it
// stands is slower than each task reading its own weights (Qwen3-8B 9.0 against 7.2 ms/token),
// although a plain ring of the same shape streams at 3.05 TB/s (bench/probes/bulk_ring.cu), and
// its shared memory takes the L1 space that the direct loads need in flight. To try it: build
// with MPK_NVCC_FLAGS="-DMPK_STREAM_SLOTS=4 -DMPK_DYN_SMEM_BYTES=81920" and run with
// MPK_CUDA_STREAM=1 (the host then plans the chunks; without a ring the plan is ignored).
#ifndef MPK_STREAM_SLOTS
#define MPK_STREAM_SLOTS 0
#endif
#define MPK_STREAM_NSLOTS (MPK_STREAM_SLOTS > 0 ? MPK_STREAM_SLOTS : 1)  // for arrays and modulo
#define MPK_STREAM_SLOT_BYTES MPK_DEV_STREAM_SLOT_BYTES
#define MPK_STREAM_RING_BYTES (MPK_STREAM_SLOTS * MPK_STREAM_SLOT_BYTES)

struct mpk_stream {
    unsigned long long full[MPK_STREAM_NSLOTS];  // mbarriers: the slot's chunk has arrived
    alignas(16) mpk_dev_stream_entry next;      // the plan entry after the current one (landing)
    uint32_t produced;    // chunks issued since the launch (thread 0)
    uint32_t consumed;    // chunks released
    int32_t active;       // 0: no stream (dynamic modes, or the worker has nothing to stream)
    // The producer's cursor: plan entry e of [p0, p1), its next chunk and layout.
    const mpk_dev_stream_entry *plan;
    int32_t p0, p1, e;
    uint32_t chunk, chunks, chunk_bytes, total_bytes;
    const char *src;
    const mpk_task_desc *desc;  // the running task's descriptor (the block's shared copy)
    uint32_t task_first;        // its first chunk (set by the runtime before the body runs)
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

// Thread 0, before a task's body: its chunks are the next ones of the stream.
MPK_DEV void mpk_stream_begin_task(mpk_stream *s) {
    if (MPK_STREAM_SLOTS > 0) s->task_first = s->consumed;
}

// Waits until chunk n has arrived (any number of threads may wait).
MPK_DEV void mpk_stream_wait(const mpk_stream *s, uint32_t n) {
    const uint32_t bar = mpk_smem_addr(&s->full[n % MPK_STREAM_NSLOTS]);
    const uint32_t parity = (n / MPK_STREAM_NSLOTS) & 1u;
    uint32_t done = 0;
    while (!done)
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
}

// Thread 0: the current entry becomes what `next` holds, and the entry after it starts landing.
MPK_DEV void mpk_stream_take_next(mpk_stream *s) {
    asm volatile("cp.async.wait_all;" ::: "memory");
    s->src = (const char *)s->next.src;
    s->total_bytes = s->next.bytes;
    s->chunk_bytes = s->next.chunk_bytes;
    s->chunks = (s->total_bytes + s->chunk_bytes - 1) / s->chunk_bytes;
    s->chunk = 0;
    const int32_t after = s->e + 1 < s->p1 ? s->e + 1 : s->p0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16;" ::"r"(mpk_smem_addr(&s->next)), "l"(s->plan + after)
                 : "memory");
}

// Producer (thread 0): issue chunks until the ring is full.
MPK_DEV void mpk_stream_fill(mpk_stream *s) {
    while (s->active && s->produced - s->consumed < MPK_STREAM_SLOTS) {
        if (s->chunk >= s->chunks) {  // on to the next entry (wrapping: the next iteration)
            s->e = s->e + 1 < s->p1 ? s->e + 1 : s->p0;
            mpk_stream_take_next(s);
            continue;
        }
        const uint32_t off = s->chunk * s->chunk_bytes;
        const uint32_t bytes = min(s->chunk_bytes, s->total_bytes - off);
        const uint32_t n = s->produced;
        const uint32_t bar = mpk_smem_addr(&s->full[n % MPK_STREAM_NSLOTS]);
        const uint32_t dst = mpk_smem_addr(mpk_stream_slot(n));
        // The slot's previous chunk was read by the block before the barrier that released it,
        // which orders those reads before this copy's writes.
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                     ::"r"(dst), "l"(s->src + off), "r"(bytes), "r"(bar) : "memory");
        s->chunk++;
        s->produced++;
    }
}

// Every block, thread 0, before anything else: no stream until mpk_stream_start.
MPK_DEV void mpk_stream_off(mpk_stream *s, const mpk_task_desc *desc) {
    s->active = 0;
    s->produced = s->consumed = 0;
    s->task_first = 0;
    s->desc = desc;
}

// Thread 0 of a static worker: its stream over plan[p0, p1) begins (the block synchronises
// before any task runs).
MPK_DEV void mpk_stream_start(mpk_stream *s, const mpk_dev_stream_entry *plan, int32_t p0, int32_t p1) {
    if (MPK_STREAM_SLOTS == 0 || !plan || p1 <= p0) return;
    for (int i = 0; i < MPK_STREAM_SLOTS; i++)
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(mpk_smem_addr(&s->full[i])) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    s->plan = plan;
    s->p0 = p0;
    s->p1 = p1;
    s->e = p0;
    s->next = plan[p0];
    mpk_stream_take_next(s);
    s->active = 1;
    mpk_stream_fill(s);
}

// Thread 0, after the block has finished reading chunk n (a barrier in between): its slot is free.
MPK_DEV void mpk_stream_release(mpk_stream *s) {
    s->consumed++;
    mpk_stream_fill(s);
}

// Thread 0, after a task's body and a barrier: drains what the body did not consume of its
// `chunks` (read from the descriptor before the barrier).
MPK_DEV void mpk_stream_drain_task(mpk_stream *s, uint32_t chunks) {
    while (s->consumed - s->task_first < chunks) {
        mpk_stream_wait(s, s->consumed);
        mpk_stream_release(s);
    }
}

// Thread 0, before the block exits: no copy may still be writing its shared memory.
MPK_DEV void mpk_stream_finish(mpk_stream *s) {
    if (!s->active) return;
    s->active = 0;  // fill issues nothing more
    while (s->consumed != s->produced) {
        mpk_stream_wait(s, s->consumed);
        s->consumed++;
    }
    asm volatile("cp.async.wait_all;" ::: "memory");
}

#endif  // MPK_KERNELS_CUDA_STREAM_CUH
