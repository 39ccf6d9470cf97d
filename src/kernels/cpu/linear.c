// linear.c — LINEAR and LINEAR_RESIDUAL on the CPU (the oracle), and mpk_cpu_matvec, the one
// matrix-vector product that the fused linear tasks (rmsnorm_linear.c, silu_mul.c) share so that
// fused and unfused tasks round and sum identically.
#include "matvec.h"

// ---- the shared product -------------------------------------------------------------------------

// acc[k % LANES] += x[k] * w[k] with w already in floats: the same sums in the same order as
// mpk_cpu_dot_accumulate, so a row gives the same bits whichever path computed it.
static inline void dot_accumulate_f32(float acc[MPK_CPU_LANES], const float *x, const float *w,
                                      int32_t len) {
    int32_t k = 0;
    for (; k + MPK_CPU_LANES <= len; k += MPK_CPU_LANES)
        for (int i = 0; i < MPK_CPU_LANES; i++) acc[i] += x[k + i] * w[k + i];
    for (; k < len; k++) acc[k % MPK_CPU_LANES] += x[k] * w[k];
}

// Rows in groups of MPK_CPU_ROWS; within a group, blocks of MPK_CPU_BLOCK columns over chunks of
// the input. A group of several rows (prefill) converts each weight row chunk to floats once and
// uses it for every row of the group, so weights are streamed once per group instead of once per
// row; a single row (decode) converts on the fly. Input chunks are produced again only when they
// are not the ones already loaded (K > MPK_CPU_CHUNK).
#define MPK_CPU_ROWS 4
static void matvec(const mpk_cpu_rows *x, const mpk_bf16 *w, const mpk_bf16 *res, mpk_bf16 *out,
                   float *outf, int32_t rows, int32_t K, int32_t n, int32_t ld_w, int32_t ld_res,
                   int32_t ld_out) {
    static _Thread_local float xbuf[MPK_CPU_ROWS][MPK_CPU_CHUNK];          // (rows, chunk)
    static _Thread_local float wbuf[MPK_CPU_CHUNK];                        // (chunk) of one weight row
    static _Thread_local float acc[MPK_CPU_ROWS][MPK_CPU_BLOCK][MPK_CPU_LANES];
    for (int32_t r0 = 0; r0 < rows; r0 += MPK_CPU_ROWS) {
        int32_t nr = rows - r0 < MPK_CPU_ROWS ? rows - r0 : MPK_CPU_ROWS;
        int32_t loaded_k0 = -1;
        for (int32_t j0 = 0; j0 < n; j0 += MPK_CPU_BLOCK) {
            int32_t nb = n - j0 < MPK_CPU_BLOCK ? n - j0 : MPK_CPU_BLOCK;
            memset(acc, 0, sizeof acc);
            for (int32_t k0 = 0; k0 < K; k0 += MPK_CPU_CHUNK) {
                int32_t len = K - k0 < MPK_CPU_CHUNK ? K - k0 : MPK_CPU_CHUNK;
                if (k0 != loaded_k0) {
                    for (int32_t i = 0; i < nr; i++) {
                        if (x->begin) x->begin(x->ctx, r0 + i);
                        x->load(x->ctx, r0 + i, k0, len, xbuf[i]);
                    }
                    loaded_k0 = k0;
                }
                for (int32_t jj = 0; jj < nb; jj++) {
                    const mpk_bf16 *wr = w + (int64_t)(j0 + jj) * ld_w + k0;
                    if (nr == 1) {
                        mpk_cpu_dot_accumulate(acc[0][jj], xbuf[0], wr, len);
                        continue;
                    }
                    for (int32_t k = 0; k < len; k++) wbuf[k] = mpk_bf16_to_f32(wr[k]);
                    for (int32_t i = 0; i < nr; i++) dot_accumulate_f32(acc[i][jj], xbuf[i], wbuf, len);
                }
            }
            for (int32_t i = 0; i < nr; i++)
                for (int32_t jj = 0; jj < nb; jj++) {
                    int64_t r = r0 + i;
                    float s = mpk_cpu_lane_sum(acc[i][jj]);
                    if (outf) {
                        outf[r * ld_out + j0 + jj] = s;
                        continue;
                    }
                    if (res) s += mpk_bf16_to_f32(res[r * ld_res + j0 + jj]);
                    out[r * ld_out + j0 + jj] = mpk_f32_to_bf16(s);
                }
        }
    }
}

void mpk_cpu_matvec(const mpk_cpu_rows *x, const mpk_bf16 *w, const mpk_bf16 *res,
                    mpk_bf16 *out, int32_t rows, int32_t K, int32_t n, int32_t ld_w,
                    int32_t ld_res, int32_t ld_out) {
    matvec(x, w, res, out, NULL, rows, K, n, ld_w, ld_res, ld_out);
}

void mpk_cpu_matvec_f32(const mpk_cpu_rows *x, const mpk_bf16 *w, float *out, int32_t rows,
                        int32_t K, int32_t n, int32_t ld_w, int32_t ld_out) {
    matvec(x, w, NULL, NULL, out, rows, K, n, ld_w, 0, ld_out);
}

// ---- plain bf16 input rows -----------------------------------------------------------------------

void mpk_cpu_plain_rows_load(void *ctx, int32_t r, int32_t k0, int32_t len, float *dst) {
    const mpk_cpu_plain *p = ctx;  // x (rows, ld_x)
    const mpk_bf16 *src = p->x + (int64_t)r * p->ld_x + k0;
    for (int32_t k = 0; k < len; k++) dst[k] = mpk_bf16_to_f32(src[k]);
}

void mpk_linear_cpu(const mpk_bf16 *x, const mpk_bf16 *w, mpk_bf16 *out, int32_t rows, int32_t K,
                    int32_t n, int32_t ld_x, int32_t ld_w, int32_t ld_out) {
    mpk_cpu_plain p = {x, ld_x};
    mpk_cpu_rows src = {NULL, mpk_cpu_plain_rows_load, &p};
    mpk_cpu_matvec(&src, w, NULL, out, rows, K, n, ld_w, 0, ld_out);
}

void mpk_linear_residual_cpu(const mpk_bf16 *x, const mpk_bf16 *w, const mpk_bf16 *res,
                             mpk_bf16 *out, int32_t rows, int32_t K, int32_t n, int32_t ld_x,
                             int32_t ld_w, int32_t ld_res, int32_t ld_out) {
    mpk_cpu_plain p = {x, ld_x};
    mpk_cpu_rows src = {NULL, mpk_cpu_plain_rows_load, &p};
    mpk_cpu_matvec(&src, w, res, out, rows, K, n, ld_w, ld_res, ld_out);
}
