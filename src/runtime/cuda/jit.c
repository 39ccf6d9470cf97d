// jit.c — builds the generated megakernel with nvcc into a shared object, cached on disk under
// $MPK_CACHE_DIR, params.cache_dir or ~/.cache/mpk by a hash of the source, the flags and the
// compiler's version, written atomically (temporary file + rename) so concurrent builds are safe.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runtime/cuda/cuda_internal.h"

// ---- finding nvcc ---------------------------------------------------------------------------------

static int is_executable(const char *path) { return access(path, X_OK) == 0; }

int mpk_cuda_find_nvcc(char *path, size_t cap) {
    const char *home = getenv("CUDA_HOME");
    if (home && *home) {
        snprintf(path, cap, "%s/bin/nvcc", home);
        if (is_executable(path)) return 1;
    }
    snprintf(path, cap, "/usr/local/cuda/bin/nvcc");
    if (is_executable(path)) return 1;
    const char *env = getenv("PATH");
    if (env) {
        const char *p = env;
        while (*p) {
            const char *colon = strchr(p, ':');
            size_t n = colon ? (size_t)(colon - p) : strlen(p);
            if (n > 0 && n + 6 < cap) {
                snprintf(path, cap, "%.*s/nvcc", (int)n, p);
                if (is_executable(path)) return 1;
            }
            p += n;
            if (*p == ':') p++;
        }
    }
    path[0] = 0;
    return 0;
}

// ---- helpers --------------------------------------------------------------------------------------

static uint64_t fnv1a(uint64_t h, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

// Paths go into a shell command in single quotes; refuse the one character that would break out.
static int shell_safe(const char *s) { return strchr(s, '\'') == NULL; }

// Runs a shell command, capturing stdout and stderr (up to cap - 1 bytes). Returns the exit
// status, or -1 when it could not be started.
static int run_capture(const char *cmd, char *out, size_t cap) {
    out[0] = 0;
    FILE *f = popen(cmd, "r");
    if (!f) return -1;
    size_t len = 0;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        size_t room = cap - 1 - len;
        if (n > room) n = room;
        memcpy(out + len, buf, n);
        len += n;
        out[len] = 0;
    }
    int st = pclose(f);
    return st == -1 ? -1 : (WIFEXITED(st) ? WEXITSTATUS(st) : 128);
}

static int mkdir_p(const char *dir) {
    char tmp[1024];
    if (snprintf(tmp, sizeof tmp, "%s", dir) >= (int)sizeof tmp) return -1;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
    return 0;
}

static void cache_dir(const mpk_kernel *k, char *dir, size_t cap) {
    const char *env = getenv("MPK_CACHE_DIR");
    if (env && *env)
        snprintf(dir, cap, "%s", env);
    else if (k->params.cache_dir && *k->params.cache_dir)
        snprintf(dir, cap, "%s", k->params.cache_dir);
    else
        snprintf(dir, cap, "%s/.cache/mpk", getenv("HOME") ? getenv("HOME") : "/tmp");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// The first `lines` lines of s (in place).
static const char *first_lines(char *s, int lines) {
    char *p = s;
    for (int i = 0; i < lines && p; i++) {
        p = strchr(p, '\n');
        if (p) p++;
    }
    if (p && *p) *p = 0;
    return s;
}

// ---- build ----------------------------------------------------------------------------------------

mpk_status mpk_cuda_build(mpk_kernel *k, const char *source, const char *arch, char *so_path,
                          size_t cap) {
    char nvcc[1024];
    if (!mpk_cuda_find_nvcc(nvcc, sizeof nvcc))
        return mpk_fail(k, MPK_ERR_CUDA, "CUDA backend: nvcc not found in $CUDA_HOME/bin, "
                        "/usr/local/cuda/bin or PATH");
    if (strncmp(arch, "sm_", 3) != 0 || strlen(arch) > 8 || !shell_safe(arch))
        return mpk_fail(k, MPK_ERR_INVALID_ARG, "CUDA backend: cuda_arch '%s' is not of the form sm_XY", arch);
    // MPK_NVCC_FLAGS: extra nvcc flags (e.g. -D overrides of the device headers' tuning
    // constants) for measuring build-time variants side by side; they enter the cache hash.
    const char *extra = getenv("MPK_NVCC_FLAGS");
    if (!extra) extra = "";
    if (strlen(extra) > 512 || !shell_safe(extra))
        return mpk_fail(k, MPK_ERR_INVALID_ARG, "CUDA backend: MPK_NVCC_FLAGS is longer than 512 "
                        "characters or contains a quote");
    char flags[1024];
    snprintf(flags, sizeof flags, "-O3 -std=c++17 -Xcompiler -fPIC -gencode=arch=compute_%s,code=sm_%s %s",
             arch + 3, arch + 3, extra);

    char *out = malloc(65536);
    if (!out) return mpk_fail(k, MPK_ERR_NOMEM, "CUDA backend: out of memory");
    char cmd[8192];
    if (!shell_safe(nvcc)) {
        free(out);
        return mpk_fail(k, MPK_ERR_CUDA, "CUDA backend: nvcc path %s contains a quote", nvcc);
    }
    snprintf(cmd, sizeof cmd, "'%s' --version 2>&1", nvcc);
    if (run_capture(cmd, out, 65536) != 0) {
        mpk_status st = mpk_fail(k, MPK_ERR_CUDA, "CUDA backend: '%s --version' failed: %s", nvcc,
                                 first_lines(out, 5));
        free(out);
        return st;
    }
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv1a(h, source, strlen(source));
    h = fnv1a(h, flags, strlen(flags));
    h = fnv1a(h, out, strlen(out));

    char dir[1024];
    cache_dir(k, dir, sizeof dir);
    if (!shell_safe(dir)) {
        free(out);
        return mpk_fail(k, MPK_ERR_IO, "CUDA backend: cache directory %s contains a quote", dir);
    }
    if (mkdir_p(dir) != 0) {
        free(out);
        return mpk_fail(k, MPK_ERR_IO, "CUDA backend: cannot create cache directory %s: %s", dir,
                        strerror(errno));
    }
    snprintf(so_path, cap, "%s/mpk-%016llx-%s.so", dir, (unsigned long long)h, arch);
    if (access(so_path, R_OK) == 0) {
        mpk_log(k, MPK_LOG_INFO, "CUDA: megakernel cache hit %s", so_path);
        free(out);
        return MPK_OK;
    }

    // Unique temporaries in the cache directory, renamed into place once complete.
    char cu[1100], tmp_so[1100];
    snprintf(cu, sizeof cu, "%s/mpk-%016llx-%s.cu", dir, (unsigned long long)h, arch);
    char cu_tmp[1150];
    snprintf(cu_tmp, sizeof cu_tmp, "%s.%ld.tmp.cu", cu, (long)getpid());
    snprintf(tmp_so, sizeof tmp_so, "%s.%ld.tmp", so_path, (long)getpid());
    FILE *f = fopen(cu_tmp, "w");
    if (!f || fputs(source, f) < 0 || fclose(f) != 0) {
        if (f) fclose(f);
        free(out);
        return mpk_fail(k, MPK_ERR_IO, "CUDA backend: cannot write %s: %s", cu_tmp, strerror(errno));
    }
    double t0 = now_s();
    // Two translation units of the one source, compiled at once (runtime.cuh: part 1 the decode
    // kernel and the host ABI, part 2 the prompt kernel), then linked into the .so. Part 2's
    // output is shown only when it failed: its warnings (the host ABI's helpers it leaves
    // unused) would push the error that matters out of the first lines of the message.
    int len = snprintf(cmd, sizeof cmd,
                       "O='%s'; '%s' %s -DMPK_KERNEL_PART=2 -c -o \"$O.2.o\" '%s' > \"$O.2.log\" 2>&1 & p=$!; "
                       "'%s' %s -DMPK_KERNEL_PART=1 -c -o \"$O.1.o\" '%s' 2>&1; r1=$?; wait $p; r2=$?; "
                       "[ $r2 -eq 0 ] || cat \"$O.2.log\"; r=1; [ $r1 -eq 0 ] && [ $r2 -eq 0 ] && '%s' -shared -o \"$O\" "
                       "\"$O.1.o\" \"$O.2.o\" 2>&1 && r=0; rm -f \"$O.1.o\" \"$O.2.o\" \"$O.2.log\"; exit $r",
                       tmp_so, nvcc, flags, cu_tmp, nvcc, flags, cu_tmp, nvcc);
    if (len < 0 || (size_t)len >= sizeof cmd) {
        unlink(cu_tmp);
        free(out);
        return mpk_fail(k, MPK_ERR_INVALID_ARG, "CUDA backend: the nvcc command line is longer than %zu "
                        "characters (paths of nvcc and the cache directory)", sizeof cmd - 1);
    }
    mpk_log(k, MPK_LOG_DEBUG, "CUDA: %s", cmd);
    int rc = run_capture(cmd, out, 65536);
    if (rc != 0) {
        unlink(tmp_so);
        mpk_status st = mpk_fail(k, MPK_ERR_CUDA, "CUDA backend: nvcc failed (exit %d) on %s: %s", rc,
                                 cu_tmp, first_lines(out, 12));
        free(out);
        return st;  // the .cu stays for inspection
    }
    rename(cu_tmp, cu);
    if (rename(tmp_so, so_path) != 0) {
        mpk_status st = mpk_fail(k, MPK_ERR_IO, "CUDA backend: cannot rename %s: %s", tmp_so, strerror(errno));
        unlink(tmp_so);
        free(out);
        return st;
    }
    mpk_log(k, MPK_LOG_INFO, "CUDA: compiled megakernel for %s in %.1f s -> %s", arch, now_s() - t0,
            so_path);
    free(out);
    return MPK_OK;
}
