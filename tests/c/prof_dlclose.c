/* The heap profiler's stack walk after a dlclose: a library is loaded, its function
 * allocates (sampled: the walk learns the rule of that call site), the library is
 * closed, and another library is loaded at the same address whose function calls
 * malloc from the same address under a different call-frame rule (prof_dlclose_lib.S).
 * Its allocation must be walked with its own rule: with the first library's rule the
 * walk reads 256 MiB above the stack and faults.
 * Usage: prof_dlclose LIB_VARIANT_1 LIB_VARIANT_2 (under LD_PRELOAD, prof=1,prof_sample=1).
 * Prints "SAME ADDRESS" when the second library reused the first one's address (the
 * case tested), "MOVED" otherwise. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include "check.h"

typedef void *(*site_fn)(void);

/* Loads `path`, allocates through its site, frees, closes; returns the site's address. */
static void *through(const char *path) {
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        exit(2);
    }
    site_fn site = (site_fn)dlsym(lib, "prof_reused_site");
    CHECK(site != NULL);
    for (int i = 0; i < 4; i++) {
        void *p = site();
        CHECK(p != NULL);
        memset(p, 0x5a, 64);
        free(p);
    }
    CHECK(dlclose(lib) == 0);
    return (void *)site;
}

int main(int argc, char **argv) {
    CHECK(argc == 3);
    void *first = through(argv[1]);
    void *second = through(argv[2]);
    printf("%s %p %p\n", first == second ? "SAME ADDRESS" : "MOVED", first, second);
    return 0;
}
