//! Leaving QEMU: exit codes through the isa-debug-exit device, and the panic handler.
//!
//! With `-device isa-debug-exit,iobase=0xf4,iosize=0x04` QEMU exits with status
//! `(code << 1) | 1`; without the device the write is ignored and the processor halts, so
//! the harness's timeout still ends the run.

use shared_abi::frame::{FAILURE_EXIT_VALUE, SHUTDOWN_EXIT_VALUE};

use crate::cpu::{self, Port};
use crate::serial::log;

// SAFETY: 0xF4 is where the harnesses put QEMU's isa-debug-exit device; nothing else is
// there, and writing it only ends the run.
const DEBUG_EXIT_PORT: Port = unsafe { Port::new(0xF4) };

/// How the hypervisor stops; the values are the ones the harnesses agreed on in shared-abi.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// dom0 asked for a shutdown and the summary line is printed (QEMU status 33).
    Success,
    /// Boot failed or the hypervisor panicked; the console says why (QEMU status 35).
    Failure,
}

impl ExitCode {
    fn value(self) -> u8 {
        match self {
            ExitCode::Success => SHUTDOWN_EXIT_VALUE,
            ExitCode::Failure => FAILURE_EXIT_VALUE,
        }
    }
}

/// Stop QEMU with `code`, or halt when there is no exit device.
pub fn exit(code: ExitCode) -> ! {
    DEBUG_EXIT_PORT.write_byte(code.value());
    cpu::halt_forever()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    log!("PANIC: {info}");
    exit(ExitCode::Failure)
}
