/* Linked with -lrangealloc (flags from rangealloc.pc), not preloaded: the program's
 * malloc is still rangealloc's, because the library precedes libc in the lookup. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>

#include "check.h"
#include "rangealloc.h"

int main(void) {
    CHECK(strcmp(rangealloc_version(), RANGEALLOC_VERSION) == 0);
    Dl_info info;
    CHECK(dladdr(dlsym(RTLD_DEFAULT, "malloc"), &info) != 0);
    CHECK(strstr(info.dli_fname, "librangealloc") != NULL);
    void *p = malloc(opaque(1000));
    CHECK(p != NULL && malloc_usable_size(p) >= 1000);
    free(p);
    printf("linked %s ALL OK\n", rangealloc_version());
    return 0;
}
