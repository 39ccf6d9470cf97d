// request.c — requests: queue prompts into the batch state before a run, stream new tokens to the
// caller while it runs, read rows back after it. The batch blob and the tokens/step meta tensors
// have host copies on every backend (the CUDA backend uploads and downloads them around a run).
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "core/request.h"

mpk_sampling_params mpk_sampling_default_params(void) {
    mpk_sampling_params s;
    memset(&s, 0, sizeof s);
    s.temperature = 0.0f;
    s.top_k = 0;
    s.top_p = 1.0f;
    s.seed = 0;
    return s;
}

static int32_t *tokens_host(mpk_kernel *k) { return (int32_t *)k->tensors[k->meta[MPK_META_TOKENS]]->host; }
static int32_t *step_host(mpk_kernel *k) { return (int32_t *)k->tensors[k->meta[MPK_META_STEP]]->host; }

mpk_status mpk_request_add(mpk_kernel *k, const int32_t *prompt, int32_t prompt_len,
                           int32_t max_new_tokens, const mpk_sampling_params *sampling,
                           int32_t *out_id) {
    if (!k) return MPK_ERR_INVALID_ARG;
    if (out_id) *out_id = -1;
    if (!k->compiled) return mpk_fail(k, MPK_ERR_STATE, "request_add: compile the kernel first");
    if (k->running) return mpk_fail(k, MPK_ERR_STATE, "request_add: the kernel is running");
    if (!prompt || prompt_len < 1) return mpk_fail(k, MPK_ERR_INVALID_ARG, "request_add: the prompt is empty");
    if (max_new_tokens < 1) return mpk_fail(k, MPK_ERR_INVALID_ARG, "request_add: max_new_tokens must be >= 1 (got %d)", max_new_tokens);
    mpk_batch *b = k->batch;
    if ((int64_t)prompt_len + max_new_tokens > b->max_seq_len)
        return mpk_fail(k, MPK_ERR_LIMIT, "request_add: prompt of %d tokens + %d new tokens exceeds max_seq_len=%d",
                        prompt_len, max_new_tokens, b->max_seq_len);
    mpk_sampling_params sp = sampling ? *sampling : mpk_sampling_default_params();
    if (!(sp.temperature >= 0) || !(sp.top_p > 0 && sp.top_p <= 1) || sp.top_k < 0)
        return mpk_fail(k, MPK_ERR_INVALID_ARG, "request_add: sampling needs temperature >= 0, 0 < top_p <= 1, top_k >= 0");
    mpk_request_state *req = mpk_batch_requests(b);
    int32_t slot = -1;
    for (int32_t s = 0; s < b->max_requests; s++)
        if (req[s].state == MPK_REQ_EMPTY) {
            slot = s;
            break;
        }
    if (slot < 0) return mpk_fail(k, MPK_ERR_LIMIT, "request_add: all %d request slots are taken (raise max_requests or call mpk_request_clear)", b->max_requests);
    // Ids past the vocabulary are the embedding's to handle (a zero row); negative ones are not ids.
    for (int32_t i = 0; i < prompt_len; i++)
        if (prompt[i] < 0)
            return mpk_fail(k, MPK_ERR_INVALID_ARG, "request_add: prompt token %d is negative (%d)", i, prompt[i]);
    int32_t *row = tokens_host(k) + (int64_t)slot * b->max_seq_len;
    memcpy(row, prompt, (size_t)prompt_len * sizeof *row);
    mpk_request_state *r = &req[slot];
    memset(r, 0, sizeof *r);
    r->state = MPK_REQ_ACTIVE;
    r->prompt_len = prompt_len;
    r->length = prompt_len;
    r->processed = 0;
    r->max_length = prompt_len + max_new_tokens;
    r->temperature = sp.temperature;
    r->top_k = sp.top_k;
    r->top_p = sp.top_p;
    r->seed = sp.seed;
    step_host(k)[slot] = prompt_len;
    if (out_id) *out_id = slot;
    return MPK_OK;
}

mpk_status mpk_request_tokens(mpk_kernel *k, int32_t request, const int32_t **tokens,
                              int32_t *prompt_len, int32_t *total_len) {
    if (!k) return MPK_ERR_INVALID_ARG;
    if (!k->compiled) return mpk_fail(k, MPK_ERR_STATE, "request_tokens: compile the kernel first");
    mpk_batch *b = k->batch;
    if (request < 0 || request >= b->max_requests || mpk_batch_requests(b)[request].state == MPK_REQ_EMPTY)
        return mpk_fail(k, MPK_ERR_NOT_FOUND, "request_tokens: no request %d", request);
    const mpk_request_state *r = &mpk_batch_requests(b)[request];
    if (tokens) *tokens = tokens_host(k) + (int64_t)request * b->max_seq_len;
    if (prompt_len) *prompt_len = r->prompt_len;
    if (total_len) *total_len = r->length;
    return MPK_OK;
}

mpk_status mpk_request_clear(mpk_kernel *k) {
    if (!k) return MPK_ERR_INVALID_ARG;
    if (k->running) return mpk_fail(k, MPK_ERR_STATE, "request_clear: the kernel is running");
    mpk_batch_reset(k->batch);
    if (k->compiled) {
        mpk_tensor *t = k->tensors[k->meta[MPK_META_STEP]];
        memset(t->host, 0, t->bytes);
    }
    return MPK_OK;
}

mpk_status mpk_run_get_stats(const mpk_kernel *k, mpk_run_stats *out) {
    if (!k || !out) return MPK_ERR_INVALID_ARG;
    *out = k->run_stats;
    return MPK_OK;
}

// ---- used by the backends ----------------------------------------------------------------------

void mpk_stream_begin(const mpk_batch *b, int32_t *reported) {
    const mpk_request_state *req = MPK_BATCH_CARRAY(b, off_requests, mpk_request_state);
    for (int32_t s = 0; s < b->max_requests; s++)
        reported[s] = req[s].state == MPK_REQ_ACTIVE ? req[s].length : -1;
}

void mpk_stream_tokens(const mpk_batch *b, const int32_t *tokens, int32_t *reported,
                       mpk_token_fn on_tokens, void *user) {
    const mpk_request_state *req = MPK_BATCH_CARRAY(b, off_requests, mpk_request_state);
    for (int32_t s = 0; s < b->max_requests; s++) {
        const mpk_request_state *r = &req[s];
        if (r->state == MPK_REQ_EMPTY || reported[s] < 0) continue;
        int finished = r->state == MPK_REQ_FINISHED;
        if (r->length <= reported[s] && !finished) continue;
        if (on_tokens)
            on_tokens(user, s, tokens + (int64_t)s * b->max_seq_len + reported[s],
                      r->length - reported[s], finished);
        reported[s] = finished ? -1 : r->length;
    }
}

mpk_status mpk_run(mpk_kernel *k, mpk_token_fn on_tokens, void *user) {
    if (!k) return MPK_ERR_INVALID_ARG;
    if (!k->compiled) return mpk_fail(k, MPK_ERR_STATE, "run: compile the kernel first");
    if (k->running) return mpk_fail(k, MPK_ERR_STATE, "run: the kernel is already running");
    int any = 0;
    const mpk_request_state *req = mpk_batch_requests(k->batch);
    for (int32_t s = 0; s < k->batch->max_requests; s++) any |= req[s].state == MPK_REQ_ACTIVE;
    if (!any) return mpk_fail(k, MPK_ERR_STATE, "run: no requests are queued (mpk_request_add)");
    memset(&k->run_stats, 0, sizeof k->run_stats);
    k->running = 1;
    mpk_status st = k->backend->run(k, on_tokens, user);
    k->running = 0;
    return st;
}
