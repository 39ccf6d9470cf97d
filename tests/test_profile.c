// test_profile.c — the task timeline on the CPU backend: one record per task executed, counts that
// match the compiled graph, times monotone per worker, weight slices that add up to the model's
// matrices, nothing recorded when off, overflow flagged; and `mpk profile` writing a valid Chrome
// trace and an SVG picture.
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "mpk.h"

static mpk_kernel *build_tiny(mpk_model **model, int profiling, int capacity, int schedulers) {
    mpk_model_config cfg;
    cr_assert_eq(mpk_model_config_preset("qwen3-tiny", &cfg), MPK_OK);
    char err[256];
    cr_assert_eq(mpk_model_create_random(&cfg, 7, model, err, sizeof err), MPK_OK, "%s", err);
    mpk_kernel_params p = mpk_kernel_default_params();
    p.backend = MPK_BACKEND_CPU;
    p.num_workers = 3;
    p.num_local_schedulers = schedulers;
    p.max_batched_tokens = 8;
    p.max_seq_len = 64;
    p.profiling = profiling;
    p.profile_capacity = capacity;
    mpk_kernel *k = NULL;
    cr_assert_eq(mpk_kernel_create(&p, &k), MPK_OK);
    mpk_build_options bo = mpk_build_default_options();
    cr_assert_eq(mpk_model_build(*model, k, &bo), MPK_OK, "%s", mpk_last_error(k));
    cr_assert_eq(mpk_compile(k), MPK_OK, "%s", mpk_last_error(k));
    int32_t prompt[5] = {1, 2, 3, 4, 5};
    cr_assert_eq(mpk_request_add(k, prompt, 5, 6, NULL, NULL), MPK_OK);
    cr_assert_eq(mpk_run(k, NULL, NULL), MPK_OK, "%s", mpk_last_error(k));
    return k;
}

Test(profile, one_record_per_task_monotone) {
    for (int schedulers = 0; schedulers < 2; schedulers++) {
        mpk_model *m;
        mpk_kernel *k = build_tiny(&m, 1, 4096, schedulers);
        mpk_graph_stats gs;
        mpk_run_stats rs;
        cr_assert_eq(mpk_graph_get_stats(k, &gs), MPK_OK);
        cr_assert_eq(mpk_run_get_stats(k, &rs), MPK_OK);
        const mpk_profile_record *r;
        int64_t n;
        int overflow = 1;
        cr_assert_eq(mpk_profile_get(k, &r, &n, &overflow), MPK_OK);
        cr_expect_eq(overflow, 0);
        cr_expect_eq(n, (int64_t)gs.num_tasks * rs.iterations, "%lld records for %d tasks x %d iterations",
                     (long long)n, gs.num_tasks, rs.iterations);
        // Every (task, iteration) exactly once; per worker, records are in time order.
        char *seen = calloc((size_t)gs.num_tasks * (size_t)(rs.iterations + 1), 1);
        int64_t last_end[64] = {0};
        for (int64_t i = 0; i < n; i++) {
            cr_assert(r[i].task >= 0 && r[i].task < gs.num_tasks);
            cr_assert(r[i].iteration >= 1 && r[i].iteration <= rs.iterations);
            cr_assert(r[i].worker < 3);
            cr_expect_leq(r[i].start_ns, r[i].end_ns);
            cr_expect_geq(r[i].wait_ns, 0);
            cr_expect_eq(r[i].inputs_ns, -1, "the CPU backend does not mark phases");
            cr_expect_eq(r[i].body_ns, -1);
            cr_expect_geq(r[i].start_ns, last_end[r[i].worker], "worker %u goes back in time", r[i].worker);
            last_end[r[i].worker] = r[i].end_ns;
            char *s = &seen[(size_t)r[i].task * (size_t)(rs.iterations + 1) + (size_t)r[i].iteration];
            cr_expect_eq(*s, 0, "task %d iteration %d recorded twice", r[i].task, r[i].iteration);
            *s = 1;
            cr_expect_str_neq(mpk_task_type_name(r[i].task_type), "?");
            cr_expect_str_neq(mpk_layer_name(k, r[i].layer), "");
        }
        free(seen);
        // The tasks' weight slices add up to the model's matrices: every byte a decode step must
        // read but the norms and the one embedding row (mpk_model_weight_bytes_per_token).
        const mpk_model_config *c = mpk_model_get_config(m);
        int64_t sum = 0;
        for (int32_t t = 0; t < gs.num_tasks; t++) {
            cr_expect_geq(mpk_task_weight_bytes(k, t), 0);
            sum += mpk_task_weight_bytes(k, t);
        }
        const int64_t H = c->hidden_size, D = c->head_dim;
        const int64_t small = 2 * ((int64_t)c->num_layers * (2 * H + (c->qk_norm ? 2 * D : 0)) + 2 * H);
        cr_expect_eq(sum, mpk_model_weight_bytes_per_token(m) - small, "%lld weight bytes in the tasks",
                     (long long)sum);
        cr_expect_eq(mpk_task_weight_bytes(k, -1), 0);
        cr_expect_eq(mpk_task_weight_bytes(k, gs.num_tasks), 0);
        mpk_kernel_free(k);
        mpk_model_free(m);
    }
}

Test(profile, off_and_overflow) {
    mpk_model *m;
    mpk_kernel *k = build_tiny(&m, 0, 16, 1);
    const mpk_profile_record *r;
    int64_t n;
    cr_expect_eq(mpk_profile_get(k, &r, &n, NULL), MPK_ERR_STATE);
    mpk_kernel_free(k);
    mpk_model_free(m);
    k = build_tiny(&m, 1, 16, 1);  // far fewer records than tasks
    int overflow = 0;
    cr_assert_eq(mpk_profile_get(k, &r, &n, &overflow), MPK_OK);
    cr_expect_eq(overflow, 1);
    cr_expect_leq(n, 3 * 16);
    mpk_kernel_free(k);
    mpk_model_free(m);
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)len + 1);
    size_t got = fread(s, 1, (size_t)len, f);
    s[got] = 0;
    fclose(f);
    return s;
}

Test(profile, cli_writes_trace_and_picture, .timeout = 120) {
    char dir[] = "/tmp/mpk-profile-XXXXXX";
    cr_assert(mkdtemp(dir));
    char cmd[1024], trace[256], svg[256], out[256];
    snprintf(trace, sizeof trace, "%s/t.json", dir);
    snprintf(svg, sizeof svg, "%s/t.svg", dir);
    snprintf(out, sizeof out, "%s/out.txt", dir);
    snprintf(cmd, sizeof cmd, "build/mpk profile --config qwen3-tiny --backend cpu --workers 3 -n 5 -o %s > %s 2>&1", trace, out);
    cr_assert_eq(system(cmd), 0, "mpk profile failed (is build/mpk built? run from the repo root)");
    char *text = slurp(trace);
    cr_assert(text, "no trace written");
    cJSON *j = cJSON_Parse(text);
    cr_assert(j, "the trace is not valid JSON");
    cJSON *ev = cJSON_GetObjectItem(j, "traceEvents");
    cr_assert(cJSON_IsArray(ev));
    int complete = 0;
    double last_ts[16];
    for (int i = 0; i < 16; i++) last_ts[i] = -1;
    cJSON *e;
    cJSON_ArrayForEach(e, ev) {
        const char *ph = cJSON_GetStringValue(cJSON_GetObjectItem(e, "ph"));
        if (!ph || strcmp(ph, "X")) continue;
        complete++;
        int tid = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(e, "tid"));
        double ts = cJSON_GetNumberValue(cJSON_GetObjectItem(e, "ts"));
        double dur = cJSON_GetNumberValue(cJSON_GetObjectItem(e, "dur"));
        cr_assert(tid >= 0 && tid < 16);
        cr_expect_geq(dur, 0);
        cr_expect_geq(ts, last_ts[tid], "track %d goes back in time", tid);
        last_ts[tid] = ts;
    }
    char *printed = slurp(out);
    long long records = -1;
    const char *p = printed ? strstr(printed, "task records") : NULL;
    if (p) {
        while (p > printed && p[-1] != '(') p--;
        records = atoll(p);
    }
    cr_expect_eq(complete, records, "%d complete events, %lld records reported", complete, records);
    cr_expect(strstr(printed, "| rmsnorm_linear |"), "no summary table:\n%s", printed);
    char *pic = slurp(svg);
    cr_assert(pic, "no picture written");
    cr_expect(strstr(pic, "<svg") && strstr(pic, "</svg>"));
    cr_expect(strstr(pic, "attention"));
    // bench/stages.py (the step stage by stage) on this trace: one row per kind of stage, the
    // qkv projection counted once per layer, as many layers as the trace names.
    if (system("command -v python3 > /dev/null 2>&1") == 0) {
        int layers = 0;
        char seen[16][64];
        cJSON_ArrayForEach(e, ev) {
            const char *l = cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(e, "args"), "layer"));
            if (!l || !strstr(l, "qkv_proj")) continue;
            int dup = 0;
            for (int i = 0; i < layers; i++) dup |= !strcmp(seen[i], l);
            if (!dup && layers < 16) snprintf(seen[layers++], sizeof seen[0], "%s", l);
        }
        char stages[256], row[128];
        snprintf(stages, sizeof stages, "%s/stages.txt", dir);
        snprintf(cmd, sizeof cmd, "python3 bench/stages.py %s > %s 2>&1", trace, stages);
        cr_expect_eq(system(cmd), 0, "bench/stages.py failed");
        char *st = slurp(stages);
        cr_assert(st, "no stages output");
        snprintf(row, sizeof row, "| qkv_proj | rmsnorm_linear | %d |", layers);
        cr_expect(layers > 0 && strstr(st, row), "no row '%s' in:\n%s", row, st);
        cr_expect(strstr(st, "| lm_head | rmsnorm_linear | 1 |") && strstr(st, "total: spans"), "%s", st);
        free(st);
        snprintf(cmd, sizeof cmd, "python3 bench/stages.py %s/missing.json > /dev/null 2>&1", dir);
        cr_expect_neq(system(cmd), 0, "a missing trace must fail");
    }
    cJSON_Delete(j);
    free(text);
    free(printed);
    free(pic);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}

// `mpk bench -d`: decode after a D-token prompt is its own row (tgN @ dD) with a positive speed;
// lists (-d 0,40 -p 0,8) give one row per test in order, on one kernel; a negative depth and a
// malformed list are refused with the usage error.
Test(profile, cli_bench_depth, .timeout = 120) {
    char dir[] = "/tmp/mpk-bench-XXXXXX";
    cr_assert(mkdtemp(dir));
    char cmd[1024], out[256];
    snprintf(out, sizeof out, "%s/out.csv", dir);
    snprintf(cmd, sizeof cmd, "build/mpk bench --config qwen3-tiny --backend cpu --workers 2 -n 3 -p 0 -d 40 -r 1 -o csv > %s 2>&1", out);
    cr_assert_eq(system(cmd), 0, "mpk bench -d failed (is build/mpk built? run from the repo root)");
    char *text = slurp(out);
    cr_assert(text);
    const char *row = strstr(text, "\nqwen3-tiny,");
    cr_assert(row, "no result row in: %s", text);
    char test[64] = "";
    double ms = 0;
    cr_assert_eq(sscanf(row + 1, "qwen3-tiny,%*[^,],cpu,%63[^,],%lf", test, &ms), 2, "row: %s", row);
    cr_expect_str_eq(test, "tg3 @ d40");
    cr_expect_gt(ms, 0.0);
    free(text);
    snprintf(cmd, sizeof cmd, "build/mpk bench --config qwen3-tiny --backend cpu --workers 2 -n 3 -p 0,8 -d 0,40 -r 1 -o csv > %s 2>&1", out);
    cr_assert_eq(system(cmd), 0, "mpk bench with lists failed");
    text = slurp(out);
    cr_assert(text);
    const char *want[3] = {"tg3", "tg3 @ d40", "pp8"};
    row = text;
    for (int i = 0; i < 3; i++) {
        row = strstr(row, "\nqwen3-tiny,");
        cr_assert(row, "row %d missing in: %s", i, text);
        row++;
        cr_assert_eq(sscanf(row, "qwen3-tiny,%*[^,],cpu,%63[^,],%lf", test, &ms), 2, "row: %s", row);
        cr_expect_str_eq(test, want[i]);
        cr_expect_gt(ms, 0.0);
    }
    cr_expect_null(strstr(row, "\nqwen3-tiny,"), "more rows than tests: %s", text);
    free(text);
    const char *bad[2] = {"-d -1", "-d 40,x"};
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, "build/mpk bench --config qwen3-tiny --backend cpu -n 3 -p 0 %s > %s 2>&1", bad[i], out);
        const int rc = system(cmd);
        cr_expect(WIFEXITED(rc) && WEXITSTATUS(rc) == 2, "'%s' must be refused", bad[i]);
        text = slurp(out);
        cr_assert(text);
        cr_expect(strstr(text, "-d expects"), "the error names the option: %s", text);
        free(text);
    }
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}
