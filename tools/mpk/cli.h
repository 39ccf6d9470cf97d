// cli.h — shared pieces of the mpk command: options common to every subcommand, loading a model
// (a Hugging Face directory or a named config with random weights), building and compiling the
// megakernel, and the subcommands' entry points.
#ifndef MPK_CLI_H
#define MPK_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "mpk.h"

typedef struct cli_opts {
    const char *model_dir;      // -m
    const char *config_name;    // --config: a named real config with random weights
    const char *backend;        // --backend cpu|cuda|auto
    const char *arch;           // --arch sm_90a: compile only
    int32_t workers;            // --workers (0 = from the device)
    int32_t schedulers;         // --schedulers (-1 = default; 0 = static schedule)
    int32_t jit;                // --jit
    int32_t max_seq_len;        // --ctx
    int32_t batch_tokens;       // --batch-tokens
    int32_t page_size;          // --page-size
    int32_t max_requests;
    int32_t verbose;            // -v: log at INFO
    int32_t profile;
    double timeout;
    int32_t sampling;           // build a sampling layer (not argmax)
    const char *attention_output;  // --attention-output auto|fused|separate (NULL: $MPK_ATTENTION_OUTPUT)
    const char *logits;            // --logits sampled|all (NULL: sampled)
    int32_t attention_splits;   // --attn-splits (-1: $MPK_ATTENTION_SPLITS, else 0 = automatic)
} cli_opts;

void cli_opts_init(cli_opts *o);
// Parses an option common to all subcommands at argv[*i]; returns 1 if consumed (advancing *i
// past its value), 0 if not a common option, -1 on a bad value (message printed).
int cli_common_option(cli_opts *o, int argc, char **argv, int *i);
const char *cli_common_usage(void);

typedef struct cli_engine {
    mpk_model *model;
    mpk_kernel *kernel;
    mpk_tokenizer *tok;          // NULL when the model directory has none
    mpk_chat_template chat;
    char dir[4096];
} cli_engine;

// Loads the model (and tokenizer), creates, builds and compiles the kernel. Prints a message and
// returns non-zero on failure.
int cli_engine_open(cli_engine *e, const cli_opts *o, int compile);
void cli_engine_close(cli_engine *e);
// The default model shipped with the repository, or NULL when it cannot be found.
const char *cli_default_model_dir(void);
void cli_log(void *user, mpk_log_level level, const char *msg);
double cli_now(void);

int cmd_run(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_compile(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_profile(int argc, char **argv);

#endif
