// internal.h — the kernel object behind the opaque mpk_kernel handle: tensors, layers, the task
// records the compiler works on, and the backend interface. Shared by src/core, src/compiler and
// the runtimes; never included by users.
#ifndef MPK_CORE_INTERNAL_H
#define MPK_CORE_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "mpk.h"
#include "kernels/task.h"
#include "runtime/batch.h"

// ---- tensors -----------------------------------------------------------------------------------

typedef enum mpk_tensor_kind {
    MPK_TENSOR_HOST = 0,    // attached host memory (not owned)
    MPK_TENSOR_DEVICE = 1,  // attached device memory (not owned)
    MPK_TENSOR_NEW = 2,     // allocated by the backend at compile
    MPK_TENSOR_META = 3,    // runtime-owned meta tensor (tokens, step, input/output ids)
} mpk_tensor_kind;

struct mpk_tensor {
    int32_t id;              // index in kernel->tensors
    int32_t ndim;
    int64_t dims[MPK_MAX_DIMS];
    int64_t strides[MPK_MAX_DIMS];  // in elements, row-major
    mpk_dtype dtype;
    mpk_tensor_kind kind;
    mpk_io_category io;
    char *name;
    size_t bytes;
    void *host;              // host memory: attached, or the CPU backend's allocation
    void *device;            // device memory (CUDA backend)
    int32_t zero_each_run;   // the backends zero it at every run start (a layer's counters that
                             // an interrupted run could leave non-zero: the attention split's tickets)
};

// ---- layers and task records -------------------------------------------------------------------

// A rectangular slice of a tensor that a task reads or writes: [lo, hi) per axis.
typedef struct mpk_access {
    int32_t tensor;
    int32_t write;
    int64_t lo[MPK_MAX_DIMS];
    int64_t hi[MPK_MAX_DIMS];
} mpk_access;

typedef struct mpk_layer {
    int32_t op;              // mpk_task_type of its tasks (argmax makes two layers)
    char *name;
    mpk_dim3 grid;
    mpk_dim3 block;
    int32_t first_task;      // task records [first_task, first_task + num_tasks) in build order
    int32_t num_tasks;
} mpk_layer;

// A task as the layer functions emit it: its descriptor with operands given as (tensor, byte
// offset) — resolved into addresses by each backend — and the slices it reads and writes.
typedef struct mpk_task_rec {
    mpk_task_desc desc;                        // operand[i] holds a byte offset until resolved
    int32_t operand_tensor[MPK_TASK_MAX_OPERANDS];  // -1 where unused
    int32_t first_access;
    int32_t num_accesses;
    int64_t bytes;                             // bytes read + written, for profiles
} mpk_task_rec;

// ---- backends ----------------------------------------------------------------------------------

typedef struct mpk_backend_ops {
    const char *name;
    // At mpk_kernel_create: check the backend can run with these params and fill in defaults
    // that depend on the device (params.num_workers when 0). Fails when the backend is unusable.
    mpk_status (*configure)(mpk_kernel *kernel);
    // After the graph is compiled: allocate tensors, upload, build. kernel->graph is final.
    mpk_status (*load)(mpk_kernel *kernel);
    // Runs iterations until every request finished (kernel->batch holds the requests).
    mpk_status (*run)(mpk_kernel *kernel, mpk_token_fn on_tokens, void *user);
    mpk_status (*tensor_read)(mpk_kernel *kernel, const mpk_tensor *t, void *dst, size_t bytes);
    mpk_status (*tensor_write)(mpk_kernel *kernel, mpk_tensor *t, const void *src, size_t bytes);
    void (*destroy)(mpk_kernel *kernel);
    // Optional: the device's name and the bandwidth a plain streaming read reaches, measured now.
    mpk_status (*device_info)(mpk_kernel *kernel, char *name, size_t name_len, double *read_bytes_per_s);
} mpk_backend_ops;

// ---- the kernel --------------------------------------------------------------------------------

#define MPK_ERROR_LEN 1024

struct mpk_kernel {
    mpk_kernel_params params;
    char error[MPK_ERROR_LEN];
    int compiled;
    int running;

    mpk_tensor **tensors;
    int32_t num_tensors, cap_tensors;
    int32_t meta[4];                 // tensor ids of the mpk_meta tensors

    mpk_layer *layers;
    int32_t num_layers, cap_layers;
    mpk_task_rec *recs;              // build order
    int32_t num_recs, cap_recs;
    mpk_access *accesses;
    int32_t num_accesses, cap_accesses;
    mpk_variant *variants;
    int32_t num_variants, cap_variants;

    // Compiled graph (host copy). tasks[i].operand[] hold byte offsets into
    // tensors[task_operand_tensor[i * MPK_TASK_MAX_OPERANDS + j]]; backends resolve them.
    mpk_graph graph;
    int32_t *task_operand_tensor;    // (num_tasks * MPK_TASK_MAX_OPERANDS)
    int32_t *task_rec;               // (num_tasks): the build-order record of each task
    int64_t *task_bytes;             // (num_tasks)
    mpk_graph_stats stats;

    // Requests and batch state: the host copy of the blob the runtime works on.
    mpk_batch *batch;
    mpk_run_stats run_stats;

    // Profiling results (host), filled by the backend after a profiled run.
    mpk_profile_record *profile;
    int64_t profile_count;
    int profile_overflowed;

    const mpk_backend_ops *backend;
    mpk_backend resolved_backend;
    void *backend_state;
};

// Sets the kernel's error message (printf-style) and returns `status`.
mpk_status mpk_fail(mpk_kernel *kernel, mpk_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void mpk_log(const mpk_kernel *kernel, mpk_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

// Runs the compiler over the layers (src/compiler/compile.c).
mpk_status mpk_compiler_run(mpk_kernel *kernel);
// Proves the compiled graph's dependencies and freedom from deadlock (src/compiler/check.c).
mpk_status mpk_graph_check(mpk_kernel *kernel);

// Backends.
const mpk_backend_ops *mpk_cpu_backend(void);
const mpk_backend_ops *mpk_cuda_backend(void);
// 1 when a CUDA device and a toolkit are usable (used to resolve MPK_BACKEND_AUTO).
int mpk_cuda_available(const mpk_kernel *kernel);

#endif  // MPK_CORE_INTERNAL_H
