/* A program whose first allocation is glibc's own, made inside `atexit`: the 33rd
 * registration fills glibc's static block of 32 handlers, and `__new_exitfn` callocs the
 * next block while it holds `__exit_funcs_lock` (not recursive). The profiler starts at
 * that first allocation; with `prof_dump` or `prof_leak` it used to register its exit
 * handler there with `atexit`, which waited on the same lock forever.
 * Prints "ok" and leaves one 100-byte block allocated for the leak report. */
#include <stdio.h>
#include <stdlib.h>

/* glibc's `struct exit_function_list` holds 32 handlers in its static first block. */
#define STATIC_EXIT_HANDLERS 32

static void nothing(void) {}

int main(void) {
    for (int i = 0; i < STATIC_EXIT_HANDLERS + 1; i++)
        if (atexit(nothing) != 0)
            return 2;
    void *kept = malloc(100);
    printf("ok %d\n", kept != NULL);
    return 0;
}
