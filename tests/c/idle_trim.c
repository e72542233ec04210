/* Issue 17, "memory comes back from every thread", from C: a thread allocates 200 MiB
 * of small blocks (16 B to 2 KiB), frees them in a shuffled order and blocks on a
 * condition variable; the main thread calls malloc_trim(0), which must return 1 and
 * bring RSS down by at least 180 MiB from its peak. With the argument "remote" the main
 * thread frees the idle thread's blocks instead (remote frees: the pages wait on the
 * idle thread's pending stack). With "measure" it only prints the figures (for other
 * allocators, BENCHMARKS.md). */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <unistd.h>

#include "check.h"

#define MIB (1L << 20)
#define ALLOCATED (200 * MIB)
#define MUST_RETURN (180 * MIB)
#define MIN_SIZE 16
#define MAX_SIZE 2048
/* At least ALLOCATED / mean size blocks; the mean is about 1 KiB. */
#define MAX_BLOCKS (ALLOCATED / MIN_SIZE)

static long rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    CHECK(f && fscanf(f, "%ld %ld", &size, &resident) == 2);
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

static uint64_t rng = 0x2545f4914f6cdd1dULL;
static size_t below(size_t n) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (size_t)(rng % n);
}

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int stage; /* 1: peak reached, 2: go on freeing, 3: freed, 4: main is done */

static void wait_for(int s) {
    pthread_mutex_lock(&lock);
    while (stage < s) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
}

static void set_stage(int s) {
    pthread_mutex_lock(&lock);
    stage = s;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
}

static int remote;
static void **blocks;
static long n;

/* Frees every block in a shuffled order, then the pointer array. */
static void free_all(void) {
    for (long i = n - 1; i > 0; i--) {
        long j = below(i + 1);
        void *t = blocks[i];
        blocks[i] = blocks[j];
        blocks[j] = t;
    }
    for (long i = 0; i < n; i++) free(blocks[i]);
    free(blocks);
}

static void *worker(void *arg) {
    (void)arg;
    /* The pointer array is one large block, freed before the thread goes idle. */
    blocks = malloc(sizeof(void *) * MAX_BLOCKS);
    CHECK(blocks);
    long total = 0;
    while (total < ALLOCATED) {
        size_t size = MIN_SIZE + below(MAX_SIZE - MIN_SIZE + 1);
        blocks[n] = malloc(size);
        CHECK(blocks[n]);
        memset(blocks[n], 0xa5, size);
        total += size;
        n++;
    }
    set_stage(1);
    if (!remote) {
        wait_for(2);
        free_all();
        set_stage(3);
    }
    wait_for(4);
    return NULL;
}

int main(int argc, char **argv) {
    int measure = 0;
    for (int i = 1; i < argc; i++) {
        measure |= strcmp(argv[i], "measure") == 0;
        remote |= strcmp(argv[i], "remote") == 0;
    }
    pthread_t t;
    CHECK(pthread_create(&t, NULL, worker, NULL) == 0);
    wait_for(1);
    long peak = rss_bytes();
    if (remote) {
        free_all();
    } else {
        set_stage(2);
        wait_for(3);
    }
    long freed = rss_bytes();
    int trimmed = malloc_trim(0);
    long after = rss_bytes();
    printf("idle thread (%s frees): peak %ld KiB, after the frees %ld KiB, after "
           "malloc_trim(0) %ld KiB (returned %d)\n",
           remote ? "remote" : "its own", peak / 1024, freed / 1024, after / 1024, trimmed);
    set_stage(4);
    CHECK(pthread_join(t, NULL) == 0);
    if (!measure) {
        CHECK(trimmed == 1);
        CHECK(peak - after >= MUST_RETURN);
        printf("ok idle trim\n");
    }
    return 0;
}
