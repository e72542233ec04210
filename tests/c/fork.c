/* fork() from several threads while others allocate: the allocator's pthread_atfork
 * handlers must leave the child with a consistent, unlocked heap. Each child allocates
 * and frees (small, large, realloc, from a new thread, and in a grandchild) and exits
 * 0; an alarm turns a deadlock in the child into a failure. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

#define BUSY_THREADS 8
#define FORKING_THREADS 4
#define FORKS_PER_THREAD 10
#define CHILD_ALARM_SECONDS 30

static atomic_int stop;

static void *busy(void *arg) {
    unsigned s = (unsigned)(uintptr_t)arg * 2654435761u | 1u;
    void *slots[64] = {0};
    while (!atomic_load(&stop)) {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        int i = (int)(s % 64);
        free(slots[i]);
        size_t n = (s >> 8) % ((s & 0x100) ? 300000 : 1024);
        slots[i] = malloc(n);
        CHECK(slots[i] != NULL);
        memset(slots[i], (int)i, n < 64 ? n : 64);
    }
    for (int i = 0; i < 64; i++) free(slots[i]);
    return NULL;
}

static void *child_thread(void *arg) {
    (void)arg;
    void *p[100];
    for (int i = 0; i < 100; i++) CHECK((p[i] = malloc((size_t)i * 97)) != NULL);
    for (int i = 0; i < 100; i++) free(p[i]);
    return NULL;
}

/* Runs in the child: the only thread, with whatever the parent's threads left. */
static void child_work(int depth) {
    alarm(CHILD_ALARM_SECONDS);
    void *blocks[500];
    for (int i = 0; i < 500; i++) {
        size_t n = (size_t)(i * 131) % 5000 + (i % 50 == 0 ? (1u << 20) : 0);
        blocks[i] = malloc(n);
        CHECK(blocks[i] != NULL);
        fill(blocks[i], n < 128 ? n : 128, (unsigned)i);
    }
    for (int i = 0; i < 500; i += 2) {
        unsigned char *q = realloc(blocks[i], 20000);
        CHECK(q != NULL);
        blocks[i] = q;
    }
    for (int i = 1; i < 500; i += 2) {
        size_t n = (size_t)(i * 131) % 5000 + (i % 50 == 0 ? (1u << 20) : 0);
        CHECK(holds(blocks[i], n < 128 ? n : 128, (unsigned)i));
    }
    for (int i = 0; i < 500; i++) free(blocks[i]);
    void *c = calloc(1000, 1000);
    CHECK(c != NULL && all_zero(c, 1000 * 1000));
    free(c);
    void *a = NULL;
    CHECK(posix_memalign(&a, 4096, 10000) == 0);
    free(a);

    pthread_t t;
    CHECK(pthread_create(&t, NULL, child_thread, NULL) == 0);
    CHECK(pthread_join(t, NULL) == 0);

    if (depth == 0) {
        pid_t g = fork();
        CHECK(g >= 0);
        if (g == 0) {
            child_work(1);
            _exit(0);
        }
        int status;
        CHECK(waitpid(g, &status, 0) == g);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
}

static int fork_and_check(int depth) {
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        child_work(depth);
        _exit(0);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "child %d failed: status 0x%x\n", (int)pid, status);
        return 0;
    }
    return 1;
}

static atomic_int children_ok;

static void *forker(void *arg) {
    (void)arg;
    for (int i = 0; i < FORKS_PER_THREAD; i++) {
        void *p = malloc(1000); /* keep allocating in the parent around forks */
        CHECK(p != NULL);
        if (fork_and_check(i % 5 == 0 ? 0 : 1)) atomic_fetch_add(&children_ok, 1);
        free(p);
    }
    return NULL;
}

int main(void) {
    pthread_t b[BUSY_THREADS], f[FORKING_THREADS];
    for (int i = 0; i < BUSY_THREADS; i++)
        CHECK(pthread_create(&b[i], NULL, busy, (void *)(uintptr_t)(i + 1)) == 0);
    for (int i = 0; i < FORKING_THREADS; i++)
        CHECK(pthread_create(&f[i], NULL, forker, NULL) == 0);
    int main_ok = 0;
    for (int i = 0; i < 10; i++) main_ok += fork_and_check(0);
    for (int i = 0; i < FORKING_THREADS; i++) CHECK(pthread_join(f[i], NULL) == 0);
    atomic_store(&stop, 1);
    for (int i = 0; i < BUSY_THREADS; i++) CHECK(pthread_join(b[i], NULL) == 0);
    CHECK(main_ok == 10);
    CHECK(atomic_load(&children_ok) == FORKING_THREADS * FORKS_PER_THREAD);
    printf("ok fork from %d threads, %d children\n", FORKING_THREADS + 1,
           10 + FORKING_THREADS * FORKS_PER_THREAD);
    printf("ALL OK\n");
    return 0;
}
