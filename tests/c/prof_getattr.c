/* pthread_getattr_np under the heap profiler: glibc holds the thread's lock while it
 * allocates there (the initial thread's stack is read from /proc/self/maps through
 * stdio, every thread's CPU set is realloc'd), so a sampled allocation made inside must
 * not ask pthread_getattr_np for the stack its walk runs on: the thread waited on its
 * own lock. Run with prof=1,prof_sample=1 (every allocation sampled). The main thread
 * and a second thread each ask for their own attributes first, before any other
 * allocation of theirs. Prints "ALL OK". */
#define _GNU_SOURCE
#include <pthread.h>

#include "check.h"

static size_t stack_size(void) {
    pthread_attr_t attr;
    CHECK(pthread_getattr_np(pthread_self(), &attr) == 0);
    size_t size = 0;
    CHECK(pthread_attr_getstacksize(&attr, &size) == 0);
    CHECK(pthread_attr_destroy(&attr) == 0);
    return size;
}

static void *thread_main(void *arg) {
    (void)arg;
    return (void *)stack_size();
}

int main(void) {
    CHECK(stack_size() > 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, thread_main, NULL) == 0);
    void *size = NULL;
    CHECK(pthread_join(t, &size) == 0);
    CHECK(size != NULL);
    printf("ALL OK\n");
    return 0;
}
