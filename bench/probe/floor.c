// A floor for the `realloc-growth` workload's time: an "allocator" that costs almost
// nothing, preloaded into the system worker (whose `std::alloc::System` calls malloc).
// Every object gets a slot of SLOT bytes from a pool mapped (and, by default, faulted
// in) before `main`, so no call faults a page, moves or copies anything: `realloc`
// within a slot returns its argument. Freed slots go on the freeing thread's LIFO stack;
// a thread with an empty stack takes fresh slots from the pool with one atomic add.
// Nothing is ever given back. Objects above SLOT bytes abort: this is a measuring
// tool for workloads whose objects stay below 1 MiB, not an allocator.
//
// Slots are spaced SLOT + 4160 bytes apart, so their starts fall on different 4 KiB
// page offsets and L1 sets (1 MiB-aligned starts would all share one set).
//
// Build: gcc -O2 -fno-builtin -shared -fPIC -o /tmp/floor.so bench/probe/floor.c
// (-fno-builtin: gcc would turn calloc's malloc + memset into a call to calloc.)
// Run:   LD_PRELOAD=/tmp/floor.so target/release/bench-worker-system --workload ...
// FLOOR_PREFAULT=0 leaves the pool untouched (first use of each page faults once).
// FLOOR_POOL_MB sets the pool's size (default 512).
// FLOOR_THP=1 marks the pool MADV_HUGEPAGE (with FLOOR_PREFAULT=0: each 2 MiB of the
// pool faults once, as an allocator that put every object in huge-page space would).
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SLOT ((size_t)1 << 20)
#define STRIDE (SLOT + 4160)
#define STACK 256

static char *pool;
static size_t pool_slots;
static atomic_size_t next_slot;

// initial-exec: a preloaded library's general-dynamic TLS may call malloc on first use.
static __thread void *stack[STACK] __attribute__((tls_model("initial-exec")));
static __thread unsigned depth __attribute__((tls_model("initial-exec")));

static void die(const char *msg) {
    write(2, msg, strlen(msg));
    abort();
}

static void setup(void) {
    if (pool)
        return;
    const char *mb = getenv("FLOOR_POOL_MB");
    size_t bytes = (size_t)(mb ? atol(mb) : 512) << 20;
    const char *pre = getenv("FLOOR_PREFAULT");
    int populate = !(pre && pre[0] == '0');
    pool_slots = bytes / STRIDE;
    void *p = mmap(NULL, pool_slots * STRIDE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (populate ? MAP_POPULATE : 0),
                   -1, 0);
    if (p == MAP_FAILED)
        die("floor: mmap failed\n");
    const char *thp = getenv("FLOOR_THP");
    if (thp && thp[0] == '1' && madvise(p, pool_slots * STRIDE, MADV_HUGEPAGE) != 0)
        die("floor: madvise(MADV_HUGEPAGE) failed\n");
    pool = p;
}

__attribute__((constructor)) static void init(void) { setup(); }

void *malloc(size_t n) {
    if (n > SLOT)
        die("floor: object above 1 MiB\n");
    if (depth)
        return stack[--depth];
    if (!pool)
        setup();
    size_t i = atomic_fetch_add_explicit(&next_slot, 1, memory_order_relaxed);
    if (i >= pool_slots)
        die("floor: pool exhausted\n");
    return pool + i * STRIDE;
}

void free(void *p) {
    if (!p)
        return;
    if (depth < STACK) {
        stack[depth++] = p;
    }
    // A full stack drops the slot (never reused): fine for a measuring tool.
}

void *calloc(size_t n, size_t m) {
    size_t b;
    if (__builtin_mul_overflow(n, m, &b))
        return NULL;
    void *p = malloc(b);
    memset(p, 0, b); // reused slots hold old bytes
    return p;
}

void *realloc(void *p, size_t n) {
    if (!p)
        return malloc(n);
    if (n > SLOT)
        die("floor: object above 1 MiB\n");
    return p;
}

int posix_memalign(void **out, size_t align, size_t n) {
    if (align > 4096)
        die("floor: alignment above 4 KiB\n");
    // A slot start is 64-byte aligned; round up inside the slot.
    char *p = malloc(n + align);
    char *q = (char *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1));
    *out = q; // free(q) pushes q: a slot start for any later object, still SLOT - align free
    return 0;
}

void *aligned_alloc(size_t align, size_t n) {
    void *p;
    posix_memalign(&p, align, n);
    return p;
}

void *memalign(size_t align, size_t n) { return aligned_alloc(align, n); }

size_t malloc_usable_size(void *p) {
    (void)p;
    return SLOT / 2; // conservative: below what any slot (even an aligned one) has left
}
