/* moe-broker: the coordinator's command line. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "broker/options.h"
#include "protocol/message.h"
#include "broker/run.h"
#include "broker/tokenizer/tokenize_command.h"

int main(int argc, char **argv)
{
    mb_options opt;
    char err[512];
    if (argc > 1 && strcmp(argv[1], "tokenize") == 0) return mb_tokenize_command_run(argc - 1, argv + 1);
    mb_options_init(&opt);
    if (mb_options_parse(argc, argv, &opt, err, sizeof err) != MB_STATUS_OK) {
        fprintf(stderr, "%s\n(see moe-broker --help)\n", err);
        return 2;
    }
    if (opt.version) {
        printf("moe-broker %s (wire protocol %u)\n", MB_VERSION, MB_PROTO_VERSION);
        mb_options_free(&opt);
        return 0;
    }
    if (opt.help) {
        mb_options_usage(stdout);
        mb_options_free(&opt);
        return 0;
    }
    signal(SIGPIPE, SIG_IGN);
    int rc = mb_run(&opt);
    mb_options_free(&opt);
    return rc;
}
