// sampling.cuh — SAMPLING on the GPU: the steps of src/kernels/cpu/sampling.c in the same order
// (greedy at temperature <= 0; scaled logits sorted descending with ties by id; top-k; softmax
// summed in that order; equal probabilities re-sorted by id; top-p prefix; the renormalised walk
// with mpk_sample_uniform(seed, position)). The sort is a bitonic sort of 64-bit keys
// (descending value, then id) in a per-task global scratch of next_pow2(V) keys; the order-bound
// sums run in one thread, as on the CPU, so the arithmetic matches. expf may differ from the
// host's in the last bit, so a draw within an ulp of a boundary can pick the neighbour.
// Slow for top_k = 0 over a large vocabulary (a few ms per sampled row): correct first.
#ifndef MPK_KERNELS_CUDA_SAMPLING_CUH
#define MPK_KERNELS_CUDA_SAMPLING_CUH

#include "common.cuh"

// Keys sort ascending; the high word orders floats descending, the low word is the token id.
MPK_DEV uint64_t mpk_sample_key(float v, int32_t id) {
    uint32_t u = __float_as_uint(v);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // ascending unsigned order of floats
    return ((uint64_t)(~u) << 32) | (uint32_t)id;
}

MPK_DEV float mpk_sample_key_value(uint64_t key) {
    uint32_t u = ~(uint32_t)(key >> 32);
    u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
    return __uint_as_float(u);
}

MPK_DEV int32_t mpk_sample_key_id(uint64_t key) { return (int32_t)(uint32_t)key; }

MPK_DEV void mpk_bitonic_sort(uint64_t *a, int32_t n) {  // n a power of two; block-wide
    for (int32_t k = 2; k <= n; k <<= 1) {
        for (int32_t j = k >> 1; j > 0; j >>= 1) {
            for (int32_t i = threadIdx.x; i < n; i += MPK_DEV_THREADS) {
                const int32_t ij = i ^ j;
                if (ij > i) {
                    const uint64_t x = a[i], y = a[ij];
                    const bool up = (i & k) == 0;
                    if ((x > y) == up) { a[i] = y; a[ij] = x; }
                }
            }
            mpk_sync();
        }
    }
}

MPK_DEV int32_t mpk_sample_pow2(int32_t v) {
    int32_t n = 1;
    while (n < v) n <<= 1;
    return n;
}

// Greedy: the lowest index of the largest logit; all-NaN gives 0.
MPK_DEV int32_t mpk_sample_greedy(const mpk_bf16 *l, int32_t V) {
    mpk_argmax_pair best = {-INFINITY, INT32_MAX};
    for (int32_t j = threadIdx.x; j < V; j += MPK_DEV_THREADS) {
        const float v = mpk_bf2f(l[j]);
        if (v == v && mpk_argmax_better(v, j, best.val, best.idx)) { best.val = v; best.idx = j; }
    }
    best = mpk_block_argmax(best, mpk_smem()->pairs);
    return best.idx == INT32_MAX ? 0 : best.idx;
}

// Steps 2-6 of sampling.c for one row; every thread returns the token.
MPK_DEV int32_t mpk_sample_row(const mpk_bf16 *l, int32_t V, const mpk_request_state *req,
                               int32_t pos, uint64_t *keys) {
    __shared__ int32_t s_n, s_answer, s_unsorted;
    __shared__ float s_sum;
    const int32_t N = mpk_sample_pow2(V);
    const float temp = req->temperature;
    if (threadIdx.x == 0) { s_n = 0; s_unsorted = 0; }
    mpk_sync();
    for (int32_t j = threadIdx.x; j < N; j += MPK_DEV_THREADS) {
        const float v = j < V ? mpk_bf2f(l[j]) : 0.0f;
        if (j < V && v == v) {
            keys[j] = mpk_sample_key(v / temp, j);
            atomicAdd(&s_n, 1);
        } else {
            keys[j] = ~0ull;  // NaN logits and padding sort last and are never kept
        }
    }
    mpk_sync();
    const int32_t n = s_n;
    if (n == 0) return 0;
    mpk_bitonic_sort(keys, N);
    const float zmax = mpk_sample_key_value(keys[0]);
    if (!isfinite(zmax)) return mpk_sample_key_id(keys[0]);
    const int32_t k = req->top_k <= 0 || req->top_k >= n ? n : req->top_k;

    // e_i = expf(z_i - zmax) in parallel, stored as keys of (e, id); their sum in order.
    for (int32_t i = threadIdx.x; i < k; i += MPK_DEV_THREADS)
        keys[i] = mpk_sample_key(expf(mpk_sample_key_value(keys[i]) - zmax), mpk_sample_key_id(keys[i]));
    mpk_sync();
    if (threadIdx.x == 0) {
        float sum = 0.0f;
        for (int32_t i = 0; i < k; i++) sum += mpk_sample_key_value(keys[i]);
        s_sum = sum;
    }
    mpk_sync();
    const float sum = s_sum;
    for (int32_t i = threadIdx.x; i < N; i += MPK_DEV_THREADS)
        keys[i] = i < k ? mpk_sample_key(mpk_sample_key_value(keys[i]) / sum, mpk_sample_key_id(keys[i])) : ~0ull;
    mpk_sync();
    // Runs of equal probability must be in id order; re-sort only when one is not.
    for (int32_t i = threadIdx.x; i + 1 < k; i += MPK_DEV_THREADS)
        if ((keys[i] >> 32) == (keys[i + 1] >> 32) && keys[i] > keys[i + 1]) s_unsorted = 1;
    mpk_sync();
    if (s_unsorted) mpk_bitonic_sort(keys, N);

    if (threadIdx.x == 0) {
        int32_t kept = k;
        float total = 0.0f;
        if (req->top_p < 1.0f) {
            kept = 0;
            while (kept < k) {
                total += mpk_sample_key_value(keys[kept++]);
                if (total >= req->top_p) break;
            }
        } else {
            for (int32_t i = 0; i < k; i++) total += mpk_sample_key_value(keys[i]);
        }
        const float target = mpk_sample_uniform(req->seed, pos) * total;
        float run = 0.0f;
        int32_t answer = mpk_sample_key_id(keys[kept - 1]);
        for (int32_t i = 0; i < kept; i++) {
            run += mpk_sample_key_value(keys[i]);
            if (target < run) { answer = mpk_sample_key_id(keys[i]); break; }
        }
        s_answer = answer;
    }
    mpk_sync();
    return s_answer;
}

// keys: this task's scratch of next_pow2(V) 64-bit keys (global memory).
// Not inlined: keeps its registers out of the GEMV variants' allocation (spills).
static __device__ __noinline__ void mpk_sampling_cuda(const mpk_bf16 *logits, int32_t *out, const mpk_batch *b,
                               int32_t row_begin, int32_t row_end, int32_t V, int32_t ld_logits,
                               uint64_t *keys) {
    const int32_t *row_entry = MPK_BATCH_CARRAY(b, off_row_entry, int32_t);
    const int32_t *row_pos = MPK_BATCH_CARRAY(b, off_row_pos, int32_t);
    const int32_t *entry_slot = MPK_BATCH_CARRAY(b, off_entry_slot, int32_t);
    const int32_t *entry_row_begin = MPK_BATCH_CARRAY(b, off_entry_row_begin, int32_t);
    const int32_t *entry_sample = MPK_BATCH_CARRAY(b, off_entry_sample, int32_t);
    const mpk_request_state *req = MPK_BATCH_CARRAY(b, off_requests, mpk_request_state);
    if (row_begin < 0) row_begin = 0;
    if (row_end > b->num_tokens) row_end = b->num_tokens;
    if (V <= 0) return;
    for (int32_t r = row_begin; r < row_end; r++) {
        const int32_t e = row_entry[r];
        if (!entry_sample[e] || entry_row_begin[e + 1] - 1 != r) continue;
        const mpk_request_state *rq = &req[entry_slot[e]];
        const mpk_bf16 *l = logits + (int64_t)r * ld_logits;  // (V)
        int32_t token;
        if (!(rq->temperature > 0.0f) || !keys)
            token = mpk_sample_greedy(l, V);
        else
            token = mpk_sample_row(l, V, rq, row_pos[r], keys);
        if (threadIdx.x == 0) out[r] = token;
        mpk_sync();
    }
}

#endif  // MPK_KERNELS_CUDA_SAMPLING_CUH
