// silu_mul.c — SILU_MUL and SILU_MUL_LINEAR_RESIDUAL on the CPU (the oracle). The fused task
// rounds h = silu(gate) * up to bf16 exactly as SILU_MUL stores it and then runs the shared
// product, so it equals silu_mul followed by linear_residual bit for bit.
#include "matvec.h"

void mpk_silu_mul_cpu(const mpk_bf16 *gate, const mpk_bf16 *up, mpk_bf16 *out, int32_t rows,
                      int32_t n, int32_t ld_in, int32_t ld_out) {
    for (int32_t r = 0; r < rows; r++) {
        const mpk_bf16 *g = gate + (int64_t)r * ld_in;  // (n)
        const mpk_bf16 *u = up + (int64_t)r * ld_in;    // (n)
        mpk_bf16 *o = out + (int64_t)r * ld_out;        // (n)
        for (int32_t j = 0; j < n; j++) o[j] = mpk_f32_to_bf16(mpk_cpu_silu_mul_elem(g[j], u[j]));
    }
}

// ---- fused with the down projection ----------------------------------------------------------

typedef struct silu_rows {
    const mpk_bf16 *in;  // (rows, ld_in): gate in columns [0, I), up in [I, 2I)
    int32_t ld_in, I;
} silu_rows;

static void silu_load(void *ctx, int32_t r, int32_t k0, int32_t len, float *dst) {
    const silu_rows *p = ctx;
    const mpk_bf16 *g = p->in + (int64_t)r * p->ld_in + k0;
    const mpk_bf16 *u = g + p->I;
    for (int32_t k = 0; k < len; k++) dst[k] = mpk_cpu_silu_mul_elem(g[k], u[k]);
}

void mpk_silu_mul_linear_residual_cpu(const mpk_bf16 *in, const mpk_bf16 *w, const mpk_bf16 *res,
                                      mpk_bf16 *out, int32_t rows, int32_t I, int32_t n,
                                      int32_t ld_in, int32_t ld_w, int32_t ld_res,
                                      int32_t ld_out) {
    silu_rows p = {in, ld_in, I};
    mpk_cpu_rows src = {NULL, silu_load, &p};
    mpk_cpu_matvec(&src, w, res, out, rows, I, n, ld_w, ld_res, ld_out);
}
