// bench.c — `mpk bench`: decode (tgN) and prefill (ppN) speed in the style of llama-bench, with
// the bytes of weights a decode step streams, the GB/s that makes, and that as a share of the read
// bandwidth a plain streaming-read kernel reaches on the same device in the same run.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *bench_usage =
    "usage: mpk bench [-m DIR]... [--config NAME]... [-n N] [-p N] [-d N] [-r R] [-o md|json|csv] [options]\n"
    "Measures batch-1 decode (tgN: N tokens generated after a 1-token prompt) and prefill (ppN: an\n"
    "N-token prompt in one iteration). Random weights are enough: --config names a real config.\n"
    "-n, -p and -d take comma-separated lists (-d 0,1024,4096), as llama-bench does; one kernel per\n"
    "model serves them all, sized to the largest.\n"
    "  -n N                  decode tokens per repetition; 0 skips tg (default: 128)\n"
    "  -p N                  prompt tokens; 0 skips pp (default: 512)\n"
    "  -d N                  depth: decode after an N-token prompt instead of a 1-token one, so\n"
    "                        that attention reads N cached positions (tgN @ dD; GB/s and % of\n"
    "                        read BW count the weights only) (default: 0)\n"
    "  -r R                  repetitions, reported as mean ± standard deviation (default: 3)\n"
    "  -o FMT                md, json or csv (default: md)\n";

typedef struct result {
    char model[4096];
    double size_gb;       // weights streamed per decode token
    const char *backend;
    char test[32];
    double ms_per_token, tps, tps_sd, gbps, pct_bw;
    char device[128];
    double read_bw;
    double handover_us;  // mean device time of one hand-over between the kernels (0: none)
} result;

// Hand-overs between the prompt and decode kernels in a test's runs, and their device time.
typedef struct handover_sum {
    int64_t count;
    double seconds;
} handover_sum;

static int run_once(cli_engine *e, int32_t prompt_len, int32_t n_new, double *seconds, int decode,
                    handover_sum *hs) {
    mpk_request_clear(e->kernel);
    int32_t *prompt = malloc((size_t)prompt_len * sizeof *prompt);
    const mpk_model_config *cfg = mpk_model_get_config(e->model);
    for (int32_t i = 0; i < prompt_len; i++) prompt[i] = (int32_t)((i * 2654435761u) % (uint32_t)cfg->vocab_size);
    mpk_sampling_params sp = mpk_sampling_default_params();
    mpk_status st = mpk_request_add(e->kernel, prompt, prompt_len, n_new, &sp, NULL);
    free(prompt);
    if (st == MPK_OK) st = mpk_run(e->kernel, NULL, NULL);
    if (st != MPK_OK) {
        fprintf(stderr, "mpk: bench: %s\n", mpk_last_error(e->kernel));
        return 1;
    }
    mpk_run_stats rs;
    mpk_run_get_stats(e->kernel, &rs);
    int32_t steps = rs.iterations - rs.prefill_iterations;
    hs->count += rs.handovers;
    hs->seconds += rs.handover_seconds;
    *seconds = decode ? (steps > 0 ? rs.decode_seconds / steps : 0) : rs.prefill_seconds;
    return 0;
}

// Up to MAX_LIST values of -n, -p or -d.
#define MAX_LIST 8
#define MAX_RESULTS 256
typedef struct int_list {
    int32_t v[MAX_LIST];
    int n;
} int_list;

// "a,b,c" of integers in [0, 1 << 20] into *l: 1, or 0 with a message.
static int parse_list(const char *opt, const char *s, int_list *l) {
    l->n = 0;
    const char *p = s;
    for (;;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > (1 << 20) || (*end && *end != ',') || l->n == MAX_LIST) {
            fprintf(stderr, "mpk: %s expects up to %d comma-separated integers in [0, %d], got '%s'\n", opt,
                    MAX_LIST, 1 << 20, s);
            return 0;
        }
        l->v[l->n++] = (int32_t)v;
        if (!*end) return 1;
        p = end + 1;
    }
}

static int32_t list_max(const int_list *l) {
    int32_t m = 0;
    for (int i = 0; i < l->n; i++) m = l->v[i] > m ? l->v[i] : m;
    return m;
}

// One test (decode: tg n_gen after a lead-token prompt; else pp n_prompt) over reps repetitions
// after a warm-up, into *R.
static int bench_test(cli_engine *e, cli_opts *o, int decode, int32_t n, int32_t depth, int reps,
                      const char *device, double bw, result *R) {
    const int32_t lead = depth > 1 ? depth : 1;  // the decode runs' prompt
    double bytes = (double)mpk_model_weight_bytes_per_token(e->model), s;
    handover_sum hs = {0, 0};
    if (run_once(e, decode ? lead : n, decode ? n : 1, &s, decode, &hs)) return 1;  // warm-up
    double sum = 0, sum2 = 0;
    hs = (handover_sum){0, 0};
    for (int r = 0; r < reps; r++) {
        if (run_once(e, decode ? lead : n, decode ? n : 1, &s, decode, &hs)) return 1;
        double tps = decode ? 1.0 / s : n / s;
        sum += tps;
        sum2 += tps * tps;
    }
    memset(R, 0, sizeof *R);
    snprintf(R->model, sizeof R->model, "%s", o->config_name ? o->config_name : e->dir);
    R->size_gb = bytes / 1e9;
    R->backend = mpk_kernel_backend(e->kernel) == MPK_BACKEND_CUDA ? "cuda" : "cpu";
    if (decode && depth > 0)
        snprintf(R->test, sizeof R->test, "tg%d @ d%d", n, depth);
    else
        snprintf(R->test, sizeof R->test, "%s%d", decode ? "tg" : "pp", n);
    R->tps = sum / reps;
    R->tps_sd = reps > 1 ? sqrt(fmax(0, (sum2 - sum * sum / reps) / (reps - 1))) : 0;
    R->ms_per_token = 1e3 / R->tps;
    R->gbps = decode ? bytes * R->tps / 1e9 : 0;
    R->pct_bw = decode && bw > 0 ? 100.0 * bytes * R->tps / bw : 0;
    snprintf(R->device, sizeof R->device, "%s", device);
    R->read_bw = bw;
    R->handover_us = hs.count > 0 ? 1e6 * hs.seconds / (double)hs.count : 0;
    return 0;
}

// Every test of one model on one kernel: tg for each (-n, -d) pair, then pp for each -p.
static int bench_model(cli_opts *o, const int_list *n_gen, const int_list *n_prompt,
                       const int_list *depth, int reps, result *out, int *nout) {
    const int32_t max_p = list_max(n_prompt), max_lead = list_max(depth) > 1 ? list_max(depth) : 1;
    o->batch_tokens = max_p > 0 ? max_p : 16;
    int32_t need = (max_p > max_lead + list_max(n_gen) ? max_p : max_lead + list_max(n_gen)) + 8;
    if (o->max_seq_len < need) o->max_seq_len = need;
    cli_engine e;
    if (cli_engine_open(&e, o, 1)) return 1;
    char device[128] = "?";
    double bw = 0;
    mpk_device_info(e.kernel, device, sizeof device, &bw);
    int rc = 0;
    for (int i = 0; i < n_gen->n && !rc; i++)
        for (int j = 0; j < depth->n && !rc && n_gen->v[i] > 0; j++)
            if (*nout < MAX_RESULTS)
                rc = bench_test(&e, o, 1, n_gen->v[i], depth->v[j], reps, device, bw, &out[(*nout)++]);
    for (int i = 0; i < n_prompt->n && !rc; i++)
        if (n_prompt->v[i] > 0 && *nout < MAX_RESULTS)
            rc = bench_test(&e, o, 0, n_prompt->v[i], 0, reps, device, bw, &out[(*nout)++]);
    if (rc) (*nout)--;  // (the failed test's slot)
    cli_engine_close(&e);
    return rc;
}

// A JSON string's contents: quotes, backslashes and control characters escaped (into buf).
static const char *json_escape(const char *in, char *buf, size_t cap) {
    size_t o = 0;
    for (; *in && o + 7 < cap; in++) {
        unsigned char ch = (unsigned char)*in;
        if (ch == '"' || ch == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)ch;
        } else if (ch < 0x20) {
            o += (size_t)snprintf(buf + o, cap - o, "\\u%04x", ch);
        } else {
            buf[o++] = (char)ch;
        }
    }
    buf[o] = 0;
    return buf;
}

int cmd_bench(int argc, char **argv) {
    cli_opts o;
    cli_opts_init(&o);
    const char *models[16];
    int nmodels = 0, nconfigs = 0, reps = 3;
    const char *configs[16];
    int_list n_gen = {{128}, 1}, n_prompt = {{512}, 1}, depth = {{0}, 1};
    const char *fmt = "md";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && v) {
            if (nmodels < 16) models[nmodels++] = v;
            i++;
            continue;
        }
        if (!strcmp(a, "--config") && v) {
            if (nconfigs < 16) configs[nconfigs++] = v;
            i++;
            continue;
        }
        int r = cli_common_option(&o, argc, argv, &i);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("%s%s", bench_usage, cli_common_usage());
            return 0;
        }
        if (!v) {
            fprintf(stderr, "mpk: unknown option or missing value '%s' (see mpk bench --help)\n", a);
            return 2;
        }
        if (!strcmp(a, "-n") || !strcmp(a, "-p") || !strcmp(a, "-d")) {
            int_list *l = a[1] == 'n' ? &n_gen : a[1] == 'p' ? &n_prompt : &depth;
            if (!parse_list(a, argv[++i], l)) return 2;
        } else if (!strcmp(a, "-r")) reps = atoi(argv[++i]);
        else if (!strcmp(a, "-o")) fmt = argv[++i];
        else {
            fprintf(stderr, "mpk: unknown option '%s' (see mpk bench --help)\n", a);
            return 2;
        }
    }
    if (reps < 1 || (list_max(&n_gen) == 0 && list_max(&n_prompt) == 0) ||
        (strcmp(fmt, "md") && strcmp(fmt, "json") && strcmp(fmt, "csv"))) {
        fprintf(stderr, "mpk: bench needs -r >= 1, -n/-p/-d >= 0 (-n and -p not both 0), -o md|json|csv\n");
        return 2;
    }
    static result res[MAX_RESULTS];
    int nres = 0, rc = 0;
    int total = nmodels + nconfigs;
    for (int m = 0; m < (total ? total : 1); m++) {
        cli_opts mo = o;
        mo.model_dir = m < nmodels ? models[m] : NULL;
        mo.config_name = m >= nmodels && nconfigs ? configs[m - nmodels] : NULL;
        if (bench_model(&mo, &n_gen, &n_prompt, &depth, reps, res, &nres)) rc = 1;
    }
    if (!strcmp(fmt, "md")) {
        printf("| model | size (GB read/token) | backend | test | ms/token | t/s | GB/s | %% of read BW |\n");
        printf("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |\n");
        for (int i = 0; i < nres; i++) {
            result *R = &res[i];
            printf("| %s | %.3f | %s | %s | %.3f | %.2f ± %.2f | %s%.1f | %s%.1f |\n", R->model, R->size_gb, R->backend,
                   R->test, R->ms_per_token, R->tps, R->tps_sd, "", R->gbps, "", R->pct_bw);
        }
        if (nres) printf("\ndevice: %s; streaming read %.1f GB/s (measured in this run); mpk %s\n", res[0].device,
                         res[0].read_bw / 1e9, mpk_version());
        for (int i = 0; i < nres; i++)
            if (res[i].handover_us > 0)
                printf("%s %s: %.1f us per hand-over between the prompt and decode kernels\n", res[i].model,
                       res[i].test, res[i].handover_us);
    } else if (!strcmp(fmt, "csv")) {
        printf("model,size_gb,backend,test,ms_per_token,tokens_per_s,tokens_per_s_sd,gb_per_s,pct_read_bw,device,read_bw_gb_per_s,version,handover_us\n");
        for (int i = 0; i < nres; i++) {
            result *R = &res[i];
            printf("%s,%.4f,%s,%s,%.4f,%.3f,%.3f,%.2f,%.2f,\"%s\",%.2f,%s,%.2f\n", R->model, R->size_gb, R->backend, R->test,
                   R->ms_per_token, R->tps, R->tps_sd, R->gbps, R->pct_bw, R->device, R->read_bw / 1e9, mpk_version(),
                   R->handover_us);
        }
    } else {
        printf("[\n");
        static char esc_model[8192], esc_device[512];
        for (int i = 0; i < nres; i++) {
            result *R = &res[i];
            printf("  {\"model\": \"%s\", \"size_gb\": %.4f, \"backend\": \"%s\", \"test\": \"%s\", \"ms_per_token\": %.4f, "
                   "\"tokens_per_s\": %.3f, \"tokens_per_s_sd\": %.3f, \"gb_per_s\": %.2f, \"pct_read_bw\": %.2f, "
                   "\"device\": \"%s\", \"read_bw_gb_per_s\": %.2f, \"version\": \"%s\", \"handover_us\": %.2f}%s\n",
                   json_escape(R->model, esc_model, sizeof esc_model), R->size_gb, R->backend, R->test,
                   R->ms_per_token, R->tps, R->tps_sd, R->gbps, R->pct_bw,
                   json_escape(R->device, esc_device, sizeof esc_device), R->read_bw / 1e9, mpk_version(),
                   R->handover_us, i + 1 < nres ? "," : "");
        }
        printf("]\n");
    }
    return rc;
}
