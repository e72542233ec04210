/* The drop-in surface beyond the standard malloc family, under LD_PRELOAD (issue 17):
 * glibc's internal names, C23's sized frees, glibc's introspection and tuning calls and
 * the statistics JSON. Every name is resolved with dlsym(RTLD_DEFAULT) and checked with
 * dladdr to be rangealloc's, then exercised: blocks cross between the aliases and the
 * standard names, mallinfo2 is compared with known live bytes, mallopt's applied
 * parameter is observed through keepcost. Prints "ok <what>" lines. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>

#include "check.h"

static const char *const NAMES[] = {
    "__libc_malloc", "__libc_calloc", "__libc_realloc", "__libc_free",
    "__libc_memalign", "__libc_valloc", "__libc_pvalloc", "__posix_memalign",
    "free_sized", "free_aligned_sized", "malloc_trim", "mallinfo", "mallinfo2",
    "malloc_info", "malloc_stats", "mallopt", "rangealloc_stats_json",
    "rangealloc_set_purge_delay_ms", "rangealloc_set_background_purge",
    "rangealloc_set_stats_at_exit", "rangealloc_set_dirty_budget",
};

static void *lookup(const char *name) {
    void *sym = dlsym(RTLD_DEFAULT, name);
    Dl_info info;
    CHECK(sym != NULL);
    CHECK(dladdr(sym, &info) != 0 && info.dli_fname != NULL);
    if (strstr(info.dli_fname, "librangealloc") == NULL) {
        fprintf(stderr, "FAIL %s resolves into %s\n", name, info.dli_fname);
        _Exit(1);
    }
    return sym;
}

/* glibc's prototypes, as looked up (the C23 ones may be missing from <stdlib.h>). */
static void *(*libc_malloc)(size_t);
static void *(*libc_calloc)(size_t, size_t);
static void *(*libc_realloc)(void *, size_t);
static void (*libc_free)(void *);
static void *(*libc_memalign)(size_t, size_t);
static void *(*libc_valloc)(size_t);
static void *(*libc_pvalloc)(size_t);
static int (*posix_memalign_alias)(void **, size_t, size_t);
static void (*free_sized_fn)(void *, size_t);
static void (*free_aligned_sized_fn)(void *, size_t, size_t);
static struct mallinfo2 (*mallinfo2_fn)(void);
static size_t (*stats_json)(char *, size_t);
static void (*set_dirty_budget)(size_t);

#define SMALL 64    /* a class size: live bytes are exactly SMALL per block */
#define COUNT 1000
#define MIB ((size_t)1 << 20)

static void aliases_mix_with_the_standard_names(void) {
    char *p = libc_malloc(opaque(100));
    CHECK(p != NULL);
    fill(p, 100, 1);
    CHECK(malloc_usable_size(p) >= 100);
    p = realloc(p, opaque(5000)); /* an alias's block through the standard name */
    CHECK(p != NULL && holds(p, 100, 1));
    free(p);
    p = malloc(opaque(300));
    fill(p, 300, 2);
    p = libc_realloc(p, opaque(3 * MIB)); /* and the reverse, small to large */
    CHECK(p != NULL && holds(p, 300, 2));
    libc_free(p);
    libc_free(NULL);
    char *z = libc_calloc(opaque(100), opaque(100));
    CHECK(z != NULL && all_zero(z, 10000));
    free(z);
    CHECK(libc_calloc(opaque(SIZE_MAX / 2), opaque(3)) == NULL && errno == ENOMEM);
    void *a = libc_memalign(opaque(4096), opaque(100));
    CHECK(a != NULL && is_aligned(a, 4096));
    free(a);
    a = libc_valloc(opaque(10));
    CHECK(a != NULL && is_aligned(a, 4096));
    free(a);
    a = libc_pvalloc(opaque(5000));
    CHECK(a != NULL && is_aligned(a, 4096) && malloc_usable_size(a) >= 8192);
    libc_free(a);
    a = NULL;
    CHECK(posix_memalign_alias(&a, opaque(256), opaque(1000)) == 0 && is_aligned(a, 256));
    libc_free(a);
    CHECK(posix_memalign_alias(&a, opaque(24), opaque(10)) == EINVAL);
    OK("aliases");
}

static void sized_frees(void) {
    free_sized_fn(NULL, 0);
    free_sized_fn(NULL, 100);
    void *p = malloc(opaque(100));
    free_sized_fn(p, 100);
    p = malloc(opaque(100));
    free_sized_fn(p, malloc_usable_size(p)); /* the usable size is a valid size too */
    p = libc_malloc(opaque(40000)); /* large */
    free_sized_fn(p, 40000);
    p = malloc(opaque(10 * MIB));
    free_sized_fn(p, 10 * MIB);
    p = calloc(opaque(1), opaque(0));
    free_sized_fn(p, 0);
    p = aligned_alloc(opaque(64), opaque(64));
    CHECK(p != NULL);
    free_aligned_sized_fn(p, 64, 64);
    p = aligned_alloc(opaque(1 << 16), opaque(100000));
    free_aligned_sized_fn(p, 1 << 16, 100000);
    free_aligned_sized_fn(NULL, 64, 64);
    /* Nothing above aborted, and the blocks are really gone: a fresh malloc of the
     * same class works and the live count did not grow. */
    OK("free_sized");
}

static void mallinfo_counts_live_bytes(void) {
    static void *blocks[COUNT];
    /* Warm the class and stdio up so that only our blocks change the counts. */
    free(malloc(opaque(SMALL)));
    struct mallinfo2 before = mallinfo2_fn();
    for (int i = 0; i < COUNT; i++) blocks[i] = malloc(opaque(SMALL));
    struct mallinfo2 during = mallinfo2_fn();
    if (during.uordblks - before.uordblks != (size_t)COUNT * SMALL) {
        fprintf(stderr, "FAIL uordblks %zu -> %zu, expected +%d\n", before.uordblks,
                during.uordblks, COUNT * SMALL);
        _Exit(1);
    }
    CHECK(during.arena == during.uordblks + during.fordblks);
    CHECK(during.hblkhd == before.hblkhd && during.hblks == before.hblks);
    char *big = malloc(opaque(3 * MIB));
    memset(big, 1, 3 * MIB);
    struct mallinfo2 with_big = mallinfo2_fn();
    CHECK(with_big.hblks == during.hblks + 1);
    CHECK(with_big.hblkhd == during.hblkhd + 3 * MIB);
    CHECK(with_big.uordblks == during.uordblks);
    struct mallinfo old = mallinfo();
    CHECK((size_t)old.uordblks == with_big.uordblks && (size_t)old.hblkhd == with_big.hblkhd);
    free(big);
    for (int i = 0; i < COUNT; i++) free(blocks[i]);
    struct mallinfo2 after = mallinfo2_fn();
    CHECK(after.uordblks == before.uordblks);
    CHECK(after.hblks == before.hblks && after.hblkhd == before.hblkhd);
    OK("mallinfo2");
}

/* keepcost is what malloc_trim releases: the region table's dirty bytes. */
static void trim_and_mallopt(void) {
    malloc_trim(0); /* whatever start-up left dirty */
    CHECK(mallinfo2_fn().keepcost == 0);
    char *p = malloc(opaque(2 * MIB));
    memset(p, 1, 2 * MIB);
    free(p);
    CHECK(mallinfo2_fn().keepcost >= 2 * MIB); /* kept dirty for reuse */
    CHECK(malloc_trim(0) == 1);
    CHECK(mallinfo2_fn().keepcost == 0);
    CHECK(malloc_trim(0) == 0); /* nothing left to release */
    OK("malloc_trim");

    /* M_MMAP_THRESHOLD: accepted within glibc's bound, without effect. */
    CHECK(mallopt(M_MMAP_THRESHOLD, 64 * 1024) == 1);
    CHECK(mallopt(M_MMAP_THRESHOLD, 64 << 20) == 0); /* above glibc's bound */
    /* M_TRIM_THRESHOLD: the dirty budget; lowering it purges the excess now. */
    p = malloc(opaque(2 * MIB));
    memset(p, 1, 2 * MIB);
    free(p);
    CHECK(mallinfo2_fn().keepcost >= 2 * MIB);
    CHECK(mallopt(M_TRIM_THRESHOLD, (int)MIB) == 1);
    /* The budget is the threshold plus a quarter of the live large bytes. */
    struct mallinfo2 trimmed = mallinfo2_fn();
    CHECK(trimmed.keepcost <= MIB + trimmed.hblkhd / 4);
    CHECK(mallopt(M_TRIM_THRESHOLD, -1) == 1); /* glibc: huge */
    /* Parameters without a meaning here are accepted. */
    CHECK(mallopt(M_ARENA_MAX, 1) == 1 && mallopt(M_PERTURB, 0xaa) == 1);
    CHECK(mallopt(M_TOP_PAD, 0) == 1 && mallopt(M_MXFAST, 0) == 1);
    set_dirty_budget(64 << 20);
    OK("mallopt");
}

/* Blocks of 200 bytes live while malloc_info runs: class 193..208. */
#define SIZES_LIVE 100
#define SIZES_REQUEST 200
#define SIZES_FROM 193
#define SIZES_TO 208

/* Checks the <sizes> element: one <size from= to= total= count=/> per class with live
 * blocks, classes increasing and disjoint, total = count * to, and the 200-byte class
 * holding at least the SIZES_LIVE blocks this test keeps. */
static void check_sizes(const char *text) {
    const char *open = strstr(text, "<sizes>\n");
    const char *close = strstr(text, "</sizes>\n");
    CHECK(open && close && open < close);
    const char *line = open + strlen("<sizes>\n");
    size_t prev_to = 0, lines = 0;
    int seen = 0;
    while (line < close) {
        size_t from, to, total, count;
        int used = 0;
        CHECK(sscanf(line, "<size from=\"%zu\" to=\"%zu\" total=\"%zu\" count=\"%zu\"/>\n%n",
                     &from, &to, &total, &count, &used) == 4 && used > 0);
        CHECK(from > prev_to && from <= to && count > 0 && total == count * to);
        if (from == SIZES_FROM && to == SIZES_TO) {
            CHECK(count >= SIZES_LIVE);
            seen = 1;
        }
        prev_to = to;
        line += used;
        lines++;
    }
    CHECK(line == close && seen && lines >= 2);
}

static void xml_and_json(void) {
    char *text = NULL;
    size_t len = 0;
    void *live[SIZES_LIVE];
    for (int i = 0; i < SIZES_LIVE; i++) CHECK((live[i] = malloc(opaque(SIZES_REQUEST))));
    FILE *mem = open_memstream(&text, &len);
    CHECK(malloc_info(0, mem) == 0);
    fclose(mem);
    for (int i = 0; i < SIZES_LIVE; i++) free(live[i]);
    CHECK(strncmp(text, "<malloc version=\"1\">\n<heap nr=\"0\">\n<sizes>\n", 43) == 0);
    check_sizes(text);
    CHECK(strstr(text, "<total type=\"mmap\" count=\"") != NULL);
    CHECK(strstr(text, "<system type=\"current\" size=\"") != NULL);
    CHECK(strstr(text, "<aspace type=\"total\" size=\"") != NULL);
    CHECK(strcmp(text + len - 10, "</malloc>\n") == 0);
    free(text);
    errno = 0;
    CHECK(malloc_info(1, stdout) == -1 && errno == EINVAL);
    OK("malloc_info");

    size_t need = stats_json(NULL, 0);
    CHECK(need > 100);
    char *json = malloc(need + 64);
    size_t got = stats_json(json, need + 64); /* the malloc above changed the numbers */
    size_t n = strlen(json);
    CHECK(got < need + 64 && n == got);
    CHECK(json[0] == '{' && json[n - 1] == '}');
    char small[16];
    size_t full = stats_json(small, sizeof small);
    CHECK(full > sizeof small && strlen(small) == sizeof small - 1);
    CHECK(strncmp(small, json, sizeof small - 1) == 0);
    printf("JSON %s\n", json);
    free(json);
    OK("json");
}

int main(void) {
    for (size_t i = 0; i < sizeof NAMES / sizeof NAMES[0]; i++) lookup(NAMES[i]);
    libc_malloc = lookup("__libc_malloc");
    libc_calloc = lookup("__libc_calloc");
    libc_realloc = lookup("__libc_realloc");
    libc_free = lookup("__libc_free");
    libc_memalign = lookup("__libc_memalign");
    libc_valloc = lookup("__libc_valloc");
    libc_pvalloc = lookup("__libc_pvalloc");
    posix_memalign_alias = lookup("__posix_memalign");
    free_sized_fn = lookup("free_sized");
    free_aligned_sized_fn = lookup("free_aligned_sized");
    mallinfo2_fn = lookup("mallinfo2");
    stats_json = lookup("rangealloc_stats_json");
    set_dirty_budget = lookup("rangealloc_set_dirty_budget");
    OK("resolved");
    aliases_mix_with_the_standard_names();
    sized_frees();
    mallinfo_counts_live_bytes();
    trim_and_mallopt();
    xml_and_json();
    malloc_stats();
    printf("ALL OK\n");
    return 0;
}
