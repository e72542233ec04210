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
 * jemalloc run entirely on rangealloc under LD_PRELOAD; glibc's internal names
 * (__libc_malloc, __libc_calloc, __libc_realloc, __libc_free, __libc_memalign,
 * __libc_valloc, __libc_pvalloc, __posix_memalign); C23's free_sized(p, size) and
 * free_aligned_sized(p, align, size), declared by <stdlib.h> from glibc 2.43 and by
 * this header (below) for older C libraries (a size larger than the block's usable
 * size aborts with a one-line report); and glibc's
 * <malloc.h> introspection, answered from rangealloc's own state:
 *   malloc_trim(pad)   purges every free region and the free pages of every thread's
 *                      heap, idle threads' included (as rangealloc_purge); returns 1
 *                      if memory was released; pad is ignored.
 *   mallinfo2()        arena    = bytes held for small objects: their pages, dirty
 *                                 free space and retired regions (metadata excluded)
 *                      ordblks  = free regions in the region table
 *                      smblks   = 0 (no fastbins)
 *                      hblks    = live large objects (glibc: mmapped chunks)
 *                      hblkhd   = bytes of live large objects
 *                      usmblks  = 0 (as glibc)
 *                      fsmblks  = 0 (no fastbins)
 *                      uordblks = bytes of live small blocks, at their class size
 *                      fordblks = arena - uordblks
 *                      keepcost = dirty free bytes malloc_trim would release now
 *                      so uordblks + hblkhd is every live byte (stats "allocated").
 *   mallinfo()         the same, each field clamped to INT_MAX.
 *   malloc_info(0, f)  XML in glibc's shape (options != 0: -1 with errno EINVAL).
 *   malloc_stats()     rangealloc's text report on stderr.
 *   mallopt(p, v)      M_TRIM_THRESHOLD: the fixed part of the dirty budget (bytes;
 *                      negative: none; a quarter of the live large bytes is added);
 *                      M_MMAP_THRESHOLD: accepted without effect (0..32 MiB, else 0
 *                      is returned); every other parameter is accepted without
 *                      effect. Returns 1 on success.
 *
 * This header declares what is rangealloc's own: its version, statistics, an explicit
 * purge, the run-time setters, the program's option string and the heap profiler's
 * dump. Options are read once, at the first allocation, from rangealloc_conf (below)
 * and then from the environment variable RANGEALLOC_OPTIONS=key=value,..., whose keys
 * override rangealloc_conf's one by one (purge_delay_ms, purge_mode=dontneed|free,
 * background_purge, secure, stats, verbose, dirty_budget_mb, prof, prof_sample,
 * prof_dump, prof_leak; see the README).
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

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* A statistics snapshot. Byte counts are size_t, event counts uint64_t. */
struct rangealloc_stats {
    size_t allocated;      /* bytes in live blocks (small at class size, large whole) */
    size_t active;         /* bytes of pages in use by size classes + live large objects */
    size_t resident;       /* upper bound on resident memory: active, dirty, metadata */
    size_t mapped;         /* address space reserved from the OS */
    size_t retained;       /* mapped but not resident */
    size_t metadata;       /* bytes of the metadata arena in use */
    size_t large_regions;  /* live large objects (one region each) */
    size_t segment_regions;/* live small-object segments */
    size_t free_regions;   /* free regions in the region table */
    size_t dirty_bytes;    /* free bytes not purged yet */
    size_t heaps;          /* thread heaps created */
    size_t abandoned_heaps;/* heaps of exited threads waiting for adoption */
    uint64_t lock_fast_success;  /* region lookups that locked without the writer mutex */
    uint64_t lock_abort;         /* ... that found the region write-locked by an update */
    uint64_t lock_retry;         /* ... that found a detached region and retried */
    uint64_t lock_miss;          /* ... that found no region covering the address */
    uint64_t lock_slow;          /* ... finished under the writer mutex */
    uint64_t writer_acquisitions;/* table writer-mutex acquisitions */
    uint64_t syscalls_mmap, syscalls_munmap, syscalls_mremap, syscalls_mprotect;
    uint64_t syscalls_madvise_dontneed, syscalls_madvise_free, syscalls_madvise_guard;
    uint64_t purge_passes;
    uint64_t purged_bytes;
    /* Added after 0.1.0's first layout (a shorter struct still gets its prefix): */
    uint64_t syscalls_madvise_hugepage; /* MADV_HUGEPAGE marks: one per huge-page reservation */
    uint64_t reallocs_grown_in_place;   /* growing reallocs of large objects done in place */
    uint64_t reallocs_moved;            /* ... that moved by copying */
    uint64_t reallocs_copied_bytes;     /* bytes those copies copied */
    uint64_t reallocs_remapped;         /* ... that moved their pages with mremap */
    uint64_t reallocs_remapped_bytes;   /* bytes those moves carried */
    uint64_t reallocs_sparse;           /* ... that copied only the pages holding bytes */
    uint64_t reallocs_sparse_bytes;     /* bytes those copies copied (whole pages) */
};

/*
 * Fills *out with a snapshot; pass sizeof(struct rangealloc_stats) as size (only that
 * many bytes are written, so programs built against an older header keep working).
 * Returns 0, or EINVAL when out is NULL.
 */
int rangealloc_stats_get(struct rangealloc_stats *out, size_t size);

/* Writes the human-readable report (as printed at exit with stats=1) to stream, or to
 * stderr when stream is NULL. */
void rangealloc_stats_print(FILE *stream);

/* Returns every free page to the OS now, whatever the purge delay: free regions and
 * the free pages of every thread's heap, including threads that are blocked or idle
 * (not the one empty page each size class keeps per heap, nor blocks other threads
 * freed into a page, which return at its owner's next allocation or exit). Returns
 * the bytes purged. */
size_t rangealloc_purge(void);

/*
 * Writes the statistics as one JSON object into buf, snprintf-style: at most size - 1
 * bytes and a NUL; returns the length of the whole text (>= size means truncated; call
 * with NULL, 0 to measure). The keys are those of struct rangealloc_stats' groups:
 * version, allocated, active, resident, mapped, retained, metadata, heaps,
 * abandoned_heaps, purge_passes, purged_bytes, regions {...}, lock {...},
 * syscalls {...}, mmap_lock_writers, classes [{block_size, live, allocs, frees}].
 * malloc_stats_print with "J" in its options writes the same object.
 */
size_t rangealloc_stats_json(char *buf, size_t size);

/*
 * Run-time settings: the options that can change safely while the program runs.
 * Each takes effect within a second (the background purger's longest sleep).
 */
/* Free pages dirty this long are purged by the next pass; UINT64_MAX: never. */
void rangealloc_set_purge_delay_ms(uint64_t ms);
/* Switches the background purger on (non-zero; its thread starts the first time) or
 * off. */
void rangealloc_set_background_purge(int on);
/* Switches the statistics report on stderr at exit on or off. */
void rangealloc_set_stats_at_exit(int on);
/* The fixed part of the dirty budget (a quarter of the live large bytes is added):
 * dirty free bytes kept for reuse before the excess is purged at once; applied now. */
void rangealloc_set_dirty_budget(size_t bytes);

/*
 * The program's own options, as jemalloc's malloc_conf: define it with a string
 * literal, e.g.
 *     const char *rangealloc_conf = "purge_delay_ms=200,background_purge=1";
 * It is read before the first allocation is served; RANGEALLOC_OPTIONS overrides it
 * key by key; a malformed item is reported once on stderr. librangealloc.so looks it
 * up as a weak symbol: a program linked with -lrangealloc exports it automatically;
 * under LD_PRELOAD alone, link the program with -rdynamic so that it is exported.
 */
extern const char *rangealloc_conf;

/*
 * Heap profiling (RANGEALLOC_OPTIONS=prof=1, see the README's "Heap profiling").
 * Writes a gzip-compressed pprof profile of the sampled allocation stacks (sample types
 * alloc_objects, alloc_space, inuse_objects, inuse_space) to path, or, when path is
 * NULL, to <prof_dump prefix>.<pid>.<seq>.heap. Read it with
 * `go tool pprof <program> <file>`. Returns 0, or an errno value: ENOENT if profiling
 * was never on, EINVAL for an empty path or a NULL one without prof_dump, else the
 * error of writing the file. jemalloc's mallctl("prof.dump"), "prof.active",
 * "prof.reset" and "opt.prof" work too.
 */
int rangealloc_prof_dump(const char *path);

/*
 * C23's sized frees, for programs built against a C library that does not declare
 * them (glibc before 2.43). free_sized(p, size): size is the size p was allocated
 * with; free_aligned_sized(p, alignment, size): p came from aligned_alloc(alignment,
 * size). NULL is ignored. A size larger than the block's usable size, or a block not
 * aligned to alignment, aborts with one line naming the call and the pointer. The
 * declarations match glibc 2.43's in <stdlib.h> (including its C++ exception
 * specification, __THROW), so both headers can be included in either order.
 */
#if defined(__cplusplus) && __cplusplus >= 201103L
#define RANGEALLOC_NOTHROW noexcept(true)
#elif defined(__cplusplus)
#define RANGEALLOC_NOTHROW throw()
#else
#define RANGEALLOC_NOTHROW
#endif
void free_sized(void *ptr, size_t size) RANGEALLOC_NOTHROW;
void free_aligned_sized(void *ptr, size_t alignment, size_t size) RANGEALLOC_NOTHROW;

#ifdef __cplusplus
}
#endif

#endif /* RANGEALLOC_H */
