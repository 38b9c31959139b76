//! PVH entry: from 32-bit protected mode with paging off to 64-bit Rust.
//!
//! QEMU's `-kernel` loader finds the entry address in the `Xen` ELF note of type 18
//! (`XEN_ELFNOTE_PHYS32_ENTRY`) and jumps there in flat 32-bit protected mode. Long mode
//! needs paging, so the entry code builds identity page tables for the first 4 GiB with
//! 2 MiB pages (the image, its buffers and every RAM size QEMU is given here), switches on
//! PAE, long mode and paging, loads a 64-bit GDT and calls [`crate::hypervisor_main`] with
//! the physical address of the PVH start info, which the loader leaves in %ebx and which
//! nothing here overwrites.
//!
//! The code is assembly because no Rust can run before there is a stack and 64-bit mode.
//! Everything it touches is its own: `.bss`, which it zeroes first, holds the stack and the
//! page tables.

use core::arch::global_asm;

/// Bytes of stack for the whole hypervisor: one core, no interrupts, no recursion; the
/// largest frames are the hypercall handlers' copied-in argument lists.
const STACK_BYTES: usize = 1024 * 1024;

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* name size: "Xen\0" */
    .long 8                     /* descriptor size: a 64-bit entry address */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_entry
    .balign 4

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_page_directories:
    .skip 4 * 4096
    .balign 16
boot_stack_bottom:
    .skip {stack_bytes}
boot_stack_top:

    .section .rodata.boot, "a"
    .balign 8
boot_gdt:
    .quad 0                     /* the null descriptor */
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code, present, ring 0 */
    .quad 0x00cf92000000ffff    /* 0x10: data, present, writable */
boot_gdt_end:
boot_gdt_pointer:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .text.boot, "ax"
    .code32
    .global pvh_entry
pvh_entry:
    cli
    cld

    /* Zero .bss (stack and page tables included) before anything lives there. */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl

    movl $boot_stack_top, %esp

    /* 2048 page directory entries of 2 MiB each: present | writable | page size. */
    movl $boot_page_directories, %edi
    movl $0x83, %eax
    movl $2048, %ecx
1:
    movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 1b

    /* Four page-directory-pointer entries, one per GiB: present | writable. */
    movl $boot_pdpt, %edi
    movl $boot_page_directories + 3, %eax
    movl $4, %ecx
2:
    movl %eax, (%edi)
    addl $4096, %eax
    addl $8, %edi
    loop 2b

    movl $boot_pdpt + 3, %eax
    movl %eax, boot_pml4

    movl $boot_pml4, %eax
    movl %eax, %cr3

    /* CR4.PAE, then EFER.LME, then CR0.PG: the order long mode activation requires. */
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4

    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr

    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0

    lgdt boot_gdt_pointer
    ljmp $0x08, $long_mode_entry

    .code64
long_mode_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movabsq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    movl %ebx, %edi             /* the start info address, zero-extended: the first argument */
    call hypervisor_main
3:
    hlt
    jmp 3b
"#,
    stack_bytes = const STACK_BYTES,
    options(att_syntax)
);
