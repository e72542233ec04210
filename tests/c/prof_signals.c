/* The heap profiler's stack walk from signal handlers: 4 threads with 16 KiB stacks,
 * built without frame pointers, compute in a loop (no malloc: a handler may then call
 * it) while the main thread sends them SIGUSR1; the handler runs on an alternate
 * signal stack of SIGSTKSZ bytes (sigaltstack) and mallocs, so sampled walks start on
 * the alternate stack and cross a signal frame into the interrupted code. Under
 * prof=1,prof_sample=1 nothing faults. Prints "ok N" with N the handlers that ran. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <unistd.h>
#include "check.h"

#define THREADS 4
#define ROUNDS 5000

static void *volatile sink;
static volatile long handled;
static volatile int done;

static void handler(int sig) {
    (void)sig;
    void *p = malloc(opaque(200));
    CHECK(p != NULL);
    sink = p;
    free(p);
    __atomic_fetch_add(&handled, 1, __ATOMIC_RELAXED);
}

static void *worker(void *arg) {
    (void)arg;
    stack_t ss = {.ss_sp = malloc(SIGSTKSZ), .ss_size = SIGSTKSZ, .ss_flags = 0};
    CHECK(ss.ss_sp != NULL && sigaltstack(&ss, NULL) == 0);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    CHECK(pthread_sigmask(SIG_UNBLOCK, &m, NULL) == 0);
    volatile unsigned long x = 1;
    while (!done) x = x * 6364136223846793005UL + 1442695040888963407UL;
    /* Handlers have stopped: block before the alternate stack goes away. */
    CHECK(pthread_sigmask(SIG_BLOCK, &m, NULL) == 0);
    stack_t off = {.ss_flags = SS_DISABLE};
    CHECK(sigaltstack(&off, NULL) == 0);
    free(ss.ss_sp);
    return NULL;
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_ONSTACK | SA_RESTART;
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    CHECK(pthread_sigmask(SIG_BLOCK, &m, NULL) == 0); /* until each worker has its stack */
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) {
        pthread_attr_t a;
        pthread_attr_init(&a);
        CHECK(pthread_attr_setstacksize(&a, 16384) == 0);
        CHECK(pthread_create(&th[t], &a, worker, NULL) == 0);
    }
    for (int k = 0; k < ROUNDS; k++) {
        for (int t = 0; t < THREADS; t++) pthread_kill(th[t], SIGUSR1);
        usleep(20);
    }
    done = 1;
    for (int t = 0; t < THREADS; t++) CHECK(pthread_join(th[t], NULL) == 0);
    printf("ok %ld\n", handled);
    return 0;
}
