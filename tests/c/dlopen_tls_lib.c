/* A shared library with a large thread-local array: dlopen()ing it makes the dynamic
 * loader allocate each thread's copy lazily, through malloc, on first access. */
#include <string.h>

static __thread unsigned char tls_block[64 * 1024];

unsigned long touch_tls(unsigned char seed) {
    unsigned long sum = 0;
    memset(tls_block, seed, sizeof tls_block);
    for (size_t i = 0; i < sizeof tls_block; i += 512) sum += tls_block[i];
    return sum;
}
