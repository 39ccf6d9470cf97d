// cr_shim.h — just enough of Criterion's macros to build a test file of tests/ into a standalone
// program, for the GPU machine (its image has no Criterion). Used with -include by tests/gpu/run.sh;
// tests/gpu/cr_shim_main.c runs the registered tests. Failures are counted and printed.
#ifndef MPK_CR_SHIM_H
#define MPK_CR_SHIM_H
#define MPK_CR_SHIM 1
#include <setjmp.h>
#include <stdio.h>

extern jmp_buf mpk_shim_jmp;
extern int mpk_shim_failures;
void mpk_shim_register(const char *name, void (*fn)(void));
void mpk_shim_report(const char *kind, const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#define MPK_SHIM_CHECK(fatal, cond, ...)                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            mpk_shim_failures++;                                                           \
            mpk_shim_report(fatal ? "ASSERT" : "EXPECT", __FILE__, __LINE__, #cond, "" __VA_ARGS__); \
            if (fatal) longjmp(mpk_shim_jmp, 1);                                           \
        }                                                                                  \
    } while (0)
#define cr_assert(cond, ...) MPK_SHIM_CHECK(1, cond, __VA_ARGS__)
#define cr_expect(cond, ...) MPK_SHIM_CHECK(0, cond, __VA_ARGS__)
#define cr_assert_eq(a, b, ...) MPK_SHIM_CHECK(1, (a) == (b), __VA_ARGS__)
#define cr_expect_eq(a, b, ...) MPK_SHIM_CHECK(0, (a) == (b), __VA_ARGS__)
#define cr_expect_leq(a, b, ...) MPK_SHIM_CHECK(0, (a) <= (b), __VA_ARGS__)
#define cr_log_info(...) (printf("  info: " __VA_ARGS__), printf("\n"))
#define cr_skip_test(...) do { printf("  skipped: " __VA_ARGS__); printf("\n"); longjmp(mpk_shim_jmp, 2); } while (0)
#define Test(suite, name, ...)                                                             \
    static void mpk_shim_##suite##_##name(void);                                           \
    __attribute__((constructor)) static void mpk_shim_reg_##suite##_##name(void) {         \
        mpk_shim_register(#suite "/" #name, mpk_shim_##suite##_##name);                   \
    }                                                                                      \
    static void mpk_shim_##suite##_##name(void)
#endif
