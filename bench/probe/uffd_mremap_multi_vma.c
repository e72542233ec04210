// sparse11 (issue 16): Linux 6.17+ `mremap` of a source spanning two mappings, where the
// second is userfaultfd-armed (write-protect mode) and the first is not, moves the first
// mapping and then fails with EFAULT: half the pages moved, an error returned. With both
// armed it fails before moving anything; with neither it moves all. rangealloc therefore
// never `mremap`s in base space while base space is registered (BENCHMARKS.md, "sparse11").
// Build: cc -O2 -o /tmp/uffd_mremap bench/probe/uffd_mremap_multi_vma.c
// Run: /tmp/uffd_mremap 1 (armed), /tmp/uffd_mremap 0 (not); REREG=1 arms the moved-in part.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int reg = argc > 1 ? atoi(argv[1]) : 1;
    int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | 1 /* UFFD_USER_MODE_ONLY */);
    struct uffdio_api api = {.api = UFFD_API, .features = 1 << 10 /* MOVE */};
    if (fd < 0 || ioctl(fd, UFFDIO_API, &api)) {
        perror("userfaultfd");
        return 1;
    }
    size_t L = 256 << 20, M = 1 << 20;
    char *base = mmap(0, L, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (reg) {
        struct uffdio_register r = {.range = {(unsigned long)base, L},
                                    .mode = UFFDIO_REGISTER_MODE_WP};
        if (ioctl(fd, UFFDIO_REGISTER, &r)) {
            perror("register");
            return 1;
        }
    }
    // A 4 MiB object moved in by mremap: the moved-in mapping loses its registration.
    char *a = base + 4 * M, *d = base + 64 * M, *e = base + 128 * M;
    for (size_t i = 0; i < 4 * M; i += 4096) a[i] = 1;
    if (mremap(a, 4 * M, 4 * M, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, d) ==
        MAP_FAILED) {
        perror("mremap 1");
        return 1;
    }
    if (reg && getenv("REREG")) {
        struct uffdio_register r = {.range = {(unsigned long)d, 4 * M},
                                    .mode = UFFDIO_REGISTER_MODE_WP};
        if (ioctl(fd, UFFDIO_REGISTER, &r)) {
            perror("re-register");
            return 1;
        }
    }
    // Grown in place: the object spans the moved-in mapping and the original one.
    for (size_t i = 0; i < 8 * M; i += 4096) d[i] = 1;
    void *r = mremap(d, 8 * M, 8 * M, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, e);
    int err = errno;
    long src = 0, dst = 0;
    for (size_t i = 0; i < 8 * M; i += 4096) {
        src += d[i] != 1;
        dst += e[i] != 1;
    }
    printf("armed=%d: second mremap %s%s; pages not 1: source %ld, destination %ld of %zu\n",
           reg, r == MAP_FAILED ? "FAILED: " : "ok", r == MAP_FAILED ? strerror(err) : "",
           src, dst, 8 * M / 4096);
    return 0;
}
