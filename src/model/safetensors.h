// safetensors.h — reading Hugging Face .safetensors files: an 8-byte little-endian header length,
// a JSON header {name: {dtype, shape, data_offsets}}, then the tensor bytes. Files are mapped
// read-only; every offset and shape is validated before anything points into the data.
#ifndef MPK_MODEL_SAFETENSORS_H
#define MPK_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "mpk.h"

#define MPK_ST_MAX_DIMS 8
// The reference implementation refuses headers above 100 MB; so do we.
#define MPK_ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

typedef struct mpk_st_tensor {
    char *name;
    mpk_dtype dtype;                   // BF16, F16 or F32
    int32_t ndim;
    int64_t shape[MPK_ST_MAX_DIMS];
    int64_t numel;
    const void *data;                  // into the file's bytes; may be unaligned
    size_t bytes;
} mpk_st_tensor;

typedef struct mpk_st_file {
    char *label;                       // the name used in error messages (file name)
    const uint8_t *bytes;              // the whole file (mapped, or the caller's buffer)
    size_t size;
    int mapped;                        // 1: bytes is an mmap that mpk_st_close unmaps
    mpk_st_tensor *tensors;            // sorted by name
    int32_t num_tensors;
} mpk_st_file;

// Parses a safetensors image in memory (the caller keeps `bytes` alive while the file is used).
// `label` names the file in errors ("model.safetensors: ..."). On failure *out is NULL.
mpk_status mpk_st_parse(const uint8_t *bytes, size_t size, const char *label, mpk_st_file **out,
                        char *err, size_t err_len);

// Maps and parses a file. label as above (NULL = the path).
mpk_status mpk_st_open(const char *path, const char *label, mpk_st_file **out, char *err,
                       size_t err_len);

// Frees the file and unmaps it. NULL is a no-op.
void mpk_st_close(mpk_st_file *file);

// The tensor of that name, or NULL.
const mpk_st_tensor *mpk_st_find(const mpk_st_file *file, const char *name);

// Copies elements [first, first + count) of a tensor into dst as bf16 (round to nearest even from
// F32; exact from F16 normals and subnormals). The range must lie inside the tensor.
void mpk_st_copy_bf16(const mpk_st_tensor *t, int64_t first, int64_t count, uint16_t *dst);

// float to bf16, round to nearest even, NaN stays NaN (the same rule as the task kernels).
static inline uint16_t mpk_st_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float mpk_st_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

// printf into err (if err and err_len > 0). Shared by the model loader's files.
void mpk_model_seterr(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif  // MPK_MODEL_SAFETENSORS_H
