// mpk.h — the public API of mpk, a compiler and runtime that turns the decode loop of a decoder
// LLM into one persistent "megakernel" (GPU) or one pool of worker threads (CPU).
// This header is the contract: the CLI, the model builders and the Python binding use nothing else.
//
// Conventions: every fallible call returns an mpk_status and hands objects back through
// out-pointers; on failure mpk_last_error(kernel) holds a sentence naming the problem. Freeing NULL
// is a no-op. The library never prints and never exits; it logs through the callback in the params.
#ifndef MPK_H
#define MPK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MPK_VERSION_MAJOR 0
#define MPK_VERSION_MINOR 1
#define MPK_VERSION_PATCH 0
#define MPK_VERSION_STRING "0.1.0"

// The version the library was built as ("0.1.0").
const char *mpk_version(void);

// ---- status ----------------------------------------------------------------------------------

typedef enum mpk_status {
    MPK_OK = 0,
    MPK_ERR_INVALID_ARG,   // a NULL where an object is needed, a value out of range
    MPK_ERR_SHAPE,         // tensor shapes or grids that do not fit together
    MPK_ERR_STATE,         // call out of order (compile twice, run before compile, ...)
    MPK_ERR_NOMEM,         // host or device allocation failed
    MPK_ERR_IO,            // a file could not be opened, read or mapped
    MPK_ERR_FORMAT,        // a file is malformed (corrupt header, bad JSON, ...)
    MPK_ERR_UNSUPPORTED,   // valid input this build does not handle (model type, dtype, backend)
    MPK_ERR_CUDA,          // a CUDA driver/runtime call failed, or no GPU when one was required
    MPK_ERR_TIMEOUT,       // the kernel missed its deadline; the message names the stuck event
    MPK_ERR_LIMIT,         // a capacity was exceeded (context length, requests, KV pages, ...)
    MPK_ERR_NOT_FOUND,     // a named thing (tensor, file, token) does not exist
    MPK_ERR_INTERNAL,      // an invariant of the library broke: a bug, please report it
} mpk_status;

// A constant English name for a status ("shape mismatch"); never NULL.
const char *mpk_status_string(mpk_status status);

// ---- basic types -----------------------------------------------------------------------------

typedef enum mpk_dtype {
    MPK_BF16 = 0,
    MPK_F16 = 1,
    MPK_F32 = 2,
    MPK_I32 = 3,
} mpk_dtype;

// Bytes per element of a dtype (0 for an unknown value).
size_t mpk_dtype_size(mpk_dtype dtype);
const char *mpk_dtype_name(mpk_dtype dtype);

typedef enum mpk_backend {
    MPK_BACKEND_AUTO = 0,  // CUDA when a usable GPU and toolkit are present, else CPU
    MPK_BACKEND_CPU = 1,
    MPK_BACKEND_CUDA = 2,
} mpk_backend;

typedef enum mpk_io_category {
    MPK_IO_DEVICE = 0,     // ordinary memory of the backend
    MPK_IO_SYMMETRIC = 1,  // reachable from the other ranks (for all-reduce)
} mpk_io_category;

typedef enum mpk_log_level {
    MPK_LOG_DEBUG = 0,
    MPK_LOG_INFO = 1,
    MPK_LOG_WARN = 2,
    MPK_LOG_ERROR = 3,
} mpk_log_level;

typedef void (*mpk_log_fn)(void *user, mpk_log_level level, const char *message);

// A launch shape as in CUDA. Each layer function says how grid.x/.y split its tensors.
typedef struct mpk_dim3 {
    int32_t x, y, z;
} mpk_dim3;

typedef struct mpk_kernel mpk_kernel;  // opaque: a graph under construction, then compiled
typedef struct mpk_tensor mpk_tensor;  // opaque: owned by its kernel, freed with it

// ---- the kernel --------------------------------------------------------------------------------

#define MPK_MAX_EOS_TOKENS 8

typedef struct mpk_kernel_params {
    int32_t world_size;             // ranks in tensor parallelism (1)
    int32_t rank;                   // this process's rank (0)
    int32_t num_workers;            // worker blocks (GPU) or threads (CPU); 0 = from the device
    int32_t num_local_schedulers;   // scheduler warps/threads; 0 (default) = static schedule
    int32_t num_remote_schedulers;  // schedulers for events from other ranks (0)
    int32_t max_seq_len;            // longest prompt + generation of one request (512)
    int32_t max_requests;           // request slots: rows of the tokens meta tensor (1)
    int32_t max_batched_tokens;     // token rows processed per iteration (64)
    int32_t page_size;              // tokens per KV-cache page (64)
    int32_t num_pages;              // KV-cache pages in all; 0 = enough for every slot at max_seq_len
    mpk_backend backend;            // (AUTO)
    int32_t jit_dispatch;           // 1: every event launches its tasks when it fires; 0 (default):
                                    // each iteration's tasks are dispatched when it begins
    int32_t profiling;              // record a timeline of every task (0)
    int32_t profile_capacity;       // task records per worker when profiling (65536)
    int32_t eos_token_ids[MPK_MAX_EOS_TOKENS];  // tokens that end a request
    int32_t num_eos_token_ids;
    double timeout_s;               // deadline of one mpk_run; 0 = none (600)
    int32_t cuda_device;            // GPU ordinal (0)
    const char *cuda_arch;          // compile for this arch ("sm_90a") instead of the device's;
                                    // with it, mpk_compile needs no GPU and mpk_run is refused
    const char *cache_dir;          // JIT cache; NULL = $MPK_CACHE_DIR or ~/.cache/mpk
    mpk_log_fn log;                 // NULL = silent
    void *log_user;
} mpk_kernel_params;

// Defaults as documented beside each field.
mpk_kernel_params mpk_kernel_default_params(void);

// Creates an empty kernel. The params are copied; strings in them must outlive the kernel.
// On failure *out is NULL. Errors before a kernel exists go to params->log.
mpk_status mpk_kernel_create(const mpk_kernel_params *params, mpk_kernel **out);

// Frees the kernel, its tensors and all backend memory. NULL is a no-op.
void mpk_kernel_free(mpk_kernel *kernel);

// The message of the last failed call on this kernel ("" when none). Valid until the next call.
const char *mpk_last_error(const mpk_kernel *kernel);

// The backend the kernel runs on (chosen at mpk_kernel_create: AUTO resolves there).
mpk_backend mpk_kernel_backend(const mpk_kernel *kernel);

// The kernel's parameters with every default resolved (num_workers, num_pages, ...).
const mpk_kernel_params *mpk_kernel_get_params(const mpk_kernel *kernel);

// ---- tensors -----------------------------------------------------------------------------------

#define MPK_MAX_DIMS 4

// Binds existing host memory (row-major, ndim <= 4). The kernel does not copy or free it on the
// CPU backend; the CUDA backend uploads it once at mpk_compile. The memory must outlive the kernel.
mpk_status mpk_attach_input(mpk_kernel *kernel, void *data, int32_t ndim, const int64_t *dims,
                            mpk_dtype dtype, const char *name, mpk_tensor **out);

// Binds existing device memory on the CUDA backend (zero copy).
mpk_status mpk_attach_device_input(mpk_kernel *kernel, void *device_data, int32_t ndim,
                                   const int64_t *dims, mpk_dtype dtype, const char *name,
                                   mpk_tensor **out);

// A tensor the kernel allocates (zeroed) at mpk_compile. Names are unique per kernel.
mpk_status mpk_new_tensor(mpk_kernel *kernel, int32_t ndim, const int64_t *dims, mpk_dtype dtype,
                          const char *name, mpk_io_category io, mpk_tensor **out);

// Looks a tensor up by name.
mpk_status mpk_tensor_find(mpk_kernel *kernel, const char *name, mpk_tensor **out);

int32_t mpk_tensor_ndim(const mpk_tensor *tensor);
int64_t mpk_tensor_dim(const mpk_tensor *tensor, int32_t axis);
mpk_dtype mpk_tensor_dtype(const mpk_tensor *tensor);
const char *mpk_tensor_name(const mpk_tensor *tensor);

// Copies a tensor's contents to host memory of at least its size (after mpk_compile).
mpk_status mpk_tensor_read(mpk_kernel *kernel, const mpk_tensor *tensor, void *dst, size_t bytes);
// Copies host memory into a tensor (after mpk_compile, between runs).
mpk_status mpk_tensor_write(mpk_kernel *kernel, mpk_tensor *tensor, const void *src, size_t bytes);

// The meta tensors the runtime owns, as in the seed's PersistentKernel:
typedef enum mpk_meta {
    MPK_META_TOKENS = 0,      // (max_requests, max_seq_len) i32: each request's prompt + generation
    MPK_META_STEP = 1,        // (max_requests) i32: tokens held in each request's row
    MPK_META_INPUT_IDS = 2,   // (max_batched_tokens) i32: the token of each row this iteration
    MPK_META_OUTPUT_IDS = 3,  // (max_batched_tokens) i32: the token sampled from each row
} mpk_meta;

mpk_status mpk_meta_tensor(mpk_kernel *kernel, mpk_meta which, mpk_tensor **out);

// ---- layers ------------------------------------------------------------------------------------
// Activations are (max_batched_tokens, features) bf16; only the first num_tokens rows of an
// iteration are computed. Unless a layer says otherwise, grid.x splits the output features into
// equal slices and grid.y splits the token rows; grid.z must be 1. A grid that does not divide the
// shape is an error. `block` is the thread-block shape on the GPU ({0,0,0} = the task's default);
// the CPU backend ignores it. `name` (may be NULL) appears in errors, dumps and profiles.

// output[t, :] = weight[input_ids[t], :].   input_ids (T) i32, weight (V, H), output (T, H).
mpk_status mpk_embed_layer(mpk_kernel *kernel, const mpk_tensor *input_ids,
                           const mpk_tensor *weight, mpk_tensor *output, mpk_dim3 grid,
                           mpk_dim3 block, const char *name);

// output = x / rms(x) * weight over the last axis. input, output (T, H); weight (H).
// grid.x must be 1 (a row is normalised by one task); grid.y splits rows.
mpk_status mpk_rmsnorm_layer(mpk_kernel *kernel, const mpk_tensor *input, const mpk_tensor *weight,
                             mpk_tensor *output, float eps, mpk_dim3 grid, mpk_dim3 block,
                             const char *name);

// output = rmsnorm(input) @ linear_weight^T; every task recomputes the norm of its rows.
// input (T, K), norm_weight (K), linear_weight (N, K), output (T, N).
mpk_status mpk_rmsnorm_linear_layer(mpk_kernel *kernel, const mpk_tensor *input,
                                    const mpk_tensor *norm_weight,
                                    const mpk_tensor *linear_weight, mpk_tensor *output, float eps,
                                    mpk_dim3 grid, mpk_dim3 block, const char *name);

// As mpk_rmsnorm_linear_layer, for only the rows whose tokens an iteration samples: the last row
// of each request that samples (every decode row; a prompt's last row once the whole prompt is
// in). The LM head of generation: a prompt chunk needs one row of logits, not one per token.
// The other rows of output are unspecified (kept, or computed where that is cheaper).
mpk_status mpk_rmsnorm_linear_sampled_layer(mpk_kernel *kernel, const mpk_tensor *input,
                                            const mpk_tensor *norm_weight,
                                            const mpk_tensor *linear_weight, mpk_tensor *output,
                                            float eps, mpk_dim3 grid, mpk_dim3 block, const char *name);

// output = input @ weight^T.   input (T, K), weight (N, K), output (T, N).
mpk_status mpk_linear_layer(mpk_kernel *kernel, const mpk_tensor *input, const mpk_tensor *weight,
                            mpk_tensor *output, mpk_dim3 grid, mpk_dim3 block, const char *name);

// output = input @ weight^T + residual.  residual, output (T, N); output may be residual itself.
mpk_status mpk_linear_with_residual_layer(mpk_kernel *kernel, const mpk_tensor *input,
                                          const mpk_tensor *weight, const mpk_tensor *residual,
                                          mpk_tensor *output, mpk_dim3 grid, mpk_dim3 block,
                                          const char *name);

// Attention over a paged KV cache, with the token's K and V appended to the cache first.
// qkv (T, Hkv*(G+2)*D) bf16, grouped by kv head: for kv head h, G = Hq/Hkv query heads, then
// k_h, then v_h, each D wide. k_cache, v_cache (num_pages, Hkv, page_size, D) bf16.
// q_norm, k_norm (D) bf16 or NULL: per-head RMSNorm before RoPE (Qwen3).
// rope_inv_freq (D/2) f32 or NULL: RoPE (rotate-half form) at each row's position.
// output (T, Hq*D). grid.x splits the kv heads (Hkv % grid.x == 0). grid.y = S (1 to 64) splits
// the positions of a lone decode row over up to S tasks per head group (flash-decoding): when
// the row attends to n >= 128 positions, min(S, n / 64) of them take a contiguous range each and
// the last to finish combines them; in other iterations the first of the S runs the whole
// attention. The layer then adds a workspace tensor named "<layer name>.split_workspace".
typedef struct mpk_attention_desc {
    const mpk_tensor *qkv;
    mpk_tensor *k_cache;
    mpk_tensor *v_cache;
    const mpk_tensor *q_norm;
    const mpk_tensor *k_norm;
    const mpk_tensor *rope_inv_freq;
    mpk_tensor *output;
    int32_t num_q_heads;
    int32_t num_kv_heads;
    int32_t head_dim;
    float norm_eps;
    float scale;  // softmax scale; 0 = 1/sqrt(head_dim)
} mpk_attention_desc;

mpk_status mpk_attention_layer(mpk_kernel *kernel, const mpk_attention_desc *desc, mpk_dim3 grid,
                               mpk_dim3 block, const char *name);

// Attention followed by its output projection, in one stage: the heads' outputs never leave the
// SM. Task (x, y) runs the attention of kv heads [y * Hkv / grid.y, (y + 1) * Hkv / grid.y) for
// every row (as mpk_attention_layer; desc->output is not used and may be NULL) and multiplies
// those heads' outputs (rounded to bf16) by its slice of weight (N, Hq*D): output columns
// [x * N / grid.x, (x + 1) * N / grid.x), input columns of its heads. It writes fp32 partial sums:
// partial (T, grid.y * N) f32, group y in columns [y * N, (y + 1) * N). The full product is the
// sum over the groups, which mpk_residual_rmsnorm_linear_layer adds in group order. Every task
// of a group runs its heads' attention (at decode this is latency, not work, and saves the
// hand-off between attention and projection); the first of each group appends the keys and
// values to the cache. Needs T * (Hkv / grid.y) * G * D * 2 bytes <= 64 KiB (the outputs
// kept on chip) and G * D a multiple of 8.
mpk_status mpk_attention_linear_layer(mpk_kernel *kernel, const mpk_attention_desc *desc,
                                      const mpk_tensor *weight, mpk_tensor *partial,
                                      mpk_dim3 grid, mpk_dim3 block, const char *name);

// residual_out = bf16(residual + partial[:, 0:N] + partial[:, N:2N] + ...), the fp32 partial
// sums of mpk_attention_linear_layer added in group order; then output = rmsnorm(residual_out)
// @ linear_weight^T as mpk_rmsnorm_linear_layer. residual (T, K) bf16, partial (T, P * K) f32,
// norm_weight (K), linear_weight (N, K), output (T, N), residual_out (T, K). Task x writes
// columns [x * K / grid.x, (x + 1) * K / grid.x) of residual_out (none when grid.x > K and
// that range is empty).
mpk_status mpk_residual_rmsnorm_linear_layer(mpk_kernel *kernel, const mpk_tensor *residual,
                                             const mpk_tensor *partial,
                                             const mpk_tensor *norm_weight,
                                             const mpk_tensor *linear_weight, mpk_tensor *output,
                                             mpk_tensor *residual_out, float eps, mpk_dim3 grid,
                                             mpk_dim3 block, const char *name);

// output = silu(gate) * up, where input (T, 2I) holds gate in columns [0, I) and up in [I, 2I).
// output (T, I).
mpk_status mpk_silu_mul_layer(mpk_kernel *kernel, const mpk_tensor *input, mpk_tensor *output,
                              mpk_dim3 grid, mpk_dim3 block, const char *name);

// output = (silu(gate) * up) @ weight^T + residual.  input (T, 2I) as above, weight (N, I),
// residual, output (T, N).
mpk_status mpk_silu_mul_linear_with_residual_layer(mpk_kernel *kernel, const mpk_tensor *input,
                                                   const mpk_tensor *weight,
                                                   const mpk_tensor *residual, mpk_tensor *output,
                                                   mpk_dim3 grid, mpk_dim3 block,
                                                   const char *name);

// output = sum over ranks of input. Needs world_size > 1 and a multi-GPU backend.
mpk_status mpk_allreduce_layer(mpk_kernel *kernel, const mpk_tensor *input, mpk_tensor *output,
                               mpk_dim3 grid, mpk_dim3 block, const char *name);

// output_ids[t] = argmax over the vocabulary of logits[t, :] (lowest index on ties), for the rows
// whose tokens an iteration samples (as the sampling layer: every decode row, a prompt's last row;
// the others are unspecified). logits (T, V) bf16, output_ids (T) i32. grid.x splits the
// vocabulary into partial maxima that one reduce task per row block combines; grid.y splits rows.
mpk_status mpk_argmax_layer(mpk_kernel *kernel, const mpk_tensor *logits, mpk_tensor *output_ids,
                            mpk_dim3 grid, mpk_dim3 block, const char *name);

// output_ids[t] = a token sampled from logits[t, :] with the request's sampling settings
// (temperature, top-k, top-p, seed; temperature 0 is argmax). Deterministic for a given seed,
// request and position, on every backend. grid.x must be 1; grid.y splits rows.
mpk_status mpk_sampling_layer(mpk_kernel *kernel, const mpk_tensor *logits, mpk_tensor *output_ids,
                              mpk_dim3 grid, mpk_dim3 block, const char *name);

// ---- compile and run ---------------------------------------------------------------------------

// Turns the layers into the task graph, allocates tensors and (CUDA) builds and loads the
// megakernel. Once only; no layers or tensors may be added afterwards.
mpk_status mpk_compile(mpk_kernel *kernel);

// A human-readable dump of the compiled task graph (layers, tasks, events, which tasks each event
// releases) as a string the caller frees with mpk_free_string.
mpk_status mpk_graph_dump_string(mpk_kernel *kernel, char **out);
void mpk_free_string(char *s);

// Counts of the compiled graph.
typedef struct mpk_graph_stats {
    int32_t num_layers;
    int32_t num_tasks;
    int32_t num_events;
    int32_t num_variants;
    int64_t num_dependencies_exact;    // producer->consumer pairs before reduction
    int64_t num_dependencies_reduced;  // after transitive reduction
    double compile_seconds;
} mpk_graph_stats;

mpk_status mpk_graph_get_stats(const mpk_kernel *kernel, mpk_graph_stats *out);

// ---- requests ----------------------------------------------------------------------------------

typedef struct mpk_sampling_params {
    float temperature;   // 0 = greedy (argmax)
    int32_t top_k;       // 0 = no limit
    float top_p;         // 1 = no limit
    uint64_t seed;
} mpk_sampling_params;

mpk_sampling_params mpk_sampling_default_params(void);  // greedy

// Queues a request for the next mpk_run: its prompt, how many tokens to generate at most and how
// to sample. The prompt is copied. *out_id (may be NULL) is its slot, a row of MPK_META_TOKENS.
// Fails with MPK_ERR_LIMIT when all slots are taken or prompt + max_new_tokens > max_seq_len.
mpk_status mpk_request_add(mpk_kernel *kernel, const int32_t *prompt, int32_t prompt_len,
                           int32_t max_new_tokens, const mpk_sampling_params *sampling,
                           int32_t *out_id);

// Called from mpk_run on the host whenever tokens have been generated, when the backend can
// stream (CPU: after each iteration; CUDA: every few ms while the kernel runs, from the thread
// that called mpk_run). Tokens of a request arrive in
// order; `finished` is set on the last call for that request.
typedef void (*mpk_token_fn)(void *user, int32_t request, const int32_t *tokens, int32_t count,
                             int finished);

// Runs the megakernel until every queued request finished: all decode iterations happen inside
// the one launch (or thread pool). on_tokens may be NULL.
mpk_status mpk_run(mpk_kernel *kernel, mpk_token_fn on_tokens, void *user);

// After mpk_run: a request's full row (prompt then generated tokens). *tokens points into the
// kernel and stays valid until the next mpk_run or mpk_request_clear.
mpk_status mpk_request_tokens(mpk_kernel *kernel, int32_t request, const int32_t **tokens,
                              int32_t *prompt_len, int32_t *total_len);

// Forgets all requests and empties the KV cache, so the slots can be reused.
mpk_status mpk_request_clear(mpk_kernel *kernel);

// Timings of the last mpk_run.
typedef struct mpk_run_stats {
    int32_t iterations;          // graph iterations executed
    int32_t prefill_iterations;  // iterations that processed prompt tokens
    int64_t prompt_tokens;       // prompt tokens processed
    int64_t generated_tokens;    // tokens sampled
    double seconds;              // wall time of the run
    double prefill_seconds;      // time of iterations that processed prompt tokens
    double decode_seconds;       // time of iterations that only decoded
    int64_t decode_tokens;       // tokens sampled by iterations that only decoded
    int32_t handovers;           // CUDA: times the run passed between the prompt and decode kernels
    double handover_seconds;     // CUDA: device time those hand-overs took (in neither time above)
} mpk_run_stats;

mpk_status mpk_run_get_stats(const mpk_kernel *kernel, mpk_run_stats *out);

// ---- the device ---------------------------------------------------------------------------------

// The device the kernel runs on ("NVIDIA H100 80GB HBM3", the CPU model) and, when
// read_bytes_per_s is non-NULL, the read bandwidth a plain streaming-read kernel reaches on it,
// measured by this call (it takes up to a second). After mpk_compile.
mpk_status mpk_device_info(mpk_kernel *kernel, char *name, size_t name_len, double *read_bytes_per_s);

// ---- profiling ---------------------------------------------------------------------------------

typedef struct mpk_profile_record {
    uint16_t task_type;     // the mpk_task_type of the task (see mpk_task_type_name)
    uint16_t worker;
    int32_t task;           // task index in the compiled graph
    int32_t layer;          // layer index
    int32_t iteration;      // 1-based
    int64_t start_ns;       // backend clock, ns
    int64_t end_ns;
    int64_t wait_ns;        // time spent waiting for the task's event before start
    int32_t inputs_ns;      // from start until the task's inputs were on chip (GPU: staged GEMV
                            // rows, attention's k/v appended), -1 when the backend does not say
    int32_t body_ns;        // from start until its outputs were written, before they are
                            // published to the waiting tasks; -1 when the backend does not say
} mpk_profile_record;

// After a profiled mpk_run: the records in the order each worker ran them. *records points into
// the kernel. *overflowed is set when some worker ran out of buffer (records were dropped).
mpk_status mpk_profile_get(mpk_kernel *kernel, const mpk_profile_record **records,
                           int64_t *count, int *overflowed);

const char *mpk_task_type_name(int32_t task_type);
const char *mpk_layer_name(const mpk_kernel *kernel, int32_t layer);
// Bytes of memory a task reads and writes (weights + activations), for GB/s in profiles.
int64_t mpk_task_bytes(const mpk_kernel *kernel, int32_t task);
// Bytes of weights a task streams (its slice of a weight matrix; 0 for a task without one, e.g.
// attention): what a decode step has to read whatever the batch, the floor of its time.
int64_t mpk_task_weight_bytes(const mpk_kernel *kernel, int32_t task);

#ifdef __cplusplus
}
#endif

// The model loaders and builders, and the tokenizer and chat templates, are part of the same API.
#include "mpk/model.h"
#include "mpk/tokenizer.h"

#endif  // MPK_H
