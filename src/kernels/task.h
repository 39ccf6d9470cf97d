// task.h — the numbered task types and the fixed-width task descriptor, shared by the compiler,
// the CPU runtime and the generated CUDA megakernel. Host C11 and CUDA C++ both include it, so it
// holds only plain data and MPK_HD inline functions.
//
// The enum is append-only: numbers are stored in graph dumps and profiles. Never reorder it.
#ifndef MPK_KERNELS_TASK_H
#define MPK_KERNELS_TASK_H

#include <stdint.h>

#if defined(__CUDACC__)
#define MPK_HD __host__ __device__
#else
#define MPK_HD
#endif

#if defined(__cplusplus)
#define MPK_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define MPK_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

typedef enum mpk_task_type {
    MPK_TASK_NONE = 0,
    MPK_TASK_EMBED = 1,
    MPK_TASK_RMSNORM = 2,
    MPK_TASK_RMSNORM_LINEAR = 3,
    MPK_TASK_LINEAR = 4,
    MPK_TASK_LINEAR_RESIDUAL = 5,
    MPK_TASK_ATTENTION = 6,
    MPK_TASK_SILU_MUL = 7,
    MPK_TASK_SILU_MUL_LINEAR_RESIDUAL = 8,
    MPK_TASK_ALLREDUCE = 9,
    MPK_TASK_ARGMAX_PARTIAL = 10,
    MPK_TASK_ARGMAX_REDUCE = 11,
    MPK_TASK_SAMPLING = 12,
    MPK_TASK_ATTENTION_LINEAR = 13,
    MPK_TASK_RESIDUAL_RMSNORM_LINEAR = 14,
    MPK_TASK_TYPE_COUNT
} mpk_task_type;

#define MPK_TASK_MAX_OPERANDS 8
#define MPK_EVENT_NONE 0xffffffffu

// One grid point of one layer. Operands are addresses (host or device, resolved when the backend
// loads the graph) already offset to the task's column slice at row 0; rows [row_begin, row_end)
// of the token dimension are the task's, clipped at run time to the iteration's token count.
// Operand meaning and shape constants per type are listed at mpk_variant below.
typedef struct mpk_task_desc {
    uint16_t type;            // mpk_task_type
    uint16_t variant;         // index into the graph's variant table (shape constants)
    uint32_t layer;           // index of the layer that made this task
    uint32_t wait_event;      // event this task waits for, MPK_EVENT_NONE for none
    uint32_t trigger_begin;   // this task increments events triggers[trigger_begin ..
    uint32_t trigger_end;     //   .. trigger_end) of the graph when it completes
    int32_t row_begin;        // token rows of this task
    int32_t row_end;
    int32_t iparam[3];        // per-task integers (see mpk_variant)
    uint64_t operand[MPK_TASK_MAX_OPERANDS];
    // Weights never depend on activations, so a worker may start pulling a task's weights into
    // L2 before the task's event fires: prefetch_bytes of operand[prefetch_operand] (0: none).
    uint32_t prefetch_bytes;
    uint16_t prefetch_operand;
    // Set by a backend that streams weights through on-chip buffers (CUDA: stream.cuh): the
    // prefetch_bytes are read as stream_chunks chunks of stream_chunk_bytes (the last may be
    // shorter), each a whole number of weight rows. 0 chunks: the task reads its weights itself.
    uint16_t stream_chunks;
    uint32_t stream_chunk_bytes;
    uint32_t wait_count;      // num_triggers of wait_event (set by the CUDA backend; 0: none)
    uint64_t reserved[1];
} mpk_task_desc;

MPK_STATIC_ASSERT(sizeof(mpk_task_desc) == 128, "task descriptor is 128 bytes");

// Shape constants shared by the tasks of a layer; the CUDA generator makes them compile-time
// constants of one specialised task body (a "variant"). ld* are row strides in elements.
//
// type                         operand[]                                   p[]
// EMBED                        ids, weight(+col), out(+col)                cols, ld_w, ld_out, vocab
// RMSNORM                      x, weight, out                              H, ld_x, ld_out
// RMSNORM_LINEAR               x, norm_w, w(+row n0), out(+col n0)         K, n, ld_x, ld_w, ld_out,
//                                                                         sampled rows only (0/1)
// LINEAR                       x, w(+row n0), out(+col n0)                 K, n, ld_x, ld_w, ld_out
// LINEAR_RESIDUAL              x, w(+row), residual(+col), out(+col)       K, n, ld_x, ld_w, ld_res, ld_out
// ATTENTION                    qkv(+group), k_cache(+head), v_cache(+head),
//                              q_norm, k_norm, inv_freq, out(+group),      G, D, ld_qkv, ld_out,
//                              split workspace(+group) f32                 page_size, page_stride,
//                                                                          has_qnorm, has_knorm, has_rope,
//                                                                          heads per task, S, ws floats
//                                                                          per head; iparam[0] = split
// SILU_MUL                     gate(+col), up(+col), out(+col)             n, ld_in, ld_out
// SILU_MUL_LINEAR_RESIDUAL     in (gate; up at +I), w(+row), res(+col), out(+col)
//                                                                          I, n, ld_in, ld_w, ld_res, ld_out
// ARGMAX_PARTIAL               logits(+chunk), part_val(+p), part_idx(+p)  n, ld_logits, ld_part;
//                                                                          iparam[0] = chunk's first id
// ARGMAX_REDUCE                part_val, part_idx, out_ids                 P, ld_part
// SAMPLING                     logits, out_ids                             V, ld_logits
// ALLREDUCE                    in(+col), out(+col)                         n, ld_in, ld_out
// ATTENTION_LINEAR             qkv(+group), k_cache(+head), v_cache(+head),
//                              q_norm, k_norm, inv_freq, w(+row n0, +col of the group's heads),
//                              part(+col group * N + n0) f32              G, D, ld_qkv, ld_w,
//                                                                          page_size, page_stride,
//                                                                          has_qnorm, has_knorm, has_rope,
//                                                                          heads per task, n, ld_part;
//                                                                          iparam[0] = 1: this task
//                                                                          appends the rows' k/v
// RESIDUAL_RMSNORM_LINEAR      x, part f32, norm_w, w(+row n0), out(+col n0), x_out
//                                                                          K, n, ld_x, ld_w, ld_out,
//                                                                          P, ld_part, ld_xo;
//                                                                          iparam[0..1] = the x_out
//                                                                          columns [c0, c0 + count)
//                                                                          this task writes
// ATTENTION's p[10] = S > 1 splits a decode row's positions over up to S tasks per head group
// (flash-decoding, below), task iparam[0] = its split s, operand 7 the split
// workspace (+group) with p[11] floats per kv head; p[10] = 0 or 1: no split, operand 7 unused.
// f[0] is eps (norms) / norm eps (attention); f[1] the softmax scale (attention).
#define MPK_VARIANT_MAX_PARAMS 12

// ATTENTION_LINEAR keeps its heads' outputs of every row on chip (bf16) for the product: the
// layer refuses a batch whose rows * heads * G * D * 2 bytes exceed this.
#define MPK_ATTENTION_LINEAR_MAX_ROW_BYTES 65536
typedef struct mpk_variant {
    int32_t type;
    int32_t p[MPK_VARIANT_MAX_PARAMS];
    float f[3];
} mpk_variant;

MPK_STATIC_ASSERT(sizeof(mpk_variant) == 64, "variant is 64 bytes");

// ---- attention split over positions (flash-decoding) ---------------------------------------
// At batch 1 a kv head's attention is one task's work: at long contexts it is the step's
// bottleneck (bench/NOTES.md v11: 70% of Qwen3-8B's step at depth 4096 on 8 workers). The layer
// may split it over S tasks per head group. In an iteration whose batch is one row with n >= 2 *
// MPK_ATTENTION_SPLIT_MIN_POSITIONS positions to attend to, the first A = min(S, n / MIN) splits
// each take a contiguous range of positions, leave their unnormalised partial (acc[D], max, sum
// per query head) in the head's workspace and take a ticket; the A-th arrival combines the A
// partials into the output and sets the ticket back to 0; splits from A on do nothing. Any other
// iteration: split 0 runs the whole attention, the others do nothing. Both backends decide with
// mpk_attention_split_range, so they split alike. (The GPU also spreads an iteration of several
// rows over the splits, row by row — attention.cuh; a row's values do not depend on which task
// computes it, so the CPU keeps them in split 0.)
#define MPK_ATTENTION_MAX_SPLITS 64
#define MPK_ATTENTION_SPLIT_MIN_POSITIONS 64
// A kv head's workspace: a 32-bit ticket, padding to 16 bytes, then S slots of G units of
// (acc[D], max, sum) floats.
#define MPK_ATTENTION_SPLIT_HEADER 4
#define MPK_ATTENTION_SPLIT_WS_FLOATS(S, G, D) \
    (MPK_ATTENTION_SPLIT_HEADER + (int64_t)(S) * (G) * ((D) + 2))

// The number A of splits that attend this iteration (0: the iteration does not split), and split
// s's positions [*t0, *t1) of the batch's only row (position pos; rows rows), empty from s = A
// on. The last active split holds pos, so it alone appends the row's key and value.
static inline MPK_HD int32_t mpk_attention_split_range(int32_t S, int32_t s, int32_t rows, int32_t pos,
                                                       int32_t *t0, int32_t *t1) {
    *t0 = *t1 = 0;
    if (S <= 1 || rows != 1 || pos < 0) return 0;
    int32_t A = (pos + 1) / MPK_ATTENTION_SPLIT_MIN_POSITIONS;
    if (A > S) A = S;
    if (A < 2) return 0;
    const int32_t c = (pos + 1 + A - 1) / A;  // >= 64 > A - 1, so (A - 1) * c < pos + 1: none empty
    if (s < A) {
        *t0 = s * c;
        *t1 = *t0 + c < pos + 1 ? *t0 + c : pos + 1;
    }
    return A;
}

// The matrix products (the GEMV family): their rows stream weights, and on the GPU their prompt
// rows take the tensor cores (gemm.cuh) and the opt-in weight stream feeds them (stream.cuh).
static inline MPK_HD int mpk_task_is_product(int32_t type) {
    return type == MPK_TASK_LINEAR || type == MPK_TASK_LINEAR_RESIDUAL || type == MPK_TASK_RMSNORM_LINEAR ||
           type == MPK_TASK_RESIDUAL_RMSNORM_LINEAR || type == MPK_TASK_SILU_MUL_LINEAR_RESIDUAL;
}

// The tile block of a product task (compile.c: mark_tile_blocks): the GPU's prompt kernel gives
// each task of an aligned block of B tasks of its layer a share of the block's rows x columns;
// 0 when the layer has none. iparam[2] is then the task's index in its layer. (The fused
// RESIDUAL_RMSNORM_LINEAR keeps its x_out columns in iparam[0..1] and has no blocks: no marks.)
static inline MPK_HD int mpk_task_has_tile_marks(int32_t type) {
    return mpk_task_is_product(type) && type != MPK_TASK_RESIDUAL_RMSNORM_LINEAR;
}
static inline MPK_HD int32_t mpk_task_tile_block(const mpk_task_desc *d) {
    return mpk_task_has_tile_marks(d->type) && d->iparam[1] >= 2 ? d->iparam[1] : 0;
}

// Event flags.
#define MPK_EVENT_FLAG_JIT 1u  // its tasks are dispatched when it fires, not at iteration begin
#define MPK_EVENT_FLAG_END 2u  // the end-of-iteration event: firing it runs prepare_next_batch
#define MPK_EVENT_FLAG_BEGIN 4u  // triggered by the runtime at iteration begin

// A counter that never resets: it has fired for iteration i (1-based) once it reaches
// num_triggers * i. The tasks that wait on it are tasks[first_task, last_task) of the graph:
// the compiler numbers tasks so that they are contiguous.
typedef struct mpk_event_desc {
    uint32_t num_triggers;
    uint32_t first_task;
    uint32_t last_task;
    uint32_t flags;
} mpk_event_desc;

// The compiled graph: plain arrays, uploaded as data. Events [0, num_begin_events) are begin
// events (num_triggers 1, triggered once per iteration by the runtime when the batch is ready;
// one per layer that has tasks without producers, usually just the embedding); the last event is
// the end event (triggered by every sink task; it releases no tasks).
typedef struct mpk_graph {
    int32_t num_tasks;
    int32_t num_events;
    int32_t num_triggers;   // length of triggers[]
    int32_t num_variants;
    int32_t num_workers;    // the static schedule below is for this many workers
    int32_t num_begin_events;
    mpk_task_desc *tasks;        // (num_tasks), in an order that is a topological order
    mpk_event_desc *events;      // (num_events)
    uint32_t *triggers;          // (num_triggers) event ids
    mpk_variant *variants;       // (num_variants)
    int32_t *worker_task_begin;  // (num_workers + 1) static schedule: worker w runs
    int32_t *worker_tasks;       // worker_tasks[worker_task_begin[w] .. [w+1]) in order
} mpk_graph;

#endif  // MPK_KERNELS_TASK_H
