//! The processor instructions the hypervisor needs: port I/O, the time-stamp counter, halt.
//!
//! With the entry assembly and [`crate::interrupts`] (the IDT) and [`crate::command_line`]
//! (reading the boot loader's memory), this is one of the few modules with `unsafe`. Port
//! I/O is unsafe because a write to the wrong port can reprogram any device (the DMA
//! controller or the PIC can break memory safety), so an access needs a [`Port`] token,
//! and only an `unsafe` constructor makes one: each device module makes its own, once, for
//! the fixed ports of the device it drives, and says why they are its.

use core::arch::asm;

/// The right to access one I/O port. Accesses through it are safe; making one is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port(u16);

impl Port {
    /// # Safety
    ///
    /// `number` must be a register of a legacy device this hypervisor alone drives, and
    /// the module that owns the token must access it only as that device's protocol
    /// allows.
    pub const unsafe fn new(number: u16) -> Port {
        Port(number)
    }

    /// Read a byte.
    pub fn read_byte(self) -> u8 {
        let value: u8;
        // SAFETY: `in` reads a device register and touches no memory; `Port::new`'s caller
        // vouched that the port is a register of a device this hypervisor drives.
        unsafe {
            asm!("in al, dx", in("dx") self.0, out("al") value, options(nomem, nostack, preserves_flags))
        };
        value
    }

    /// Write a byte.
    pub fn write_byte(self, value: u8) {
        // SAFETY: as in `read_byte`; no memory is touched.
        unsafe {
            asm!("out dx, al", in("dx") self.0, in("al") value, options(nomem, nostack, preserves_flags))
        };
    }

    /// Fill `buffer` with 16-bit words read from the port (little-endian, as the ATA data
    /// register delivers sector bytes). `buffer` must have an even length.
    pub fn read_words_into(self, buffer: &mut [u8]) {
        assert!(
            buffer.len().is_multiple_of(2),
            "word transfer into an odd-length buffer"
        );
        // SAFETY: `rep insw` stores exactly `rcx` words from `rdi` upwards; `rcx` is
        // `buffer.len() / 2`, so every store lands inside `buffer`, which we borrow
        // exclusively. The direction flag is clear: the entry code clears it and Rust code
        // keeps it clear.
        unsafe {
            asm!(
                "rep insw",
                in("dx") self.0,
                inout("rdi") buffer.as_mut_ptr() => _,
                inout("rcx") buffer.len() / 2 => _,
                options(nostack, preserves_flags)
            )
        };
    }

    /// Write the bytes of `buffer` to the port as 16-bit little-endian words. `buffer`
    /// must have an even length.
    pub fn write_words_from(self, buffer: &[u8]) {
        assert!(
            buffer.len().is_multiple_of(2),
            "word transfer from an odd-length buffer"
        );
        // SAFETY: `rep outsw` loads exactly `rcx` words from `rsi` upwards, all inside
        // `buffer`; the direction flag is clear (see `read_words_into`).
        unsafe {
            asm!(
                "rep outsw",
                in("dx") self.0,
                inout("rsi") buffer.as_ptr() => _,
                inout("rcx") buffer.len() / 2 => _,
                options(nostack, preserves_flags, readonly)
            )
        };
    }
}

/// A device's block of `LENGTH` consecutive registers, from which its module takes the
/// [`Port`] of each register by offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registers<const LENGTH: u16> {
    base: u16,
}

impl<const LENGTH: u16> Registers<LENGTH> {
    /// # Safety
    ///
    /// `[base, base + LENGTH)` must be the registers of one legacy device this hypervisor
    /// alone drives, and the owning module must access them only as the device allows.
    pub const unsafe fn new(base: u16) -> Self {
        Registers { base }
    }

    /// The register at `offset`, which must lie inside the block (checked: offsets are
    /// constants, so a wrong one is a bug to stop at, not a port to touch).
    pub const fn at(self, offset: u16) -> Port {
        assert!(
            offset < LENGTH,
            "register offset outside the device's block"
        );
        Port(self.base + offset)
    }
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
