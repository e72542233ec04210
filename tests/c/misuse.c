/* Misuse through the C ABI must abort with rangealloc's one-line report, before any
 * state changes. Usage: misuse <case>; every case should die by SIGABRT. */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdlib.h>

#include "check.h"

static char static_buffer[64];

int main(int argc, char **argv) {
    CHECK(argc == 2);
    const char *c = argv[1];
    char stack_buffer[64];
    if (!strcmp(c, "double-free")) {
        void *p = malloc(opaque(100));
        free(p);
        free(p);
    } else if (!strcmp(c, "double-free-large")) {
        void *p = malloc(opaque(8 << 20));
        free(p);
        free(p);
    } else if (!strcmp(c, "free-stack")) {
        free(stack_buffer);
    } else if (!strcmp(c, "free-static")) {
        free(static_buffer);
    } else if (!strcmp(c, "free-interior")) {
        char *p = malloc(opaque(100));
        free(p + 16);
    } else if (!strcmp(c, "free-interior-large")) {
        char *p = malloc(opaque(8 << 20));
        free(p + 4096);
    } else if (!strcmp(c, "realloc-stack")) {
        void *volatile q = realloc(stack_buffer, opaque(200));
        (void)q;
    } else if (!strcmp(c, "usable-size-static")) {
        volatile size_t n = malloc_usable_size(static_buffer);
        (void)n;
    } else {
        fprintf(stderr, "unknown case %s\n", c);
        return 2;
    }
    printf("survived %s\n", c);
    return 0;
}
