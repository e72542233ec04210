/* Programs whose first allocation is one glibc makes while it holds one of its own
 * (non-recursive) locks. The allocator's process set-up runs at the first allocation;
 * it must not call back into the glibc function holding that lock.
 *   atexit:     the 33rd `atexit` fills glibc's static block of 32 handlers, and
 *               `__new_exitfn` callocs the next block under `__exit_funcs_lock`
 *               (with `stats=1` the set-up used to register the report with `atexit`);
 *   atfork:     the 49th `pthread_atfork` outgrows glibc's 48 static handler slots
 *               and mallocs under `atfork_lock` (the set-up used to register the fork
 *               handlers with `pthread_atfork`); then a fork, whose child allocates;
 *   fork-first: a fork before any allocation (the fork handlers run on an engine not
 *               set up yet); both processes then allocate.
 * Prints "ok" and exits 0. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* glibc's `struct exit_function_list` holds 32 handlers in its static first block. */
#define STATIC_EXIT_HANDLERS 32
/* glibc's `fork_handlers` dynarray keeps 48 entries in static storage. */
#define STATIC_FORK_HANDLERS 48

static void nothing(void) {}

/* Forks; the child allocates, frees and exits 0. 0 when the child did so. */
static int fork_and_allocate_in_child(void) {
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid == 0) {
        char *p = malloc(1000);
        if (p == NULL)
            _exit(3);
        memset(p, 1, 1000);
        free(p);
        _exit(0);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid)
        return 1;
    return !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    if (strcmp(argv[1], "atexit") == 0) {
        for (int i = 0; i < STATIC_EXIT_HANDLERS + 1; i++)
            if (atexit(nothing) != 0)
                return 2;
    } else if (strcmp(argv[1], "atfork") == 0) {
        for (int i = 0; i < STATIC_FORK_HANDLERS + 1; i++)
            if (pthread_atfork(nothing, nothing, nothing) != 0)
                return 2;
        if (fork_and_allocate_in_child() != 0)
            return 4;
    } else if (strcmp(argv[1], "fork-first") == 0) {
        if (fork_and_allocate_in_child() != 0)
            return 4;
    } else {
        return 2;
    }
    void *p = malloc(100);
    printf("ok %d\n", p != NULL);
    free(p);
    return 0;
}
