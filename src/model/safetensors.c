// safetensors.c — maps a .safetensors file and validates its header before anything points into
// it: the header length against the file size, every tensor's dtype, shape and data_offsets
// against the data section and against each other (no overlaps). Bad files give a sentence that
// names the file, the tensor and the problem; never an out-of-bounds read.
#include "model/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>


void mpk_model_seterr(char *err, size_t err_len, const char *fmt, ...) {
    if (!err || err_len == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

// ---- dtype helpers -----------------------------------------------------------------------------

static int dtype_from_string(const char *s, mpk_dtype *out) {
    if (strcmp(s, "BF16") == 0) *out = MPK_BF16;
    else if (strcmp(s, "F16") == 0) *out = MPK_F16;
    else if (strcmp(s, "F32") == 0) *out = MPK_F32;
    else return 0;
    return 1;
}

static uint64_t dtype_bytes(mpk_dtype d) { return d == MPK_F32 ? 4 : 2; }

// IEEE half to float, exact for normals, subnormals, infinities and NaN.
static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign;
    } else {  // subnormal: value = man * 2^-24
        float f = (float)man * 5.9604644775390625e-8f;
        memcpy(&u, &f, sizeof u);
        u |= sign;
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

void mpk_st_copy_bf16(const mpk_st_tensor *t, int64_t first, int64_t count, uint16_t *dst) {
    const uint8_t *src = (const uint8_t *)t->data;
    // memcpy per element: the data may sit at any byte offset in the file.
    if (t->dtype == MPK_BF16) {
        memcpy(dst, src + 2 * first, (size_t)count * 2);
    } else if (t->dtype == MPK_F16) {
        for (int64_t i = 0; i < count; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * (first + i), 2);
            dst[i] = mpk_st_f32_to_bf16(f16_to_f32(h));
        }
    } else {
        for (int64_t i = 0; i < count; i++) {
            float f;
            memcpy(&f, src + 4 * (first + i), 4);
            dst[i] = mpk_st_f32_to_bf16(f);
        }
    }
}

// ---- header parsing ----------------------------------------------------------------------------

// A JSON number that is a non-negative integer exactly representable in a double.
static int json_uint(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return 0;
    double d = item->valuedouble;
    if (!(d >= 0.0) || d > 9007199254740992.0 || floor(d) != d) return 0;
    *out = (uint64_t)d;
    return 1;
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp(((const mpk_st_tensor *)a)->name, ((const mpk_st_tensor *)b)->name);
}

static int cmp_by_offset(const void *a, const void *b) {
    const mpk_st_tensor *x = *(const mpk_st_tensor *const *)a;
    const mpk_st_tensor *y = *(const mpk_st_tensor *const *)b;
    if (x->data != y->data) return (const uint8_t *)x->data < (const uint8_t *)y->data ? -1 : 1;
    return x->bytes < y->bytes ? -1 : x->bytes > y->bytes;
}

// Fills t from one header entry; data_begin/data_size describe the data section.
static mpk_status parse_entry(const cJSON *entry, const char *label, const uint8_t *data_begin,
                              uint64_t data_size, mpk_st_tensor *t, char *err, size_t err_len) {
    const char *name = t->name;
    if (!cJSON_IsObject(entry)) {
        mpk_model_seterr(err, err_len, "%s: tensor '%s' is not a JSON object", label, name);
        return MPK_ERR_FORMAT;
    }
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!cJSON_IsString(dtype) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs)) {
        mpk_model_seterr(err, err_len,
                         "%s: tensor '%s' needs a string 'dtype', an array 'shape' and an array "
                         "'data_offsets'", label, name);
        return MPK_ERR_FORMAT;
    }
    if (!dtype_from_string(dtype->valuestring, &t->dtype)) {
        mpk_model_seterr(err, err_len,
                         "%s: tensor '%s' has dtype '%.32s'; supported are BF16, F16 and F32",
                         label, name, dtype->valuestring);
        return MPK_ERR_UNSUPPORTED;
    }
    int n = cJSON_GetArraySize(shape);
    if (n > MPK_ST_MAX_DIMS) {
        mpk_model_seterr(err, err_len, "%s: tensor '%s' has %d dimensions (at most %d)", label,
                         name, n, MPK_ST_MAX_DIMS);
        return MPK_ERR_UNSUPPORTED;
    }
    t->ndim = n;
    // numel stays <= data_size / esize, so the product cannot overflow.
    uint64_t esize = dtype_bytes(t->dtype);
    uint64_t limit = data_size / esize;
    uint64_t numel = 1;
    int too_big = 0;
    for (int i = 0; i < n; i++) {
        uint64_t d;
        if (!json_uint(cJSON_GetArrayItem(shape, i), &d)) {
            mpk_model_seterr(err, err_len,
                             "%s: tensor '%s' has a shape entry that is not a non-negative integer",
                             label, name);
            return MPK_ERR_FORMAT;
        }
        t->shape[i] = (int64_t)d;
        if (d != 0 && numel > limit / d) too_big = 1;
        else numel *= d;
    }
    uint64_t begin, end;
    if (cJSON_GetArraySize(offs) != 2 || !json_uint(cJSON_GetArrayItem(offs, 0), &begin) ||
        !json_uint(cJSON_GetArrayItem(offs, 1), &end)) {
        mpk_model_seterr(err, err_len,
                         "%s: tensor '%s' needs data_offsets [begin, end] of non-negative integers",
                         label, name);
        return MPK_ERR_FORMAT;
    }
    if (begin > end || end > data_size) {
        mpk_model_seterr(err, err_len,
                         "%s: tensor '%s' has data_offsets [%llu, %llu] outside the data section "
                         "of %llu bytes", label, name, (unsigned long long)begin,
                         (unsigned long long)end, (unsigned long long)data_size);
        return MPK_ERR_FORMAT;
    }
    if (too_big || numel * esize != end - begin) {
        mpk_model_seterr(err, err_len,
                         "%s: tensor '%s' has data_offsets [%llu, %llu] (%llu bytes) but its shape "
                         "and dtype need %s%llu bytes", label, name, (unsigned long long)begin,
                         (unsigned long long)end, (unsigned long long)(end - begin),
                         too_big ? "more than " : "",
                         (unsigned long long)(too_big ? data_size : numel * esize));
        return MPK_ERR_FORMAT;
    }
    t->numel = (int64_t)numel;
    t->data = data_begin + begin;
    t->bytes = (size_t)(end - begin);
    return MPK_OK;
}

static mpk_status parse_header(mpk_st_file *f, char *err, size_t err_len) {
    const char *label = f->label;
    if (f->size < 8) {
        mpk_model_seterr(err, err_len, "%s: file is %zu bytes, too short for a safetensors header",
                         label, f->size);
        return MPK_ERR_FORMAT;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | f->bytes[i];
    if (hlen > f->size - 8) {
        mpk_model_seterr(err, err_len, "%s: header length %llu exceeds file size %zu", label,
                         (unsigned long long)hlen, f->size);
        return MPK_ERR_FORMAT;
    }
    if (hlen > MPK_ST_MAX_HEADER) {
        mpk_model_seterr(err, err_len, "%s: header length %llu exceeds the limit of %llu bytes",
                         label, (unsigned long long)hlen, (unsigned long long)MPK_ST_MAX_HEADER);
        return MPK_ERR_FORMAT;
    }
    // A NUL-terminated copy: cJSON then never reads past the header.
    char *text = malloc((size_t)hlen + 1);
    if (!text) {
        mpk_model_seterr(err, err_len, "%s: out of memory for a %llu-byte header", label,
                         (unsigned long long)hlen);
        return MPK_ERR_NOMEM;
    }
    memcpy(text, f->bytes + 8, (size_t)hlen);
    text[hlen] = '\0';
    cJSON *root = cJSON_ParseWithLength(text, (size_t)hlen);
    free(text);
    if (!cJSON_IsObject(root)) {
        mpk_model_seterr(err, err_len, "%s: header is not a JSON object", label);
        cJSON_Delete(root);
        return MPK_ERR_FORMAT;
    }
    const uint8_t *data = f->bytes + 8 + hlen;
    uint64_t data_size = f->size - 8 - hlen;
    int count = 0;
    for (const cJSON *e = root->child; e; e = e->next) count++;
    f->tensors = calloc(count > 0 ? (size_t)count : 1, sizeof *f->tensors);
    if (!f->tensors) {
        cJSON_Delete(root);
        mpk_model_seterr(err, err_len, "%s: out of memory", label);
        return MPK_ERR_NOMEM;
    }
    mpk_status st = MPK_OK;
    for (const cJSON *e = root->child; e && st == MPK_OK; e = e->next) {
        if (!e->string || strcmp(e->string, "__metadata__") == 0) continue;
        mpk_st_tensor *t = &f->tensors[f->num_tensors];
        t->name = strdup(e->string);
        if (!t->name) {
            mpk_model_seterr(err, err_len, "%s: out of memory", label);
            st = MPK_ERR_NOMEM;
            break;
        }
        f->num_tensors++;
        st = parse_entry(e, label, data, data_size, t, err, err_len);
    }
    cJSON_Delete(root);
    if (st != MPK_OK) return st;

    qsort(f->tensors, (size_t)f->num_tensors, sizeof *f->tensors, cmp_by_name);
    for (int32_t i = 1; i < f->num_tensors; i++) {
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
            mpk_model_seterr(err, err_len, "%s: tensor '%s' appears twice in the header", label,
                             f->tensors[i].name);
            return MPK_ERR_FORMAT;
        }
    }
    // No two tensors may share bytes: sort by start and compare neighbours.
    if (f->num_tensors > 1) {
        const mpk_st_tensor **by = malloc((size_t)f->num_tensors * sizeof *by);
        if (!by) {
            mpk_model_seterr(err, err_len, "%s: out of memory", label);
            return MPK_ERR_NOMEM;
        }
        for (int32_t i = 0; i < f->num_tensors; i++) by[i] = &f->tensors[i];
        qsort(by, (size_t)f->num_tensors, sizeof *by, cmp_by_offset);
        for (int32_t i = 1; i < f->num_tensors; i++) {
            const mpk_st_tensor *a = by[i - 1], *b = by[i];
            if (a->bytes > 0 && b->bytes > 0 &&
                (const uint8_t *)a->data + a->bytes > (const uint8_t *)b->data) {
                mpk_model_seterr(err, err_len,
                                 "%s: tensors '%s' and '%s' overlap in the data section", label,
                                 a->name, b->name);
                st = MPK_ERR_FORMAT;
                break;
            }
        }
        free(by);
    }
    return st;
}

// ---- open / close ------------------------------------------------------------------------------

static mpk_st_file *file_new(const char *label) {
    mpk_st_file *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->label = strdup(label ? label : "(safetensors)");
    if (!f->label) {
        free(f);
        return NULL;
    }
    return f;
}

mpk_status mpk_st_parse(const uint8_t *bytes, size_t size, const char *label, mpk_st_file **out,
                        char *err, size_t err_len) {
    *out = NULL;
    mpk_st_file *f = file_new(label);
    if (!f) {
        mpk_model_seterr(err, err_len, "%s: out of memory", label ? label : "(safetensors)");
        return MPK_ERR_NOMEM;
    }
    f->bytes = bytes;
    f->size = size;
    mpk_status st = parse_header(f, err, err_len);
    if (st != MPK_OK) {
        mpk_st_close(f);
        return st;
    }
    *out = f;
    return MPK_OK;
}

mpk_status mpk_st_open(const char *path, const char *label, mpk_st_file **out, char *err,
                       size_t err_len) {
    *out = NULL;
    if (!label) label = path;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        mpk_model_seterr(err, err_len, "%s: cannot open %s: %s", label, path, strerror(errno));
        return MPK_ERR_IO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        mpk_model_seterr(err, err_len, "%s: not a regular file", label);
        close(fd);
        return MPK_ERR_IO;
    }
    size_t size = (size_t)sb.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            mpk_model_seterr(err, err_len, "%s: cannot map %zu bytes: %s", label, size,
                             strerror(errno));
            close(fd);
            return MPK_ERR_IO;
        }
    }
    close(fd);
    mpk_st_file *f = file_new(label);
    if (!f) {
        if (map) munmap(map, size);
        mpk_model_seterr(err, err_len, "%s: out of memory", label);
        return MPK_ERR_NOMEM;
    }
    f->bytes = map;
    f->size = size;
    f->mapped = map != NULL;
    mpk_status st = parse_header(f, err, err_len);
    if (st != MPK_OK) {
        mpk_st_close(f);
        return st;
    }
    *out = f;
    return MPK_OK;
}

void mpk_st_close(mpk_st_file *f) {
    if (!f) return;
    for (int32_t i = 0; i < f->num_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    if (f->mapped) munmap((void *)f->bytes, f->size);
    free(f->label);
    free(f);
}

const mpk_st_tensor *mpk_st_find(const mpk_st_file *f, const char *name) {
    int32_t lo = 0, hi = f->num_tensors;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->tensors[mid].name, name);
        if (c == 0) return &f->tensors[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}
