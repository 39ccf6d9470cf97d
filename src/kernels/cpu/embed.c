// embed.c — EMBED on the CPU (the oracle): copies the embedding row of each token id (this task's
// column slice of it); an id outside the vocabulary gives a zero row rather than a wild read.
#include "kernels.h"

void mpk_embed_cpu(const int32_t *ids, const mpk_bf16 *weight, mpk_bf16 *out, int32_t rows,
                   int32_t cols, int32_t ld_w, int32_t ld_out, int32_t vocab) {
    for (int32_t r = 0; r < rows; r++) {
        mpk_bf16 *o = out + (int64_t)r * ld_out;  // (cols)
        int32_t id = ids[r];
        if (id < 0 || id >= vocab)
            memset(o, 0, sizeof *o * (size_t)(cols > 0 ? cols : 0));
        else
            memcpy(o, weight + (int64_t)id * ld_w, sizeof *o * (size_t)(cols > 0 ? cols : 0));
    }
}
