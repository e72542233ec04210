/* Proves a program really runs on librangealloc.so: every exported allocation symbol
 * resolves (dlsym(RTLD_DEFAULT)) into the library, rangealloc_version() is reachable
 * and matches the header, and allocations made in a constructor (before main, right
 * after the loader and libc's own early allocations) are ours and freeable. Prints
 * one "<symbol> <library>" line per symbol. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>

#include "check.h"
#include "rangealloc.h" /* RANGEALLOC_VERSION; the function is looked up, not linked */

static const char *const EXPORTS[] = {
    "malloc", "free", "calloc", "realloc", "reallocarray", "posix_memalign",
    "aligned_alloc", "memalign", "valloc", "pvalloc", "malloc_usable_size", "cfree",
    "mallocx", "rallocx", "xallocx", "sallocx", "dallocx", "sdallocx", "nallocx",
    "mallctl", "mallctlnametomib", "mallctlbymib", "malloc_stats_print",
    "rangealloc_version",
};

static void *early[16];

__attribute__((constructor(101))) static void before_main(void) {
    for (int i = 0; i < 16; i++) {
        early[i] = malloc((size_t)1 << i);
        if (early[i]) memset(early[i], i, (size_t)1 << i);
    }
}

int main(void) {
    for (size_t i = 0; i < sizeof EXPORTS / sizeof EXPORTS[0]; i++) {
        void *sym = dlsym(RTLD_DEFAULT, EXPORTS[i]);
        Dl_info info;
        CHECK(sym != NULL);
        CHECK(dladdr(sym, &info) != 0 && info.dli_fname != NULL);
        const char *base = strrchr(info.dli_fname, '/');
        printf("%s %s\n", EXPORTS[i], base ? base + 1 : info.dli_fname);
        CHECK(strstr(info.dli_fname, "librangealloc") != NULL);
    }
    const char *(*version)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "rangealloc_version");
    CHECK(version != NULL);
    CHECK(strcmp(version(), RANGEALLOC_VERSION) == 0);
    printf("version %s\n", version());

    for (int i = 0; i < 16; i++) {
        CHECK(early[i] != NULL && malloc_usable_size(early[i]) >= ((size_t)1 << i));
        free(early[i]);
    }
    printf("ALL OK\n");
    return 0;
}
