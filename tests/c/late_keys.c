/* The allocator's pthread keys past the first 32 (a program made many keys before its
 * first allocation): glibc's `pthread_setspecific` then `calloc`s a second-level block
 * at a thread's first use of such a key. A thread whose first allocation is a large
 * object sets the arena-ticket key first; served outside the allocator's re-entrancy
 * guard, that calloc was the thread's first small allocation, whose own keys (the heap's
 * and the epoch's exit hooks) the outer call then overwrote: the hooks never ran, and
 * every such thread leaked its heap and epoch handle (about 26 KiB; review15 #1).
 * Checks that the allocator's keys keep their values in such a thread, and that RSS
 * stays bounded over thousands of them. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#define EARLY_KEYS 40
#define THREADS 3000

static pthread_key_t first_ours, probe;
static int lost;

static void *first_large(void *report) {
    char *p = malloc(2 << 20); /* the thread's first allocation: a large object above the medium classes (no heap needed) */
    CHECK(p != NULL);
    p[0] = 1;
    char *q = malloc(64);
    CHECK(q != NULL);
    q[0] = 1;
    if (report) {
        /* Every key the allocator made must hold a value in this thread (the heap's
         * exit hook, the epoch's, the ticket's). */
        for (pthread_key_t k = first_ours; k < probe; k++)
            if (pthread_getspecific(k) == NULL) {
                printf("key %u lost its value\n", k);
                lost++;
            }
    }
    free(q);
    free(p);
    return NULL;
}

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    CHECK(f != NULL && fscanf(f, "%ld %ld", &size, &resident) == 2);
    fclose(f);
    return resident * 4;
}

int main(void) {
    pthread_key_t k;
    for (int i = 0; i < EARLY_KEYS; i++) CHECK(pthread_key_create(&k, NULL) == 0);
    first_ours = k + 1;
    /* The allocator makes its keys at this thread's first allocations. */
    void *volatile m = malloc(100);
    free(m);
    void *volatile big = malloc(8 << 20);
    free(big);
    CHECK(pthread_key_create(&probe, NULL) == 0);
    CHECK(probe > first_ours);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, first_large, (void *)1) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(lost == 0);
    printf("ok keys keep their values\n");
    long before = rss_kib();
    for (int i = 0; i < THREADS; i++) {
        CHECK(pthread_create(&t, NULL, first_large, NULL) == 0);
        CHECK(pthread_join(t, NULL) == 0);
    }
    long grown = rss_kib() - before;
    printf("%d threads: RSS grew %ld KiB\n", THREADS, grown);
    /* A leak of ~26 KiB a thread is ~78 MiB here; a few MiB of noise is allowed. */
    CHECK(grown < 16 * 1024);
    printf("ok no leak per thread\n");
    printf("ALL OK\n");
    return 0;
}
