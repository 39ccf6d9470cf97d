// compile.c — layers → task graph. Dependencies come exactly from overlapping slices (read after
// write, write after read, write after write), edges implied by longer paths are removed,
// consumers with the same producer set (within a layer) share one event, and tasks are renumbered
// so each event releases a contiguous range. The result is kernel->graph (see kernels/task.h).
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/internal.h"

// ---- small growable int vector -----------------------------------------------------------------

typedef struct ivec {
    int32_t *v;
    int64_t n, cap;
} ivec;

static int ivec_push(ivec *a, int32_t x) {
    if (a->n == a->cap) {
        int64_t cap = a->cap ? 2 * a->cap : 256;
        int32_t *p = realloc(a->v, (size_t)cap * sizeof *p);
        if (!p) return 0;
        a->v = p;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return 1;
}

static void ivec_free(ivec *a) { free(a->v); memset(a, 0, sizeof *a); }

static int cmp_desc(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x < y) - (x > y);
}

static int cmp_asc(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static int overlap(const mpk_access *a, const mpk_access *b) {
    for (int i = 0; i < MPK_MAX_DIMS; i++)
        if (a->hi[i] <= b->lo[i] || b->hi[i] <= a->lo[i]) return 0;
    return 1;
}

static int contains(const mpk_access *outer, const mpk_access *inner) {
    for (int i = 0; i < MPK_MAX_DIMS; i++)
        if (inner->lo[i] < outer->lo[i] || inner->hi[i] > outer->hi[i]) return 0;
    return 1;
}

// ---- compiler state ----------------------------------------------------------------------------

typedef struct live_rec {
    int32_t task;    // build-order record
    int32_t access;  // index into kernel->accesses
} live_rec;

typedef struct live_list {
    live_rec *v;
    int32_t n, cap;
} live_list;

typedef struct compiler {
    mpk_kernel *k;
    int32_t n;                 // tasks
    live_list *live;           // per tensor: accesses not yet covered by a later write
    int64_t *dep_begin;        // (n + 1) CSR of reduced dependencies (build order)
    ivec deps;
    int32_t *stamp;            // (n) visit marks
    int32_t stamp_now;
    int32_t *stack;            // (n) DFS stack
    int64_t exact_deps;
} compiler;

static int live_push(live_list *l, int32_t task, int32_t access) {
    if (l->n == l->cap) {
        int32_t cap = l->cap ? 2 * l->cap : 16;
        live_rec *p = realloc(l->v, (size_t)cap * sizeof *p);
        if (!p) return 0;
        l->v = p;
        l->cap = cap;
    }
    l->v[l->n].task = task;
    l->v[l->n].access = access;
    l->n++;
    return 1;
}

// Producers of task t against the live accesses: appended to `out` without duplicates.
static void collect_producers(compiler *c, int32_t t, ivec *out, int *oom) {
    mpk_kernel *k = c->k;
    const mpk_task_rec *r = &k->recs[t];
    int32_t mark = ++c->stamp_now;
    for (int32_t a = r->first_access; a < r->first_access + r->num_accesses; a++) {
        const mpk_access *acc = &k->accesses[a];
        const live_list *l = &c->live[acc->tensor];
        for (int32_t i = 0; i < l->n; i++) {
            const mpk_access *prev = &k->accesses[l->v[i].access];
            if (!acc->write && !prev->write) continue;
            int32_t p = l->v[i].task;
            if (c->stamp[p] == mark || !overlap(acc, prev)) continue;
            c->stamp[p] = mark;
            if (!ivec_push(out, p)) *oom = 1;
        }
    }
}

// Transitive reduction of one task's producer set, in place: keeps d only when no other kept
// producer has d as an ancestor. Producers are visited from the newest; ancestors only have
// smaller ids, so a DFS through already-reduced edges, pruned below the oldest producer, decides.
static int32_t reduce(compiler *c, int32_t *set, int32_t n) {
    if (n <= 1) return n;
    qsort(set, (size_t)n, sizeof *set, cmp_desc);
    int32_t lowest = set[n - 1];
    int32_t mark = ++c->stamp_now;
    int32_t kept = 0;
    for (int32_t i = 0; i < n; i++) {
        int32_t d = set[i];
        if (c->stamp[d] == mark) continue;  // an ancestor of a kept producer
        set[kept++] = d;
        int32_t sp = 0;
        c->stack[sp++] = d;
        c->stamp[d] = mark;
        while (sp) {
            int32_t u = c->stack[--sp];
            for (int64_t e = c->dep_begin[u]; e < c->dep_begin[u + 1]; e++) {
                int32_t w = c->deps.v[e];
                if (w < lowest || c->stamp[w] == mark) continue;
                c->stamp[w] = mark;
                c->stack[sp++] = w;
            }
        }
    }
    qsort(set, (size_t)kept, sizeof *set, cmp_asc);
    return kept;
}

// Within a layer, tasks must be independent: a tensor both read and written by the layer must
// not have one task's write overlap another task's access.
static mpk_status check_layer_independent(compiler *c, const mpk_layer *L) {
    mpk_kernel *k = c->k;
    int32_t t0 = L->first_task, t1 = L->first_task + L->num_tasks;
    for (int32_t t = t0; t < t1; t++) {
        const mpk_task_rec *r = &k->recs[t];
        for (int32_t a = r->first_access; a < r->first_access + r->num_accesses; a++) {
            const mpk_access *w = &k->accesses[a];
            if (!w->write) continue;
            for (int32_t u = t0; u < t1; u++) {
                if (u == t) continue;
                const mpk_task_rec *q = &k->recs[u];
                for (int32_t b = q->first_access; b < q->first_access + q->num_accesses; b++) {
                    const mpk_access *o = &k->accesses[b];
                    if (o->tensor == w->tensor && overlap(w, o))
                        return mpk_fail(k, MPK_ERR_SHAPE,
                                        "layer '%s': tasks %d and %d both touch tensor '%s' where one writes; "
                                        "an output may alias an input only slice for slice",
                                        L->name, t - t0, u - t0, k->tensors[w->tensor]->name);
                }
            }
        }
    }
    return MPK_OK;
}

static int layer_reads_and_writes_same(const mpk_kernel *k, const mpk_layer *L) {
    const mpk_task_rec *r = &k->recs[L->first_task];
    for (int32_t a = r->first_access; a < r->first_access + r->num_accesses; a++)
        for (int32_t b = r->first_access; b < r->first_access + r->num_accesses; b++)
            if (a != b && k->accesses[a].tensor == k->accesses[b].tensor &&
                (k->accesses[a].write || k->accesses[b].write))
                return 1;
    return 0;
}

// ---- dependency analysis -----------------------------------------------------------------------

static mpk_status analyse(compiler *c) {
    mpk_kernel *k = c->k;
    int oom = 0;
    ivec tmp = {0};
    c->dep_begin[0] = 0;
    for (int32_t li = 0; li < k->num_layers; li++) {
        const mpk_layer *L = &k->layers[li];
        if (L->num_tasks > 1 && layer_reads_and_writes_same(k, L)) {
            mpk_status st = check_layer_independent(c, L);
            if (st) { ivec_free(&tmp); return st; }
        }
        // Phase 1: producers of every task of the layer, against the state before the layer.
        for (int32_t t = L->first_task; t < L->first_task + L->num_tasks; t++) {
            tmp.n = 0;
            collect_producers(c, t, &tmp, &oom);
            c->exact_deps += tmp.n;
            int32_t kept = oom ? 0 : reduce(c, tmp.v, (int32_t)tmp.n);
            for (int32_t i = 0; i < kept; i++)
                if (!ivec_push(&c->deps, tmp.v[i])) oom = 1;
            c->dep_begin[t + 1] = c->deps.n;
        }
        // Phase 2: the layer's writes retire the live accesses they cover; then its own
        // accesses become live.
        for (int32_t t = L->first_task; t < L->first_task + L->num_tasks; t++) {
            const mpk_task_rec *r = &k->recs[t];
            for (int32_t a = r->first_access; a < r->first_access + r->num_accesses; a++) {
                const mpk_access *w = &k->accesses[a];
                if (!w->write) continue;
                live_list *l = &c->live[w->tensor];
                int32_t j = 0;
                for (int32_t i = 0; i < l->n; i++)
                    if (!contains(w, &k->accesses[l->v[i].access])) l->v[j++] = l->v[i];
                l->n = j;
            }
        }
        for (int32_t t = L->first_task; t < L->first_task + L->num_tasks; t++) {
            const mpk_task_rec *r = &k->recs[t];
            for (int32_t a = r->first_access; a < r->first_access + r->num_accesses; a++)
                if (!live_push(&c->live[k->accesses[a].tensor], t, a)) oom = 1;
        }
        if (oom) break;
    }
    ivec_free(&tmp);
    return oom ? mpk_fail(k, MPK_ERR_NOMEM, "out of memory in the dependency analysis") : MPK_OK;
}

// ---- events and linearisation ------------------------------------------------------------------

typedef struct event_key {
    int32_t layer;
    int64_t begin, end;  // producer set: c->deps.v[begin, end)
    uint64_t hash;
} event_key;

static uint64_t hash_set(int32_t layer, const int32_t *v, int64_t n) {
    uint64_t h = 1469598103934665603ull ^ (uint64_t)(uint32_t)layer;
    h *= 1099511628211ull;
    for (int64_t i = 0; i < n; i++) {
        h ^= (uint64_t)(uint32_t)v[i];
        h *= 1099511628211ull;
    }
    return h;
}

// ---- interchangeable product tasks (the prompt kernel's tiles) ----------------------------------

static int32_t lowbit32(uint32_t x) { return (int32_t)(x & (~x + 1u)); }

// A product layer's tasks each compute a column slice of every row. The GPU's prompt kernel
// multiplies a prefill chunk's rows in tiles of rows x columns instead (linear.cuh,
// mpk_gemm_tile): within an aligned block of B tasks, task j takes the j % B-th share of the
// prompt rows for the whole block's columns. That is only correct when nothing can tell the
// block's tasks apart: they wait for the same event, and every later task that depends on one
// of them depends on all of them. The second holds when every task's reduced producers in the
// layer are unions of aligned blocks (by induction over build order, so is every task's whole
// ancestry). Each eligible layer's tasks get B in iparam[1] (< 2: no tiles) and their index in
// the layer in iparam[2]. Decode rows stay on each task's own slice (the GEMV), so a request's
// values still do not depend on its batch.
static int tileable(const mpk_kernel *k, const mpk_layer *L) {
    if (L->grid.y != 1 || L->num_tasks < 2 || L->num_tasks != L->grid.x) return 0;
    const mpk_task_desc *d = &k->recs[L->first_task].desc;
    switch (L->op) {
    case MPK_TASK_LINEAR:
    case MPK_TASK_LINEAR_RESIDUAL:
    case MPK_TASK_SILU_MUL_LINEAR_RESIDUAL:
        return 1;
    case MPK_TASK_RMSNORM_LINEAR:  // not the sampled-rows-only LM head: its prompt rows are few
        return k->variants[d->variant].p[5] == 0;
    default:  // (RESIDUAL_RMSNORM_LINEAR's tasks also write x_out columns of their own)
        return 0;
    }
}

static int32_t layer_of(const mpk_kernel *k, int32_t t) { return (int32_t)k->recs[t].desc.layer; }

static mpk_status mark_tile_blocks(compiler *c, const int32_t *task_event) {
    mpk_kernel *k = c->k;
    uint32_t *runs = calloc((size_t)k->num_layers, sizeof *runs);  // OR of run bounds per layer
    if (!runs) return mpk_fail(k, MPK_ERR_NOMEM, "out of memory");
    // Runs of consecutive producers within one layer (reduce() left each set ascending; a layer's
    // tasks are consecutive in build order): [s, e) in layer-local indices.
    for (int32_t v = 0; v < c->n; v++) {
        const int64_t b = c->dep_begin[v], e = c->dep_begin[v + 1];
        for (int64_t i = b; i < e;) {
            const int32_t d0 = c->deps.v[i], li = layer_of(k, d0);
            int64_t j = i + 1;
            while (j < e && c->deps.v[j] == c->deps.v[j - 1] + 1 && layer_of(k, c->deps.v[j]) == li) j++;
            const int32_t s = d0 - k->layers[li].first_task;
            runs[li] |= (uint32_t)s | (uint32_t)(s + (j - i));
            i = j;
        }
    }
    for (int32_t li = 0; li < k->num_layers; li++) {
        const mpk_layer *L = &k->layers[li];
        if (!tileable(k, L)) continue;
        int32_t B = lowbit32((uint32_t)L->num_tasks);
        if (runs[li]) B = B < lowbit32(runs[li]) ? B : lowbit32(runs[li]);
        for (int32_t j = 1; j < L->num_tasks && B > 1; j++)
            if (task_event[L->first_task + j] != task_event[L->first_task + j - 1] && lowbit32((uint32_t)j) < B)
                B = lowbit32((uint32_t)j);
        if (B < 2) continue;
        for (int32_t j = 0; j < L->num_tasks; j++) {
            k->recs[L->first_task + j].desc.iparam[1] = B;
            k->recs[L->first_task + j].desc.iparam[2] = j;
        }
    }
    free(runs);
    return MPK_OK;
}

typedef struct order_item {
    int32_t event;
    int32_t task;
} order_item;

static int cmp_order(const void *a, const void *b) {
    const order_item *x = a, *y = b;
    if (x->event != y->event) return (x->event > y->event) - (x->event < y->event);
    return (x->task > y->task) - (x->task < y->task);
}

static mpk_status build_graph(compiler *c) {
    mpk_kernel *k = c->k;
    int32_t n = c->n;
    mpk_status st = MPK_OK;
    // Event of each task, found through a hash table of (layer, producer set).
    int32_t *task_event = malloc((size_t)n * sizeof *task_event);
    event_key *keys = malloc((size_t)(n + 2) * sizeof *keys);
    int64_t hcap = 1;
    while (hcap < 2 * (int64_t)n + 16) hcap <<= 1;
    int32_t *htab = malloc((size_t)hcap * sizeof *htab);
    if (!task_event || !keys || !htab) {
        st = mpk_fail(k, MPK_ERR_NOMEM, "out of memory building events");
        goto done;
    }
    for (int64_t i = 0; i < hcap; i++) htab[i] = -1;
    int32_t nkeys = 0;
    for (int32_t t = 0; t < n; t++) {
        int64_t b = c->dep_begin[t], e = c->dep_begin[t + 1];
        int32_t layer = (int32_t)k->recs[t].desc.layer;
        uint64_t h = hash_set(layer, e > b ? c->deps.v + b : NULL, e - b);
        int64_t slot = (int64_t)(h & (uint64_t)(hcap - 1));
        int32_t found = -1;
        while (htab[slot] >= 0) {
            event_key *q = &keys[htab[slot]];
            if (q->hash == h && q->layer == layer && q->end - q->begin == e - b &&
                (e == b || memcmp(c->deps.v + q->begin, c->deps.v + b, (size_t)(e - b) * sizeof(int32_t)) == 0)) {
                found = htab[slot];
                break;
            }
            slot = (slot + 1) & (hcap - 1);
        }
        if (found < 0) {
            found = nkeys++;
            keys[found].layer = layer;
            keys[found].begin = b;
            keys[found].end = e;
            keys[found].hash = h;
            htab[slot] = found;
        }
        task_event[t] = found;
    }
    if ((st = mark_tile_blocks(c, task_event))) goto done;
    // Number events: begin events (empty producer sets) first, then the rest in order of first
    // appearance, then the end event.
    int32_t *event_id = malloc((size_t)nkeys * sizeof *event_id);
    if (!event_id) { st = mpk_fail(k, MPK_ERR_NOMEM, "out of memory"); goto done; }
    int32_t nev = 0, nbegin = 0;
    for (int32_t i = 0; i < nkeys; i++)
        if (keys[i].end == keys[i].begin) event_id[i] = nev++;
    nbegin = nev;
    for (int32_t i = 0; i < nkeys; i++)
        if (keys[i].end != keys[i].begin) event_id[i] = nev++;
    int32_t end_event = nev++;

    // Linear order: by event, then build order (topological: producers live in earlier layers,
    // hence in events numbered earlier, and begin events' tasks have no producers at all).
    order_item *ord = malloc((size_t)n * sizeof *ord);
    int32_t *new_index = malloc((size_t)n * sizeof *new_index);
    int32_t *consumers = calloc((size_t)n, sizeof *consumers);
    if (!ord || !new_index || !consumers) {
        free(event_id); free(ord); free(new_index); free(consumers);
        st = mpk_fail(k, MPK_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int32_t t = 0; t < n; t++) {
        ord[t].event = event_id[task_event[t]];
        ord[t].task = t;
    }
    qsort(ord, (size_t)n, sizeof *ord, cmp_order);
    for (int32_t i = 0; i < n; i++) new_index[ord[i].task] = i;

    // Triggers: producer p increments every event whose set holds p; sinks increment the end.
    for (int32_t i = 0; i < nkeys; i++)
        for (int64_t e = keys[i].begin; e < keys[i].end; e++) consumers[c->deps.v[e]]++;
    int64_t ntrig = 0;
    for (int32_t t = 0; t < n; t++) ntrig += consumers[t] ? consumers[t] : 1;
    if (ntrig > INT32_MAX) { st = mpk_fail(k, MPK_ERR_LIMIT, "too many triggers"); goto free_more; }

    mpk_graph *g = &k->graph;
    g->num_tasks = n;
    g->num_events = nev;
    g->num_begin_events = nbegin;
    g->num_triggers = (int32_t)ntrig;
    g->num_variants = k->num_variants;
    g->tasks = calloc((size_t)n, sizeof *g->tasks);
    g->events = calloc((size_t)nev, sizeof *g->events);
    g->triggers = malloc((size_t)ntrig * sizeof *g->triggers);
    g->variants = malloc((size_t)k->num_variants * sizeof *g->variants);
    k->task_operand_tensor = malloc((size_t)n * MPK_TASK_MAX_OPERANDS * sizeof(int32_t));
    k->task_rec = malloc((size_t)n * sizeof(int32_t));
    k->task_bytes = malloc((size_t)n * sizeof(int64_t));
    int64_t *trig_pos = calloc((size_t)n + 1, sizeof *trig_pos);
    if (!g->tasks || !g->events || !g->triggers || !g->variants || !k->task_operand_tensor ||
        !k->task_rec || !k->task_bytes || !trig_pos) {
        free(trig_pos);
        st = mpk_fail(k, MPK_ERR_NOMEM, "out of memory");
        goto free_more;
    }
    memcpy(g->variants, k->variants, (size_t)k->num_variants * sizeof *g->variants);
    // Trigger ranges in new task order.
    for (int32_t i = 0; i < n; i++) {
        int32_t t = ord[i].task;
        trig_pos[i + 1] = trig_pos[i] + (consumers[t] ? consumers[t] : 1);
    }
    int64_t *fill = malloc((size_t)n * sizeof *fill);
    if (!fill) { free(trig_pos); st = mpk_fail(k, MPK_ERR_NOMEM, "out of memory"); goto free_more; }
    for (int32_t i = 0; i < n; i++) fill[i] = trig_pos[i];
    for (int32_t i = 0; i < nkeys; i++)
        for (int64_t e = keys[i].begin; e < keys[i].end; e++) {
            int32_t p = new_index[c->deps.v[e]];
            g->triggers[fill[p]++] = (uint32_t)event_id[i];
        }
    for (int32_t t = 0; t < n; t++)
        if (!consumers[t]) g->triggers[fill[new_index[t]]++] = (uint32_t)end_event;
    free(fill);

    for (int32_t i = 0; i < nev; i++) {
        g->events[i].first_task = (uint32_t)n;
        g->events[i].last_task = (uint32_t)n;
    }
    for (int32_t i = 0; i < nkeys; i++)
        g->events[event_id[i]].num_triggers = keys[i].end == keys[i].begin ? 1u : (uint32_t)(keys[i].end - keys[i].begin);
    int32_t sinks = 0;
    for (int32_t t = 0; t < n; t++) sinks += !consumers[t];
    g->events[end_event].num_triggers = (uint32_t)sinks;
    g->events[end_event].flags = MPK_EVENT_FLAG_END;
    for (int32_t i = 0; i < nbegin; i++) g->events[i].flags |= MPK_EVENT_FLAG_BEGIN;
    if (k->params.jit_dispatch)
        for (int32_t i = 0; i < end_event; i++) g->events[i].flags |= MPK_EVENT_FLAG_JIT;

    for (int32_t i = 0; i < n; i++) {
        int32_t t = ord[i].task;
        const mpk_task_rec *r = &k->recs[t];
        mpk_task_desc *d = &g->tasks[i];
        *d = r->desc;
        int32_t ev = event_id[task_event[t]];
        d->wait_event = (uint32_t)ev;
        d->trigger_begin = (uint32_t)trig_pos[i];
        d->trigger_end = (uint32_t)trig_pos[i + 1];
        if (g->events[ev].first_task == (uint32_t)n) g->events[ev].first_task = (uint32_t)i;
        g->events[ev].last_task = (uint32_t)i + 1;
        memcpy(&k->task_operand_tensor[(int64_t)i * MPK_TASK_MAX_OPERANDS], r->operand_tensor,
               sizeof r->operand_tensor);
        k->task_rec[i] = t;
        k->task_bytes[i] = r->bytes;
    }
    free(trig_pos);

    // Static schedule: round-robin in graph order, so each layer spreads over all workers.
    int32_t W = k->params.num_workers > 0 ? k->params.num_workers : 1;
    g->num_workers = W;
    g->worker_task_begin = calloc((size_t)W + 1, sizeof(int32_t));
    g->worker_tasks = malloc((size_t)n * sizeof(int32_t));
    if (!g->worker_task_begin || !g->worker_tasks) {
        st = mpk_fail(k, MPK_ERR_NOMEM, "out of memory");
        goto free_more;
    }
    for (int32_t i = 0; i < n; i++) g->worker_task_begin[i % W + 1]++;
    for (int32_t w = 0; w < W; w++) g->worker_task_begin[w + 1] += g->worker_task_begin[w];
    for (int32_t w = 0; w < W; w++) {
        int32_t pos = g->worker_task_begin[w];
        for (int32_t i = w; i < n; i += W) g->worker_tasks[pos++] = i;
    }
    k->stats.num_events = nev;

free_more:
    free(event_id);
    free(ord);
    free(new_index);
    free(consumers);
done:
    free(task_event);
    free(keys);
    free(htab);
    return st;
}

// ---- entry -------------------------------------------------------------------------------------

mpk_status mpk_compiler_run(mpk_kernel *k) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    compiler c;
    memset(&c, 0, sizeof c);
    c.k = k;
    c.n = k->num_recs;
    if (c.n == 0) return mpk_fail(k, MPK_ERR_STATE, "the kernel has no tasks");
    c.live = calloc((size_t)k->num_tensors, sizeof *c.live);
    c.dep_begin = malloc(((size_t)c.n + 1) * sizeof *c.dep_begin);
    c.stamp = calloc((size_t)c.n, sizeof *c.stamp);
    c.stack = malloc((size_t)c.n * sizeof *c.stack);
    mpk_status st;
    if (!c.live || !c.dep_begin || !c.stamp || !c.stack)
        st = mpk_fail(k, MPK_ERR_NOMEM, "out of memory in the compiler");
    else
        st = analyse(&c);
    if (st == MPK_OK) st = build_graph(&c);
    if (st == MPK_OK) {
        clock_gettime(CLOCK_MONOTONIC, &t1);
        k->stats.num_layers = k->num_layers;
        k->stats.num_tasks = c.n;
        k->stats.num_variants = k->num_variants;
        k->stats.num_dependencies_exact = c.exact_deps;
        k->stats.num_dependencies_reduced = c.deps.n;
        k->stats.compile_seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        mpk_log(k, MPK_LOG_INFO, "compiled %d layers into %d tasks, %d events (%lld dependencies, %lld after reduction) in %.3f s",
                k->num_layers, c.n, k->graph.num_events, (long long)c.exact_deps, (long long)c.deps.n,
                k->stats.compile_seconds);
    }
    if (c.live)
        for (int32_t i = 0; i < k->num_tensors; i++) free(c.live[i].v);
    free(c.live);
    free(c.dep_begin);
    free(c.stamp);
    free(c.stack);
    ivec_free(&c.deps);
    return st;
}
