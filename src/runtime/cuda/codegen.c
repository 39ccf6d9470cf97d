// codegen.c — emits the megakernel's .cu: the device headers (embedded in the library by
// tools/embed.sh) inlined in dependency order, one specialised body per variant with its shape
// constants written as literals, and a dispatch switch over variant ids that reads like a table.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/cuda/cuda_internal.h"
#include "runtime/cuda/embed.h"

// ---- growable string ------------------------------------------------------------------------------

void mpk_sbuf_append(mpk_sbuf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

void mpk_sbuf_printf(mpk_sbuf *b, const char *fmt, ...) {
    char small[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = 1;
        return;
    }
    if ((size_t)n < sizeof small) {
        mpk_sbuf_append(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->failed = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    mpk_sbuf_append(b, big, (size_t)n);
    free(big);
}

// ---- embedded headers -----------------------------------------------------------------------------

static const char *embedded(const char *path) {
    for (const mpk_embedded_file *f = mpk_embedded_files; f->path; f++)
        if (strcmp(f->path, path) == 0) return f->contents;
    return NULL;
}

// Appends a header with its quoted #include lines commented out: every header it names is
// inlined before it, so the .cu needs no include path and the cache hash covers all of it.
static void inline_header(mpk_sbuf *b, const char *path, const char *text) {
    mpk_sbuf_printf(b, "\n// ==== %s ====\n", path);
    const char *p = text;
    while (*p) {
        const char *eol = strchr(p, '\n');
        size_t n = eol ? (size_t)(eol - p) + 1 : strlen(p);
        const char *q = p;
        while (q < p + n && (*q == ' ' || *q == '\t')) q++;
        if (strncmp(q, "#include \"", 10) == 0) mpk_sbuf_append(b, "// (inlined) ", 13);
        mpk_sbuf_append(b, p, n);
        p += n;
    }
}

// Order: plain data first, then the kernels' common helpers, the task kernels, the runtime.
static const char *const header_order[] = {
    "src/kernels/task.h",         "src/runtime/batch.h",         "src/runtime/cuda/abi.cuh",
    "src/kernels/cuda/common.cuh", "src/kernels/cuda/gemm.cuh",   "src/kernels/cuda/stream.cuh",
    "src/kernels/cuda/linear.cuh", NULL,
};

static int in_order_list(const char *path) {
    for (int i = 0; header_order[i]; i++)
        if (strcmp(header_order[i], path) == 0) return 1;
    return 0;
}

static mpk_status emit_headers(mpk_kernel *k, mpk_sbuf *b) {
    for (int i = 0; header_order[i]; i++) {
        const char *text = embedded(header_order[i]);
        if (!text)
            return mpk_fail(k, MPK_ERR_INTERNAL, "CUDA codegen: embedded header %s is missing",
                            header_order[i]);
        inline_header(b, header_order[i], text);
    }
    for (const mpk_embedded_file *f = mpk_embedded_files; f->path; f++)
        if (strncmp(f->path, "src/kernels/cuda/", 17) == 0 && !in_order_list(f->path))
            inline_header(b, f->path, f->contents);
    const char *rt = embedded("src/runtime/cuda/runtime.cuh");
    if (!rt) return mpk_fail(k, MPK_ERR_INTERNAL, "CUDA codegen: embedded runtime.cuh is missing");
    inline_header(b, "src/runtime/cuda/runtime.cuh", rt);
    return MPK_OK;
}

// ---- block size -----------------------------------------------------------------------------------

// Threads per block of the megakernel: 384 for every graph. At 384 threads (168 registers a
// thread) the megakernel needs no register spills, which at 512 (128 registers) every task paid
// for. Measured on the H100 (bench/NOTES.md): v9 Qwen3-0.6B -4% against 512, 8B then +2%; v10
// (with attention's two positions per round and the GEMV split) 8B -0.6%, Llama-3.2-1B -0.8%.
#define MPK_CODEGEN_THREADS 384

// ---- variants -------------------------------------------------------------------------------------

// Casts of operand j of the task `d`.
#define OP(T, j) "((" T " *)d.operand[" #j "])"
#define BF "mpk_bf16"
#define CBF "const mpk_bf16"
// A product's prompt rows, in tiles when the compiler marked its layer (compile.c:
// mark_tile_blocks; iparam[1] the block, iparam[2] the task's index in the layer).
#define TILED "true, d.iparam[2], d.iparam[1]"

// The body of one variant: rows [r0, r1) of the task, shape constants as literals. A product's
// body takes its decode rows (prompt == 0: the GEMV) or its prompt rows (prompt == 1).
static mpk_status emit_variant_body(mpk_kernel *k, mpk_sbuf *b, int32_t id, const mpk_variant *v, int prompt) {
    const int32_t *p = v->p;
    switch (v->type) {
    case MPK_TASK_EMBED:  // ids, weight, out | cols, ld_w, ld_out, vocab
        mpk_sbuf_printf(b, "    mpk_embed_cuda(" OP("const int32_t", 0) " + r0, " OP(CBF, 1) ", " OP(BF, 2)
                        " + (int64_t)r0 * %d, r1 - r0, %d, %d, %d, %d);\n",
                        p[2], p[0], p[1], p[2], p[3]);
        break;
    case MPK_TASK_RMSNORM:  // x, weight, out | H, ld_x, ld_out; f0 eps
        mpk_sbuf_printf(b, "    mpk_rmsnorm_cuda(" OP(CBF, 0) " + (int64_t)r0 * %d, " OP(CBF, 1) ", " OP(BF, 2)
                        " + (int64_t)r0 * %d, r1 - r0, %d, %d, %d, %.9gf);\n",
                        p[1], p[2], p[0], p[1], p[2], (double)v->f[0]);
        break;
    case MPK_TASK_RMSNORM_LINEAR:  // x, norm_w, w, out | K, n, ld_x, ld_w, ld_out, sampled; f0 eps
        if (prompt && p[5])  // the sampled prompt rows alone, by the GEMV, when they are few
            mpk_sbuf_printf(b, "    if (mpk_rmsnorm_linear_sampled_cuda(b, max(r0, nd), r1, " OP(CBF, 0) ", " OP(CBF, 1)
                            ", " OP(CBF, 2) ", " OP(BF, 3) ", %d, %d, %d, %d, %d, %.9gf)) return;\n",
                            p[0], p[1], p[2], p[3], p[4], (double)v->f[0]);
        mpk_sbuf_printf(b, "    mpk_rmsnorm_linear_cuda(" OP(CBF, 0) " + (int64_t)r0 * %d, " OP(CBF, 1) ", "
                        OP(CBF, 2) ", " OP(BF, 3) " + (int64_t)r0 * %d, r1 - r0, %d, %d, %d, %d, %d, %.9gf, "
                        "mpk_decode_rows(nd, r0, r1), %s);\n",
                        p[2], p[4], p[0], p[1], p[2], p[3], p[4], (double)v->f[0], prompt ? TILED : "false");
        break;
    case MPK_TASK_LINEAR:  // x, w, out | K, n, ld_x, ld_w, ld_out
        mpk_sbuf_printf(b, "    mpk_linear_cuda(" OP(CBF, 0) " + (int64_t)r0 * %d, " OP(CBF, 1) ", " OP(BF, 2)
                        " + (int64_t)r0 * %d, r1 - r0, %d, %d, %d, %d, %d, mpk_decode_rows(nd, r0, r1), %s);\n",
                        p[2], p[4], p[0], p[1], p[2], p[3], p[4], prompt ? TILED : "false");
        break;
    case MPK_TASK_LINEAR_RESIDUAL:  // x, w, res, out | K, n, ld_x, ld_w, ld_res, ld_out
        mpk_sbuf_printf(b, "    mpk_linear_residual_cuda(" OP(CBF, 0) " + (int64_t)r0 * %d, " OP(CBF, 1) ", "
                        OP(CBF, 2) " + (int64_t)r0 * %d, " OP(BF, 3) " + (int64_t)r0 * %d, r1 - r0, "
                        "%d, %d, %d, %d, %d, %d, mpk_decode_rows(nd, r0, r1), %s);\n",
                        p[2], p[4], p[5], p[0], p[1], p[2], p[3], p[4], p[5], prompt ? TILED : "false");
        break;
    case MPK_TASK_ATTENTION:  // qkv, k_cache, v_cache, q_norm, k_norm, inv_freq, out, split workspace
        // G, D, ld_qkv, ld_out, page_size, page_stride, has_qnorm, has_knorm, has_rope,
        // kv heads per task, splits, workspace floats per head; f0 norm eps, f1 scale; iparam[0]
        // the task's split. The CPU/GPU kernel does one kv head.
        mpk_sbuf_printf(b,
                        "    (void)r0; (void)r1;  // attention covers every row of the batch\n"
                        "    for (int h = 0; h < %d; h++)\n"
                        "        mpk_attention_cuda(" OP(CBF, 0) " + (int64_t)h * %lld, " OP(BF, 1)
                        " + (int64_t)h * %lld, " OP(BF, 2) " + (int64_t)h * %lld,\n"
                        "                           %s, %s, %s, " OP(BF, 6) " + (int64_t)h * %lld, b,\n"
                        "                           %d, %d, %d, %d, %d, %d, %.9gf, %.9gf",
                        p[9], (long long)(p[0] + 2) * p[1], (long long)p[4] * p[1],
                        (long long)p[4] * p[1],
                        p[6] ? OP(CBF, 3) : "(const mpk_bf16 *)0", p[7] ? OP(CBF, 4) : "(const mpk_bf16 *)0",
                        p[8] ? OP("const float", 5) : "(const float *)0", (long long)p[0] * p[1],
                        p[0], p[1], p[2], p[3], p[4], p[5], (double)v->f[0], (double)v->f[1]);
        if (p[10] > 1)
            mpk_sbuf_printf(b, ",\n                           (const mpk_l2_ask *)0, d.iparam[0], %d, " OP("float", 7)
                            " + (int64_t)h * %d", p[10], p[11]);
        mpk_sbuf_printf(b, ");\n");
        break;
    case MPK_TASK_ATTENTION_LINEAR:  // qkv, k_cache, v_cache, q_norm, k_norm, inv_freq, w, part
        // attention's p[0..9] with p[3] = ld_w, then n, ld_part; every task of a group appends
        // (attention.cuh says why), so iparam[0] is not read here.
        mpk_sbuf_printf(b,
                        "    (void)r0; (void)r1;  // attention covers every row of the batch\n"
                        "    mpk_attention_linear_cuda(" OP(CBF, 0) ", " OP(BF, 1) ", " OP(BF, 2) ", %s, %s, %s,\n"
                        "                              " OP(CBF, 6) ", " OP("float", 7) ", b, %d, %d, %d, %d, %d, %lld,\n"
                        "                              %d, %d, %d, %.9gf, %.9gf);\n",
                        p[6] ? OP(CBF, 3) : "(const mpk_bf16 *)0", p[7] ? OP(CBF, 4) : "(const mpk_bf16 *)0",
                        p[8] ? OP("const float", 5) : "(const float *)0", p[0], p[1], p[2], p[3], p[4],
                        (long long)p[5], p[9], p[10], p[11], (double)v->f[0], (double)v->f[1]);
        break;
    case MPK_TASK_RESIDUAL_RMSNORM_LINEAR:  // x, part, norm_w, w, out, x_out | K, n, ld_x, ld_w, ld_out, P, ld_part, ld_xo
        mpk_sbuf_printf(b, "    mpk_residual_rmsnorm_linear_cuda(" OP(CBF, 0) " + (int64_t)r0 * %d, " OP("const float", 1)
                        " + (int64_t)r0 * %d, " OP(CBF, 2) ", " OP(CBF, 3) ", " OP(BF, 4) " + (int64_t)r0 * %d, "
                        OP(BF, 5) " + (int64_t)r0 * %d, r1 - r0, %d, %d, %d, %d, %d, %d, %d, %d, d.iparam[0], "
                        "d.iparam[1], %.9gf, mpk_decode_rows(nd, r0, r1), %s);\n",
                        p[2], p[6], p[4], p[7], p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7],
                        (double)v->f[0], prompt ? "true" : "false");
        break;
    case MPK_TASK_SILU_MUL:  // gate, up, out | n, ld_in, ld_out
        mpk_sbuf_printf(b, "    mpk_silu_mul_cuda(" OP(CBF, 0) " + (int64_t)r0 * %d, " OP(CBF, 1)
                        " + (int64_t)r0 * %d, " OP(BF, 2) " + (int64_t)r0 * %d, r1 - r0, %d, %d, %d);\n",
                        p[1], p[1], p[2], p[0], p[1], p[2]);
        break;
    case MPK_TASK_SILU_MUL_LINEAR_RESIDUAL:  // in, w, res, out | I, n, ld_in, ld_w, ld_res, ld_out
        mpk_sbuf_printf(b, "    mpk_silu_mul_linear_residual_cuda(" OP(CBF, 0) " + (int64_t)r0 * %d, " OP(CBF, 1)
                        ", " OP(CBF, 2) " + (int64_t)r0 * %d, " OP(BF, 3) " + (int64_t)r0 * %d, r1 - r0, "
                        "%d, %d, %d, %d, %d, %d, mpk_decode_rows(nd, r0, r1), %s);\n",
                        p[2], p[4], p[5], p[0], p[1], p[2], p[3], p[4], p[5], prompt ? TILED : "false");
        break;
    case MPK_TASK_ALLREDUCE:  // in, out | n, ld_in, ld_out
        mpk_sbuf_printf(b, "    mpk_allreduce_cuda(" OP(CBF, 0) " + (int64_t)r0 * %d, " OP(BF, 1)
                        " + (int64_t)r0 * %d, r1 - r0, %d, %d, %d);\n",
                        p[1], p[2], p[0], p[1], p[2]);
        break;
    case MPK_TASK_ARGMAX_PARTIAL:  // logits, part_val, part_idx | n, ld_logits, ld_part; iparam0
        // The sampled rows only (batch.h), as sampling: a prompt's other rows have no logits.
        mpk_sbuf_printf(b, "    for (int32_t lo = r0, s, n; (n = mpk_batch_next_sampled_run(b, &lo, r1, &s)) > 0;)\n"
                        "        mpk_argmax_partial_cuda(" OP(CBF, 0) " + (int64_t)s * %d, " OP("float", 1)
                        " + (int64_t)s * %d, " OP("int32_t", 2) " + (int64_t)s * %d, n, %d, %d, %d, "
                        "d.iparam[0]);\n",
                        p[1], p[2], p[2], p[0], p[1], p[2]);
        break;
    case MPK_TASK_ARGMAX_REDUCE:  // part_val, part_idx, out | P, ld_part
        mpk_sbuf_printf(b, "    for (int32_t lo = r0, s, n; (n = mpk_batch_next_sampled_run(b, &lo, r1, &s)) > 0;)\n"
                        "        mpk_argmax_reduce_cuda(" OP("const float", 0) " + (int64_t)s * %d, "
                        OP("const int32_t", 1) " + (int64_t)s * %d, " OP("int32_t", 2)
                        " + s, n, %d, %d);\n",
                        p[1], p[1], p[0], p[1]);
        break;
    case MPK_TASK_SAMPLING:  // logits, out | V, ld_logits; reserved[0]: the task's sort scratch
        mpk_sbuf_printf(b, "    mpk_sampling_cuda(" OP(CBF, 0) ", " OP("int32_t", 1)
                        ", b, r0, r1, %d, %d, (uint64_t *)d.reserved[0]);\n",
                        p[0], p[1]);
        break;
    default:
        return mpk_fail(k, MPK_ERR_UNSUPPORTED, "CUDA codegen: variant %d has task type %d (%s), "
                        "which the CUDA backend does not implement", id, v->type,
                        mpk_task_type_name(v->type));
    }
    return MPK_OK;
}

// The layers that use each variant, for the comment above its body.
static void emit_variant_users(mpk_kernel *k, mpk_sbuf *b, int32_t id) {
    int shown = 0;
    for (int32_t i = 0; i < k->graph.num_tasks && shown < 4; i++) {
        const mpk_task_desc *d = &k->graph.tasks[i];
        if (d->variant != id) continue;
        int seen = 0;
        for (int32_t j = 0; j < i && !seen; j++)
            seen = k->graph.tasks[j].variant == id && k->graph.tasks[j].layer == d->layer;
        if (seen) continue;
        mpk_sbuf_printf(b, "%s'%s'", shown ? ", " : " layers ", mpk_layer_name(k, (int32_t)d->layer));
        shown++;
    }
    if (shown == 4) mpk_sbuf_printf(b, ", ...");
}

mpk_status mpk_cuda_codegen(mpk_kernel *k, char **out) {
    *out = NULL;
    mpk_sbuf b = {0};
    mpk_sbuf_printf(&b,
                    "// Generated by mpk (src/runtime/cuda/codegen.c): the megakernel of one compiled graph,\n"
                    "// %d tasks, %d events, %d variants. The device headers are inlined below; the\n"
                    "// variants and the dispatch switch come last. Do not edit: regenerated on compile.\n",
                    k->graph.num_tasks, k->graph.num_events, k->graph.num_variants);
    // Threads per block; MPK_NVCC_FLAGS=-DMPK_DEV_THREADS=N overrides it.
    mpk_sbuf_printf(&b, "\n#ifndef MPK_DEV_THREADS\n#define MPK_DEV_THREADS %d\n#endif\n", MPK_CODEGEN_THREADS);
    mpk_status st = emit_headers(k, &b);
    if (st) {
        free(b.s);
        return st;
    }
    mpk_sbuf_printf(&b, "\n// ==== variants: one specialised body per distinct task shape ====\n");
    for (int32_t i = 0; i < k->graph.num_variants; i++) {
        const mpk_variant *v = &k->graph.variants[i];
        mpk_sbuf_printf(&b, "\n// variant %d: %s,", i, mpk_task_type_name(v->type));
        emit_variant_users(k, &b, i);
        mpk_sbuf_printf(&b, "\n__device__ __forceinline__ void mpk_variant_%d(const mpk_task_desc &d, mpk_batch *b, int32_t nt, int32_t nd) {\n"
                            "    const int32_t r0 = d.row_begin, r1 = min(d.row_end, nt);\n"
                            "    if (r1 <= r0 && d.type != %d && d.type != %d && d.type != %d) return;\n",
                        i, MPK_TASK_ATTENTION, MPK_TASK_ATTENTION_LINEAR, MPK_TASK_SAMPLING);
        st = emit_variant_body(k, &b, i, v, 0);
        if (st) {
            free(b.s);
            return st;
        }
        mpk_sbuf_printf(&b, "}\n");
    }
    // The products' prompt rows (a prefill chunk): a function of its own, called by the runtime
    // before the task's body, so that the decode path's code has no call in it (one inside the
    // GEMV measured 2% slower per token: bench/NOTES.md v13).
    mpk_sbuf_printf(&b, "\n// ==== prompt rows of the products (tensor cores) ====\n");
    for (int32_t i = 0; i < k->graph.num_variants; i++) {
        const mpk_variant *v = &k->graph.variants[i];
        if (!mpk_task_is_product(v->type)) continue;
        mpk_sbuf_printf(&b, "\n__device__ __forceinline__ void mpk_variant_prompt_%d(const mpk_task_desc &d, mpk_batch *b, int32_t nt, int32_t nd) {\n"
                            "    const int32_t r0 = d.row_begin, r1 = min(d.row_end, nt);\n"
                            "    if (r1 <= r0) return;\n", i);
        st = emit_variant_body(k, &b, i, v, 1);
        if (st) {
            free(b.s);
            return st;
        }
        mpk_sbuf_printf(&b, "}\n");
    }
    mpk_sbuf_printf(&b, "\nstatic __device__ __noinline__ void mpk_dispatch_prompt(const mpk_task_desc &d, mpk_batch *b, int32_t nt, int32_t nd) {\n"
                        "    switch (d.variant) {\n");
    for (int32_t i = 0; i < k->graph.num_variants; i++)
        if (mpk_task_is_product(k->graph.variants[i].type))
            mpk_sbuf_printf(&b, "    case %d: mpk_variant_prompt_%d(d, b, nt, nd); return;\n", i, i);
    mpk_sbuf_printf(&b, "    default: return;\n    }\n}\n");
    mpk_sbuf_printf(&b, "\n// ==== dispatch: variant id -> body ====\n"
                        "static __device__ bool mpk_dispatch_task(const mpk_task_desc &d, mpk_batch *b, int32_t nt, int32_t nd) {\n"
                        "    switch (d.variant) {\n");
    for (int32_t i = 0; i < k->graph.num_variants; i++)
        mpk_sbuf_printf(&b, "    case %d: mpk_variant_%d(d, b, nt, nd); return true;  // %s\n", i, i,
                        mpk_task_type_name(k->graph.variants[i].type));
    mpk_sbuf_printf(&b, "    default: return false;\n    }\n}\n");
    // The preload (runtime.cuh): attention of one kv head per task (p9 == 1) copies the earlier
    // positions' keys and values; every other task only says it preloaded nothing.
    mpk_sbuf_printf(&b, "\n// ==== preload: what a task starts before its event fires ====\n"
                        "static __device__ void mpk_preload_task(const mpk_task_desc &d, const mpk_batch *b, int32_t nt) {\n"
                        "    switch (d.variant) {\n");
    for (int32_t i = 0; i < k->graph.num_variants; i++) {
        const mpk_variant *v = &k->graph.variants[i];
        if (v->type == MPK_TASK_ATTENTION && v->p[9] == 1)  // k_cache, v_cache | G, D, page_size, page_stride
            mpk_sbuf_printf(&b, "    case %d: mpk_attention_preload(" OP(CBF, 1) ", " OP(CBF, 2) ", b, nt, %d, %d, %d, %d); return;\n",
                            i, v->p[0], v->p[1], v->p[4], v->p[5]);
    }
    mpk_sbuf_printf(&b, "    default:\n        if (threadIdx.x == 0) mpk_smem()->pre_k = (const void *)0;\n    }\n}\n");
    if (b.failed) {
        free(b.s);
        return mpk_fail(k, MPK_ERR_NOMEM, "CUDA codegen: out of memory");
    }
    *out = b.s;
    return MPK_OK;
}
