/* Lists the objects loaded into the process (dl_iterate_phdr), one name per line, after
 * an allocation has run the allocator's set-up. Links neither libgcc_s nor libm, so
 * any of them listed was loaded by the preloaded allocator (each costs every process
 * the library's load and relocation: BENCHMARKS.md, "Start-up cost"). */
#define _GNU_SOURCE
#include <link.h>

#include "check.h"

static int list(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    (void)data;
    if (info->dlpi_name != NULL && info->dlpi_name[0] != '\0')
        printf("object %s\n", info->dlpi_name);
    return 0;
}

int main(void) {
    char *p = malloc(opaque(100));
    CHECK(p != NULL);
    p[99] = 1;
    free(p);
    dl_iterate_phdr(list, NULL);
    printf("ALL OK\n");
    return 0;
}
