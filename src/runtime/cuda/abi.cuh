// abi.cuh — the C ABI between the host library (src/runtime/cuda/backend.c, plain C11 without
// CUDA headers) and the generated megakernel shared object: launch arguments, the control block,
// per-worker status slots and profile records. Plain C included by both sides; a .cuh only so
// that tools/embed.sh embeds it into the library with the other device headers.
#ifndef MPK_RUNTIME_CUDA_ABI_CUH
#define MPK_RUNTIME_CUDA_ABI_CUH

#include <stdint.h>

#include "../../kernels/task.h"
#include "../batch.h"

// Bumped whenever a struct below changes; the host refuses a .so built for another version.
#define MPK_DEV_ABI_VERSION 5

// Threads of every block of the megakernel (workers and scheduler blocks alike). The generated
// source defines it first (codegen.c: MPK_CODEGEN_THREADS, 384); -D overrides it for
// measurements (MPK_NVCC_FLAGS). The launch always uses it, so task bodies may fold it as a
// constant (the GEMV's warp count) as well as read blockDim.
#ifndef MPK_DEV_THREADS
#define MPK_DEV_THREADS 384
#endif
// Scheduler warps per scheduler block.
#define MPK_DEV_SCHEDULERS_PER_BLOCK 4
// Event counters sit MPK_DEV_COUNTER_STRIDE 64-bit words apart (one 128-byte line each), so
// that the blocks polling one event do not slow down the increments of its neighbours.
#define MPK_DEV_COUNTER_STRIDE 16
// The weight stream of a worker block (src/kernels/cuda/stream.cuh): a ring of shared-memory
// slots of this size, each holding one chunk of whole weight rows. The host splits every
// streamed task's weights into chunks of at most one slot (mpk_task_desc.stream_chunks).
#define MPK_DEV_STREAM_SLOT_BYTES (32 * 1024)

// Return codes of the mpk_dev_* functions besides CUDA's own (positive) error numbers.
#define MPK_DEV_OK 0
#define MPK_DEV_ERR_LIMIT (-2)  // the blocks cannot all be resident at once
#define MPK_DEV_ERR_ARG (-3)    // bad arguments from the host (a bug)

// Worker states in mpk_dev_worker_status.state.
#define MPK_DEV_W_IDLE 0     // between tasks, or waiting for its queue
#define MPK_DEV_W_WAITING 1  // waiting for `event` to fire for `iteration`
#define MPK_DEV_W_RUNNING 2  // running `task`
#define MPK_DEV_W_EXITED 3

// Values of the abort word (mapped host memory): the host sets HOST on timeout, a block that
// meets an impossible task sets DEVICE; every wait loop polls it and leaves.
#define MPK_DEV_ABORT_HOST 1
#define MPK_DEV_ABORT_DEVICE 2

typedef struct mpk_dev_info {
    char name[256];
    int32_t sm_count;
    int32_t cc_major, cc_minor;
    int32_t reserved;
    int64_t smem_optin;   // largest dynamic shared memory a block may ask for
    int64_t total_mem;
} mpk_dev_info;

// Same layout as mpk_profile_record in mpk.h (backend.c asserts it).
typedef struct mpk_dev_prof {
    uint16_t task_type;
    uint16_t worker;
    int32_t task;
    int32_t layer;
    int32_t iteration;
    int64_t start_ns;
    int64_t end_ns;
    int64_t wait_ns;
    int32_t inputs_ns;
    int32_t body_ns;
} mpk_dev_prof;

typedef struct mpk_dev_worker_status {
    int32_t task;        // the task run or waited for last (-1 none)
    int32_t iteration;   // run-local iteration of that task
    uint32_t event;      // the event it waits for (MPK_EVENT_NONE when none)
    int32_t state;       // MPK_DEV_W_*
} mpk_dev_worker_status;

// Written by the device, read back by the host after the launch. The first part is a launch's
// own and zeroed before each launch (stream-ordered, backend.c: reset_launch); the rest lasts
// for the run.
typedef struct mpk_dev_control {
    unsigned long long begun;  // iterations this launch has begun (schedulers watch it)
    int32_t stop;              // 1 once prepare_next_batch ended the run (or handed it over)
    int32_t reserved;
    // -- the run's (zeroed when it starts)
    int32_t status;            // MPK_BATCH_* of the iteration begun last
    int32_t iterations;        // iterations begun with MPK_BATCH_RUNNING
    int32_t error;             // 1: a task had an unknown variant (bad graph)
    int32_t error_task;
    int32_t handovers;         // launches that stopped before an iteration of the other kernel;
                               // launch j of the run runs only when handovers == j
    int32_t handover_iterations;  // `iterations` at the last hand-over (profile numbering)
    int64_t epoch_ns;          // %globaltimer when the run's first launch began (profile times)
    int64_t iter_begin_ns;     // %globaltimer when the current iteration began (or was handed over)
    int64_t prefill_ns;        // time of iterations that processed prompt rows
    int64_t decode_ns;         // time of the others
    int64_t handover_ns;       // from each hand-over until the next launch began its iteration
} mpk_dev_control;

// Bytes at the start of mpk_dev_control that each launch begins with zeroed.
#define MPK_DEV_CONTROL_LAUNCH_BYTES 16

// One task of a worker's weight stream (static mode): the tasks of the worker's list that have
// stream chunks, in list order; the device walks them round and round, one per task it runs.
typedef struct mpk_dev_stream_entry {
    uint64_t src;          // device address of the task's weights (operand[prefetch_operand])
    uint32_t bytes;        // its prefetch_bytes
    uint32_t chunk_bytes;  // its stream_chunk_bytes
} mpk_dev_stream_entry;

// Everything one launch needs; passed by value as the kernel parameter. Pointers are device
// pointers (abort_flag and host_handovers: device aliases of mapped host memory).
typedef struct mpk_dev_args {
    const mpk_task_desc *tasks;        // (num_tasks), operands resolved to device addresses
    const mpk_event_desc *events;      // (num_events)
    const uint32_t *triggers;          // (num_triggers)
    const int32_t *worker_task_begin;  // (num_workers + 1) static schedule
    const int32_t *worker_tasks;
    int32_t num_tasks;
    int32_t num_events;
    int32_t num_workers;
    int32_t num_schedulers;            // 0: static mode
    int32_t num_begin_events;          // events [0, num_begin_events) fire when an iteration begins
    int32_t reserved;
    uint32_t end_event;
    uint32_t stall_event;              // test hook: increments of this event are dropped
    int32_t queue_capacity;            // slots per worker queue, a power of two
    int32_t event_queue_capacity;      // slots per scheduler queue, a power of two

    unsigned long long *counters;      // (num_events, MPK_DEV_COUNTER_STRIDE) never reset within a launch
    unsigned long long *worker_queue;  // (num_workers, queue_capacity): (iteration << 32 | task + 1)
    unsigned long long *worker_queue_tail;  // (num_workers) producers' reservation counters
    unsigned long long *event_queue;   // (num_schedulers, event_queue_capacity): (iteration << 32 | event + 1)
    unsigned long long *event_queue_tail;   // (num_schedulers)
    mpk_dev_control *control;
    mpk_dev_worker_status *worker_status;   // (num_workers)
    mpk_dev_prof *profile;             // (num_workers, profile_capacity) or NULL
    unsigned int *profile_count;       // (num_workers) records attempted (may exceed capacity)
    int32_t profile_capacity;
    int32_t profiling;

    mpk_batch *batch;                  // the batch blob
    int32_t *tokens;                   // (max_requests, max_seq_len)
    int32_t *step;                     // (max_requests)
    int32_t *input_ids;                // (max_batched_tokens)
    int32_t *output_ids;               // (max_batched_tokens)
    volatile int32_t *abort_flag;      // host_words[0]
    volatile int32_t *host_handovers;  // host_words[1]: the device's copy of control.handovers

    const mpk_dev_stream_entry *stream_plan;  // static mode: worker w's entries are
    const int32_t *stream_plan_begin;         //   stream_plan[stream_plan_begin[w] .. [w + 1])

    // Two kernels of one graph (runtime.cuh): the prompt kernel runs iterations that have prompt
    // rows, the decode kernel the others; a launch stops before an iteration that is the other's
    // (control.handovers). The host queues the run's launches alternately, prompt kernel first,
    // each one ahead of time; launch j > 0 leaves at once unless the run was handed to it, else
    // begins the iteration its predecessor prepared.
    int32_t prompt_kernel;   // 1: this launch is the prompt kernel's
    int32_t launch_index;    // j: the run's launches before this one (-1: a warm-up that leaves)
} mpk_dev_args;

#endif  // MPK_RUNTIME_CUDA_ABI_CUH
