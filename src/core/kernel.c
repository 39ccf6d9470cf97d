// kernel.c — the mpk_kernel object: parameters, errors and logging, tensors and meta tensors,
// compile / run entry points that hand over to the compiler and the chosen backend.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

// ---- versions, names ---------------------------------------------------------------------------

const char *mpk_version(void) { return MPK_VERSION_STRING; }

const char *mpk_status_string(mpk_status status) {
    switch (status) {
    case MPK_OK: return "ok";
    case MPK_ERR_INVALID_ARG: return "invalid argument";
    case MPK_ERR_SHAPE: return "shape mismatch";
    case MPK_ERR_STATE: return "call out of order";
    case MPK_ERR_NOMEM: return "out of memory";
    case MPK_ERR_IO: return "I/O error";
    case MPK_ERR_FORMAT: return "malformed input";
    case MPK_ERR_UNSUPPORTED: return "unsupported";
    case MPK_ERR_CUDA: return "CUDA error";
    case MPK_ERR_TIMEOUT: return "timeout";
    case MPK_ERR_LIMIT: return "limit exceeded";
    case MPK_ERR_NOT_FOUND: return "not found";
    case MPK_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

size_t mpk_dtype_size(mpk_dtype dtype) {
    switch (dtype) {
    case MPK_BF16: case MPK_F16: return 2;
    case MPK_F32: case MPK_I32: return 4;
    }
    return 0;
}

const char *mpk_dtype_name(mpk_dtype dtype) {
    switch (dtype) {
    case MPK_BF16: return "bf16";
    case MPK_F16: return "f16";
    case MPK_F32: return "f32";
    case MPK_I32: return "i32";
    }
    return "?";
}

// ---- errors and logging ------------------------------------------------------------------------

mpk_status mpk_fail(mpk_kernel *kernel, mpk_status status, const char *fmt, ...) {
    if (!kernel) return status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(kernel->error, sizeof kernel->error, fmt, ap);
    va_end(ap);
    mpk_log(kernel, MPK_LOG_DEBUG, "error: %s", kernel->error);
    return status;
}

void mpk_log(const mpk_kernel *kernel, mpk_log_level level, const char *fmt, ...) {
    if (!kernel || !kernel->params.log) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    kernel->params.log(kernel->params.log_user, level, msg);
}

const char *mpk_last_error(const mpk_kernel *kernel) { return kernel ? kernel->error : ""; }

// ---- params, create, free ----------------------------------------------------------------------

mpk_kernel_params mpk_kernel_default_params(void) {
    mpk_kernel_params p;
    memset(&p, 0, sizeof p);
    p.world_size = 1;
    p.rank = 0;
    p.num_workers = 0;
    p.num_local_schedulers = 0;  // static schedule: fastest on both backends (bench/NOTES.md)
    p.num_remote_schedulers = 0;
    p.max_seq_len = 512;
    p.max_requests = 1;
    p.max_batched_tokens = 64;
    p.page_size = 64;
    p.num_pages = 0;
    p.backend = MPK_BACKEND_AUTO;
    p.jit_dispatch = 0;
    p.profiling = 0;
    p.profile_capacity = 65536;
    p.num_eos_token_ids = 0;
    p.timeout_s = 600.0;
    p.cuda_device = 0;
    return p;
}

static mpk_status check_params(const mpk_kernel_params *p, char *msg, size_t len) {
#define BAD(...) do { snprintf(msg, len, __VA_ARGS__); return MPK_ERR_INVALID_ARG; } while (0)
    if (p->world_size < 1) BAD("world_size must be >= 1 (got %d)", p->world_size);
    if (p->rank < 0 || p->rank >= p->world_size)
        BAD("rank %d is outside [0, world_size=%d)", p->rank, p->world_size);
    if (p->num_workers < 0) BAD("num_workers must be >= 0 (got %d)", p->num_workers);
    if (p->num_local_schedulers < 0 || p->num_remote_schedulers < 0)
        BAD("scheduler counts must be >= 0");
    if (p->max_seq_len < 1 || p->max_seq_len > (1 << 24))
        BAD("max_seq_len %d is outside [1, 16777216]", p->max_seq_len);
    if (p->max_requests < 1 || p->max_requests > 65536)
        BAD("max_requests %d is outside [1, 65536]", p->max_requests);
    if (p->max_batched_tokens < 1 || p->max_batched_tokens > (1 << 20))
        BAD("max_batched_tokens %d is outside [1, 1048576]", p->max_batched_tokens);
    if (p->page_size < 1 || p->page_size > (1 << 16))
        BAD("page_size %d is outside [1, 65536]", p->page_size);
    if (p->num_pages < 0) BAD("num_pages must be >= 0 (got %d)", p->num_pages);
    if (p->backend != MPK_BACKEND_AUTO && p->backend != MPK_BACKEND_CPU &&
        p->backend != MPK_BACKEND_CUDA)
        BAD("unknown backend %d", (int)p->backend);
    if (p->num_eos_token_ids < 0 || p->num_eos_token_ids > MPK_MAX_EOS_TOKENS)
        BAD("num_eos_token_ids %d is outside [0, %d]", p->num_eos_token_ids, MPK_MAX_EOS_TOKENS);
    if (p->profiling && p->profile_capacity < 1)
        BAD("profile_capacity must be >= 1 when profiling");
    if (p->timeout_s < 0) BAD("timeout_s must be >= 0");
    return MPK_OK;
#undef BAD
}

mpk_status mpk_kernel_create(const mpk_kernel_params *params, mpk_kernel **out) {
    if (!out) return MPK_ERR_INVALID_ARG;
    *out = NULL;
    mpk_kernel_params p = params ? *params : mpk_kernel_default_params();
    char msg[256];
    mpk_status st = check_params(&p, msg, sizeof msg);
    if (st != MPK_OK) {
        if (p.log) p.log(p.log_user, MPK_LOG_ERROR, msg);
        return st;
    }
    if (p.num_pages == 0) {
        int64_t per_req = (p.max_seq_len + p.page_size - 1) / p.page_size;
        int64_t pages = per_req * p.max_requests;
        if (pages > (1 << 24)) {
            if (p.log) p.log(p.log_user, MPK_LOG_ERROR, "KV cache too large: lower max_requests or max_seq_len");
            return MPK_ERR_LIMIT;
        }
        p.num_pages = (int32_t)pages;
    }
    mpk_kernel *k = calloc(1, sizeof *k);
    if (!k) return MPK_ERR_NOMEM;
    k->params = p;
    // The backend is chosen now, so that layer builders see the final worker count.
    mpk_backend want = p.backend;
    if (want == MPK_BACKEND_AUTO) want = mpk_cuda_available(k) ? MPK_BACKEND_CUDA : MPK_BACKEND_CPU;
    k->resolved_backend = want;
    k->backend = want == MPK_BACKEND_CUDA ? mpk_cuda_backend() : mpk_cpu_backend();
    st = k->backend ? k->backend->configure(k) : MPK_ERR_UNSUPPORTED;
    if (st != MPK_OK) {
        if (p.log) p.log(p.log_user, MPK_LOG_ERROR, k->backend ? k->error : "this build has no CUDA backend");
        k->backend = NULL;  // nothing loaded yet: do not call destroy
        mpk_kernel_free(k);
        return st;
    }

    // The runtime's meta tensors come first so their ids are stable.
    struct { const char *name; int32_t ndim; int64_t dims[2]; } metas[4] = {
        [MPK_META_TOKENS] = {"meta.tokens", 2, {p.max_requests, p.max_seq_len}},
        [MPK_META_STEP] = {"meta.step", 1, {p.max_requests, 1}},
        [MPK_META_INPUT_IDS] = {"meta.input_ids", 1, {p.max_batched_tokens, 1}},
        [MPK_META_OUTPUT_IDS] = {"meta.output_ids", 1, {p.max_batched_tokens, 1}},
    };
    for (int i = 0; i < 4; i++) {
        mpk_tensor *t;
        st = mpk_new_tensor(k, metas[i].ndim, metas[i].dims, MPK_I32, metas[i].name, MPK_IO_DEVICE, &t);
        if (st) {
            if (p.log) p.log(p.log_user, MPK_LOG_ERROR, k->error);
            mpk_kernel_free(k);
            return st;
        }
        k->meta[i] = t->id;
    }
    for (int i = 0; i < 4; i++) k->tensors[k->meta[i]]->kind = MPK_TENSOR_META;

    uint32_t bytes = mpk_batch_layout(NULL, p.max_batched_tokens, p.max_requests, p.max_seq_len,
                                      p.page_size, p.num_pages);
    if (bytes == 0) {
        mpk_kernel_free(k);
        if (p.log) p.log(p.log_user, MPK_LOG_ERROR, "batch state too large for these capacities");
        return MPK_ERR_LIMIT;
    }
    k->batch = aligned_alloc(64, (bytes + 63) & ~63u);
    if (!k->batch) {
        mpk_kernel_free(k);
        return MPK_ERR_NOMEM;
    }
    memset(k->batch, 0, bytes);
    mpk_batch_layout(k->batch, p.max_batched_tokens, p.max_requests, p.max_seq_len, p.page_size,
                     p.num_pages);
    k->batch->num_eos = p.num_eos_token_ids;
    for (int i = 0; i < p.num_eos_token_ids; i++) k->batch->eos[i] = p.eos_token_ids[i];
    mpk_batch_reset(k->batch);
    *out = k;
    return MPK_OK;
}

void mpk_kernel_free(mpk_kernel *k) {
    if (!k) return;
    if (k->backend && k->backend->destroy) k->backend->destroy(k);
    for (int32_t i = 0; i < k->num_tensors; i++) {
        mpk_tensor *t = k->tensors[i];
        if (!t) continue;
        free(t->name);
        free(t);
    }
    free(k->tensors);
    for (int32_t i = 0; i < k->num_layers; i++) free(k->layers[i].name);
    free(k->layers);
    free(k->recs);
    free(k->accesses);
    free(k->variants);
    free(k->graph.tasks);
    free(k->graph.events);
    free(k->graph.triggers);
    free(k->graph.variants);
    free(k->graph.worker_task_begin);
    free(k->graph.worker_tasks);
    free(k->task_operand_tensor);
    free(k->task_rec);
    free(k->task_bytes);
    free(k->batch);
    free(k->profile);
    free(k);
}

mpk_backend mpk_kernel_backend(const mpk_kernel *k) {
    return k ? k->resolved_backend : MPK_BACKEND_AUTO;
}

mpk_status mpk_device_info(mpk_kernel *k, char *name, size_t name_len, double *read_bw) {
    if (!k) return MPK_ERR_INVALID_ARG;
    if (!name || name_len == 0) return mpk_fail(k, MPK_ERR_INVALID_ARG, "device_info: no name buffer");
    if (!k->compiled) return mpk_fail(k, MPK_ERR_STATE, "device_info: compile the kernel first");
    if (!k->backend->device_info) return mpk_fail(k, MPK_ERR_UNSUPPORTED, "device_info: the %s backend cannot tell", k->backend->name);
    return k->backend->device_info(k, name, name_len, read_bw);
}

const mpk_kernel_params *mpk_kernel_get_params(const mpk_kernel *k) { return k ? &k->params : NULL; }

// ---- tensors -----------------------------------------------------------------------------------

static mpk_status add_tensor(mpk_kernel *k, int32_t ndim, const int64_t *dims, mpk_dtype dtype,
                             const char *name, mpk_tensor_kind kind, mpk_tensor **out) {
    if (!k) return MPK_ERR_INVALID_ARG;
    if (out) *out = NULL;
    if (!out) return mpk_fail(k, MPK_ERR_INVALID_ARG, "tensor '%s': out pointer is NULL", name ? name : "?");
    if (k->compiled)
        return mpk_fail(k, MPK_ERR_STATE, "tensor '%s': the kernel is already compiled", name ? name : "?");
    if (!name || !name[0]) return mpk_fail(k, MPK_ERR_INVALID_ARG, "a tensor needs a non-empty name");
    if (ndim < 1 || ndim > MPK_MAX_DIMS)
        return mpk_fail(k, MPK_ERR_SHAPE, "tensor '%s': ndim %d is outside [1, %d]", name, ndim, MPK_MAX_DIMS);
    if (!dims) return mpk_fail(k, MPK_ERR_INVALID_ARG, "tensor '%s': dims is NULL", name);
    if (mpk_dtype_size(dtype) == 0)
        return mpk_fail(k, MPK_ERR_INVALID_ARG, "tensor '%s': unknown dtype %d", name, (int)dtype);
    uint64_t elems = 1;
    for (int32_t i = 0; i < ndim; i++) {
        if (dims[i] < 1 || dims[i] > ((int64_t)1 << 40))
            return mpk_fail(k, MPK_ERR_SHAPE, "tensor '%s': dimension %d is %lld", name, i, (long long)dims[i]);
        elems *= (uint64_t)dims[i];
        if (elems > ((uint64_t)1 << 40))
            return mpk_fail(k, MPK_ERR_SHAPE, "tensor '%s': too many elements", name);
    }
    for (int32_t i = 0; i < k->num_tensors; i++)
        if (strcmp(k->tensors[i]->name, name) == 0)
            return mpk_fail(k, MPK_ERR_INVALID_ARG, "tensor name '%s' is already used", name);
    if (k->num_tensors == k->cap_tensors) {
        int32_t cap = k->cap_tensors ? 2 * k->cap_tensors : 64;
        mpk_tensor **nt = realloc(k->tensors, (size_t)cap * sizeof *nt);
        if (!nt) return mpk_fail(k, MPK_ERR_NOMEM, "out of memory adding tensor '%s'", name);
        k->tensors = nt;
        k->cap_tensors = cap;
    }
    mpk_tensor *t = calloc(1, sizeof *t);
    char *nm = strdup(name);
    if (!t || !nm) {
        free(t);
        free(nm);
        return mpk_fail(k, MPK_ERR_NOMEM, "out of memory adding tensor '%s'", name);
    }
    t->id = k->num_tensors;
    t->ndim = ndim;
    for (int32_t i = 0; i < MPK_MAX_DIMS; i++) t->dims[i] = i < ndim ? dims[i] : 1;
    int64_t stride = 1;
    for (int32_t i = ndim - 1; i >= 0; i--) {
        t->strides[i] = stride;
        stride *= t->dims[i];
    }
    t->dtype = dtype;
    t->kind = kind;
    t->name = nm;
    t->bytes = (size_t)elems * mpk_dtype_size(dtype);
    k->tensors[k->num_tensors++] = t;
    *out = t;
    return MPK_OK;
}

mpk_status mpk_attach_input(mpk_kernel *k, void *data, int32_t ndim, const int64_t *dims,
                            mpk_dtype dtype, const char *name, mpk_tensor **out) {
    if (k && !data) return mpk_fail(k, MPK_ERR_INVALID_ARG, "attach_input '%s': data is NULL", name ? name : "?");
    mpk_status st = add_tensor(k, ndim, dims, dtype, name, MPK_TENSOR_HOST, out);
    if (st == MPK_OK) (*out)->host = data;
    return st;
}

mpk_status mpk_attach_device_input(mpk_kernel *k, void *data, int32_t ndim, const int64_t *dims,
                                   mpk_dtype dtype, const char *name, mpk_tensor **out) {
    if (k && !data) return mpk_fail(k, MPK_ERR_INVALID_ARG, "attach_device_input '%s': data is NULL", name ? name : "?");
    if (k && k->params.backend == MPK_BACKEND_CPU)
        return mpk_fail(k, MPK_ERR_UNSUPPORTED, "attach_device_input '%s': the kernel uses the CPU backend", name ? name : "?");
    mpk_status st = add_tensor(k, ndim, dims, dtype, name, MPK_TENSOR_DEVICE, out);
    if (st == MPK_OK) (*out)->device = data;
    return st;
}

mpk_status mpk_new_tensor(mpk_kernel *k, int32_t ndim, const int64_t *dims, mpk_dtype dtype,
                          const char *name, mpk_io_category io, mpk_tensor **out) {
    if (k && io != MPK_IO_DEVICE && io != MPK_IO_SYMMETRIC)
        return mpk_fail(k, MPK_ERR_INVALID_ARG, "new_tensor '%s': unknown io category %d", name ? name : "?", (int)io);
    if (k && io == MPK_IO_SYMMETRIC && k->params.world_size == 1)
        io = MPK_IO_DEVICE;  // one rank: symmetric memory is ordinary memory
    mpk_status st = add_tensor(k, ndim, dims, dtype, name, MPK_TENSOR_NEW, out);
    if (st == MPK_OK) (*out)->io = io;
    return st;
}

mpk_status mpk_tensor_find(mpk_kernel *k, const char *name, mpk_tensor **out) {
    if (!k || !name || !out) return k ? mpk_fail(k, MPK_ERR_INVALID_ARG, "tensor_find: NULL argument") : MPK_ERR_INVALID_ARG;
    *out = NULL;
    for (int32_t i = 0; i < k->num_tensors; i++)
        if (strcmp(k->tensors[i]->name, name) == 0) {
            *out = k->tensors[i];
            return MPK_OK;
        }
    return mpk_fail(k, MPK_ERR_NOT_FOUND, "no tensor named '%s'", name);
}

int32_t mpk_tensor_ndim(const mpk_tensor *t) { return t ? t->ndim : 0; }
int64_t mpk_tensor_dim(const mpk_tensor *t, int32_t axis) {
    return (t && axis >= 0 && axis < t->ndim) ? t->dims[axis] : 0;
}
mpk_dtype mpk_tensor_dtype(const mpk_tensor *t) { return t ? t->dtype : MPK_BF16; }
const char *mpk_tensor_name(const mpk_tensor *t) { return t ? t->name : ""; }

mpk_status mpk_meta_tensor(mpk_kernel *k, mpk_meta which, mpk_tensor **out) {
    if (!k) return MPK_ERR_INVALID_ARG;
    if (!out) return mpk_fail(k, MPK_ERR_INVALID_ARG, "meta_tensor: out is NULL");
    if ((int)which < 0 || (int)which > 3) return mpk_fail(k, MPK_ERR_INVALID_ARG, "unknown meta tensor %d", (int)which);
    *out = k->tensors[k->meta[which]];
    return MPK_OK;
}

static mpk_status check_io(mpk_kernel *k, const mpk_tensor *t, const void *p, size_t bytes,
                           const char *what) {
    if (!k) return MPK_ERR_INVALID_ARG;
    if (!t || !p) return mpk_fail(k, MPK_ERR_INVALID_ARG, "%s: NULL tensor or buffer", what);
    if (!k->compiled) return mpk_fail(k, MPK_ERR_STATE, "%s '%s': compile the kernel first", what, t->name);
    if (k->running) return mpk_fail(k, MPK_ERR_STATE, "%s '%s': the kernel is running", what, t->name);
    if (t->id < 0 || t->id >= k->num_tensors || k->tensors[t->id] != t)
        return mpk_fail(k, MPK_ERR_INVALID_ARG, "%s: the tensor belongs to another kernel", what);
    if (bytes < t->bytes)
        return mpk_fail(k, MPK_ERR_SHAPE, "%s '%s': buffer of %zu bytes, the tensor has %zu", what, t->name, bytes, t->bytes);
    return MPK_OK;
}

mpk_status mpk_tensor_read(mpk_kernel *k, const mpk_tensor *t, void *dst, size_t bytes) {
    mpk_status st = check_io(k, t, dst, bytes, "tensor_read");
    if (st) return st;
    return k->backend->tensor_read(k, t, dst, t->bytes);
}

mpk_status mpk_tensor_write(mpk_kernel *k, mpk_tensor *t, const void *src, size_t bytes) {
    mpk_status st = check_io(k, t, src, bytes, "tensor_write");
    if (st) return st;
    return k->backend->tensor_write(k, t, src, t->bytes);
}

// ---- compile -----------------------------------------------------------------------------------

mpk_status mpk_compile(mpk_kernel *k) {
    if (!k) return MPK_ERR_INVALID_ARG;
    if (k->compiled) return mpk_fail(k, MPK_ERR_STATE, "the kernel is already compiled");
    if (k->num_layers == 0) return mpk_fail(k, MPK_ERR_STATE, "the kernel has no layers to compile");
    mpk_status st = mpk_compiler_run(k);
    if (st) return st;
    if (getenv("MPK_DEBUG") && (st = mpk_graph_check(k))) return st;
    st = k->backend->load(k);
    if (st) return st;
    k->compiled = 1;
    return MPK_OK;
}

mpk_status mpk_graph_get_stats(const mpk_kernel *k, mpk_graph_stats *out) {
    if (!k || !out) return MPK_ERR_INVALID_ARG;
    if (!k->compiled && k->graph.num_tasks == 0) return MPK_ERR_STATE;
    *out = k->stats;
    return MPK_OK;
}

void mpk_free_string(char *s) { free(s); }

const char *mpk_layer_name(const mpk_kernel *k, int32_t layer) {
    if (!k || layer < 0 || layer >= k->num_layers) return "";
    return k->layers[layer].name;
}

int64_t mpk_task_bytes(const mpk_kernel *k, int32_t task) {
    if (!k || !k->task_bytes || task < 0 || task >= k->graph.num_tasks) return 0;
    return k->task_bytes[task];
}

// The layers record a task's weight slice as what may be prefetched before its event.
int64_t mpk_task_weight_bytes(const mpk_kernel *k, int32_t task) {
    if (!k || !k->graph.tasks || task < 0 || task >= k->graph.num_tasks) return 0;
    return k->graph.tasks[task].prefetch_bytes;
}

const char *mpk_task_type_name(int32_t type) {
    static const char *names[MPK_TASK_TYPE_COUNT] = {
        "none", "embed", "rmsnorm", "rmsnorm_linear", "linear", "linear_residual", "attention",
        "silu_mul", "silu_mul_linear_residual", "allreduce", "argmax_partial", "argmax_reduce",
        "sampling", "attention_linear", "residual_rmsnorm_linear",
    };
    return (type >= 0 && type < MPK_TASK_TYPE_COUNT) ? names[type] : "?";
}

mpk_status mpk_profile_get(mpk_kernel *k, const mpk_profile_record **records, int64_t *count,
                           int *overflowed) {
    if (!k) return MPK_ERR_INVALID_ARG;
    if (!records || !count) return mpk_fail(k, MPK_ERR_INVALID_ARG, "profile_get: NULL out pointer");
    if (!k->params.profiling) return mpk_fail(k, MPK_ERR_STATE, "profiling is off for this kernel");
    *records = k->profile;
    *count = k->profile_count;
    if (overflowed) *overflowed = k->profile_overflowed;
    return MPK_OK;
}
