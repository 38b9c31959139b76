//! Interrupts, used only to wake the halted processor: the IDT, the 8259 PICs and the stubs.
//!
//! Every port access by the guest takes QEMU's global lock, and QEMU's main-loop thread
//! needs that lock to move bytes from a socket into a UART's receive FIFO. A guest that
//! polls its UARTs in a tight loop starves that thread, and the host's writes stall. So the
//! main loop halts when no port has a byte, and the UARTs' "received data available"
//! interrupts (IRQ3, IRQ4) and a 1 kHz PIT tick (IRQ0, so that timeouts still advance) wake
//! it; the ATA driver sleeps the same way until the IDE channels interrupt (IRQ14, 15).
//! Interrupts are enabled only inside [`crate::cpu::wait_for_interrupt`]; the PIC handlers
//! only acknowledge the interrupt, the waking is their whole purpose. Every CPU exception
//! is fatal: its handler logs the vector and exits with the failure code.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::Port;
use crate::exit::{self, ExitCode};
use crate::serial::log;

// The two 8259 PICs' ports; this module alone programs them, at boot, and its interrupt
// stubs acknowledge through them.
// SAFETY: the master PIC's command port.
const MASTER_COMMAND: Port = unsafe { Port::new(0x20) };
// SAFETY: the master PIC's data (mask) port.
const MASTER_DATA: Port = unsafe { Port::new(0x21) };
// SAFETY: the slave PIC's command port.
const SLAVE_COMMAND: Port = unsafe { Port::new(0xA0) };
// SAFETY: the slave PIC's data (mask) port.
const SLAVE_DATA: Port = unsafe { Port::new(0xA1) };
/// ICW1: edge-triggered, cascaded, ICW4 follows.
const INITIALISE_WITH_ICW4: u8 = 0x11;
/// ICW4: 8086 mode, normal (not automatic) end of interrupt.
const MODE_8086: u8 = 0x01;

/// The PICs' vectors: 0x20..0x27 for the master, 0x28..0x2F for the slave, above the 32
/// vectors the processor reserves for exceptions.
const MASTER_VECTOR_BASE: u8 = 0x20;
const SLAVE_VECTOR_BASE: u8 = 0x28;
const EXCEPTION_VECTORS: usize = 32;
/// The master's input the slave is wired to.
const CASCADE_IRQ: u8 = 2;

/// The only IRQs unmasked: the PIT's channel 0, COM2 and COM4, COM1 and COM3, and the
/// IDE channels (14 and 15, the slave's inputs 6 and 7, through the cascade).
const TIMER_IRQ: u8 = 0;
const COM2_COM4_IRQ: u8 = 3;
const COM1_COM3_IRQ: u8 = 4;
const PRIMARY_IDE_SLAVE_INPUT: u8 = 14 - 8;
const SECONDARY_IDE_SLAVE_INPUT: u8 = 15 - 8;

/// The 64-bit code segment of the entry code's GDT.
const CODE_SELECTOR: u64 = 0x08;
/// Present, ring 0, 64-bit interrupt gate (which clears IF, so handlers never nest).
const INTERRUPT_GATE: u64 = 0x8E;
/// Every exception stub starts on a 16-byte boundary after `exception_stubs`.
const EXCEPTION_STUB_BYTES: usize = 16;

global_asm!(
    r#"
    .section .text.interrupts, "ax"
    .code64

    /* One stub per exception vector, 16 bytes apart. The processor pushes an error code for
     * vectors 8, 10-14, 17, 21, 29 and 30; the other stubs push a zero in its place, so the
     * common code always finds vector, error code and the faulting rip in the same slots. */
    .balign 16
    .global exception_stubs
exception_stubs:
    .set exception_vector, 0
    .rept 32
    .balign 16
    .if (exception_vector != 8) && ((exception_vector < 10) || (exception_vector > 14))
    .if (exception_vector != 17) && (exception_vector != 21)
    .if (exception_vector != 29) && (exception_vector != 30)
    pushq $0
    .endif
    .endif
    .endif
    pushq $exception_vector
    jmp exception_common
    .set exception_vector, exception_vector + 1
    .endr

exception_common:
    movq (%rsp), %rdi           /* vector */
    movq 8(%rsp), %rsi          /* error code */
    movq 16(%rsp), %rdx         /* rip of the faulting instruction */
    andq $-16, %rsp             /* the ABI's call alignment */
    call {fatal}
    ud2

    /* IRQs 0-7: a non-specific end of interrupt to the master. Only IRQ0, 3 and 4 are
     * unmasked; a spurious IRQ7 gets an EOI too, harmless because handlers never nest, so
     * no other interrupt is in service. */
    .balign 16
    .global master_interrupt_stub
master_interrupt_stub:
    pushq %rax
    movb $0x20, %al
    outb %al, $0x20
    popq %rax
    iretq

    /* IRQs 8-15: acknowledge the slave, then the master's cascade input. Only IRQ14 and 15
     * (the IDE channels) are unmasked. */
    .balign 16
    .global slave_interrupt_stub
slave_interrupt_stub:
    pushq %rax
    movb $0x20, %al
    outb %al, $0xA0
    outb %al, $0x20
    popq %rax
    iretq
"#,
    fatal = sym exception_fatal,
    options(att_syntax)
);

extern "C" {
    fn exception_stubs();
    fn master_interrupt_stub();
    fn slave_interrupt_stub();
}

/// The interrupt descriptor table: 256 gates of two quadwords each. Atomics so that a
/// plain `static` can be filled at boot without `unsafe`; they have the layout of `u64`.
#[repr(C, align(16))]
struct DescriptorTable([AtomicU64; 512]);

static TABLE: DescriptorTable = DescriptorTable([const { AtomicU64::new(0) }; 512]);

/// The operand of `lidt`.
#[repr(C, packed)]
struct TablePointer {
    limit: u16,
    base: u64,
}

fn set_gate(vector: usize, handler: usize) {
    let address = handler as u64;
    let low = (address & 0xFFFF)
        | CODE_SELECTOR << 16
        | INTERRUPT_GATE << 40
        | ((address >> 16) & 0xFFFF) << 48;
    TABLE.0[2 * vector].store(low, Ordering::Relaxed);
    TABLE.0[2 * vector + 1].store(address >> 32, Ordering::Relaxed);
}

/// Load the IDT, remap the PICs above the exception vectors, unmask only the timer, UART
/// and IDE IRQs and start the PIT's 1 kHz tick. Interrupts stay disabled (IF clear); call
/// first thing at boot, before anything waits with [`cpu::wait_for_interrupt`].
pub fn initialise() {
    for vector in 0..EXCEPTION_VECTORS {
        set_gate(
            vector,
            exception_stubs as *const () as usize + vector * EXCEPTION_STUB_BYTES,
        );
    }
    for irq in 0..8 {
        set_gate(
            usize::from(MASTER_VECTOR_BASE + irq),
            master_interrupt_stub as *const () as usize,
        );
        set_gate(
            usize::from(SLAVE_VECTOR_BASE + irq),
            slave_interrupt_stub as *const () as usize,
        );
    }
    // Vectors 0x30..0xFF stay not present: nothing raises them, and if something did, the
    // resulting #NP is reported like any other exception.
    let pointer = TablePointer {
        limit: (size_of::<DescriptorTable>() - 1) as u16,
        base: TABLE.0.as_ptr() as u64,
    };
    // SAFETY: `pointer` describes `TABLE`, a static that lives for the whole run, whose
    // gates were all written above (present ones point at the stubs in this module, which
    // run on the current stack with the code selector of the entry code's GDT). `lidt`
    // only reads the 10-byte operand. Interrupts are disabled, so no gate is used before
    // the table is complete.
    unsafe {
        asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags));
    }

    MASTER_COMMAND.write_byte(INITIALISE_WITH_ICW4);
    SLAVE_COMMAND.write_byte(INITIALISE_WITH_ICW4);
    MASTER_DATA.write_byte(MASTER_VECTOR_BASE);
    SLAVE_DATA.write_byte(SLAVE_VECTOR_BASE);
    MASTER_DATA.write_byte(1 << CASCADE_IRQ);
    SLAVE_DATA.write_byte(CASCADE_IRQ);
    MASTER_DATA.write_byte(MODE_8086);
    SLAVE_DATA.write_byte(MODE_8086);
    crate::timer::start_wakeup_tick();
    let master_unmasked =
        1 << TIMER_IRQ | 1 << CASCADE_IRQ | 1 << COM2_COM4_IRQ | 1 << COM1_COM3_IRQ;
    let slave_unmasked = 1 << PRIMARY_IDE_SLAVE_INPUT | 1 << SECONDARY_IDE_SLAVE_INPUT;
    MASTER_DATA.write_byte(!master_unmasked);
    SLAVE_DATA.write_byte(!slave_unmasked);
}

fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error",
        1 => "debug",
        2 => "non-maskable interrupt",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range exceeded",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack-segment fault",
        13 => "general protection",
        14 => "page fault",
        16 => "x87 floating-point error",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating-point error",
        21 => "control protection",
        _ => "reserved",
    }
}

/// Where every exception stub ends up: nothing here expects exceptions, so any is a bug.
extern "C" fn exception_fatal(vector: u64, error_code: u64, instruction: u64) -> ! {
    log!(
        "fatal: CPU exception {vector} ({}), error code {error_code:#x}, at {instruction:#x}",
        exception_name(vector)
    );
    exit::exit(ExitCode::Failure)
}
