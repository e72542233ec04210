/* librangealloc.so loaded with dlopen (not preloaded, not linked): its TLS is then
 * dynamic (a block malloc'ed per thread by glibc), so it must not use the static-TLS
 * fast access, and its malloc family must still work from many threads, including
 * threads that existed before the dlopen and threads created after it, with blocks
 * freed by other threads than the ones that allocated them.
 * Usage: dlopen_malloc /path/to/librangealloc.so */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include "check.h"

#define EARLY_THREADS 4 /* started before the dlopen */
#define LATE_THREADS 4  /* started after it */
#define THREADS (EARLY_THREADS + LATE_THREADS)
#define ROUNDS 200
#define BLOCKS 256 /* per round and thread; half are freed by the next thread */

static void *(*ra_malloc)(size_t);
static void (*ra_free)(void *);
static void *(*ra_calloc)(size_t, size_t);
static void *(*ra_realloc)(void *, size_t);
static size_t (*ra_usable)(void *);

static pthread_barrier_t loaded;
/* Blocks handed from thread i to thread (i + 1) % THREADS, one slot per round. */
static unsigned char *handoff[THREADS][ROUNDS][BLOCKS / 2];
static pthread_barrier_t round_done;

static size_t size_of(int thread, int round, int i) {
    /* Small classes mostly, some above the small limit (32 KiB) to reach the table. */
    size_t s = (size_t)((thread * 7919 + round * 104729 + i * 1299709) % 2048) + 1;
    return i % 64 == 0 ? s * 40 : s;
}

static void *worker(void *arg) {
    int me = (int)(intptr_t)arg;
    if (me < EARLY_THREADS) pthread_barrier_wait(&loaded);
    int from = (me + THREADS - 1) % THREADS;
    for (int round = 0; round < ROUNDS; round++) {
        unsigned char *mine[BLOCKS];
        for (int i = 0; i < BLOCKS; i++) {
            size_t n = size_of(me, round, i);
            unsigned char *p = i % 4 == 1 ? ra_calloc(1, n) : ra_malloc(n);
            CHECK(p != NULL);
            CHECK(ra_usable(p) >= n);
            if (i % 4 == 1) CHECK(all_zero(p, n));
            fill(p, n, (unsigned)(me * BLOCKS + i));
            mine[i] = p;
        }
        for (int i = 0; i < BLOCKS; i += 2) { /* grow, check, free */
            size_t n = size_of(me, round, i);
            unsigned char *q = ra_realloc(mine[i], 2 * n);
            CHECK(q != NULL);
            CHECK(holds(q, n, (unsigned)(me * BLOCKS + i)));
            ra_free(q);
        }
        for (int i = 1; i < BLOCKS; i += 2) handoff[me][round][i / 2] = mine[i];
        pthread_barrier_wait(&round_done);
        for (int i = 1; i < BLOCKS; i += 2) { /* the previous thread's blocks */
            unsigned char *p = handoff[from][round][i / 2];
            CHECK(holds(p, size_of(from, round, i), (unsigned)(from * BLOCKS + i)));
            ra_free(p);
        }
        pthread_barrier_wait(&round_done);
    }
    return NULL;
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    CHECK(pthread_barrier_init(&loaded, NULL, EARLY_THREADS + 1) == 0);
    CHECK(pthread_barrier_init(&round_done, NULL, THREADS) == 0);
    pthread_t t[THREADS];
    for (int i = 0; i < EARLY_THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i) == 0);

    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    ra_malloc = (void *(*)(size_t))dlsym(h, "malloc");
    ra_free = (void (*)(void *))dlsym(h, "free");
    ra_calloc = (void *(*)(size_t, size_t))dlsym(h, "calloc");
    ra_realloc = (void *(*)(void *, size_t))dlsym(h, "realloc");
    ra_usable = (size_t(*)(void *))dlsym(h, "malloc_usable_size");
    CHECK(ra_malloc && ra_free && ra_calloc && ra_realloc && ra_usable);
    /* The process's malloc is still glibc's: these are the library's own. */
    CHECK((void *)ra_malloc != (void *)malloc);
    CHECK(dlsym(RTLD_DEFAULT, "rangealloc_version") == NULL);

    pthread_barrier_wait(&loaded);
    for (int i = EARLY_THREADS; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i) == 0);
    for (int i = 0; i < THREADS; i++) CHECK(pthread_join(t[i], NULL) == 0);
    printf("ALL OK\n");
    return 0;
}
