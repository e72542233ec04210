/* Threads under LD_PRELOAD: many threads allocating at once with content checks,
 * blocks handed to other threads and freed there, and thread churn (thousands of
 * short-lived threads, some detached, some leaving blocks for others to free). */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "check.h"

#define WORKERS 32
#define OPS_PER_WORKER 40000
#define SLOTS 256
#define HANDOFF_CAP 1024
#define CHURN_THREADS 2000
#define CHURN_BATCH 16

static unsigned next_rand(unsigned *s) {
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* Mostly small sizes, some medium, a few large. */
static size_t random_size(unsigned *s) {
    unsigned r = next_rand(s) % 1000;
    if (r < 900) return next_rand(s) % 512;
    if (r < 995) return next_rand(s) % 65536;
    return next_rand(s) % (4 << 20);
}

struct block {
    unsigned char *p;
    size_t n;
    unsigned seed;
};

/* A mutex-protected mailbox per worker: others push blocks, the owner frees them. */
struct mailbox {
    pthread_mutex_t lock;
    struct block items[HANDOFF_CAP];
    int count;
};

static struct mailbox boxes[WORKERS];
static atomic_long handed_off, freed_remote;

static void drain(int id) {
    struct mailbox *mb = &boxes[id];
    pthread_mutex_lock(&mb->lock);
    for (int i = 0; i < mb->count; i++) {
        struct block b = mb->items[i];
        CHECK(holds(b.p, b.n < 64 ? b.n : 64, b.seed));
        free(b.p);
        atomic_fetch_add(&freed_remote, 1);
    }
    mb->count = 0;
    pthread_mutex_unlock(&mb->lock);
}

static int hand_off(int to, struct block b) {
    struct mailbox *mb = &boxes[to];
    int ok = 0;
    pthread_mutex_lock(&mb->lock);
    if (mb->count < HANDOFF_CAP) {
        mb->items[mb->count++] = b;
        ok = 1;
    }
    pthread_mutex_unlock(&mb->lock);
    if (ok) atomic_fetch_add(&handed_off, 1);
    return ok;
}

static void *worker(void *arg) {
    int id = (int)(intptr_t)arg;
    unsigned seed = 0x9e3779b9u * (unsigned)(id + 1);
    struct block slots[SLOTS] = {{0}};
    for (int op = 0; op < OPS_PER_WORKER; op++) {
        int i = (int)(next_rand(&seed) % SLOTS);
        struct block *b = &slots[i];
        if (b->p) {
            CHECK(holds(b->p, b->n < 64 ? b->n : 64, b->seed));
            unsigned r = next_rand(&seed) % 4;
            if (r == 0) {
                size_t n = random_size(&seed) + 1; /* realloc(p, 0) would free */
                unsigned char *q = realloc(b->p, n);
                CHECK(q != NULL);
                size_t kept = b->n < n ? b->n : n;
                CHECK(holds(q, kept < 64 ? kept : 64, b->seed));
                b->p = q;
                b->n = n;
                fill(q, n < 64 ? n : 64, b->seed);
            } else if (r == 1 && hand_off((id + 1 + op % (WORKERS - 1)) % WORKERS, *b)) {
                b->p = NULL;
            } else {
                free(b->p);
                b->p = NULL;
            }
        } else {
            b->n = random_size(&seed);
            b->seed = next_rand(&seed);
            b->p = (next_rand(&seed) & 1) ? malloc(b->n) : calloc(1, b->n);
            CHECK(b->p != NULL);
            CHECK(malloc_usable_size(b->p) >= b->n);
            fill(b->p, b->n < 64 ? b->n : 64, b->seed);
        }
        if (op % 512 == 0) drain(id);
    }
    for (int i = 0; i < SLOTS; i++) free(slots[i].p);
    return NULL;
}

static void test_workers(void) {
    pthread_t t[WORKERS];
    for (int i = 0; i < WORKERS; i++) pthread_mutex_init(&boxes[i].lock, NULL);
    for (int i = 0; i < WORKERS; i++)
        CHECK(pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i) == 0);
    for (int i = 0; i < WORKERS; i++) CHECK(pthread_join(t[i], NULL) == 0);
    for (int i = 0; i < WORKERS; i++) drain(i); /* blocks whose owner had exited */
    CHECK(atomic_load(&handed_off) == atomic_load(&freed_remote));
    CHECK(atomic_load(&handed_off) > 0);
    printf("ok threads\nok cross-thread free\n");
}

/* Churn: each short thread allocates a little, frees most, and leaves one block for
 * the main thread to free after the thread is gone. */
static atomic_int detached_done;

static void *short_lived(void *arg) {
    unsigned seed = (unsigned)(uintptr_t)arg | 1u;
    void *keep[8];
    for (int i = 0; i < 8; i++) {
        size_t n = random_size(&seed) % 100000;
        keep[i] = malloc(n);
        CHECK(keep[i] != NULL);
        fill(keep[i], n < 32 ? n : 32, seed);
    }
    for (int i = 1; i < 8; i++) free(keep[i]);
    return keep[0];
}

static void *short_detached(void *arg) {
    free(short_lived(arg));
    atomic_fetch_add(&detached_done, 1);
    return NULL;
}

static void test_churn(void) {
    int detached = 0;
    for (int done = 0; done < CHURN_THREADS; done += CHURN_BATCH) {
        pthread_t t[CHURN_BATCH];
        for (int i = 0; i < CHURN_BATCH; i++)
            CHECK(pthread_create(&t[i], NULL, short_lived, (void *)(uintptr_t)(done + i)) == 0);
        for (int i = 0; i < CHURN_BATCH; i++) {
            void *left;
            CHECK(pthread_join(t[i], &left) == 0);
            free(left);
        }
        pthread_t d;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        CHECK(pthread_create(&d, &attr, short_detached, (void *)(uintptr_t)done) == 0);
        pthread_attr_destroy(&attr);
        detached++;
    }
    for (int waited = 0; atomic_load(&detached_done) < detached; waited++) {
        CHECK(waited < 30000); /* 30 s */
        usleep(1000);
    }
    printf("ok thread churn\n");
}

int main(void) {
    test_workers();
    test_churn();
    printf("ALL OK\n");
    return 0;
}
