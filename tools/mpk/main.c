// main.c — the mpk command: dispatches to run, chat, compile, bench and profile.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *usage =
    "usage: mpk <command> [options]\n"
    "\n"
    "mpk compiles a decoder LLM (Qwen3, Llama 3) into one persistent megakernel and runs it.\n"
    "\n"
    "commands:\n"
    "  run       generate text from a prompt (the default model when -m is not given)\n"
    "  chat      talk to the model with its chat template\n"
    "  compile   compile a model into its task graph and (CUDA) megakernel; --dump prints the graph\n"
    "  bench     measure decode and prefill speed, llama-bench style\n"
    "  profile   run with a task timeline: Perfetto trace, SVG picture and per-task summary\n"
    "  version   print the version\n"
    "\n"
    "`mpk <command> --help` lists a command's options.\n";

static const char *compile_usage =
    "usage: mpk compile [-m DIR | --config NAME] [--backend cpu|cuda] [--arch sm_90a] [--dump FILE|-]\n"
    "Builds the model's task graph and, on the CUDA backend, generates and compiles the megakernel\n"
    "into the cache ($MPK_CACHE_DIR, default ~/.cache/mpk). With --arch no GPU is needed.\n"
    "  --dump FILE           write the task graph (tasks, events, what each event releases); - = stdout\n";

static int cmd_compile_impl(int argc, char **argv) {
    cli_opts o;
    cli_opts_init(&o);
    const char *dump = NULL;
    for (int i = 1; i < argc; i++) {
        int r = cli_common_option(&o, argc, argv, &i);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (!strcmp(argv[i], "--dump") && i + 1 < argc) dump = argv[++i];
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("%s%s", compile_usage, cli_common_usage());
            return 0;
        } else {
            fprintf(stderr, "mpk: unknown option '%s' (see mpk compile --help)\n", argv[i]);
            return 2;
        }
    }
    double t0 = cli_now();
    cli_engine e;
    if (cli_engine_open(&e, &o, 1)) return 1;
    double dt = cli_now() - t0;
    mpk_graph_stats gs;
    mpk_graph_get_stats(e.kernel, &gs);
    fprintf(stderr, "mpk: %s: %d layers, %d tasks, %d events, %d variants; %lld dependencies (%lld after reduction); "
                    "graph %.3f s, load + build + compile %.2f s (%s backend)\n",
            e.dir, gs.num_layers, gs.num_tasks, gs.num_events, gs.num_variants,
            (long long)gs.num_dependencies_exact, (long long)gs.num_dependencies_reduced, gs.compile_seconds, dt,
            mpk_kernel_backend(e.kernel) == MPK_BACKEND_CUDA ? "cuda" : "cpu");
    int rc = 0;
    if (dump) {
        char *text = NULL;
        if (mpk_graph_dump_string(e.kernel, &text) != MPK_OK) {
            fprintf(stderr, "mpk: %s\n", mpk_last_error(e.kernel));
            rc = 1;
        } else {
            FILE *f = strcmp(dump, "-") ? fopen(dump, "w") : stdout;
            if (!f) {
                fprintf(stderr, "mpk: cannot write '%s'\n", dump);
                rc = 1;
            } else {
                fputs(text, f);
                if (f != stdout) fclose(f);
            }
            mpk_free_string(text);
        }
    }
    cli_engine_close(&e);
    return rc;
}

int cmd_compile(int argc, char **argv) { return cmd_compile_impl(argc, argv); }

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "run")) return cmd_run(argc - 1, argv + 1);
    if (!strcmp(cmd, "chat")) return cmd_chat(argc - 1, argv + 1);
    if (!strcmp(cmd, "compile")) return cmd_compile(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench")) return cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "profile")) return cmd_profile(argc - 1, argv + 1);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("mpk %s\n", mpk_version());
        return 0;
    }
    fprintf(stderr, "mpk: unknown command '%s'\n\n%s", cmd, usage);
    return 2;
}
