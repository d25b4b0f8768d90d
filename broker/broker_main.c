/* moe-broker: the coordinator's command line. */
#include <signal.h>
#include <stdio.h>

#include "broker/options.h"
#include "broker/run.h"

int main(int argc, char **argv)
{
    mb_options opt;
    char err[512];
    mb_options_init(&opt);
    if (mb_options_parse(argc, argv, &opt, err, sizeof err) != MB_STATUS_OK) {
        fprintf(stderr, "%s\n(see moe-broker --help)\n", err);
        return 2;
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
