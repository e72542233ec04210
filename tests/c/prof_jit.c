/* A JIT's frame under the heap profiler: code in no loaded object (an anonymous
 * executable page) calls malloc, and its unwind table is registered with the program's
 * libgcc (`__register_frame`, as JITs do). The sampled stack must go on past that frame
 * to its caller, `prof_jit_caller`, which only the program's libgcc can tell: the
 * allocator carries its own copy of the unwinder, whose registry is empty. The object
 * is kept, so the leak report at exit shows its stack. Prints "ALL OK". */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/mman.h>

#include "check.h"

extern void __register_frame(void *);
extern void __deregister_frame(void *);

/* The leak report's biggest: 3 MiB, far above what libc keeps (stdio buffers). */
#define JIT_SIZE ((size_t)3 << 20)

typedef void *(*jit_fn)(size_t);

/* sub rsp, 8; movabs rax, <malloc>; call rax; add rsp, 8; ret */
static const unsigned char CODE[] = {0x48, 0x83, 0xec, 0x08, 0x48, 0xb8, 0, 0, 0, 0, 0,
                                     0,    0,    0,    0xff, 0xd0, 0x48, 0x83, 0xc4, 0x08,
                                     0xc3};
#define MALLOC_IMM 6

static unsigned char eh_frame[80];
static void *kept;

/* Builds the code's .eh_frame: a CIE (CFA = rsp + 8, return address at CFA - 8,
 * absolute pointers) and one FDE (CFA = rsp + 16 from offset 4, after the sub), then
 * the zero terminator. */
static void build_eh_frame(uintptr_t code) {
    static const unsigned char cie[] = {
        20, 0, 0, 0,      /* length */
        0,  0, 0, 0,      /* CIE id */
        1,                /* version */
        'z', 'R', 0,      /* augmentation */
        1,                /* code alignment */
        0x78,             /* data alignment -8 */
        16,               /* return address column */
        1,    0x00,       /* augmentation data: FDE pointers absolute */
        0x0c, 7,    8,    /* def_cfa rsp+8 */
        0x90, 1,          /* offset r16 at cfa-8 */
        0,    0,          /* padding */
    };
    unsigned char *p = eh_frame;
    memcpy(p, cie, sizeof cie);
    p += sizeof cie;
    unsigned char *fde = p;
    p += 4; /* length, below */
    uint32_t cie_ptr = (uint32_t)(p - eh_frame);
    memcpy(p, &cie_ptr, 4);
    p += 4;
    uint64_t begin = code, range = sizeof CODE;
    memcpy(p, &begin, 8);
    p += 8;
    memcpy(p, &range, 8);
    p += 8;
    *p++ = 0;    /* augmentation data length */
    *p++ = 0x44; /* advance_loc 4 */
    *p++ = 0x0e; /* def_cfa_offset 16 */
    *p++ = 16;
    while ((p - fde) % 4 != 0)
        *p++ = 0; /* nop */
    uint32_t len = (uint32_t)(p - fde - 4);
    memcpy(fde, &len, 4);
    memset(p, 0, 4); /* terminator */
}

__attribute__((noinline)) void prof_jit_caller(jit_fn f) {
    kept = f(opaque(JIT_SIZE));
    CHECK(kept != NULL);
    ((volatile char *)kept)[0] = 1; /* after the call: no tail call */
}

int main(void) {
    unsigned char *code = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(code != MAP_FAILED);
    memcpy(code, CODE, sizeof CODE);
    void *(*m)(size_t) = malloc;
    memcpy(code + MALLOC_IMM, &m, 8);
    CHECK(mprotect(code, 4096, PROT_READ | PROT_EXEC) == 0);
    build_eh_frame((uintptr_t)code);
    __register_frame(eh_frame);
    prof_jit_caller((jit_fn)(void *)code);
    printf("ALL OK\n");
    return 0;
}
