// profile.c — `mpk profile`: runs a generation with the task timeline on and writes a Chrome /
// Perfetto trace (one track per worker), an SVG picture of one decode step (workers as rows, tasks
// coloured by type, waits drawn before each task) and prints a per-task-type summary.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *profile_usage =
    "usage: mpk profile [-m DIR | --config NAME] [-n N] [-o trace.json] [--svg step.svg] [--step I]\n"
    "Runs one request (a short prompt, then N decode steps) with profiling on.\n"
    "  -n N                  decode steps (default: 16)\n"
    "  -o FILE               Chrome/Perfetto trace (default: mpk-trace.json); open in ui.perfetto.dev\n"
    "  --svg FILE            picture of one decode step (default: the trace name with .svg)\n"
    "  --step I              which iteration to draw (default: the last one)\n"
    "  --prompt-len N        prompt tokens (default: 8)\n";

// One colour per task type (indexed by mpk_task_type).
static const char *colours[] = {"#999999", "#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462",
                                "#b3de69", "#fccde5", "#d9d9d9", "#bc80bd", "#ccebc5", "#ffed6f",
                                "#e31a1c", "#1f78b4"};
#define NUM_COLOURS ((int)(sizeof colours / sizeof colours[0]))

static const char *colour(int type) { return colours[(type >= 0 && type < NUM_COLOURS) ? type : 0]; }

static int write_trace(const char *path, mpk_kernel *k, const mpk_profile_record *r, int64_t n) {
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "mpk: cannot write '%s'\n", path);
        return 1;
    }
    fprintf(f, "{\"displayTimeUnit\": \"ns\", \"traceEvents\": [\n");
    int32_t workers = mpk_kernel_get_params(k)->num_workers;
    for (int32_t w = 0; w < workers; w++)
        fprintf(f, "{\"ph\": \"M\", \"name\": \"thread_name\", \"pid\": 0, \"tid\": %d, \"args\": {\"name\": \"worker %d\"}},\n", w, w);
    for (int64_t i = 0; i < n; i++) {
        const mpk_profile_record *x = &r[i];
        double ts = (double)x->start_ns / 1e3, dur = (double)(x->end_ns - x->start_ns) / 1e3;
        fprintf(f, "{\"ph\": \"X\", \"pid\": 0, \"tid\": %u, \"ts\": %.3f, \"dur\": %.3f, \"name\": \"%s\", \"cat\": \"%s\", "
                   "\"args\": {\"task\": %d, \"layer\": \"%s\", \"iteration\": %d, \"wait_us\": %.3f, \"inputs_us\": %.3f, \"body_us\": %.3f, \"bytes\": %lld, \"weight_bytes\": %lld}}%s\n",
                x->worker, ts, dur, mpk_task_type_name(x->task_type), mpk_task_type_name(x->task_type), x->task,
                mpk_layer_name(k, x->layer), x->iteration, (double)x->wait_ns / 1e3,
                x->inputs_ns < 0 ? -1.0 : x->inputs_ns / 1e3, x->body_ns < 0 ? -1.0 : x->body_ns / 1e3, (long long)mpk_task_bytes(k, x->task),
                (long long)mpk_task_weight_bytes(k, x->task), i + 1 < n ? "," : "");
    }
    fprintf(f, "]}\n");
    fclose(f);
    return 0;
}

static int write_svg(const char *path, mpk_kernel *k, const mpk_profile_record *r, int64_t n, int32_t step) {
    int64_t t0 = INT64_MAX, t1 = 0;
    for (int64_t i = 0; i < n; i++)
        if (r[i].iteration == step) {
            int64_t s = r[i].start_ns - r[i].wait_ns;
            if (s < t0) t0 = s;
            if (r[i].end_ns > t1) t1 = r[i].end_ns;
        }
    if (t1 <= t0) {
        fprintf(stderr, "mpk: iteration %d has no records\n", step);
        return 1;
    }
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "mpk: cannot write '%s'\n", path);
        return 1;
    }
    int32_t workers = mpk_kernel_get_params(k)->num_workers;
    double width = 1400, left = 80, row = workers > 64 ? 6 : 18, top = 40;
    double height = top + row * workers + 40 + 20 * 7;
    double scale = (width - left - 20) / (double)(t1 - t0);
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" font-size=\"11\">\n", width, height);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%.0f\" y=\"20\" font-size=\"14\">mpk: iteration %d, %.1f us, %d workers (grey: waiting on an event; where marked, dark: getting the inputs, pale: publishing)</text>\n",
            left, step, (double)(t1 - t0) / 1e3, workers);
    for (int32_t w = 0; w < workers; w++)
        if (row >= 10 || w % 8 == 0)
            fprintf(f, "<text x=\"4\" y=\"%.1f\">w%d</text>\n", top + row * w + row * 0.8, w);
    for (int64_t i = 0; i < n; i++) {
        const mpk_profile_record *x = &r[i];
        if (x->iteration != step) continue;
        double y = top + row * x->worker;
        double ws = left + (double)(x->start_ns - x->wait_ns - t0) * scale, s = left + (double)(x->start_ns - t0) * scale;
        double e = left + (double)(x->end_ns - t0) * scale;
        if (x->wait_ns > 0)
            fprintf(f, "<rect x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" fill=\"#e0e0e0\"/>\n", ws, y + row * 0.3, s - ws, row * 0.4);
        char phases[96] = "";
        if (x->inputs_ns >= 0 && x->body_ns >= 0)
            snprintf(phases, sizeof phases, ", inputs on chip after %.2f us, published in %.2f us",
                     x->inputs_ns / 1e3, (double)(x->end_ns - x->start_ns - x->body_ns) / 1e3);
        fprintf(f, "<rect x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" fill=\"%s\" stroke=\"#333\" stroke-width=\"0.3\">"
                   "<title>%s (%s) task %d: %.2f us, waited %.2f us%s</title></rect>\n",
                s, y, e - s > 0.5 ? e - s : 0.5, row * 0.9, colour(x->task_type), mpk_task_type_name(x->task_type),
                mpk_layer_name(k, x->layer), x->task, (double)(x->end_ns - x->start_ns) / 1e3, (double)x->wait_ns / 1e3,
                phases);
        // The task's phases where the backend marks them: dark until its inputs were on chip,
        // pale while it published its outputs.
        if (x->inputs_ns > 0)
            fprintf(f, "<rect x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" fill=\"#000\" fill-opacity=\"0.3\"/>\n",
                    s, y, (double)x->inputs_ns * scale, row * 0.9);
        if (x->body_ns >= 0 && x->end_ns - x->start_ns > x->body_ns)
            fprintf(f, "<rect x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" fill=\"#fff\" fill-opacity=\"0.6\"/>\n",
                    s + (double)x->body_ns * scale, y, (double)(x->end_ns - x->start_ns - x->body_ns) * scale, row * 0.9);
    }
    // Time axis and legend.
    double ay = top + row * workers + 14;
    for (int i = 0; i <= 10; i++) {
        double x = left + (width - left - 20) * i / 10;
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">%.0f us</text>\n", x - 10, ay, (double)(t1 - t0) / 1e3 * i / 10);
    }
    int li = 0;
    for (int t = 1; t < NUM_COLOURS; t++) {  // (one colour per task type)
        double x = left + (li % 4) * 300, y = ay + 20 + (li / 4) * 18;
        fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"12\" height=\"12\" fill=\"%s\" stroke=\"#333\"/><text x=\"%.0f\" y=\"%.0f\">%s</text>\n",
                x, y - 10, colour(t), x + 16, y, mpk_task_type_name(t));
        li++;
    }
    fprintf(f, "</svg>\n");
    fclose(f);
    return 0;
}

static void print_summary(mpk_kernel *k, const mpk_profile_record *r, int64_t n, int32_t from_iter) {
    double total[16] = {0}, wait[16] = {0}, bytes[16] = {0}, inputs[16] = {0}, publish[16] = {0}, all = 0;
    int64_t count[16] = {0}, ninputs[16] = {0}, npublish[16] = {0};
    int32_t iters = 0;
    for (int64_t i = 0; i < n; i++) {
        if (r[i].iteration < from_iter) continue;
        int t = r[i].task_type < 16 ? r[i].task_type : 0;
        double d = (double)(r[i].end_ns - r[i].start_ns);
        total[t] += d;
        wait[t] += (double)r[i].wait_ns;
        bytes[t] += (double)mpk_task_bytes(k, r[i].task);
        count[t]++;
        if (r[i].inputs_ns >= 0) {
            inputs[t] += r[i].inputs_ns;
            ninputs[t]++;
        }
        if (r[i].body_ns >= 0) {
            publish[t] += d - r[i].body_ns;
            npublish[t]++;
        }
        all += d;
        if (r[i].iteration - from_iter + 1 > iters) iters = r[i].iteration - from_iter + 1;
    }
    printf("\nper task type over %d decode iterations (from iteration %d):\n", iters, from_iter);
    printf("| task | count | total us | mean us | inputs us | publish us | share | GB moved | GB/s | wait us |\n");
    printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    double wall_wait = 0;
    for (int t = 0; t < 16; t++) {
        if (!count[t]) continue;
        wall_wait += wait[t];
        char in[32] = "-", pub[32] = "-";
        if (ninputs[t]) snprintf(in, sizeof in, "%.2f", inputs[t] / 1e3 / (double)ninputs[t]);
        if (npublish[t]) snprintf(pub, sizeof pub, "%.2f", publish[t] / 1e3 / (double)npublish[t]);
        printf("| %s | %lld | %.1f | %.2f | %s | %s | %.1f%% | %.4f | %.1f | %.1f |\n", mpk_task_type_name(t),
               (long long)count[t], total[t] / 1e3, total[t] / 1e3 / (double)count[t], in, pub,
               100 * total[t] / (all + 1e-9), bytes[t] / 1e9, bytes[t] / (total[t] + 1e-9), wait[t] / 1e3);
    }
    printf("workers spent %.1f us running tasks and %.1f us waiting on events\n", all / 1e3, wall_wait / 1e3);
    printf("(mean us = inputs us, the time until a task's inputs were on chip, + its work + publish us,\n"
           " the time to publish its outputs to the tasks waiting on them; '-' where the backend does not say)\n");
}

int cmd_profile(int argc, char **argv) {
    cli_opts o;
    cli_opts_init(&o);
    const char *trace = "mpk-trace.json", *svg = NULL;
    int32_t n = 16, step = -1, prompt_len = 8;
    for (int i = 1; i < argc; i++) {
        int r = cli_common_option(&o, argc, argv, &i);
        if (r < 0) return 2;
        if (r > 0) continue;
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("%s%s", profile_usage, cli_common_usage());
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "mpk: unknown option or missing value '%s' (see mpk profile --help)\n", a);
            return 2;
        }
        if (!strcmp(a, "-n")) n = atoi(argv[++i]);
        else if (!strcmp(a, "-o")) trace = argv[++i];
        else if (!strcmp(a, "--svg")) svg = argv[++i];
        else if (!strcmp(a, "--step")) step = atoi(argv[++i]);
        else if (!strcmp(a, "--prompt-len")) prompt_len = atoi(argv[++i]);
        else {
            fprintf(stderr, "mpk: unknown option '%s' (see mpk profile --help)\n", a);
            return 2;
        }
    }
    if (n < 1 || prompt_len < 1) {
        fprintf(stderr, "mpk: profile needs -n >= 1 and --prompt-len >= 1\n");
        return 2;
    }
    char svg_buf[4096];
    if (!svg) {
        snprintf(svg_buf, sizeof svg_buf, "%s", trace);
        char *dot = strrchr(svg_buf, '.');
        if (dot) *dot = 0;
        strncat(svg_buf, ".svg", sizeof svg_buf - strlen(svg_buf) - 1);
        svg = svg_buf;
    }
    o.profile = 1;
    if (o.max_seq_len < prompt_len + n + 1) o.max_seq_len = prompt_len + n + 1;
    cli_engine e;
    if (cli_engine_open(&e, &o, 1)) return 1;
    const mpk_model_config *cfg = mpk_model_get_config(e.model);
    int32_t *prompt = malloc((size_t)prompt_len * sizeof *prompt);
    for (int32_t i = 0; i < prompt_len; i++) prompt[i] = (int32_t)((i * 7919u + 1) % (uint32_t)cfg->vocab_size);
    mpk_status st = mpk_request_add(e.kernel, prompt, prompt_len, n, NULL, NULL);
    free(prompt);
    if (st == MPK_OK) st = mpk_run(e.kernel, NULL, NULL);
    if (st != MPK_OK) {
        fprintf(stderr, "mpk: %s\n", mpk_last_error(e.kernel));
        cli_engine_close(&e);
        return 1;
    }
    const mpk_profile_record *rec;
    int64_t count;
    int overflow;
    mpk_profile_get(e.kernel, &rec, &count, &overflow);
    if (overflow) fprintf(stderr, "mpk: the profile buffer overflowed: later tasks were not recorded\n");
    mpk_run_stats rs;
    mpk_run_get_stats(e.kernel, &rs);
    if (step < 0) step = rs.iterations;
    int rc = write_trace(trace, e.kernel, rec, count) || write_svg(svg, e.kernel, rec, count, step);
    if (!rc) {
        printf("wrote %s (%lld task records) and %s (iteration %d)\n", trace, (long long)count, svg, step);
        print_summary(e.kernel, rec, count, rs.prefill_iterations + 1);
        printf("decode: %.3f ms/step over %d steps\n", 1e3 * rs.decode_seconds / (rs.iterations - rs.prefill_iterations > 0 ? rs.iterations - rs.prefill_iterations : 1),
               rs.iterations - rs.prefill_iterations);
    }
    cli_engine_close(&e);
    return rc;
}
