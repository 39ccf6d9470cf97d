// backend.c — the CUDA backend's host side: finds a GPU through the driver library (dlopen, so
// libmpk never links CUDA), generates and builds the megakernel (codegen.c, jit.c), loads it with
// dlopen, uploads tensors and the graph, launches one persistent kernel per mpk_run and watches
// it with a deadline. All CUDA runtime calls happen inside the generated .so (runtime.cuh).
//
// Test hook: MPK_TEST_STALL_EVENT=<event id> in the environment drops every increment of that
// event, so it never fires: the run must end with MPK_ERR_TIMEOUT naming it, never hang.
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/cuda/abi.cuh"
#include "core/request.h"
#include "runtime/cuda/cuda_internal.h"

_Static_assert(sizeof(mpk_dev_prof) == sizeof(mpk_profile_record), "profile record layout");
_Static_assert(offsetof(mpk_dev_prof, start_ns) == offsetof(mpk_profile_record, start_ns),
               "profile record layout");
_Static_assert(offsetof(mpk_dev_prof, wait_ns) == offsetof(mpk_profile_record, wait_ns),
               "profile record layout");
_Static_assert(offsetof(mpk_dev_prof, body_ns) == offsetof(mpk_profile_record, body_ns),
               "profile record layout");

// ---- the driver library (only to find a device and its architecture) -----------------------------

typedef int (*cu_init_fn)(unsigned);
typedef int (*cu_count_fn)(int *);
typedef int (*cu_get_fn)(int *, int);
typedef int (*cu_attr_fn)(int *, int, int);

#define CU_ATTR_SM_COUNT 16
#define CU_ATTR_CC_MAJOR 75
#define CU_ATTR_CC_MINOR 76

// Compute capability of `ordinal` as major * 10 + minor, 0 when there is no usable device;
// *count_out gets the number of devices, *sms_out (may be NULL) the device's SM count.
static int driver_device_cc(int ordinal, int *count_out, int *sms_out) {
    *count_out = 0;
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) return 0;
    cu_init_fn init = (cu_init_fn)dlsym(lib, "cuInit");
    cu_count_fn count = (cu_count_fn)dlsym(lib, "cuDeviceGetCount");
    cu_get_fn get = (cu_get_fn)dlsym(lib, "cuDeviceGet");
    cu_attr_fn attr = (cu_attr_fn)dlsym(lib, "cuDeviceGetAttribute");
    int n = 0, dev = 0, major = 0, minor = 0, sms = 0;
    int ok = init && count && get && attr && init(0) == 0 && count(&n) == 0 && n > 0;
    *count_out = ok ? n : 0;
    ok = ok && ordinal >= 0 && ordinal < n && get(&dev, ordinal) == 0 &&
         attr(&major, CU_ATTR_CC_MAJOR, dev) == 0 && attr(&minor, CU_ATTR_CC_MINOR, dev) == 0 &&
         attr(&sms, CU_ATTR_SM_COUNT, dev) == 0;
    if (sms_out) *sms_out = ok ? sms : 0;
    // The driver library stays loaded: unloading it under a live context is not allowed.
    return ok ? major * 10 + minor : 0;
}

int mpk_cuda_available(const mpk_kernel *kernel) {
    char nvcc[1024];
    int count;
    int device = kernel ? kernel->params.cuda_device : 0;
    return mpk_cuda_find_nvcc(nvcc, sizeof nvcc) && driver_device_cc(device, &count, NULL) >= 80;
}

// At kernel creation: num_workers = 0 becomes the SMs left after the scheduler blocks, and a
// count that cannot be resident at once is refused. Compile-only kernels (cuda_arch set) need
// no device: their worker count only shapes the static schedule (one SM-sized guess).
static mpk_status cuda_configure(mpk_kernel *k) {
    mpk_kernel_params *p = &k->params;
    const int32_t S = p->num_local_schedulers > 0 ? p->num_local_schedulers : 0;
    const int32_t sched_blocks = (S + MPK_DEV_SCHEDULERS_PER_BLOCK - 1) / MPK_DEV_SCHEDULERS_PER_BLOCK;
    if (p->world_size > 1)
        return mpk_fail(k, MPK_ERR_UNSUPPORTED, "CUDA backend: world_size=%d: several GPUs are not "
                        "supported yet", p->world_size);
    if (p->cuda_arch && *p->cuda_arch) {
        if (p->num_workers <= 0) p->num_workers = 132 - sched_blocks > 1 ? 132 - sched_blocks : 1;
        return MPK_OK;
    }
    int count = 0, sms = 0;
    int cc = driver_device_cc(p->cuda_device, &count, &sms);
    if (cc == 0)
        return mpk_fail(k, MPK_ERR_CUDA, "CUDA backend: no usable CUDA device %d (%d found); set "
                        "params.cuda_arch to compile without one", p->cuda_device, count);
    if (cc < 80)
        return mpk_fail(k, MPK_ERR_UNSUPPORTED, "CUDA backend: device %d has compute capability %d.%d; "
                        "sm_80 or newer is needed", p->cuda_device, cc / 10, cc % 10);
    if (p->num_workers <= 0) p->num_workers = sms - sched_blocks;
    if (p->num_workers < 1 || p->num_workers + sched_blocks > sms)
        return mpk_fail(k, MPK_ERR_LIMIT, "CUDA backend: num_workers=%d + ceil(num_local_schedulers=%d / %d) "
                        "= %d blocks exceed the %d SMs of device %d: every block must be resident at once",
                        p->num_workers, S, MPK_DEV_SCHEDULERS_PER_BLOCK, p->num_workers + sched_blocks,
                        sms, p->cuda_device);
    return MPK_OK;
}

// ---- state ------------------------------------------------------------------------------------------

typedef struct dev_api {
    int (*abi_version)(void);
    const char *(*last_error)(void);
    int (*init)(int, mpk_dev_info *);
    int (*malloc_)(void **, size_t);
    int (*free_)(void *);
    int (*h2d)(void *, const void *, size_t);
    int (*d2h)(void *, const void *, size_t);
    int (*memset_)(void *, int, size_t);
    int (*host_alloc)(void **, void **, size_t);
    int (*host_free)(void *);
    int (*launch)(const mpk_dev_args *, int *);
    int (*poll)(int *);
    int (*sync)(void);
    int (*read_bandwidth)(double *);  // optional
} dev_api;

typedef struct cuda_state {
    int compile_only;
    char arch[16];
    char so_path[1200];
    void *so;
    dev_api api;
    mpk_dev_info info;
    void **allocs;            // device allocations to free
    int32_t num_allocs, cap_allocs;
    void **meta_shadow;       // host copies of the meta tensors this backend allocated
    void *abort_host;         // mapped pinned int32s: [0] the abort word, [1] the device's hand-over count
    int32_t *schedule_begin;  // the static schedule when recomputed for the device's workers
    int32_t *schedule_tasks;
    const int32_t *sched_begin;  // the static schedule in use (one of the above or the graph's)
    const int32_t *sched_tasks;
    mpk_dev_args args;        // device pointers; per-run fields filled by run()
} cuda_state;

static cuda_state *state_of(mpk_kernel *k) { return (cuda_state *)k->backend_state; }

// A failed mpk_dev_* call: the .so's message carries the CUDA call and its file:line.
static mpk_status dev_fail(mpk_kernel *k, int rc, const char *what) {
    cuda_state *s = state_of(k);
    return mpk_fail(k, rc == MPK_DEV_ERR_LIMIT ? MPK_ERR_LIMIT : MPK_ERR_CUDA, "CUDA backend: %s: %s",
                    what, s && s->so ? s->api.last_error() : "(no device library)");
}

#define DEV(call, what)                          \
    do {                                         \
        int rc_ = (call);                        \
        if (rc_ != 0) return dev_fail(k, rc_, what); \
    } while (0)

// Allocates zeroed device memory that destroy() frees.
static mpk_status dev_alloc(mpk_kernel *k, size_t bytes, void **out, const char *what) {
    cuda_state *s = state_of(k);
    if (s->num_allocs == s->cap_allocs) {
        int32_t cap = s->cap_allocs ? 2 * s->cap_allocs : 64;
        void **p = realloc(s->allocs, sizeof *p * (size_t)cap);
        if (!p) return mpk_fail(k, MPK_ERR_NOMEM, "CUDA backend: out of host memory");
        s->allocs = p;
        s->cap_allocs = cap;
    }
    int rc = s->api.malloc_(out, bytes);
    if (rc) return mpk_fail(k, MPK_ERR_NOMEM, "CUDA backend: cannot allocate %zu bytes for %s: %s",
                            bytes, what, s->api.last_error());
    s->allocs[s->num_allocs++] = *out;
    return MPK_OK;
}

static mpk_status upload(mpk_kernel *k, size_t bytes, const void *src, void **out, const char *what) {
    mpk_status st = dev_alloc(k, bytes, out, what);
    if (st) return st;
    if (bytes) DEV(state_of(k)->api.h2d(*out, src, bytes), what);
    return MPK_OK;
}

static int32_t pow2_at_least(int64_t v) {
    int32_t n = 1;
    while (n < v && n < (1 << 30)) n <<= 1;
    return n;
}

// ---- load -------------------------------------------------------------------------------------------

static mpk_status open_library(mpk_kernel *k) {
    cuda_state *s = state_of(k);
    s->so = dlopen(s->so_path, RTLD_NOW | RTLD_LOCAL);
    if (!s->so) return mpk_fail(k, MPK_ERR_CUDA, "CUDA backend: cannot load %s: %s", s->so_path, dlerror());
    struct { const char *name; void **slot; } syms[] = {
        {"mpk_dev_abi_version", (void **)&s->api.abi_version},
        {"mpk_dev_last_error", (void **)&s->api.last_error},
        {"mpk_dev_init", (void **)&s->api.init},
        {"mpk_dev_malloc", (void **)&s->api.malloc_},
        {"mpk_dev_free", (void **)&s->api.free_},
        {"mpk_dev_memcpy_h2d", (void **)&s->api.h2d},
        {"mpk_dev_memcpy_d2h", (void **)&s->api.d2h},
        {"mpk_dev_memset", (void **)&s->api.memset_},
        {"mpk_dev_host_alloc", (void **)&s->api.host_alloc},
        {"mpk_dev_host_free", (void **)&s->api.host_free},
        {"mpk_dev_launch", (void **)&s->api.launch},
        {"mpk_dev_poll", (void **)&s->api.poll},
        {"mpk_dev_sync", (void **)&s->api.sync},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        *syms[i].slot = dlsym(s->so, syms[i].name);
        if (!*syms[i].slot) {
            // Unusable: forget it so dev_fail never calls into it (not closed, as in cuda_destroy).
            s->so = NULL;
            return mpk_fail(k, MPK_ERR_CUDA, "CUDA backend: %s lacks %s", s->so_path, syms[i].name);
        }
    }
    s->api.read_bandwidth = (int (*)(double *))dlsym(s->so, "mpk_dev_read_bandwidth");
    if (s->api.abi_version() != MPK_DEV_ABI_VERSION)
        return mpk_fail(k, MPK_ERR_INTERNAL, "CUDA backend: %s has device ABI %d, the library %d",
                        s->so_path, s->api.abi_version(), MPK_DEV_ABI_VERSION);
    return MPK_OK;
}

// Worker and scheduler counts; the static schedule when the device decides the worker count.
static mpk_status plan_workers(mpk_kernel *k) {
    cuda_state *s = state_of(k);
    const mpk_kernel_params *p = &k->params;
    const int32_t S = p->num_local_schedulers > 0 ? p->num_local_schedulers : 0;
    const int32_t sched_blocks = (S + MPK_DEV_SCHEDULERS_PER_BLOCK - 1) / MPK_DEV_SCHEDULERS_PER_BLOCK;
    const int32_t sms = s->info.sm_count;
    int32_t W = p->num_workers > 0 ? p->num_workers : sms - sched_blocks;
    if (W < 1 || W + sched_blocks > sms)
        return mpk_fail(k, MPK_ERR_LIMIT, "CUDA backend: num_workers=%d + ceil(num_local_schedulers=%d / %d) = %d "
                        "blocks exceed the %d SMs of %s: every block must be resident at once",
                        W, S, MPK_DEV_SCHEDULERS_PER_BLOCK, W + sched_blocks, sms, s->info.name);
    s->args.num_workers = W;
    s->args.num_schedulers = S;
    if (S > 0) return MPK_OK;
    // Static mode: the compiler's schedule when it was made for W workers, else the same
    // round-robin rule (task i to worker i % W) for the device's worker count.
    const mpk_graph *g = &k->graph;
    const int32_t *begin = g->worker_task_begin, *tasks = g->worker_tasks;
    if (g->num_workers != W || !begin || !tasks) {
        const int32_t n = g->num_tasks;
        s->schedule_begin = calloc((size_t)W + 1, sizeof(int32_t));
        s->schedule_tasks = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
        if (!s->schedule_begin || !s->schedule_tasks)
            return mpk_fail(k, MPK_ERR_NOMEM, "CUDA backend: out of host memory");
        for (int32_t i = 0; i < n; i++) s->schedule_begin[i % W + 1]++;
        for (int32_t w = 0; w < W; w++) s->schedule_begin[w + 1] += s->schedule_begin[w];
        for (int32_t w = 0, pos = 0; w < W; w++)
            for (int32_t i = w; i < n; i += W) s->schedule_tasks[pos++] = i;
        begin = s->schedule_begin;
        tasks = s->schedule_tasks;
    }
    void *d;
    mpk_status st = upload(k, sizeof(int32_t) * ((size_t)W + 1), begin, &d, "the static schedule");
    if (st) return st;
    s->args.worker_task_begin = d;
    st = upload(k, sizeof(int32_t) * (size_t)(g->num_tasks > 0 ? g->num_tasks : 1), tasks, &d,
                "the static schedule");
    if (st) return st;
    s->args.worker_tasks = d;
    s->sched_begin = begin;
    s->sched_tasks = tasks;
    return MPK_OK;
}

// The host side of the runtime (requests, results) works on host copies of the meta tensors;
// compile-only kernels get them too, so requests can be queued (and the run refused cleanly).
static mpk_status alloc_meta_shadows(mpk_kernel *k) {
    cuda_state *s = state_of(k);
    s->meta_shadow = calloc((size_t)k->num_tensors + 1, sizeof(void *));
    if (!s->meta_shadow) return mpk_fail(k, MPK_ERR_NOMEM, "CUDA backend: out of host memory");
    for (int32_t i = 0; i < k->num_tensors; i++) {
        mpk_tensor *t = k->tensors[i];
        if (t->kind != MPK_TENSOR_META || t->host) continue;
        s->meta_shadow[i] = calloc(1, t->bytes ? t->bytes : 1);
        if (!s->meta_shadow[i]) return mpk_fail(k, MPK_ERR_NOMEM, "CUDA backend: out of host memory");
        t->host = s->meta_shadow[i];
    }
    return MPK_OK;
}

static mpk_status upload_tensors(mpk_kernel *k) {
    cuda_state *s = state_of(k);
    for (int32_t i = 0; i < k->num_tensors; i++) {
        mpk_tensor *t = k->tensors[i];
        if (t->kind == MPK_TENSOR_DEVICE) continue;  // attached device memory, used as is
        void *d;
        mpk_status st = dev_alloc(k, t->bytes, &d, t->name);
        if (st) return st;
        t->device = d;
        if (t->host && t->bytes) DEV(s->api.h2d(d, t->host, t->bytes), t->name);
    }
    return MPK_OK;
}

// The weight stream's share of task d (cuda_internal.h): its weight rows, grouped into chunks of
// whole rows of at most one ring slot.
void mpk_cuda_plan_stream(mpk_task_desc *d, const mpk_variant *v) {
    d->stream_chunks = 0;
    d->stream_chunk_bytes = 0;
    if (!mpk_task_is_product(d->type)) return;
    const int64_t K = v->p[0], n = v->p[1], ld_w = v->p[3];  // same slots in all five
    const int64_t row = 2 * K;  // bf16
    if (K <= 0 || n <= 0 || ld_w != K || row % 16 || row > MPK_DEV_STREAM_SLOT_BYTES) return;
    if (d->prefetch_bytes != (uint64_t)(n * row) || d->operand[d->prefetch_operand] % 16) return;
    const int64_t per = MPK_DEV_STREAM_SLOT_BYTES / row, chunks = (n + per - 1) / per;
    if (chunks > UINT16_MAX) return;
    d->stream_chunks = (uint16_t)chunks;
    d->stream_chunk_bytes = (uint32_t)(per * row);
}

// Static mode: each worker's weight-stream plan, the tasks of its list that stream, in order
// (tasks: the resolved descriptors). Workers without any run with the stream off.
static mpk_status upload_stream_plan(mpk_kernel *k, const mpk_task_desc *tasks) {
    cuda_state *s = state_of(k);
    const int32_t W = s->args.num_workers;
    const int32_t *begin = s->sched_begin, *list = s->sched_tasks;
    int32_t *pb = calloc((size_t)W + 1, sizeof *pb);
    const int32_t total = begin[W] - begin[0];
    mpk_dev_stream_entry *plan = calloc((size_t)(total > 0 ? total : 1), sizeof *plan);
    if (!pb || !plan) {
        free(pb);
        free(plan);
        return mpk_fail(k, MPK_ERR_NOMEM, "CUDA backend: out of host memory");
    }
    int32_t m = 0;
    for (int32_t w = 0; w < W; w++) {
        pb[w] = m;
        for (int32_t i = begin[w]; i < begin[w + 1]; i++) {
            const mpk_task_desc *d = &tasks[list[i]];
            if (!d->stream_chunks) continue;
            plan[m].src = d->operand[d->prefetch_operand];
            plan[m].bytes = d->prefetch_bytes;
            plan[m].chunk_bytes = d->stream_chunk_bytes;
            m++;
        }
    }
    pb[W] = m;
    void *d1 = NULL, *d2 = NULL;
    mpk_status st = upload(k, sizeof *plan * (size_t)(m > 0 ? m : 1), plan, &d1, "the weight-stream plan");
    if (!st) st = upload(k, sizeof *pb * ((size_t)W + 1), pb, &d2, "the weight-stream plan");
    free(plan);
    free(pb);
    if (st) return st;
    s->args.stream_plan = d1;
    s->args.stream_plan_begin = d2;
    return MPK_OK;
}

// The graph with operands resolved into device addresses, uploaded once. MPK_CUDA_STREAM=1 in
// the environment plans the weight stream (src/kernels/cuda/stream.cuh; off by default, and
// inert unless the megakernel was built with a ring): a switch for measuring what it gives.
static mpk_status upload_graph(mpk_kernel *k) {
    cuda_state *s = state_of(k);
    const mpk_graph *g = &k->graph;
    const char *stream_env = getenv("MPK_CUDA_STREAM");
    const int stream = stream_env && strcmp(stream_env, "1") == 0;
    const int32_t n = g->num_tasks;
    mpk_task_desc *tasks = calloc((size_t)(n > 0 ? n : 1), sizeof *tasks);
    if (!tasks) return mpk_fail(k, MPK_ERR_NOMEM, "CUDA backend: out of host memory");
    mpk_status st = MPK_OK;
    for (int32_t i = 0; i < n && !st; i++) {
        tasks[i] = g->tasks[i];
        for (int j = 0; j < MPK_TASK_MAX_OPERANDS; j++) {
            int32_t tid = k->task_operand_tensor[(int64_t)i * MPK_TASK_MAX_OPERANDS + j];
            if (tid < 0) {
                tasks[i].operand[j] = 0;
                continue;
            }
            const mpk_tensor *t = tid < k->num_tensors ? k->tensors[tid] : NULL;
            if (!t || g->tasks[i].operand[j] > t->bytes) {
                st = mpk_fail(k, MPK_ERR_INTERNAL, "CUDA backend: task %d operand %d is outside its tensor", i, j);
                break;
            }
            tasks[i].operand[j] = (uint64_t)(uintptr_t)t->device + g->tasks[i].operand[j];
        }
        if (!st && tasks[i].variant >= g->num_variants)
            st = mpk_fail(k, MPK_ERR_INTERNAL, "CUDA backend: task %d has variant %d of %d", i,
                          tasks[i].variant, g->num_variants);
        if (!st && stream) mpk_cuda_plan_stream(&tasks[i], &g->variants[tasks[i].variant]);
        // The waiter's target is wait_count x iteration: one load fewer before each task.
        tasks[i].wait_count = 0;
        if (!st && tasks[i].wait_event != MPK_EVENT_NONE) {
            if ((int64_t)tasks[i].wait_event >= g->num_events)
                st = mpk_fail(k, MPK_ERR_INTERNAL, "CUDA backend: task %d waits on event %u of %d", i,
                              tasks[i].wait_event, g->num_events);
            else
                tasks[i].wait_count = g->events[tasks[i].wait_event].num_triggers;
        }
        if (!st && tasks[i].type == MPK_TASK_SAMPLING) {
            // Each sampling task sorts in its own scratch of next_pow2(V) keys.
            void *scratch;
            int64_t V = g->variants[tasks[i].variant].p[0];
            st = dev_alloc(k, sizeof(uint64_t) * (size_t)pow2_at_least(V), &scratch, "sampling scratch");
            tasks[i].reserved[0] = (uint64_t)(uintptr_t)scratch;
        }
    }
    void *d;
    if (!st) st = upload(k, sizeof *tasks * (size_t)(n > 0 ? n : 1), tasks, &d, "the task graph");
    if (!st && stream && s->sched_begin) st = upload_stream_plan(k, tasks);
    free(tasks);
    if (st) return st;
    s->args.tasks = d;
    if ((st = upload(k, sizeof(mpk_event_desc) * (size_t)g->num_events, g->events, &d, "the events")))
        return st;
    s->args.events = d;
    if ((st = upload(k, sizeof(uint32_t) * (size_t)(g->num_triggers > 0 ? g->num_triggers : 1),
                     g->triggers, &d, "the triggers")))
        return st;
    s->args.triggers = d;
    return MPK_OK;
}

// Launches both kernels once with nothing to do (launch_index -1: every block leaves at once), so
// that CUDA's lazy module loading happens now and not at a run's first hand-over, where it cost
// ~1 ms between the prompt and the decode kernel (bench/NOTES.md v15).
static mpk_status warm_up(mpk_kernel *k) {
    cuda_state *s = state_of(k);
    mpk_dev_args a = s->args;
    a.launch_index = -1;
    for (int prompt = 0; prompt < 2; prompt++) {
        a.prompt_kernel = prompt;
        int blocks = 0;
        DEV(s->api.launch(&a, &blocks), "warm-up launch");
    }
    DEV(s->api.sync(), "warm-up launch");
    return MPK_OK;
}

// Counters, queues, control block, status slots, profile buffers, the batch blob, abort flag.
static mpk_status alloc_runtime(mpk_kernel *k) {
    cuda_state *s = state_of(k);
    mpk_dev_args *a = &s->args;
    const mpk_graph *g = &k->graph;
    a->num_tasks = g->num_tasks;
    a->num_events = g->num_events;
    a->num_begin_events = g->num_begin_events > 0 ? g->num_begin_events : 1;
    a->end_event = (uint32_t)g->num_events - 1;
    for (int32_t e = 0; e < g->num_events; e++)
        if (g->events[e].flags & MPK_EVENT_FLAG_END) a->end_event = (uint32_t)e;
    a->queue_capacity = pow2_at_least((int64_t)g->num_tasks + 2);
    a->event_queue_capacity = pow2_at_least((int64_t)g->num_events + 2);
    const int64_t W = a->num_workers, S = a->num_schedulers > 0 ? a->num_schedulers : 1;
    void *d;
    mpk_status st;
#define ALLOC(field, bytes, what)                                   \
    do {                                                            \
        if ((st = dev_alloc(k, (size_t)(bytes), &d, what))) return st; \
        a->field = d;                                               \
    } while (0)
    ALLOC(counters, 8 * MPK_DEV_COUNTER_STRIDE * (size_t)g->num_events, "event counters");
    ALLOC(worker_queue, 8 * W * a->queue_capacity, "worker queues");
    ALLOC(worker_queue_tail, 8 * W, "worker queues");
    ALLOC(event_queue, 8 * S * a->event_queue_capacity, "scheduler queues");
    ALLOC(event_queue_tail, 8 * S, "scheduler queues");
    ALLOC(control, sizeof(mpk_dev_control), "the control block");
    ALLOC(worker_status, sizeof(mpk_dev_worker_status) * W, "worker status");
    ALLOC(batch, k->batch->total_bytes, "the batch state");
    ALLOC(profile_count, sizeof(unsigned int) * W, "profile counts");
    if (k->params.profiling) {
        a->profile_capacity = k->params.profile_capacity > 0 ? k->params.profile_capacity : 65536;
        ALLOC(profile, sizeof(mpk_dev_prof) * W * a->profile_capacity, "the profile buffer");
    }
#undef ALLOC
    a->profiling = k->params.profiling != 0;
    a->tokens = k->tensors[k->meta[MPK_META_TOKENS]]->device;
    a->step = k->tensors[k->meta[MPK_META_STEP]]->device;
    a->input_ids = k->tensors[k->meta[MPK_META_INPUT_IDS]]->device;
    a->output_ids = k->tensors[k->meta[MPK_META_OUTPUT_IDS]]->device;
    void *dev_alias;
    DEV(s->api.host_alloc(&s->abort_host, &dev_alias, 64), "the abort flag");
    a->abort_flag = dev_alias;
    a->host_handovers = (int32_t *)dev_alias + 1;
    return warm_up(k);
}

static mpk_status cuda_load(mpk_kernel *k) {
    cuda_state *s = calloc(1, sizeof *s);
    if (!s) return mpk_fail(k, MPK_ERR_NOMEM, "CUDA backend: out of host memory");
    k->backend_state = s;
    const mpk_kernel_params *p = &k->params;
    if (k->graph.num_events < 2)
        return mpk_fail(k, MPK_ERR_INTERNAL, "CUDA backend: the graph has %d events (begin and end needed)",
                        k->graph.num_events);
    if (p->cuda_arch && *p->cuda_arch) {
        s->compile_only = 1;
        snprintf(s->arch, sizeof s->arch, "%s", p->cuda_arch);
    } else {
        int count, cc = driver_device_cc(p->cuda_device, &count, NULL);
        if (cc == 0)
            return mpk_fail(k, MPK_ERR_CUDA, "CUDA backend: no usable CUDA device %d (%d found); set "
                            "params.cuda_arch to compile without one", p->cuda_device, count);
        if (cc < 80)
            return mpk_fail(k, MPK_ERR_UNSUPPORTED, "CUDA backend: device %d has compute capability %d.%d; "
                            "sm_80 or newer is needed", p->cuda_device, cc / 10, cc % 10);
        if (cc == 90) snprintf(s->arch, sizeof s->arch, "sm_90a");
        else snprintf(s->arch, sizeof s->arch, "sm_%d", cc);
    }
    mpk_status st = alloc_meta_shadows(k);
    if (st) return st;
    char *source;
    st = mpk_cuda_codegen(k, &source);
    if (st) return st;
    st = mpk_cuda_build(k, source, s->arch, s->so_path, sizeof s->so_path);
    free(source);
    if (st) return st;
    if (s->compile_only) {
        mpk_log(k, MPK_LOG_INFO, "CUDA: compile-only build for %s (params.cuda_arch); runs are refused", s->arch);
        return MPK_OK;
    }
    if ((st = open_library(k))) return st;
    DEV(s->api.init(p->cuda_device, &s->info), "device initialisation");
    mpk_log(k, MPK_LOG_INFO, "CUDA: %s, %d SMs, compute capability %d.%d", s->info.name,
            s->info.sm_count, s->info.cc_major, s->info.cc_minor);
    if ((st = plan_workers(k))) return st;
    if ((st = upload_tensors(k))) return st;
    if ((st = upload_graph(k))) return st;
    return alloc_runtime(k);
}

// ---- run --------------------------------------------------------------------------------------------

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

// After an aborted launch: which worker waits on which event, from the device's status slots.
// The device's state at a timeout, read while the launch still hangs (before the abort: the
// launch queued behind it would reset the counters once it ends).
typedef struct stall_state {
    mpk_dev_worker_status *ws;  // (num_workers)
    unsigned long long *ctr;    // (num_events, MPK_DEV_COUNTER_STRIDE)
    mpk_dev_control c;
    int ok;
} stall_state;

static void stall_snapshot(mpk_kernel *k, stall_state *ss) {
    cuda_state *s = state_of(k);
    const mpk_dev_args *a = &s->args;
    const int32_t W = a->num_workers, E = a->num_events;
    ss->ws = calloc((size_t)W, sizeof *ss->ws);
    ss->ctr = calloc((size_t)E * MPK_DEV_COUNTER_STRIDE, sizeof *ss->ctr);
    ss->ok = ss->ws && ss->ctr && !s->api.d2h(ss->ws, a->worker_status, sizeof *ss->ws * (size_t)W) &&
             !s->api.d2h(ss->ctr, a->counters, sizeof *ss->ctr * (size_t)E * MPK_DEV_COUNTER_STRIDE) &&
             !s->api.d2h(&ss->c, a->control, sizeof ss->c);
}

static mpk_status report_timeout(mpk_kernel *k, double waited, int exited, stall_state *ss) {
    cuda_state *s = state_of(k);
    const mpk_dev_args *a = &s->args;
    mpk_dev_worker_status *ws = ss->ws;
    unsigned long long *ctr = ss->ctr;
    const mpk_dev_control c = ss->c;
    if (!exited) {
        free(ws);
        free(ctr);
        return mpk_fail(k, MPK_ERR_TIMEOUT, "CUDA backend: timeout after %.1f s, and the kernel did not "
                        "stop when aborted: the GPU context is unusable", waited);
    }
    const int32_t W = a->num_workers, E = a->num_events;
    if (!ss->ok) {
        free(ws);
        free(ctr);
        return mpk_fail(k, MPK_ERR_TIMEOUT, "CUDA backend: timeout after %.1f s (state unreadable)", waited);
    }
    int32_t wk = -1, waiting = 0;
    for (int32_t w = 0; w < W; w++)
        if (ws[w].state == MPK_DEV_W_WAITING && ws[w].event < (uint32_t)E) {
            waiting++;
            if (wk < 0) wk = w;
        }
    mpk_status st;
    if (wk >= 0) {
        const mpk_dev_worker_status *x = &ws[wk];
        const mpk_event_desc *ev = &k->graph.events[x->event];
        unsigned long long n = ev->num_triggers, done = ctr[(size_t)x->event * MPK_DEV_COUNTER_STRIDE] - n * (unsigned long long)(x->iteration - 1);
        if (ctr[(size_t)x->event * MPK_DEV_COUNTER_STRIDE] < n * (unsigned long long)(x->iteration - 1)) done = 0;
        int32_t layer = x->task >= 0 && x->task < k->graph.num_tasks ? (int32_t)k->graph.tasks[x->task].layer : -1;
        st = mpk_fail(k, MPK_ERR_TIMEOUT,
                      "timeout after %.1f s in iteration %d: worker %d waits on event %u for task %d "
                      "(layer '%s', %llu/%llu triggers)%s; %d workers waiting",
                      waited, x->iteration, wk, x->event, x->task, mpk_layer_name(k, layer), done, n,
                      a->stall_event == x->event ? " [MPK_TEST_STALL_EVENT]" : "", waiting);
    } else {
        st = mpk_fail(k, MPK_ERR_TIMEOUT, "timeout after %.1f s in iteration %d: no worker waits on an "
                      "event (end event %u at %llu, begun %llu)", waited, c.iterations, a->end_event,
                      ctr[(size_t)a->end_event * MPK_DEV_COUNTER_STRIDE], c.begun);
    }
    free(ws);
    free(ctr);
    return st;
}

// While the kernel runs: hands out the tokens generated so far. The step meta tensor (tokens per
// row) is copied first; prepare_next_batch publishes each token before the step that counts it.
static mpk_status stream_live(mpk_kernel *k, mpk_token_fn on_tokens, void *user, int32_t *reported) {
    cuda_state *s = state_of(k);
    mpk_batch *b = k->batch;
    mpk_tensor *step_t = k->tensors[k->meta[MPK_META_STEP]];
    mpk_tensor *tok_t = k->tensors[k->meta[MPK_META_TOKENS]];
    int32_t *step = (int32_t *)step_t->host;
    int32_t *tokens = (int32_t *)tok_t->host;
    DEV(s->api.d2h(step, step_t->device, step_t->bytes), "streamed step");
    for (int32_t r = 0; r < b->max_requests; r++) {
        int32_t have = step[r];
        if (reported[r] < 0 || have <= reported[r] || have > b->max_seq_len) continue;
        int64_t row = (int64_t)r * b->max_seq_len;
        DEV(s->api.d2h(tokens + row + reported[r], (const int32_t *)tok_t->device + row + reported[r],
                       sizeof(int32_t) * (size_t)(have - reported[r])), "streamed tokens");
        on_tokens(user, r, tokens + row + reported[r], have - reported[r], 0);
        reported[r] = have;
    }
    return MPK_OK;
}

// Fresh counters, empty queues and the control block's per-launch part for the next launch,
// queued on the kernel's stream behind the launch before (the batch, the rest of the control
// block and the profile go on from one launch of a run to the next).
static mpk_status reset_launch(mpk_kernel *k) {
    cuda_state *s = state_of(k);
    const mpk_dev_args *a = &s->args;
    const int64_t W = a->num_workers, S = a->num_schedulers > 0 ? a->num_schedulers : 1;
    const struct { void *ptr; size_t bytes; } z[] = {
        {a->counters, 8 * MPK_DEV_COUNTER_STRIDE * (size_t)a->num_events},
        {a->worker_queue, 8 * (size_t)(W * a->queue_capacity)},
        {a->worker_queue_tail, 8 * (size_t)W},
        {a->event_queue, 8 * (size_t)(S * a->event_queue_capacity)},
        {a->event_queue_tail, 8 * (size_t)S},
        {a->control, MPK_DEV_CONTROL_LAUNCH_BYTES},
    };
    for (size_t i = 0; i < sizeof z / sizeof z[0]; i++)
        if (s->api.memset_(z[i].ptr, 0, z[i].bytes)) return dev_fail(k, 1, "reset");
    return MPK_OK;
}

// Queues the run's launch j behind the ones before it: the prompt kernel for even j, the decode
// kernel for odd j (runtime.cuh: launch j > 0 runs only if the run was handed to it).
static mpk_status queue_launch(mpk_kernel *k, int32_t j) {
    cuda_state *s = state_of(k);
    if (j > 0) {
        mpk_status st = reset_launch(k);
        if (st) return st;
    }
    s->args.launch_index = j;
    s->args.prompt_kernel = j % 2 == 0;
    int blocks = 0;
    DEV(s->api.launch(&s->args, &blocks), "launch");
    return MPK_OK;
}

// Runs the launches of one run, polling with sleeps until done or the deadline; with on_tokens,
// streams the tokens generated so far every few milliseconds. One launch more than the run has
// reached is always queued, so that a hand-over between the kernels waits for no host round
// trip; the device's hand-over count (mapped host memory) says when to queue the next. *c gets
// the control block at the end.
static mpk_status launch_and_wait(mpk_kernel *k, double t0, mpk_token_fn on_tokens, void *user,
                                  int32_t *reported, mpk_dev_control *c) {
    cuda_state *s = state_of(k);
    volatile int32_t *handovers = (volatile int32_t *)s->abort_host + 1;
    *handovers = 0;
    int32_t queued = 0;
    mpk_status st = MPK_OK;
    while (!st && queued < 2) st = queue_launch(k, queued++);
    if (st) return st;
    double timeout = k->params.timeout_s;
    long nap = 20;
    double last_stream = now_s();
    for (;;) {
        while (*handovers + 2 > queued)
            if ((st = queue_launch(k, queued++))) return st;
        int done = 0;
        DEV(s->api.poll(&done), "the megakernel");
        if (done) {
            DEV(s->api.d2h(c, s->args.control, sizeof *c), "control block");
            if (c->handovers < queued || c->error) return MPK_OK;  // (launch c->handovers ended the run)
            *handovers = c->handovers;  // (the launch it was handed to is queued next)
            continue;
        }
        if (on_tokens && now_s() - last_stream > 0.004) {
            st = stream_live(k, on_tokens, user, reported);
            if (st) return st;
            last_stream = now_s();
        }
        double waited = now_s() - t0;
        if (timeout > 0 && waited > timeout) {
            stall_state ss;
            stall_snapshot(k, &ss);
            *(volatile int32_t *)s->abort_host = MPK_DEV_ABORT_HOST;
            double t1 = now_s();
            int exited = 0;
            while (now_s() - t1 < 5.0) {
                int rc = s->api.poll(&exited);
                if (rc || exited) break;
                sleep_us(1000);
            }
            return report_timeout(k, waited, exited, &ss);
        }
        sleep_us(nap);
        if (nap < 500) nap *= 2;
    }
}

static mpk_status read_profile(mpk_kernel *k, int64_t epoch_ns) {
    cuda_state *s = state_of(k);
    const mpk_dev_args *a = &s->args;
    int32_t W = a->num_workers;
    unsigned int *cnt = calloc((size_t)W, sizeof *cnt);
    if (!cnt) return mpk_fail(k, MPK_ERR_NOMEM, "CUDA backend: out of host memory");
    DEV(s->api.d2h(cnt, a->profile_count, sizeof *cnt * (size_t)W), "profile counts");
    int64_t total = 0;
    k->profile_overflowed = 0;
    for (int32_t w = 0; w < W; w++) {
        if ((int64_t)cnt[w] > a->profile_capacity) k->profile_overflowed = 1;
        total += cnt[w] < (unsigned)a->profile_capacity ? cnt[w] : (unsigned)a->profile_capacity;
    }
    free(k->profile);
    k->profile = malloc(sizeof(mpk_profile_record) * (size_t)(total > 0 ? total : 1));
    k->profile_count = 0;
    if (!k->profile) {
        free(cnt);
        return mpk_fail(k, MPK_ERR_NOMEM, "CUDA backend: out of host memory for %lld profile records", (long long)total);
    }
    for (int32_t w = 0; w < W; w++) {
        int64_t n = cnt[w] < (unsigned)a->profile_capacity ? cnt[w] : (unsigned)a->profile_capacity;
        if (n == 0) continue;
        int rc = s->api.d2h(k->profile + k->profile_count, a->profile + (int64_t)w * a->profile_capacity,
                            sizeof(mpk_profile_record) * (size_t)n);
        if (rc) {
            free(cnt);
            return dev_fail(k, rc, "profile records");
        }
        for (int64_t i = 0; i < n; i++) {  // times relative to the run's start, as on the CPU
            k->profile[k->profile_count + i].start_ns -= epoch_ns;
            k->profile[k->profile_count + i].end_ns -= epoch_ns;
        }
        k->profile_count += n;
    }
    free(cnt);
    return MPK_OK;
}

static mpk_status meta_transfer(mpk_kernel *k, int to_device, int which) {
    cuda_state *s = state_of(k);
    mpk_tensor *t = k->tensors[k->meta[which]];
    if (to_device) DEV(s->api.h2d(t->device, t->host, t->bytes), t->name);
    else DEV(s->api.d2h(t->host, t->device, t->bytes), t->name);
    return MPK_OK;
}

static mpk_status cuda_run(mpk_kernel *k, mpk_token_fn on_tokens, void *user) {
    cuda_state *s = state_of(k);
    if (s->compile_only)
        return mpk_fail(k, MPK_ERR_UNSUPPORTED, "CUDA backend: the kernel was compiled for %s only "
                        "(params.cuda_arch); clear cuda_arch to run on this machine's GPU", s->arch);
    mpk_dev_args *a = &s->args;
    mpk_batch *b = k->batch;
    double t0 = now_s();
    // As on the CPU: a run starts from iteration 0 with fresh counters and empty queues.
    b->iteration = 0;
    b->num_entries = 0;
    b->decode_generated = 0;
    int32_t *reported = calloc((size_t)b->max_requests, sizeof(int32_t));
    if (!reported) return mpk_fail(k, MPK_ERR_NOMEM, "CUDA backend: out of host memory");
    mpk_stream_begin(b, reported);
    int64_t gen0 = b->total_generated;

    mpk_status st = MPK_OK;
    const char *stall = getenv("MPK_TEST_STALL_EVENT");
    a->stall_event = MPK_EVENT_NONE;
    if (stall && *stall) {
        long e = strtol(stall, NULL, 10);
        if (e >= 0 && e < a->num_events) a->stall_event = (uint32_t)e;
        mpk_log(k, MPK_LOG_WARN, "CUDA: MPK_TEST_STALL_EVENT=%s: event %ld will never fire", stall, e);
    }
    const int64_t W = a->num_workers;
#define ZERO(ptr, bytes) \
    if (!st && s->api.memset_((void *)(ptr), 0, (size_t)(bytes))) st = dev_fail(k, 1, "reset")
    st = reset_launch(k);
    ZERO(a->control, sizeof(mpk_dev_control));
    ZERO(a->profile_count, sizeof(unsigned int) * W);
    for (int32_t i = 0; i < k->num_tensors; i++)
        if (k->tensors[i]->zero_each_run) ZERO(k->tensors[i]->device, k->tensors[i]->bytes);
#undef ZERO
    if (!st) {
        mpk_dev_worker_status idle[64];
        for (int i = 0; i < 64; i++) idle[i] = (mpk_dev_worker_status){-1, 0, MPK_EVENT_NONE, MPK_DEV_W_IDLE};
        for (int64_t w = 0; w < W && !st; w += 64) {
            int64_t n = W - w < 64 ? W - w : 64;
            if (s->api.h2d(a->worker_status + w, idle, sizeof idle[0] * (size_t)n)) st = dev_fail(k, 1, "reset");
        }
    }
    *(volatile int32_t *)s->abort_host = 0;
    if (!st && s->api.h2d(a->batch, b, b->total_bytes)) st = dev_fail(k, 1, "batch upload");
    if (!st) st = meta_transfer(k, 1, MPK_META_TOKENS);
    if (!st) st = meta_transfer(k, 1, MPK_META_STEP);
    mpk_dev_control c;
    memset(&c, 0, sizeof c);
    if (!st) st = launch_and_wait(k, t0, on_tokens, user, reported, &c);
    if (!st && c.error)
        st = mpk_fail(k, MPK_ERR_INTERNAL, "CUDA backend: task %d has a variant the megakernel does not know",
                      c.error_task);
    if (!st) {
        if (s->api.d2h(b, a->batch, b->total_bytes)) st = dev_fail(k, 1, "batch download");
        for (int m = 0; m < 4 && !st; m++) st = meta_transfer(k, 0, m);
        if (!st && k->params.profiling) st = read_profile(k, c.epoch_ns);
        if (!st) {
            // The rest of the tokens, and which requests finished (streamed ones were handed out
            // while the kernel ran).
            mpk_stream_tokens(b, k->tensors[k->meta[MPK_META_TOKENS]]->host, reported, on_tokens, user);
            mpk_run_stats *rs = &k->run_stats;
            rs->iterations = c.iterations;
            rs->prefill_iterations = (int32_t)b->prefill_iterations;
            rs->prompt_tokens = b->total_prompt_tokens;
            rs->generated_tokens = b->total_generated - gen0;
            rs->decode_tokens = b->decode_generated;
            rs->seconds = now_s() - t0;
            rs->prefill_seconds = 1e-9 * (double)c.prefill_ns;
            rs->decode_seconds = 1e-9 * (double)c.decode_ns;
            rs->handovers = c.handovers;
            rs->handover_seconds = 1e-9 * (double)c.handover_ns;
            if (b->status == MPK_BATCH_NO_PAGES)
                st = mpk_fail(k, MPK_ERR_LIMIT, "the KV cache has no free page for any waiting request "
                              "(raise num_pages; num_pages=%d, page_size=%d)", b->num_pages, b->page_size);
        }
    }
    free(reported);
    return st;
}

// ---- tensors and teardown ---------------------------------------------------------------------------

static mpk_status cuda_tensor_read(mpk_kernel *k, const mpk_tensor *t, void *dst, size_t bytes) {
    cuda_state *s = state_of(k);
    if (s->compile_only || !t->device)
        return mpk_fail(k, MPK_ERR_STATE, "tensor_read '%s': the CUDA kernel was compiled only", t->name);
    DEV(s->api.d2h(dst, t->device, bytes), t->name);
    return MPK_OK;
}

static mpk_status cuda_tensor_write(mpk_kernel *k, mpk_tensor *t, const void *src, size_t bytes) {
    cuda_state *s = state_of(k);
    if (s->compile_only || !t->device)
        return mpk_fail(k, MPK_ERR_STATE, "tensor_write '%s': the CUDA kernel was compiled only", t->name);
    DEV(s->api.h2d(t->device, src, bytes), t->name);
    if (t->kind == MPK_TENSOR_META && t->host && t->host != src) memcpy(t->host, src, bytes);
    return MPK_OK;
}

// The device's name and the read bandwidth of a plain streaming kernel, measured now (the
// reference for "% of bandwidth" in benchmarks).
static mpk_status cuda_device_info(mpk_kernel *k, char *name, size_t name_len, double *read_bytes_per_s) {
    cuda_state *s = state_of(k);
    if (!s || s->compile_only || !s->so)
        return mpk_fail(k, MPK_ERR_STATE, "CUDA backend: no device is loaded (compile-only kernel?)");
    if (name && name_len) snprintf(name, name_len, "%s", s->info.name);
    if (read_bytes_per_s) {
        *read_bytes_per_s = 0;
        if (!s->api.read_bandwidth) return mpk_fail(k, MPK_ERR_INTERNAL, "CUDA backend: the megakernel lacks mpk_dev_read_bandwidth");
        DEV(s->api.read_bandwidth(read_bytes_per_s), "the streaming-read measurement");
    }
    return MPK_OK;
}

static void cuda_destroy(mpk_kernel *k) {
    cuda_state *s = state_of(k);
    if (!s) return;
    if (s->so) {
        for (int32_t i = 0; i < s->num_allocs; i++) s->api.free_(s->allocs[i]);
        if (s->abort_host) s->api.host_free(s->abort_host);
    }
    // Tensors this backend allocated lose their device (and shadow host) pointers.
    for (int32_t i = 0; i < k->num_tensors; i++) {
        mpk_tensor *t = k->tensors[i];
        if (t->kind != MPK_TENSOR_DEVICE) t->device = NULL;
        if (s->meta_shadow && s->meta_shadow[i]) {
            t->host = NULL;
            free(s->meta_shadow[i]);
        }
    }
    // The .so stays loaded: its static CUDA runtime registers exit handlers.
    free(s->meta_shadow);
    free(s->allocs);
    free(s->schedule_begin);
    free(s->schedule_tasks);
    free(s);
    k->backend_state = NULL;
}

const mpk_backend_ops *mpk_cuda_backend(void) {
    static const mpk_backend_ops ops = {
        .name = "cuda",
        .configure = cuda_configure,
        .load = cuda_load,
        .run = cuda_run,
        .tensor_read = cuda_tensor_read,
        .tensor_write = cuda_tensor_write,
        .destroy = cuda_destroy,
        .device_info = cuda_device_info,
    };
    return &ops;
}
