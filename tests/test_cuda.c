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
    for (int32_t v = 0; v < k->graph.num_variants; v++) {
        char want[96];
        snprintf(want, sizeof want, "case %d: mpk_variant_%d(d, b, nt); return true;", v, v);
        cr_expect(strstr(src, want), "no dispatch case for variant %d", v);
        snprintf(want, sizeof want, "void mpk_variant_%d(const mpk_task_desc &d, mpk_batch *b, int32_t nt)", v);
        cr_expect(strstr(src, want), "no body for variant %d", v);
    }
    const char *headers[] = {"src/kernels/task.h", "src/runtime/batch.h", "src/runtime/cuda/abi.cuh",
                             "src/kernels/cuda/linear.cuh", "src/kernels/cuda/argmax.cuh",
                             "src/runtime/cuda/runtime.cuh"};
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
