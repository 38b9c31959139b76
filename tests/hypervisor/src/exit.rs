//! Leaving QEMU: exit codes through the isa-debug-exit device, and the panic handler.
//!
//! With `-device isa-debug-exit,iobase=0xf4,iosize=0x04` QEMU exits with status
//! `(code << 1) | 1`; without the device the write is ignored and the processor halts, so
//! the harness's timeout still ends the run.

use crate::cpu;
use crate::serial::log;

const DEBUG_EXIT_PORT: u16 = 0xF4;

/// Why the hypervisor stops. The QEMU exit status is `(code << 1) | 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// dom0 asked for a shutdown and the summary line is printed (status 33).
    Success = 0x10,
    /// Boot could not bring up something the hypervisor cannot run without (status 5).
    Boot = 2,
    /// A bug: a Rust panic (status 7).
    Panic = 3,
}

/// Stop QEMU with `code`, or halt when there is no exit device.
pub fn exit(code: ExitCode) -> ! {
    cpu::write_byte(DEBUG_EXIT_PORT, code as u8);
    cpu::halt_forever()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    log!("PANIC: {info}");
    exit(ExitCode::Panic)
}
