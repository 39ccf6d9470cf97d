// layers.c — the public layer functions. Each validates its tensors and grid, then expands the
// layer into tasks: one per grid point, with operands offset to the point's slice, the slices it
// reads and writes (for the dependency analysis) and the shape constants of its variant.
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "kernels/cpu/kernels.h"  // MPK_ATTENTION_MAX_HEAD_DIM

// ---- growing arrays ----------------------------------------------------------------------------

static int grow(void **arr, int32_t *cap, int32_t need, size_t elem) {
    if (need <= *cap) return 1;
    int32_t cap2 = *cap ? *cap : 64;
    while (cap2 < need) cap2 *= 2;
    void *p = realloc(*arr, (size_t)cap2 * elem);
    if (!p) return 0;
    *arr = p;
    *cap = cap2;
    return 1;
}

// ---- layer construction helpers ----------------------------------------------------------------

typedef struct layer_ctx {
    mpk_kernel *k;
    const char *what;    // "linear 'q_proj'" for messages
    char what_buf[160];
    int32_t layer;
    int32_t variant;
    int32_t rec_mark, access_mark;  // to roll back on failure
} layer_ctx;

static mpk_status layer_fail(layer_ctx *c, mpk_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static mpk_status layer_fail(layer_ctx *c, mpk_status st, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return mpk_fail(c->k, st, "%s: %s", c->what, msg);
}

static mpk_status layer_begin(layer_ctx *c, mpk_kernel *k, const char *op, const char *name,
                              mpk_dim3 grid) {
    memset(c, 0, sizeof *c);
    c->k = k;
    snprintf(c->what_buf, sizeof c->what_buf, "%s '%s'", op, name ? name : "(unnamed)");
    c->what = c->what_buf;
    if (!k) return MPK_ERR_INVALID_ARG;
    if (k->compiled) return layer_fail(c, MPK_ERR_STATE, "the kernel is already compiled");
    if (grid.x < 1 || grid.y < 1 || grid.z < 1)
        return layer_fail(c, MPK_ERR_SHAPE, "grid (%d, %d, %d) must be positive", grid.x, grid.y, grid.z);
    if (grid.z != 1) return layer_fail(c, MPK_ERR_SHAPE, "grid.z=%d must be 1", grid.z);
    if ((int64_t)grid.x * grid.y > (1 << 20))
        return layer_fail(c, MPK_ERR_SHAPE, "grid of %lld tasks is too large", (long long)grid.x * grid.y);
    c->rec_mark = k->num_recs;
    c->access_mark = k->num_accesses;
    return MPK_OK;
}

static int owned(const mpk_kernel *k, const mpk_tensor *t) {
    return t && t->id >= 0 && t->id < k->num_tensors && k->tensors[t->id] == t;
}

// Checks a tensor's presence, ownership, dtype and shape (dims[i] < 0 means "any").
static mpk_status want(layer_ctx *c, const mpk_tensor *t, const char *role, mpk_dtype dtype,
                       int32_t ndim, const int64_t *dims) {
    if (!t) return layer_fail(c, MPK_ERR_INVALID_ARG, "%s tensor is NULL", role);
    if (!owned(c->k, t)) return layer_fail(c, MPK_ERR_INVALID_ARG, "%s tensor belongs to another kernel", role);
    if (t->dtype != dtype)
        return layer_fail(c, MPK_ERR_SHAPE, "%s '%s' is %s, expected %s", role, t->name,
                          mpk_dtype_name(t->dtype), mpk_dtype_name(dtype));
    int ok = t->ndim == ndim;
    for (int32_t i = 0; ok && i < ndim; i++) ok = dims[i] < 0 || t->dims[i] == dims[i];
    if (!ok) {
        char got[96] = "", exp[96] = "";
        for (int32_t i = 0; i < t->ndim; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "", (long long)t->dims[i]);
        for (int32_t i = 0; i < ndim; i++) {
            if (dims[i] < 0) snprintf(exp + strlen(exp), sizeof exp - strlen(exp), "%s*", i ? ", " : "");
            else snprintf(exp + strlen(exp), sizeof exp - strlen(exp), "%s%lld", i ? ", " : "", (long long)dims[i]);
        }
        return layer_fail(c, MPK_ERR_SHAPE, "%s '%s' has shape (%s), expected (%s)", role, t->name, got, exp);
    }
    return MPK_OK;
}

static mpk_status divides(layer_ctx *c, const char *axis, int32_t parts, int64_t total,
                          const char *what) {
    if (total % parts != 0)
        return layer_fail(c, MPK_ERR_SHAPE, "%s=%d does not divide %lld %s", axis, parts, (long long)total, what);
    return MPK_OK;
}

static mpk_status add_layer(layer_ctx *c, int32_t op, const char *name, mpk_dim3 grid,
                            mpk_dim3 block) {
    mpk_kernel *k = c->k;
    if (!grow((void **)&k->layers, &k->cap_layers, k->num_layers + 1, sizeof *k->layers))
        return layer_fail(c, MPK_ERR_NOMEM, "out of memory");
    char buf[64];
    if (!name) {
        snprintf(buf, sizeof buf, "%s_%d", mpk_task_type_name(op), k->num_layers);
        name = buf;
    }
    char *nm = strdup(name);
    if (!nm) return layer_fail(c, MPK_ERR_NOMEM, "out of memory");
    mpk_layer *L = &k->layers[k->num_layers];
    L->op = op;
    L->name = nm;
    L->grid = grid;
    L->block = block;
    L->first_task = k->num_recs;
    L->num_tasks = 0;
    c->layer = k->num_layers++;
    return MPK_OK;
}

static mpk_status add_variant(layer_ctx *c, const mpk_variant *v) {
    mpk_kernel *k = c->k;
    for (int32_t i = 0; i < k->num_variants; i++)
        if (memcmp(&k->variants[i], v, sizeof *v) == 0) {
            c->variant = i;
            return MPK_OK;
        }
    if (k->num_variants >= 65535) return layer_fail(c, MPK_ERR_LIMIT, "too many task variants");
    if (!grow((void **)&k->variants, &k->cap_variants, k->num_variants + 1, sizeof *v))
        return layer_fail(c, MPK_ERR_NOMEM, "out of memory");
    k->variants[k->num_variants] = *v;
    c->variant = k->num_variants++;
    return MPK_OK;
}

static mpk_variant make_variant(int32_t type) {
    mpk_variant v;
    memset(&v, 0, sizeof v);
    v.type = type;
    return v;
}

static mpk_task_rec *new_task(layer_ctx *c, int32_t type, int32_t row_begin, int32_t row_end) {
    mpk_kernel *k = c->k;
    if (!grow((void **)&k->recs, &k->cap_recs, k->num_recs + 1, sizeof *k->recs)) return NULL;
    mpk_task_rec *r = &k->recs[k->num_recs++];
    memset(r, 0, sizeof *r);
    r->desc.type = (uint16_t)type;
    r->desc.variant = (uint16_t)c->variant;
    r->desc.layer = (uint32_t)c->layer;
    r->desc.wait_event = MPK_EVENT_NONE;
    r->desc.row_begin = row_begin;
    r->desc.row_end = row_end;
    for (int i = 0; i < MPK_TASK_MAX_OPERANDS; i++) r->operand_tensor[i] = -1;
    r->first_access = k->num_accesses;
    k->layers[c->layer].num_tasks++;
    return r;
}

// Operand j of the newest task: tensor t at element (i0, i1) of its first two axes.
static void operand(mpk_kernel *k, int j, const mpk_tensor *t, int64_t i0, int64_t i1) {
    mpk_task_rec *r = &k->recs[k->num_recs - 1];
    int64_t elem = i0 * (t->ndim > 1 ? t->strides[0] : 1) + (t->ndim > 1 ? i1 * t->strides[1] : 0);
    r->operand_tensor[j] = t->id;
    r->desc.operand[j] = (uint64_t)(elem * (int64_t)mpk_dtype_size(t->dtype));
}

// The newest task's weights (operand j, `bytes` from its address) may be prefetched before its
// event fires: they are constant during a run.
static void prefetch(mpk_kernel *k, int j, int64_t bytes) {
    mpk_task_rec *r = &k->recs[k->num_recs - 1];
    r->desc.prefetch_operand = (uint16_t)j;
    r->desc.prefetch_bytes = bytes > UINT32_MAX ? UINT32_MAX : (uint32_t)bytes;
}

// Records that the newest task reads or writes t[lo0:hi0, lo1:hi1, (all of the other axes)].
static int access(mpk_kernel *k, const mpk_tensor *t, int write, int64_t lo0, int64_t hi0,
                  int64_t lo1, int64_t hi1) {
    if (!grow((void **)&k->accesses, &k->cap_accesses, k->num_accesses + 1, sizeof *k->accesses))
        return 0;
    mpk_access *a = &k->accesses[k->num_accesses++];
    a->tensor = t->id;
    a->write = write;
    for (int i = 0; i < MPK_MAX_DIMS; i++) {
        a->lo[i] = 0;
        a->hi[i] = t->dims[i];
    }
    a->lo[0] = lo0;
    a->hi[0] = hi0;
    if (t->ndim > 1) {
        a->lo[1] = lo1;
        a->hi[1] = hi1;
    }
    mpk_task_rec *r = &k->recs[k->num_recs - 1];
    r->num_accesses++;
    int64_t vol = 1;
    for (int i = 0; i < MPK_MAX_DIMS; i++) vol *= a->hi[i] - a->lo[i];
    r->bytes += vol * (int64_t)mpk_dtype_size(t->dtype);
    return 1;
}

static mpk_status rollback(layer_ctx *c, mpk_status st) {
    mpk_kernel *k = c->k;
    if (k->num_layers > 0 && c->layer == k->num_layers - 1 && k->layers[c->layer].first_task == c->rec_mark) {
        free(k->layers[c->layer].name);
        k->num_layers--;
    }
    k->num_recs = c->rec_mark;
    k->num_accesses = c->access_mark;
    return st;
}

#define OOM(c) rollback(c, layer_fail(c, MPK_ERR_NOMEM, "out of memory"))
#define TRY(expr) do { mpk_status st_ = (expr); if (st_) return st_; } while (0)

static int32_t rows_total(const mpk_kernel *k) { return k->params.max_batched_tokens; }

// ---- embed -------------------------------------------------------------------------------------

mpk_status mpk_embed_layer(mpk_kernel *k, const mpk_tensor *ids, const mpk_tensor *weight,
                           mpk_tensor *out, mpk_dim3 grid, mpk_dim3 block, const char *name) {
    layer_ctx c;
    TRY(layer_begin(&c, k, "embed", name, grid));
    int64_t T = rows_total(k);
    TRY(want(&c, ids, "input_ids", MPK_I32, 1, (int64_t[]){T}));
    TRY(want(&c, weight, "weight", MPK_BF16, 2, (int64_t[]){-1, -1}));
    int64_t V = weight->dims[0], H = weight->dims[1];
    TRY(want(&c, out, "output", MPK_BF16, 2, (int64_t[]){T, H}));
    TRY(divides(&c, "grid.x", grid.x, H, "hidden columns"));
    TRY(divides(&c, "grid.y", grid.y, T, "token rows"));
    mpk_variant v = make_variant(MPK_TASK_EMBED);
    int64_t cols = H / grid.x;
    v.p[0] = (int32_t)cols; v.p[1] = (int32_t)H; v.p[2] = (int32_t)H; v.p[3] = (int32_t)V;
    TRY(add_variant(&c, &v));
    TRY(add_layer(&c, MPK_TASK_EMBED, name, grid, block));
    for (int32_t y = 0; y < grid.y; y++)
        for (int32_t x = 0; x < grid.x; x++) {
            int64_t r0 = T * y / grid.y, r1 = T * (y + 1) / grid.y, c0 = cols * x;
            if (!new_task(&c, MPK_TASK_EMBED, (int32_t)r0, (int32_t)r1)) return OOM(&c);
            operand(k, 0, ids, 0, 0);
            operand(k, 1, weight, 0, c0);
            operand(k, 2, out, 0, c0);
            if (!access(k, ids, 0, r0, r1, 0, 1) || !access(k, weight, 0, 0, V, c0, c0 + cols) ||
                !access(k, out, 1, r0, r1, c0, c0 + cols))
                return OOM(&c);
        }
    return MPK_OK;
}

// ---- rmsnorm -----------------------------------------------------------------------------------

mpk_status mpk_rmsnorm_layer(mpk_kernel *k, const mpk_tensor *x, const mpk_tensor *weight,
                             mpk_tensor *out, float eps, mpk_dim3 grid, mpk_dim3 block,
                             const char *name) {
    layer_ctx c;
    TRY(layer_begin(&c, k, "rmsnorm", name, grid));
    int64_t T = rows_total(k);
    TRY(want(&c, x, "input", MPK_BF16, 2, (int64_t[]){T, -1}));
    int64_t H = x->dims[1];
    TRY(want(&c, weight, "weight", MPK_BF16, 1, (int64_t[]){H}));
    TRY(want(&c, out, "output", MPK_BF16, 2, (int64_t[]){T, H}));
    if (grid.x != 1) return layer_fail(&c, MPK_ERR_SHAPE, "grid.x=%d must be 1 (a row is normalised by one task)", grid.x);
    TRY(divides(&c, "grid.y", grid.y, T, "token rows"));
    if (!(eps > 0)) return layer_fail(&c, MPK_ERR_INVALID_ARG, "eps must be > 0");
    mpk_variant v = make_variant(MPK_TASK_RMSNORM);
    v.p[0] = (int32_t)H; v.p[1] = (int32_t)H; v.p[2] = (int32_t)H; v.f[0] = eps;
    TRY(add_variant(&c, &v));
    TRY(add_layer(&c, MPK_TASK_RMSNORM, name, grid, block));
    for (int32_t y = 0; y < grid.y; y++) {
        int64_t r0 = T * y / grid.y, r1 = T * (y + 1) / grid.y;
        if (!new_task(&c, MPK_TASK_RMSNORM, (int32_t)r0, (int32_t)r1)) return OOM(&c);
        operand(k, 0, x, 0, 0);
        operand(k, 1, weight, 0, 0);
        operand(k, 2, out, 0, 0);
        if (!access(k, x, 0, r0, r1, 0, H) || !access(k, weight, 0, 0, H, 0, 1) ||
            !access(k, out, 1, r0, r1, 0, H))
            return OOM(&c);
    }
    return MPK_OK;
}

// ---- the linear family -------------------------------------------------------------------------

// Shared by linear, linear_with_residual and rmsnorm_linear: grid.x splits the N output columns,
// grid.y the rows. sampled (rmsnorm_linear): only the rows whose tokens are sampled (p[5]).
static mpk_status linear_common(mpk_kernel *k, int32_t type, const char *op, const mpk_tensor *x,
                                const mpk_tensor *norm_w, const mpk_tensor *w,
                                const mpk_tensor *res, mpk_tensor *out, float eps, mpk_dim3 grid,
                                mpk_dim3 block, const char *name, int sampled) {
    layer_ctx c;
    TRY(layer_begin(&c, k, op, name, grid));
    int64_t T = rows_total(k);
    TRY(want(&c, x, "input", MPK_BF16, 2, (int64_t[]){T, -1}));
    int64_t K = x->dims[1];
    TRY(want(&c, w, "weight", MPK_BF16, 2, (int64_t[]){-1, K}));
    int64_t N = w->dims[0];
    if (type == MPK_TASK_RMSNORM_LINEAR) {
        TRY(want(&c, norm_w, "norm weight", MPK_BF16, 1, (int64_t[]){K}));
        if (!(eps > 0)) return layer_fail(&c, MPK_ERR_INVALID_ARG, "eps must be > 0");
    }
    if (type == MPK_TASK_LINEAR_RESIDUAL) TRY(want(&c, res, "residual", MPK_BF16, 2, (int64_t[]){T, N}));
    TRY(want(&c, out, "output", MPK_BF16, 2, (int64_t[]){T, N}));
    if (out == x) return layer_fail(&c, MPK_ERR_INVALID_ARG, "output must not be the input");
    TRY(divides(&c, "grid.x", grid.x, N, "output columns"));
    TRY(divides(&c, "grid.y", grid.y, T, "token rows"));
    int64_t n = N / grid.x;
    mpk_variant v = make_variant(type);
    v.p[0] = (int32_t)K; v.p[1] = (int32_t)n; v.p[2] = (int32_t)K; v.p[3] = (int32_t)K;
    if (type == MPK_TASK_LINEAR_RESIDUAL) { v.p[4] = (int32_t)N; v.p[5] = (int32_t)N; }
    else v.p[4] = (int32_t)N;
    if (type == MPK_TASK_RMSNORM_LINEAR) {
        v.f[0] = eps;
        v.p[5] = sampled != 0;
    }
    TRY(add_variant(&c, &v));
    TRY(add_layer(&c, type, name, grid, block));
    for (int32_t y = 0; y < grid.y; y++)
        for (int32_t xi = 0; xi < grid.x; xi++) {
            int64_t r0 = T * y / grid.y, r1 = T * (y + 1) / grid.y, n0 = n * xi;
            if (!new_task(&c, type, (int32_t)r0, (int32_t)r1)) return OOM(&c);
            int j = 0;
            operand(k, j++, x, 0, 0);
            if (type == MPK_TASK_RMSNORM_LINEAR) operand(k, j++, norm_w, 0, 0);
            prefetch(k, j, n * K * (int64_t)mpk_dtype_size(w->dtype));
            operand(k, j++, w, n0, 0);
            if (type == MPK_TASK_LINEAR_RESIDUAL) operand(k, j++, res, 0, n0);
            operand(k, j++, out, 0, n0);
            if (!access(k, x, 0, r0, r1, 0, K) || !access(k, w, 0, n0, n0 + n, 0, K)) return OOM(&c);
            if (type == MPK_TASK_RMSNORM_LINEAR && !access(k, norm_w, 0, 0, K, 0, 1)) return OOM(&c);
            if (type == MPK_TASK_LINEAR_RESIDUAL && !access(k, res, 0, r0, r1, n0, n0 + n)) return OOM(&c);
            if (!access(k, out, 1, r0, r1, n0, n0 + n)) return OOM(&c);
        }
    return MPK_OK;
}

mpk_status mpk_rmsnorm_linear_layer(mpk_kernel *k, const mpk_tensor *x, const mpk_tensor *norm_w,
                                    const mpk_tensor *w, mpk_tensor *out, float eps, mpk_dim3 grid,
                                    mpk_dim3 block, const char *name) {
    return linear_common(k, MPK_TASK_RMSNORM_LINEAR, "rmsnorm_linear", x, norm_w, w, NULL, out, eps,
                         grid, block, name, 0);
}

mpk_status mpk_rmsnorm_linear_sampled_layer(mpk_kernel *k, const mpk_tensor *x, const mpk_tensor *norm_w,
                                            const mpk_tensor *w, mpk_tensor *out, float eps, mpk_dim3 grid,
                                            mpk_dim3 block, const char *name) {
    return linear_common(k, MPK_TASK_RMSNORM_LINEAR, "rmsnorm_linear", x, norm_w, w, NULL, out, eps,
                         grid, block, name, 1);
}

mpk_status mpk_linear_layer(mpk_kernel *k, const mpk_tensor *x, const mpk_tensor *w,
                            mpk_tensor *out, mpk_dim3 grid, mpk_dim3 block, const char *name) {
    return linear_common(k, MPK_TASK_LINEAR, "linear", x, NULL, w, NULL, out, 0, grid, block, name, 0);
}

mpk_status mpk_linear_with_residual_layer(mpk_kernel *k, const mpk_tensor *x, const mpk_tensor *w,
                                          const mpk_tensor *res, mpk_tensor *out, mpk_dim3 grid,
                                          mpk_dim3 block, const char *name) {
    return linear_common(k, MPK_TASK_LINEAR_RESIDUAL, "linear_with_residual", x, NULL, w, res, out,
                         0, grid, block, name, 0);
}

// ---- attention ---------------------------------------------------------------------------------

// Checks an attention desc's tensors against the kernel's params; *G gets the query heads per
// kv head. The output is checked only when `with_output`.
static mpk_status attention_check(layer_ctx *c, const mpk_attention_desc *d, int with_output,
                                  int64_t *G_out) {
    mpk_kernel *k = c->k;
    if (!d) return layer_fail(c, MPK_ERR_INVALID_ARG, "desc is NULL");
    int64_t T = rows_total(k), Hq = d->num_q_heads, Hkv = d->num_kv_heads, D = d->head_dim;
    if (Hq < 1 || Hkv < 1 || D < 2 || D % 2 || D > MPK_ATTENTION_MAX_HEAD_DIM)
        return layer_fail(c, MPK_ERR_SHAPE, "num_q_heads=%d, num_kv_heads=%d, head_dim=%d are invalid (head_dim even, <= 512)",
                          d->num_q_heads, d->num_kv_heads, d->head_dim);
    if (Hq % Hkv) return layer_fail(c, MPK_ERR_SHAPE, "num_kv_heads=%lld does not divide num_q_heads=%lld", (long long)Hkv, (long long)Hq);
    int64_t G = Hq / Hkv, P = k->params.num_pages, S = k->params.page_size;
    TRY(want(c, d->qkv, "qkv", MPK_BF16, 2, (int64_t[]){T, Hkv * (G + 2) * D}));
    TRY(want(c, d->k_cache, "k_cache", MPK_BF16, 4, (int64_t[]){P, Hkv, S, D}));
    TRY(want(c, d->v_cache, "v_cache", MPK_BF16, 4, (int64_t[]){P, Hkv, S, D}));
    if (d->q_norm) TRY(want(c, d->q_norm, "q_norm", MPK_BF16, 1, (int64_t[]){D}));
    if (d->k_norm) TRY(want(c, d->k_norm, "k_norm", MPK_BF16, 1, (int64_t[]){D}));
    if (d->rope_inv_freq) TRY(want(c, d->rope_inv_freq, "rope_inv_freq", MPK_F32, 1, (int64_t[]){D / 2}));
    if (with_output) TRY(want(c, d->output, "output", MPK_BF16, 2, (int64_t[]){T, Hq * D}));
    if (d->k_cache == d->v_cache) return layer_fail(c, MPK_ERR_INVALID_ARG, "k_cache and v_cache must differ");
    if ((d->q_norm || d->k_norm) && !(d->norm_eps > 0))
        return layer_fail(c, MPK_ERR_INVALID_ARG, "norm_eps must be > 0 with q/k norms");
    *G_out = G;
    return MPK_OK;
}

// The attention shape constants p[0..9] (task.h), shared by ATTENTION and ATTENTION_LINEAR.
static void attention_params(mpk_variant *v, const mpk_kernel *k, const mpk_attention_desc *d,
                             int64_t G, int64_t hpt) {
    int64_t Hkv = d->num_kv_heads, D = d->head_dim, S = k->params.page_size;
    v->p[0] = (int32_t)G; v->p[1] = (int32_t)D; v->p[2] = (int32_t)(Hkv * (G + 2) * D);
    v->p[3] = (int32_t)(d->num_q_heads * D); v->p[4] = (int32_t)S; v->p[5] = (int32_t)(Hkv * S * D);
    v->p[6] = d->q_norm != NULL; v->p[7] = d->k_norm != NULL; v->p[8] = d->rope_inv_freq != NULL;
    v->p[9] = (int32_t)hpt;
    v->f[0] = d->norm_eps;
    v->f[1] = d->scale > 0 ? d->scale : 1.0f / sqrtf((float)D);
}

// Operands 0-5 of an attention task for kv heads [h0, h1), and its reads of them.
static int attention_operands(mpk_kernel *k, const mpk_attention_desc *d, int64_t G, int64_t h0,
                              int64_t h1) {
    int64_t T = rows_total(k), D = d->head_dim;
    operand(k, 0, d->qkv, 0, h0 * (G + 2) * D);
    operand(k, 1, d->k_cache, 0, h0);
    operand(k, 2, d->v_cache, 0, h0);
    if (d->q_norm) operand(k, 3, d->q_norm, 0, 0);
    if (d->k_norm) operand(k, 4, d->k_norm, 0, 0);
    if (d->rope_inv_freq) operand(k, 5, d->rope_inv_freq, 0, 0);
    return access(k, d->qkv, 0, 0, T, h0 * (G + 2) * D, h1 * (G + 2) * D) &&
           (!d->q_norm || access(k, d->q_norm, 0, 0, D, 0, 1)) &&
           (!d->k_norm || access(k, d->k_norm, 0, 0, D, 0, 1)) &&
           (!d->rope_inv_freq || access(k, d->rope_inv_freq, 0, 0, D / 2, 0, 1));
}

mpk_status mpk_attention_layer(mpk_kernel *k, const mpk_attention_desc *d, mpk_dim3 grid,
                               mpk_dim3 block, const char *name) {
    layer_ctx c;
    TRY(layer_begin(&c, k, "attention", name, grid));
    int64_t G;
    TRY(attention_check(&c, d, 1, &G));
    int64_t T = rows_total(k), Hkv = d->num_kv_heads, D = d->head_dim, P = k->params.num_pages;
    TRY(divides(&c, "grid.x", grid.x, Hkv, "kv heads"));
    const int32_t S = grid.y;
    if (S > MPK_ATTENTION_MAX_SPLITS)
        return layer_fail(&c, MPK_ERR_SHAPE, "grid.y=%d splits exceed %d", S, MPK_ATTENTION_MAX_SPLITS);
    int64_t hpt = Hkv / grid.x, GD = hpt * G * D;
    if (S > GD)  // (each split declares a non-empty share of its heads' output columns)
        return layer_fail(&c, MPK_ERR_SHAPE, "grid.y=%d splits exceed the %lld output columns of a task's heads",
                          S, (long long)GD);
    const int64_t wsn = MPK_ATTENTION_SPLIT_WS_FLOATS(S, (int32_t)G, (int32_t)D);
    mpk_variant v = make_variant(MPK_TASK_ATTENTION);
    attention_params(&v, k, d, G, hpt);
    if (S > 1) {
        v.p[10] = S;
        v.p[11] = (int32_t)wsn;
    }
    TRY(add_variant(&c, &v));
    TRY(add_layer(&c, MPK_TASK_ATTENTION, name, grid, block));
    // The split's workspace: per kv head a ticket and S partials (task.h). Zeroed at every run
    // start, so that a run interrupted mid-layer cannot leave a ticket skewed.
    mpk_tensor *ws = NULL;
    if (S > 1) {
        char wname[200];
        snprintf(wname, sizeof wname, "%s.split_workspace", k->layers[c.layer].name);
        mpk_status st = mpk_new_tensor(k, 2, (int64_t[]){Hkv, wsn}, MPK_F32, wname, MPK_IO_DEVICE, &ws);
        if (st) return rollback(&c, st);
        ws->zero_each_run = 1;
    }
    for (int32_t s = 0; s < S; s++)
        for (int32_t xi = 0; xi < grid.x; xi++) {
            int64_t h0 = hpt * xi, h1 = h0 + hpt;
            mpk_task_rec *r = new_task(&c, MPK_TASK_ATTENTION, 0, (int32_t)T);
            if (!r) return OOM(&c);
            r->desc.iparam[0] = s;
            operand(k, 6, d->output, 0, h0 * G * D);
            if (!attention_operands(k, d, G, h0, h1)) return OOM(&c);
            // Tasks of a layer must not declare overlapping writes, yet the next layer must wait
            // for every split: split s declares the s-th part of its heads' output columns (the
            // last to arrive writes them all, after the others are done), split 0 alone the cache
            // (in a split iteration the last split appends; they all finish before any reader of
            // the cache runs) and each its own partials of the workspace.
            int64_t o0 = h0 * G * D + GD * s / S, o1 = h0 * G * D + GD * (s + 1) / S;
            if (!access(k, d->output, 1, 0, T, o0, o1)) return OOM(&c);
            if (s == 0 && (!access(k, d->k_cache, 1, 0, P, h0, h1) || !access(k, d->v_cache, 1, 0, P, h0, h1)))
                return OOM(&c);
            if (ws) {
                const int64_t slot = (int64_t)s * G * (D + 2) + MPK_ATTENTION_SPLIT_HEADER;
                operand(k, 7, ws, h0, 0);
                if (!access(k, ws, 1, h0, h1, slot, slot + G * (D + 2))) return OOM(&c);
            }
        }
    return MPK_OK;
}

mpk_status mpk_attention_linear_layer(mpk_kernel *k, const mpk_attention_desc *d,
                                      const mpk_tensor *w, mpk_tensor *partial, mpk_dim3 grid,
                                      mpk_dim3 block, const char *name) {
    layer_ctx c;
    TRY(layer_begin(&c, k, "attention_linear", name, grid));
    int64_t G;
    TRY(attention_check(&c, d, 0, &G));
    int64_t T = rows_total(k), Hq = d->num_q_heads, Hkv = d->num_kv_heads, D = d->head_dim;
    int64_t P = k->params.num_pages;
    TRY(want(&c, w, "weight", MPK_BF16, 2, (int64_t[]){-1, Hq * D}));
    int64_t N = w->dims[0];
    TRY(divides(&c, "grid.x", grid.x, N, "output columns"));
    TRY(divides(&c, "grid.y", grid.y, Hkv, "kv heads"));
    TRY(want(&c, partial, "partial", MPK_F32, 2, (int64_t[]){T, grid.y * N}));
    int64_t hpt = Hkv / grid.y, n = N / grid.x, Kg = hpt * G * D;
    if ((G * D) % 8)
        return layer_fail(&c, MPK_ERR_SHAPE, "heads per kv head x head_dim = %lld is not a multiple of 8", (long long)(G * D));
    if (T * Kg * 2 > MPK_ATTENTION_LINEAR_MAX_ROW_BYTES)
        return layer_fail(&c, MPK_ERR_LIMIT, "%lld rows x %lld outputs of a task's heads need %lld bytes on chip, more than %d: use more kv head groups (grid.y) or mpk_attention_layer",
                          (long long)T, (long long)Kg, (long long)(T * Kg * 2), MPK_ATTENTION_LINEAR_MAX_ROW_BYTES);
    mpk_variant v = make_variant(MPK_TASK_ATTENTION_LINEAR);
    attention_params(&v, k, d, G, hpt);
    v.p[3] = (int32_t)(Hq * D);  // ld_w (the weight's row stride)
    v.p[10] = (int32_t)n;
    v.p[11] = (int32_t)(grid.y * N);
    TRY(add_variant(&c, &v));
    TRY(add_layer(&c, MPK_TASK_ATTENTION_LINEAR, name, grid, block));
    for (int32_t y = 0; y < grid.y; y++)
        for (int32_t xi = 0; xi < grid.x; xi++) {
            int64_t h0 = hpt * y, h1 = h0 + hpt, n0 = n * xi;
            mpk_task_rec *r = new_task(&c, MPK_TASK_ATTENTION_LINEAR, 0, (int32_t)T);
            if (!r) return OOM(&c);
            // The first task of a group appends the rows' keys and values; the others compute
            // the same values (the CPU recomputes them, the GPU writes them too: identical
            // bytes) and read only earlier positions from the cache, so they declare no access
            // to it: tasks of one layer must not overlap where one writes.
            r->desc.iparam[0] = xi == 0;
            operand(k, 6, w, n0, h0 * G * D);
            prefetch(k, 6, n * Kg * (int64_t)mpk_dtype_size(w->dtype));
            operand(k, 7, partial, 0, y * N + n0);
            if (!attention_operands(k, d, G, h0, h1) || !access(k, w, 0, n0, n0 + n, h0 * G * D, h1 * G * D) ||
                !access(k, partial, 1, 0, T, y * N + n0, y * N + n0 + n))
                return OOM(&c);
            if (xi == 0 && (!access(k, d->k_cache, 1, 0, P, h0, h1) || !access(k, d->v_cache, 1, 0, P, h0, h1)))
                return OOM(&c);
        }
    return MPK_OK;
}

mpk_status mpk_residual_rmsnorm_linear_layer(mpk_kernel *k, const mpk_tensor *x,
                                             const mpk_tensor *partial, const mpk_tensor *norm_w,
                                             const mpk_tensor *w, mpk_tensor *out,
                                             mpk_tensor *x_out, float eps, mpk_dim3 grid,
                                             mpk_dim3 block, const char *name) {
    layer_ctx c;
    TRY(layer_begin(&c, k, "residual_rmsnorm_linear", name, grid));
    int64_t T = rows_total(k);
    TRY(want(&c, x, "residual", MPK_BF16, 2, (int64_t[]){T, -1}));
    int64_t K = x->dims[1];
    TRY(want(&c, partial, "partial", MPK_F32, 2, (int64_t[]){T, -1}));
    if (partial->dims[1] % K || partial->dims[1] == 0)
        return layer_fail(&c, MPK_ERR_SHAPE, "partial '%s' has %lld columns, not a positive multiple of %lld",
                          partial->name, (long long)partial->dims[1], (long long)K);
    int64_t P = partial->dims[1] / K;
    TRY(want(&c, norm_w, "norm weight", MPK_BF16, 1, (int64_t[]){K}));
    TRY(want(&c, w, "weight", MPK_BF16, 2, (int64_t[]){-1, K}));
    int64_t N = w->dims[0];
    TRY(want(&c, out, "output", MPK_BF16, 2, (int64_t[]){T, N}));
    TRY(want(&c, x_out, "residual_out", MPK_BF16, 2, (int64_t[]){T, K}));
    if (out == x || x_out == x || out == x_out)
        return layer_fail(&c, MPK_ERR_INVALID_ARG, "output, residual and residual_out must be three tensors");
    if (!(eps > 0)) return layer_fail(&c, MPK_ERR_INVALID_ARG, "eps must be > 0");
    TRY(divides(&c, "grid.x", grid.x, N, "output columns"));
    if (grid.y != 1) return layer_fail(&c, MPK_ERR_SHAPE, "grid.y=%d must be 1", grid.y);
    int64_t n = N / grid.x;
    mpk_variant v = make_variant(MPK_TASK_RESIDUAL_RMSNORM_LINEAR);
    v.p[0] = (int32_t)K; v.p[1] = (int32_t)n; v.p[2] = (int32_t)K; v.p[3] = (int32_t)K;
    v.p[4] = (int32_t)N; v.p[5] = (int32_t)P; v.p[6] = (int32_t)(P * K); v.p[7] = (int32_t)K;
    v.f[0] = eps;
    TRY(add_variant(&c, &v));
    TRY(add_layer(&c, MPK_TASK_RESIDUAL_RMSNORM_LINEAR, name, grid, block));
    for (int32_t xi = 0; xi < grid.x; xi++) {
        int64_t n0 = n * xi, c0 = K * xi / grid.x, c1 = K * (xi + 1) / grid.x;
        mpk_task_rec *r = new_task(&c, MPK_TASK_RESIDUAL_RMSNORM_LINEAR, 0, (int32_t)T);
        if (!r) return OOM(&c);
        r->desc.iparam[0] = (int32_t)c0;
        r->desc.iparam[1] = (int32_t)(c1 - c0);
        operand(k, 0, x, 0, 0);
        operand(k, 1, partial, 0, 0);
        operand(k, 2, norm_w, 0, 0);
        prefetch(k, 3, n * K * (int64_t)mpk_dtype_size(w->dtype));
        operand(k, 3, w, n0, 0);
        operand(k, 4, out, 0, n0);
        operand(k, 5, x_out, 0, 0);
        if (!access(k, x, 0, 0, T, 0, K) || !access(k, partial, 0, 0, T, 0, P * K) ||
            !access(k, norm_w, 0, 0, K, 0, 1) || !access(k, w, 0, n0, n0 + n, 0, K) ||
            !access(k, out, 1, 0, T, n0, n0 + n) || (c1 > c0 && !access(k, x_out, 1, 0, T, c0, c1)))
            return OOM(&c);
    }
    return MPK_OK;
}

// ---- silu_mul ----------------------------------------------------------------------------------

mpk_status mpk_silu_mul_layer(mpk_kernel *k, const mpk_tensor *in, mpk_tensor *out, mpk_dim3 grid,
                              mpk_dim3 block, const char *name) {
    layer_ctx c;
    TRY(layer_begin(&c, k, "silu_mul", name, grid));
    int64_t T = rows_total(k);
    TRY(want(&c, in, "input", MPK_BF16, 2, (int64_t[]){T, -1}));
    if (in->dims[1] % 2) return layer_fail(&c, MPK_ERR_SHAPE, "input width %lld is odd (gate and up halves)", (long long)in->dims[1]);
    int64_t I = in->dims[1] / 2;
    TRY(want(&c, out, "output", MPK_BF16, 2, (int64_t[]){T, I}));
    TRY(divides(&c, "grid.x", grid.x, I, "output columns"));
    TRY(divides(&c, "grid.y", grid.y, T, "token rows"));
    int64_t n = I / grid.x;
    mpk_variant v = make_variant(MPK_TASK_SILU_MUL);
    v.p[0] = (int32_t)n; v.p[1] = (int32_t)(2 * I); v.p[2] = (int32_t)I;
    TRY(add_variant(&c, &v));
    TRY(add_layer(&c, MPK_TASK_SILU_MUL, name, grid, block));
    for (int32_t y = 0; y < grid.y; y++)
        for (int32_t xi = 0; xi < grid.x; xi++) {
            int64_t r0 = T * y / grid.y, r1 = T * (y + 1) / grid.y, c0 = n * xi;
            if (!new_task(&c, MPK_TASK_SILU_MUL, (int32_t)r0, (int32_t)r1)) return OOM(&c);
            operand(k, 0, in, 0, c0);
            operand(k, 1, in, 0, I + c0);
            operand(k, 2, out, 0, c0);
            if (!access(k, in, 0, r0, r1, c0, c0 + n) || !access(k, in, 0, r0, r1, I + c0, I + c0 + n) ||
                !access(k, out, 1, r0, r1, c0, c0 + n))
                return OOM(&c);
        }
    return MPK_OK;
}

mpk_status mpk_silu_mul_linear_with_residual_layer(mpk_kernel *k, const mpk_tensor *in,
                                                   const mpk_tensor *w, const mpk_tensor *res,
                                                   mpk_tensor *out, mpk_dim3 grid, mpk_dim3 block,
                                                   const char *name) {
    layer_ctx c;
    TRY(layer_begin(&c, k, "silu_mul_linear_with_residual", name, grid));
    int64_t T = rows_total(k);
    TRY(want(&c, in, "input", MPK_BF16, 2, (int64_t[]){T, -1}));
    if (in->dims[1] % 2) return layer_fail(&c, MPK_ERR_SHAPE, "input width %lld is odd (gate and up halves)", (long long)in->dims[1]);
    int64_t I = in->dims[1] / 2;
    TRY(want(&c, w, "weight", MPK_BF16, 2, (int64_t[]){-1, I}));
    int64_t N = w->dims[0];
    TRY(want(&c, res, "residual", MPK_BF16, 2, (int64_t[]){T, N}));
    TRY(want(&c, out, "output", MPK_BF16, 2, (int64_t[]){T, N}));
    if (out == in) return layer_fail(&c, MPK_ERR_INVALID_ARG, "output must not be the input");
    TRY(divides(&c, "grid.x", grid.x, N, "output columns"));
    TRY(divides(&c, "grid.y", grid.y, T, "token rows"));
    int64_t n = N / grid.x;
    mpk_variant v = make_variant(MPK_TASK_SILU_MUL_LINEAR_RESIDUAL);
    v.p[0] = (int32_t)I; v.p[1] = (int32_t)n; v.p[2] = (int32_t)(2 * I); v.p[3] = (int32_t)I;
    v.p[4] = (int32_t)N; v.p[5] = (int32_t)N;
    TRY(add_variant(&c, &v));
    TRY(add_layer(&c, MPK_TASK_SILU_MUL_LINEAR_RESIDUAL, name, grid, block));
    for (int32_t y = 0; y < grid.y; y++)
        for (int32_t xi = 0; xi < grid.x; xi++) {
            int64_t r0 = T * y / grid.y, r1 = T * (y + 1) / grid.y, n0 = n * xi;
            if (!new_task(&c, MPK_TASK_SILU_MUL_LINEAR_RESIDUAL, (int32_t)r0, (int32_t)r1)) return OOM(&c);
            operand(k, 0, in, 0, 0);
            operand(k, 1, w, n0, 0);
            prefetch(k, 1, n * I * (int64_t)mpk_dtype_size(w->dtype));
            operand(k, 2, res, 0, n0);
            operand(k, 3, out, 0, n0);
            if (!access(k, in, 0, r0, r1, 0, 2 * I) || !access(k, w, 0, n0, n0 + n, 0, I) ||
                !access(k, res, 0, r0, r1, n0, n0 + n) || !access(k, out, 1, r0, r1, n0, n0 + n))
                return OOM(&c);
        }
    return MPK_OK;
}

// ---- all-reduce --------------------------------------------------------------------------------

mpk_status mpk_allreduce_layer(mpk_kernel *k, const mpk_tensor *in, mpk_tensor *out, mpk_dim3 grid,
                               mpk_dim3 block, const char *name) {
    layer_ctx c;
    TRY(layer_begin(&c, k, "allreduce", name, grid));
    if (k->params.world_size > 1)
        return layer_fail(&c, MPK_ERR_UNSUPPORTED, "needs a multi-GPU backend, which this build does not have yet (world_size=%d)", k->params.world_size);
    int64_t T = rows_total(k);
    TRY(want(&c, in, "input", MPK_BF16, 2, (int64_t[]){T, -1}));
    int64_t N = in->dims[1];
    TRY(want(&c, out, "output", MPK_BF16, 2, (int64_t[]){T, N}));
    if (out == in) return layer_fail(&c, MPK_ERR_INVALID_ARG, "output must not be the input");
    TRY(divides(&c, "grid.x", grid.x, N, "columns"));
    TRY(divides(&c, "grid.y", grid.y, T, "token rows"));
    int64_t n = N / grid.x;
    mpk_variant v = make_variant(MPK_TASK_ALLREDUCE);
    v.p[0] = (int32_t)n; v.p[1] = (int32_t)N; v.p[2] = (int32_t)N;
    TRY(add_variant(&c, &v));
    TRY(add_layer(&c, MPK_TASK_ALLREDUCE, name, grid, block));
    for (int32_t y = 0; y < grid.y; y++)
        for (int32_t xi = 0; xi < grid.x; xi++) {
            int64_t r0 = T * y / grid.y, r1 = T * (y + 1) / grid.y, c0 = n * xi;
            if (!new_task(&c, MPK_TASK_ALLREDUCE, (int32_t)r0, (int32_t)r1)) return OOM(&c);
            operand(k, 0, in, 0, c0);
            operand(k, 1, out, 0, c0);
            if (!access(k, in, 0, r0, r1, c0, c0 + n) || !access(k, out, 1, r0, r1, c0, c0 + n)) return OOM(&c);
        }
    return MPK_OK;
}

// ---- argmax and sampling -----------------------------------------------------------------------

mpk_status mpk_argmax_layer(mpk_kernel *k, const mpk_tensor *logits, mpk_tensor *out_ids,
                            mpk_dim3 grid, mpk_dim3 block, const char *name) {
    layer_ctx c;
    TRY(layer_begin(&c, k, "argmax", name, grid));
    int64_t T = rows_total(k);
    TRY(want(&c, logits, "logits", MPK_BF16, 2, (int64_t[]){T, -1}));
    TRY(want(&c, out_ids, "output_ids", MPK_I32, 1, (int64_t[]){T}));
    int64_t V = logits->dims[1], P = grid.x;
    TRY(divides(&c, "grid.x", grid.x, V, "vocabulary entries"));
    TRY(divides(&c, "grid.y", grid.y, T, "token rows"));
    // Scratch for the partial maxima: (T, P) values and indices.
    char nm[200];
    const char *base = name ? name : "argmax";
    mpk_tensor *pv, *pi;
    snprintf(nm, sizeof nm, "%s.partial_values", base);
    TRY(mpk_new_tensor(k, 2, (int64_t[]){T, P}, MPK_F32, nm, MPK_IO_DEVICE, &pv));
    snprintf(nm, sizeof nm, "%s.partial_indices", base);
    TRY(mpk_new_tensor(k, 2, (int64_t[]){T, P}, MPK_I32, nm, MPK_IO_DEVICE, &pi));
    int64_t n = V / P;
    mpk_variant v = make_variant(MPK_TASK_ARGMAX_PARTIAL);
    v.p[0] = (int32_t)n; v.p[1] = (int32_t)V; v.p[2] = (int32_t)P;
    TRY(add_variant(&c, &v));
    snprintf(nm, sizeof nm, "%s.partial", base);
    TRY(add_layer(&c, MPK_TASK_ARGMAX_PARTIAL, nm, grid, block));
    for (int32_t y = 0; y < grid.y; y++)
        for (int32_t xi = 0; xi < grid.x; xi++) {
            int64_t r0 = T * y / grid.y, r1 = T * (y + 1) / grid.y, c0 = n * xi;
            mpk_task_rec *r = new_task(&c, MPK_TASK_ARGMAX_PARTIAL, (int32_t)r0, (int32_t)r1);
            if (!r) return OOM(&c);
            r->desc.iparam[0] = (int32_t)c0;
            operand(k, 0, logits, 0, c0);
            operand(k, 1, pv, 0, xi);
            operand(k, 2, pi, 0, xi);
            if (!access(k, logits, 0, r0, r1, c0, c0 + n) || !access(k, pv, 1, r0, r1, xi, xi + 1) ||
                !access(k, pi, 1, r0, r1, xi, xi + 1))
                return OOM(&c);
        }
    layer_ctx c2 = c;
    v = make_variant(MPK_TASK_ARGMAX_REDUCE);
    v.p[0] = (int32_t)P; v.p[1] = (int32_t)P;
    TRY(add_variant(&c2, &v));
    snprintf(nm, sizeof nm, "%s.reduce", base);
    mpk_dim3 g2 = {1, grid.y, 1};
    TRY(add_layer(&c2, MPK_TASK_ARGMAX_REDUCE, nm, g2, block));
    for (int32_t y = 0; y < grid.y; y++) {
        int64_t r0 = T * y / grid.y, r1 = T * (y + 1) / grid.y;
        if (!new_task(&c2, MPK_TASK_ARGMAX_REDUCE, (int32_t)r0, (int32_t)r1)) return OOM(&c2);
        operand(k, 0, pv, 0, 0);
        operand(k, 1, pi, 0, 0);
        operand(k, 2, out_ids, 0, 0);
        if (!access(k, pv, 0, r0, r1, 0, P) || !access(k, pi, 0, r0, r1, 0, P) ||
            !access(k, out_ids, 1, r0, r1, 0, 1))
            return OOM(&c2);
    }
    return MPK_OK;
}

mpk_status mpk_sampling_layer(mpk_kernel *k, const mpk_tensor *logits, mpk_tensor *out_ids,
                              mpk_dim3 grid, mpk_dim3 block, const char *name) {
    layer_ctx c;
    TRY(layer_begin(&c, k, "sampling", name, grid));
    int64_t T = rows_total(k);
    TRY(want(&c, logits, "logits", MPK_BF16, 2, (int64_t[]){T, -1}));
    TRY(want(&c, out_ids, "output_ids", MPK_I32, 1, (int64_t[]){T}));
    int64_t V = logits->dims[1];
    if (grid.x != 1) return layer_fail(&c, MPK_ERR_SHAPE, "grid.x=%d must be 1 (a row is sampled by one task)", grid.x);
    TRY(divides(&c, "grid.y", grid.y, T, "token rows"));
    mpk_variant v = make_variant(MPK_TASK_SAMPLING);
    v.p[0] = (int32_t)V; v.p[1] = (int32_t)V;
    TRY(add_variant(&c, &v));
    TRY(add_layer(&c, MPK_TASK_SAMPLING, name, grid, block));
    for (int32_t y = 0; y < grid.y; y++) {
        int64_t r0 = T * y / grid.y, r1 = T * (y + 1) / grid.y;
        if (!new_task(&c, MPK_TASK_SAMPLING, (int32_t)r0, (int32_t)r1)) return OOM(&c);
        operand(k, 0, logits, 0, 0);
        operand(k, 1, out_ids, 0, 0);
        if (!access(k, logits, 0, r0, r1, 0, V) || !access(k, out_ids, 1, r0, r1, 0, 1)) return OOM(&c);
    }
    return MPK_OK;
}
