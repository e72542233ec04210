/* Probe (hazard10, session 10): reallocs and frees of sampled objects from a signal
 * handler that interrupts its own thread while that thread allocates, under prof=1.
 * The question: when the signal lands while the thread holds the profile table's lock
 * inside `record` (the heap's refill recording a sampled block) or `forget` (the free
 * of a block of a marked page), the handler's realloc takes the profiler's "copy and
 * defer the free" path, which allocates on the interrupted heap: is that unsafe?
 *
 * The main thread allocates and frees 48-byte blocks in a ring, each filled with its
 * own tag and checked before its free (a block handed out twice shows as a wrong tag);
 * another thread signals it in a loop; the handler takes the next object of a pool
 * allocated beforehand and reallocs it (large to small, small to small, large to
 * large) or frees it, checking the contents it keeps. Prints
 * "ok <handled> <allocations> skipped <n>".
 *
 * As it is, the handler acts wherever the signal lands: that is a misuse (README: not
 * async-signal-safe) and it crashes with prof=0 as well. With PROBE_HOLDER_OFF set to
 * the offset of the table lock's word in the preloaded library (the address its
 * `lock cmpxchg` targets: `objdump -d librangealloc.so | grep -A0 "lock cmpxchg" |
 * grep prof5table6TABLES`, e.g. 0x2fe400 = TABLES+0x40 at d361a88), the handler acts
 * only while its own thread holds that lock: the case in question alone.
 *
 *   cc -O2 -g -pthread -o psa prof_signal_alloc.c -I../../tests/c -ldl
 *   PROBE_HOLDER_OFF=0x2fe400 RANGEALLOC_OPTIONS=prof=1,prof_sample=1 \
 *       LD_PRELOAD=target/release/librangealloc.so ./psa
 *
 * Results at d361a88 (kernel 6.18, load 7-14, 120 s runs):
 * - acting wherever the signal lands: SIGSEGV with prof=1 at prof_sample 1, 4096 and
 *   65536 (5 of 6 runs; the sixth hung), and with prof=0 (3 of 3);
 * - acting only while the lock is held (PROBE_HOLDER_OFF): 6 of 6 runs clean at
 *   prof_sample 1/4096/65536, 321-1,099 handler calls each (4,619 in all), no tag
 *   mismatch. At every point where the lock is held the heap's shared state is
 *   consistent (see the hazard10 commit message); the handler's allocation there is
 *   the one the same realloc makes an instruction before or after the lock. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "check.h" /* tests/c */

#define POOL 4000
#define RING 256
#define SMALL 48
#define LARGE (40 << 10)

static void *pool[POOL];
static size_t pool_len[POOL];
static void *moved[POOL];
static size_t moved_len[POOL];
static volatile long next_index;
static volatile long handled;
static volatile int done;
static pthread_t main_thread;
/* With PROBE_HOLDER_OFF (the profile table lock word's offset in the library, from its
 * disassembly), the handler acts only while its thread holds that lock. */
static volatile uintptr_t *holder;
static volatile long skipped;

static size_t new_len(long i) {
    switch (i % 4) {
    case 0: return SMALL;     /* large to small: the copy is a small block */
    case 1: return 2 * SMALL; /* small to small */
    case 3: return 2 * LARGE; /* large to large */
    default: return 0;        /* free */
    }
}

static void fill_checked(const unsigned char *p, size_t len, unsigned char tag) {
    for (size_t k = 0; k < len; k++) CHECK(p[k] == tag);
}

static void handler(int sig) {
    (void)sig;
    int saved = errno;
    long i = next_index;
    if (holder != NULL && *holder != (uintptr_t)pthread_self()) {
        skipped++;
        i = POOL;
    }
    if (i < POOL) {
        next_index = i + 1;
        size_t len = new_len(i);
        if (len == 0) {
            free(pool[i]);
        } else {
            unsigned char *q = realloc(pool[i], len);
            CHECK(q != NULL);
            size_t kept = len < pool_len[i] ? len : pool_len[i];
            fill_checked(q, kept, (unsigned char)i);
            memset(q, (unsigned char)i, len);
            moved[i] = q;
            moved_len[i] = len;
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

int main(void) {
    int (*mallctl)(const char *, void *, size_t *, void *, size_t) =
        (int (*)(const char *, void *, size_t *, void *, size_t))dlsym(RTLD_DEFAULT, "mallctl");
    CHECK(mallctl != NULL);
    const char *off = getenv("PROBE_HOLDER_OFF");
    if (off != NULL) {
        Dl_info info;
        CHECK(dladdr((void *)mallctl, &info) != 0);
        holder = (volatile uintptr_t *)((char *)info.dli_fbase + strtoul(off, NULL, 0));
    }
    for (long i = 0; i < POOL; i++) {
        pool_len[i] = (i % 4 == 1 || (i % 4 == 2 && i % 8 < 4)) ? SMALL : LARGE;
        pool[i] = malloc(pool_len[i]);
        CHECK(pool[i] != NULL);
        memset(pool[i], (unsigned char)i, pool_len[i]);
    }
    static unsigned char *ring[RING];
    static unsigned char tags[RING];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_RESTART;
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
    main_thread = pthread_self();
    pthread_t th;
    CHECK(pthread_create(&th, NULL, signaller, NULL) == 0);
    long allocations = 0;
    time_t start = time(NULL);
    while (next_index < POOL && time(NULL) - start < 120) {
        long j = allocations % RING;
        if (ring[j] != NULL) {
            fill_checked(ring[j], SMALL, tags[j]);
            free(ring[j]);
        }
        tags[j] = (unsigned char)(allocations * 7 + 1);
        ring[j] = malloc(SMALL);
        CHECK(ring[j] != NULL);
        memset(ring[j], tags[j], SMALL);
        allocations++;
    }
    done = 1;
    CHECK(pthread_join(th, NULL) == 0);
    signal(SIGUSR1, SIG_IGN);
    for (long j = 0; j < RING; j++) {
        if (ring[j] != NULL) {
            fill_checked(ring[j], SMALL, tags[j]);
            free(ring[j]);
        }
    }
    for (long i = 0; i < POOL; i++) {
        if (moved[i] != NULL) fill_checked(moved[i], moved_len[i], (unsigned char)i);
        free(pool[i]);
        free(moved[i]);
    }
    CHECK(mallctl("prof.reset", NULL, NULL, NULL, 0) == 0);
    printf("ok %ld %ld skipped %ld\n", handled, allocations, skipped);
    return 0;
}
