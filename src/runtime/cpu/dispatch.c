// dispatch.c — runs one task descriptor on the CPU: unpacks the variant's shape constants,
// clips the task's rows to the iteration's token count, offsets the operands to the first row and
// calls the task kernel (src/kernels/cpu). The CUDA megakernel's switch does the same on the GPU.
#include "runtime/cpu/cpu.h"

#include "kernels/cpu/kernels.h"

#define PTR(T, i) ((T *)(uintptr_t)d->operand[i])

void mpk_cpu_run_task(const mpk_task_desc *d, const mpk_variant *v, const mpk_batch *b) {
    const int32_t *p = v->p;
    int32_t r0 = d->row_begin;
    int32_t r1 = d->row_end < b->num_tokens ? d->row_end : b->num_tokens;
    int32_t rows = r1 - r0;
    if (rows <= 0 && d->type != MPK_TASK_ATTENTION && d->type != MPK_TASK_ATTENTION_LINEAR) return;
    switch ((mpk_task_type)d->type) {
    case MPK_TASK_EMBED:
        mpk_embed_cpu(PTR(const int32_t, 0) + r0, PTR(const mpk_bf16, 1),
                      PTR(mpk_bf16, 2) + (int64_t)r0 * p[2], rows, p[0], p[1], p[2], p[3]);
        break;
    case MPK_TASK_RMSNORM:
        mpk_rmsnorm_cpu(PTR(const mpk_bf16, 0) + (int64_t)r0 * p[1], PTR(const mpk_bf16, 1),
                        PTR(mpk_bf16, 2) + (int64_t)r0 * p[2], rows, p[0], p[1], p[2], v->f[0]);
        break;
    case MPK_TASK_RMSNORM_LINEAR:
        if (p[5]) {  // only the sampled rows, in runs of consecutive rows (the decode rows are one)
            for (int32_t lo = r0, s, n; (n = mpk_batch_next_sampled_run(b, &lo, r1, &s)) > 0;)
                mpk_rmsnorm_linear_cpu(PTR(const mpk_bf16, 0) + (int64_t)s * p[2], PTR(const mpk_bf16, 1),
                                       PTR(const mpk_bf16, 2), PTR(mpk_bf16, 3) + (int64_t)s * p[4], n, p[0],
                                       p[1], p[2], p[3], p[4], v->f[0]);
            break;
        }
        mpk_rmsnorm_linear_cpu(PTR(const mpk_bf16, 0) + (int64_t)r0 * p[2], PTR(const mpk_bf16, 1),
                               PTR(const mpk_bf16, 2), PTR(mpk_bf16, 3) + (int64_t)r0 * p[4], rows,
                               p[0], p[1], p[2], p[3], p[4], v->f[0]);
        break;
    case MPK_TASK_LINEAR:
        mpk_linear_cpu(PTR(const mpk_bf16, 0) + (int64_t)r0 * p[2], PTR(const mpk_bf16, 1),
                       PTR(mpk_bf16, 2) + (int64_t)r0 * p[4], rows, p[0], p[1], p[2], p[3], p[4]);
        break;
    case MPK_TASK_LINEAR_RESIDUAL:
        mpk_linear_residual_cpu(PTR(const mpk_bf16, 0) + (int64_t)r0 * p[2], PTR(const mpk_bf16, 1),
                                PTR(const mpk_bf16, 2) + (int64_t)r0 * p[4],
                                PTR(mpk_bf16, 3) + (int64_t)r0 * p[5], rows, p[0], p[1], p[2], p[3],
                                p[4], p[5]);
        break;
    case MPK_TASK_ATTENTION: {
        // p: G, D, ld_qkv, ld_out, page_size, page_stride, has_qnorm, has_knorm, has_rope,
        // heads per task, splits, workspace floats per head; iparam[0]: the task's split.
        // Operands are at the task's first kv head; step one head at a time.
        int32_t G = p[0], D = p[1];
        for (int32_t h = 0; h < p[9]; h++) {
            mpk_attention_split sp = {d->iparam[0], p[10], p[10] > 1 ? PTR(float, 7) + (int64_t)h * p[11] : NULL};
            mpk_attention_cpu(PTR(const mpk_bf16, 0) + (int64_t)h * (G + 2) * D,
                              PTR(mpk_bf16, 1) + (int64_t)h * p[4] * D,
                              PTR(mpk_bf16, 2) + (int64_t)h * p[4] * D,
                              p[6] ? PTR(const mpk_bf16, 3) : NULL, p[7] ? PTR(const mpk_bf16, 4) : NULL,
                              p[8] ? PTR(const float, 5) : NULL, PTR(mpk_bf16, 6) + (int64_t)h * G * D, b,
                              G, D, p[2], p[3], p[4], p[5], v->f[0], v->f[1], p[10] > 1 ? &sp : NULL);
        }
        break;
    }
    case MPK_TASK_ATTENTION_LINEAR:
        // p: attention's p[0..9] (p[3] = ld_w), n, ld_part; iparam[0]: this task appends.
        mpk_attention_linear_cpu(PTR(const mpk_bf16, 0), PTR(mpk_bf16, 1), PTR(mpk_bf16, 2),
                                 p[6] ? PTR(const mpk_bf16, 3) : NULL, p[7] ? PTR(const mpk_bf16, 4) : NULL,
                                 p[8] ? PTR(const float, 5) : NULL, PTR(const mpk_bf16, 6), PTR(float, 7), b,
                                 p[0], p[1], p[2], p[3], p[4], p[5], p[9], p[10], p[11], v->f[0],
                                 v->f[1], d->iparam[0]);
        break;
    case MPK_TASK_RESIDUAL_RMSNORM_LINEAR:
        // p: K, n, ld_x, ld_w, ld_out, P, ld_part, ld_xo; iparam: x_out columns c0, count.
        mpk_residual_rmsnorm_linear_cpu(PTR(const mpk_bf16, 0) + (int64_t)r0 * p[2],
                                        PTR(const float, 1) + (int64_t)r0 * p[6], PTR(const mpk_bf16, 2),
                                        PTR(const mpk_bf16, 3), PTR(mpk_bf16, 4) + (int64_t)r0 * p[4],
                                        PTR(mpk_bf16, 5) + (int64_t)r0 * p[7], rows, p[0], p[1], p[2],
                                        p[3], p[4], p[5], p[6], p[7], d->iparam[0], d->iparam[1],
                                        v->f[0]);
        break;
    case MPK_TASK_SILU_MUL:
        mpk_silu_mul_cpu(PTR(const mpk_bf16, 0) + (int64_t)r0 * p[1],
                         PTR(const mpk_bf16, 1) + (int64_t)r0 * p[1],
                         PTR(mpk_bf16, 2) + (int64_t)r0 * p[2], rows, p[0], p[1], p[2]);
        break;
    case MPK_TASK_SILU_MUL_LINEAR_RESIDUAL:
        mpk_silu_mul_linear_residual_cpu(PTR(const mpk_bf16, 0) + (int64_t)r0 * p[2],
                                         PTR(const mpk_bf16, 1),
                                         PTR(const mpk_bf16, 2) + (int64_t)r0 * p[4],
                                         PTR(mpk_bf16, 3) + (int64_t)r0 * p[5], rows, p[0], p[1],
                                         p[2], p[3], p[4], p[5]);
        break;
    case MPK_TASK_ALLREDUCE:
        mpk_allreduce_cpu(PTR(const mpk_bf16, 0) + (int64_t)r0 * p[1],
                          PTR(mpk_bf16, 1) + (int64_t)r0 * p[2], rows, p[0], p[1], p[2]);
        break;
    case MPK_TASK_ARGMAX_PARTIAL:  // the sampled rows only (as sampling): a prompt's last row
        for (int32_t lo = r0, s, n; (n = mpk_batch_next_sampled_run(b, &lo, r1, &s)) > 0;)
            mpk_argmax_partial_cpu(PTR(const mpk_bf16, 0) + (int64_t)s * p[1], PTR(float, 1) + (int64_t)s * p[2],
                                   PTR(int32_t, 2) + (int64_t)s * p[2], n, p[0], p[1], p[2], d->iparam[0]);
        break;
    case MPK_TASK_ARGMAX_REDUCE:
        for (int32_t lo = r0, s, n; (n = mpk_batch_next_sampled_run(b, &lo, r1, &s)) > 0;)
            mpk_argmax_reduce_cpu(PTR(const float, 0) + (int64_t)s * p[1], PTR(const int32_t, 1) + (int64_t)s * p[1],
                                  PTR(int32_t, 2) + s, n, p[0], p[1]);
        break;
    case MPK_TASK_SAMPLING:
        // The kernel indexes rows itself (it needs each row's request); pass the base pointers.
        mpk_sampling_cpu(PTR(const mpk_bf16, 0), PTR(int32_t, 1), b, r0, r1, p[0], p[1]);
        break;
    case MPK_TASK_NONE:
    case MPK_TASK_TYPE_COUNT:
        break;
    }
}
