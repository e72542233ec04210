/* Helpers shared by the C test programs: CHECK aborts the program with the failing
 * expression; opaque() hides constants from the compiler so it cannot fold or warn
 * about deliberately impossible requests. */
#ifndef RANGEALLOC_TEST_CHECK_H
#define RANGEALLOC_TEST_CHECK_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                               \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "FAIL %s:%d: %s (errno %d)\n", __FILE__, __LINE__,    \
                    #cond, errno);                                                \
            fflush(NULL);                                                         \
            _Exit(1);                                                             \
        }                                                                         \
    } while (0)

static inline size_t opaque(size_t v) {
    volatile size_t x = v;
    return x;
}

static inline int is_aligned(const void *p, size_t a) {
    return ((uintptr_t)p & (a - 1)) == 0;
}

/* Writes a pattern derived from seed into p[0..n). */
static inline void fill(void *p, size_t n, unsigned seed) {
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++) b[i] = (unsigned char)(seed * 131u + i * 7u);
}

/* True if p[0..n) still holds the pattern written by fill(p, n, seed). */
static inline int holds(const void *p, size_t n, unsigned seed) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (unsigned char)(seed * 131u + i * 7u)) return 0;
    return 1;
}

static inline int all_zero(const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != 0) return 0;
    return 1;
}

#define OK(name) printf("ok %s\n", name)

#endif
