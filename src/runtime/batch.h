// batch.h — the request/batch state and prepare_next_batch, shared by the CPU runtime and the
// CUDA megakernel (one thread of a scheduler runs it on the device), so both backends schedule
// identically. The state is one contiguous blob (header + arrays at byte offsets) that can be
// copied between host and device as is.
#ifndef MPK_RUNTIME_BATCH_H
#define MPK_RUNTIME_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "../kernels/task.h"

#define MPK_BATCH_MAX_EOS 8

#if defined(__CUDA_ARCH__)
#define MPK_BATCH_PUBLISH_FENCE() __threadfence_system()
#else
#define MPK_BATCH_PUBLISH_FENCE() ((void)0)  // the CPU runtime streams from the same thread
#endif

enum {
    MPK_BATCH_RUNNING = 0,    // a batch is ready: run the graph
    MPK_BATCH_DONE = 1,       // every request finished: terminate
    MPK_BATCH_NO_PAGES = -1,  // requests remain but none can get a KV page: the cache is too small
};

enum {
    MPK_REQ_EMPTY = 0,
    MPK_REQ_ACTIVE = 1,
    MPK_REQ_FINISHED = 2,
};

// Per slot. length = tokens in the slot's row of `tokens` (prompt + generated);
// processed = positions whose K/V are in the cache. A request feeds tokens [processed, length)
// to the graph; when it has caught up (processed == length after an iteration) the token sampled
// from its last row is appended.
typedef struct mpk_request_state {
    int32_t state;
    int32_t prompt_len;
    int32_t length;
    int32_t processed;
    int32_t max_length;      // prompt_len + max_new_tokens
    int32_t num_pages;
    int32_t top_k;
    float temperature;
    float top_p;
    int32_t reserved;
    uint64_t seed;
} mpk_request_state;

typedef struct mpk_batch {
    // capacities, fixed at creation
    int32_t max_tokens;             // rows per iteration (max_batched_tokens)
    int32_t max_requests;
    int32_t max_seq_len;
    int32_t page_size;
    int32_t num_pages;
    int32_t max_pages_per_request;
    int32_t num_eos;
    int32_t eos[MPK_BATCH_MAX_EOS];
    // the iteration prepared last
    int32_t iteration;              // 1-based; 0 before the first prepare
    int32_t num_tokens;             // rows this iteration
    int32_t num_entries;            // requests in this iteration
    int32_t status;                 // MPK_BATCH_*
    int32_t num_free_pages;
    int32_t iter_prompt_tokens;     // prompt rows in this iteration
    int32_t decode_generated;       // tokens sampled by iterations without prompt rows (this run)
    int32_t decode_rows;            // rows [0, decode_rows) of this iteration are decode rows
    // totals over the run
    int64_t total_prompt_tokens;
    int64_t total_generated;
    int64_t prefill_iterations;
    // byte offsets of the arrays from the start of the blob
    uint32_t off_row_entry;        // (max_tokens) i32: entry of each row
    uint32_t off_row_pos;          // (max_tokens) i32: position of each row's token
    uint32_t off_entry_slot;       // (max_requests) i32: request slot of each entry
    uint32_t off_entry_row_begin;  // (max_requests + 1) i32: rows of entry e are [b[e], b[e+1])
    uint32_t off_entry_kv_len;     // (max_requests) i32: cache length once this chunk is appended
    uint32_t off_entry_sample;     // (max_requests) i32: 1 if the entry's last row is sampled
    uint32_t off_page_table;       // (max_requests, max_pages_per_request) i32, by slot
    uint32_t off_free_pages;       // (num_pages) i32: stack of free pages
    uint32_t off_requests;         // (max_requests) mpk_request_state, by slot
    uint32_t total_bytes;
} mpk_batch;

#define MPK_BATCH_ARRAY(b, off, T) ((T *)((char *)(b) + (b)->off))
#define MPK_BATCH_CARRAY(b, off, T) ((const T *)((const char *)(b) + (b)->off))

static inline MPK_HD int32_t *mpk_batch_row_entry(mpk_batch *b) { return MPK_BATCH_ARRAY(b, off_row_entry, int32_t); }
static inline MPK_HD int32_t *mpk_batch_row_pos(mpk_batch *b) { return MPK_BATCH_ARRAY(b, off_row_pos, int32_t); }
static inline MPK_HD int32_t *mpk_batch_entry_slot(mpk_batch *b) { return MPK_BATCH_ARRAY(b, off_entry_slot, int32_t); }
static inline MPK_HD int32_t *mpk_batch_entry_row_begin(mpk_batch *b) { return MPK_BATCH_ARRAY(b, off_entry_row_begin, int32_t); }
static inline MPK_HD int32_t *mpk_batch_entry_kv_len(mpk_batch *b) { return MPK_BATCH_ARRAY(b, off_entry_kv_len, int32_t); }
static inline MPK_HD int32_t *mpk_batch_entry_sample(mpk_batch *b) { return MPK_BATCH_ARRAY(b, off_entry_sample, int32_t); }
static inline MPK_HD int32_t *mpk_batch_page_table(mpk_batch *b) { return MPK_BATCH_ARRAY(b, off_page_table, int32_t); }
static inline MPK_HD int32_t *mpk_batch_free_pages(mpk_batch *b) { return MPK_BATCH_ARRAY(b, off_free_pages, int32_t); }
static inline MPK_HD mpk_request_state *mpk_batch_requests(mpk_batch *b) { return MPK_BATCH_ARRAY(b, off_requests, mpk_request_state); }

static inline MPK_HD uint32_t mpk_batch_align8(uint32_t x) { return (x + 7u) & ~7u; }

// The rows whose tokens this iteration samples (the last row of each entry that samples: every
// decode row, a prompt's last row) are the only ones the LM head and argmax compute
// (mpk_rmsnorm_linear_sampled_layer). This walks them in runs of consecutive rows: the next run in
// [*lo, hi), its first row into *start and its length returned (0 when none is left); *lo moves
// past it. The decode rows make one run, a prompt's last row a run of its own.
static inline MPK_HD int32_t mpk_batch_next_sampled_run(const mpk_batch *b, int32_t *lo, int32_t hi,
                                                        int32_t *start) {
    const int32_t *rb = MPK_BATCH_CARRAY(b, off_entry_row_begin, int32_t);
    const int32_t *smp = MPK_BATCH_CARRAY(b, off_entry_sample, int32_t);
    int32_t first = -1, n = 0;
    for (int32_t e = 0; e < b->num_entries; e++) {  // (entries are in row order)
        const int32_t r = rb[e + 1] - 1;
        if (!smp[e] || r < *lo || r >= hi) continue;
        if (first < 0) first = r;
        else if (r != first + n) break;
        n++;
    }
    *start = first;
    *lo = n > 0 ? first + n : hi;
    return n;
}

// Fills the header's capacities and offsets. Returns the blob size in bytes, or 0 when the
// capacities are impossible. With b == NULL it only computes the size.
static inline MPK_HD uint32_t mpk_batch_layout(mpk_batch *b, int32_t max_tokens, int32_t max_requests,
                                               int32_t max_seq_len, int32_t page_size,
                                               int32_t num_pages) {
    if (max_tokens <= 0 || max_requests <= 0 || max_seq_len <= 0 || page_size <= 0 ||
        num_pages <= 0)
        return 0;
    int32_t max_pages_per_request = (max_seq_len + page_size - 1) / page_size;
    uint64_t off = mpk_batch_align8((uint32_t)sizeof(mpk_batch));
    uint64_t o_row_entry = off;   off = mpk_batch_align8((uint32_t)(off + 4ull * max_tokens));
    uint64_t o_row_pos = off;     off = mpk_batch_align8((uint32_t)(off + 4ull * max_tokens));
    uint64_t o_slot = off;        off = mpk_batch_align8((uint32_t)(off + 4ull * max_requests));
    uint64_t o_rb = off;          off = mpk_batch_align8((uint32_t)(off + 4ull * (max_requests + 1)));
    uint64_t o_kv = off;          off = mpk_batch_align8((uint32_t)(off + 4ull * max_requests));
    uint64_t o_sample = off;      off = mpk_batch_align8((uint32_t)(off + 4ull * max_requests));
    uint64_t o_pt = off;          off = mpk_batch_align8((uint32_t)(off + 4ull * max_requests * max_pages_per_request));
    uint64_t o_free = off;        off = mpk_batch_align8((uint32_t)(off + 4ull * num_pages));
    uint64_t o_req = off;         off = off + sizeof(mpk_request_state) * (uint64_t)max_requests;
    if (off > 0x7fffffffull) return 0;
    if (b) {
        b->max_tokens = max_tokens;
        b->max_requests = max_requests;
        b->max_seq_len = max_seq_len;
        b->page_size = page_size;
        b->num_pages = num_pages;
        b->max_pages_per_request = max_pages_per_request;
        b->off_row_entry = (uint32_t)o_row_entry;
        b->off_row_pos = (uint32_t)o_row_pos;
        b->off_entry_slot = (uint32_t)o_slot;
        b->off_entry_row_begin = (uint32_t)o_rb;
        b->off_entry_kv_len = (uint32_t)o_kv;
        b->off_entry_sample = (uint32_t)o_sample;
        b->off_page_table = (uint32_t)o_pt;
        b->off_free_pages = (uint32_t)o_free;
        b->off_requests = (uint32_t)o_req;
        b->total_bytes = (uint32_t)off;
    }
    return (uint32_t)off;
}

// Empties every slot and the KV cache; keeps capacities and EOS tokens.
static inline MPK_HD void mpk_batch_reset(mpk_batch *b) {
    b->iteration = 0;
    b->num_tokens = 0;
    b->num_entries = 0;
    b->status = MPK_BATCH_RUNNING;
    b->iter_prompt_tokens = 0;
    b->total_prompt_tokens = 0;
    b->total_generated = 0;
    b->decode_generated = 0;
    b->decode_rows = 0;
    b->prefill_iterations = 0;
    int32_t *free_pages = mpk_batch_free_pages(b);
    for (int32_t i = 0; i < b->num_pages; i++) free_pages[i] = b->num_pages - 1 - i;
    b->num_free_pages = b->num_pages;
    mpk_request_state *req = mpk_batch_requests(b);
    for (int32_t s = 0; s < b->max_requests; s++) {
        mpk_request_state z = {0};
        req[s] = z;
    }
    mpk_batch_entry_row_begin(b)[0] = 0;
}

static inline MPK_HD int mpk_batch_is_eos(const mpk_batch *b, int32_t token) {
    for (int32_t i = 0; i < b->num_eos; i++)
        if (b->eos[i] == token) return 1;
    return 0;
}

static inline MPK_HD void mpk_batch_release_pages(mpk_batch *b, int32_t slot) {
    mpk_request_state *r = &mpk_batch_requests(b)[slot];
    int32_t *pt = mpk_batch_page_table(b) + (int64_t)slot * b->max_pages_per_request;
    int32_t *free_pages = mpk_batch_free_pages(b);
    for (int32_t i = r->num_pages - 1; i >= 0; i--) free_pages[b->num_free_pages++] = pt[i];
    r->num_pages = 0;
}

// Gives a slot pages for positions [0, upto) as far as free pages allow; returns how many
// positions are covered.
static inline MPK_HD int32_t mpk_batch_reserve(mpk_batch *b, int32_t slot, int32_t upto) {
    mpk_request_state *r = &mpk_batch_requests(b)[slot];
    int32_t *pt = mpk_batch_page_table(b) + (int64_t)slot * b->max_pages_per_request;
    int32_t *free_pages = mpk_batch_free_pages(b);
    int32_t need = (upto + b->page_size - 1) / b->page_size;
    if (need > b->max_pages_per_request) need = b->max_pages_per_request;
    while (r->num_pages < need && b->num_free_pages > 0)
        pt[r->num_pages++] = free_pages[--b->num_free_pages];
    int32_t covered = r->num_pages * b->page_size;
    return covered < upto ? covered : upto;
}

// Adds `chunk` rows of slot s (tokens [processed, processed + chunk)) to the batch.
static inline MPK_HD void mpk_batch_add_entry(mpk_batch *b, const int32_t *tokens,
                                              int32_t *input_ids, int32_t s, int32_t chunk) {
    mpk_request_state *r = &mpk_batch_requests(b)[s];
    int32_t e = b->num_entries++;
    int32_t row0 = b->num_tokens;
    const int32_t *row_tokens = tokens + (int64_t)s * b->max_seq_len;
    for (int32_t j = 0; j < chunk; j++) {
        mpk_batch_row_entry(b)[row0 + j] = e;
        mpk_batch_row_pos(b)[row0 + j] = r->processed + j;
        input_ids[row0 + j] = row_tokens[r->processed + j];
    }
    int32_t prompt_rows = r->prompt_len - r->processed;
    if (prompt_rows > chunk) prompt_rows = chunk;
    if (prompt_rows > 0) b->iter_prompt_tokens += prompt_rows;
    r->processed += chunk;
    b->num_tokens += chunk;
    mpk_batch_entry_slot(b)[e] = s;
    mpk_batch_entry_kv_len(b)[e] = r->processed;
    mpk_batch_entry_sample(b)[e] = r->processed == r->length;
    mpk_batch_entry_row_begin(b)[e + 1] = b->num_tokens;
}

// prepare_next_batch: consumes the tokens sampled by the iteration that just ran (none before
// the first), retires requests that hit EOS, their budget or max_seq_len, then chooses the next
// iteration's rows: one row for every request that is decoding first, then prompt chunks while
// rows remain (chunked prefill), each limited by the free KV pages. Writes input_ids for the
// rows, the new tokens into `tokens` (max_requests, max_seq_len) and lengths into `step`.
// Returns b->status.
static inline MPK_HD int32_t mpk_batch_prepare(mpk_batch *b, int32_t *tokens, int32_t *step,
                                               const int32_t *output_ids, int32_t *input_ids) {
    mpk_request_state *req = mpk_batch_requests(b);
    if (b->iteration > 0) {
        for (int32_t e = 0; e < b->num_entries; e++) {
            if (!mpk_batch_entry_sample(b)[e]) continue;
            int32_t s = mpk_batch_entry_slot(b)[e];
            mpk_request_state *r = &req[s];
            int32_t token = output_ids[mpk_batch_entry_row_begin(b)[e + 1] - 1];
            tokens[(int64_t)s * b->max_seq_len + r->length] = token;
            // The host may copy tokens and step while the megakernel runs (streaming): the
            // token must be visible before the step that counts it.
            MPK_BATCH_PUBLISH_FENCE();
            r->length++;
            step[s] = r->length;
            b->total_generated++;
            if (b->iter_prompt_tokens == 0) b->decode_generated++;  // (still the finished iteration's)
            if (mpk_batch_is_eos(b, token) || r->length >= r->max_length ||
                r->length >= b->max_seq_len) {
                r->state = MPK_REQ_FINISHED;
                mpk_batch_release_pages(b, s);
            }
        }
    }
    b->num_tokens = 0;
    b->num_entries = 0;
    b->iter_prompt_tokens = 0;
    mpk_batch_entry_row_begin(b)[0] = 0;
    int32_t active = 0;
    // Decoding requests first: one row each, so prefill never starves generation. A decode row
    // is a generated token's (position >= prompt_len); a prompt's rows, even its last one alone,
    // are prompt chunks. So rows [0, decode_rows) are the decode rows whatever else the batch
    // holds, and the GPU multiplies each kind its own way (linear.cuh: a row's values do not
    // depend on the other requests in its iteration).
    for (int32_t s = 0; s < b->max_requests; s++) {
        mpk_request_state *r = &req[s];
        if (r->state != MPK_REQ_ACTIVE) continue;
        active++;
        if (r->length - r->processed != 1 || r->processed < r->prompt_len || b->num_tokens >= b->max_tokens)
            continue;
        if (mpk_batch_reserve(b, s, r->processed + 1) < r->processed + 1) continue;
        mpk_batch_add_entry(b, tokens, input_ids, s, 1);
    }
    b->decode_rows = b->num_tokens;
    // Then prompt chunks in slot order.
    for (int32_t s = 0; s < b->max_requests && b->num_tokens < b->max_tokens; s++) {
        mpk_request_state *r = &req[s];
        if (r->state != MPK_REQ_ACTIVE || r->length - r->processed < 1 ||
            (r->length - r->processed == 1 && r->processed >= r->prompt_len))
            continue;
        int32_t chunk = r->length - r->processed;
        if (chunk > b->max_tokens - b->num_tokens) chunk = b->max_tokens - b->num_tokens;
        int32_t covered = mpk_batch_reserve(b, s, r->processed + chunk);
        chunk = covered - r->processed;
        if (chunk <= 0) continue;
        mpk_batch_add_entry(b, tokens, input_ids, s, chunk);
    }
    b->iteration++;
    b->total_prompt_tokens += b->iter_prompt_tokens;
    if (b->iter_prompt_tokens > 0) b->prefill_iterations++;
    if (b->num_entries > 0)
        b->status = MPK_BATCH_RUNNING;
    else
        b->status = active > 0 ? MPK_BATCH_NO_PAGES : MPK_BATCH_DONE;
    return b->status;
}

// The random number in [0, 1) that sampling draws for (seed, position); shared with CUDA.
static inline MPK_HD float mpk_sample_uniform(uint64_t seed, int32_t position) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * (uint64_t)(uint32_t)(position + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z = z ^ (z >> 31);
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

#endif  // MPK_RUNTIME_BATCH_H
