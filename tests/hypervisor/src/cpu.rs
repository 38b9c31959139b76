//! The processor instructions the hypervisor needs: port I/O, the time-stamp counter, halt.
//!
//! With the entry assembly and [`crate::interrupts`] (the IDT) and [`crate::command_line`]
//! (reading the boot loader's memory), this is one of the few modules with `unsafe`. Port
//! I/O is unsafe because a write to the wrong port can reprogram any device; the callers
//! are the device modules, each of which names its own fixed ports.

use core::arch::asm;

/// Read a byte from an I/O port.
pub fn read_byte(port: u16) -> u8 {
    let value: u8;
    // SAFETY: `in` reads a device register; it touches no memory and the device modules
    // only name ports of the legacy devices they drive (UARTs, PIT, IDE).
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Write a byte to an I/O port.
pub fn write_byte(port: u16, value: u8) {
    // SAFETY: as in `read_byte`; no memory is touched.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Fill `buffer` with 16-bit words read from one port (little-endian, as the ATA data
/// register delivers sector bytes). `buffer` must have an even length.
pub fn read_words_into(port: u16, buffer: &mut [u8]) {
    assert!(
        buffer.len().is_multiple_of(2),
        "word transfer into an odd-length buffer"
    );
    // SAFETY: `rep insw` stores exactly `rcx` words from `rdi` upwards; `rcx` is
    // `buffer.len() / 2`, so every store lands inside `buffer`, which we borrow exclusively.
    // The direction flag is clear: the entry code clears it and Rust code keeps it clear.
    unsafe {
        asm!(
            "rep insw",
            in("dx") port,
            inout("rdi") buffer.as_mut_ptr() => _,
            inout("rcx") buffer.len() / 2 => _,
            options(nostack, preserves_flags)
        )
    };
}

/// Write the bytes of `buffer` to one port as 16-bit little-endian words. `buffer` must have
/// an even length.
pub fn write_words_from(port: u16, buffer: &[u8]) {
    assert!(
        buffer.len().is_multiple_of(2),
        "word transfer from an odd-length buffer"
    );
    // SAFETY: `rep outsw` loads exactly `rcx` words from `rsi` upwards, all inside `buffer`;
    // the direction flag is clear (see `read_words_into`).
    unsafe {
        asm!(
            "rep outsw",
            in("dx") port,
            inout("rsi") buffer.as_ptr() => _,
            inout("rcx") buffer.len() / 2 => _,
            options(nostack, preserves_flags, readonly)
        )
    };
}

/// The time-stamp counter: ticks at a constant rate that [`crate::timer`] calibrates.
pub fn time_stamp() -> u64 {
    let low: u32;
    let high: u32;
    // SAFETY: `rdtsc` only reads the counter into edx:eax.
    unsafe {
        asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
    };
    (u64::from(high) << 32) | u64::from(low)
}

/// Sleep until the next interrupt, then return with interrupts disabled again. Callers
/// check their devices with interrupts disabled and call this when nothing was ready: an
/// interrupt raised after that check stays pending until here, and `sti` only takes effect
/// after the following instruction, so the pending interrupt ends the `hlt` instead of
/// being taken before it. The 1 kHz PIT tick bounds every sleep to about a millisecond.
pub fn wait_for_interrupt() {
    // SAFETY: [`crate::interrupts::initialise`] ran first thing at boot, so every vector the
    // PICs can raise has a gate whose stub only acknowledges the PIC and returns with every
    // register intact. The handler pushes its frame below `rsp`; the target has no red zone,
    // so nothing of ours lives there. `cli` restores the interrupts-off state Rust code
    // runs in.
    unsafe { asm!("sti", "hlt", "cli") };
}

/// Stop the processor for good: interrupts are off, so nothing wakes it.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `hlt` with interrupts disabled only stops this core; no memory is touched.
        unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) };
    }
}
