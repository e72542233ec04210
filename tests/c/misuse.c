/* Misuse through the C ABI must abort with rangealloc's one-line report, before any
 * state changes. Usage: misuse <case>; every case should die by SIGABRT. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stdlib.h>

#include "check.h"

static char static_buffer[64];

/* Our export of `name` (the preloaded library's), to reach the non-standard frees. */
static void (*free_function(const char *name))(void *) {
    void (*f)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, name);
    CHECK(f != NULL);
    return f;
}

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
    } else if (!strcmp(c, "delete-twice") || !strcmp(c, "cfree-twice")) {
        /* operator delete(void *) is _ZdlPv. */
        void (*release)(void *) = free_function(c[0] == 'd' ? "_ZdlPv" : "cfree");
        void *p = malloc(opaque(100));
        release(p);
        release(p);
    } else if (!strcmp(c, "dallocx-stack")) {
        void (*dallocx)(void *, int) = (void (*)(void *, int))dlsym(RTLD_DEFAULT, "dallocx");
        CHECK(dallocx != NULL);
        dallocx(stack_buffer, 0);
    } else if (!strcmp(c, "free-sized-too-large") || !strcmp(c, "free-sized-too-large-large")) {
        /* C23 free_sized with a size the block cannot have (beyond its usable size). */
        void (*free_sized)(void *, size_t) = (void (*)(void *, size_t))dlsym(RTLD_DEFAULT, "free_sized");
        CHECK(free_sized != NULL);
        size_t n = strstr(c, "large-large") ? (3 << 20) : 100;
        void *p = malloc(opaque(n));
        free_sized(p, malloc_usable_size(p) + 1);
    } else if (!strcmp(c, "free-aligned-sized-bad-align")) {
        void (*free_aligned_sized)(void *, size_t, size_t) =
            (void (*)(void *, size_t, size_t))dlsym(RTLD_DEFAULT, "free_aligned_sized");
        CHECK(free_aligned_sized != NULL);
        void *p = aligned_alloc(opaque(64), opaque(64));
        free_aligned_sized(p, 48, 64);
    } else if (!strcmp(c, "libc-free-twice")) {
        void (*libc_free)(void *) = free_function("__libc_free");
        void *(*libc_malloc)(size_t) = (void *(*)(size_t))dlsym(RTLD_DEFAULT, "__libc_malloc");
        CHECK(libc_malloc != NULL);
        void *p = libc_malloc(opaque(100));
        libc_free(p);
        libc_free(p);
    } else if (!strcmp(c, "free-alias-high") || !strcmp(c, "free-alias-kernel")) {
        /* A pointer above the user address space whose low 47 bits are a live block's:
         * the fast path finds the block's segment from those bits alone, so this must
         * still be told apart from the block (and never followed). Bit 47 alone makes
         * a non-canonical address, the upper half a canonical kernel one. */
        uintptr_t high = !strcmp(c, "free-alias-high") ? (uintptr_t)1 << 47 : ~(((uintptr_t)1 << 47) - 1);
        char *p = malloc(opaque(64));
        free((void *)((uintptr_t)p | high));
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
