/* Hazards of a large object's move under LD_PRELOAD (review14 of the sparse copy, issue
 * 16): each case forces a move with realloc(p, 70 MiB), past the object's growth room,
 * with RANGEALLOC_OPTIONS=thp=never so the move stays in base space, where objects of
 * 64 KiB and more are copied sparsely (only their pages that hold bytes) or moved by
 * mremap. Prints "ok <case>" or "skip <case>: why" per case, then ALL OK.
 *
 * lazy:   a buffer restored lazily (CRIU-style): its pages are absent and a userfaultfd
 *         monitor (MISSING mode, EVENT_REMAP) supplies each at its first touch. A sparse
 *         copy would skip the absent pages and lose every byte; registered exactly, the
 *         object is a mapping of its own and moves by mremap, with sparse_moves too.
 * lazy-wide: the same, registered one page wider on each side (as CRIU registers whole
 *         mappings) in the running process: sparse copies (the default) lose it
 *         (documented: registering memory beyond one's own objects asks for
 *         sparse_moves=0), whole copies and moves by mremap keep it.
 * restored: lazy-wide in a process restored as CRIU restores one: a new task (here a
 *         raw fork, which runs no fork handler) with the memory of the one the engine
 *         saw start, its monitor in SIGBUS mode (one thread). The default keeps every
 *         page: a restored process makes no sparse copy, nor do its fork children
 *         (os::checkpoint).
 * restored-fork-first: a restored process forks before any move: the child makes no
 *         sparse copy either.
 * guard:  a guard page (MADV_GUARD_INSTALL) the program put inside its buffer: a copy
 *         reading it would fault; the move must carry it.
 * guard-dense: the same in a buffer whose every page holds bytes, the guard near its
 *         end, past the pages a sparse copy counts: a whole copy would fault too.
 * cancel: a pending deferred pthread_cancel does not act inside realloc (malloc and
 *         realloc are not cancellation points; glibc's open and close are).
 * fork:   fork children never inherit a descriptor of ours (/proc/<pid>/pagemap or maps)
 *         while other threads move objects, with forks from three threads at once.
 * With no argument: guard, guard-dense, cancel, fork; else the case named. */
#define _GNU_SOURCE
#include "check.h"
#include "rangealloc.h"
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096
#define LEN (256 << 10)
#define GROWN (70 << 20)
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

/* ---- lazy ---- */
static unsigned char image[LEN];
static volatile uintptr_t lazy_base;
static int uffd = -1;
static volatile long served, remaps;

static void *monitor(void *arg) {
    (void)arg;
    static unsigned char zero[PG];
    for (;;) {
        struct uffd_msg m;
        if (read(uffd, &m, sizeof m) != sizeof m)
            continue;
        if (m.event == UFFD_EVENT_REMAP) {
            if (m.arg.remap.from == lazy_base)
                lazy_base = m.arg.remap.to;
            remaps++;
        } else if (m.event == UFFD_EVENT_PAGEFAULT) {
            uintptr_t a = m.arg.pagefault.address & ~(uintptr_t)(PG - 1);
            uintptr_t off = a - lazy_base;
            struct uffdio_copy c = {
                .dst = a, .src = (uintptr_t)(off < LEN ? image + off : zero), .len = PG};
            ioctl(uffd, UFFDIO_COPY, &c);
            served++;
        }
    }
    return NULL;
}

/* `margin` pages of the mapping on each side of the object are registered too (the
 * registration's range becomes the mapping's own, wider than the object). */
static void lazy_with(size_t margin, const char *name) {
    unsigned char *p = malloc(LEN);
    CHECK(p && is_aligned(p, PG));
    for (size_t i = 0; i < LEN; i++)
        p[i] = (unsigned char)(i * 7 + i / PG + 1);
    memcpy(image, p, LEN);
    uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */);
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_EVENT_REMAP};
    if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) {
        printf("skip %s: no userfaultfd with EVENT_REMAP here\n", name);
        free(p);
        return;
    }
    CHECK(madvise(p, LEN, MADV_DONTNEED) == 0); /* the monitor holds the bytes now */
    struct uffdio_register r = {.range = {(uintptr_t)p - margin * PG, LEN + 2 * margin * PG},
                                .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &r)) {
        printf("skip %s: registration refused\n", name);
        free(p);
        return;
    }
    lazy_base = (uintptr_t)p;
    pthread_t t;
    CHECK(pthread_create(&t, NULL, monitor, NULL) == 0);
    unsigned char *q = realloc(p, GROWN);
    CHECK(q && q != p);
    size_t bad = 0;
    for (size_t pg = 0; pg < LEN / PG; pg++)
        bad += memcmp(q + pg * PG, image + pg * PG, PG) != 0;
    if (bad)
        fprintf(stderr, "%s: %zu of %d pages lost (served %ld, remap events %ld)\n", name,
                bad, LEN / PG, served, remaps);
    CHECK(bad == 0);
    printf("ok %s\n", name);
    /* q stays: its range is registered with the monitor, which runs on. */
}

static void lazy(void) {
    lazy_with(0, "lazy");
}

/* Registered with a page of the mapping on each side, as CRIU's lazy restore registers
 * whole mappings: with sparse_moves=1 every page would be lost (review14b), so only
 * without it. */
static void lazy_wide(void) {
    lazy_with(1, "lazy-wide");
}

/* Whether sparse copies can run on this kernel: PAGEMAP_SCAN (6.7) that names guard
 * markers where they exist (none before 6.13; named from 6.15). On 6.13 and 6.14 the
 * engine makes none, and moves it cannot vouch for carry their pages by mremap. */
static int sparse_copies_here(void) {
    struct utsname u;
    unsigned major = 0, minor = 0;
    if (uname(&u) || sscanf(u.release, "%u.%u", &major, &minor) != 2)
        return 0;
    unsigned v = major * 1000 + minor;
    return v >= 6007 && (v < 6013 || v >= 6015);
}

/* ---- restored ---- */
static unsigned char *restored_base;

/* The monitor of a SIGBUS-mode registration: the faulting thread fills its own page. */
static void fill_on_sigbus(int sig, siginfo_t *si, void *ctx) {
    (void)sig, (void)ctx;
    uintptr_t a = (uintptr_t)si->si_addr & ~(uintptr_t)(PG - 1);
    uintptr_t off = a - (uintptr_t)restored_base;
    static unsigned char zero[PG];
    struct uffdio_copy c = {.dst = a, .src = (uintptr_t)(off < LEN ? image + off : zero),
                            .len = PG};
    if (ioctl(uffd, UFFDIO_COPY, &c))
        _exit(3);
}

/* Sparse copies made by one move of an object that wrote its ends (-1: no stats). */
static long sparse_copies_of_one_move(void) {
    int (*get)(struct rangealloc_stats *, size_t) =
        (int (*)(struct rangealloc_stats *, size_t))dlsym(RTLD_DEFAULT, "rangealloc_stats_get");
    struct rangealloc_stats before, after;
    unsigned char *p = malloc(LEN);
    if (!get || !p || get(&before, sizeof before))
        return -1;
    p[0] = 1;
    p[LEN - 1] = 2;
    unsigned char *q = realloc(p, GROWN);
    if (!q || q[0] != 1 || q[LEN - 1] != 2 || get(&after, sizeof after))
        return -1;
    free(q);
    return (long)(after.reallocs_sparse - before.reallocs_sparse);
}

/* 0 when a child forked now makes no sparse copy in one move. */
static int fork_child_makes_no_sparse_copy(void) {
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid == 0)
        _exit(sparse_copies_of_one_move() != 0);
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status)) {
        fprintf(stderr, "a fork child of a restored process made a sparse copy\n");
        return 1;
    }
    return 0;
}

/* The child's part: 0 when every page was kept and no sparse copy was made, in it or
 * in a child it forks; 2 when the case cannot run here. */
static int restored_child(void) {
    unsigned char *p = malloc(LEN);
    if (!p || !is_aligned(p, PG))
        return 1;
    for (size_t i = 0; i < LEN; i++)
        p[i] = (unsigned char)(i * 5 + i / PG + 3);
    memcpy(image, p, LEN);
    uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */);
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_SIGBUS};
    if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api))
        return 2;
    struct sigaction sa = {.sa_sigaction = fill_on_sigbus, .sa_flags = SA_SIGINFO};
    if (sigaction(SIGBUS, &sa, NULL))
        return 1;
    if (madvise(p, LEN, MADV_DONTNEED)) /* the monitor holds the bytes now */
        return 1;
    restored_base = p;
    struct uffdio_register r = {.range = {(uintptr_t)p - PG, LEN + 2 * PG},
                                .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &r))
        return 2;
    unsigned char *q = realloc(p, GROWN);
    if (!q || q == p)
        return 1;
    size_t bad = 0;
    for (size_t pg = 0; pg < LEN / PG; pg++)
        bad += memcmp(q + pg * PG, image + pg * PG, PG) != 0;
    if (bad) {
        fprintf(stderr, "restored: %zu of %d pages lost\n", bad, LEN / PG);
        return 1;
    }
    if (sparse_copies_of_one_move() != 0)
        return 1;
    usleep(50 * 1000); /* a child in a later clock tick */
    return fork_child_makes_no_sparse_copy();
}

/* restored-fork-first: the restored process forks before any move of its own; its
 * child makes no sparse copy (the fork's prepare handler sees the restore first). */
static int restored_fork_first_child(void) {
    return fork_child_makes_no_sparse_copy();
}

/* Runs `child` in a copy of this process made as a restore makes one. */
static void as_restored(int (*child)(void), const char *name) {
    if (!sparse_copies_here()) {
        printf("skip %s: no sparse copies on this kernel\n", name);
        return;
    }
    /* Start times count in clock ticks (10 ms): the copy must start in a later one, as
     * a restore always does (it follows a checkpoint). */
    usleep(50 * 1000);
    void *volatile first = malloc(LEN); /* the engine is set up here, before the copy */
    free(first);
    pid_t pid = (pid_t)syscall(SYS_fork); /* no fork handler runs: a task of its own */
    CHECK(pid >= 0);
    if (pid == 0)
        _exit(child());
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    if (WEXITSTATUS(status) == 2) {
        printf("skip %s: no SIGBUS-mode userfaultfd here\n", name);
        return;
    }
    CHECK(WEXITSTATUS(status) == 0);
    printf("ok %s\n", name);
}

/* ---- sparse ---- */
/* By default, a move of an object that wrote its ends is a sparse copy (the path the
 * other cases exercise then), and keeps its bytes; in a fork child too (fork's
 * handlers note the child's start: os::checkpoint). */
static void sparse_once(void);

static void sparse(void) {
    if (!sparse_copies_here()) {
        printf("skip sparse: no sparse copies on this kernel\n");
        return;
    }
    sparse_once();
    usleep(50 * 1000); /* a child in a later clock tick than the start (see restored) */
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        sparse_once();
        _exit(0);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    printf("ok sparse\n");
}

static void sparse_once(void) {
    int (*get)(struct rangealloc_stats *, size_t) =
        (int (*)(struct rangealloc_stats *, size_t))dlsym(RTLD_DEFAULT, "rangealloc_stats_get");
    CHECK(get);
    unsigned char *p = malloc(LEN);
    CHECK(p);
    p[0] = 5;
    p[LEN - 1] = 6;
    struct rangealloc_stats before, after;
    CHECK(get(&before, sizeof before) == 0);
    unsigned char *q = realloc(p, GROWN);
    CHECK(get(&after, sizeof after) == 0);
    CHECK(q && q != p && q[0] == 5 && q[LEN - 1] == 6);
    CHECK(after.reallocs_sparse == before.reallocs_sparse + 1);
    CHECK(after.reallocs_sparse_bytes == before.reallocs_sparse_bytes + 2 * PG);
    CHECK(after.syscalls_mremap == before.syscalls_mremap);
    free(q);
}

/* ---- guard ---- */
static void guard(void) {
    unsigned char *p = malloc(LEN);
    CHECK(p && is_aligned(p, PG));
    p[0] = 1;
    p[LEN - 1] = 2;
    if (madvise(p + 5 * PG, PG, MADV_GUARD_INSTALL)) {
        printf("skip guard: no MADV_GUARD_INSTALL here (errno %d)\n", errno);
        free(p);
        return;
    }
    unsigned char *q = realloc(p, GROWN); /* faults here if the copy reads the guard */
    CHECK(q && q[0] == 1 && q[LEN - 1] == 2);
    printf("ok guard\n");
    /* q keeps its guard page: not freed, as the program would not reuse it either. */
}

/* 128 pages holding bytes, the guard at page 120: past the 64 a sparse copy counts. */
static void guard_dense(void) {
    const size_t len = 128 * PG;
    unsigned char *p = malloc(len);
    CHECK(p && is_aligned(p, PG));
    memset(p, 7, len);
    if (madvise(p + 120 * PG, PG, MADV_GUARD_INSTALL)) {
        printf("skip guard-dense: no MADV_GUARD_INSTALL here (errno %d)\n", errno);
        free(p);
        return;
    }
    unsigned char *q = realloc(p, GROWN); /* faults here if the copy reads the guard */
    CHECK(q && q[0] == 7 && q[119 * PG] == 7 && q[len - 1] == 7);
    printf("ok guard-dense\n");
}

/* ---- cancel ---- */
static volatile int go, ready, returned;

static void *cancelled_worker(void *arg) {
    (void)arg;
    free(realloc(malloc(LEN), GROWN)); /* one-time set-up done */
    char *p = malloc(LEN);
    memset(p, 1, PG);
    ready = 1;
    while (!go) {
    } /* no cancellation point */
    char *q = realloc(p, GROWN); /* a move */
    returned = q && q[0] == 1;
    free(q);
    pthread_testcancel(); /* where the cancel acts */
    return NULL;
}

static void cancel(void) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, cancelled_worker, NULL) == 0);
    while (!ready) {
    }
    CHECK(pthread_cancel(t) == 0);
    go = 1;
    void *res;
    CHECK(pthread_join(t, &res) == 0);
    CHECK(res == PTHREAD_CANCELED);
    if (!returned)
        fprintf(stderr, "cancel: the thread was cancelled inside realloc\n");
    CHECK(returned);
    printf("ok cancel\n");
}

/* ---- fork ---- */
static volatile int stop_moving;

static void *mover(void *arg) {
    (void)arg;
    while (!stop_moving) {
        unsigned char *p = malloc(LEN);
        p[0] = 3;
        p[LEN - 1] = 4;
        unsigned char *q = realloc(p, GROWN);
        CHECK(q && q[0] == 3 && q[LEN - 1] == 4);
        free(q);
    }
    return NULL;
}

/* In a fork child: whether a descriptor of /proc's pagemap or maps is open. */
static int holds_proc_descriptor(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 0;
    int found = 0;
    struct dirent *e;
    char path[300], target[256];
    while ((e = readdir(d))) {
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n <= 0)
            continue;
        target[n] = 0;
        if (strstr(target, "/pagemap") || strstr(target, "/maps"))
            found = 1;
    }
    closedir(d);
    return found;
}

enum { FORKERS = 3, FORKS_EACH = 120 };
static volatile int inherited;

static void *forker(void *arg) {
    (void)arg;
    for (int i = 0; i < FORKS_EACH; i++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0)
            _exit(holds_proc_descriptor());
        int status;
        CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status));
        __atomic_add_fetch(&inherited, WEXITSTATUS(status), __ATOMIC_RELAXED);
    }
    return NULL;
}

/* Forks from several threads at once (their fork handlers interleave), while two
 * other threads move objects. */
static void forks(void) {
    pthread_t movers[2], forkers[FORKERS];
    for (int i = 0; i < 2; i++)
        CHECK(pthread_create(&movers[i], NULL, mover, NULL) == 0);
    for (int i = 0; i < FORKERS; i++)
        CHECK(pthread_create(&forkers[i], NULL, forker, NULL) == 0);
    for (int i = 0; i < FORKERS; i++)
        CHECK(pthread_join(forkers[i], NULL) == 0);
    stop_moving = 1;
    for (int i = 0; i < 2; i++)
        CHECK(pthread_join(movers[i], NULL) == 0);
    if (inherited)
        fprintf(stderr, "fork: %d of %d children inherited a descriptor\n", inherited,
                FORKERS * FORKS_EACH);
    CHECK(inherited == 0);
    printf("ok fork\n");
}

/* All cases, or the one named by the argument. */
int main(int argc, char **argv) {
    const char *only = argc > 1 ? argv[1] : "";
#define CASE(name, fn)                                                                 \
    if (!*only || !strcmp(only, name))                                                 \
        fn();
    CASE("guard", guard)
    CASE("guard-dense", guard_dense)
    CASE("cancel", cancel)
    CASE("fork", forks)
    if (!strcmp(only, "sparse"))
        sparse();
    if (!strcmp(only, "restored"))
        as_restored(restored_child, "restored");
    if (!strcmp(only, "restored-fork-first"))
        as_restored(restored_fork_first_child, "restored-fork-first");
    /* Last: their monitor thread runs until exit (one monitor: one case a run). */
    if (!strcmp(only, "lazy"))
        lazy();
    else if (!strcmp(only, "lazy-wide"))
        lazy_wide();
    printf("ALL OK\n");
    return 0;
}
