/* RSS before/after malloc_trim(0): (a) main thread, 200 x 1 MiB large blocks freed;
 * (b) another thread allocates 200 MiB of 64-byte blocks, frees them and blocks. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size, res;
    fscanf(f, "%ld %ld", &size, &res);
    fclose(f);
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

#define N_LARGE 200
#define SMALL 64
#define N_SMALL ((200 << 20) / SMALL)
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t c = PTHREAD_COND_INITIALIZER;
static int freed, done;

static void *worker(void *arg) {
    (void)arg;
    void **v = malloc(sizeof(void *) * N_SMALL);
    for (long i = 0; i < N_SMALL; i++) { v[i] = malloc(SMALL); memset(v[i], 1, SMALL); }
    for (long i = 0; i < N_SMALL; i++) free(v[i]);
    free(v);
    pthread_mutex_lock(&m);
    freed = 1;
    pthread_cond_broadcast(&c);
    while (!done) pthread_cond_wait(&c, &m);
    pthread_mutex_unlock(&m);
    return NULL;
}

int main(void) {
    void *b[N_LARGE];
    long base = rss_kib();
    for (int i = 0; i < N_LARGE; i++) { b[i] = malloc(1 << 20); memset(b[i], 1, 1 << 20); }
    long live = rss_kib();
    for (int i = 0; i < N_LARGE; i++) free(b[i]);
    long freed_rss = rss_kib();
    int r = malloc_trim(0);
    long trimmed = rss_kib();
    printf("large: base %ld live %ld after-free %ld after-trim %ld KiB (trim returned %d)\n", base, live, freed_rss, trimmed, r);
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    pthread_mutex_lock(&m);
    while (!freed) pthread_cond_wait(&c, &m);
    pthread_mutex_unlock(&m);
    long before = rss_kib();
    r = malloc_trim(0);
    long after = rss_kib();
    printf("idle-thread small: after-free %ld after-trim %ld KiB (trim returned %d)\n", before, after, r);
    pthread_mutex_lock(&m);
    done = 1;
    pthread_cond_broadcast(&c);
    pthread_mutex_unlock(&m);
    pthread_join(t, NULL);
    return 0;
}
