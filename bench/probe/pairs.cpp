/* Instructions per allocation pair through the C ABI: one pair kind, N times.
 * Usage: pairs KIND N   (KIND: malloc, new, new-sized, calloc, realloc)
 * Run under `valgrind --tool=callgrind` with LD_PRELOAD set to the allocator under
 * test; pairs.sh subtracts the count at N from the count at 2N, so start-up cancels.
 * Every pointer passes through an empty asm statement, so the compiler can neither
 * elide a pair nor hoist it out of the loop. */
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

/* The request size of every pair: a common small object (rangealloc's 64-byte class). */
static const size_t SIZE = 64;
/* realloc pairs alternate between these two sizes, both inside the 49..64 class of
 * rangealloc and jemalloc and the 64-byte bin of tcmalloc and mimalloc. */
static const size_t REALLOC_LOW = 56;

static inline void *escape(void *p) {
    asm volatile("" : "+r"(p) : : "memory");
    return p;
}

__attribute__((noinline)) static void malloc_pair() { free(escape(malloc(SIZE))); }
__attribute__((noinline)) static void new_pair() { ::operator delete(escape(::operator new(SIZE))); }
__attribute__((noinline)) static void new_sized_pair() {
    ::operator delete(escape(::operator new(SIZE)), SIZE);
}
__attribute__((noinline)) static void calloc_pair() { free(escape(calloc(1, SIZE))); }
__attribute__((noinline)) static void *realloc_pair(void *p) {
    p = escape(realloc(p, REALLOC_LOW));
    return escape(realloc(p, SIZE));
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s malloc|new|new-sized|calloc|realloc N\n", argv[0]);
        return 2;
    }
    const char *kind = argv[1];
    long n = atol(argv[2]);
    if (!strcmp(kind, "malloc")) {
        for (long i = 0; i < n; i++) malloc_pair();
    } else if (!strcmp(kind, "new")) {
        for (long i = 0; i < n; i++) new_pair();
    } else if (!strcmp(kind, "new-sized")) {
        for (long i = 0; i < n; i++) new_sized_pair();
    } else if (!strcmp(kind, "calloc")) {
        for (long i = 0; i < n; i++) calloc_pair();
    } else if (!strcmp(kind, "realloc")) {
        void *p = malloc(SIZE);
        for (long i = 0; i < n; i++) p = realloc_pair(p);
        free(p);
    } else {
        fprintf(stderr, "unknown kind %s\n", kind);
        return 2;
    }
    return 0;
}
