// run.c — `mpk run` (generate from one or several prompts, streaming, with a timing summary) and
// `mpk chat` (an interactive conversation with the model's chat template).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct gen_opts {
    const char *prompt;
    const char *prompt_file;
    const char *ids;
    int32_t n_predict;
    mpk_sampling_params sampling;
    int chat;
    int think;
} gen_opts;

static const char *run_usage =
    "usage: mpk run [-m DIR] [-p PROMPT | -f FILE | --ids \"1 2 3\"] [-n N] [options]\n"
    "Generates text with the megakernel, streaming it as it comes, then prints a timing summary.\n"
    "  -p, --prompt TEXT     the prompt (default: \"Once upon a time\")\n"
    "  -f, --file FILE       one prompt per line; all of them decode together as one batch\n"
    "  --ids \"I J ...\"       the prompt as token ids (for models without a tokenizer)\n"
    "  -n, --n-predict N     tokens to generate at most (default: 64)\n"
    "  --temp T              temperature; 0 = greedy (default: 0)\n"
    "  --top-k K             keep the K most likely tokens; 0 = all (default: 0)\n"
    "  --top-p P             nucleus sampling threshold (default: 1.0)\n"
    "  --seed S              random seed of the sampler (default: 0)\n"
    "  --chat                wrap the prompt in the model's chat template as a user message\n"
    "  --no-think            Qwen3 chat: close the <think> block empty (default: thinking on)\n";

static int parse_gen(gen_opts *g, cli_opts *o, int argc, char **argv, const char *usage,
                     int32_t default_n) {
    memset(g, 0, sizeof *g);
    g->n_predict = default_n;
    g->sampling = mpk_sampling_default_params();
    g->think = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int r = cli_common_option(o, argc, argv, &i);
        if (r < 0) return -1;
        if (r > 0) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("%s%s", usage, cli_common_usage());
            return 1;
        }
        int needs = !strcmp(a, "-p") || !strcmp(a, "--prompt") || !strcmp(a, "-f") || !strcmp(a, "--file") ||
                    !strcmp(a, "--ids") || !strcmp(a, "-n") || !strcmp(a, "--n-predict") || !strcmp(a, "--temp") ||
                    !strcmp(a, "--top-k") || !strcmp(a, "--top-p") || !strcmp(a, "--seed");
        if (needs && !v) {
            fprintf(stderr, "mpk: %s needs a value\n", a);
            return -1;
        }
        if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) g->prompt = argv[++i];
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) g->prompt_file = argv[++i];
        else if (!strcmp(a, "--ids")) g->ids = argv[++i];
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) {
            g->n_predict = atoi(argv[++i]);
            if (g->n_predict < 1) { fprintf(stderr, "mpk: -n must be >= 1\n"); return -1; }
        } else if (!strcmp(a, "--temp")) g->sampling.temperature = (float)atof(argv[++i]);
        else if (!strcmp(a, "--top-k")) g->sampling.top_k = atoi(argv[++i]);
        else if (!strcmp(a, "--top-p")) g->sampling.top_p = (float)atof(argv[++i]);
        else if (!strcmp(a, "--seed")) g->sampling.seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--chat")) g->chat = 1;
        else if (!strcmp(a, "--no-think")) g->think = 0;
        else if (!strcmp(a, "--think")) g->think = 1;
        else {
            fprintf(stderr, "mpk: unknown option '%s' (see mpk %s --help)\n", a, argv[0]);
            return -1;
        }
    }
    if (g->sampling.temperature < 0 || !(g->sampling.top_p > 0 && g->sampling.top_p <= 1) || g->sampling.top_k < 0) {
        fprintf(stderr, "mpk: need --temp >= 0, 0 < --top-p <= 1, --top-k >= 0\n");
        return -1;
    }
    o->sampling = g->sampling.temperature > 0;
    return 0;
}

// ---- prompts -----------------------------------------------------------------------------------

typedef struct prompt_list {
    char **text;
    int n;
} prompt_list;

static int read_prompts(const char *path, prompt_list *pl) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "mpk: cannot open prompt file '%s'\n", path);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (len == 0) continue;
        char **t = realloc(pl->text, (size_t)(pl->n + 1) * sizeof *t);
        if (!t) break;
        pl->text = t;
        pl->text[pl->n++] = strdup(line);
    }
    free(line);
    fclose(f);
    if (pl->n == 0) {
        fprintf(stderr, "mpk: prompt file '%s' holds no prompt\n", path);
        return 1;
    }
    return 0;
}

// Turns a prompt into ids: the chat template when asked, then the tokenizer.
static int encode_prompt(cli_engine *e, const gen_opts *g, const char *text, int32_t **ids, int32_t *n) {
    if (g->ids) {
        int cap = 16;
        *ids = malloc((size_t)cap * sizeof **ids);
        *n = 0;
        const char *s = g->ids;
        char *end;
        for (;;) {
            long v = strtol(s, &end, 10);
            if (end == s) break;
            if (*n == cap) *ids = realloc(*ids, (size_t)(cap *= 2) * sizeof **ids);
            (*ids)[(*n)++] = (int32_t)v;
            s = end;
        }
        if (*n == 0) {
            fprintf(stderr, "mpk: --ids holds no token id\n");
            return 1;
        }
        return 0;
    }
    if (!e->tok) {
        fprintf(stderr, "mpk: %s has no tokenizer.json: give the prompt as --ids\n", e->dir);
        return 1;
    }
    char *rendered = NULL;
    const char *src = text;
    int add_special = 1;
    if (g->chat) {
        if (e->chat == MPK_CHAT_TEMPLATE_UNKNOWN) {
            fprintf(stderr, "mpk: no chat template is known for %s\n", e->dir);
            return 1;
        }
        mpk_chat_message m = {"user", text, NULL};
        mpk_chat_options co = {1, g->think, NULL};
        if (mpk_chat_render_opts(e->chat, &m, 1, &co, &rendered) != MPK_OK) {
            fprintf(stderr, "mpk: cannot render the chat template\n");
            return 1;
        }
        src = rendered;
        add_special = 0;  // the template writes its own special tokens
    }
    mpk_status st = mpk_tokenizer_encode(e->tok, src, strlen(src), add_special, ids, n);
    free(rendered);
    if (st != MPK_OK || *n == 0) {
        fprintf(stderr, "mpk: cannot tokenize the prompt\n");
        return 1;
    }
    return 0;
}

// ---- streaming ---------------------------------------------------------------------------------

typedef struct stream_ctx {
    cli_engine *e;
    mpk_tokenizer_stream *ts;
    int single;
    double first_token_time;
} stream_ctx;

static void on_tokens(void *user, int32_t req, const int32_t *toks, int32_t n, int finished) {
    stream_ctx *s = user;
    if (!s->single) return;
    for (int32_t i = 0; i < n; i++) {
        if (s->ts) {
            const char *text;
            size_t len;
            if (mpk_tokenizer_stream_push(s->ts, toks[i], &text, &len) == MPK_OK && len) fwrite(text, 1, len, stdout);
        } else {
            printf(" %d", toks[i]);
        }
    }
    if (finished && s->ts) {
        const char *text;
        size_t len;
        if (mpk_tokenizer_stream_flush(s->ts, &text, &len) == MPK_OK && len) fwrite(text, 1, len, stdout);
    }
    fflush(stdout);
    (void)req;
}

static void print_summary(cli_engine *e, double load_s) {
    mpk_run_stats rs;
    mpk_run_get_stats(e->kernel, &rs);
    int32_t decode_iters = rs.iterations - rs.prefill_iterations;
    int64_t decode_tokens = rs.decode_tokens;
    const char *bk = mpk_kernel_backend(e->kernel) == MPK_BACKEND_CUDA ? "cuda" : "cpu";
    fprintf(stderr, "\n\nmpk: %s on %s, %d workers; load + compile %.2f s\n", e->dir, bk,
            mpk_kernel_get_params(e->kernel)->num_workers, load_s);
    if (rs.prompt_tokens > 0)
        fprintf(stderr, "prompt eval: %6lld tokens in %9.2f ms (%8.3f ms/token, %9.2f tokens/s)\n",
                (long long)rs.prompt_tokens, 1e3 * rs.prefill_seconds,
                1e3 * rs.prefill_seconds / (double)rs.prompt_tokens, (double)rs.prompt_tokens / (rs.prefill_seconds + 1e-12));
    if (decode_iters > 0)
        fprintf(stderr, "generation:  %6lld tokens in %9.2f ms (%8.3f ms/step,  %9.2f tokens/s, %d steps)\n",
                (long long)decode_tokens, 1e3 * rs.decode_seconds, 1e3 * rs.decode_seconds / decode_iters,
                (double)decode_tokens / (rs.decode_seconds + 1e-12), decode_iters);
    if (rs.handovers > 0)
        fprintf(stderr, "hand-overs:  %6d between the prompt and decode kernels, %.3f ms in all\n", rs.handovers,
                1e3 * rs.handover_seconds);
    fprintf(stderr, "total:       %6lld tokens generated in %.2f ms (%d iterations)\n",
            (long long)rs.generated_tokens, 1e3 * rs.seconds, rs.iterations);
}

int cmd_run(int argc, char **argv) {
    cli_opts o;
    cli_opts_init(&o);
    gen_opts g;
    int r = parse_gen(&g, &o, argc, argv, run_usage, 64);
    if (r) return r < 0 ? 2 : 0;
    prompt_list pl = {0};
    if (g.prompt_file) {
        if (read_prompts(g.prompt_file, &pl)) return 1;
    } else {
        pl.text = malloc(sizeof *pl.text);
        pl.text[0] = strdup(g.prompt ? g.prompt : "Once upon a time");
        pl.n = 1;
    }
    o.max_requests = pl.n;
    double t0 = cli_now();
    cli_engine e;
    int rc = 1;
    if (cli_engine_open(&e, &o, 1)) goto out;
    double load_s = cli_now() - t0;
    for (int i = 0; i < pl.n; i++) {
        int32_t *ids = NULL, n = 0;
        if (encode_prompt(&e, &g, pl.text[i], &ids, &n)) goto close;
        mpk_status st = mpk_request_add(e.kernel, ids, n, g.n_predict, &g.sampling, NULL);
        if (st != MPK_OK) {
            fprintf(stderr, "mpk: prompt %d: %s (use --ctx or a smaller -n)\n", i + 1, mpk_last_error(e.kernel));
            free(ids);
            goto close;
        }
        if (pl.n == 1) {
            if (e.tok && !g.ids) fputs(g.chat ? "" : pl.text[0], stdout);
            else for (int32_t j = 0; j < n; j++) printf("%s%d", j ? " " : "", ids[j]);
            fflush(stdout);
        }
        free(ids);
    }
    stream_ctx sc = {.e = &e, .single = pl.n == 1};
    if (e.tok) mpk_tokenizer_stream_create(e.tok, 1, &sc.ts);
    mpk_status st = mpk_run(e.kernel, on_tokens, &sc);
    mpk_tokenizer_stream_free(sc.ts);
    if (st != MPK_OK) {
        fprintf(stderr, "\nmpk: run failed: %s\n", mpk_last_error(e.kernel));
        goto close;
    }
    if (pl.n > 1) {
        for (int i = 0; i < pl.n; i++) {
            const int32_t *toks;
            int32_t plen, tlen;
            mpk_request_tokens(e.kernel, i, &toks, &plen, &tlen);
            printf("[%d] %s", i + 1, pl.text[i]);
            if (e.tok) {
                char *text = NULL;
                size_t len = 0;
                if (mpk_tokenizer_decode(e.tok, toks + plen, (size_t)(tlen - plen), 1, &text, &len) == MPK_OK) fwrite(text, 1, len, stdout);
                free(text);
            } else {
                for (int32_t j = plen; j < tlen; j++) printf(" %d", toks[j]);
            }
            printf("\n");
        }
    }
    print_summary(&e, load_s);
    rc = 0;
close:
    cli_engine_close(&e);
out:
    for (int i = 0; i < pl.n; i++) free(pl.text[i]);
    free(pl.text);
    return rc;
}

// ---- chat --------------------------------------------------------------------------------------

static const char *chat_usage =
    "usage: mpk chat [-m DIR] [-n N] [--temp T --top-k K --top-p P --seed S] [--no-think] [options]\n"
    "An interactive conversation: type a message and press enter; an empty line or EOF ends it.\n"
    "  -n N                  tokens per reply at most (default: 512)\n"
    "  -p TEXT               a system prompt\n";

int cmd_chat(int argc, char **argv) {
    cli_opts o;
    cli_opts_init(&o);
    gen_opts g;
    int r = parse_gen(&g, &o, argc, argv, chat_usage, 512);
    if (r) return r < 0 ? 2 : 0;
    cli_engine e;
    if (cli_engine_open(&e, &o, 1)) return 1;
    if (!e.tok || e.chat == MPK_CHAT_TEMPLATE_UNKNOWN) {
        fprintf(stderr, "mpk: %s has no tokenizer or chat template; chat needs both\n", e.dir);
        cli_engine_close(&e);
        return 1;
    }
    mpk_chat_message *msgs = NULL;
    int nmsg = 0;
    char **owned = NULL;
    int nowned = 0;
    if (g.prompt) {
        msgs = realloc(msgs, sizeof *msgs);
        msgs[nmsg++] = (mpk_chat_message){"system", g.prompt, NULL};
    }
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;
    for (;;) {
        fprintf(stderr, "\n> ");
        ssize_t len = getline(&line, &cap, stdin);
        if (len <= 0) break;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (len == 0) break;
        owned = realloc(owned, (size_t)(nowned + 2) * sizeof *owned);
        owned[nowned++] = strdup(line);
        msgs = realloc(msgs, (size_t)(nmsg + 2) * sizeof *msgs);
        msgs[nmsg++] = (mpk_chat_message){"user", owned[nowned - 1], NULL};
        char *rendered = NULL;
        mpk_chat_options co = {1, g.think, NULL};
        int32_t *ids = NULL, n = 0;
        if (mpk_chat_render_opts(e.chat, msgs, nmsg, &co, &rendered) != MPK_OK ||
            mpk_tokenizer_encode(e.tok, rendered, strlen(rendered), 0, &ids, &n) != MPK_OK) {
            fprintf(stderr, "mpk: cannot render or tokenize the conversation\n");
            free(rendered);
            rc = 1;
            break;
        }
        free(rendered);
        // No prefix cache yet: every turn runs the whole conversation again.
        mpk_request_clear(e.kernel);
        int32_t budget = mpk_kernel_get_params(e.kernel)->max_seq_len - n;
        if (budget < 1) {
            fprintf(stderr, "mpk: the conversation (%d tokens) fills the context; start again with a larger --ctx\n", n);
            mpk_tokenizer_free_ids(ids);
            break;
        }
        mpk_status st = mpk_request_add(e.kernel, ids, n, budget < g.n_predict ? budget : g.n_predict, &g.sampling, NULL);
        mpk_tokenizer_free_ids(ids);
        stream_ctx sc = {.e = &e, .single = 1};
        mpk_tokenizer_stream_create(e.tok, 1, &sc.ts);
        if (st == MPK_OK) st = mpk_run(e.kernel, on_tokens, &sc);
        mpk_tokenizer_stream_free(sc.ts);
        if (st != MPK_OK) {
            fprintf(stderr, "\nmpk: %s\n", mpk_last_error(e.kernel));
            rc = 1;
            break;
        }
        const int32_t *toks;
        int32_t plen, tlen;
        mpk_request_tokens(e.kernel, 0, &toks, &plen, &tlen);
        char *reply = NULL;
        size_t rlen = 0;
        mpk_tokenizer_decode(e.tok, toks + plen, (size_t)(tlen - plen), 1, &reply, &rlen);
        owned = realloc(owned, (size_t)(nowned + 1) * sizeof *owned);
        owned[nowned++] = reply ? reply : strdup("");
        msgs[nmsg++] = (mpk_chat_message){"assistant", owned[nowned - 1], NULL};
        mpk_run_stats rs;
        mpk_run_get_stats(e.kernel, &rs);
        fprintf(stderr, "\n[%lld tokens, %.1f tokens/s]", (long long)rs.generated_tokens,
                (double)rs.generated_tokens / (rs.seconds + 1e-12));
    }
    free(line);
    for (int i = 0; i < nowned; i++) free(owned[i]);
    free(owned);
    free(msgs);
    cli_engine_close(&e);
    return rc;
}
