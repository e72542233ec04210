/* One function, `prof_reused_site`, that calls malloc at the same code offset in both
 * variants of this library (built with -DVARIANT=1 and -DVARIANT=2), so that after a
 * dlclose of one and a dlopen of the other at the same address, the call to malloc has
 * the same return address but different call-frame rules:
 *   1: a frame-pointer frame, CFA = rbp + 16;
 *   2: no frame pointer, CFA = rsp + 16, and rbp used as a general register holding a
 *      value 256 MiB above the stack pointer (legal: rbp is just callee-saved).
 * A walker that kept variant 1's rule would compute variant 2's CFA from rbp and read
 * 256 MiB above the stack. Used by prof_dlclose.c. */
    .text
    .globl prof_reused_site
    .type prof_reused_site, @function
    .p2align 6
prof_reused_site:
    .cfi_startproc
    pushq %rbp
    .cfi_def_cfa_offset 16
    .cfi_offset %rbp, -16
#if VARIANT == 1
    movq %rsp, %rbp
    .cfi_def_cfa_register %rbp
#else
    movq %rsp, %rbp
    addq $0x10000000, %rbp
#endif
    /* The call sits at offset 32 in both variants. */
    .p2align 5, 0x90
    movl $64, %edi
    call malloc@PLT
    popq %rbp
#if VARIANT == 1
    .cfi_def_cfa %rsp, 8
#else
    .cfi_def_cfa_offset 8
#endif
    ret
    .cfi_endproc
    .size prof_reused_site, .-prof_reused_site

    .section .note.GNU-stack,"",@progbits
