/* The program's own options (rangealloc_conf, as jemalloc's malloc_conf) and the
 * run-time setters, observed through mallctl's opt.* (as parsed at start) and
 * arenas.dirty_decay_ms / background_thread (as in force now). Built with -rdynamic
 * for the preload case (an executable exports only what a linked library references)
 * and linked with -lrangealloc in the installed-prefix test. Prints one line of
 * values for the Rust test to compare with what the environment asked for. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <malloc.h>
#include <stdbool.h>
#include <sys/types.h>

#include "check.h"
#include "rangealloc.h"

const char *rangealloc_conf = "purge_delay_ms=250,stats=1,bogus=1";

typedef int (*mallctl_fn)(const char *, void *, size_t *, void *, size_t);

static mallctl_fn ctl;

/* Looked up: under the preload the program is not linked against the library. */
static void *lookup(const char *name) {
    void *sym = dlsym(RTLD_DEFAULT, name);
    CHECK(sym != NULL);
    return sym;
}

static ssize_t read_ssize(const char *name) {
    ssize_t v = 0;
    size_t len = sizeof v;
    CHECK(ctl(name, &v, &len, NULL, 0) == 0);
    return v;
}

static bool read_bool(const char *name) {
    bool v = false;
    size_t len = sizeof v;
    CHECK(ctl(name, &v, &len, NULL, 0) == 0);
    return v;
}

static int threads(void) {
    DIR *d = opendir("/proc/self/task");
    CHECK(d != NULL);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

int main(int argc, char **argv) {
    /* A direct malloc call, as every real program has: linked with --as-needed (the
     * distributions' default), the library stays a dependency because it defines it. */
    free(malloc(opaque(1)));
    ctl = (mallctl_fn)lookup("mallctl");
    void (*set_purge_delay_ms)(uint64_t) = lookup("rangealloc_set_purge_delay_ms");
    void (*set_background_purge)(int) = lookup("rangealloc_set_background_purge");
    void (*set_stats_at_exit)(int) = lookup("rangealloc_set_stats_at_exit");
    /* What was parsed at start, from rangealloc_conf and RANGEALLOC_OPTIONS. */
    printf("opt.dirty_decay_ms=%zd opt.stats_print=%d opt.background_thread=%d\n",
           read_ssize("opt.dirty_decay_ms"), read_bool("opt.stats_print"),
           read_bool("opt.background_thread"));
    if (argc > 1 && !strcmp(argv[1], "only-options")) return 0;

    /* Run-time setters, C API and mallctl. */
    set_purge_delay_ms(77);
    CHECK(read_ssize("arenas.dirty_decay_ms") == 77);
    ssize_t never = -1, old = 0, bad = -2;
    size_t len = sizeof old;
    CHECK(ctl("arenas.dirty_decay_ms", &old, &len, &never, sizeof never) == 0 && old == 77);
    CHECK(read_ssize("arenas.dirty_decay_ms") == -1);
    CHECK(ctl("arenas.dirty_decay_ms", NULL, NULL, &bad, sizeof bad) == EINVAL);
    CHECK(ctl("opt.dirty_decay_ms", NULL, NULL, &never, sizeof never) == EPERM);
    ssize_t start = read_ssize("opt.dirty_decay_ms");
    CHECK(start != -1); /* opt.* keeps the value parsed at start */

    int before = threads();
    bool on = true, was = true;
    len = sizeof was;
    CHECK(ctl("background_thread", &was, &len, &on, sizeof on) == 0);
    CHECK(read_bool("background_thread"));
    CHECK(threads() == before + (was ? 0 : 1)); /* the purger thread started */
    set_background_purge(0);
    CHECK(!read_bool("background_thread"));
    set_background_purge(1);
    CHECK(threads() == before + (was ? 0 : 1)); /* never a second thread */
    printf("ok setters\n");

    /* stats=1 came from rangealloc_conf; switched off now, no report at exit. */
    if (argc > 1 && !strcmp(argv[1], "quiet-exit")) set_stats_at_exit(0);
    printf("ALL OK\n");
    return 0;
}
