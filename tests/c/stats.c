/* The C statistics API under LD_PRELOAD: looked up with dlsym (the program is not
 * linked against rangealloc), checked against a known allocation pattern. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "rangealloc.h"

typedef int (*get_fn)(struct rangealloc_stats *, size_t);
typedef void (*print_fn)(FILE *);
typedef size_t (*purge_fn)(void);

#define N 32
#define LARGE (1 << 20)

int main(void) {
    get_fn get = (get_fn)dlsym(RTLD_DEFAULT, "rangealloc_stats_get");
    print_fn print = (print_fn)dlsym(RTLD_DEFAULT, "rangealloc_stats_print");
    purge_fn purge = (purge_fn)dlsym(RTLD_DEFAULT, "rangealloc_purge");
    if (!get || !print || !purge) { printf("FAIL symbols missing\n"); return 1; }
    if (get(NULL, sizeof(struct rangealloc_stats)) == 0) { printf("FAIL null accepted\n"); return 1; }

    struct rangealloc_stats before, during, after;
    get(&before, sizeof before);
    void *blocks[N];
    for (int i = 0; i < N; i++) { blocks[i] = malloc(LARGE); memset(blocks[i], i, LARGE); }
    get(&during, sizeof during);
    if (during.large_regions < before.large_regions + N) { printf("FAIL large regions %zu -> %zu\n", before.large_regions, during.large_regions); return 1; }
    if (during.allocated < before.allocated + (size_t)N * LARGE) { printf("FAIL allocated\n"); return 1; }
    if (during.lock_fast_success < before.lock_fast_success) { printf("FAIL counters went back\n"); return 1; }
    printf("ok large regions +%zu\n", during.large_regions - before.large_regions);
    for (int i = 0; i < N; i++) free(blocks[i]);
    size_t purged = purge();
    get(&after, sizeof after);
    if (purged < (size_t)N * LARGE) { printf("FAIL purged %zu\n", purged); return 1; }
    if (after.large_regions > during.large_regions - N) { printf("FAIL regions not freed\n"); return 1; }
    if (after.syscalls_madvise_dontneed <= during.syscalls_madvise_dontneed) { printf("FAIL no madvise\n"); return 1; }
    printf("ok purged\n");

    /* The realloc counters: a large block doubled in place, then grown far past the
     * free space after it, which moves it (by mremap at this size). */
    char *g = malloc(4 << 20);
    g[0] = 42;
    get(&before, sizeof before);
    g = realloc(g, 8 << 20);
    g = realloc(g, 80 << 20);
    get(&after, sizeof after);
    if (g[0] != 42) { printf("FAIL realloc content\n"); return 1; }
    free(g);
    if (after.reallocs_grown_in_place != before.reallocs_grown_in_place + 1) { printf("FAIL grown in place\n"); return 1; }
    if (after.reallocs_moved + after.reallocs_remapped != before.reallocs_moved + before.reallocs_remapped + 1) { printf("FAIL moves\n"); return 1; }
    if (after.reallocs_remapped_bytes - before.reallocs_remapped_bytes + after.reallocs_copied_bytes - before.reallocs_copied_bytes != 8 << 20) { printf("FAIL moved bytes\n"); return 1; }
    if (after.syscalls_madvise_hugepage > after.syscalls_mmap) { printf("FAIL hugepage marks\n"); return 1; }
    printf("ok reallocs\n");

    /* A short struct (an older header) gets only its prefix. */
    size_t small[2] = {0, 0xdeadbeef};
    get((struct rangealloc_stats *)small, sizeof(size_t));
    if (small[1] != 0xdeadbeef || small[0] == 0) { printf("FAIL prefix copy\n"); return 1; }
    printf("ok prefix\n");

    char *text = NULL; size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    print(mem);
    fclose(mem);
    if (!strstr(text, "region lock: fast-path success")) { printf("FAIL report: %s\n", text); return 1; }
    free(text);
    printf("ok report\nALL OK\n");
    return 0;
}
