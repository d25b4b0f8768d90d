/* `moe-broker tokenize`: text to token ids and back from the command line,
 * as llama.cpp's llama-tokenize does. */
#ifndef MB_BROKER_TOKENIZE_COMMAND_H
#define MB_BROKER_TOKENIZE_COMMAND_H

#include <stdio.h>

/* Runs the subcommand; argv[0] is "tokenize". Prints results to stdout and
 * errors to stderr; returns the process exit code (0 ok, 1 failure, 2 bad
 * usage). Blocks on file reads. */
int mb_tokenize_command_run(int argc, char **argv);

/* Prints the subcommand's usage. */
void mb_tokenize_command_usage(FILE *f);

#endif
