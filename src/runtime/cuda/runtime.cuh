// runtime.cuh — the device side of the CUDA backend: the persistent megakernel (worker blocks,
// scheduler warps or the static schedule, event counters that never reset, prepare_next_batch on
// one thread, the abort flag, profiling) and the extern "C" functions the host library reaches
// through dlsym. Every CUDA runtime call of the backend lives here, checked, with file:line.
//
// The generated .cu defines, after this file:
//   __device__ bool mpk_dispatch_task(const mpk_task_desc &d, mpk_batch *b, int32_t num_tokens,
//                                     int32_t decode_rows);
// which runs task d with the whole block (false: unknown variant). Semantics mirror
// src/runtime/cpu: see DESIGN.md §2.3 and the comments at each loop below.
#ifndef MPK_RUNTIME_CUDA_RUNTIME_CUH
#define MPK_RUNTIME_CUDA_RUNTIME_CUH

#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../../kernels/task.h"
#include "../batch.h"
#include "abi.cuh"

static __device__ bool mpk_dispatch_task(const mpk_task_desc &d, mpk_batch *b, int32_t num_tokens,
                                  int32_t decode_rows);
// Also generated: the prompt rows of task d when it is a matrix product (the rows from
// decode_rows on, on the tensor cores); the task's body then does its decode rows.
static __device__ void mpk_dispatch_prompt(const mpk_task_desc &d, mpk_batch *b, int32_t num_tokens,
                                    int32_t decode_rows);
// Also generated: what task d may start before its event fires, all threads, nt rows this
// iteration (attention: the earlier positions' keys and values into shared memory).
static __device__ void mpk_preload_task(const mpk_task_desc &d, const mpk_batch *b, int32_t nt);

// ---- memory ordering primitives -----------------------------------------------------------------
// Release on every increment and publication, acquire on every poll, gpu scope: a task's outputs
// (written by the whole block, then __syncthreads) happen-before the increment by thread 0, and
// a waiter's acquire by thread 0, then __syncthreads, orders its block's later loads.

__device__ __forceinline__ unsigned long long mpk_ld_acquire(const unsigned long long *p) {
    unsigned long long v;
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void mpk_st_release(unsigned long long *p, unsigned long long v) {
    asm volatile("st.release.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ unsigned long long mpk_atom_add_release(unsigned long long *p,
                                                                   unsigned long long v) {
    unsigned long long old;
    asm volatile("atom.release.gpu.global.add.u64 %0, [%1], %2;" : "=l"(old) : "l"(p), "l"(v) : "memory");
    return old;
}

__device__ __forceinline__ int64_t mpk_globaltimer(void) {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return (int64_t)t;
}

// Event e's counter (one cache line each: 1.7B 2.72 -> 2.53 ms/token against packed counters).
__device__ __forceinline__ unsigned long long *mpk_counter(const mpk_dev_args &a, uint32_t e) {
    return a.counters + (size_t)e * MPK_DEV_COUNTER_STRIDE;
}

__device__ __forceinline__ bool mpk_aborted(const mpk_dev_args &a) { return *a.abort_flag != 0; }

#ifndef MPK_POLL_MAX_NS
#define MPK_POLL_MAX_NS 256u  // the longest sleep between two polls of a short wait
#endif
// A wait that has lasted MPK_POLL_LONG_SPINS polls (~8 us) is a long one (attention over a long
// context, while every other worker waits for it): its polls back off to MPK_POLL_LONG_MAX_NS.
// Measured on the H100 (bench/NOTES.md v11), Qwen3-1.7B decode at depth 1024: 18.7 ms/token
// with every poll 256 ns apart, 2.9 with 1024 (the waiters' polls slow the 8 attention tasks
// down), while a 1024 ns cap for every wait costs short-context decode 2.5% (the hand-offs
// between stages are short waits, woken late).
#ifndef MPK_POLL_LONG_SPINS
#define MPK_POLL_LONG_SPINS 32u
#endif
#ifndef MPK_POLL_LONG_MAX_NS
#define MPK_POLL_LONG_MAX_NS 1024u
#endif
// Polls until *p >= target (acquire), with a short back-off; false when the run is aborted.
// One thread calls it.
static __device__ bool mpk_wait_geq(const mpk_dev_args &a, const unsigned long long *p,
                             unsigned long long target) {
    if (mpk_ld_acquire(p) >= target) return true;
    // Back off between polls: 132 blocks polling one counter back to back slow down the very
    // increments they wait for (measured: Qwen3-0.6B 1.7 -> 3.6 ms/token without the sleep).
    unsigned ns = 32, cap = MPK_POLL_MAX_NS;
    for (unsigned spins = 1;; spins++) {
        __nanosleep(ns);
        if (spins == MPK_POLL_LONG_SPINS) cap = MPK_POLL_LONG_MAX_NS;
        if (ns < cap) ns <<= 1;
        if (mpk_ld_acquire(p) >= target) return true;
        if ((spins & 63) == 0 && mpk_aborted(a)) return false;
    }
}

// Stops every block: the host sees a device error after the launch.
static __device__ void mpk_device_error(const mpk_dev_args &a, int32_t task) {
    a.control->error = 1;
    a.control->error_task = task;
    __threadfence_system();
    *a.abort_flag = MPK_DEV_ABORT_DEVICE;
}

// ---- queues -------------------------------------------------------------------------------------
// Multi-producer single-consumer rings of 64-bit slots, 0 meaning empty. A producer reserves a
// position with an atomic add on the tail, waits until that slot is empty (the ring never holds
// more than its capacity: a worker's queue at most one iteration's entries plus the terminate
// entry, a scheduler's at most one iteration's events) and stores the entry; the consumer keeps
// its head in a register, polls its slot and clears it. Entries need no release/acquire: a
// worker waits (acquire) on the task's own event before touching its data, and descriptors
// never change during a launch; dropping the fences makes a push a few hundred ns cheaper.

__device__ __forceinline__ unsigned long long mpk_ld_volatile(const unsigned long long *p) {
    return *(const volatile unsigned long long *)p;
}

static __device__ bool mpk_ring_push(const mpk_dev_args &a, unsigned long long *slots,
                              unsigned long long *tail, int32_t capacity, unsigned long long v) {
    const unsigned long long pos = atomicAdd(tail, 1ull);
    unsigned long long *slot = &slots[pos & (unsigned long long)(capacity - 1)];
    unsigned spins = 0;
    while (mpk_ld_volatile(slot) != 0) {
        __nanosleep(64);
        if ((++spins & 63) == 0 && mpk_aborted(a)) return false;
    }
    *(volatile unsigned long long *)slot = v;
    return true;
}

// Takes the next entry if there is one (0 when empty).
static __device__ unsigned long long mpk_ring_try_pop(unsigned long long *slots, int32_t capacity,
                                               unsigned long long *head) {
    unsigned long long *slot = &slots[*head & (unsigned long long)(capacity - 1)];
    const unsigned long long v = mpk_ld_volatile(slot);
    if (v == 0) return 0;
    *(volatile unsigned long long *)slot = 0;
    (*head)++;
    return v;
}

// Worker-queue entries are (iteration << 32 | low word): task + 1, or one of these.
#define MPK_QUEUE_TERMINATE 0xffffffffull  // ends the worker
#define MPK_QUEUE_ITERATION 0xfffffffeull  // run this worker's begin-of-iteration share, in graph order

// ---- iteration control --------------------------------------------------------------------------

// The END of the iteration `iter` (launch-local, 0 before the first) has fired, or iter == 0:
// one thread runs prepare_next_batch and begins iteration iter + 1 (event 0 triggered, `begun`
// published) or ends the launch (stop): when the run is over, or when the prepared iteration
// belongs to the other kernel (prompt rows or none: control.handovers counts it, and the
// mapped host copy tells the host at once; the run's next launch, already queued behind this
// one, begins this prepared iteration without preparing again). Returns false when the launch
// must end.
static __device__ bool mpk_iteration_step(const mpk_dev_args &a, uint32_t iter) {
    mpk_dev_control *c = a.control;
    mpk_batch *b = a.batch;
    const bool resumed = iter == 0 && a.launch_index > 0;
    const int64_t now = mpk_globaltimer();
    if (iter == 0 && !resumed) c->epoch_ns = now;
    if (resumed) c->handover_ns += now - c->iter_begin_ns;  // (set when the run was handed over)
    if (iter > 0) {
        const int64_t dt = now - c->iter_begin_ns;
        if (b->iter_prompt_tokens > 0) c->prefill_ns += dt; else c->decode_ns += dt;
    }
    const int32_t st = resumed ? MPK_BATCH_RUNNING : mpk_batch_prepare(b, a.tokens, a.step, a.output_ids, a.input_ids);
    const bool other = st == MPK_BATCH_RUNNING && (b->decode_rows < b->num_tokens) != (a.prompt_kernel != 0);
    c->status = st;
    if (st == MPK_BATCH_RUNNING && !other) c->iterations++;
    c->iter_begin_ns = mpk_globaltimer();
    if (other) {
        c->handover_iterations = c->iterations;
        c->handovers = a.launch_index + 1;
        *a.host_handovers = a.launch_index + 1;  // (the host queues the launch after the next)
    }
    if (st != MPK_BATCH_RUNNING || other) c->stop = 1;
    __threadfence();
    if (other) __threadfence_system();
    mpk_st_release(&c->begun, iter + 1);
    // The begin events fire for iteration iter + 1 also when stopping, so static workers wake
    // and read the status (they wait on event 0).
    for (int32_t e = 0; e < a.num_begin_events; e++)
        if ((uint32_t)e != a.stall_event)  // (the stall test hook may name a begin event too)
            mpk_atom_add_release(mpk_counter(a, e), a.events[e].num_triggers);
    return st == MPK_BATCH_RUNNING && !other;
}

#ifndef MPK_PREFETCH_BYTES
#define MPK_PREFETCH_BYTES (48u * 1024u)
#endif

// ---- running one task -----------------------------------------------------------------------------

// Profiling is a run-time flag (a.profiling) of the one megakernel: a second kernel specialised
// for profiled runs doubled the code nvcc compiles and measured no faster (bench/NOTES.md, v7).

struct mpk_worker_shared {
    alignas(16) mpk_task_desc desc;  // the running task's descriptor, copied while its event is pending
    unsigned int profiled;  // profile records this block has attempted (thread 0)
    int32_t flag;
    int32_t num_tokens;   // rows of the iteration (static mode: read once per iteration)
    int32_t decode_rows;  // of them the decode rows, the first (mpk_batch.decode_rows; read with it)
    unsigned long long entry;
    long long t_wait, t_start;  // profiling (thread 0): the running task's wait began, it started
    int32_t iteration_base;  // the run's iterations before this launch (profile numbering)
};

// Waits for the task's event, runs it with the whole block, triggers its events. All threads
// call it; returns false when the run was aborted.
// Weights never wait for activations: a block asks L2 for the first MPK_PREFETCH_BYTES of a
// task's weights (what its warps read first) ahead of time, so the memory system keeps
// streaming across hand-offs. Measured on the H100 (bench/NOTES.md, v6): 48 KB beats 64, 96,
// 128 and 192 KB on all three Qwen3 sizes (Qwen3-8B 6.24 against 6.73 ms/token at 192 KB):
// a larger request competes with the running task's own loads, which are on the critical path.
// MPK_PREFETCH_BULK=1: one thread asks the copy engine (TMA) for the whole range with one bulk
// L2 prefetch instead of every thread issuing one prefetch per 128-byte line. Measured (v7):
// Qwen3-0.6B the same, Qwen3-8B 0.6-2.4% faster in one call; not yet the default.
#ifndef MPK_PREFETCH_BULK
#define MPK_PREFETCH_BULK 0
#endif
__device__ __forceinline__ void mpk_prefetch_weights(const mpk_task_desc &d) {
    if (!d.prefetch_bytes) return;
    // A streamed task's weights come through the ring (stream.cuh); more bytes in flight would
    // only queue ahead of the block's own loads.
    if (MPK_STREAM_SLOTS > 0 && d.stream_chunks && mpk_stream_state()->active) return;
    const char *base = (const char *)d.operand[d.prefetch_operand];
    const uint32_t bytes = d.prefetch_bytes < MPK_PREFETCH_BYTES ? d.prefetch_bytes : MPK_PREFETCH_BYTES;
#if MPK_PREFETCH_BULK
    // (16-byte aligned start and size, as the instruction requires; weights are 256-byte aligned)
    if (threadIdx.x == 0 && ((uintptr_t)base & 15u) == 0 && bytes >= 16u)
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(base), "r"(bytes & ~15u) : "memory");
#else
    for (uint32_t off = threadIdx.x * 128u; off < bytes; off += MPK_DEV_THREADS * 128u)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(base + off));
#endif
}

// MPK_PREFETCH_SELF=1 (experimental, not yet measured): while waiting for task t's event, ask
// L2 for t's own weights instead of the next task's. The next task's request competes with t's
// own loads once t runs (v6: the smaller that request, the faster); t's own request only fills
// the idle wait.
#ifndef MPK_PREFETCH_SELF
#define MPK_PREFETCH_SELF 0
#endif
// `next` (or -1) is the task this worker runs after t: its weights are requested now, one task
// ahead, so they arrive while t runs and t's successors wait; `first` also requests t's own.
// PromptRows: the prompt kernel's copy, which runs the products' prompt rows on the tensor
// cores; the decode kernel's has no call to that code (its registers cost decode 1-3% even
// when never called: bench/NOTES.md v13).
template <bool PromptRows>
__device__ bool mpk_run_task(const mpk_dev_args &a, mpk_worker_shared *sh, int32_t w,
                             int32_t t, uint32_t iter, int32_t next = -1, bool first = true,
                             int32_t num_tokens = -1, int32_t decode_rows = 0) {
    const mpk_task_desc &dg = a.tasks[t];
    const uint32_t ev = dg.wait_event;
    const bool prof = a.profiling != 0;
    // The descriptor is constant: warp 1 copies it to shared memory while thread 0 waits, so
    // the task body reads it from there instead of going back to global memory after the wait.
    if (threadIdx.x >= 32 && threadIdx.x < 40)
        ((uint4 *)&sh->desc)[threadIdx.x - 32] = ((const uint4 *)&dg)[threadIdx.x - 32];
    const mpk_task_desc &d = sh->desc;
    if (first || MPK_PREFETCH_SELF) mpk_prefetch_weights(dg);
    if (next >= 0 && !MPK_PREFETCH_SELF) mpk_prefetch_weights(a.tasks[next]);
#if MPK_ATTN_PRELOAD
    if (num_tokens >= 0) mpk_preload_task(dg, a.batch, num_tokens);  // (static mode knows the rows now)
#endif
    mpk_stream *stream = mpk_stream_state();
    if (threadIdx.x == 0) {
        if (prof) sh->t_wait = mpk_globaltimer();
        mpk_stream_begin_task(stream);
        mpk_dev_worker_status *ws = &a.worker_status[w];
        ws->task = t;
        ws->iteration = (int32_t)iter;
        ws->event = ev;
        ws->state = MPK_DEV_W_WAITING;
        bool ok = true;
        if (ev != MPK_EVENT_NONE)
            ok = mpk_wait_geq(a, mpk_counter(a, ev), (unsigned long long)dg.wait_count * iter);
        if (ok) ws->state = MPK_DEV_W_RUNNING;  // an aborted wait stays visible to the host
        sh->flag = ok;
        sh->num_tokens = num_tokens >= 0 ? num_tokens : (ok ? a.batch->num_tokens : 0);
        sh->decode_rows = num_tokens >= 0 ? decode_rows : (ok ? a.batch->decode_rows : 0);
        if (prof) {
            mpk_smem()->inputs_mark = 0;
            sh->t_start = mpk_globaltimer();
        }
    }
    mpk_sync();
    if (!sh->flag) return false;
    if (PromptRows && sh->decode_rows < sh->num_tokens)
        mpk_dispatch_prompt(d, a.batch, sh->num_tokens, sh->decode_rows);
    if (!mpk_dispatch_task(d, a.batch, sh->num_tokens, sh->decode_rows) && threadIdx.x == 0)
        mpk_device_error(a, t);
    // Read what the triggers need before the barrier: past it, warp 1 may already be copying
    // the next task's descriptor over sh->desc.
    const uint32_t trig_begin = d.trigger_begin, trig_end = d.trigger_end;
    const uint16_t task_type = d.type;
    const uint32_t stream_chunks = mpk_stream_task_chunks(stream);
    const uint32_t stream_first = stream->task_first;
    const bool stream_used = stream->used != 0;  // (set before a barrier of the body)
    const uint32_t task_layer = d.layer;
    mpk_sync();
    if (threadIdx.x == 0) {
        const int64_t t_body = prof ? mpk_globaltimer() : 0;
        // One release fence orders the block's outputs (the barrier above made them this
        // thread's to publish) before every increment; the adds themselves are then relaxed.
        asm volatile("fence.acq_rel.gpu;" ::: "memory");
        for (uint32_t i = trig_begin; i < trig_end; i++) {
            const uint32_t e = a.triggers[i];
            if (e == a.stall_event) continue;  // test hook: this event never fires
            if (a.num_schedulers == 0) {  // static: nothing to read back, nothing to wait for
                asm volatile("red.relaxed.gpu.global.add.u64 [%0], 1;" ::"l"(mpk_counter(a, e)) : "memory");
                continue;
            }
            const unsigned long long now = atomicAdd(mpk_counter(a, e), 1ull) + 1;
            const mpk_event_desc &ed = a.events[e];
            // A just-in-time event hands its tasks to a scheduler when it completes.
            if ((ed.flags & MPK_EVENT_FLAG_JIT) && a.num_schedulers > 0 &&
                (int32_t)e >= a.num_begin_events && now % ed.num_triggers == 0) {
                const int32_t s = (int32_t)(e % (uint32_t)a.num_schedulers);
                const unsigned long long v = ((now / ed.num_triggers) << 32) | (e + 1ull);
                mpk_ring_push(a, a.event_queue + (int64_t)s * a.event_queue_capacity,
                              &a.event_queue_tail[s], a.event_queue_capacity, v);
            }
        }
        a.worker_status[w].state = MPK_DEV_W_IDLE;
        if (prof) {
            const unsigned int n = sh->profiled++;
            a.profile_count[w] = sh->profiled;  // only this thread writes it
            if ((int32_t)n < a.profile_capacity) {
                mpk_dev_prof *p = &a.profile[(int64_t)w * a.profile_capacity + n];
                p->task_type = task_type;
                p->worker = (uint16_t)w;
                p->task = t;
                p->layer = (int32_t)task_layer;
                p->iteration = (int32_t)iter + sh->iteration_base;
                const int64_t t_start = sh->t_start;  // (shared: no register held across the body)
                p->start_ns = t_start;
                p->end_ns = mpk_globaltimer();
                p->wait_ns = t_start - sh->t_wait;
                const long long in = mpk_smem()->inputs_mark;  // (clamped: a task over 2 s)
                p->inputs_ns = in ? (int32_t)min(in - t_start, (long long)INT32_MAX) : -1;
                p->body_ns = (int32_t)min((long long)(t_body - t_start), (long long)INT32_MAX);
            }
        }
    }
    // Chunks the body did not use (no rows this iteration, a prefill the streamed product does
    // not take) pass unread, after the triggers so that successors start first.
    if (stream_chunks) {
        if (!stream_used) mpk_stream_pass(stream, stream_first, stream_chunks);
        if (threadIdx.x == 0) stream->consumed = stream_first + stream_chunks;
    }
    return true;
}

// A task runs at the begin of its iteration unless a just-in-time event releases it.
static __device__ bool mpk_dispatch_at_begin(const mpk_dev_args &a, const mpk_task_desc &d) {
    const uint32_t e = d.wait_event;
    return e == MPK_EVENT_NONE || (int32_t)e < a.num_begin_events ||
           !(a.events[e].flags & MPK_EVENT_FLAG_JIT);
}

// ---- workers ------------------------------------------------------------------------------------

// Static mode: worker w runs its compile-time list every iteration. All workers wait for event 0
// of the iteration and read the status published with it; worker 0's thread 0 also waits for
// the END event and runs prepare_next_batch.
template <bool PromptRows>
__device__ void mpk_worker_static(const mpk_dev_args &a, mpk_worker_shared *sh, int32_t w) {
    if (w == 0 && threadIdx.x == 0) mpk_iteration_step(a, 0);  // begins iteration 1 (or stops)
    const unsigned long long n0 = a.events[0].num_triggers;
    for (uint32_t iter = 1;; iter++) {
        if (threadIdx.x == 0) {
            bool ok = mpk_wait_geq(a, mpk_counter(a, 0), n0 * iter);
            sh->flag = ok && *(volatile int32_t *)&a.control->stop == 0;
        }
        mpk_sync();
        const bool go = sh->flag;
        const int32_t nt = go ? *(volatile int32_t *)&a.batch->num_tokens : 0;  // after the acquire of event 0
        const int32_t nd = go ? *(volatile int32_t *)&a.batch->decode_rows : 0;
        mpk_sync();
        if (!go) return;
        const int32_t i0 = a.worker_task_begin[w], i1 = a.worker_task_begin[w + 1];
        for (int32_t i = i0; i < i1; i++) {
            // The next task, wrapping to the first of the next iteration (layer 0's weights
            // arrive during the LM head). (Looking past a task without weights, e.g. an idle
            // attention split between a worker's qkv and o_proj tiles, measured slower; so did
            // letting an idle split skip its wait: bench/NOTES.md v12.)
            const int32_t next = i + 1 < i1 ? a.worker_tasks[i + 1] : a.worker_tasks[i0];
            if (!mpk_run_task<PromptRows>(a, sh, w, a.worker_tasks[i], iter, next, iter == 1 && i == i0, nt, nd))
                return;
        }
        if (w == 0 && threadIdx.x == 0) {
            const unsigned long long ne = a.events[a.end_event].num_triggers;
            if (mpk_wait_geq(a, mpk_counter(a, a.end_event), ne * iter)) mpk_iteration_step(a, iter);
        }
    }
}

// Scheduled mode: worker w runs what the schedulers push to its queue, in order.
template <bool PromptRows>
__device__ void mpk_worker_dynamic(const mpk_dev_args &a, mpk_worker_shared *sh, int32_t w) {
    unsigned long long *slots = a.worker_queue + (int64_t)w * a.queue_capacity;
    unsigned long long head = 0;  // thread 0's
    for (;;) {
        if (threadIdx.x == 0) {
            unsigned long long v;
            unsigned spins = 0, ns = 32;
            while ((v = mpk_ring_try_pop(slots, a.queue_capacity, &head)) == 0) {
                __nanosleep(ns);
                if (ns < 256) ns <<= 1;
                if ((++spins & 63) == 0 && mpk_aborted(a)) break;
            }
            sh->entry = v;
        }
        mpk_sync();
        const unsigned long long v = sh->entry;
        mpk_sync();
        if (v == 0 || (v & 0xffffffffull) == MPK_QUEUE_TERMINATE) return;
        const uint32_t iter = (uint32_t)(v >> 32);
        if ((v & 0xffffffffull) == MPK_QUEUE_ITERATION) {
            // Ahead-of-time dispatch: task t goes to worker t % W, in graph order (topological,
            // so running them in order cannot deadlock).
            for (int32_t t = w; t < a.num_tasks; t += a.num_workers)
                if (mpk_dispatch_at_begin(a, a.tasks[t]) && !mpk_run_task<PromptRows>(a, sh, w, t, iter)) return;
            continue;
        }
        if (!mpk_run_task<PromptRows>(a, sh, w, (int32_t)(v & 0xffffffffull) - 1, iter)) return;
    }
}

// ---- schedulers ---------------------------------------------------------------------------------
// One thread (lane 0 of a scheduler warp) each. Task t always goes to worker t % W. When an
// iteration begins, scheduler s hands each of its workers (w % S == s) one entry that stands for
// all of that worker's begin-of-iteration tasks in graph order (the same order and assignment as
// pushing them one by one, at one push per worker); it pushes the tasks of the just-in-time
// events e with e % S == s one by one when they fire. Scheduler 0 also watches the END event and
// runs prepare_next_batch; when the run ends it pushes the terminate entry to every worker.


static __device__ bool mpk_push_task(const mpk_dev_args &a, int32_t t, uint32_t iter) {
    const int32_t w = t % a.num_workers;
    return mpk_ring_push(a, a.worker_queue + (int64_t)w * a.queue_capacity,
                         &a.worker_queue_tail[w], a.queue_capacity,
                         ((unsigned long long)iter << 32) | (unsigned long long)(t + 1));
}

static __device__ void mpk_scheduler(const mpk_dev_args &a, int32_t s) {
    const int32_t S = a.num_schedulers, W = a.num_workers;
    unsigned long long *equeue = a.event_queue + (int64_t)s * a.event_queue_capacity;
    unsigned long long ehead = 0;
    uint32_t iter = 0;  // the iteration this scheduler dispatched last
    if (s == 0) mpk_iteration_step(a, 0);
    unsigned spins = 0, ns = 32;
    for (;;) {
        bool busy = false;
        // Scheduler 0: the END of the current iteration begins the next one.
        if (s == 0 && iter > 0 && !*(volatile int32_t *)&a.control->stop) {
            const unsigned long long ne = a.events[a.end_event].num_triggers;
            if (mpk_ld_acquire(mpk_counter(a, a.end_event)) >= ne * iter) {
                mpk_iteration_step(a, iter);
                busy = true;
            }
        }
        const unsigned long long begun = mpk_ld_acquire(&a.control->begun);
        if (*(volatile int32_t *)&a.control->stop) {
            if (s == 0)
                for (int32_t w = 0; w < W; w++)
                    mpk_ring_push(a, a.worker_queue + (int64_t)w * a.queue_capacity,
                                  &a.worker_queue_tail[w], a.queue_capacity, MPK_QUEUE_TERMINATE);
            return;
        }
        if (begun > iter) {  // a new iteration: its begin tasks, one entry per worker of this scheduler
            iter = (uint32_t)begun;
            for (int32_t w = s; w < W; w += S)
                if (!mpk_ring_push(a, a.worker_queue + (int64_t)w * a.queue_capacity, &a.worker_queue_tail[w],
                                   a.queue_capacity, ((unsigned long long)iter << 32) | MPK_QUEUE_ITERATION))
                    return;
            busy = true;
        }
        const unsigned long long v = mpk_ring_try_pop(equeue, a.event_queue_capacity, &ehead);
        if (v) {
            const uint32_t e = (uint32_t)(v & 0xffffffffull) - 1, it = (uint32_t)(v >> 32);
            for (uint32_t t = a.events[e].first_task; t < a.events[e].last_task; t++)
                if (!mpk_push_task(a, (int32_t)t, it)) return;
            busy = true;
        }
        if (busy) {
            ns = 32;
            continue;
        }
        __nanosleep(ns);
        if (ns < 256) ns <<= 1;
        if ((++spins & 63) == 0 && mpk_aborted(a)) return;
    }
}

// ---- the kernel ---------------------------------------------------------------------------------

// Blocks [0, num_workers) are workers; the rest hold MPK_DEV_SCHEDULERS_PER_BLOCK scheduler
// warps each (static mode launches none). With a weight-stream ring every block has one warp
// more than its task threads: a static worker's producer (stream.cuh).
//
// Two kernels of the one graph: mpk_megakernel<true> (the prompt kernel) runs the iterations
// that have prompt rows, mpk_megakernel<false> (the decode kernel) the others; each hands the
// run to the other at an iteration boundary (mpk_iteration_step). The generated .cu is compiled
// as two translation units at once (MPK_KERNEL_PART 1: the decode kernel and the host ABI; 2:
// the prompt kernel), so that building both costs no more wall time than one; part 0 (one
// translation unit with both) serves tools that compile the .cu by hand.
#ifndef MPK_KERNEL_PART
#define MPK_KERNEL_PART 0
#endif
template <bool PromptRows>
__global__ void __launch_bounds__(MPK_BLOCK_THREADS, 1) mpk_megakernel(const __grid_constant__ mpk_dev_args a) {
    // A launch queued ahead of time that the run was not handed to (it ended, or went on in
    // the launch before) leaves at once; the count is the finished launches', so every thread
    // reads the same.
    if (a.launch_index > 0 && *(volatile int32_t *)&a.control->handovers != a.launch_index) return;
    if (a.launch_index < 0) return;  // the warm-up launch at load (backend.c: warm_up)
    const bool prof = a.profiling != 0;
    __shared__ mpk_worker_shared sh;
    const int32_t blk = (int32_t)blockIdx.x;
    const bool streams = blk < a.num_workers && a.num_schedulers == 0 && a.stream_plan &&
                         a.stream_plan_begin[blk + 1] > a.stream_plan_begin[blk];
    if (threadIdx.x == 0) {
        mpk_stream_init(mpk_stream_state(), &sh.desc, streams);
        const bool resumed = a.launch_index > 0;  // (a run's records go on)
        sh.profiled = resumed ? a.profile_count[blk < a.num_workers ? blk : 0] : 0;
        sh.iteration_base = resumed ? a.control->handover_iterations : 0;
        mpk_smem()->marking = prof;
        mpk_smem()->inputs_mark = 0;
        mpk_smem()->pre_k = 0;
        mpk_smem()->pre_bad = 0;
    }
    __syncthreads();
    if (threadIdx.x >= MPK_DEV_THREADS) {  // the producer warp: one lane streams, the rest leave
        if (threadIdx.x == MPK_DEV_THREADS && streams)
            mpk_stream_produce(mpk_stream_state(), a.stream_plan, a.stream_plan_begin[blk], a.stream_plan_begin[blk + 1]);
        return;
    }
    if (blk < a.num_workers) {
        if (a.num_schedulers == 0)
            mpk_worker_static<PromptRows>(a, &sh, blk);
        else
            mpk_worker_dynamic<PromptRows>(a, &sh, blk);
        // The producer stops, and waits for its copies in flight before its warp leaves.
        if (threadIdx.x == 0) *(volatile int32_t *)&mpk_stream_state()->stop = 1;
        if (threadIdx.x == 0 && a.worker_status[blk].state != MPK_DEV_W_WAITING)
            a.worker_status[blk].state = MPK_DEV_W_EXITED;
        return;
    }
    const int32_t warp = (int32_t)threadIdx.x / 32;
    const int32_t s = (blk - a.num_workers) * MPK_DEV_SCHEDULERS_PER_BLOCK + warp;
    if (warp < MPK_DEV_SCHEDULERS_PER_BLOCK && s < a.num_schedulers && threadIdx.x % 32 == 0)
        mpk_scheduler(a, s);
}

#if MPK_KERNEL_PART == 2
// The prompt kernel's address, for part 1's launch (one CUDA runtime in the .so knows both).
extern "C" const void *mpk_dev_prompt_kernel(void) { return (const void *)mpk_megakernel<true>; }
#else
#if MPK_KERNEL_PART == 1
extern "C" const void *mpk_dev_prompt_kernel(void);
#else
static const void *mpk_dev_prompt_kernel(void) { return (const void *)mpk_megakernel<true>; }
#endif

// ---- the streaming-read reference (for bandwidth percentages in benchmarks) ----------------------

// Sums a buffer with 16-byte loads, eight in flight per thread; one block per SM. The sum is
// stored so the loads cannot be optimised away.
__global__ void __launch_bounds__(1024) mpk_stream_read(const uint4 *p, size_t n, unsigned *sink) {
    unsigned acc = 0;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 7 * stride < n; i += 8 * stride) {
        uint4 v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) v[u] = __ldcs(p + i + u * stride);
#pragma unroll
        for (int u = 0; u < 8; u++) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    for (; i < n; i += stride) acc ^= p[i].x;
    if (acc == 0x12345678u) *sink = acc;
}

// ---- host ABI (extern "C", reached through dlsym) -------------------------------------------------

static char mpk_dev_error_text[1024];
static cudaStream_t mpk_dev_stream;

static int mpk_dev_fail(cudaError_t e, const char *what, const char *file, int line) {
    snprintf(mpk_dev_error_text, sizeof mpk_dev_error_text, "%s failed: %s (%s) at %s:%d", what,
             cudaGetErrorString(e), cudaGetErrorName(e), file, line);
    return (int)e;
}

#define MPK_CUDA_CHECK(call)                                                     \
    do {                                                                         \
        cudaError_t mpk_e_ = (call);                                             \
        if (mpk_e_ != cudaSuccess) return mpk_dev_fail(mpk_e_, #call, __FILE__, __LINE__); \
    } while (0)

extern "C" {

int mpk_dev_abi_version(void) { return MPK_DEV_ABI_VERSION; }

const char *mpk_dev_last_error(void) { return mpk_dev_error_text; }

int mpk_dev_init(int device, mpk_dev_info *info) {
    int count = 0;
    MPK_CUDA_CHECK(cudaGetDeviceCount(&count));
    if (device < 0 || device >= count) {
        snprintf(mpk_dev_error_text, sizeof mpk_dev_error_text,
                 "cuda_device %d does not exist (%d devices)", device, count);
        return MPK_DEV_ERR_ARG;
    }
    MPK_CUDA_CHECK(cudaSetDevice(device));
    cudaDeviceProp p;
    MPK_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", p.name);
    info->sm_count = p.multiProcessorCount;
    info->cc_major = p.major;
    info->cc_minor = p.minor;
    info->smem_optin = (int64_t)p.sharedMemPerBlockOptin;
    info->total_mem = (int64_t)p.totalGlobalMem;
    if (!mpk_dev_stream) MPK_CUDA_CHECK(cudaStreamCreateWithFlags(&mpk_dev_stream, cudaStreamNonBlocking));
    return MPK_DEV_OK;
}

int mpk_dev_malloc(void **ptr, size_t bytes) {
    *ptr = NULL;
    MPK_CUDA_CHECK(cudaMalloc(ptr, bytes ? bytes : 16));
    MPK_CUDA_CHECK(cudaMemsetAsync(*ptr, 0, bytes ? bytes : 16, mpk_dev_stream));
    MPK_CUDA_CHECK(cudaStreamSynchronize(mpk_dev_stream));
    return MPK_DEV_OK;
}

int mpk_dev_free(void *ptr) {
    if (ptr) MPK_CUDA_CHECK(cudaFree(ptr));
    return MPK_DEV_OK;
}

// On the megakernel's stream and finished on return (called between runs: a plain cudaMemcpy
// goes through the legacy stream, which the non-blocking stream's launches do not wait for).
int mpk_dev_memcpy_h2d(void *dst, const void *src, size_t bytes) {
    MPK_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, mpk_dev_stream));
    MPK_CUDA_CHECK(cudaStreamSynchronize(mpk_dev_stream));
    return MPK_DEV_OK;
}

int mpk_dev_memcpy_d2h(void *dst, const void *src, size_t bytes) {
    MPK_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
    return MPK_DEV_OK;
}

// Queued on the megakernel's stream: ordered after the launches queued before it and before
// those queued after it; the host does not wait.
int mpk_dev_memset(void *dst, int value, size_t bytes) {
    MPK_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, mpk_dev_stream));
    return MPK_DEV_OK;
}

// Pinned host memory mapped into the device (the abort flag, the hand-over count): *host and its
// device alias *dev.
int mpk_dev_host_alloc(void **host, void **dev, size_t bytes) {
    *host = *dev = NULL;
    MPK_CUDA_CHECK(cudaHostAlloc(host, bytes, cudaHostAllocMapped));
    memset(*host, 0, bytes);
    MPK_CUDA_CHECK(cudaHostGetDevicePointer(dev, *host, 0));
    return MPK_DEV_OK;
}

int mpk_dev_host_free(void *host) {
    if (host) MPK_CUDA_CHECK(cudaFreeHost(host));
    return MPK_DEV_OK;
}

// Checks that every block can be resident at once and launches cooperatively (which the driver
// refuses, rather than hangs, when they cannot): the prompt kernel when args->prompt_kernel,
// else the decode kernel. *blocks gets the grid size.
int mpk_dev_launch(const mpk_dev_args *args, int *blocks) {
    const void *fn = args->prompt_kernel ? mpk_dev_prompt_kernel() : (const void *)mpk_megakernel<false>;
    const int sched_blocks = (args->num_schedulers + MPK_DEV_SCHEDULERS_PER_BLOCK - 1) / MPK_DEV_SCHEDULERS_PER_BLOCK;
    const int grid = args->num_workers + sched_blocks;
    *blocks = grid;
    int device = 0, sms = 0, per_sm = 0;
    MPK_CUDA_CHECK(cudaGetDevice(&device));
    MPK_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    // Every block gets MPK_DYN_SMEM_BYTES of dynamic shared memory for its tasks (staged GEMV
    // inputs, attention partials) and the weight stream's ring after it, the prompt kernel's
    // MPK_PROMPT_SMEM_EXTRA more (its products' weight ring); one block per SM leaves the rest to
    // the L1 cache.
    const size_t extra = args->prompt_kernel && MPK_STREAM_SLOTS == 0 ? MPK_PROMPT_SMEM_EXTRA : 0;
    const size_t dyn = MPK_DYN_SMEM_BYTES + MPK_STREAM_RING_BYTES + extra;
    MPK_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)dyn));
    MPK_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, MPK_BLOCK_THREADS, dyn));
    if (per_sm < 1 || grid > sms) {
        snprintf(mpk_dev_error_text, sizeof mpk_dev_error_text,
                 "%d workers + %d scheduler blocks (%d schedulers / %d) = %d blocks do not fit "
                 "the %d SMs one block each (occupancy %d blocks per SM)",
                 args->num_workers, sched_blocks, args->num_schedulers,
                 MPK_DEV_SCHEDULERS_PER_BLOCK, grid, sms, per_sm);
        return MPK_DEV_ERR_LIMIT;
    }
    void *params[] = {(void *)args};
    MPK_CUDA_CHECK(cudaLaunchCooperativeKernel(fn, dim3(grid), dim3(MPK_BLOCK_THREADS), params,
                                               dyn, mpk_dev_stream));
    return MPK_DEV_OK;
}

// *done = 1 once the launch finished (its error, if any, is returned).
int mpk_dev_poll(int *done) {
    cudaError_t e = cudaStreamQuery(mpk_dev_stream);
    *done = e != cudaErrorNotReady;
    if (e == cudaErrorNotReady) return MPK_DEV_OK;
    MPK_CUDA_CHECK(e);
    return MPK_DEV_OK;
}

// Read bandwidth of a plain streaming kernel over 1 GiB (median of 7 timed runs after a warm-up).
int mpk_dev_read_bandwidth(double *bytes_per_s) {
    const size_t bytes = (size_t)1 << 30;
    void *buf = NULL;
    unsigned *sink = NULL;
    cudaEvent_t e0, e1;
    int device = 0, sms = 0;
    MPK_CUDA_CHECK(cudaGetDevice(&device));
    MPK_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    MPK_CUDA_CHECK(cudaMalloc(&buf, bytes));
    MPK_CUDA_CHECK(cudaMalloc(&sink, sizeof *sink));
    MPK_CUDA_CHECK(cudaMemset(buf, 1, bytes));
    MPK_CUDA_CHECK(cudaEventCreate(&e0));
    MPK_CUDA_CHECK(cudaEventCreate(&e1));
    float ms[8];
    for (int r = 0; r < 8; r++) {
        MPK_CUDA_CHECK(cudaEventRecord(e0, mpk_dev_stream));
        mpk_stream_read<<<sms, 1024, 0, mpk_dev_stream>>>((const uint4 *)buf, bytes / 16, sink);
        MPK_CUDA_CHECK(cudaGetLastError());
        MPK_CUDA_CHECK(cudaEventRecord(e1, mpk_dev_stream));
        MPK_CUDA_CHECK(cudaEventSynchronize(e1));
        MPK_CUDA_CHECK(cudaEventElapsedTime(&ms[r], e0, e1));
    }
    for (int i = 1; i < 8; i++)  // sort runs 1..7 (run 0 is the warm-up)
        for (int j = i; j > 1 && ms[j] < ms[j - 1]; j--) { float t = ms[j]; ms[j] = ms[j - 1]; ms[j - 1] = t; }
    *bytes_per_s = (double)bytes / (1e-3 * (double)ms[4]);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    MPK_CUDA_CHECK(cudaFree(sink));
    MPK_CUDA_CHECK(cudaFree(buf));
    return MPK_DEV_OK;
}

int mpk_dev_sync(void) {
    MPK_CUDA_CHECK(cudaStreamSynchronize(mpk_dev_stream));
    return MPK_DEV_OK;
}

}  // extern "C"

#endif  // MPK_KERNEL_PART != 2
#endif  // MPK_RUNTIME_CUDA_RUNTIME_CUH
