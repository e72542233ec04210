/* Frees and reallocs of sampled objects from a signal handler while the interrupted
 * thread holds the heap profiler's table lock. Under prof=1,prof_sample=1 every
 * allocation is sampled. The main thread keeps the lock busy: it resets the profile's
 * totals (mallctl "prof.reset", a pass over the whole stack table under the lock, and
 * no allocation, so the handler never interrupts an allocator call) over and over,
 * while another thread sends it SIGUSR1. The handler frees the next object of a pool
 * allocated beforehand (small blocks, on pages the profiler marked, and large objects,
 * alternately), or reallocs it (one in four of each kind), until the pool is used up. A
 * handler that waited for the lock would wait for its own thread: the program would
 * never finish. At the end
 * the main thread frees what is left, resets once more (which frees whatever the
 * handlers' frees left for later) and dumps to argv[1]: the pool's site must have
 * nothing in use. Prints "SITE prof_pool_site 0x...", then "ok HANDLED". */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include "check.h"

#define POOL 4000
#define SMALL 48
#define LARGE (40 << 10)

static void *pool[POOL];
static void *moved[POOL];
static volatile long next_index;
static volatile long handled;
static volatile int done;
static pthread_t main_thread;

__attribute__((noinline)) void prof_pool_site(long i) {
    char *p = malloc(i % 2 ? LARGE : SMALL);
    CHECK(p != NULL);
    p[0] = (char)i;
    pool[i] = p;
}

static void handler(int sig) {
    (void)sig;
    int saved = errno;
    long i = next_index;
    if (i < POOL) {
        next_index = i + 1;
        if (i % 8 < 2) {
            /* Grown: a small block moves, a large one may grow in place. */
            char *q = realloc(pool[i], (i % 2 ? LARGE : SMALL) * 2);
            CHECK(q != NULL && q[0] == (char)i);
            moved[i] = q;
        } else {
            free(pool[i]);
        }
        pool[i] = NULL;
        handled++;
    }
    errno = saved;
}

static void *signaller(void *arg) {
    (void)arg;
    while (!done) {
        pthread_kill(main_thread, SIGUSR1);
        sched_yield();
    }
    return NULL;
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    printf("SITE prof_pool_site %p\n", (void *)prof_pool_site);
    int (*dump)(const char *) = (int (*)(const char *))dlsym(RTLD_DEFAULT, "rangealloc_prof_dump");
    int (*mallctl)(const char *, void *, size_t *, void *, size_t) =
        (int (*)(const char *, void *, size_t *, void *, size_t))dlsym(RTLD_DEFAULT, "mallctl");
    CHECK(dump != NULL && mallctl != NULL);
    for (long i = 0; i < POOL; i++) prof_pool_site(i);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_RESTART;
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
    main_thread = pthread_self();
    pthread_t th;
    CHECK(pthread_create(&th, NULL, signaller, NULL) == 0);
    /* Until the handlers have taken the whole pool. */
    while (next_index < POOL) CHECK(mallctl("prof.reset", NULL, NULL, NULL, 0) == 0);
    done = 1;
    CHECK(pthread_join(th, NULL) == 0);
    /* Signals stop with the signaller, before the rest is freed (a handler then
     * would free a block twice). */
    signal(SIGUSR1, SIG_IGN);
    for (long i = 0; i < POOL; i++) {
        free(pool[i]);
        free(moved[i]);
    }
    CHECK(mallctl("prof.reset", NULL, NULL, NULL, 0) == 0);
    CHECK(dump(argv[1]) == 0);
    printf("ok %ld\n", handled);
    return 0;
}
