// absent.c — PLACEHOLDER until the CUDA backend (src/runtime/cuda/backend.c) lands: no CUDA
// backend, so AUTO resolves to the CPU. Delete this file when backend.c defines these symbols.
#include "core/internal.h"

const mpk_backend_ops *mpk_cuda_backend(void) { return NULL; }
int mpk_cuda_available(const mpk_kernel *kernel) { (void)kernel; return 0; }
