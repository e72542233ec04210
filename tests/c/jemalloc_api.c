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

int main(void) {
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

    /* mallctl: "epoch" works (read and refresh), other names are ENOENT. */
    uint64_t epoch = 1, got = 0;
    size_t len = sizeof got;
    CHECK(mallctl("epoch", &got, &len, &epoch, sizeof epoch) == 0 && got >= 1);
    len = 3;
    CHECK(mallctl("epoch", &got, &len, NULL, 0) == EINVAL);
    CHECK(mallctl("epoch", NULL, NULL, &epoch, 3) == EINVAL);
    size_t allocated = 0;
    len = sizeof allocated;
    CHECK(mallctl("stats.allocated", &allocated, &len, NULL, 0) == ENOENT);
    CHECK(mallctl("no.such.name", NULL, NULL, NULL, 0) == ENOENT);
    CHECK(mallctl(NULL, NULL, NULL, NULL, 0) == EINVAL);
    size_t mib[4], miblen = 4;
    CHECK(mallctlnametomib("arenas.narenas", mib, &miblen) == ENOENT);
    CHECK(mallctlbymib(mib, 1, NULL, NULL, NULL, 0) == ENOENT);

    stats_print(write_cb, &written, NULL);
    CHECK(written > 0);
    printf("ALL OK\n");
    return 0;
}
