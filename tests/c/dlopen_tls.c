/* The dynamic loader as an allocator client: dlopen/dlclose of a library with TLS, in
 * a loop, from many threads (the loader mallocs link maps, scope arrays and dynamic
 * TLS blocks, and frees them in dlclose and at thread exit).
 * Usage: dlopen_tls /path/to/libdlopen_tls.so */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>

#include "check.h"

#define ROUNDS 20
#define THREADS 16

static const char *lib_path;

static void *use_library(void *arg) {
    unsigned char seed = (unsigned char)(uintptr_t)arg;
    void *h = dlopen(lib_path, RTLD_NOW | RTLD_LOCAL);
    CHECK(h != NULL);
    unsigned long (*touch)(unsigned char) = (unsigned long (*)(unsigned char))dlsym(h, "touch_tls");
    CHECK(touch != NULL);
    CHECK(touch(seed) == 128ul * seed);
    CHECK(dlclose(h) == 0);
    return NULL;
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    lib_path = argv[1];
    for (int round = 0; round < ROUNDS; round++) {
        void *h = dlopen(lib_path, RTLD_NOW | RTLD_LOCAL); /* keep it loaded this round */
        CHECK(h != NULL);
        pthread_t t[THREADS];
        for (int i = 0; i < THREADS; i++)
            CHECK(pthread_create(&t[i], NULL, use_library, (void *)(uintptr_t)(i + 1)) == 0);
        for (int i = 0; i < THREADS; i++) CHECK(pthread_join(t[i], NULL) == 0);
        CHECK(dlclose(h) == 0);
    }
    printf("ALL OK\n");
    return 0;
}
