/* A program that registers unwind tables with libgcc (`__register_frame_info`, as JITs
 * and static binaries do) and then unwinds: libgcc's `_Unwind_Find_FDE` (GCC 12) sorts
 * a newly registered object's FDEs on its first lookup, with a malloc made while it
 * holds its object mutex. That malloc, when sampled, must not walk its stack through
 * libgcc again (the mutex is not recursive: the thread deadlocked on itself).
 * Here the program's own .eh_frame is registered (found through PT_GNU_EH_FRAME).
 * Prints "frames N". */
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
int main(void) {
    dl_iterate_phdr(find, NULL);
    if (!eh_frame) return 3;
    static long ob[16]; /* libgcc's `struct object`: 6 words on x86-64 */
    __register_frame_info(eh_frame, ob);
    int n = 0;
    _Unwind_Backtrace(count, &n); /* the first lookup since the registration */
    printf("frames %d\n", n);
    __deregister_frame_info(eh_frame);
    return 0;
}
