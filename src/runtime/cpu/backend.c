// backend.c — the CPU backend: worker and scheduler threads that run the task graph with the
// megakernel's semantics. Event counters never reset (fired for iteration i at num_triggers * i),
// triggers are release increments and waits acquire loads; a wait spins briefly and then sleeps
// on a futex, because tests run more threads than the machine has cores.
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "core/internal.h"
#include "core/request.h"
#include "runtime/cpu/cpu.h"

// ---- clocks and futexes ------------------------------------------------------------------------

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts = {(time_t)(timeout_ns / 1000000000), (long)(timeout_ns % 1000000000)};
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, expected, &ts, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *word) {
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// ---- runtime state -----------------------------------------------------------------------------

#define ENTRY_TERMINATE 0xffffffffu
#define ENTRY_ITERATION 0xfffffffeu  // run this worker's share of the iteration (its static list)

// Multi-producer single-consumer ring. A slot holds entry + 1 (0 = empty). Its capacity bounds
// what one iteration can dispatch to one consumer, and an iteration only begins after every task
// of the previous one was popped, so it never overflows.
typedef struct cpu_queue {
    _Atomic uint64_t *slots;
    uint64_t cap;
    _Atomic uint64_t tail;
    uint64_t head;  // consumer only
} cpu_queue;

struct cpu_rt;

typedef struct cpu_thread {
    struct cpu_rt *rt;
    int32_t id;
    int is_scheduler;
    pthread_t thread;
    int started;
    mpk_profile_record *prof;
    int64_t nprof;
    int overflow;
    _Atomic int64_t waiting_event;  // for timeout reports; -1 when not waiting on an event
    _Atomic int64_t waiting_iter;
    _Atomic int64_t current_task;
} cpu_thread;

typedef struct cpu_rt {
    mpk_kernel *k;
    mpk_task_desc *tasks;           // resolved: operands are host addresses
    _Atomic uint64_t *counters;     // (num_events)
    int32_t W, S;                   // workers, schedulers (0 = static schedule)
    cpu_queue *wq, *sq;
    cpu_thread *threads;            // W workers then S schedulers
    _Atomic uint32_t futex_word;
    _Atomic int32_t sleepers;
    _Atomic int stop;
    _Atomic uint32_t done_word;     // 1 once the run ended (normally or with an error)
    mpk_status status;
    char error[512];
    int64_t stall_event;            // test hook MPK_TEST_STALL_EVENT: its triggers are dropped
    uint64_t rr;                    // round-robin cursor for begin events' JIT tasks (scheduler 0 only)
    mpk_token_fn on_tokens;
    void *user;
    int32_t *reported;
    int64_t iter_start_ns;
    int64_t epoch_ns;
} cpu_rt;

static void wake(cpu_rt *rt) {
    if (atomic_load(&rt->sleepers) > 0) {
        atomic_fetch_add(&rt->futex_word, 1);
        futex_wake_all(&rt->futex_word);
    }
}

// Waits until *word >= target; returns 0 if the run was stopped first.
static int wait_ge(cpu_rt *rt, _Atomic uint64_t *word, uint64_t target) {
    for (int i = 0; i < 128; i++) {
        if (atomic_load_explicit(word, memory_order_acquire) >= target) return 1;
        if (atomic_load_explicit(&rt->stop, memory_order_relaxed)) return 0;
        if (i < 64) cpu_relax();
        else sched_yield();
    }
    for (;;) {
        atomic_fetch_add(&rt->sleepers, 1);
        uint32_t seq = atomic_load(&rt->futex_word);
        if (atomic_load_explicit(word, memory_order_acquire) >= target) {
            atomic_fetch_sub(&rt->sleepers, 1);
            return 1;
        }
        if (atomic_load(&rt->stop)) {
            atomic_fetch_sub(&rt->sleepers, 1);
            return 0;
        }
        futex_wait(&rt->futex_word, seq, 20 * 1000000);
        atomic_fetch_sub(&rt->sleepers, 1);
    }
}

static void queue_push(cpu_queue *q, uint64_t entry) {
    uint64_t i = atomic_fetch_add_explicit(&q->tail, 1, memory_order_relaxed);
    atomic_store_explicit(&q->slots[i % q->cap], entry + 1, memory_order_release);
}

// Pops the next entry; returns 0 when the run was stopped.
static int queue_pop(cpu_rt *rt, cpu_queue *q, uint64_t *entry) {
    _Atomic uint64_t *slot = &q->slots[q->head % q->cap];
    if (!wait_ge(rt, slot, 1)) return 0;
    *entry = atomic_load_explicit(slot, memory_order_acquire) - 1;
    atomic_store_explicit(slot, 0, memory_order_relaxed);
    q->head++;
    return 1;
}

static void stop_run(cpu_rt *rt, mpk_status st, const char *msg) {
    if (st != MPK_OK && rt->status == MPK_OK) {
        rt->status = st;
        snprintf(rt->error, sizeof rt->error, "%s", msg);
    }
    atomic_store(&rt->stop, 1);
    atomic_fetch_add(&rt->futex_word, 1);
    futex_wake_all(&rt->futex_word);
    atomic_store(&rt->done_word, 1);
    futex_wake_all(&rt->done_word);
}

// ---- iterations --------------------------------------------------------------------------------

static int32_t *meta_i32(mpk_kernel *k, mpk_meta m) { return (int32_t *)k->tensors[k->meta[m]]->host; }

// prepare_next_batch and the start of the next iteration; run by one thread (scheduler 0, or
// worker 0 in the static mode). Returns 0 when the run is over.
static int begin_iteration(cpu_rt *rt) {
    mpk_kernel *k = rt->k;
    mpk_batch *b = k->batch;
    int64_t t = now_ns();
    if (b->iteration > 0) {
        double dt = 1e-9 * (double)(t - rt->iter_start_ns);
        if (b->iter_prompt_tokens > 0) k->run_stats.prefill_seconds += dt;
        else k->run_stats.decode_seconds += dt;
    }
    int32_t status = mpk_batch_prepare(b, meta_i32(k, MPK_META_TOKENS), meta_i32(k, MPK_META_STEP),
                                       meta_i32(k, MPK_META_OUTPUT_IDS), meta_i32(k, MPK_META_INPUT_IDS));
    mpk_stream_tokens(b, meta_i32(k, MPK_META_TOKENS), rt->reported, rt->on_tokens, rt->user);
    if (status == MPK_BATCH_NO_PAGES) {
        stop_run(rt, MPK_ERR_LIMIT, "the KV cache has no free page for any waiting request (raise num_pages)");
        return 0;
    }
    if (status != MPK_BATCH_RUNNING) {
        stop_run(rt, MPK_OK, "");
        return 0;
    }
    k->run_stats.iterations++;
    rt->iter_start_ns = now_ns();
    uint64_t it = (uint64_t)b->iteration;
    const mpk_graph *g = &k->graph;
    if (rt->S > 0 && !k->params.jit_dispatch) {
        // Ahead of time: every task of the iteration, in graph order, round-robin. The
        // round-robin shares are the compile-time lists, so one entry per worker hands a worker
        // its whole share (as on the GPU) instead of one push per task.
        for (int32_t w = 0; w < rt->W; w++) queue_push(&rt->wq[w], (it << 32) | ENTRY_ITERATION);
    }
    for (int32_t e = 0; e < g->num_begin_events; e++) {
        atomic_fetch_add_explicit(&rt->counters[e], 1, memory_order_release);
        if (rt->S > 0 && (g->events[e].flags & MPK_EVENT_FLAG_JIT))
            for (uint32_t i = g->events[e].first_task; i < g->events[e].last_task; i++)
                queue_push(&rt->wq[rt->rr++ % (uint64_t)rt->W], (it << 32) | i);
    }
    wake(rt);
    return 1;
}

static void trigger(cpu_rt *rt, const mpk_task_desc *d, uint64_t it) {
    const mpk_graph *g = &rt->k->graph;
    for (uint32_t j = d->trigger_begin; j < d->trigger_end; j++) {
        uint32_t e = g->triggers[j];
        if ((int64_t)e == rt->stall_event) continue;
        uint64_t old = atomic_fetch_add_explicit(&rt->counters[e], 1, memory_order_acq_rel);
        const mpk_event_desc *ev = &g->events[e];
        if (old + 1 != (uint64_t)ev->num_triggers * it || rt->S == 0) continue;
        if (ev->flags & MPK_EVENT_FLAG_END)
            queue_push(&rt->sq[0], (it << 32) | e);
        else if (ev->flags & MPK_EVENT_FLAG_JIT)
            queue_push(&rt->sq[e % (uint32_t)rt->S], (it << 32) | e);
    }
    wake(rt);
}

// Waits for the task's event, runs it, records it and triggers its events. 0 when stopped.
static int execute(cpu_thread *th, int32_t task, uint64_t it) {
    cpu_rt *rt = th->rt;
    const mpk_graph *g = &rt->k->graph;
    const mpk_task_desc *d = &rt->tasks[task];
    const mpk_event_desc *ev = &g->events[d->wait_event];
    int64_t t0 = rt->k->params.profiling ? now_ns() : 0;
    atomic_store_explicit(&th->waiting_iter, (int64_t)it, memory_order_relaxed);
    atomic_store_explicit(&th->waiting_event, d->wait_event, memory_order_relaxed);
    if (!wait_ge(rt, &rt->counters[d->wait_event], (uint64_t)ev->num_triggers * it)) return 0;
    atomic_store_explicit(&th->waiting_event, -1, memory_order_relaxed);
    atomic_store_explicit(&th->current_task, task, memory_order_relaxed);
    int64_t t1 = rt->k->params.profiling ? now_ns() : 0;
    mpk_cpu_run_task(d, &g->variants[d->variant], rt->k->batch);
    if (rt->k->params.profiling) {
        int64_t t2 = now_ns();
        if (th->nprof < rt->k->params.profile_capacity) {
            mpk_profile_record *r = &th->prof[th->nprof++];
            r->task_type = d->type;
            r->worker = (uint16_t)th->id;
            r->task = task;
            r->layer = (int32_t)d->layer;
            r->iteration = (int32_t)it;
            r->start_ns = t1 - rt->epoch_ns;
            r->end_ns = t2 - rt->epoch_ns;
            r->wait_ns = t1 - t0;
            r->inputs_ns = r->body_ns = -1;
        } else {
            th->overflow = 1;
        }
    }
    atomic_store_explicit(&th->current_task, -1, memory_order_relaxed);
    trigger(rt, d, it);
    return 1;
}

// ---- threads -----------------------------------------------------------------------------------

static void *worker_dynamic(void *arg) {
    cpu_thread *th = arg;
    cpu_rt *rt = th->rt;
    uint64_t entry;
    const mpk_graph *g = &rt->k->graph;
    while (queue_pop(rt, &rt->wq[th->id], &entry)) {
        uint32_t task = (uint32_t)entry;
        if (task == ENTRY_TERMINATE) break;
        if (task == ENTRY_ITERATION) {
            for (int32_t i = g->worker_task_begin[th->id]; i < g->worker_task_begin[th->id + 1]; i++)
                if (!execute(th, g->worker_tasks[i], entry >> 32)) return NULL;
            continue;
        }
        if (!execute(th, (int32_t)task, entry >> 32)) break;
    }
    return NULL;
}

static void *scheduler(void *arg) {
    cpu_thread *th = arg;
    cpu_rt *rt = th->rt;
    const mpk_graph *g = &rt->k->graph;
    int32_t id = th->id - rt->W;
    if (id == 0 && !begin_iteration(rt)) return NULL;
    // Each scheduler deals its events' tasks from its own cursor: rt->rr belongs to the thread
    // that begins iterations (scheduler 0).
    uint64_t cursor = (uint64_t)id;
    uint64_t entry;
    while (queue_pop(rt, &rt->sq[id], &entry)) {
        uint32_t e = (uint32_t)entry;
        uint64_t it = entry >> 32;
        if (g->events[e].flags & MPK_EVENT_FLAG_END) {
            if (!begin_iteration(rt)) break;
            continue;
        }
        for (uint32_t i = g->events[e].first_task; i < g->events[e].last_task; i++)
            queue_push(&rt->wq[cursor++ % (uint64_t)rt->W], (it << 32) | i);
        wake(rt);
    }
    return NULL;
}

// Static schedule: worker w runs its compile-time list every iteration; worker 0 also prepares
// the batches. Every worker starts an iteration by waiting for begin event 0.
static void *worker_static(void *arg) {
    cpu_thread *th = arg;
    cpu_rt *rt = th->rt;
    const mpk_graph *g = &rt->k->graph;
    int32_t w = th->id;
    if (w == 0 && !begin_iteration(rt)) return NULL;
    for (uint64_t it = 1;; it++) {
        if (!wait_ge(rt, &rt->counters[0], it)) return NULL;
        for (int32_t i = g->worker_task_begin[w]; i < g->worker_task_begin[w + 1]; i++)
            if (!execute(th, g->worker_tasks[i], it)) return NULL;
        if (w == 0) {
            int32_t end = g->num_events - 1;
            atomic_store(&th->waiting_event, end);
            if (!wait_ge(rt, &rt->counters[end], (uint64_t)g->events[end].num_triggers * it)) return NULL;
            atomic_store(&th->waiting_event, -1);
            if (!begin_iteration(rt)) return NULL;
        }
    }
}

// ---- the backend interface ---------------------------------------------------------------------

static mpk_status cpu_configure(mpk_kernel *k) {
    if (k->params.num_workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        k->params.num_workers = n < 1 ? 1 : (n > 64 ? 64 : (int32_t)n);
    }
    if (k->params.world_size > 1)
        return mpk_fail(k, MPK_ERR_UNSUPPORTED, "the CPU backend runs one rank (world_size=%d)", k->params.world_size);
    return MPK_OK;
}

static void cpu_free_state(cpu_rt *rt) {
    if (!rt) return;
    for (int32_t i = 0; rt->wq && i < rt->W; i++) free(rt->wq[i].slots);
    for (int32_t i = 0; rt->sq && i < rt->S; i++) free(rt->sq[i].slots);
    if (rt->threads)
        for (int32_t i = 0; i < rt->W + rt->S; i++) free(rt->threads[i].prof);
    free(rt->wq);
    free(rt->sq);
    free(rt->threads);
    free(rt->tasks);
    free((void *)rt->counters);
    free(rt->reported);
    free(rt);
}

static int queue_init(cpu_queue *q, uint64_t cap) {
    q->cap = cap;
    q->slots = calloc(cap, sizeof *q->slots);
    atomic_store(&q->tail, 0);
    q->head = 0;
    return q->slots != NULL;
}

static mpk_status cpu_load(mpk_kernel *k) {
    // Tensors: attached host memory is used in place; new and meta tensors are allocated zeroed.
    for (int32_t i = 0; i < k->num_tensors; i++) {
        mpk_tensor *t = k->tensors[i];
        if (t->kind == MPK_TENSOR_DEVICE)
            return mpk_fail(k, MPK_ERR_UNSUPPORTED, "tensor '%s' is device memory; the CPU backend needs host memory", t->name);
        if (t->kind == MPK_TENSOR_HOST || t->host) continue;
        size_t bytes = (t->bytes + 63) & ~(size_t)63;
        t->host = aligned_alloc(64, bytes);
        if (!t->host) return mpk_fail(k, MPK_ERR_NOMEM, "out of memory allocating tensor '%s' (%zu bytes)", t->name, t->bytes);
        memset(t->host, 0, bytes);
    }
    cpu_rt *rt = calloc(1, sizeof *rt);
    if (!rt) return mpk_fail(k, MPK_ERR_NOMEM, "out of memory");
    k->backend_state = rt;
    const mpk_graph *g = &k->graph;
    rt->k = k;
    rt->W = k->params.num_workers;
    rt->S = k->params.num_local_schedulers;
    rt->tasks = malloc((size_t)g->num_tasks * sizeof *rt->tasks);
    rt->counters = calloc((size_t)g->num_events, sizeof *rt->counters);
    rt->wq = calloc((size_t)rt->W, sizeof *rt->wq);
    rt->sq = rt->S ? calloc((size_t)rt->S, sizeof *rt->sq) : NULL;
    rt->threads = calloc((size_t)(rt->W + rt->S), sizeof *rt->threads);
    rt->reported = calloc((size_t)k->batch->max_requests, sizeof *rt->reported);
    if (!rt->tasks || !rt->counters || !rt->wq || (rt->S && !rt->sq) || !rt->threads || !rt->reported)
        return mpk_fail(k, MPK_ERR_NOMEM, "out of memory");
    uint64_t wcap = (uint64_t)g->num_tasks + 8, scap = (uint64_t)g->num_events + 8;
    for (int32_t i = 0; i < rt->W; i++)
        if (!queue_init(&rt->wq[i], wcap)) return mpk_fail(k, MPK_ERR_NOMEM, "out of memory");
    for (int32_t i = 0; i < rt->S; i++)
        if (!queue_init(&rt->sq[i], scap)) return mpk_fail(k, MPK_ERR_NOMEM, "out of memory");
    for (int32_t i = 0; i < rt->W + rt->S; i++) {
        rt->threads[i].rt = rt;
        rt->threads[i].id = i;
        rt->threads[i].is_scheduler = i >= rt->W;
        if (k->params.profiling && i < rt->W) {
            rt->threads[i].prof = malloc((size_t)k->params.profile_capacity * sizeof(mpk_profile_record));
            if (!rt->threads[i].prof) return mpk_fail(k, MPK_ERR_NOMEM, "out of memory for the profile buffers");
        }
    }
    // Resolve operands: (tensor, byte offset) -> host address.
    for (int32_t i = 0; i < g->num_tasks; i++) {
        rt->tasks[i] = g->tasks[i];
        for (int j = 0; j < MPK_TASK_MAX_OPERANDS; j++) {
            int32_t t = k->task_operand_tensor[(int64_t)i * MPK_TASK_MAX_OPERANDS + j];
            rt->tasks[i].operand[j] = t < 0 ? 0 : (uint64_t)(uintptr_t)((char *)k->tensors[t]->host + g->tasks[i].operand[j]);
        }
    }
    const char *stall = getenv("MPK_TEST_STALL_EVENT");
    rt->stall_event = stall ? atoll(stall) : -1;
    return MPK_OK;
}

static void describe_stall(cpu_rt *rt, char *msg, size_t len, double seconds) {
    mpk_kernel *k = rt->k;
    const mpk_graph *g = &k->graph;
    int n = snprintf(msg, len, "timeout after %.1f s in iteration %d:", seconds, k->batch->iteration);
    int shown = 0;
    for (int32_t i = 0; i < rt->W && n > 0 && (size_t)n < len; i++) {
        int64_t e = atomic_load(&rt->threads[i].waiting_event);
        if (e < 0) continue;
        int64_t it = atomic_load(&rt->threads[i].waiting_iter);
        const mpk_event_desc *ev = &g->events[e];
        uint64_t have = atomic_load(&rt->counters[e]);
        uint64_t base = (uint64_t)ev->num_triggers * (uint64_t)(it > 0 ? it - 1 : 0);
        const char *layer = ev->first_task < ev->last_task ? k->layers[g->tasks[ev->first_task].layer].name : "end of iteration";
        n += snprintf(msg + n, len - (size_t)n, "%s worker %d waits on event %lld (layer '%s', %llu/%u triggers)",
                      shown ? ";" : "", i, (long long)e, layer,
                      (unsigned long long)(have > base ? have - base : 0), ev->num_triggers);
        if (++shown == 4) break;
    }
    if (!shown && n > 0 && (size_t)n < len) snprintf(msg + n, len - (size_t)n, " no worker is waiting on an event");
}

static mpk_status cpu_run(mpk_kernel *k, mpk_token_fn on_tokens, void *user) {
    cpu_rt *rt = k->backend_state;
    const mpk_graph *g = &k->graph;
    // A run starts from iteration 0 with fresh counters and empty queues.
    k->batch->iteration = 0;
    k->batch->num_entries = 0;
    k->batch->decode_generated = 0;
    for (int32_t e = 0; e < g->num_events; e++) atomic_store(&rt->counters[e], 0);
    for (int32_t i = 0; i < k->num_tensors; i++)
        if (k->tensors[i]->zero_each_run) memset(k->tensors[i]->host, 0, k->tensors[i]->bytes);
    for (int32_t i = 0; i < rt->W; i++) {
        memset((void *)rt->wq[i].slots, 0, rt->wq[i].cap * sizeof *rt->wq[i].slots);
        atomic_store(&rt->wq[i].tail, 0);
        rt->wq[i].head = 0;
    }
    for (int32_t i = 0; i < rt->S; i++) {
        memset((void *)rt->sq[i].slots, 0, rt->sq[i].cap * sizeof *rt->sq[i].slots);
        atomic_store(&rt->sq[i].tail, 0);
        rt->sq[i].head = 0;
    }
    atomic_store(&rt->stop, 0);
    atomic_store(&rt->done_word, 0);
    atomic_store(&rt->sleepers, 0);
    rt->status = MPK_OK;
    rt->error[0] = 0;
    rt->rr = 0;
    rt->on_tokens = on_tokens;
    rt->user = user;
    mpk_stream_begin(k->batch, rt->reported);
    rt->epoch_ns = now_ns();
    int64_t gen0 = k->batch->total_generated;
    for (int32_t i = 0; i < rt->W + rt->S; i++) {
        cpu_thread *th = &rt->threads[i];
        th->nprof = 0;
        th->overflow = 0;
        atomic_store(&th->waiting_event, -1);
        atomic_store(&th->current_task, -1);
    }
    mpk_status st = MPK_OK;
    int32_t nthreads = rt->W + rt->S;
    for (int32_t i = 0; i < nthreads; i++) {
        cpu_thread *th = &rt->threads[i];
        void *(*fn)(void *) = th->is_scheduler ? scheduler : (rt->S ? worker_dynamic : worker_static);
        th->started = pthread_create(&th->thread, NULL, fn, th) == 0;
        if (!th->started) {
            stop_run(rt, MPK_ERR_NOMEM, "could not start a runtime thread");
            break;
        }
    }
    // Wait with a deadline; on timeout report the stuck events and stop the threads.
    double timeout = k->params.timeout_s;
    while (!atomic_load(&rt->done_word)) {
        futex_wait(&rt->done_word, 0, 50 * 1000000);
        double elapsed = 1e-9 * (double)(now_ns() - rt->epoch_ns);
        if (timeout > 0 && elapsed > timeout && !atomic_load(&rt->done_word)) {
            char msg[512];
            describe_stall(rt, msg, sizeof msg, elapsed);
            stop_run(rt, MPK_ERR_TIMEOUT, msg);
        }
    }
    for (int32_t i = 0; i < nthreads; i++)
        if (rt->threads[i].started) pthread_join(rt->threads[i].thread, NULL);
    if (rt->status != MPK_OK) st = mpk_fail(k, rt->status, "%s", rt->error);

    mpk_run_stats *rs = &k->run_stats;
    rs->seconds = 1e-9 * (double)(now_ns() - rt->epoch_ns);
    rs->prompt_tokens = k->batch->total_prompt_tokens;
    rs->generated_tokens = k->batch->total_generated - gen0;
    rs->decode_tokens = k->batch->decode_generated;
    rs->prefill_iterations = (int32_t)k->batch->prefill_iterations;
    if (k->params.profiling) {
        int64_t total = 0;
        for (int32_t i = 0; i < rt->W; i++) total += rt->threads[i].nprof;
        free(k->profile);
        k->profile = malloc((size_t)(total ? total : 1) * sizeof *k->profile);
        k->profile_count = 0;
        k->profile_overflowed = 0;
        if (!k->profile) return st ? st : mpk_fail(k, MPK_ERR_NOMEM, "out of memory for the profile");
        for (int32_t i = 0; i < rt->W; i++) {
            memcpy(k->profile + k->profile_count, rt->threads[i].prof, (size_t)rt->threads[i].nprof * sizeof *k->profile);
            k->profile_count += rt->threads[i].nprof;
            k->profile_overflowed |= rt->threads[i].overflow;
        }
    }
    return st;
}

static mpk_status cpu_tensor_read(mpk_kernel *k, const mpk_tensor *t, void *dst, size_t bytes) {
    (void)k;
    memcpy(dst, t->host, bytes);
    return MPK_OK;
}

static mpk_status cpu_tensor_write(mpk_kernel *k, mpk_tensor *t, const void *src, size_t bytes) {
    (void)k;
    memcpy(t->host, src, bytes);
    return MPK_OK;
}

static void cpu_destroy(mpk_kernel *k) {
    cpu_free_state(k->backend_state);
    k->backend_state = NULL;
    for (int32_t i = 0; i < k->num_tensors; i++) {
        mpk_tensor *t = k->tensors[i];
        if (t->kind != MPK_TENSOR_HOST && t->kind != MPK_TENSOR_DEVICE) {
            free(t->host);
            t->host = NULL;
        }
    }
}

const mpk_backend_ops *mpk_cpu_backend(void) {
    static const mpk_backend_ops ops = {
        .name = "cpu",
        .configure = cpu_configure,
        .load = cpu_load,
        .run = cpu_run,
        .tensor_read = cpu_tensor_read,
        .tensor_write = cpu_tensor_write,
        .destroy = cpu_destroy,
        .device_info = mpk_cpu_device_info,
    };
    return &ops;
}
