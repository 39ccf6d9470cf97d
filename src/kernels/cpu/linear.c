// linear.c — LINEAR and LINEAR_RESIDUAL on the CPU (the oracle), and mpk_cpu_matvec, the one
// matrix-vector product that the fused linear tasks (rmsnorm_linear.c, silu_mul.c) share so that
// fused and unfused tasks round and sum identically.
#include "matvec.h"

// ---- the shared product -------------------------------------------------------------------------

// Row by row; within a row, blocks of MPK_CPU_BLOCK columns over chunks of the input. The input
// chunk is produced again only when it is not the one already in xbuf (K > MPK_CPU_CHUNK).
void mpk_cpu_matvec(const mpk_cpu_rows *x, const mpk_bf16 *w, const mpk_bf16 *res,
                    mpk_bf16 *out, int32_t rows, int32_t K, int32_t n, int32_t ld_w,
                    int32_t ld_res, int32_t ld_out) {
    float xbuf[MPK_CPU_CHUNK];                // (chunk) of the current input row
    float acc[MPK_CPU_BLOCK][MPK_CPU_LANES];  // (block columns, lanes)
    for (int32_t r = 0; r < rows; r++) {
        int32_t loaded_k0 = -1;
        if (x->begin) x->begin(x->ctx, r);
        for (int32_t j0 = 0; j0 < n; j0 += MPK_CPU_BLOCK) {
            int32_t nb = n - j0 < MPK_CPU_BLOCK ? n - j0 : MPK_CPU_BLOCK;
            memset(acc, 0, sizeof acc);
            for (int32_t k0 = 0; k0 < K; k0 += MPK_CPU_CHUNK) {
                int32_t len = K - k0 < MPK_CPU_CHUNK ? K - k0 : MPK_CPU_CHUNK;
                if (k0 != loaded_k0) {
                    x->load(x->ctx, r, k0, len, xbuf);
                    loaded_k0 = k0;
                }
                for (int32_t jj = 0; jj < nb; jj++)
                    mpk_cpu_dot_accumulate(acc[jj], xbuf, w + (int64_t)(j0 + jj) * ld_w + k0,
                                           len);
            }
            for (int32_t jj = 0; jj < nb; jj++) {
                float s = mpk_cpu_lane_sum(acc[jj]);
                if (res) s += mpk_bf16_to_f32(res[(int64_t)r * ld_res + j0 + jj]);
                out[(int64_t)r * ld_out + j0 + jj] = mpk_f32_to_bf16(s);
            }
        }
    }
}

// ---- plain bf16 input rows -----------------------------------------------------------------------

typedef struct plain_rows {
    const mpk_bf16 *x;  // (rows, ld_x)
    int32_t ld_x;
} plain_rows;

static void plain_load(void *ctx, int32_t r, int32_t k0, int32_t len, float *dst) {
    const plain_rows *p = ctx;
    const mpk_bf16 *src = p->x + (int64_t)r * p->ld_x + k0;
    for (int32_t k = 0; k < len; k++) dst[k] = mpk_bf16_to_f32(src[k]);
}

void mpk_linear_cpu(const mpk_bf16 *x, const mpk_bf16 *w, mpk_bf16 *out, int32_t rows, int32_t K,
                    int32_t n, int32_t ld_x, int32_t ld_w, int32_t ld_out) {
    plain_rows p = {x, ld_x};
    mpk_cpu_rows src = {NULL, plain_load, &p};
    mpk_cpu_matvec(&src, w, NULL, out, rows, K, n, ld_w, 0, ld_out);
}

void mpk_linear_residual_cpu(const mpk_bf16 *x, const mpk_bf16 *w, const mpk_bf16 *res,
                             mpk_bf16 *out, int32_t rows, int32_t K, int32_t n, int32_t ld_x,
                             int32_t ld_w, int32_t ld_res, int32_t ld_out) {
    plain_rows p = {x, ld_x};
    mpk_cpu_rows src = {NULL, plain_load, &p};
    mpk_cpu_matvec(&src, w, res, out, rows, K, n, ld_w, ld_res, ld_out);
}
