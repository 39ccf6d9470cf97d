// cuda_internal.h — what the host-side files of the CUDA backend share: code generation
// (codegen.c), the nvcc build with its cache (jit.c) and the backend itself (backend.c).
// Host C11 only; no CUDA header is needed to build any of them.
#ifndef MPK_RUNTIME_CUDA_CUDA_INTERNAL_H
#define MPK_RUNTIME_CUDA_CUDA_INTERNAL_H

#include <stddef.h>

#include "core/internal.h"

// A growable string.
typedef struct mpk_sbuf {
    char *s;
    size_t len, cap;
    int failed;  // an allocation failed; s holds what fitted
} mpk_sbuf;

void mpk_sbuf_printf(mpk_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mpk_sbuf_append(mpk_sbuf *b, const char *s, size_t n);

// The megakernel source for the compiled graph: the embedded device headers inlined, one
// specialised body per variant and the dispatch switch. *out is malloc'd (caller frees).
mpk_status mpk_cuda_codegen(mpk_kernel *kernel, char **out);

// Finds nvcc ($CUDA_HOME/bin, /usr/local/cuda/bin, then PATH) into path; 0 when none.
int mpk_cuda_find_nvcc(char *path, size_t cap);

// Builds `source` for `arch` ("sm_90a", "sm_80", ...) into a shared object in the cache (or
// finds it there) and writes its path into so_path.
mpk_status mpk_cuda_build(mpk_kernel *kernel, const char *source, const char *arch,
                          char *so_path, size_t cap);

// The weight stream's share of a task (src/kernels/cuda/stream.cuh): sets d->stream_chunks and
// d->stream_chunk_bytes (whole weight rows, at most MPK_DEV_STREAM_SLOT_BYTES a chunk) for the
// four GEMV task types whose rows are contiguous, 16-byte aligned and fit a slot; 0 chunks else.
// d->operand[] must already hold device addresses.
void mpk_cuda_plan_stream(mpk_task_desc *d, const mpk_variant *v);

#endif  // MPK_RUNTIME_CUDA_CUDA_INTERNAL_H
