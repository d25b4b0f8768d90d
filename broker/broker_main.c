/* moe-broker: the coordinator's command line (run, tokenize, keygen). */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "broker/options.h"
#include "protocol/message.h"
#include "broker/run.h"
#include "broker/tokenizer/tokenize_command.h"
#include "protocol/transport.h"

/* moe-broker keygen DIR: a CURVE keypair for a worker or a coordinator. */
static int mb_keygen_command(int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: moe-broker keygen DIR\n"
                        "writes DIR/secret.key (mode 0600) and DIR/public.key, a CURVE keypair (z85 text):\n"
                        "a worker takes --curve-secret DIR/secret.key and lists coordinators' public keys\n"
                        "in its --curve-allow file; a coordinator takes --curve-secret DIR/secret.key and\n"
                        "names each worker's public key with --worker tcp://HOST:PORT,key=FILE\n");
        return 2;
    }
    char err[512];
    if (mb_zmq_keygen(argv[1], err, sizeof err) != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker keygen: %s\n", err);
        return 1;
    }
    printf("wrote %s/secret.key and %s/public.key\n", argv[1], argv[1]);
    return 0;
}

int main(int argc, char **argv)
{
    mb_options opt;
    char err[512];
    if (argc > 1 && strcmp(argv[1], "tokenize") == 0) return mb_tokenize_command_run(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "keygen") == 0) return mb_keygen_command(argc - 1, argv + 1);
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
