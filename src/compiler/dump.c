// dump.c — the human-readable text of a compiled task graph: layers, variants, events with the
// task range each releases, and every task with its rows, operands, wait and triggers. Used by
// `mpk compile --dump`, by tests, and when debugging a schedule.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

typedef struct sbuf {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int len = vsnprintf(b->s ? b->s + b->n : NULL, b->s ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (len < 0) { b->oom = 1; return; }
        if (b->s && b->n + (size_t)len < b->cap) {
            b->n += (size_t)len;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + (size_t)len + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) { b->oom = 1; return; }
        b->s = p;
        b->cap = cap;
    }
}

static const char *event_kind(const mpk_event_desc *e) {
    if (e->flags & MPK_EVENT_FLAG_END) return "end";
    if (e->flags & MPK_EVENT_FLAG_BEGIN) return "begin";
    return "";
}

mpk_status mpk_graph_dump_string(mpk_kernel *k, char **out) {
    if (!k) return MPK_ERR_INVALID_ARG;
    if (!out) return mpk_fail(k, MPK_ERR_INVALID_ARG, "graph_dump: out is NULL");
    *out = NULL;
    if (!k->compiled) return mpk_fail(k, MPK_ERR_STATE, "graph_dump: compile the kernel first");
    const mpk_graph *g = &k->graph;
    sbuf b = {0};
    sb_printf(&b, "# mpk task graph: %d layers, %d tasks, %d events (%d begin), %d variants, %d workers\n",
              k->num_layers, g->num_tasks, g->num_events, g->num_begin_events, g->num_variants,
              g->num_workers);
    sb_printf(&b, "# dependencies: %lld exact, %lld after transitive reduction; dispatch: %s\n",
              (long long)k->stats.num_dependencies_exact, (long long)k->stats.num_dependencies_reduced,
              k->params.num_local_schedulers == 0 ? "static" : (k->params.jit_dispatch ? "jit" : "aot"));
    sb_printf(&b, "\nlayers:\n");
    for (int32_t i = 0; i < k->num_layers; i++) {
        const mpk_layer *L = &k->layers[i];
        const int32_t tb = L->num_tasks > 0 ? mpk_task_tile_block(&k->recs[L->first_task].desc) : 0;
        sb_printf(&b, "  L%-4d %-26s %-24s grid (%d, %d, %d)  %d tasks", i, mpk_task_type_name(L->op), L->name,
                  L->grid.x, L->grid.y, L->grid.z, L->num_tasks);
        if (tb) sb_printf(&b, ", prompt tiles in blocks of %d", tb);
        sb_printf(&b, "\n");
    }
    sb_printf(&b, "\nvariants:\n");
    for (int32_t i = 0; i < g->num_variants; i++) {
        const mpk_variant *v = &g->variants[i];
        sb_printf(&b, "  V%-4d %-26s p =", i, mpk_task_type_name(v->type));
        for (int j = 0; j < MPK_VARIANT_MAX_PARAMS; j++) sb_printf(&b, " %d", v->p[j]);
        sb_printf(&b, "  f = %g %g\n", (double)v->f[0], (double)v->f[1]);
    }
    sb_printf(&b, "\nevents:\n");
    for (int32_t i = 0; i < g->num_events; i++) {
        const mpk_event_desc *e = &g->events[i];
        sb_printf(&b, "  E%-4d %-5s %s triggers %-5u ", i, event_kind(e),
                  (e->flags & MPK_EVENT_FLAG_JIT) ? "jit" : "aot", e->num_triggers);
        if (e->first_task < e->last_task)
            sb_printf(&b, "releases tasks [%u, %u) of layer '%s'\n", e->first_task, e->last_task,
                      k->layers[g->tasks[e->first_task].layer].name);
        else
            sb_printf(&b, "releases nothing (ends the iteration)\n");
    }
    sb_printf(&b, "\ntasks:\n");
    for (int32_t i = 0; i < g->num_tasks; i++) {
        const mpk_task_desc *d = &g->tasks[i];
        sb_printf(&b, "  T%-5d %-24s L%-4u V%-3u rows [%d, %d) waits E%-4u triggers", i,
                  mpk_task_type_name(d->type), d->layer, d->variant, d->row_begin, d->row_end,
                  d->wait_event);
        for (uint32_t j = d->trigger_begin; j < d->trigger_end; j++)
            sb_printf(&b, " E%u", g->triggers[j]);
        sb_printf(&b, "  |");
        for (int j = 0; j < MPK_TASK_MAX_OPERANDS; j++) {
            int32_t t = k->task_operand_tensor[(int64_t)i * MPK_TASK_MAX_OPERANDS + j];
            if (t < 0) continue;
            sb_printf(&b, " %s+%llu", k->tensors[t]->name, (unsigned long long)d->operand[j]);
        }
        sb_printf(&b, "\n");
    }
    if (b.oom) {
        free(b.s);
        return mpk_fail(k, MPK_ERR_NOMEM, "graph_dump: out of memory");
    }
    *out = b.s;
    return MPK_OK;
}
