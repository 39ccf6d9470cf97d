// device.c — what the CPU backend tells about its device: the processor's name and the read
// bandwidth that plain streaming reads by all worker threads reach (the roofline for decode).
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/internal.h"
#include "runtime/cpu/cpu.h"

typedef struct read_job {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
} read_job;

static void *read_slice(void *arg) {
    read_job *j = arg;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= j->n; i += 4) {
        s0 += j->p[i];
        s1 += j->p[i + 1];
        s2 += j->p[i + 2];
        s3 += j->p[i + 3];
    }
    j->sum = s0 + s1 + s2 + s3;
    return NULL;
}

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

mpk_status mpk_cpu_device_info(mpk_kernel *k, char *name, size_t name_len, double *read_bw) {
    snprintf(name, name_len, "CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "model name", 10)) {
                char *c = strchr(line, ':');
                if (c) {
                    c += 2;
                    c[strcspn(c, "\n")] = 0;
                    snprintf(name, name_len, "%s", c);
                }
                break;
            }
        fclose(f);
    }
    if (!read_bw) return MPK_OK;
    size_t bytes = (size_t)256 << 20, n = bytes / 8;
    uint64_t *buf = malloc(bytes);
    if (!buf) return mpk_fail(k, MPK_ERR_NOMEM, "device_info: no memory for the bandwidth probe");
    for (size_t i = 0; i < n; i++) buf[i] = i;
    int32_t W = k->params.num_workers < 64 ? k->params.num_workers : 64;
    read_job jobs[64];
    pthread_t th[64];
    int started[64];
    double best = 0;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = seconds();
        for (int32_t w = 0; w < W; w++) {
            jobs[w].p = buf + n * (size_t)w / (size_t)W;
            jobs[w].n = n / (size_t)W;
            started[w] = pthread_create(&th[w], NULL, read_slice, &jobs[w]) == 0;
            if (!started[w]) read_slice(&jobs[w]);  // no thread: read it here
        }
        for (int32_t w = 0; w < W; w++)
            if (started[w]) pthread_join(th[w], NULL);
        double dt = seconds() - t0;
        if (rep > 0 && (double)bytes / dt > best) best = (double)bytes / dt;
    }
    uint64_t sink = 0;
    for (int32_t w = 0; w < W; w++) sink += jobs[w].sum;
    free(buf);
    *read_bw = best + (double)(sink & 0);
    return MPK_OK;
}
