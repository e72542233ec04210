/* Edge cases of every C allocation function librangealloc.so exports, with glibc's
 * semantics (aligned_alloc: glibc 2.38+). Run under LD_PRELOAD; prints "ok <function>"
 * per function and "ALL OK" at the end, exits 1 with a FAIL line on the first error. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stddef.h>
#include <unistd.h>

#include "check.h"

#define PAGE 4096
#define HUGE_ALIGN ((size_t)1 << 62)  /* a valid alignment no process can honour */

/* Sizes around class and page boundaries, up to large objects. */
static const size_t SIZES[] = {
    1, 2, 7, 8, 15, 16, 17, 24, 31, 32, 33, 48, 63, 64, 65, 100, 127, 128, 129, 255,
    256, 257, 511, 512, 513, 1000, 1023, 1024, 1025, 2047, 2048, 2049, 4095, 4096,
    4097, 8191, 8192, 8193, 16384, 32767, 32768, 32769, 65535, 65536, 65537, 131072,
    262143, 262144, 262145, 1 << 20, (1 << 20) + 1, (4 << 20) - 1, 4 << 20, 32 << 20,
};
#define NSIZES (sizeof SIZES / sizeof SIZES[0])

static void expect_enomem(void *p) {
    CHECK(p == NULL);
    CHECK(errno == ENOMEM);
}

static void test_malloc(void) {
    void *a = malloc(opaque(0)), *b = malloc(opaque(0));
    CHECK(a != NULL && b != NULL && a != b);
    free(a);
    free(b);

    void *zeros[1000];
    for (int i = 0; i < 1000; i++) {
        zeros[i] = malloc(opaque(0));
        CHECK(zeros[i] != NULL && is_aligned(zeros[i], 16));
        for (int j = 0; j < i; j++) CHECK(zeros[j] != zeros[i]);
    }
    for (int i = 0; i < 1000; i++) free(zeros[i]);

    for (size_t i = 0; i < NSIZES; i++) {
        size_t n = SIZES[i];
        errno = EDOM;
        unsigned char *p = malloc(opaque(n));
        CHECK(p != NULL);
        CHECK(errno == EDOM); /* success leaves errno alone */
        CHECK(is_aligned(p, 16));
        CHECK(malloc_usable_size(p) >= n);
        fill(p, n, (unsigned)i);
        CHECK(holds(p, n, (unsigned)i));
        free(p);
    }

    const size_t impossible[] = {SIZE_MAX, SIZE_MAX - 15, SIZE_MAX / 2 + 1, PTRDIFF_MAX,
                                 PTRDIFF_MAX - 15, (size_t)1 << 62};
    for (size_t i = 0; i < sizeof impossible / sizeof impossible[0]; i++) {
        errno = 0;
        expect_enomem(malloc(opaque(impossible[i])));
    }
    /* Still working after failures. */
    void *p = malloc(opaque(100));
    CHECK(p != NULL);
    free(p);
    OK("malloc");
}

static void test_free(void) {
    free(NULL);
    errno = EDOM;
    free(malloc(opaque(10)));
    free(malloc(opaque(1 << 20)));
    free(malloc(opaque(64 << 20)));
    free(NULL);
    CHECK(errno == EDOM); /* POSIX.1-2024: free does not change errno */
    OK("free");
}

static void test_calloc(void) {
    for (size_t i = 0; i < NSIZES; i++) {
        size_t n = SIZES[i];
        unsigned char *dirty = malloc(opaque(n));
        CHECK(dirty != NULL);
        memset(dirty, 0xAB, n);
        free(dirty);
        errno = EDOM;
        unsigned char *p = calloc(opaque(1), opaque(n));
        CHECK(p != NULL && errno == EDOM);
        CHECK(is_aligned(p, 16));
        CHECK(all_zero(p, n));
        free(p);
        p = calloc(opaque(n), opaque(3));
        CHECK(p != NULL && all_zero(p, 3 * n));
        free(p);
    }
    void *z;
    CHECK((z = calloc(opaque(0), opaque(0))) != NULL);
    free(z);
    CHECK((z = calloc(opaque(0), opaque(10))) != NULL);
    free(z);
    CHECK((z = calloc(opaque(10), opaque(0))) != NULL);
    free(z);

    errno = 0;
    expect_enomem(calloc(opaque(SIZE_MAX / 2 + 1), opaque(2)));
    errno = 0;
    expect_enomem(calloc(opaque((size_t)1 << 32), opaque((size_t)1 << 32)));
    errno = 0;
    expect_enomem(calloc(opaque(SIZE_MAX), opaque(SIZE_MAX)));
    errno = 0;
    expect_enomem(calloc(opaque(1), opaque(SIZE_MAX)));
    errno = 0;
    expect_enomem(calloc(opaque(PTRDIFF_MAX / 2 + 1), opaque(2)));
    OK("calloc");
}

static void test_realloc(void) {
    /* realloc(NULL, n) is malloc(n). */
    unsigned char *p = realloc(NULL, opaque(100));
    CHECK(p != NULL && is_aligned(p, 16) && malloc_usable_size(p) >= 100);
    free(p);
    p = realloc(NULL, opaque(0));
    CHECK(p != NULL);
    free(p);

    /* Growing through every size keeps the contents. */
    size_t have = 1;
    p = malloc(have);
    CHECK(p != NULL);
    fill(p, have, 1);
    for (size_t i = 0; i < NSIZES; i++) {
        size_t n = SIZES[i];
        errno = EDOM;
        unsigned char *q = realloc(p, opaque(n));
        CHECK(q != NULL && errno == EDOM && is_aligned(q, 16));
        CHECK(holds(q, have < n ? have : n, 1));
        CHECK(malloc_usable_size(q) >= n);
        fill(q, n, 1);
        p = q;
        have = n;
    }
    /* ...and so does shrinking. */
    for (size_t i = NSIZES; i-- > 0;) {
        size_t n = SIZES[i];
        unsigned char *q = realloc(p, opaque(n));
        CHECK(q != NULL && holds(q, n, 1));
        p = q;
    }

    /* Failure leaves the block intact and usable. */
    fill(p, 1, 9);
    errno = 0;
    expect_enomem(realloc(p, opaque(SIZE_MAX)));
    errno = 0;
    expect_enomem(realloc(p, opaque(PTRDIFF_MAX)));
    errno = 0;
    expect_enomem(realloc(p, opaque((size_t)1 << 62)));
    CHECK(holds(p, 1, 9));
    unsigned char *q = realloc(p, opaque(5000));
    CHECK(q != NULL && holds(q, 1, 9));

    /* realloc(p, 0) frees p and returns NULL, as glibc does. */
    errno = EDOM;
    CHECK(realloc(q, opaque(0)) == NULL);
    CHECK(errno == EDOM);

    /* A memalign'd block reallocates keeping its contents (alignment: 16 only). */
    unsigned char *a = memalign(opaque(PAGE), opaque(100));
    CHECK(a != NULL && is_aligned(a, PAGE));
    fill(a, 100, 3);
    unsigned char *b = realloc(a, opaque(100000));
    CHECK(b != NULL && is_aligned(b, 16) && holds(b, 100, 3));
    b = realloc(b, opaque(10));
    CHECK(b != NULL && holds(b, 10, 3));
    free(b);
    OK("realloc");
}

static void test_reallocarray(void) {
    unsigned char *p = reallocarray(NULL, opaque(10), opaque(10));
    CHECK(p != NULL && malloc_usable_size(p) >= 100);
    fill(p, 100, 4);
    errno = 0;
    expect_enomem(reallocarray(p, opaque(SIZE_MAX), opaque(2)));
    errno = 0;
    expect_enomem(reallocarray(p, opaque((size_t)1 << 33), opaque((size_t)1 << 33)));
    errno = 0;
    expect_enomem(reallocarray(p, opaque(PTRDIFF_MAX / 4 + 1), opaque(4)));
    CHECK(holds(p, 100, 4));
    unsigned char *q = reallocarray(p, opaque(1000), opaque(100));
    CHECK(q != NULL && holds(q, 100, 4) && malloc_usable_size(q) >= 100000);
    CHECK(reallocarray(q, opaque(0), opaque(5)) == NULL); /* frees, like realloc(q, 0) */
    OK("reallocarray");
}

static void test_posix_memalign(void) {
    void *const SENTINEL = (void *)(uintptr_t)0x5e57;
    const size_t invalid[] = {0, 1, 2, 3, 4, 12, 24, 40, 48, 4097, SIZE_MAX, SIZE_MAX / 2 + 2};
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        void *p = SENTINEL;
        errno = EDOM;
        CHECK(posix_memalign(&p, opaque(invalid[i]), opaque(16)) == EINVAL);
        CHECK(p == SENTINEL && errno == EDOM);
    }
    for (size_t a = sizeof(void *); a <= (size_t)1 << 24; a <<= 1) {
        const size_t sizes[] = {0, 1, 100, a, 3 * a + 1};
        for (size_t j = 0; j < 5; j++) {
            void *p = SENTINEL;
            errno = EDOM;
            CHECK(posix_memalign(&p, opaque(a), opaque(sizes[j])) == 0);
            CHECK(p != SENTINEL && p != NULL && errno == EDOM);
            CHECK(is_aligned(p, a) && malloc_usable_size(p) >= sizes[j]);
            fill(p, sizes[j], 5);
            CHECK(holds(p, sizes[j], 5));
            free(p);
        }
    }
    const size_t huge[][2] = {{64, SIZE_MAX}, {64, PTRDIFF_MAX}, {HUGE_ALIGN, 1},
                              {SIZE_MAX / 2 + 1, 1}, {4096, SIZE_MAX - 4095}};
    for (size_t i = 0; i < 5; i++) {
        void *p = SENTINEL;
        errno = EDOM;
        CHECK(posix_memalign(&p, opaque(huge[i][0]), opaque(huge[i][1])) == ENOMEM);
        CHECK(p == SENTINEL && errno == EDOM); /* the error is returned, errno untouched */
    }
    OK("posix_memalign");
}

static void test_aligned_alloc(void) {
    /* glibc 2.38+: a non-power-of-two alignment is EINVAL (older glibc rounded up). */
    const size_t invalid[] = {0, 3, 12, 24, 48, 100, 4097, SIZE_MAX, SIZE_MAX / 2 + 2};
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        errno = 0;
        CHECK(aligned_alloc(opaque(invalid[i]), opaque(64)) == NULL);
        CHECK(errno == EINVAL);
    }
    for (size_t a = 1; a <= (size_t)1 << 22; a <<= 1) {
        /* The size need not be a multiple of the alignment (C17, DR 460). */
        const size_t sizes[] = {0, 1, 100, a, 3 * a};
        for (size_t j = 0; j < 5; j++) {
            errno = EDOM;
            void *p = aligned_alloc(opaque(a), opaque(sizes[j]));
            CHECK(p != NULL && errno == EDOM);
            CHECK(is_aligned(p, a) && is_aligned(p, 16));
            CHECK(malloc_usable_size(p) >= sizes[j]);
            fill(p, sizes[j], 6);
            free(p);
        }
    }
    errno = 0;
    expect_enomem(aligned_alloc(opaque(64), opaque(SIZE_MAX)));
    errno = 0;
    expect_enomem(aligned_alloc(opaque(HUGE_ALIGN), opaque(1)));
    errno = 0;
    expect_enomem(aligned_alloc(opaque(SIZE_MAX / 2 + 1), opaque(1)));
    OK("aligned_alloc");
}

static void test_memalign(void) {
    /* glibc: alignments up to 16 mean malloc; others round up to a power of two. */
    const size_t cases[][2] = {{0, 16},    {1, 16},     {3, 16},    {8, 16},
                               {16, 16},   {24, 32},    {48, 64},   {100, 128},
                               {4095, 4096}, {4096, 4096}, {5000, 8192}, {1 << 21, 1 << 21}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (size_t n = 0; n < 3000; n += 999) {
            errno = EDOM;
            void *p = memalign(opaque(cases[i][0]), opaque(n));
            CHECK(p != NULL && errno == EDOM);
            CHECK(is_aligned(p, cases[i][1]));
            CHECK(malloc_usable_size(p) >= n);
            fill(p, n, 7);
            free(p);
        }
    }
    errno = 0;
    CHECK(memalign(opaque(SIZE_MAX / 2 + 2), opaque(1)) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(memalign(opaque(SIZE_MAX), opaque(1)) == NULL && errno == EINVAL);
    errno = 0;
    expect_enomem(memalign(opaque(SIZE_MAX / 2 + 1), opaque(1)));
    errno = 0;
    expect_enomem(memalign(opaque(HUGE_ALIGN), opaque(1)));
    errno = 0;
    expect_enomem(memalign(opaque(64), opaque(SIZE_MAX - 10)));
    OK("memalign");
}

static void test_valloc(void) {
    const size_t sizes[] = {0, 1, 4095, 4096, 4097, 100000, 1 << 20};
    for (size_t i = 0; i < 7; i++) {
        void *p = valloc(opaque(sizes[i]));
        CHECK(p != NULL && is_aligned(p, PAGE) && malloc_usable_size(p) >= sizes[i]);
        fill(p, sizes[i], 8);
        free(p);
    }
    errno = 0;
    expect_enomem(valloc(opaque(SIZE_MAX)));
    errno = 0;
    expect_enomem(valloc(opaque(PTRDIFF_MAX - PAGE + 2)));
    OK("valloc");
}

static void test_pvalloc(void) {
    const size_t sizes[][2] = {{1, 4096}, {4095, 4096}, {4096, 4096}, {4097, 8192},
                               {100000, 102400}};
    for (size_t i = 0; i < 5; i++) {
        void *p = pvalloc(opaque(sizes[i][0]));
        CHECK(p != NULL && is_aligned(p, PAGE));
        CHECK(malloc_usable_size(p) >= sizes[i][1]);
        fill(p, sizes[i][1], 9); /* the whole rounded-up size is ours to use */
        free(p);
    }
    void *p = pvalloc(opaque(0));
    CHECK(p != NULL && is_aligned(p, PAGE));
    free(p);
    errno = 0;
    expect_enomem(pvalloc(opaque(SIZE_MAX)));
    errno = 0;
    expect_enomem(pvalloc(opaque(SIZE_MAX - 4000))); /* rounding up would overflow */
    errno = 0;
    expect_enomem(pvalloc(opaque(PTRDIFF_MAX)));
    OK("pvalloc");
}

static void test_malloc_usable_size(void) {
    CHECK(malloc_usable_size(NULL) == 0);
    for (size_t i = 0; i < NSIZES; i++) {
        size_t n = SIZES[i];
        unsigned char *p = malloc(opaque(n));
        size_t usable = malloc_usable_size(p);
        CHECK(usable >= n);
        memset(p, 0x5A, usable); /* every usable byte may be written */
        unsigned char *q = malloc(opaque(n));
        CHECK(q != NULL);
        CHECK(malloc_usable_size(p) == usable);
        free(q);
        free(p);
    }
    OK("malloc_usable_size");
}

static void test_cfree(void) {
    /* glibc exports cfree only as a compatibility symbol, so look ours up. */
    void (*cfree_fn)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "cfree");
    CHECK(cfree_fn != NULL);
    Dl_info info;
    CHECK(dladdr((void *)cfree_fn, &info) != 0 && strstr(info.dli_fname, "rangealloc"));
    cfree_fn(NULL);
    cfree_fn(malloc(opaque(100)));
    cfree_fn(calloc(opaque(10), opaque(1000)));
    OK("cfree");
}

int main(void) {
    test_malloc();
    test_free();
    test_calloc();
    test_realloc();
    test_reallocarray();
    test_posix_memalign();
    test_aligned_alloc();
    test_memalign();
    test_valloc();
    test_pvalloc();
    test_malloc_usable_size();
    test_cfree();
    printf("ALL OK\n");
    return 0;
}
