/* moe-broker: the coordinator's command line. */
#include <stdio.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moe-broker: not built yet\n");
    return 2;
}
