/* The heap profiler's stack walk on a coroutine stack (makecontext/swapcontext), which
 * is neither the thread's stack nor an alternate signal stack, so the walk has no
 * stack bound from the C library. The coroutine runs on a 64 KiB stack mapped between
 * two PROT_NONE guard pages and allocates:
 *   - at `prof_coro_site`, an ordinary C function (many times);
 *   - through `prof_odd_frame`, hand-written code whose unwind rule takes the CFA from
 *     `rbp` while `rbp` points at the upper guard page, and then at an address that
 *     is not mapped at all: a walk that follows the rules reads there.
 * Run with RANGEALLOC_OPTIONS=prof=1,prof_sample=1 (every allocation sampled); dumps
 * the profile through rangealloc_prof_dump(argv[1]) and prints the sites' addresses
 * ("SITE name 0x...": the site, the coroutine's function and the odd frame) and
 * "DUMPED". */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#include "check.h"

#define CORO_STACK (64 << 10)
#define SITE_CALLS 1000
#define SITE_SIZE 1000

/* void *prof_odd_frame(size_t size, void *bad_rbp): malloc(size) called with the
 * frame's CFA described as rbp + 16 and rbp = bad_rbp; the caller's rbp is restored. */
__asm__(".text\n"
        ".globl prof_odd_frame\n"
        ".type prof_odd_frame, @function\n"
        "prof_odd_frame:\n"
        ".cfi_startproc\n"
        "push %rbp\n"
        ".cfi_def_cfa_offset 16\n"
        ".cfi_offset %rbp, -16\n"
        "mov %rsi, %rbp\n"
        ".cfi_def_cfa %rbp, 16\n"
        "call malloc@PLT\n"
        ".cfi_def_cfa %rsp, 16\n"
        "pop %rbp\n"
        ".cfi_def_cfa %rsp, 8\n"
        "ret\n"
        ".cfi_endproc\n"
        ".size prof_odd_frame, .-prof_odd_frame\n");
void *prof_odd_frame(size_t size, void *bad_rbp);

static ucontext_t main_ctx, coro_ctx;
static void *kept[SITE_CALLS];
static void *upper_guard, *unmapped;

/* Stores the block itself: a `return malloc(...)` would be a tail call, gone from the
 * stack. */
__attribute__((noinline)) void prof_coro_site(int i) {
    kept[i] = malloc(opaque(SITE_SIZE));
    CHECK(kept[i] != NULL);
}

__attribute__((noinline)) void prof_coroutine_main(void) {
    for (int i = 0; i < SITE_CALLS; i++)
        prof_coro_site(i);
    void *a = prof_odd_frame(opaque(100), upper_guard);
    void *b = prof_odd_frame(opaque(100), unmapped);
    CHECK(a != NULL && b != NULL);
    free(a);
    free(b);
    CHECK(swapcontext(&coro_ctx, &main_ctx) == 0);
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    long page = sysconf(_SC_PAGESIZE);
    /* [guard][stack][guard] */
    char *map = mmap(NULL, CORO_STACK + 2 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
    CHECK(map != MAP_FAILED);
    CHECK(mprotect(map + page, CORO_STACK, PROT_READ | PROT_WRITE) == 0);
    upper_guard = map + page + CORO_STACK;
    /* An address with nothing mapped: a page mapped, then unmapped. */
    unmapped = mmap(NULL, page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(unmapped != MAP_FAILED && munmap(unmapped, page) == 0);

    CHECK(getcontext(&coro_ctx) == 0);
    coro_ctx.uc_stack.ss_sp = map + page;
    coro_ctx.uc_stack.ss_size = CORO_STACK;
    coro_ctx.uc_link = &main_ctx;
    makecontext(&coro_ctx, prof_coroutine_main, 0);
    CHECK(swapcontext(&main_ctx, &coro_ctx) == 0);

    printf("SITE prof_coro_site %p\nSITE prof_coroutine_main %p\nSITE prof_odd_frame %p\n",
           (void *)prof_coro_site, (void *)prof_coroutine_main, (void *)prof_odd_frame);
    int (*dump)(const char *) = (int (*)(const char *))dlsym(RTLD_DEFAULT, "rangealloc_prof_dump");
    CHECK(dump != NULL);
    CHECK(dump(argv[1]) == 0);
    printf("DUMPED\n");
    for (int i = 0; i < SITE_CALLS; i++)
        free(kept[i]);
    CHECK(munmap(map, CORO_STACK + 2 * page) == 0);
    return 0;
}
