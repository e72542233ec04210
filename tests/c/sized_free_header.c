/* rangealloc.h declares C23's free_sized and free_aligned_sized. This file compiles as
 * C and as C++, alone (glibc before 2.43 declares neither) and with glibc 2.43's own
 * declarations seen first (WITH_GLIBC_243_DECLS: the exact lines of its <stdlib.h>,
 * __THROW included), and calls both through the header's declarations. */
#include <stdlib.h>
#include <sys/cdefs.h>

#ifdef WITH_GLIBC_243_DECLS
#ifdef __cplusplus
extern "C" {
#endif
extern void free_sized(void *__ptr, size_t __size) __THROW;
extern void free_aligned_sized(void *__ptr, size_t __alignment, size_t __size) __THROW;
#ifdef __cplusplus
}
#endif
#endif

#include "rangealloc.h"

#include <stdio.h>
#include <string.h>

int main(void) {
    char *small = (char *)malloc(100);
    char *large = (char *)malloc(1 << 20);
    void *aligned = aligned_alloc(4096, 8192);
    if (!small || !large || !aligned) {
        printf("FAIL allocation\n");
        return 1;
    }
    memset(small, 1, 100);
    memset(large, 1, 1 << 20);
    free_sized(small, 100);
    free_sized(large, 1 << 20);
    free_aligned_sized(aligned, 4096, 8192);
    free_sized(NULL, 0);
    printf("ok sized frees\n");
    return 0;
}
