// cr_shim_main.c — runs the tests registered through tests/gpu/cr_shim.h whose name matches the
// first argument (a prefix, e.g. "model/e2e_real"); prints one line per test and a summary.
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

jmp_buf mpk_shim_jmp;
int mpk_shim_failures;
static struct { const char *name; void (*fn)(void); } tests[256];
static int ntests;

void mpk_shim_register(const char *name, void (*fn)(void));
void mpk_shim_report(const char *kind, const char *file, int line, const char *cond, const char *fmt, ...);

void mpk_shim_register(const char *name, void (*fn)(void)) {
    if (ntests < 256) tests[ntests].name = name, tests[ntests++].fn = fn;
}

void mpk_shim_report(const char *kind, const char *file, int line, const char *cond, const char *fmt, ...) {
    printf("  %s failed at %s:%d: %s", kind, file, line, cond);
    if (fmt && *fmt) {
        va_list ap;
        va_start(ap, fmt);
        printf(": ");
        vprintf(fmt, ap);
        va_end(ap);
    }
    printf("\n");
    fflush(stdout);
}

int main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : "";
    int passed = 0, failed = 0, skipped = 0;
    for (int i = 0; i < ntests; i++) {
        if (strncmp(tests[i].name, filter, strlen(filter))) continue;
        int before = mpk_shim_failures;
        printf("RUN  %s\n", tests[i].name);
        fflush(stdout);
        int r = setjmp(mpk_shim_jmp);
        if (r == 0) tests[i].fn();
        if (r == 2) skipped++;
        else if (mpk_shim_failures > before) failed++, printf("FAIL %s\n", tests[i].name);
        else passed++, printf("PASS %s\n", tests[i].name);
        fflush(stdout);
    }
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
