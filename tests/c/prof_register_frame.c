/* A program that registers unwind tables with libgcc (`__register_frame_info`, as JITs
 * and static binaries do) and then unwinds: libgcc's `_Unwind_Find_FDE` (GCC 12) sorts
 * a newly registered object's FDEs on its first lookup, with a malloc made while it
 * holds its object mutex. That malloc, when sampled, must not walk its stack through
 * libgcc again (the mutex is not recursive: the thread deadlocked on itself).
 * Here the program's own .eh_frame is registered (found through PT_GNU_EH_FRAME).
 * The unwind is made through a frame whose CFA is a DWARF expression, which the
 * profiler's cached walk leaves to libgcc: a walk that went on past libgcc's frames
 * would hand itself over there (and deadlock) even where every FDE is found without
 * libgcc. Prints "frames N". */
#define _GNU_SOURCE
#include <link.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unwind.h>
extern void __register_frame_info(const void *, void *);
extern void *__deregister_frame_info(const void *);
static const unsigned char *eh_frame;

/* dl_iterate_phdr callback: the first object (the program) gives its .eh_frame. */
static int find(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size; (void)data;
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_GNU_EH_FRAME) {
            const unsigned char *hdr = (const unsigned char *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
            /* eh_frame_ptr as DW_EH_PE_pcrel | DW_EH_PE_sdata4, as linkers write it. */
            if (hdr[1] != 0x1b) {
                fprintf(stderr, "eh_frame_ptr encoding %#x\n", hdr[1]);
                exit(3);
            }
            int32_t rel; memcpy(&rel, hdr + 4, 4);
            eh_frame = hdr + 4 + rel;
            return 1;
        }
    return 0;
}
static _Unwind_Reason_Code count(struct _Unwind_Context *c, void *n) {
    (void)c;
    ++*(int *)n;
    return _URC_NO_REASON;
}
static int frames;
static void backtrace_now(void) {
    _Unwind_Backtrace(count, &frames); /* the first lookup since the registration */
}
/* through_expression_frame(f) calls f from a frame-pointer frame whose CFA rule is the
 * expression rbp + 16 (DW_CFA_def_cfa_expression, DW_OP_breg6 16), not def_cfa. */
void through_expression_frame(void (*f)(void));
__asm__(".text\n"
        ".globl through_expression_frame\n"
        ".type through_expression_frame, @function\n"
        "through_expression_frame:\n"
        ".cfi_startproc\n"
        "push %rbp\n"
        ".cfi_def_cfa_offset 16\n"
        ".cfi_offset %rbp, -16\n"
        "mov %rsp, %rbp\n"
        ".cfi_escape 0x0f, 0x02, 0x76, 0x10\n"
        "call *%rdi\n"
        "pop %rbp\n"
        ".cfi_def_cfa %rsp, 8\n"
        "ret\n"
        ".cfi_endproc\n"
        ".size through_expression_frame, .-through_expression_frame\n");
int main(void) {
    dl_iterate_phdr(find, NULL);
    if (!eh_frame) return 3;
    static long ob[16]; /* libgcc's `struct object`: 6 words on x86-64 */
    __register_frame_info(eh_frame, ob);
    through_expression_frame(backtrace_now);
    printf("frames %d\n", frames);
    __deregister_frame_info(eh_frame);
    return 0;
}
