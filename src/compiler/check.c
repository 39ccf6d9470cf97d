// check.c — proves a compiled graph right, independently of how the compiler built it: every pair
// of tasks whose slices conflict (one writes what the other touches) is ordered by the events, the
// event table is consistent, and one iteration can run to the end in graph order (so in-order
// worker queues cannot deadlock). Used by tests and under MPK_DEBUG=1.
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

static int overlap(const mpk_access *a, const mpk_access *b) {
    for (int i = 0; i < MPK_MAX_DIMS; i++)
        if (a->hi[i] <= b->lo[i] || b->hi[i] <= a->lo[i]) return 0;
    return 1;
}

// Structural checks: ranges, trigger counts, graph order as a topological order.
static mpk_status check_structure(mpk_kernel *k, int32_t *producer_count) {
    const mpk_graph *g = &k->graph;
    int32_t n = g->num_tasks, E = g->num_events;
    if (E < 2 || g->num_begin_events < 1 || g->num_begin_events >= E)
        return mpk_fail(k, MPK_ERR_INTERNAL, "graph check: %d events, %d begin events", E, g->num_begin_events);
    if (!(g->events[E - 1].flags & MPK_EVENT_FLAG_END))
        return mpk_fail(k, MPK_ERR_INTERNAL, "graph check: the last event is not the end event");
    for (int32_t i = 0; i < n; i++) {
        const mpk_task_desc *d = &g->tasks[i];
        if (d->wait_event >= (uint32_t)(E - 1))
            return mpk_fail(k, MPK_ERR_INTERNAL, "graph check: task %d waits on invalid event %u", i, d->wait_event);
        const mpk_event_desc *ev = &g->events[d->wait_event];
        if ((uint32_t)i < ev->first_task || (uint32_t)i >= ev->last_task)
            return mpk_fail(k, MPK_ERR_INTERNAL, "graph check: task %d lies outside the range of its event %u", i, d->wait_event);
        if (d->trigger_begin > d->trigger_end || d->trigger_end > (uint32_t)g->num_triggers || d->trigger_begin == d->trigger_end)
            return mpk_fail(k, MPK_ERR_INTERNAL, "graph check: task %d has a bad trigger range", i);
        for (uint32_t j = d->trigger_begin; j < d->trigger_end; j++) {
            uint32_t e = g->triggers[j];
            if (e >= (uint32_t)E || (int32_t)e < g->num_begin_events)
                return mpk_fail(k, MPK_ERR_INTERNAL, "graph check: task %d triggers invalid event %u", i, e);
            if (e != (uint32_t)(E - 1) && g->events[e].first_task <= (uint32_t)i)
                return mpk_fail(k, MPK_ERR_INTERNAL, "graph check: task %d triggers event %u whose tasks come before it", i, e);
            producer_count[e]++;
        }
    }
    for (int32_t e = 0; e < E; e++) {
        const mpk_event_desc *ev = &g->events[e];
        int32_t want = e < g->num_begin_events ? 1 : producer_count[e];
        if (e >= g->num_begin_events && producer_count[e] == 0)
            return mpk_fail(k, MPK_ERR_INTERNAL, "graph check: event %d has no producers", e);
        if ((int32_t)ev->num_triggers != want)
            return mpk_fail(k, MPK_ERR_INTERNAL, "graph check: event %d needs %u triggers but %d tasks trigger it", e, ev->num_triggers, want);
        for (uint32_t t = ev->first_task; t < ev->last_task; t++)
            if (g->tasks[t].wait_event != (uint32_t)e)
                return mpk_fail(k, MPK_ERR_INTERNAL, "graph check: event %d's range holds task %u that waits on another event", e, t);
    }
    for (int32_t w = 0; w < g->num_workers; w++)
        for (int32_t i = g->worker_task_begin[w] + 1; i < g->worker_task_begin[w + 1]; i++)
            if (g->worker_tasks[i] <= g->worker_tasks[i - 1])
                return mpk_fail(k, MPK_ERR_INTERNAL, "graph check: worker %d's static list is not in graph order", w);
    if (g->worker_task_begin[g->num_workers] != n)
        return mpk_fail(k, MPK_ERR_INTERNAL, "graph check: the static schedule does not hold every task once");
    return MPK_OK;
}

// Tile blocks (compile.c: mark_tile_blocks): the GPU's prompt kernel gives each task of an
// aligned block of B tasks of a product layer a share of the whole block's work, which is right
// only if the block's tasks wait for the same event and every task is ordered after all of a
// block or none of it (done_before: the closure bitsets below). Also the marks themselves: B a
// power of two dividing the layer's tasks, iparam[2] the task's index in its layer.
static mpk_status check_tile_blocks(mpk_kernel *k, const uint64_t *done_before, int64_t words) {
    const mpk_graph *g = &k->graph;
    const int32_t n = g->num_tasks;
    int32_t *pos = malloc((size_t)k->num_recs * sizeof *pos);  // build-order record -> graph index
    if (!pos) return mpk_fail(k, MPK_ERR_NOMEM, "graph check: out of memory");
    for (int32_t i = 0; i < n; i++) pos[k->task_rec[i]] = i;
    mpk_status st = MPK_OK;
    for (int32_t li = 0; li < k->num_layers && st == MPK_OK; li++) {
        const mpk_layer *L = &k->layers[li];
        const mpk_task_desc *d0 = &g->tasks[pos[L->first_task]];
        if (!mpk_task_has_tile_marks(d0->type) || d0->iparam[1] == 0)
            continue;  // (a mark of 1 or less is refused below: mpk_task_tile_block would ignore it)
        const int32_t B = d0->iparam[1];
        if (B < 2 || (B & (B - 1)) || L->num_tasks % B)
            st = mpk_fail(k, MPK_ERR_INTERNAL, "graph check: layer '%s' has a tile block of %d for %d tasks", L->name, B,
                          L->num_tasks);
        for (int32_t j = 0; j < L->num_tasks && st == MPK_OK; j++) {
            const mpk_task_desc *d = &g->tasks[pos[L->first_task + j]];
            if (d->iparam[1] != B || d->iparam[2] != j)
                st = mpk_fail(k, MPK_ERR_INTERNAL, "graph check: layer '%s' task %d is marked (%d, %d), not (%d, %d)",
                              L->name, j, d->iparam[1], d->iparam[2], B, j);
            else if (d->wait_event != g->tasks[pos[L->first_task + j / B * B]].wait_event)
                st = mpk_fail(k, MPK_ERR_INTERNAL, "graph check: layer '%s' tasks %d and %d share a tile block but not an event",
                              L->name, j / B * B, j);
        }
        for (int32_t i = 0; i < n && st == MPK_OK; i++) {
            const uint64_t *set = &done_before[(int64_t)i * words];
            for (int32_t b0 = 0; b0 < L->num_tasks && st == MPK_OK; b0 += B) {
                int32_t in = 0;
                for (int32_t j = b0; j < b0 + B; j++) {
                    const int32_t t = pos[L->first_task + j];
                    in += (set[t / 64] >> (t % 64)) & 1;
                }
                if (in != 0 && in != B)
                    st = mpk_fail(k, MPK_ERR_INTERNAL, "graph check: task %d comes after %d of the %d tasks of a tile block of layer '%s'",
                                  i, in, B, L->name);
            }
        }
    }
    free(pos);
    return st;
}

mpk_status mpk_graph_check(mpk_kernel *k) {
    if (!k) return MPK_ERR_INVALID_ARG;
    const mpk_graph *g = &k->graph;
    int32_t n = g->num_tasks, E = g->num_events;
    if (n == 0) return mpk_fail(k, MPK_ERR_STATE, "graph check: nothing compiled");
    int32_t *producer_count = calloc((size_t)E, sizeof *producer_count);
    int64_t words = ((int64_t)n + 63) / 64;
    uint64_t *done_before = calloc((size_t)n * (size_t)words, sizeof(uint64_t));  // closure bitsets
    uint64_t *event_set = calloc((size_t)E * (size_t)words, sizeof(uint64_t));
    mpk_status st = MPK_OK;
    if (!producer_count || !done_before || !event_set) {
        st = mpk_fail(k, MPK_ERR_NOMEM, "graph check: out of memory (%d tasks)", n);
        goto out;
    }
    if ((st = check_structure(k, producer_count))) goto out;

    // One iteration in graph order: each task's event must have fired when it is reached. The set
    // of tasks guaranteed complete before task t starts is the union over its event's producers
    // p of {p} and p's own set.
    for (int32_t i = 0; i < n; i++) {
        const mpk_task_desc *d = &g->tasks[i];
        int32_t e = (int32_t)d->wait_event;
        if (e >= g->num_begin_events && producer_count[e] != 0) {
            st = mpk_fail(k, MPK_ERR_INTERNAL, "graph check: task %d would wait forever on event %d (%d triggers missing in graph order)",
                          i, e, producer_count[e]);
            goto out;
        }
        memcpy(&done_before[(int64_t)i * words], &event_set[(int64_t)e * words], (size_t)words * sizeof(uint64_t));
        for (uint32_t j = d->trigger_begin; j < d->trigger_end; j++) {
            uint32_t f = g->triggers[j];
            producer_count[f]--;
            uint64_t *dst = &event_set[(int64_t)f * words];
            const uint64_t *src = &done_before[(int64_t)i * words];
            for (int64_t w = 0; w < words; w++) dst[w] |= src[w];
            dst[i / 64] |= 1ull << (i % 64);
        }
    }
    if (producer_count[E - 1] != 0) {
        st = mpk_fail(k, MPK_ERR_INTERNAL, "graph check: the end event misses %d triggers", producer_count[E - 1]);
        goto out;
    }
    // Every end-event producer set must cover all tasks (the iteration is complete when it fires).
    for (int32_t i = 0; i < n; i++)
        if (!(event_set[(int64_t)(E - 1) * words + i / 64] & (1ull << (i % 64)))) {
            st = mpk_fail(k, MPK_ERR_INTERNAL, "graph check: task %d may still run when the end event fires", i);
            goto out;
        }
    if ((st = check_tile_blocks(k, done_before, words))) goto out;
    // Every conflicting pair of accesses is ordered.
    for (int32_t i = 0; i < n && st == MPK_OK; i++) {
        const mpk_task_rec *ri = &k->recs[k->task_rec[i]];
        for (int32_t j = 0; j < i && st == MPK_OK; j++) {
            const mpk_task_rec *rj = &k->recs[k->task_rec[j]];
            if (ri->desc.layer == rj->desc.layer) continue;
            if (done_before[(int64_t)i * words + j / 64] & (1ull << (j % 64))) continue;
            const mpk_task_rec *early = ri->desc.layer < rj->desc.layer ? ri : rj;
            const mpk_task_rec *late = early == ri ? rj : ri;
            for (int32_t a = late->first_access; a < late->first_access + late->num_accesses; a++)
                for (int32_t b = early->first_access; b < early->first_access + early->num_accesses; b++) {
                    const mpk_access *x = &k->accesses[a], *y = &k->accesses[b];
                    if (x->tensor != y->tensor || (!x->write && !y->write) || !overlap(x, y)) continue;
                    st = mpk_fail(k, MPK_ERR_INTERNAL, "graph check: tasks %d (layer '%s') and %d (layer '%s') conflict on '%s' but are not ordered",
                                  j, k->layers[rj->desc.layer].name, i, k->layers[ri->desc.layer].name,
                                  k->tensors[x->tensor]->name);
                    goto out;
                }
        }
    }
out:
    free(producer_count);
    free(done_before);
    free(event_set);
    return st;
}
