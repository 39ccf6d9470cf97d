// request.h — helpers the backends share to stream generated tokens to the caller of mpk_run.
#ifndef MPK_CORE_REQUEST_H
#define MPK_CORE_REQUEST_H

#include "mpk.h"
#include "runtime/batch.h"

// reported[s] (max_requests entries) = tokens of slot s already handed out, -1 when done.
void mpk_stream_begin(const mpk_batch *b, int32_t *reported);
// Hands out every token appended since the last call; marks finished requests.
void mpk_stream_tokens(const mpk_batch *b, const int32_t *tokens, int32_t *reported,
                       mpk_token_fn on_tokens, void *user);

#endif
