//! 16550 UARTs: COM1 is the console, COM2..COM4 carry the frame channels.
//!
//! Reads and writes poll the status register, but a caller with nothing to do sleeps until
//! an interrupt instead of polling on (see [`crate::interrupts`] for why): the channel
//! ports raise "received data available", and a transmitter waiting for room sleeps until
//! the next timer tick. QEMU moves bytes from a socket into a UART's receive FIFO only
//! while the FIFO has room, so a port that is not read for a while loses nothing: its
//! peer's bytes wait in QEMU and the socket.

use core::fmt::{self, Write};

use crate::cpu::{self, Port, Registers};
use crate::timer::Deadline;

/// Register offsets from a UART's base port.
const DATA: u16 = 0;
const INTERRUPT_ENABLE: u16 = 1;
const FIFO_CONTROL: u16 = 2;
const LINE_CONTROL: u16 = 3;
const MODEM_CONTROL: u16 = 4;
const LINE_STATUS: u16 = 5;
const SCRATCH: u16 = 7;

/// Interrupt enable: received data available (or the FIFO's character timeout).
const RECEIVE_INTERRUPT: u8 = 0x01;
/// Modem control: DTR and RTS, as every driver sets them.
const MODEM_READY: u8 = 0x03;
/// Modem control OUT2: on a PC it connects the UART's interrupt line to the PIC.
const MODEM_OUT2: u8 = 0x08;

const LINE_STATUS_DATA_READY: u8 = 0x01;
const LINE_STATUS_TRANSMIT_EMPTY: u8 = 0x20;
/// Bytes the transmit FIFO holds once it reports empty.
const TRANSMIT_FIFO_BYTES: usize = 16;

/// The console.
// SAFETY: 0x3F8 is COM1's legacy base on QEMU's `pc` machine, driven only by this module.
pub const COM1: Uart = unsafe { Uart::new(0x3F8) };

/// One 16550-compatible UART at a fixed base port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uart {
    registers: Registers<8>,
}

/// A peer stopped accepting bytes: QEMU kept the transmit FIFO full past the deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransmitStalled;

impl Uart {
    /// # Safety
    ///
    /// `base` must be the first of a 16550's eight registers, which only this `Uart`
    /// (and copies of it) drives.
    pub const unsafe fn new(base: u16) -> Uart {
        Uart {
            // SAFETY: the caller's promise, passed on.
            registers: unsafe { Registers::new(base) },
        }
    }

    fn register(self, offset: u16) -> Port {
        self.registers.at(offset)
    }

    /// Program 115200 8N1 with FIFOs on and interrupts off; returns whether a UART answers
    /// at this port (a missing one reads back all ones from its scratch register).
    pub fn initialise(self) -> bool {
        self.register(SCRATCH).write_byte(0x5A);
        if self.register(SCRATCH).read_byte() != 0x5A {
            return false;
        }
        self.register(INTERRUPT_ENABLE).write_byte(0x00);
        // Divisor latch access, divisor 1 (115200 baud; QEMU ignores the rate anyway).
        self.register(LINE_CONTROL).write_byte(0x80);
        self.register(DATA).write_byte(0x01);
        self.register(INTERRUPT_ENABLE).write_byte(0x00);
        self.register(LINE_CONTROL).write_byte(0x03);
        // FIFOs on and cleared, receive trigger at 14 bytes: QEMU then offers up to 14 bytes
        // per refill instead of one.
        self.register(FIFO_CONTROL).write_byte(0xC7);
        self.register(MODEM_CONTROL).write_byte(MODEM_READY);
        true
    }

    /// Raise the port's IRQ when received bytes reach the FIFO trigger level or have
    /// waited a few character times, so that a halted processor wakes for them.
    pub fn enable_receive_interrupt(self) {
        self.register(INTERRUPT_ENABLE)
            .write_byte(RECEIVE_INTERRUPT);
        self.register(MODEM_CONTROL)
            .write_byte(MODEM_READY | MODEM_OUT2);
    }

    /// The next received byte, if one is waiting.
    pub fn try_read(self) -> Option<u8> {
        if self.register(LINE_STATUS).read_byte() & LINE_STATUS_DATA_READY != 0 {
            Some(self.register(DATA).read_byte())
        } else {
            None
        }
    }

    fn transmit_empty(self) -> bool {
        self.register(LINE_STATUS).read_byte() & LINE_STATUS_TRANSMIT_EMPTY != 0
    }

    /// Transmit `bytes`, giving up when the transmit FIFO stays full for longer than
    /// `patience_milliseconds` at a time (the peer's socket is full: it stopped reading).
    ///
    /// QEMU sends a written byte at once while the socket takes it; the FIFO stays full
    /// only while the socket is full, and then QEMU's main-loop thread drains it when the
    /// peer reads. The wait sleeps between checks so as not to starve that thread.
    pub fn write(self, bytes: &[u8], patience_milliseconds: u64) -> Result<(), TransmitStalled> {
        for chunk in bytes.chunks(TRANSMIT_FIFO_BYTES) {
            if !self.transmit_empty() {
                let deadline = Deadline::after_milliseconds(patience_milliseconds);
                while !self.transmit_empty() {
                    if deadline.expired() {
                        return Err(TransmitStalled);
                    }
                    cpu::wait_for_interrupt();
                }
            }
            for &byte in chunk {
                self.register(DATA).write_byte(byte);
            }
        }
        Ok(())
    }
}

/// The console as a `fmt::Write` sink. A console nobody reads must not stop the
/// hypervisor, so a write waits only briefly for the transmitter before dropping the line.
pub struct Console;

/// How long a console write may wait for the transmitter.
const CONSOLE_PATIENCE_MILLISECONDS: u64 = 100;

impl Write for Console {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        COM1.write(text.as_bytes(), CONSOLE_PATIENCE_MILLISECONDS)
            .map_err(|_| fmt::Error)
    }
}

/// Write one console line, prefixed so that harnesses can pick the hypervisor's lines out.
pub fn log_line(arguments: fmt::Arguments<'_>) {
    // A stalled console has nowhere to report its own failure.
    let _ = Console.write_fmt(format_args!("vbd-hypervisor: {arguments}\n"));
}

/// `log!("format", args...)`: one line on the console.
macro_rules! log {
    ($($argument:tt)*) => {
        $crate::serial::log_line(format_args!($($argument)*))
    };
}
pub(crate) use log;
