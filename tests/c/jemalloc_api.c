/* jemalloc's non-standard API as librangealloc.so answers it (for programs such as
 * Debian's redis-server, which link libjemalloc.so.2 and call nallocx, mallctl and
 * malloc_stats_print next to malloc/free). Looked up with dlsym so that this program
 * needs no jemalloc headers. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>

#include "check.h"

#define MALLOCX_LG_ALIGN(la) ((int)(la))
#define MALLOCX_ZERO ((int)0x40)
#define MALLOCX_TCACHE_NONE ((int)(1 << 8))
#define MALLOCX_ARENA(a) ((int)(((unsigned)(a) + 1) << 20))

static void *lookup(const char *name) {
    void *sym = dlsym(RTLD_DEFAULT, name);
    Dl_info info;
    CHECK(sym != NULL);
    CHECK(dladdr(sym, &info) != 0 && strstr(info.dli_fname, "rangealloc") != NULL);
    return sym;
}

static size_t written;

static void write_cb(void *opaque_arg, const char *msg) {
    CHECK(opaque_arg == &written);
    written += strlen(msg);
}

static void print_cb(void *opaque_arg, const char *msg) {
    (void)opaque_arg;
    fputs(msg, stdout);
}

int main(int argc, char **argv) {
    void *(*mallocx)(size_t, int) = lookup("mallocx");
    void *(*rallocx)(void *, size_t, int) = lookup("rallocx");
    size_t (*xallocx)(void *, size_t, size_t, int) = lookup("xallocx");
    size_t (*sallocx)(const void *, int) = lookup("sallocx");
    void (*dallocx)(void *, int) = lookup("dallocx");
    void (*sdallocx)(void *, size_t, int) = lookup("sdallocx");
    size_t (*nallocx)(size_t, int) = lookup("nallocx");
    int (*mallctl)(const char *, void *, size_t *, void *, size_t) = lookup("mallctl");
    int (*mallctlnametomib)(const char *, size_t *, size_t *) = lookup("mallctlnametomib");
    int (*mallctlbymib)(const size_t *, size_t, void *, size_t *, void *, size_t) =
        lookup("mallctlbymib");
    void (*stats_print)(void (*)(void *, const char *), void *, const char *) =
        lookup("malloc_stats_print");
    if (argc > 1 && !strcmp(argv[1], "json")) {
        /* jemalloc's J option: the report as JSON (only the JSON, on stdout). */
        void *keep = malloc(opaque(100));
        stats_print(print_cb, NULL, "J");
        free(keep);
        return 0;
    }

    /* mallocx: alignment and zeroing from the flags; the tcache/arena bits ignored. */
    for (int lg = 0; lg <= 21; lg += 3) {
        unsigned char *p = mallocx(opaque(1000), MALLOCX_LG_ALIGN(lg) | MALLOCX_ZERO);
        CHECK(p != NULL && is_aligned(p, (size_t)1 << lg) && all_zero(p, 1000));
        CHECK(sallocx(p, 0) >= 1000 && sallocx(p, 0) == malloc_usable_size(p));
        dallocx(p, 0);
    }
    void *t = mallocx(opaque(64), MALLOCX_TCACHE_NONE | MALLOCX_ARENA(3));
    CHECK(t != NULL);
    sdallocx(t, 64, MALLOCX_TCACHE_NONE);
    CHECK(mallocx(opaque(SIZE_MAX), 0) == NULL);

    /* rallocx with MALLOCX_ZERO zeroes the bytes past the old usable size. */
    unsigned char *p = mallocx(opaque(100), 0);
    fill(p, 100, 1);
    size_t old_usable = sallocx(p, 0);
    memset(p, 0xEE, old_usable);
    fill(p, 100, 1);
    unsigned char *q = rallocx(p, opaque(300000), MALLOCX_ZERO | MALLOCX_LG_ALIGN(12));
    CHECK(q != NULL && is_aligned(q, 4096) && holds(q, 100, 1));
    CHECK(all_zero(q + old_usable, 300000 - old_usable));
    CHECK(rallocx(q, opaque(SIZE_MAX), 0) == NULL && holds(q, 100, 1)); /* q intact */
    CHECK(xallocx(q, 10, 0, 0) == sallocx(q, 0));
    free(q); /* blocks are interchangeable with the C API */

    /* nallocx: exactly the usable size mallocx gives (small classes, aligned classes,
     * large page multiples); 0 for impossible sizes. */
    CHECK(nallocx(100, 0) >= 100 && nallocx(1, 0) >= 1);
    for (size_t n = 1; n < (size_t)3 << 20; n += n / 5 + 1) {
        for (int lg = 0; lg <= 14; lg += 7) {
            void *b = mallocx(opaque(n), MALLOCX_LG_ALIGN(lg));
            CHECK(b != NULL && nallocx(n, MALLOCX_LG_ALIGN(lg)) == sallocx(b, 0));
            dallocx(b, 0);
        }
    }
    CHECK(nallocx(SIZE_MAX, 0) == 0 && nallocx(PTRDIFF_MAX, MALLOCX_LG_ALIGN(12)) == 0);

    /* mallctl: "epoch" reads and refreshes; stats.* are the snapshot of the last epoch
     * write; arenas.narenas and arena.<i>.purge as redis's MEMORY PURGE uses them. */
    uint64_t epoch = 1, got = 0;
    size_t len = sizeof got;
    CHECK(mallctl("epoch", &got, &len, &epoch, sizeof epoch) == 0 && got >= 1);
    uint64_t next = 0;
    CHECK(mallctl("epoch", &next, &len, &epoch, sizeof epoch) == 0 && next == got + 1);
    len = 3;
    CHECK(mallctl("epoch", &got, &len, NULL, 0) == EINVAL);
    CHECK(mallctl("epoch", NULL, NULL, &epoch, 3) == EINVAL);

    size_t before = 0, after = 0, stale = 0, value = 0;
    len = sizeof before;
    CHECK(mallctl("epoch", NULL, NULL, &epoch, sizeof epoch) == 0);
    CHECK(mallctl("stats.allocated", &before, &len, NULL, 0) == 0);
    enum { BIG = 8 << 20 };
    char *big = malloc(opaque(BIG));
    CHECK(big != NULL);
    memset(big, 1, BIG);
    CHECK(mallctl("stats.allocated", &stale, &len, NULL, 0) == 0 && stale == before);
    CHECK(mallctl("epoch", NULL, NULL, &epoch, sizeof epoch) == 0);
    CHECK(mallctl("stats.allocated", &after, &len, NULL, 0) == 0 && after >= before + BIG);
    size_t active = 0, resident = 0, mapped = 0, retained = 0, metadata = 0;
    CHECK(mallctl("stats.active", &active, &len, NULL, 0) == 0 && active >= after);
    CHECK(mallctl("stats.resident", &resident, &len, NULL, 0) == 0 && resident >= BIG);
    CHECK(mallctl("stats.mapped", &mapped, &len, NULL, 0) == 0 && mapped >= active);
    CHECK(mallctl("stats.retained", &retained, &len, NULL, 0) == 0);
    CHECK(mallctl("stats.metadata", &metadata, &len, NULL, 0) == 0 && metadata > 0);
    /* Read through volatile: the block must really exist (no malloc/free elision). */
    CHECK(((volatile char *)big)[BIG - 1] == 1);
    free(big);
    CHECK(mallctl("stats.allocated", NULL, NULL, &value, sizeof value) == EPERM);
    len = 4;
    CHECK(mallctl("stats.allocated", &value, &len, NULL, 0) == EINVAL);

    unsigned narenas = 0;
    len = sizeof narenas;
    /* The real arena count (EXPECT_NARENAS when the runner set narenas). */
    CHECK(mallctl("arenas.narenas", &narenas, &len, NULL, 0) == 0 && narenas >= 1 &&
          narenas <= 64);
    const char *expect = getenv("EXPECT_NARENAS");
    CHECK(expect == NULL || narenas == (unsigned)atoi(expect));
    char purge[32];
    /* Every arena index in use, narenas (all arenas) and MALLCTL_ARENAS_ALL. */
    for (unsigned i = 0; i <= narenas; i++) {
        snprintf(purge, sizeof purge, "arena.%u.purge", i);
        CHECK(mallctl(purge, NULL, NULL, NULL, 0) == 0);
    }
    CHECK(mallctl("arena.4096.purge", NULL, NULL, NULL, 0) == 0);
    snprintf(purge, sizeof purge, "arena.%u.purge", narenas + 1);
    CHECK(mallctl(purge, NULL, NULL, NULL, 0) == ENOENT);
    len = sizeof value;
    CHECK(mallctl("arena.0.purge", &value, &len, NULL, 0) == EPERM);

    CHECK(mallctl("no.such.name", NULL, NULL, NULL, 0) == ENOENT);
    CHECK(mallctl("stats", NULL, NULL, NULL, 0) == ENOENT);
    CHECK(mallctl("stats.allocated.x", NULL, NULL, NULL, 0) == ENOENT);
    CHECK(mallctl(NULL, NULL, NULL, NULL, 0) == EINVAL);

    /* MIBs: one component per level, reusable with another arena index; a shorter
     * *miblenp gives a prefix, which names nothing by itself. */
    size_t mib[4], miblen = 4;
    CHECK(mallctlnametomib("stats.resident", mib, &miblen) == 0 && miblen == 2);
    len = sizeof value;
    CHECK(mallctlbymib(mib, miblen, &value, &len, NULL, 0) == 0 && value == resident);
    miblen = 4;
    CHECK(mallctlnametomib("arena.0.purge", mib, &miblen) == 0 && miblen == 3);
    mib[1] = 4096;
    CHECK(mallctlbymib(mib, miblen, NULL, NULL, NULL, 0) == 0);
    miblen = 1;
    CHECK(mallctlnametomib("stats.active", mib, &miblen) == 0 && miblen == 1);
    CHECK(mallctlbymib(mib, 1, NULL, NULL, NULL, 0) == ENOENT);
    miblen = 4;
    CHECK(mallctlnametomib("arenas.nope", mib, &miblen) == ENOENT);

    stats_print(write_cb, &written, NULL);
    CHECK(written > 0);
    printf("ALL OK\n");
    return 0;
}
