/* A short-lived process for bench/probe/startup.py: 100 malloc/free pairs, so the
 * allocator sets itself up, and nothing else. Links only libc. */
#include <stdlib.h>
#include <string.h>

int main(void) {
    for (int i = 0; i < 100; i++) {
        char *p = malloc(100 + i * 10);
        if (p == NULL)
            return 1;
        memset(p, 1, 100);
        free(p);
    }
    return 0;
}
