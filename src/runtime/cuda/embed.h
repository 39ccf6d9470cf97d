// embed.h — the device headers (task.h, batch.h, the CUDA task kernels and device runtime)
// compiled into the library as strings by tools/embed.sh, so code generation needs no source tree.
#ifndef MPK_RUNTIME_CUDA_EMBED_H
#define MPK_RUNTIME_CUDA_EMBED_H

typedef struct mpk_embedded_file {
    const char *path;      // repository path, e.g. "src/kernels/task.h"
    const char *contents;  // NUL-terminated
} mpk_embedded_file;

// Terminated by an entry whose path is NULL.
extern const mpk_embedded_file mpk_embedded_files[];

#endif
