/*
 * rangealloc.h: the extended C API of librangealloc.so.
 *
 * The standard allocation functions (malloc, free, calloc, realloc, reallocarray,
 * posix_memalign, aligned_alloc, memalign, valloc, pvalloc, malloc_usable_size) and
 * C++ operator new/delete need no header of ours: librangealloc.so defines them with
 * glibc's semantics, and replaces the C library's when preloaded
 * (LD_PRELOAD=librangealloc.so program) or linked (-lrangealloc, see rangealloc.pc).
 * It also answers jemalloc's non-standard API (mallocx, rallocx, xallocx, sallocx,
 * dallocx, sdallocx, nallocx, mallctl, mallctlnametomib, mallctlbymib,
 * malloc_stats_print), declared by <jemalloc/jemalloc.h>, so programs linked with
 * jemalloc run entirely on rangealloc under LD_PRELOAD.
 *
 * This header declares what is rangealloc's own. Statistics and options
 * (rangealloc_stats_print, a statistics struct getter) will be added here when the
 * engine's stats API is published; RANGEALLOC_OPTIONS is read from the environment.
 */
#ifndef RANGEALLOC_H
#define RANGEALLOC_H

#ifdef __cplusplus
extern "C" {
#endif

/* The version this header belongs to; rangealloc_version() returns the library's. */
#define RANGEALLOC_VERSION "0.1.0"

/*
 * The library version, e.g. "0.1.0": a static NUL-terminated string.
 * To test at run time whether rangealloc is the process's allocator (for instance
 * under LD_PRELOAD), look the symbol up: dlsym(RTLD_DEFAULT, "rangealloc_version").
 */
const char *rangealloc_version(void);

#ifdef __cplusplus
}
#endif

#endif /* RANGEALLOC_H */
