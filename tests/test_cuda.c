// test_cuda.c — the CUDA backend without a GPU (CI has none): code generation from a compiled
// graph (every variant gets a body and a dispatch case, every device header is inlined), and the
// compile-only path (params.cuda_arch): nvcc builds the megakernel into the cache, a second
// build is a cache hit, and mpk_run is refused with a clear error. The GPU itself is tested by
// tests/gpu/run.sh on the GPU machine.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/internal.h"
#include "mpk.h"
#include "runtime/cuda/abi.cuh"
#include "runtime/cuda/cuda_internal.h"

static const mpk_dim3 NOBLOCK = {0, 0, 0};

// x (T, 72) -> rmsnorm_linear (72 -> 40, 4 tasks) -> silu_mul_linear_residual -> argmax.
static mpk_kernel *small_graph(mpk_backend be, const char *arch, const char *cache, uint16_t *w) {
    mpk_kernel_params p = mpk_kernel_default_params();
    p.backend = be;
    p.cuda_arch = arch;
    p.cache_dir = cache;
    p.max_batched_tokens = 8;
    p.max_seq_len = 16;
    mpk_kernel *k = NULL;
    cr_assert_eq(mpk_kernel_create(&p, &k), MPK_OK);
    for (int i = 0; i < 72 * 72; i++) w[i] = (uint16_t)(0x3c00 + (i % 97));
    mpk_tensor *x, *nw, *w1, *w2, *h, *o, *ids;
    cr_assert_eq(mpk_attach_input(k, w, 2, (int64_t[]){8, 72}, MPK_BF16, "x", &x), MPK_OK);
    cr_assert_eq(mpk_attach_input(k, w, 1, (int64_t[]){72}, MPK_BF16, "nw", &nw), MPK_OK);
    cr_assert_eq(mpk_attach_input(k, w, 2, (int64_t[]){40, 72}, MPK_BF16, "w1", &w1), MPK_OK);
    cr_assert_eq(mpk_attach_input(k, w, 2, (int64_t[]){72, 20}, MPK_BF16, "w2", &w2), MPK_OK);
    cr_assert_eq(mpk_new_tensor(k, 2, (int64_t[]){8, 40}, MPK_BF16, "h", MPK_IO_DEVICE, &h), MPK_OK);
    cr_assert_eq(mpk_new_tensor(k, 2, (int64_t[]){8, 72}, MPK_BF16, "o", MPK_IO_DEVICE, &o), MPK_OK);
    cr_assert_eq(mpk_meta_tensor(k, MPK_META_OUTPUT_IDS, &ids), MPK_OK);
    cr_assert_eq(mpk_rmsnorm_linear_layer(k, x, nw, w1, h, 1e-6f, (mpk_dim3){4, 1, 1}, NOBLOCK, "up"), MPK_OK);
    cr_assert_eq(mpk_silu_mul_linear_with_residual_layer(k, h, w2, x, o, (mpk_dim3){3, 2, 1}, NOBLOCK, "down"), MPK_OK);
    cr_assert_eq(mpk_argmax_layer(k, o, ids, (mpk_dim3){4, 1, 1}, NOBLOCK, "argmax"), MPK_OK);
    return k;
}

Test(cuda, codegen_covers_every_variant) {
    static uint16_t w[72 * 72];
    mpk_kernel *k = small_graph(MPK_BACKEND_CPU, NULL, NULL, w);
    cr_assert_eq(mpk_compile(k), MPK_OK, "%s", mpk_last_error(k));
    char *src = NULL;
    cr_assert_eq(mpk_cuda_codegen(k, &src), MPK_OK, "%s", mpk_last_error(k));
    cr_assert_gt(k->graph.num_variants, 2);
    int products = 0;
    for (int32_t v = 0; v < k->graph.num_variants; v++) {
        char want[112];
        snprintf(want, sizeof want, "case %d: mpk_variant_%d(d, b, nt, nd); return true;", v, v);
        cr_expect(strstr(src, want), "no dispatch case for variant %d", v);
        snprintf(want, sizeof want, "void mpk_variant_%d(const mpk_task_desc &d, mpk_batch *b, int32_t nt, int32_t nd)", v);
        cr_expect(strstr(src, want), "no body for variant %d", v);
        // A matrix product's prompt rows have a case of their own (the tensor cores); no other task's.
        const int32_t t = k->graph.variants[v].type;
        const int product = mpk_task_is_product(t);
        products += product;
        snprintf(want, sizeof want, "case %d: mpk_variant_prompt_%d(d, b, nt, nd); return;", v, v);
        cr_expect(!strstr(src, want) == !product, "variant %d (%s): prompt case %s", v, mpk_task_type_name(t),
                  product ? "missing" : "where none belongs");
    }
    cr_expect_gt(products, 0);
    const char *headers[] = {"src/kernels/task.h", "src/runtime/batch.h", "src/runtime/cuda/abi.cuh",
                             "src/kernels/cuda/gemm.cuh", "src/kernels/cuda/linear.cuh",
                             "src/kernels/cuda/argmax.cuh", "src/runtime/cuda/runtime.cuh"};
    for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
        char want[96];
        snprintf(want, sizeof want, "// ==== %s ====", headers[i]);
        cr_expect(strstr(src, want), "header %s is not inlined", headers[i]);
    }
    // Quoted includes are commented out: the .cu stands alone.
    cr_expect(!strstr(src, "\n#include \""), "a quoted #include survived");
    free(src);
    mpk_kernel_free(k);
}

// The preload (what a task starts before its event fires): one function for every graph, a case
// for each attention variant of one kv head per task (its keys and values, mpk_attention_preload
// with the variant's G, D, page size and page stride), and a default that says nothing was
// preloaded — so a stale preload of an earlier task is never used.
Test(cuda, codegen_preloads_attention) {
    mpk_model_config cfg;
    cr_assert_eq(mpk_model_config_preset("qwen3-tiny", &cfg), MPK_OK);
    char err[256] = "";
    mpk_model *m = NULL;
    cr_assert_eq(mpk_model_create_random(&cfg, 1, &m, err, sizeof err), MPK_OK, "%s", err);
    mpk_kernel_params p = mpk_kernel_default_params();
    p.backend = MPK_BACKEND_CPU;
    p.max_seq_len = 64;
    p.page_size = 16;
    mpk_kernel *k = NULL;
    cr_assert_eq(mpk_kernel_create(&p, &k), MPK_OK);
    mpk_build_options bo = mpk_build_default_options();
    bo.attention_output = MPK_ATTN_OUT_SEPARATE;  // (the fused attention has no preload)
    cr_assert_eq(mpk_model_build(m, k, &bo), MPK_OK, "%s", mpk_last_error(k));
    cr_assert_eq(mpk_compile(k), MPK_OK, "%s", mpk_last_error(k));
    char *src = NULL;
    cr_assert_eq(mpk_cuda_codegen(k, &src), MPK_OK, "%s", mpk_last_error(k));
    cr_expect(strstr(src, "__device__ void mpk_preload_task(const mpk_task_desc &d, const mpk_batch *b, int32_t nt) {"),
              "no preload function");
    int attention = 0;
    for (int32_t v = 0; v < k->graph.num_variants; v++) {
        const mpk_variant *var = &k->graph.variants[v];
        char want[96];
        snprintf(want, sizeof want, "    case %d: mpk_attention_preload(", v);
        const char *at = strstr(src, want);
        if (var->type == MPK_TASK_ATTENTION && var->p[9] == 1) {
            attention++;
            cr_expect(at, "attention variant %d has no preload case", v);
            char args[96];
            snprintf(args, sizeof args, "b, nt, %d, %d, %d, %d); return;", var->p[0], var->p[1], var->p[4], var->p[5]);
            cr_expect(at && strstr(at, args) && strstr(at, args) < strchr(at, '\n'),
                      "variant %d's preload does not pass G, D, page size, page stride (%s)", v, args);
        } else {
            cr_expect(!at, "variant %d (not attention) has a preload case", v);
        }
    }
    cr_expect_gt(attention, 0, "the model's graph has no attention variant");
    cr_expect(strstr(src, "    default:\n        if (threadIdx.x == 0) mpk_smem()->pre_k = (const void *)0;"),
              "the preload's default case does not clear the preloaded state");
    free(src);
    mpk_kernel_free(k);
    mpk_model_free(m);
}

// The weight-stream plan: chunks of whole rows that cover the task's weights exactly, each at
// most one ring slot; tasks it cannot stream keep 0 chunks (they read their weights themselves).
Test(cuda, stream_plan_chunks_cover_whole_rows) {
    const struct {
        int32_t type, K, n, ld_w;
        uint64_t addr;
        int streams;
    } cases[] = {
        {MPK_TASK_RMSNORM_LINEAR, 1024, 32, 1024, 0x10000, 1},      // 16 rows a chunk, 2 chunks
        {MPK_TASK_LINEAR_RESIDUAL, 4096, 32, 4096, 0x20000, 1},     // 4 rows a chunk
        {MPK_TASK_SILU_MUL_LINEAR_RESIDUAL, 12288, 33, 12288, 0x30000, 1},  // 1 row (24 KB) a chunk
        {MPK_TASK_LINEAR, 1000, 7, 1000, 0x40000, 1},               // 2000-byte rows, last chunk short
        {MPK_TASK_LINEAR, 20000, 4, 20000, 0x50000, 0},             // a row larger than a slot
        {MPK_TASK_LINEAR, 1024, 8, 2048, 0x60000, 0},               // rows not contiguous
        {MPK_TASK_LINEAR, 1024, 8, 1024, 0x70008, 0},               // weights not 16-byte aligned
        {MPK_TASK_LINEAR, 100, 8, 100, 0x80000, 0},                 // 200-byte rows: not 16-byte multiples
        {MPK_TASK_EMBED, 1024, 8, 1024, 0x90000, 0},                // not a GEMV
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mpk_task_desc d;
        memset(&d, 0, sizeof d);
        mpk_variant v;
        memset(&v, 0, sizeof v);
        d.type = (uint16_t)cases[i].type;
        v.type = cases[i].type;
        v.p[0] = cases[i].K;
        v.p[1] = cases[i].n;
        v.p[3] = cases[i].ld_w;
        d.prefetch_operand = 1;
        d.operand[1] = cases[i].addr;
        d.prefetch_bytes = (uint32_t)(2 * cases[i].K * cases[i].n);
        d.stream_chunks = 77;  // must be overwritten either way
        mpk_cuda_plan_stream(&d, &v);
        if (!cases[i].streams) {
            cr_expect_eq(d.stream_chunks, 0, "case %zu: streams %u chunks", i, d.stream_chunks);
            continue;
        }
        const uint32_t row = 2u * (uint32_t)cases[i].K, c = d.stream_chunks, cb = d.stream_chunk_bytes;
        cr_expect_gt(c, 0, "case %zu", i);
        cr_expect(cb > 0 && cb % row == 0 && cb <= MPK_DEV_STREAM_SLOT_BYTES, "case %zu: chunk of %u bytes", i, cb);
        cr_expect(cb % 16 == 0, "case %zu: chunk of %u bytes", i, cb);
        cr_expect((uint64_t)(c - 1) * cb < d.prefetch_bytes && (uint64_t)c * cb >= d.prefetch_bytes,
                  "case %zu: %u chunks of %u bytes for %u bytes", i, c, cb, d.prefetch_bytes);
        cr_expect_eq(cb, MPK_DEV_STREAM_SLOT_BYTES / row * row, "case %zu: chunks not as full as a slot allows", i);
    }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

Test(cuda, compile_only_build_cache_and_refused_run, .timeout = 300) {
    char nvcc[1024];
    if (!mpk_cuda_find_nvcc(nvcc, sizeof nvcc)) cr_skip_test("no nvcc: the CUDA toolkit is not installed");
    char cache[] = "/tmp/mpk-test-cuda-XXXXXX";
    cr_assert(mkdtemp(cache));
    static uint16_t w[72 * 72];
    mpk_kernel *k = small_graph(MPK_BACKEND_CUDA, "sm_90a", cache, w);
    cr_assert_eq(mpk_compile(k), MPK_OK, "%s", mpk_last_error(k));
    cr_assert_eq(mpk_kernel_backend(k), MPK_BACKEND_CUDA);
    int32_t id;
    cr_assert_eq(mpk_request_add(k, (int32_t[]){1, 2, 3}, 3, 2, NULL, &id), MPK_OK, "%s", mpk_last_error(k));
    cr_expect_eq(mpk_run(k, NULL, NULL), MPK_ERR_UNSUPPORTED);
    cr_expect(strstr(mpk_last_error(k), "cuda_arch"), "message: %s", mpk_last_error(k));
    mpk_kernel_free(k);

    double t0 = now_s();
    k = small_graph(MPK_BACKEND_CUDA, "sm_90a", cache, w);
    cr_assert_eq(mpk_compile(k), MPK_OK, "%s", mpk_last_error(k));
    cr_expect_lt(now_s() - t0, 2.0, "a cached build took %.2f s", now_s() - t0);
    mpk_kernel_free(k);

    // A bad architecture is a clear error, not a crash.
    k = small_graph(MPK_BACKEND_CUDA, "compute_xx", cache, w);
    cr_expect_eq(mpk_compile(k), MPK_ERR_INVALID_ARG);
    mpk_kernel_free(k);
    // Extra nvcc flags that the shell would misread are refused by name.
    setenv("MPK_NVCC_FLAGS", "-DX='1'", 1);
    k = small_graph(MPK_BACKEND_CUDA, "sm_90a", cache, w);
    cr_expect_eq(mpk_compile(k), MPK_ERR_INVALID_ARG);
    cr_expect(strstr(mpk_last_error(k), "MPK_NVCC_FLAGS"), "message: %s", mpk_last_error(k));
    mpk_kernel_free(k);
    unsetenv("MPK_NVCC_FLAGS");
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", cache);
    cr_expect_eq(system(cmd), 0);
}

