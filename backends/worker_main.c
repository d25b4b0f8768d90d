/* moe-worker: serves expert FFN work for the coordinator over a transport. */
#include <stdio.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moe-worker: not built yet\n");
    return 2;
}
