// sampling.c — SAMPLING on the CPU (the oracle): temperature / top-k / top-p sampling of the last
// row of each sampled entry, with a counter-based random number so that a (seed, position) pair
// always draws the same token. The CUDA task implements the same steps in the same order:
//
//   1. temperature <= 0: greedy, the lowest index of the largest logit (NaN never wins; an
//      all-NaN row gives 0). Also the answer when scratch memory cannot be had (malloc fails).
//      When the largest z of step 2 is not finite (+inf, or every logit -inf) the answer is the
//      first token in the order of step 3.
//   2. z_j = logit_j / temperature in fp32 for every non-NaN logit (NaN logits are dropped).
//   3. Order by z descending, ties by lower index; keep the first k, k = top_k, or all when
//      top_k <= 0 or top_k >= the number of candidates.
//   4. Softmax over the kept: e_i = expf(z_i - z_0), s = sum of e_i added in that order,
//      p_i = e_i / s. The order stays descending in p; runs of equal p are re-sorted by index.
//   5. top_p: keep the smallest prefix whose running sum c_i = p_0 + ... + p_i (fp32, in order)
//      reaches c_i >= top_p, at least one token; top_p >= 1 keeps all k.
//   6. u = mpk_sample_uniform(seed, row_pos[row]) in [0, 1); S = c of the last kept token;
//      the answer is the first kept i with u * S < c_i (the renormalised walk), else the last
//      kept (u * S can round up to S).
// Cost O(V log V) per sampled row (a sort of V candidates), scratch 8 bytes per vocab entry.
#include <stdlib.h>

#include "kernels.h"

typedef struct candidate {
    float v;     // the scaled logit, then the probability
    int32_t id;  // the token
} candidate;

static int by_value_desc(const void *a, const void *b) {
    const candidate *x = a, *y = b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static int by_id(const void *a, const void *b) {
    const candidate *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

static int32_t greedy(const mpk_bf16 *logits, int32_t V) {
    float best = -INFINITY;
    int32_t best_j = -1;
    for (int32_t j = 0; j < V; j++) {
        float v = mpk_bf16_to_f32(logits[j]);
        if (v > best || (best_j < 0 && v == best)) {
            best = v;
            best_j = j;
        }
    }
    return best_j < 0 ? 0 : best_j;
}

// Steps 2-6 above for one row; c is scratch of V candidates.
static int32_t sample_row(const mpk_bf16 *logits, int32_t V, const mpk_request_state *req,
                          int32_t pos, candidate *c) {
    int32_t n = 0;
    for (int32_t j = 0; j < V; j++) {
        float v = mpk_bf16_to_f32(logits[j]);
        if (v != v) continue;
        c[n].v = v / req->temperature;
        c[n].id = j;
        n++;
    }
    if (n == 0) return 0;
    qsort(c, (size_t)n, sizeof *c, by_value_desc);
    if (!isfinite(c[0].v)) return c[0].id;
    int32_t k = req->top_k <= 0 || req->top_k >= n ? n : req->top_k;

    float zmax = c[0].v, sum = 0.0f;
    for (int32_t i = 0; i < k; i++) {
        c[i].v = expf(c[i].v - zmax);
        sum += c[i].v;
    }
    for (int32_t i = 0; i < k; i++) c[i].v /= sum;
    for (int32_t i = 0; i < k;) {
        int32_t j = i + 1;
        while (j < k && c[j].v == c[i].v) j++;
        if (j - i > 1) qsort(c + i, (size_t)(j - i), sizeof *c, by_id);
        i = j;
    }

    int32_t kept = k;
    float total = 0.0f;
    if (req->top_p < 1.0f) {
        kept = 0;
        while (kept < k) {
            total += c[kept++].v;
            if (total >= req->top_p) break;
        }
    } else {
        for (int32_t i = 0; i < k; i++) total += c[i].v;
    }

    float target = mpk_sample_uniform(req->seed, pos) * total;
    float run = 0.0f;
    for (int32_t i = 0; i < kept; i++) {
        run += c[i].v;
        if (target < run) return c[i].id;
    }
    return c[kept - 1].id;
}

void mpk_sampling_cpu(const mpk_bf16 *logits, int32_t *out, const mpk_batch *batch,
                      int32_t row_begin, int32_t row_end, int32_t V, int32_t ld_logits) {
    const int32_t *row_entry = MPK_BATCH_CARRAY(batch, off_row_entry, int32_t);
    const int32_t *row_pos = MPK_BATCH_CARRAY(batch, off_row_pos, int32_t);
    const int32_t *entry_slot = MPK_BATCH_CARRAY(batch, off_entry_slot, int32_t);
    const int32_t *entry_row_begin = MPK_BATCH_CARRAY(batch, off_entry_row_begin, int32_t);
    const int32_t *entry_sample = MPK_BATCH_CARRAY(batch, off_entry_sample, int32_t);
    const mpk_request_state *req = MPK_BATCH_CARRAY(batch, off_requests, mpk_request_state);
    if (row_begin < 0) row_begin = 0;
    if (row_end > batch->num_tokens) row_end = batch->num_tokens;
    if (V <= 0) return;
    candidate *scratch = NULL;
    int scratch_failed = 0;
    for (int32_t r = row_begin; r < row_end; r++) {
        int32_t e = row_entry[r];
        if (!entry_sample[e] || entry_row_begin[e + 1] - 1 != r) continue;
        const mpk_request_state *rq = &req[entry_slot[e]];
        const mpk_bf16 *l = logits + (int64_t)r * ld_logits;  // (V)
        if (!(rq->temperature > 0.0f)) {
            out[r] = greedy(l, V);
            continue;
        }
        if (!scratch && !scratch_failed) {
            scratch = malloc(sizeof *scratch * (size_t)V);
            scratch_failed = scratch == NULL;
        }
        out[r] = scratch ? sample_row(l, V, rq, row_pos[r], scratch) : greedy(l, V);
    }
    free(scratch);
}
