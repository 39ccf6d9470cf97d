// argmax.c — ARGMAX_PARTIAL and ARGMAX_REDUCE on the CPU (the oracle): greedy decoding as a
// two-level reduction over vocabulary chunks. NaN never wins; ties go to the lowest token id.
#include "kernels.h"

void mpk_argmax_partial_cpu(const mpk_bf16 *logits, float *part_val, int32_t *part_idx,
                            int32_t rows, int32_t n, int32_t ld_logits, int32_t ld_part,
                            int32_t first_id) {
    for (int32_t r = 0; r < rows; r++) {
        const mpk_bf16 *l = logits + (int64_t)r * ld_logits;  // (n)
        float best = -INFINITY;
        int32_t best_j = -1;  // -1 until a non-NaN value is seen (the first -inf counts)
        for (int32_t j = 0; j < n; j++) {
            float v = mpk_bf16_to_f32(l[j]);
            if (v > best || (best_j < 0 && v == best)) {
                best = v;
                best_j = j;
            }
        }
        part_val[(int64_t)r * ld_part] = best;
        part_idx[(int64_t)r * ld_part] = first_id + (best_j < 0 ? 0 : best_j);
    }
}

void mpk_argmax_reduce_cpu(const float *part_val, const int32_t *part_idx, int32_t *out,
                           int32_t rows, int32_t P, int32_t ld_part) {
    for (int32_t r = 0; r < rows; r++) {
        const float *v = part_val + (int64_t)r * ld_part;   // (P)
        const int32_t *id = part_idx + (int64_t)r * ld_part;  // (P)
        float best = -INFINITY;
        int32_t best_id = -1;
        for (int32_t p = 0; p < P; p++) {
            if (v[p] > best || (v[p] == best && (best_id < 0 || id[p] < best_id))) {
                best = v[p];
                best_id = id[p];
            }
        }
        // Only all-NaN partials (which argmax_partial never produces) leave this unset.
        if (best_id < 0) best_id = P > 0 ? id[0] : 0;
        out[r] = best_id;
    }
}
