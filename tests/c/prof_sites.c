/* Heap-profiler check program: three allocation sites that allocate 60%, 30% and 10% of
 * the bytes (small, medium and large objects); site B's objects are freed. Built with
 * -O2 -fomit-frame-pointer and run with librangealloc.so preloaded and
 * RANGEALLOC_OPTIONS=prof=1,...: dumps the profile through rangealloc_prof_dump(argv[1])
 * and mallctl("prof.dump") to argv[2], and prints each site's address ("SITE name
 * 0x...") so the test can attribute the profile's frames. Sites A and C stay allocated
 * at exit, for the leak report. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdbool.h>

#include "check.h"

#define TOTAL ((size_t)64 << 20)
#define SIZE_A ((size_t)1000)
#define SIZE_B ((size_t)3000)
#define SIZE_C ((size_t)100 << 10)
#define COUNT_A (TOTAL * 6 / 10 / SIZE_A)
#define COUNT_B (TOTAL * 3 / 10 / SIZE_B)
#define COUNT_C (TOTAL * 1 / 10 / SIZE_C)

static void **slots_a, **slots_b, **slots_c;

/* Each site touches its block after malloc returns, so the call cannot become a tail
 * call (which would take the site's frame off the stack). */
__attribute__((noinline)) void prof_site_a(size_t i) {
    char *p = malloc(SIZE_A);
    CHECK(p != NULL);
    p[0] = (char)i;
    slots_a[i] = p;
}

__attribute__((noinline)) void prof_site_b(size_t i) {
    char *p = malloc(SIZE_B);
    CHECK(p != NULL);
    p[0] = (char)i;
    slots_b[i] = p;
}

__attribute__((noinline)) void prof_site_c(size_t i) {
    char *p = malloc(SIZE_C);
    CHECK(p != NULL);
    p[0] = (char)i;
    slots_c[i] = p;
}

int main(int argc, char **argv) {
    CHECK(argc == 3);
    printf("SITE prof_site_a %p\nSITE prof_site_b %p\nSITE prof_site_c %p\n",
           (void *)prof_site_a, (void *)prof_site_b, (void *)prof_site_c);
    slots_a = calloc(COUNT_A, sizeof(void *));
    slots_b = calloc(COUNT_B, sizeof(void *));
    slots_c = calloc(COUNT_C, sizeof(void *));
    CHECK(slots_a && slots_b && slots_c);
    /* Interleaved, as a real program's sites are. */
    size_t a = 0, b = 0, c = 0;
    while (a < COUNT_A || b < COUNT_B || c < COUNT_C) {
        for (int k = 0; k < 20 && a < COUNT_A; k++) prof_site_a(a++);
        for (int k = 0; k < 3 && b < COUNT_B; k++) prof_site_b(b++);
        if (c < COUNT_C) prof_site_c(c++);
    }
    for (size_t i = 0; i < COUNT_B; i++) free(slots_b[i]);

    int (*dump)(const char *) = (int (*)(const char *))dlsym(RTLD_DEFAULT, "rangealloc_prof_dump");
    int (*mallctl)(const char *, void *, size_t *, void *, size_t) =
        (int (*)(const char *, void *, size_t *, void *, size_t))dlsym(RTLD_DEFAULT, "mallctl");
    CHECK(dump != NULL && mallctl != NULL);
    bool active = false;
    size_t len = sizeof active;
    CHECK(mallctl("prof.active", &active, &len, NULL, 0) == 0 && active);
    CHECK(mallctl("opt.prof", &active, &len, NULL, 0) == 0 && active);
    CHECK(dump(argv[1]) == 0);
    const char *path = argv[2];
    CHECK(mallctl("prof.dump", NULL, NULL, &path, sizeof path) == 0);
    CHECK(dump("") == EINVAL);
    CHECK(dump("/nonexistent-dir/x.heap") == ENOENT);
    printf("DUMPED\n");
    return 0;
}
