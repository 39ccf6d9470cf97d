// test_model.c — the model loader and builder (suite "model"): safetensors parsing of files the
// test writes itself (valid, corrupt, fuzzed), config.json variants, the fused Q/K/V and gate/up
// layouts, sharded checkpoints, llama3 RoPE frequencies, the graph the builder emits, and end to
// end against transformers on the fixtures of tests/fixtures/make_models.py.
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mpk.h"
#include "mpk/model.h"
#include "core/internal.h"  // the compiled graph
#include "model/model_internal.h"
#include "model/safetensors.h"
#include "kernels/task.h"  // MPK_ATTENTION_LINEAR_MAX_ROW_BYTES

// ---- helpers -----------------------------------------------------------------------------------

static char *make_tmpdir(void) {
    char tmpl[] = "/tmp/mpk_model_test_XXXXXX";
    char *d = mkdtemp(tmpl);
    cr_assert(d != NULL, "mkdtemp failed");
    return strdup(d);
}

static char *path_in(const char *dir, const char *name) {
    char *p = malloc(strlen(dir) + strlen(name) + 2);
    sprintf(p, "%s/%s", dir, name);
    return p;
}

static void write_bytes(const char *dir, const char *name, const void *data, size_t len) {
    char *p = path_in(dir, name);
    FILE *f = fopen(p, "wb");
    cr_assert(f != NULL, "cannot write %s", p);
    if (len) cr_assert_eq(fwrite(data, 1, len, f), len);
    fclose(f);
    free(p);
}

static void write_text(const char *dir, const char *name, const char *text) {
    write_bytes(dir, name, text, strlen(text));
}

static void remove_dir(char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
    free(dir);
}

// A safetensors image: 8-byte length, the header, then data_len bytes of data (i-th byte = i).
static uint8_t *st_image(const char *header, size_t data_len, size_t *out_len) {
    size_t h = strlen(header);
    uint8_t *buf = malloc(8 + h + data_len + 1);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, header, h);
    for (size_t i = 0; i < data_len; i++) buf[8 + h + i] = (uint8_t)i;
    *out_len = 8 + h + data_len;
    return buf;
}

// Parses an image from an exact-size heap copy (so ASan sees any over-read); returns the status.
static mpk_status parse_image(const uint8_t *img, size_t len, char *err, size_t err_len) {
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, img, len);
    mpk_st_file *f = NULL;
    mpk_status st = mpk_st_parse(copy, len, "test.safetensors", &f, err, err_len);
    if (st == MPK_OK) {
        // Whatever parsed must lie inside the buffer.
        for (int32_t i = 0; i < f->num_tensors; i++) {
            const mpk_st_tensor *t = &f->tensors[i];
            cr_assert((const uint8_t *)t->data >= copy &&
                      (const uint8_t *)t->data + t->bytes <= copy + len);
        }
    }
    mpk_st_close(f);
    free(copy);
    return st;
}

static void expect_parse_error(const char *header, size_t data_len, mpk_status want,
                               const char *needle) {
    size_t len;
    uint8_t *img = st_image(header, data_len, &len);
    char err[512] = "";
    mpk_status st = parse_image(img, len, err, sizeof err);
    free(img);
    cr_expect_eq(st, want, "status %d, want %d (%s) for header %s", st, want, err, header);
    cr_expect(strstr(err, needle) != NULL, "error '%s' lacks '%s'", err, needle);
    cr_expect(strstr(err, "test.safetensors") != NULL, "error '%s' does not name the file", err);
}

// ---- safetensors -------------------------------------------------------------------------------

static const char *valid_header =
    "{\"__metadata__\":{\"format\":\"pt\"},"
    "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
    "\"a\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,8]},"
    "\"c\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[16,22]},"
    "\"empty\":{\"dtype\":\"F16\",\"shape\":[0,4],\"data_offsets\":[22,22]}}";

Test(model, safetensors_valid) {
    char *dir = make_tmpdir();
    size_t len;
    uint8_t *img = st_image(valid_header, 22, &len);
    // Put known values in: a = bf16 {1, -2, 0.5, 3}, b = f32 {1.5, -0.25}, c = f16 {1, -2, 2^-24}.
    uint8_t *data = img + len - 22;
    uint16_t a[4] = {0x3f80, 0xc000, 0x3f00, 0x4040};
    float b[2] = {1.5f, -0.25f};
    uint16_t c[3] = {0x3c00, 0xc000, 0x0001};
    memcpy(data, a, 8);
    memcpy(data + 8, b, 8);
    memcpy(data + 16, c, 6);
    write_bytes(dir, "x.safetensors", img, len);
    char *p = path_in(dir, "x.safetensors");
    mpk_st_file *f;
    char err[256] = "";
    cr_assert_eq(mpk_st_open(p, "x.safetensors", &f, err, sizeof err), MPK_OK, "%s", err);
    cr_assert_eq(f->num_tensors, 4, "__metadata__ is not a tensor");
    const mpk_st_tensor *ta = mpk_st_find(f, "a"), *tb = mpk_st_find(f, "b");
    const mpk_st_tensor *tc = mpk_st_find(f, "c"), *te = mpk_st_find(f, "empty");
    cr_assert(ta && tb && tc && te && !mpk_st_find(f, "__metadata__") && !mpk_st_find(f, "d"));
    cr_expect_eq(ta->dtype, MPK_BF16);
    cr_expect_eq(ta->ndim, 2);
    cr_expect_eq(ta->shape[0], 2);
    cr_expect_eq(ta->numel, 4);
    cr_expect_eq(te->numel, 0);
    uint16_t out[4];
    mpk_st_copy_bf16(ta, 1, 3, out);
    cr_expect(out[0] == 0xc000 && out[1] == 0x3f00 && out[2] == 0x4040);
    mpk_st_copy_bf16(tb, 0, 2, out);
    cr_expect(mpk_st_bf16_to_f32(out[0]) == 1.5f && mpk_st_bf16_to_f32(out[1]) == -0.25f);
    mpk_st_copy_bf16(tc, 0, 3, out);
    cr_expect(mpk_st_bf16_to_f32(out[0]) == 1.0f && mpk_st_bf16_to_f32(out[1]) == -2.0f);
    cr_expect(fabsf(mpk_st_bf16_to_f32(out[2]) - 5.9604645e-8f) < 1e-9f, "f16 subnormal");
    mpk_st_close(f);
    free(p);
    free(img);
    remove_dir(dir);
}

Test(model, safetensors_truncated) {
    char *dir = make_tmpdir();
    write_bytes(dir, "short.safetensors", "\x05\x00\x00", 3);
    char *p = path_in(dir, "short.safetensors");
    mpk_st_file *f;
    char err[256] = "";
    cr_expect_eq(mpk_st_open(p, "short.safetensors", &f, err, sizeof err), MPK_ERR_FORMAT);
    cr_expect(f == NULL);
    cr_expect(strstr(err, "short.safetensors: file is 3 bytes") != NULL, "%s", err);
    free(p);
    // The data section cut short: tensor 'c' ends beyond it.
    size_t len;
    uint8_t *img = st_image(valid_header, 22, &len);
    int st = parse_image(img, len - 3, err, sizeof err);
    cr_expect_eq(st, MPK_ERR_FORMAT);
    cr_expect(strstr(err, "outside the data section of 19 bytes") != NULL, "%s", err);
    // Cut inside the header.
    st = parse_image(img, 40, err, sizeof err);
    cr_expect_eq(st, MPK_ERR_FORMAT);
    cr_expect(strstr(err, "exceeds file size 40") != NULL, "%s", err);
    free(img);
    // A missing file.
    p = path_in(dir, "absent.safetensors");
    cr_expect_eq(mpk_st_open(p, "absent.safetensors", &f, err, sizeof err), MPK_ERR_IO);
    cr_expect(strstr(err, "absent.safetensors: cannot open") != NULL, "%s", err);
    free(p);
    remove_dir(dir);
}

Test(model, safetensors_header_length_too_large) {
    uint8_t img[1234] = {0};
    uint64_t h = 9999999999ull;
    for (int i = 0; i < 8; i++) img[i] = (uint8_t)(h >> (8 * i));
    char err[256] = "";
    cr_expect_eq(parse_image(img, sizeof img, err, sizeof err), MPK_ERR_FORMAT);
    cr_expect_str_eq(err, "test.safetensors: header length 9999999999 exceeds file size 1234");
    // All ones: the length must not wrap around when 8 is added.
    memset(img, 0xff, 8);
    cr_expect_eq(parse_image(img, sizeof img, err, sizeof err), MPK_ERR_FORMAT);
}

Test(model, safetensors_bad_offsets) {
    expect_parse_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                       12, MPK_ERR_FORMAT, "overlap");
    expect_parse_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 12,
                       MPK_ERR_FORMAT, "outside the data section of 12 bytes");
    expect_parse_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 12,
                       MPK_ERR_FORMAT, "outside the data section");
    expect_parse_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 12,
                       MPK_ERR_FORMAT, "need 12 bytes");
    expect_parse_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,8]}}", 12,
                       MPK_ERR_FORMAT, "non-negative integer");
    expect_parse_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0.5,8]}}", 12,
                       MPK_ERR_FORMAT, "data_offsets");
    // A shape whose element count overflows 64 bits.
    expect_parse_error("{\"a\":{\"dtype\":\"BF16\",\"shape\":[4294967296,4294967296,16],"
                       "\"data_offsets\":[0,8]}}", 12, MPK_ERR_FORMAT, "need more than");
    expect_parse_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12,
                       MPK_ERR_FORMAT, "appears twice");
}

Test(model, safetensors_bad_dtype_and_json) {
    expect_parse_error("{\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
                       MPK_ERR_UNSUPPORTED, "dtype 'I64'");
    expect_parse_error("{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
                       MPK_ERR_FORMAT, "'dtype'");
    expect_parse_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]", 8,
                       MPK_ERR_FORMAT, "not a JSON object");
    expect_parse_error("[1,2,3]", 8, MPK_ERR_FORMAT, "not a JSON object");
    expect_parse_error("{\"a\":[]}", 8, MPK_ERR_FORMAT, "not a JSON object");
}

// 2000 random mutations of a valid image: any outcome but a crash or an out-of-bounds read.
// Digit edits keep the JSON valid and so reach the offset/shape checks; the others hit the
// length field, the parser and truncation.
static uint64_t fuzz_next(uint64_t *state) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return *state >> 17;
}

Test(model, safetensors_fuzz) {
    size_t len;
    uint8_t *img = st_image(valid_header, 22, &len);
    const size_t hlen = strlen(valid_header);
    const char alphabet[] = "{}[],:\"0123456789-.eE FBI_adt";
    uint64_t state = 12345;
    int accepted = 0;
    for (int iter = 0; iter < 2000; iter++) {
        uint8_t *m = malloc(len);
        memcpy(m, img, len);
        size_t mlen = len;
        int edits = 1 + (int)(fuzz_next(&state) % 3);
        for (int e = 0; e < edits; e++) {
            uint64_t r = fuzz_next(&state);
            size_t hpos = 8 + (size_t)((r >> 8) % hlen);
            switch (r % 8) {
            case 0: m[(r >> 8) % mlen] = (uint8_t)(r >> 32); break;  // any byte anywhere
            case 1: m[hpos] = (uint8_t)alphabet[(r >> 32) % (sizeof alphabet - 1)]; break;
            case 2: m[(r >> 8) % 8] ^= (uint8_t)(1u << ((r >> 32) % 8)); break;  // length bit
            case 3: mlen = 1 + (size_t)((r >> 8) % mlen); break;  // truncate
            default:  // a digit becomes another digit
                for (size_t k = 0; k < hlen; k++) {
                    size_t q = 8 + (hpos - 8 + k) % hlen;
                    if (m[q] >= '0' && m[q] <= '9') {
                        m[q] = (uint8_t)('0' + (r >> 32) % 10);
                        break;
                    }
                }
            }
        }
        char err[256] = "";
        mpk_status st = parse_image(m, mlen, err, sizeof err);
        if (st == MPK_OK) accepted++;
        else cr_assert(err[0] != '\0', "iteration %d: a failure without a message", iter);
        free(m);
    }
    free(img);
    cr_log_info("safetensors fuzz: %d of 2000 mutations accepted", accepted);
    cr_expect(accepted > 0 && accepted < 2000, "%d accepted: the fuzzer explores too little",
              accepted);
}

// ---- config.json -------------------------------------------------------------------------------

static mpk_status parse_cfg(const char *json, mpk_model_config *c, char *err, size_t len) {
    return mpk_config_parse(json, strlen(json), "config.json", c, err, len);
}

#define QWEN_BASE                                                                             \
    "\"vocab_size\":100,\"hidden_size\":64,\"intermediate_size\":96,\"num_hidden_layers\":2," \
    "\"num_attention_heads\":4,\"num_key_value_heads\":2"

Test(model, config_qwen3_legacy_spelling) {
    mpk_model_config c;
    char err[256] = "";
    const char *j = "{\"model_type\":\"qwen3\"," QWEN_BASE ",\"head_dim\":32,"
                    "\"rope_theta\":1000000,\"rope_scaling\":null,\"torch_dtype\":\"float16\","
                    "\"eos_token_id\":7,\"bos_token_id\":5,\"rms_norm_eps\":1e-05,"
                    "\"tie_word_embeddings\":true,\"max_position_embeddings\":1024}";
    cr_assert_eq(parse_cfg(j, &c, err, sizeof err), MPK_OK, "%s", err);
    cr_expect_str_eq(c.model_type, "qwen3");
    cr_expect_eq(c.qk_norm, 1);
    cr_expect_eq(c.head_dim, 32);
    cr_expect_eq(c.num_kv_heads, 2);
    cr_expect_eq(c.rope_theta, 1000000.0);
    cr_expect_eq(c.rope_type, MPK_ROPE_DEFAULT);
    cr_expect_eq(c.dtype, MPK_F16);
    cr_expect_eq(c.num_eos_token_ids, 1);
    cr_expect_eq(c.eos_token_ids[0], 7);
    cr_expect_eq(c.bos_token_id, 5);
    cr_expect_eq(c.tie_word_embeddings, 1);
    cr_expect_eq(c.max_position_embeddings, 1024);
    cr_expect(fabsf(c.rms_norm_eps - 1e-5f) < 1e-12f);
}

Test(model, config_llama_rope_spellings) {
    mpk_model_config a, b, c;
    char err[256] = "";
    // transformers 4: rope_theta + rope_scaling with "rope_type"; head_dim absent; eos a list.
    const char *legacy = "{\"model_type\":\"llama\"," QWEN_BASE ",\"rope_theta\":500000.0,"
                         "\"rope_scaling\":{\"factor\":32.0,\"high_freq_factor\":4.0,"
                         "\"low_freq_factor\":1.0,\"original_max_position_embeddings\":8192,"
                         "\"rope_type\":\"llama3\"},\"eos_token_id\":[9,10,9],"
                         "\"dtype\":\"bfloat16\"}";
    // Older still: "type" instead of "rope_type".
    const char *older = "{\"model_type\":\"llama\"," QWEN_BASE ",\"rope_theta\":500000.0,"
                        "\"rope_scaling\":{\"factor\":32.0,\"high_freq_factor\":4.0,"
                        "\"low_freq_factor\":1.0,\"original_max_position_embeddings\":8192,"
                        "\"type\":\"llama3\"}}";
    // transformers 5: rope_parameters holds theta too.
    const char *v5 = "{\"model_type\":\"llama\"," QWEN_BASE ",\"rope_parameters\":{"
                     "\"rope_theta\":500000.0,\"rope_type\":\"llama3\",\"factor\":32.0,"
                     "\"high_freq_factor\":4.0,\"low_freq_factor\":1.0,"
                     "\"original_max_position_embeddings\":8192}}";
    cr_assert_eq(parse_cfg(legacy, &a, err, sizeof err), MPK_OK, "%s", err);
    cr_assert_eq(parse_cfg(older, &b, err, sizeof err), MPK_OK, "%s", err);
    cr_assert_eq(parse_cfg(v5, &c, err, sizeof err), MPK_OK, "%s", err);
    const mpk_model_config *all[3] = {&a, &b, &c};
    for (int i = 0; i < 3; i++) {
        cr_expect_eq(all[i]->qk_norm, 0);
        cr_expect_eq(all[i]->head_dim, 16, "head_dim = hidden / heads when absent");
        cr_expect_eq(all[i]->rope_type, MPK_ROPE_LLAMA3);
        cr_expect_eq(all[i]->rope_theta, 500000.0);
        cr_expect_eq(all[i]->rope_factor, 32.0f);
        cr_expect_eq(all[i]->rope_low_freq_factor, 1.0f);
        cr_expect_eq(all[i]->rope_high_freq_factor, 4.0f);
        cr_expect_eq(all[i]->rope_original_max_position, 8192);
        cr_expect_eq(all[i]->tie_word_embeddings, 0);
        cr_expect_eq(all[i]->dtype, MPK_BF16);
    }
    cr_expect_eq(a.num_eos_token_ids, 2, "duplicates dropped");
    cr_expect(a.eos_token_ids[0] == 9 && a.eos_token_ids[1] == 10);
    cr_expect_eq(b.num_eos_token_ids, 0);
    // rope_parameters with the default type.
    const char *v5d = "{\"model_type\":\"qwen3\"," QWEN_BASE ",\"rope_parameters\":{"
                      "\"rope_theta\":1000000.0,\"rope_type\":\"default\"}}";
    cr_assert_eq(parse_cfg(v5d, &a, err, sizeof err), MPK_OK, "%s", err);
    cr_expect_eq(a.rope_type, MPK_ROPE_DEFAULT);
    cr_expect_eq(a.rope_theta, 1000000.0);
}

Test(model, config_rejects) {
    mpk_model_config c;
    char err[256] = "";
    cr_expect_eq(parse_cfg("{\"model_type\":\"gpt2\"," QWEN_BASE "}", &c, err, sizeof err),
                 MPK_ERR_UNSUPPORTED);
    cr_expect(strstr(err, "config.json: unsupported model_type 'gpt2'") != NULL, "%s", err);
    cr_expect_eq(parse_cfg("{" QWEN_BASE "}", &c, err, sizeof err), MPK_ERR_FORMAT);
    cr_expect(strstr(err, "model_type") != NULL, "%s", err);
    cr_expect_eq(parse_cfg("{\"model_type\":\"llama\",\"vocab_size\":100}", &c, err, sizeof err),
                 MPK_ERR_FORMAT);
    cr_expect(strstr(err, "config.json: missing 'hidden_size'") != NULL, "%s", err);
    cr_expect_eq(parse_cfg("{\"model_type\":\"llama\"," QWEN_BASE ",\"rope_scaling\":{"
                           "\"rope_type\":\"yarn\",\"factor\":4}}", &c, err, sizeof err),
                 MPK_ERR_UNSUPPORTED);
    cr_expect(strstr(err, "rope_type 'yarn'") != NULL, "%s", err);
    cr_expect_eq(parse_cfg("{\"model_type\":\"llama\"," QWEN_BASE ",\"rope_scaling\":{"
                           "\"rope_type\":\"llama3\",\"factor\":4}}", &c, err, sizeof err),
                 MPK_ERR_FORMAT);
    cr_expect(strstr(err, "low_freq_factor") != NULL, "%s", err);
    cr_expect_eq(parse_cfg("{\"model_type\":\"llama\"," QWEN_BASE ",\"torch_dtype\":\"int8\"}",
                           &c, err, sizeof err), MPK_ERR_UNSUPPORTED);
    cr_expect_eq(parse_cfg("{\"model_type\":\"llama\"," QWEN_BASE ",\"hidden_act\":\"gelu\"}",
                           &c, err, sizeof err), MPK_ERR_UNSUPPORTED);
    cr_expect_eq(parse_cfg("{\"model_type\":\"qwen3\"," QWEN_BASE ",\"attention_bias\":true}",
                           &c, err, sizeof err), MPK_ERR_UNSUPPORTED);
    cr_expect_eq(parse_cfg("{\"model_type\":\"llama\",\"vocab_size\":100,\"hidden_size\":64,"
                           "\"intermediate_size\":96,\"num_hidden_layers\":2,"
                           "\"num_attention_heads\":4,\"num_key_value_heads\":3}", &c, err,
                           sizeof err), MPK_ERR_INVALID_ARG);
    cr_expect(strstr(err, "not a multiple of num_key_value_heads 3") != NULL, "%s", err);
    cr_expect_eq(parse_cfg("{\"model_type\":\"llama\"," QWEN_BASE ",\"eos_token_id\":\"x\"}",
                           &c, err, sizeof err), MPK_ERR_FORMAT);
    cr_expect_eq(parse_cfg("{\"model_type\":\"llama\",\"vocab_size\":1.5}", &c, err, sizeof err),
                 MPK_ERR_FORMAT);
    cr_expect_eq(parse_cfg("not json", &c, err, sizeof err), MPK_ERR_FORMAT);
}

Test(model, config_generation_eos_and_files) {
    char *dir = make_tmpdir();
    write_text(dir, "config.json",
               "{\"model_type\":\"qwen3\"," QWEN_BASE ",\"eos_token_id\":151645}");
    write_text(dir, "generation_config.json", "{\"eos_token_id\":[151645,151643]}");
    char *p = path_in(dir, "config.json");
    mpk_model_config c;
    char err[256] = "";
    cr_assert_eq(mpk_model_config_load(p, &c, err, sizeof err), MPK_OK, "%s", err);
    cr_expect_eq(c.num_eos_token_ids, 2);
    cr_expect(c.eos_token_ids[0] == 151645 && c.eos_token_ids[1] == 151643);
    write_text(dir, "generation_config.json", "{\"eos_token_id\":");
    cr_expect_eq(mpk_model_config_load(p, &c, err, sizeof err), MPK_ERR_FORMAT);
    cr_expect(strstr(err, "generation_config.json") != NULL, "%s", err);
    free(p);
    mpk_model *m = NULL;
    char *missing = path_in(dir, "nothing_here");
    cr_expect_eq(mpk_model_load(missing, &m, err, sizeof err), MPK_ERR_IO);
    cr_expect(m == NULL);
    cr_expect(strstr(err, "config.json: cannot open") != NULL, "%s", err);
    free(missing);
    remove_dir(dir);
}

// ---- RoPE and presets --------------------------------------------------------------------------

// Llama 3 scaling written out from the definition: wavelength 2*pi/f against the original
// context divided by the low and high frequency factors.
static double llama3_reference(double theta, int D, int i, double factor, double lo, double hi,
                               double old_ctx) {
    double f = pow(theta, -2.0 * i / D);
    double wavelen = 2 * M_PI / f;
    if (wavelen < old_ctx / hi) return f;
    if (wavelen > old_ctx / lo) return f / factor;
    double s = (old_ctx / wavelen - lo) / (hi - lo);
    return (1 - s) * f / factor + s * f;
}

Test(model, rope_inv_freq) {
    mpk_model_config c;
    cr_assert_eq(mpk_model_config_preset("llama-3.2-1b", &c), MPK_OK);
    float f[32];
    mpk_rope_inv_freq_compute(&c, f);
    int low = 0, mid = 0, high = 0;
    for (int i = 0; i < 32; i++) {
        double want = llama3_reference(500000.0, 64, i, 32.0, 1.0, 4.0, 8192.0);
        cr_expect(fabs(f[i] - want) <= 1e-6 * want, "inv_freq[%d] = %.9g, want %.9g", i, f[i],
                  want);
        double base = pow(500000.0, -2.0 * i / 64);
        if (fabs(f[i] - base) <= 1e-6 * base) high++;
        else if (fabs(f[i] - base / 32) <= 1e-6 * base) low++;
        else mid++;
    }
    cr_expect_eq(f[0], 1.0f);
    cr_expect(fabs(f[31] - pow(500000.0, -62.0 / 64) / 32) < 1e-12);
    cr_expect(low > 0 && mid > 0 && high > 0, "bands %d/%d/%d: all three must occur", low, mid,
              high);
    // Default RoPE: theta^(-2i/D).
    cr_assert_eq(mpk_model_config_preset("qwen3-8b", &c), MPK_OK);
    float g[64];
    mpk_rope_inv_freq_compute(&c, g);
    for (int i = 0; i < 64; i++)
        cr_expect(fabs(g[i] - pow(1e6, -i / 64.0)) <= 1e-6 * pow(1e6, -i / 64.0));
}

Test(model, presets_and_bytes_per_token) {
    // DESIGN.md §8: bytes one decode step reads, 1.19 / 3.44 / 15.14 GB.
    struct { const char *name; double gb; } want[] = {
        {"qwen3-0.6b", 1.19}, {"qwen3-1.7b", 3.44}, {"qwen3-8b", 15.14}};
    for (int i = 0; i < 3; i++) {
        mpk_model_config c;
        char err[256] = "";
        cr_assert_eq(mpk_model_config_preset(want[i].name, &c), MPK_OK);
        cr_assert_eq(mpk_model_config_validate(&c, err, sizeof err), MPK_OK, "%s", err);
        // A model without weights is enough to count: a struct with only the config.
        struct mpk_model m;
        memset(&m, 0, sizeof m);
        m.cfg = c;
        double gb = (double)mpk_model_weight_bytes_per_token(&m) / 1e9;
        cr_expect(fabs(gb - want[i].gb) < 0.01, "%s: %.3f GB, want %.2f", want[i].name, gb,
                  want[i].gb);
    }
    mpk_model_config c;
    cr_expect_eq(mpk_model_config_preset("llama-3.2-1b", &c), MPK_OK);
    cr_expect_eq(mpk_model_config_preset("qwen3-tiny", &c), MPK_OK);
    cr_expect_eq(mpk_model_config_preset("gpt-5", &c), MPK_ERR_NOT_FOUND);
}

// ---- loading a directory written here ----------------------------------------------------------

// Tensor values: element j of the tensor with index ti is k/128, k in [-125, 125]: exact in bf16,
// f16 and f32, so converted weights compare exactly.
static float tval(int ti, int64_t j) { return (float)((ti * 131 + j * 7) % 251 - 125) / 128.0f; }

typedef struct wtensor {
    char name[96];
    int ndim;
    int64_t shape[2];
    const char *dtype;
} wtensor;

// The tensors of an HF checkpoint of config c (q/k norms for qwen3, lm_head unless tied).
static int list_tensors(const mpk_model_config *c, wtensor *t) {
    int n = 0;
    int64_t H = c->hidden_size, D = c->head_dim, I = c->intermediate_size;
    int64_t Hq = c->num_heads, Hkv = c->num_kv_heads;
#define ADD(nd, a, b, ...) (snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__), t[n].ndim = nd, \
                            t[n].shape[0] = a, t[n].shape[1] = b, t[n].dtype = "BF16", n++)
    ADD(2, c->vocab_size, H, "model.embed_tokens.weight");
    ADD(1, H, 0, "model.norm.weight");
    if (!c->tie_word_embeddings) ADD(2, c->vocab_size, H, "lm_head.weight");
    for (int l = 0; l < c->num_layers; l++) {
        ADD(2, Hq * D, H, "model.layers.%d.self_attn.q_proj.weight", l);
        ADD(2, Hkv * D, H, "model.layers.%d.self_attn.k_proj.weight", l);
        ADD(2, Hkv * D, H, "model.layers.%d.self_attn.v_proj.weight", l);
        ADD(2, H, Hq * D, "model.layers.%d.self_attn.o_proj.weight", l);
        ADD(2, I, H, "model.layers.%d.mlp.gate_proj.weight", l);
        ADD(2, I, H, "model.layers.%d.mlp.up_proj.weight", l);
        ADD(2, H, I, "model.layers.%d.mlp.down_proj.weight", l);
        ADD(1, H, 0, "model.layers.%d.input_layernorm.weight", l);
        ADD(1, H, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        if (c->qk_norm) {
            ADD(1, D, 0, "model.layers.%d.self_attn.q_norm.weight", l);
            ADD(1, D, 0, "model.layers.%d.self_attn.k_norm.weight", l);
        }
    }
#undef ADD
    return n;
}

static int64_t numel(const wtensor *t) { return t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1); }

static int find_index(const wtensor *t, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(t[i].name, name) == 0) return i;
    return -1;
}

// Writes tensors [from, to) of t (global indices give the values) as one safetensors file.
static void write_st(const char *dir, const char *file, const wtensor *t, int from, int to) {
    size_t hcap = 256 + 160 * (size_t)(to - from), hl = 0, off = 0;
    char *h = malloc(hcap);
    hl += (size_t)snprintf(h + hl, hcap - hl, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = from; i < to; i++) {
        size_t es = strcmp(t[i].dtype, "F32") == 0 ? 4 : 2;
        size_t bytes = (size_t)numel(&t[i]) * es;
        hl += (size_t)snprintf(h + hl, hcap - hl, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld",
                               t[i].name, t[i].dtype, (long long)t[i].shape[0]);
        if (t[i].ndim == 2) hl += (size_t)snprintf(h + hl, hcap - hl, ",%lld",
                                                   (long long)t[i].shape[1]);
        hl += (size_t)snprintf(h + hl, hcap - hl, "],\"data_offsets\":[%zu,%zu]}", off,
                               off + bytes);
        off += bytes;
    }
    hl += (size_t)snprintf(h + hl, hcap - hl, "}");
    size_t total;
    uint8_t *img = st_image(h, off, &total);
    uint8_t *d = img + 8 + hl;
    for (int i = from; i < to; i++) {
        for (int64_t j = 0; j < numel(&t[i]); j++) {
            float v = tval(i, j);
            if (strcmp(t[i].dtype, "F32") == 0) {
                memcpy(d, &v, 4);
                d += 4;
            } else {
                uint16_t b = mpk_st_f32_to_bf16(v);
                if (strcmp(t[i].dtype, "F16") == 0) {
                    // k/128 with |k| <= 125 as IEEE half: exact; build it from the float bits.
                    uint32_t u;
                    memcpy(&u, &v, 4);
                    uint32_t sign = (u >> 16) & 0x8000u, exp = (u >> 23) & 0xffu;
                    uint32_t man = (u >> 13) & 0x3ffu;
                    b = v == 0.0f ? (uint16_t)sign : (uint16_t)(sign | ((exp - 112u) << 10) | man);
                }
                memcpy(d, &b, 2);
                d += 2;
            }
        }
    }
    write_bytes(dir, file, img, total);
    free(img);
    free(h);
}

static const char *tiny_config_json =
    "{\"model_type\":\"qwen3\",\"vocab_size\":40,\"hidden_size\":16,\"intermediate_size\":24,"
    "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
    "\"head_dim\":8,\"rope_theta\":10000,\"tie_word_embeddings\":false}";

static int tiny_tensors(wtensor *t, mpk_model_config *c) {
    char err[256];
    cr_assert_eq(mpk_config_parse(tiny_config_json, strlen(tiny_config_json), "config.json", c,
                                  err, sizeof err), MPK_OK, "%s", err);
    return list_tensors(c, t);
}

// Checks the fused layouts of a loaded model against the values written.
static void check_fused(const mpk_model *m, const wtensor *t, int n) {
    const mpk_model_config *c = mpk_model_get_config(m);
    int64_t H = c->hidden_size, D = c->head_dim, I = c->intermediate_size;
    int64_t G = c->num_heads / c->num_kv_heads;
    for (int l = 0; l < c->num_layers; l++) {
        char nq[96], nk[96], nv[96], ng[96], nu[96];
        snprintf(nq, sizeof nq, "model.layers.%d.self_attn.q_proj.weight", l);
        snprintf(nk, sizeof nk, "model.layers.%d.self_attn.k_proj.weight", l);
        snprintf(nv, sizeof nv, "model.layers.%d.self_attn.v_proj.weight", l);
        snprintf(ng, sizeof ng, "model.layers.%d.mlp.gate_proj.weight", l);
        snprintf(nu, sizeof nu, "model.layers.%d.mlp.up_proj.weight", l);
        int iq = find_index(t, n, nq), ik = find_index(t, n, nk), iv = find_index(t, n, nv);
        int ig = find_index(t, n, ng), iu = find_index(t, n, nu);
        const uint16_t *w = m->layers[l].wqkv;
        for (int64_t h = 0; h < c->num_kv_heads; h++) {
            for (int64_t r = 0; r < (G + 2) * D; r++) {
                int64_t row = h * (G + 2) * D + r;
                int src;
                int64_t src_row;
                if (r < G * D) src = iq, src_row = h * G * D + r;
                else if (r < (G + 1) * D) src = ik, src_row = h * D + (r - G * D);
                else src = iv, src_row = h * D + (r - (G + 1) * D);
                for (int64_t k = 0; k < H; k++)
                    cr_assert_eq(mpk_st_bf16_to_f32(w[row * H + k]), tval(src, src_row * H + k),
                                 "layer %d qkv row %lld col %lld", l, (long long)row,
                                 (long long)k);
            }
        }
        const uint16_t *gu = m->layers[l].wgu;
        for (int64_t r = 0; r < 2 * I; r++)
            for (int64_t k = 0; k < H; k++)
                cr_assert_eq(mpk_st_bf16_to_f32(gu[r * H + k]),
                             r < I ? tval(ig, r * H + k) : tval(iu, (r - I) * H + k));
    }
    int ie = find_index(t, n, "model.embed_tokens.weight");
    int il = find_index(t, n, "lm_head.weight");
    for (int64_t j = 0; j < c->vocab_size * H; j++) {
        cr_assert_eq(mpk_st_bf16_to_f32(m->embed[j]), tval(ie, j));
        cr_assert_eq(mpk_st_bf16_to_f32(m->lm_head[j]), tval(il, j));
    }
}

Test(model, load_single_file_with_conversions) {
    char *dir = make_tmpdir();
    wtensor t[64];
    mpk_model_config c;
    int n = tiny_tensors(t, &c);
    // Some weights in F32 and F16: converted to bf16 on load.
    t[find_index(t, n, "lm_head.weight")].dtype = "F32";
    t[find_index(t, n, "model.layers.1.self_attn.k_proj.weight")].dtype = "F16";
    t[find_index(t, n, "model.layers.0.mlp.up_proj.weight")].dtype = "F32";
    write_text(dir, "config.json", tiny_config_json);
    write_st(dir, "model.safetensors", t, 0, n);
    mpk_model *m = NULL;
    char err[256] = "";
    cr_assert_eq(mpk_model_load(dir, &m, err, sizeof err), MPK_OK, "%s", err);
    check_fused(m, t, n);
    cr_expect(m->layers[0].q_norm != NULL && m->layers[1].k_norm != NULL);
    cr_expect(mpk_model_rope_inv_freq(m)[1] == (float)pow(10000.0, -2.0 / 8));
    mpk_model_free(m);
    remove_dir(dir);
}

Test(model, load_sharded) {
    char *dir = make_tmpdir();
    wtensor t[64];
    mpk_model_config c;
    int n = tiny_tensors(t, &c);
    int half = n / 2;
    write_text(dir, "config.json", tiny_config_json);
    write_st(dir, "model-00001-of-00002.safetensors", t, 0, half);
    write_st(dir, "model-00002-of-00002.safetensors", t, half, n);
    size_t cap = 200 + 100 * (size_t)n, len = 0;
    char *idx = malloc(cap);
    len += (size_t)snprintf(idx, cap, "{\"metadata\":{\"total_size\":1},\"weight_map\":{");
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(idx + len, cap - len, "%s\"%s\":\"model-0000%d-of-00002."
                                "safetensors\"", i ? "," : "", t[i].name, i < half ? 1 : 2);
    snprintf(idx + len, cap - len, "}}");
    write_text(dir, "model.safetensors.index.json", idx);
    mpk_model *m = NULL;
    char err[256] = "";
    cr_assert_eq(mpk_model_load(dir, &m, err, sizeof err), MPK_OK, "%s", err);
    check_fused(m, t, n);
    mpk_model_free(m);
    // A shard name that escapes the directory is refused.
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"model.norm.weight\":\"../model.safetensors\"}}");
    cr_expect_eq(mpk_model_load(dir, &m, err, sizeof err), MPK_ERR_FORMAT);
    cr_expect(strstr(err, "model.safetensors.index.json") != NULL, "%s", err);
    // A listed shard that does not exist.
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"model.norm.weight\":\"model-00003-of-00003.safetensors\"}}");
    cr_expect_eq(mpk_model_load(dir, &m, err, sizeof err), MPK_ERR_IO);
    cr_expect(strstr(err, "model-00003-of-00003.safetensors: cannot open") != NULL, "%s", err);
    free(idx);
    remove_dir(dir);
}

Test(model, load_wrong_shape_and_missing_tensor) {
    char *dir = make_tmpdir();
    wtensor t[64];
    mpk_model_config c;
    int n = tiny_tensors(t, &c);
    write_text(dir, "config.json", tiny_config_json);
    int iq = find_index(t, n, "model.layers.1.self_attn.q_proj.weight");
    t[iq].shape[0] = 24;
    write_st(dir, "model.safetensors", t, 0, n);
    mpk_model *m = NULL;
    char err[256] = "";
    cr_expect_eq(mpk_model_load(dir, &m, err, sizeof err), MPK_ERR_SHAPE);
    cr_expect(m == NULL);
    cr_expect_str_eq(err, "model.safetensors: tensor 'model.layers.1.self_attn.q_proj.weight' "
                          "has shape [24, 16] but config.json implies [32, 16]");
    // Untied without lm_head.weight: drop it from the file.
    t[iq].shape[0] = 32;
    int il = find_index(t, n, "lm_head.weight");
    t[il] = t[n - 1];
    write_st(dir, "model.safetensors", t, 0, n - 1);
    cr_expect_eq(mpk_model_load(dir, &m, err, sizeof err), MPK_ERR_NOT_FOUND);
    cr_expect(strstr(err, "'lm_head.weight' not found") != NULL, "%s", err);
    // A corrupt weights file is reported with its name.
    write_bytes(dir, "model.safetensors", "\xff\xff\xff\xff\x00\x00\x00\x00{}", 10);
    cr_expect_eq(mpk_model_load(dir, &m, err, sizeof err), MPK_ERR_FORMAT);
    cr_expect(strstr(err, "model.safetensors: header length 4294967295 exceeds file size 10") !=
              NULL, "%s", err);
    char *p = path_in(dir, "model.safetensors");
    unlink(p);
    free(p);
    cr_expect_eq(mpk_model_load(dir, &m, err, sizeof err), MPK_ERR_IO);
    cr_expect(strstr(err, "model.safetensors: cannot open") != NULL, "%s", err);
    remove_dir(dir);
}

Test(model, random_model_is_deterministic) {
    mpk_model_config c;
    cr_assert_eq(mpk_model_config_preset("qwen3-tiny", &c), MPK_OK);
    mpk_model *a, *b, *d;
    char err[256] = "";
    cr_assert_eq(mpk_model_create_random(&c, 7, &a, err, sizeof err), MPK_OK, "%s", err);
    cr_assert_eq(mpk_model_create_random(&c, 7, &b, err, sizeof err), MPK_OK, "%s", err);
    cr_assert_eq(mpk_model_create_random(&c, 8, &d, err, sizeof err), MPK_OK, "%s", err);
    int64_t n = mpk_model_qkv_rows(&c) * c.hidden_size;
    cr_expect(memcmp(a->layers[1].wqkv, b->layers[1].wqkv, (size_t)n * 2) == 0);
    cr_expect(memcmp(a->layers[1].wqkv, d->layers[1].wqkv, (size_t)n * 2) != 0);
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = mpk_st_bf16_to_f32(a->layers[1].wqkv[i]);
        sum += v;
        sq += v * v;
    }
    double mean = sum / n, sd = sqrt(sq / n - mean * mean);
    cr_expect(fabs(mean) < 0.002 && fabs(sd - 0.02) < 0.002, "mean %g sd %g", mean, sd);
    cr_expect(fabsf(mpk_st_bf16_to_f32(a->final_norm[3]) - 1.0f) < 0.1f);
    cr_expect(a->lm_head != a->embed, "qwen3-tiny is untied");
    mpk_model_free(a);
    mpk_model_free(b);
    mpk_model_free(d);
    c.num_kv_heads = 3;
    cr_expect_eq(mpk_model_create_random(&c, 7, &a, err, sizeof err), MPK_ERR_INVALID_ARG);
    cr_expect(a == NULL);
    mpk_model_free(NULL);
}

// ---- the builder -------------------------------------------------------------------------------

Test(model, grid_choice) {
    int64_t ns[] = {64, 96, 128, 192, 512, 1024, 4096, 6144, 12288, 24576, 151936, 7, 1};
    int32_t ws[] = {1, 2, 3, 8, 16, 132};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
        for (size_t j = 0; j < sizeof ws / sizeof ws[0]; j++) {
            int32_t g = mpk_build_pick_grid(ns[i], ws[j]);
            cr_expect(g >= 1 && ns[i] % g == 0, "n=%lld W=%d: grid %d", (long long)ns[i], ws[j],
                      g);
            int32_t a = mpk_build_argmax_grid(ns[i], ws[j]);
            cr_expect(a >= 1 && a <= ws[j] && ns[i] % a == 0);
        }
    // Qwen3-8B on an H100 (132 workers): one wave at least 90% full, 16-column multiples.
    int32_t g = mpk_build_pick_grid(6144, 132);
    cr_expect(g >= 119 && g <= 132 && (6144 / g) % 16 == 0, "qkv grid %d", g);
    g = mpk_build_pick_grid(4096, 8);
    cr_expect(g % 8 == 0 && g <= 32 && (4096 / g) % 16 == 0, "grid %d", g);
    // No worker idles in a wave when a divisor allows it.
    cr_expect_eq(mpk_build_pick_grid(4096, 16) % 16, 0);
    cr_expect_eq(mpk_build_argmax_grid(151936, 16), 16);
}

// A CPU kernel of `requests` request slots, T rows per iteration, contexts up to seq.
static mpk_kernel *cpu_kernel_requests(int32_t workers, int32_t T, int32_t seq, int32_t requests) {
    mpk_kernel_params p = mpk_kernel_default_params();
    p.backend = MPK_BACKEND_CPU;
    p.num_workers = workers;
    p.max_batched_tokens = T;
    p.max_seq_len = seq;
    p.page_size = 16;
    p.max_requests = requests;
    mpk_kernel *k = NULL;
    cr_assert_eq(mpk_kernel_create(&p, &k), MPK_OK);
    return k;
}

static mpk_kernel *cpu_kernel(int32_t workers, int32_t T, int32_t seq) {
    return cpu_kernel_requests(workers, T, seq, mpk_kernel_default_params().max_requests);
}


// One request of `len` prompt tokens generating up to max_new, run to the end: its tokens.
static void generate(mpk_kernel *k, const int32_t *prompt, int32_t len, int32_t max_new,
                     const int32_t **toks, int32_t *plen, int32_t *total) {
    cr_assert_eq(mpk_request_add(k, prompt, len, max_new, NULL, NULL), MPK_OK, "%s", mpk_last_error(k));
    cr_assert_eq(mpk_run(k, NULL, NULL), MPK_OK, "%s", mpk_last_error(k));
    cr_assert_eq(mpk_request_tokens(k, 0, toks, plen, total), MPK_OK);
}

// Whether the builder fuses attention with o_proj by default (builder.c: fuse_attention): the
// outputs fit on chip, a task's projection slice is at most 32 KB and the context at most 256.
static int expect_fused(const mpk_model_config *c, int64_t T, int32_t W, int32_t ctx) {
    int64_t GD = (int64_t)c->num_heads / c->num_kv_heads * c->head_dim, H = c->hidden_size;
    int64_t slice = H / mpk_build_attention_linear_chunks(H, c->num_kv_heads, W) * GD * 2;
    return GD % 8 == 0 && T * GD * 2 <= MPK_ATTENTION_LINEAR_MAX_ROW_BYTES && slice <= 32 * 1024 &&
           ctx <= 256;
}

// Tasks the builder emits for config c with W workers (the grid rules of builder.c).
static int64_t expected_tasks(const mpk_model_config *c, int32_t W, int sampling, int fused) {
    int64_t H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size, Hkv = c->num_kv_heads;
    int64_t attn_o = fused ? Hkv * mpk_build_attention_linear_chunks(H, (int32_t)Hkv, W)
                           : Hkv * mpk_build_attention_splits((int32_t)Hkv, W) + mpk_build_pick_grid(H, W);
    int64_t per_layer = mpk_build_pick_grid(mpk_model_qkv_rows(c), W) + attn_o +
                        mpk_build_pick_grid(2 * I, W) + mpk_build_pick_grid(H, W);
    int64_t head = mpk_build_pick_grid(H, W) + mpk_build_pick_grid(V, W);
    return head + per_layer * c->num_layers + (sampling ? 1 : mpk_build_argmax_grid(V, W) + 1);
}

static void build_and_check(mpk_model_config c, int32_t W, int sampling) {
    const char *preset = c.model_type;
    c.num_layers = 3;
    mpk_model *m;
    char err[256] = "";
    cr_assert_eq(mpk_model_create_random(&c, 1, &m, err, sizeof err), MPK_OK, "%s", err);
    mpk_kernel *k = cpu_kernel(W, 8, 64);
    mpk_build_options o = mpk_build_default_options();
    o.sampling = sampling;
    cr_assert_eq(mpk_model_build(m, k, &o), MPK_OK, "%s", mpk_last_error(k));
    mpk_tensor *logits;
    cr_assert_eq(mpk_tensor_find(k, "logits", &logits), MPK_OK);
    cr_expect_eq(mpk_tensor_dim(logits, 0), 8);
    cr_expect_eq(mpk_tensor_dim(logits, 1), c.vocab_size);
    cr_assert_eq(mpk_compile(k), MPK_OK, "%s", mpk_last_error(k));
    mpk_graph_stats s;
    cr_assert_eq(mpk_graph_get_stats(k, &s), MPK_OK);
    // embed, 5 per decoder layer (4 with attention and o_proj fused), LM head, argmax (partial +
    // reduce) or sampling.
    int fused = expect_fused(&c, 8, W, 64);
    cr_expect_eq(s.num_layers, 1 + (fused ? 4 : 5) * c.num_layers + 1 + (sampling ? 1 : 2));
    cr_expect_eq(s.num_tasks, expected_tasks(&c, W, sampling, fused), "%s W=%d: %d tasks", preset, W,
                 s.num_tasks);
    // A short generation runs and yields valid token ids.
    const int32_t prompt[5] = {1, 5, 9, 300, 17};
    const int32_t *toks;
    int32_t plen, total;
    generate(k, prompt, 5, 4, &toks, &plen, &total);
    cr_expect_eq(plen, 5);
    cr_expect(total > 5 && total <= 9);
    for (int32_t i = plen; i < total; i++) cr_expect(toks[i] >= 0 && toks[i] < c.vocab_size);
    mpk_kernel_free(k);
    mpk_model_free(m);
}

Test(model, build_qwen3_random) {
    mpk_model_config c;
    cr_assert_eq(mpk_model_config_preset("qwen3-tiny", &c), MPK_OK);
    build_and_check(c, 3, 0);
}

// A small Llama: no q/k norms, llama3 RoPE, tied LM head, no GQA, sampling layer.
Test(model, build_llama_random_sampling) {
    mpk_model_config c;
    cr_assert_eq(mpk_model_config_preset("llama-3.2-1b", &c), MPK_OK);
    c.vocab_size = 384;
    c.hidden_size = 96;
    c.intermediate_size = 160;
    c.num_heads = c.num_kv_heads = 3;
    c.head_dim = 32;
    build_and_check(c, 2, 1);
}

// A random-weight qwen3-tiny model (layers > 0: that many instead of the preset's), its config in *c.
static mpk_model *tiny_random_model(mpk_model_config *c, int32_t layers, uint64_t seed) {
    cr_assert_eq(mpk_model_config_preset("qwen3-tiny", c), MPK_OK);
    if (layers > 0) c->num_layers = layers;
    mpk_model *m = NULL;
    char err[256] = "";
    cr_assert_eq(mpk_model_create_random(c, seed, &m, err, sizeof err), MPK_OK, "%s", err);
    return m;
}

// mpk_model_build refuses the options with MPK_ERR_INVALID_ARG and names `field` in its message.
static void expect_build_rejects(const mpk_build_options *o, const char *field) {
    mpk_model_config c;
    mpk_model *m = tiny_random_model(&c, 0, 3);
    mpk_kernel *k = cpu_kernel(2, 4, 32);
    cr_expect_eq(mpk_model_build(m, k, o), MPK_ERR_INVALID_ARG);
    cr_expect(strstr(mpk_last_error(k), field) != NULL, "%s", mpk_last_error(k));
    mpk_kernel_free(k);
    mpk_model_free(m);
}

// The compiler's tile blocks (compile.c: mark_tile_blocks) on a decoder's real shapes: the
// projections whose consumers read whole rows get the largest power of two dividing their task
// count, the QKV projection whole kv head groups of columns (attention reads one group per task),
// the sampled LM head none. Layer 0 of the Qwen3-0.6B shapes with a small vocabulary, compiled
// for 128 and 132 workers, fused and not.
static int32_t tile_block_of(const mpk_kernel *k, const char *name, int32_t *tasks) {
    int32_t li = -1, b = -1;
    for (int32_t i = 0; i < k->num_layers; i++)
        if (strcmp(k->layers[i].name, name) == 0) li = i;
    *tasks = 0;
    if (li < 0) return -1;
    for (int32_t t = 0; t < k->graph.num_tasks; t++)
        if ((int32_t)k->graph.tasks[t].layer == li) {
            if (b < 0) b = k->graph.tasks[t].iparam[1];
            cr_expect_eq(k->graph.tasks[t].iparam[1], b, "%s", name);
            (*tasks)++;
        }
    return b;
}

static int32_t lowbit(int32_t x) { return x & -x; }

Test(model, tile_blocks_of_a_decoder) {
    mpk_model_config c;
    cr_assert_eq(mpk_model_config_preset("qwen3-0.6b", &c), MPK_OK);
    c.num_layers = 1;
    c.vocab_size = 1024;
    mpk_model *m;
    char err[256] = "";
    cr_assert_eq(mpk_model_create_random(&c, 1, &m, err, sizeof err), MPK_OK, "%s", err);
    const int32_t workers[] = {128, 132, 128};
    const int32_t ctx[] = {1024, 1024, 128};  // (the last: attention fused with o_proj)
    for (int i = 0; i < 3; i++) {
        mpk_kernel *k = cpu_kernel(workers[i], 64, ctx[i]);
        cr_assert_eq(mpk_model_build(m, k, NULL), MPK_OK, "%s", mpk_last_error(k));
        cr_assert_eq(mpk_compile(k), MPK_OK, "%s", mpk_last_error(k));
        cr_expect_eq(mpk_graph_check(k), MPK_OK, "%s", mpk_last_error(k));  // (the tile blocks too)
        const int fused = expect_fused(&c, 64, workers[i], ctx[i]);
        int32_t n, b;
        b = tile_block_of(k, "model.layers.0.down_proj", &n);
        cr_expect_eq(b, lowbit(n) >= 2 ? lowbit(n) : 0, "down: %d tasks, block %d", n, b);
        b = tile_block_of(k, "model.layers.0.gate_up_proj", &n);  // (fused: x_out's columns in iparam)
        if (!fused) cr_expect_eq(b, lowbit(n) >= 2 ? lowbit(n) : 0, "gate/up: %d tasks, block %d", n, b);
        b = tile_block_of(k, "model.layers.0.o_proj", &n);
        if (!fused) cr_expect_eq(b, lowbit(n) >= 2 ? lowbit(n) : 0, "o_proj: %d tasks, block %d", n, b);
        b = tile_block_of(k, "model.layers.0.qkv_proj", &n);
        const int32_t group = (c.num_heads / c.num_kv_heads + 2) * c.head_dim, width = mpk_model_qkv_rows(&c) / n;
        int32_t want = lowbit(n);
        if (group % width == 0 && lowbit(group / width) < want) want = lowbit(group / width);
        if (group % width) want = 1;  // (a task straddles two groups)
        cr_expect_eq(b, want >= 2 ? want : 0, "qkv: %d tasks of %d columns, block %d", n, width, b);
        cr_expect_eq(tile_block_of(k, "lm_head", &n), 0, "the sampled LM head");
        mpk_kernel_free(k);
    }
    mpk_model_free(m);
}

Test(model, build_rejects_null_and_compiled) {
    mpk_kernel *k = cpu_kernel(2, 4, 32);
    cr_expect_eq(mpk_model_build(NULL, k, NULL), MPK_ERR_INVALID_ARG);
    cr_expect(strstr(mpk_last_error(k), "model") != NULL);
    mpk_model_config c;
    mpk_model *m = tiny_random_model(&c, 0, 3);
    cr_assert_eq(mpk_model_build(m, k, NULL), MPK_OK, "%s", mpk_last_error(k));
    cr_assert_eq(mpk_compile(k), MPK_OK, "%s", mpk_last_error(k));
    cr_expect_neq(mpk_model_build(m, k, NULL), MPK_OK, "building into a compiled kernel");
    cr_expect(mpk_last_error(k)[0] != '\0');
    mpk_kernel_free(k);
    mpk_model_free(m);
}

// Row 0 of the kernel's logits (after a run: the last iteration's single decode row) as floats
// into out; returns the vocabulary size.
static int64_t read_logits_row0(mpk_kernel *k, float *out) {
    mpk_tensor *lg;
    cr_assert_eq(mpk_tensor_find(k, "logits", &lg), MPK_OK);
    int64_t V = mpk_tensor_dim(lg, 1), n = mpk_tensor_dim(lg, 0) * V;
    uint16_t *raw = malloc(sizeof *raw * (size_t)n);
    cr_assert_eq(mpk_tensor_read(k, lg, raw, sizeof *raw * (size_t)n), MPK_OK);
    for (int64_t j = 0; j < V; j++) {
        uint32_t u = (uint32_t)raw[j] << 16;
        memcpy(&out[j], &u, 4);
    }
    free(raw);
    return V;
}

// ||a - ref||^2 / ||ref||^2 over n values (infinite when ref is all zeros).
static double normalised_error(const float *a, const float *ref, int64_t n) {
    double num = 0, den = 0;
    for (int64_t j = 0; j < n; j++) {
        num += ((double)a[j] - ref[j]) * ((double)a[j] - ref[j]);
        den += (double)ref[j] * ref[j];
    }
    return den > 0 ? num / den : INFINITY;
}

// Attention fused with the output projection (one stage, fp32 partial sums per kv head added by
// the gate/up task) against the separate layers, on the CPU: a 5-token prompt (several rows of
// one request in one iteration: the tasks that do not append read those rows' keys from qkv)
// and 6 decoded tokens. Grids for 16 workers, so each kv head group has several column chunks.
// The sums are added in another order, so the logits agree to rounding, not bit for bit.
static void run_attention_output(int mode, int32_t *toks_out, int32_t *ntok, float *logits_out,
                                 int64_t *nlogits) {
    mpk_model_config c;
    mpk_model *m = tiny_random_model(&c, 3, 7);
    mpk_kernel *k = cpu_kernel(2, 8, 64);
    mpk_build_options o = mpk_build_default_options();
    o.num_workers_hint = 16;
    o.attention_output = mode;
    cr_assert_eq(mpk_model_build(m, k, &o), MPK_OK, "%s", mpk_last_error(k));
    cr_assert_eq(mpk_compile(k), MPK_OK, "%s", mpk_last_error(k));
    mpk_graph_stats s;
    cr_assert_eq(mpk_graph_get_stats(k, &s), MPK_OK);
    cr_expect_eq(s.num_layers, 1 + (mode == MPK_ATTN_OUT_FUSED ? 4 : 5) * c.num_layers + 1 + 2);
    const int32_t prompt[5] = {3, 77, 9, 300, 17};
    const int32_t *toks;
    int32_t plen, total;
    generate(k, prompt, 5, 6, &toks, &plen, &total);
    *ntok = total - plen;
    memcpy(toks_out, toks + plen, sizeof *toks * (size_t)*ntok);
    *nlogits = read_logits_row0(k, logits_out);
    mpk_kernel_free(k);
    mpk_model_free(m);
}

Test(model, attention_output_fused_matches_separate) {
    int32_t ta[16], tb[16], na, nb;
    static float la[200000], lb[200000];
    int64_t va, vb;
    run_attention_output(MPK_ATTN_OUT_FUSED, ta, &na, la, &va);
    run_attention_output(MPK_ATTN_OUT_SEPARATE, tb, &nb, lb, &vb);
    cr_assert_eq(na, 6);
    cr_assert_eq(nb, 6);
    cr_assert_eq(va, vb);
    const double err = normalised_error(la, lb, va);
    cr_expect(err < 1e-4, "logits differ: normalised squared error %.3g", err);
    cr_expect(memcmp(ta, tb, sizeof ta[0] * 6) == 0, "tokens differ: %d %d %d vs %d %d %d", ta[0], ta[1],
              ta[2], tb[0], tb[1], tb[2]);
}

// The LM head of the sampled rows only (the default, mpk_rmsnorm_linear_sampled_layer) against
// every row (MPK_LOGITS_ALL), on the CPU: two requests prefilled in one iteration (prompts of 5
// and 2 tokens in 8 rows), then a 12-token prompt in chunks of 8 and 4 rows. The sampled rows
// (the prompts' last) are bit for bit those of the all-rows head and the tokens the same; the
// other rows are never written (the fresh tensor's zeros stay).
static void run_logits_rows(int32_t logits, int32_t *toks_out, uint16_t *lg_out, int64_t *V_out) {
    mpk_model_config c;
    mpk_model *m = tiny_random_model(&c, 3, 5);
    mpk_kernel *k = cpu_kernel_requests(3, 8, 32, 2);
    mpk_build_options o = mpk_build_default_options();
    o.logits = logits;
    cr_assert_eq(mpk_model_build(m, k, &o), MPK_OK, "%s", mpk_last_error(k));
    cr_assert_eq(mpk_compile(k), MPK_OK, "%s", mpk_last_error(k));
    mpk_tensor *lg;
    cr_assert_eq(mpk_tensor_find(k, "logits", &lg), MPK_OK);
    const int64_t V = mpk_tensor_dim(lg, 1), n = 8 * V;
    const int32_t a[5] = {3, 77, 9, 300, 17}, b2[2] = {41, 5};
    cr_assert_eq(mpk_request_add(k, a, 5, 1, NULL, NULL), MPK_OK, "%s", mpk_last_error(k));
    cr_assert_eq(mpk_request_add(k, b2, 2, 1, NULL, NULL), MPK_OK, "%s", mpk_last_error(k));
    cr_assert_eq(mpk_run(k, NULL, NULL), MPK_OK, "%s", mpk_last_error(k));
    cr_assert_eq(mpk_tensor_read(k, lg, lg_out, sizeof *lg_out * (size_t)n), MPK_OK);
    for (int r = 0; r < 2; r++) {
        const int32_t *t;
        int32_t plen, total;
        cr_assert_eq(mpk_request_tokens(k, r, &t, &plen, &total), MPK_OK);
        cr_assert_eq(total - plen, 1);
        toks_out[r] = t[plen];
    }
    int32_t c12[12];
    for (int i = 0; i < 12; i++) c12[i] = 5 + 31 * i;
    cr_assert_eq(mpk_request_clear(k), MPK_OK);
    const int32_t *t;
    int32_t plen, total;
    generate(k, c12, 12, 1, &t, &plen, &total);
    toks_out[2] = t[plen];
    cr_assert_eq(mpk_tensor_read(k, lg, lg_out + n, sizeof *lg_out * (size_t)n), MPK_OK);
    *V_out = V;
    mpk_kernel_free(k);
    mpk_model_free(m);
}

Test(model, lm_head_sampled_rows) {
    static uint16_t all[2 * 8 * 4096], smp[2 * 8 * 4096];
    int32_t ta[3], ts[3];
    int64_t V, V2;
    run_logits_rows(MPK_LOGITS_ALL, ta, all, &V);
    run_logits_rows(MPK_LOGITS_SAMPLED, ts, smp, &V2);
    cr_assert_eq(V, V2);
    cr_assert(2 * 8 * V <= 2 * 8 * 4096);
    cr_expect(memcmp(ta, ts, sizeof ta) == 0, "tokens differ: %d %d %d vs %d %d %d", ta[0], ta[1], ta[2], ts[0],
              ts[1], ts[2]);
    // Run 1 (7 rows) samples rows 4 and 6; run 2 (same tensor) row 3 of its second chunk.
    for (int run = 0; run < 2; run++)
        for (int64_t r = 0; r < 8; r++) {
            const uint16_t *ra = all + (run * 8 + r) * V, *rs = smp + (run * 8 + r) * V;
            const int sampled = run == 0 ? (r == 4 || r == 6) : r == 3;
            const int written_before = run == 1 && (r == 4 || r == 6);  // (run 1's rows stay)
            if (sampled) {
                cr_expect(memcmp(ra, rs, sizeof *ra * (size_t)V) == 0, "run %d row %lld: sampled logits differ", run,
                          (long long)r);
            } else if (!written_before) {
                int zeros = 1;
                for (int64_t j = 0; j < V; j++) zeros &= rs[j] == 0;
                cr_expect(zeros, "run %d row %lld: a row nobody samples was written", run, (long long)r);
                int any = 0;
                for (int64_t j = 0; j < V; j++) any |= ra[j] != 0;
                if (run == 1 || r < 7)  // (run 1 used 7 rows)
                    cr_expect(any, "run %d row %lld: the all-rows head left the row empty", run, (long long)r);
            }
        }
    // A bad value is named.
    mpk_build_options o = mpk_build_default_options();
    o.logits = 5;
    expect_build_rejects(&o, "logits");
}

// The attention split over positions (flash-decoding) against the whole attention, on the CPU
// with 4 worker threads (the splits of a head run concurrently and meet at the ticket): a
// 200-token prompt, then 8 decoded tokens, each attending to 200+ positions, so every decode
// iteration splits with S = 2 (from 128 positions) and S = 3 (from 192). The splits add their
// partial sums in another order: the logits agree to rounding, the tokens exactly.
static void run_attention_splits(int32_t S, int32_t *toks_out, float *logits_out, int64_t *nlogits) {
    mpk_model_config c;
    mpk_model *m = tiny_random_model(&c, 3, 11);
    mpk_kernel *k = cpu_kernel(4, 64, 256);
    mpk_build_options o = mpk_build_default_options();
    o.attention_output = MPK_ATTN_OUT_SEPARATE;
    o.attention_splits = S;
    cr_assert_eq(mpk_model_build(m, k, &o), MPK_OK, "%s", mpk_last_error(k));
    cr_assert_eq(mpk_compile(k), MPK_OK, "%s", mpk_last_error(k));
    mpk_tensor *ws;
    cr_assert_eq(mpk_tensor_find(k, "model.layers.0.attention.split_workspace", &ws) == MPK_OK, S > 1);
    int32_t prompt[200];
    for (int i = 0; i < 200; i++) prompt[i] = 3 + (i * 37) % 500;
    const int32_t *toks;
    int32_t plen, total;
    generate(k, prompt, 200, 8, &toks, &plen, &total);
    cr_assert_eq(total - plen, 8);
    // The run's counts: the prompt in 4 chunks of at most 64 rows, the last of which samples the
    // first token; the other 7 come from decode-only iterations.
    mpk_run_stats rs;
    cr_assert_eq(mpk_run_get_stats(k, &rs), MPK_OK);
    cr_expect_eq(rs.prefill_iterations, 4);
    cr_expect_eq(rs.generated_tokens, 8);
    cr_expect_eq(rs.decode_tokens, 7, "%lld decode tokens", (long long)rs.decode_tokens);
    cr_expect_eq(rs.iterations, 11);
    memcpy(toks_out, toks + plen, sizeof *toks * 8);
    *nlogits = read_logits_row0(k, logits_out);
    if (S > 1) {  // every ticket is back at 0
        int64_t nw = mpk_tensor_dim(ws, 0) * mpk_tensor_dim(ws, 1);
        float *w = malloc(sizeof *w * (size_t)nw);
        cr_assert_eq(mpk_tensor_read(k, ws, w, sizeof *w * (size_t)nw), MPK_OK);
        for (int64_t h = 0; h < mpk_tensor_dim(ws, 0); h++) {
            uint32_t t;
            memcpy(&t, w + h * mpk_tensor_dim(ws, 1), 4);
            cr_expect_eq(t, 0u, "kv head %lld's ticket is %u after the run", (long long)h, t);
        }
        free(w);
    }
    mpk_kernel_free(k);
    mpk_model_free(m);
}

Test(model, attention_splits_match_whole) {
    int32_t t1[8], ts[8];
    static float l1[4096], ls[4096];
    int64_t v1, vs;
    run_attention_splits(1, t1, l1, &v1);
    for (int32_t S = 2; S <= 3; S++) {
        run_attention_splits(S, ts, ls, &vs);
        cr_assert_eq(v1, vs);
        const double err = normalised_error(ls, l1, v1);
        cr_expect(err < 1e-4, "S=%d: logits differ: normalised squared error %.3g", S, err);
        cr_expect(memcmp(t1, ts, sizeof ts) == 0, "S=%d: tokens differ: %d %d %d vs %d %d %d", S, ts[0],
                  ts[1], ts[2], t1[0], t1[1], t1[2]);
    }
}

// mpk_attention_layer's splits: more than 64 are refused by name; S splits add a workspace of a
// ticket and S partials per kv head.
Test(model, attention_layer_splits) {
    mpk_kernel *k = cpu_kernel(2, 8, 64);
    const mpk_kernel_params *p = mpk_kernel_get_params(k);
    int64_t P = p->num_pages, PS = p->page_size, T = 8, G = 3, D = 32, Hkv = 2;
    mpk_tensor *qkv, *kc, *vc, *out, *ws;
    cr_assert_eq(mpk_new_tensor(k, 2, (int64_t[]){T, Hkv * (G + 2) * D}, MPK_BF16, "qkv", MPK_IO_DEVICE, &qkv), MPK_OK);
    cr_assert_eq(mpk_new_tensor(k, 4, (int64_t[]){P, Hkv, PS, D}, MPK_BF16, "kc", MPK_IO_DEVICE, &kc), MPK_OK);
    cr_assert_eq(mpk_new_tensor(k, 4, (int64_t[]){P, Hkv, PS, D}, MPK_BF16, "vc", MPK_IO_DEVICE, &vc), MPK_OK);
    cr_assert_eq(mpk_new_tensor(k, 2, (int64_t[]){T, Hkv * G * D}, MPK_BF16, "out", MPK_IO_DEVICE, &out), MPK_OK);
    mpk_attention_desc d = {.qkv = qkv, .k_cache = kc, .v_cache = vc, .output = out,
                            .num_q_heads = (int32_t)(Hkv * G), .num_kv_heads = (int32_t)Hkv, .head_dim = (int32_t)D};
    cr_expect_eq(mpk_attention_layer(k, &d, (mpk_dim3){2, 65, 1}, (mpk_dim3){0, 0, 0}, "att"), MPK_ERR_SHAPE);
    cr_expect(strstr(mpk_last_error(k), "splits") != NULL, "%s", mpk_last_error(k));
    cr_expect_neq(mpk_tensor_find(k, "att.split_workspace", &ws), MPK_OK, "a refused layer leaves no workspace");
    cr_assert_eq(mpk_attention_layer(k, &d, (mpk_dim3){1, 5, 1}, (mpk_dim3){0, 0, 0}, "att"), MPK_OK, "%s", mpk_last_error(k));
    cr_assert_eq(mpk_tensor_find(k, "att.split_workspace", &ws), MPK_OK);
    cr_expect_eq(mpk_tensor_dim(ws, 0), Hkv);
    cr_expect_eq(mpk_tensor_dim(ws, 1), MPK_ATTENTION_SPLIT_HEADER + 5 * G * (D + 2));
    cr_expect_eq(mpk_tensor_dtype(ws), MPK_F32);
    mpk_graph_stats s;
    cr_assert_eq(mpk_compile(k), MPK_OK, "%s", mpk_last_error(k));
    cr_assert_eq(mpk_graph_get_stats(k, &s), MPK_OK);
    cr_expect_eq(s.num_tasks, 5, "one task per split of the one head group");
    mpk_kernel_free(k);
    // Every split declares a share of its heads' output columns (so that the next layer waits for
    // whichever arrives last): no more splits than columns.
    k = cpu_kernel(2, 8, 64);
    cr_assert_eq(mpk_new_tensor(k, 2, (int64_t[]){T, 2 * 3 * 2}, MPK_BF16, "qkv", MPK_IO_DEVICE, &qkv), MPK_OK);
    cr_assert_eq(mpk_new_tensor(k, 4, (int64_t[]){P, 2, PS, 2}, MPK_BF16, "kc", MPK_IO_DEVICE, &kc), MPK_OK);
    cr_assert_eq(mpk_new_tensor(k, 4, (int64_t[]){P, 2, PS, 2}, MPK_BF16, "vc", MPK_IO_DEVICE, &vc), MPK_OK);
    cr_assert_eq(mpk_new_tensor(k, 2, (int64_t[]){T, 2 * 2}, MPK_BF16, "out", MPK_IO_DEVICE, &out), MPK_OK);
    mpk_attention_desc d2 = {.qkv = qkv, .k_cache = kc, .v_cache = vc, .output = out,
                             .num_q_heads = 2, .num_kv_heads = 2, .head_dim = 2};
    cr_expect_eq(mpk_attention_layer(k, &d2, (mpk_dim3){2, 3, 1}, (mpk_dim3){0, 0, 0}, "att"), MPK_ERR_SHAPE);
    cr_expect(strstr(mpk_last_error(k), "output columns") != NULL, "%s", mpk_last_error(k));
    cr_expect_eq(mpk_attention_layer(k, &d2, (mpk_dim3){1, 4, 1}, (mpk_dim3){0, 0, 0}, "att"), MPK_OK, "%s",
                 mpk_last_error(k));
    mpk_kernel_free(k);
}

// The automatic layout: attention fused with o_proj for a short-context kernel, separate (and
// split over positions) for one of more than 256 positions.
Test(model, attention_output_auto_by_context) {
    mpk_model_config c;
    mpk_model *m = tiny_random_model(&c, 0, 11);
    const int32_t ctx[2] = {256, 257};
    for (int i = 0; i < 2; i++) {
        mpk_kernel *k = cpu_kernel(4, 8, ctx[i]);
        cr_assert_eq(mpk_model_build(m, k, NULL), MPK_OK, "%s", mpk_last_error(k));
        mpk_tensor *ws;
        int split = mpk_tensor_find(k, "model.layers.0.attention.split_workspace", &ws) == MPK_OK;
        int fused = mpk_tensor_find(k, "model.layers.0.o_proj.partial", &ws) == MPK_OK;
        cr_expect_eq(fused, expect_fused(&c, 8, 4, ctx[i]), "ctx %d: fused %d", ctx[i], fused);
        cr_expect_eq(fused, i == 0, "ctx %d: fused %d", ctx[i], fused);
        cr_expect_eq(split, !fused && mpk_build_attention_splits(c.num_kv_heads, 4) > 1, "ctx %d", ctx[i]);
        mpk_kernel_free(k);
    }
    mpk_model_free(m);
}

// Impossible split counts are refused by name.
Test(model, attention_splits_rejects) {
    mpk_build_options o = mpk_build_default_options();
    o.attention_splits = 65;
    expect_build_rejects(&o, "attention_splits");
    mpk_model_config c;
    mpk_model *m = tiny_random_model(&c, 0, 11);
    mpk_kernel *k = cpu_kernel(2, 64, 64);
    o = mpk_build_default_options();
    o.attention_output = MPK_ATTN_OUT_SEPARATE;
    o.attention_splits = 4;
    cr_expect_eq(mpk_model_build(m, k, &o), MPK_OK, "%s", mpk_last_error(k));
    mpk_kernel_free(k);
    mpk_model_free(m);
}

// The fused layers' shape checks name the problem.
Test(model, attention_linear_rejects) {
    mpk_kernel *k = cpu_kernel(2, 64, 64);
    const mpk_kernel_params *p = mpk_kernel_get_params(k);
    int64_t P = p->num_pages, S = p->page_size, T = 64;
    mpk_tensor *qkv, *kc, *vc, *w, *part, *bad, *x, *nw, *wg, *out, *xo;
    cr_assert_eq(mpk_new_tensor(k, 2, (int64_t[]){T, 2 * (8 + 2) * 128}, MPK_BF16, "qkv", MPK_IO_DEVICE, &qkv), MPK_OK);
    cr_assert_eq(mpk_new_tensor(k, 4, (int64_t[]){P, 2, S, 128}, MPK_BF16, "kc", MPK_IO_DEVICE, &kc), MPK_OK);
    cr_assert_eq(mpk_new_tensor(k, 4, (int64_t[]){P, 2, S, 128}, MPK_BF16, "vc", MPK_IO_DEVICE, &vc), MPK_OK);
    cr_assert_eq(mpk_new_tensor(k, 2, (int64_t[]){256, 16 * 128}, MPK_BF16, "wo", MPK_IO_DEVICE, &w), MPK_OK);
    cr_assert_eq(mpk_new_tensor(k, 2, (int64_t[]){T, 2 * 256}, MPK_F32, "part", MPK_IO_DEVICE, &part), MPK_OK);
    cr_assert_eq(mpk_new_tensor(k, 2, (int64_t[]){T, 3 * 256}, MPK_F32, "bad", MPK_IO_DEVICE, &bad), MPK_OK);
    mpk_attention_desc d = {.qkv = qkv, .k_cache = kc, .v_cache = vc, .num_q_heads = 16,
                            .num_kv_heads = 2, .head_dim = 128};
    // 64 rows x 8 heads x 128 = 128 KiB of outputs on chip: over the bound.
    cr_expect_eq(mpk_attention_linear_layer(k, &d, w, part, (mpk_dim3){4, 2, 1}, (mpk_dim3){0, 0, 0}, "ao"),
                 MPK_ERR_LIMIT);
    cr_expect(strstr(mpk_last_error(k), "on chip") != NULL, "%s", mpk_last_error(k));
    cr_expect_eq(mpk_attention_linear_layer(k, &d, w, bad, (mpk_dim3){4, 2, 1}, (mpk_dim3){0, 0, 0}, "ao"),
                 MPK_ERR_SHAPE);
    cr_expect(strstr(mpk_last_error(k), "partial") != NULL, "%s", mpk_last_error(k));
    cr_expect_eq(mpk_attention_linear_layer(k, &d, w, part, (mpk_dim3){4, 3, 1}, (mpk_dim3){0, 0, 0}, "ao"),
                 MPK_ERR_SHAPE);
    cr_expect_eq(mpk_attention_linear_layer(k, &d, w, part, (mpk_dim3){3, 2, 1}, (mpk_dim3){0, 0, 0}, "ao"),
                 MPK_ERR_SHAPE);
    cr_expect_eq(mpk_attention_linear_layer(k, NULL, w, part, (mpk_dim3){4, 2, 1}, (mpk_dim3){0, 0, 0}, "ao"),
                 MPK_ERR_INVALID_ARG);
    cr_assert_eq(mpk_new_tensor(k, 2, (int64_t[]){T, 256}, MPK_BF16, "x", MPK_IO_DEVICE, &x), MPK_OK);
    cr_assert_eq(mpk_new_tensor(k, 1, (int64_t[]){256}, MPK_BF16, "nw", MPK_IO_DEVICE, &nw), MPK_OK);
    cr_assert_eq(mpk_new_tensor(k, 2, (int64_t[]){64, 256}, MPK_BF16, "wg", MPK_IO_DEVICE, &wg), MPK_OK);
    cr_assert_eq(mpk_new_tensor(k, 2, (int64_t[]){T, 64}, MPK_BF16, "out", MPK_IO_DEVICE, &out), MPK_OK);
    cr_assert_eq(mpk_new_tensor(k, 2, (int64_t[]){T, 256}, MPK_BF16, "xo", MPK_IO_DEVICE, &xo), MPK_OK);
    mpk_tensor *odd;
    cr_assert_eq(mpk_new_tensor(k, 2, (int64_t[]){T, 300}, MPK_F32, "odd", MPK_IO_DEVICE, &odd), MPK_OK);
    cr_expect_eq(mpk_residual_rmsnorm_linear_layer(k, x, odd, nw, wg, out, xo, 1e-6f, (mpk_dim3){4, 1, 1},
                                                   (mpk_dim3){0, 0, 0}, "gu"), MPK_ERR_SHAPE);
    cr_expect(strstr(mpk_last_error(k), "multiple") != NULL, "%s", mpk_last_error(k));
    cr_expect_eq(mpk_residual_rmsnorm_linear_layer(k, x, part, nw, wg, out, x, 1e-6f, (mpk_dim3){4, 1, 1},
                                                   (mpk_dim3){0, 0, 0}, "gu"), MPK_ERR_INVALID_ARG);
    cr_expect_eq(mpk_residual_rmsnorm_linear_layer(k, x, part, nw, wg, out, xo, 0.0f, (mpk_dim3){4, 1, 1},
                                                   (mpk_dim3){0, 0, 0}, "gu"), MPK_ERR_INVALID_ARG);
    cr_expect_eq(mpk_residual_rmsnorm_linear_layer(k, x, part, nw, wg, out, xo, 1e-6f, (mpk_dim3){5, 1, 1},
                                                   (mpk_dim3){0, 0, 0}, "gu"), MPK_ERR_SHAPE);
    cr_expect_eq(mpk_residual_rmsnorm_linear_layer(k, x, part, nw, wg, out, xo, 1e-6f, (mpk_dim3){4, 1, 1},
                                                   (mpk_dim3){0, 0, 0}, "gu"), MPK_OK, "%s", mpk_last_error(k));
    mpk_build_options o = mpk_build_default_options();
    o.attention_output = 7;
    expect_build_rejects(&o, "attention_output");
    mpk_kernel_free(k);
}
