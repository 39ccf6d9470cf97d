// common.c — options shared by the subcommands and the model → compiled kernel path they all use.
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void cli_opts_init(cli_opts *o) {
    memset(o, 0, sizeof *o);
    o->backend = "auto";
    o->schedulers = -1;
    o->attention_splits = -1;
    o->max_seq_len = 0;
    o->batch_tokens = 64;
    o->page_size = 64;
    o->max_requests = 1;
    o->timeout = 600;
}

const char *cli_common_usage(void) {
    return "  -m, --model DIR       Hugging Face model directory (default: the bundled model)\n"
           "  --config NAME         a real model config with random weights instead of -m:\n"
           "                        qwen3-0.6b, qwen3-1.7b, qwen3-8b, llama-3.2-1b, qwen3-tiny\n"
           "  --backend B           cpu | cuda | auto (default: auto = cuda when a GPU is usable)\n"
           "  --workers N           worker threads (CPU) or blocks (GPU) (default: from the device)\n"
           "  --schedulers N        scheduler threads/warps; 0 = static schedule (default: 0)\n"
           "  --jit                 dispatch tasks when their event fires (default: ahead of time)\n"
           "  --ctx N               max sequence length per request (default: min(2048, model))\n"
           "  --batch-tokens N      token rows per iteration, the prefill chunk (default: 64)\n"
           "  --page-size N         tokens per KV-cache page (default: 64)\n"
           "  --timeout S           give up on a run after S seconds (default: 600)\n"
           "  --attention-output A  auto | fused | separate: attention and o_proj in one stage or two\n"
           "                        (default: $MPK_ATTENTION_OUTPUT, else auto = fused where faster)\n"
           "  --attn-splits N       tasks per kv head that split a long decode row's attention\n"
           "                        (separate attention; 1 = never; default: $MPK_ATTENTION_SPLITS,\n"
           "                        else 0 = the workers per kv head, at most 16)\n"
           "  --logits L            sampled | all: the LM head's rows, those sampled (a prompt's\n"
           "                        last) or every row (teacher-forced checks) (default: sampled)\n"
           "  -v                    log what the library does (compile times, cache hits)\n";
}

static int parse_int(const char *s, int32_t lo, int32_t hi, int32_t *out, const char *opt) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) {
        fprintf(stderr, "mpk: %s expects an integer in [%d, %d], got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = (int32_t)v;
    return 1;
}

// Option `opt`'s value v, one of the NULL-terminated `words`, into *dst: 1, or -1 with a message
// naming them.
static int one_of(const char *opt, const char *v, const char *const *words, const char **dst) {
    for (int i = 0; words[i]; i++)
        if (!strcmp(v, words[i])) {
            *dst = v;
            return 1;
        }
    fprintf(stderr, "mpk: %s must be", opt);
    for (int i = 0; words[i]; i++)
        fprintf(stderr, "%s %s", i == 0 ? "" : words[i + 1] ? "," : " or", words[i]);
    fprintf(stderr, ", got '%s'\n", v);
    return -1;
}

int cli_common_option(cli_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    const char *v = *i + 1 < argc ? argv[*i + 1] : NULL;
#define NEEDV() do { if (!v) { fprintf(stderr, "mpk: %s needs a value\n", a); return -1; } (*i)++; } while (0)
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) { NEEDV(); o->model_dir = v; return 1; }
    if (!strcmp(a, "--config")) { NEEDV(); o->config_name = v; return 1; }
    if (!strcmp(a, "--backend")) {
        NEEDV();
        return one_of(a, v, (const char *const[]){"cpu", "cuda", "auto", NULL}, &o->backend);
    }
    if (!strcmp(a, "--arch")) { NEEDV(); o->arch = v; return 1; }
    if (!strcmp(a, "--workers")) { NEEDV(); return parse_int(v, 1, 4096, &o->workers, a); }
    if (!strcmp(a, "--schedulers")) { NEEDV(); return parse_int(v, 0, 128, &o->schedulers, a); }
    if (!strcmp(a, "--jit")) { o->jit = 1; return 1; }
    if (!strcmp(a, "--ctx")) { NEEDV(); return parse_int(v, 2, 1 << 20, &o->max_seq_len, a); }
    if (!strcmp(a, "--batch-tokens")) { NEEDV(); return parse_int(v, 1, 1 << 16, &o->batch_tokens, a); }
    if (!strcmp(a, "--page-size")) { NEEDV(); return parse_int(v, 1, 4096, &o->page_size, a); }
    if (!strcmp(a, "--timeout")) {
        NEEDV();
        o->timeout = atof(v);
        if (!(o->timeout > 0)) { fprintf(stderr, "mpk: --timeout expects seconds > 0\n"); return -1; }
        return 1;
    }
    if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) { o->verbose = 1; return 1; }
    if (!strcmp(a, "--attention-output")) {
        NEEDV();
        return one_of(a, v, (const char *const[]){"auto", "fused", "separate", NULL}, &o->attention_output);
    }
    if (!strcmp(a, "--attn-splits")) { NEEDV(); return parse_int(v, 0, 64, &o->attention_splits, a); }
    if (!strcmp(a, "--logits")) {
        NEEDV();
        return one_of(a, v, (const char *const[]){"sampled", "all", NULL}, &o->logits);
    }
#undef NEEDV
    return 0;
}

void cli_log(void *user, mpk_log_level level, const char *msg) {
    int min = user ? *(int *)user : MPK_LOG_WARN;
    if ((int)level < min) return;
    static const char *names[] = {"debug", "info", "warn", "error"};
    fprintf(stderr, "mpk %s: %s\n", names[level & 3], msg);
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

const char *cli_default_model_dir(void) {
    static char path[PATH_MAX + 64];
    const char *env = getenv("MPK_DEFAULT_MODEL");
    if (env && is_dir(env)) return env;
    // Next to the executable: <repo>/build/mpk -> <repo>/models/default.
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            snprintf(path, sizeof path, "%s/../models/default", exe);
            if (is_dir(path)) return path;
            snprintf(path, sizeof path, "%s/../share/mpk/models/default", exe);
            if (is_dir(path)) return path;
        }
    }
    if (is_dir("models/default")) return "models/default";
    return NULL;
}

static int level_info = MPK_LOG_INFO, level_warn = MPK_LOG_WARN;

static void add_eos(mpk_kernel_params *p, int32_t id) {
    if (id < 0) return;
    for (int i = 0; i < p->num_eos_token_ids; i++)
        if (p->eos_token_ids[i] == id) return;
    if (p->num_eos_token_ids < MPK_MAX_EOS_TOKENS) p->eos_token_ids[p->num_eos_token_ids++] = id;
}

int cli_engine_open(cli_engine *e, const cli_opts *o, int compile) {
    memset(e, 0, sizeof *e);
    char err[1024] = "";
    mpk_status st;
    if (o->config_name) {
        mpk_model_config cfg;
        if (mpk_model_config_preset(o->config_name, &cfg) != MPK_OK) {
            fprintf(stderr, "mpk: unknown --config '%s' (try qwen3-0.6b, qwen3-1.7b, qwen3-8b, llama-3.2-1b, qwen3-tiny)\n", o->config_name);
            return 1;
        }
        st = mpk_model_create_random(&cfg, 1, &e->model, err, sizeof err);
        snprintf(e->dir, sizeof e->dir, "%s (random weights)", o->config_name);
    } else {
        const char *dir = o->model_dir ? o->model_dir : cli_default_model_dir();
        if (!dir) {
            fprintf(stderr, "mpk: no model given (-m DIR) and the bundled model was not found (models/default)\n");
            return 1;
        }
        snprintf(e->dir, sizeof e->dir, "%s", dir);
        st = mpk_model_load(dir, &e->model, err, sizeof err);
    }
    if (st != MPK_OK) {
        fprintf(stderr, "mpk: %s\n", err[0] ? err : mpk_status_string(st));
        return 1;
    }
    const mpk_model_config *cfg = mpk_model_get_config(e->model);
    if (!o->config_name) {
        char path[4200];
        snprintf(path, sizeof path, "%s/tokenizer.json", e->dir);
        if (is_file(path)) {
            if (mpk_tokenizer_load(path, &e->tok, err, sizeof err) != MPK_OK) {
                fprintf(stderr, "mpk: %s\n", err);
                cli_engine_close(e);
                return 1;
            }
            snprintf(path, sizeof path, "%s/tokenizer_config.json", e->dir);
            if (mpk_chat_template_detect_file(is_file(path) ? path : NULL, cfg->model_type, &e->chat, err, sizeof err) != MPK_OK)
                e->chat = MPK_CHAT_TEMPLATE_UNKNOWN;
        }
    }
    mpk_kernel_params p = mpk_kernel_default_params();
    p.backend = !strcmp(o->backend, "cpu") ? MPK_BACKEND_CPU : !strcmp(o->backend, "cuda") ? MPK_BACKEND_CUDA : MPK_BACKEND_AUTO;
    if (o->arch && p.backend == MPK_BACKEND_AUTO) p.backend = MPK_BACKEND_CUDA;
    p.cuda_arch = o->arch;
    p.num_workers = o->workers;
    if (o->schedulers >= 0) p.num_local_schedulers = o->schedulers;
    p.jit_dispatch = o->jit;
    int32_t ctx = o->max_seq_len ? o->max_seq_len : 2048;
    if (cfg->max_position_embeddings > 0 && ctx > cfg->max_position_embeddings) ctx = cfg->max_position_embeddings;
    p.max_seq_len = ctx;
    p.max_requests = o->max_requests;
    p.max_batched_tokens = o->batch_tokens;
    p.page_size = o->page_size;
    p.profiling = o->profile;
    p.timeout_s = o->timeout;
    p.log = cli_log;
    p.log_user = o->verbose ? &level_info : &level_warn;
    for (int i = 0; i < cfg->num_eos_token_ids; i++) add_eos(&p, cfg->eos_token_ids[i]);
    if (e->tok) {
        static const char *ends[] = {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"};
        for (size_t i = 0; i < sizeof ends / sizeof ends[0]; i++) add_eos(&p, mpk_tokenizer_token_to_id(e->tok, ends[i]));
        add_eos(&p, mpk_tokenizer_eos_id(e->tok));
    }
    st = mpk_kernel_create(&p, &e->kernel);
    if (st != MPK_OK) {
        fprintf(stderr, "mpk: cannot create the kernel (%s)\n", mpk_status_string(st));
        cli_engine_close(e);
        return 1;
    }
    mpk_build_options bo = mpk_build_default_options();
    bo.sampling = o->sampling;
    bo.logits = o->logits && !strcmp(o->logits, "all") ? MPK_LOGITS_ALL : MPK_LOGITS_SAMPLED;
    // --attention-output, else MPK_ATTENTION_OUTPUT=separate|fused|auto (default auto): how
    // attention meets o_proj (the variable serves side-by-side measurements, bench/ab.sh).
    const char *ao = o->attention_output ? o->attention_output : getenv("MPK_ATTENTION_OUTPUT");
    if (ao && strcmp(ao, "separate") == 0) bo.attention_output = MPK_ATTN_OUT_SEPARATE;
    else if (ao && strcmp(ao, "fused") == 0) bo.attention_output = MPK_ATTN_OUT_FUSED;
    else if (ao && *ao && strcmp(ao, "auto") != 0) {
        fprintf(stderr, "mpk: MPK_ATTENTION_OUTPUT=%s is not one of separate, fused, auto\n", ao);
        cli_engine_close(e);
        return 1;
    }
    // --attn-splits, else MPK_ATTENTION_SPLITS (side-by-side measurements), else automatic.
    bo.attention_splits = o->attention_splits;
    if (bo.attention_splits < 0) {
        const char *sv = getenv("MPK_ATTENTION_SPLITS");
        bo.attention_splits = 0;
        if (sv && *sv && parse_int(sv, 0, 64, &bo.attention_splits, "MPK_ATTENTION_SPLITS") < 0) {
            cli_engine_close(e);
            return 1;
        }
    }
    st = mpk_model_build(e->model, e->kernel, &bo);
    if (st == MPK_OK && compile) st = mpk_compile(e->kernel);
    if (st != MPK_OK) {
        fprintf(stderr, "mpk: %s\n", mpk_last_error(e->kernel));
        cli_engine_close(e);
        return 1;
    }
    return 0;
}

void cli_engine_close(cli_engine *e) {
    mpk_kernel_free(e->kernel);
    mpk_model_free(e->model);
    mpk_tokenizer_free(e->tok);
    memset(e, 0, sizeof *e);
}
