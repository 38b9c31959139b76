//! Wall-clock time from the time-stamp counter, calibrated once against the PIT, and the
//! PIT's periodic tick that wakes a halted processor.
//!
//! Idle timeouts and every bounded wait need milliseconds. The TSC is cheap to read but its
//! rate is unknown, so boot counts TSC ticks across a known number of PIT ticks (channel 2,
//! whose output is readable in port 0x61 without interrupts). Channel 0 interrupts about
//! once a millisecond so that a processor halted until the next interrupt notices elapsed
//! deadlines even when no device speaks.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::{self, Port};

/// The PIT's input clock.
const PIT_HERTZ: u64 = 1_193_182;
/// Long enough that port-access jitter under TCG is noise, short enough not to slow boot.
const CALIBRATION_MILLISECONDS: u64 = 50;
// The PIT's ports, which this module alone drives.
// SAFETY: the PIT's channel 0 data port.
const PIT_CHANNEL_0_DATA: Port = unsafe { Port::new(0x40) };
// SAFETY: the PIT's channel 2 data port.
const PIT_CHANNEL_2_DATA: Port = unsafe { Port::new(0x42) };
// SAFETY: the PIT's mode/command port.
const PIT_COMMAND: Port = unsafe { Port::new(0x43) };
/// Bit 0 gates PIT channel 2, bit 1 routes it to the speaker, bit 5 reads its output.
// SAFETY: the system control port; of it this module changes only the channel 2 gate and
// speaker bits, leaving the others as it read them.
const SYSTEM_CONTROL: Port = unsafe { Port::new(0x61) };
const CHANNEL_2_GATE: u8 = 0x01;
const SPEAKER_ENABLE: u8 = 0x02;
const CHANNEL_2_OUTPUT: u8 = 0x20;
/// Port reads before calibration gives up on a PIT that never fires: several seconds even
/// at a fast emulated port read.
const CALIBRATION_READ_LIMIT: u64 = 100_000_000;

/// TSC ticks per millisecond. Until calibration this assumes a 4 GHz counter, which only
/// makes early deadlines longer than asked, never shorter on a slower counter.
static TICKS_PER_MILLISECOND: AtomicU64 = AtomicU64::new(4_000_000);

/// Why the TSC could not be calibrated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalibrationError {
    /// The PIT's channel 2 output never went high.
    PitSilent,
    /// The TSC moved too little during the calibration interval to be a clock.
    TscTooSlow { ticks: u64 },
}

impl core::fmt::Display for CalibrationError {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CalibrationError::PitSilent => write!(formatter, "PIT channel 2 never fired"),
            CalibrationError::TscTooSlow { ticks } => write!(
                formatter,
                "TSC advanced only {ticks} ticks in {CALIBRATION_MILLISECONDS} ms"
            ),
        }
    }
}

/// Measure the TSC rate against PIT channel 2 in one-shot mode; returns ticks per
/// millisecond and uses it for every later [`Deadline`] and [`Instant`].
pub fn calibrate() -> Result<u64, CalibrationError> {
    let count = PIT_HERTZ * CALIBRATION_MILLISECONDS / 1000;
    let control = SYSTEM_CONTROL.read_byte();
    SYSTEM_CONTROL.write_byte((control & !SPEAKER_ENABLE) | CHANNEL_2_GATE);
    // Channel 2, low byte then high byte, mode 0 (interrupt on terminal count), binary.
    PIT_COMMAND.write_byte(0b1011_0000);
    PIT_CHANNEL_2_DATA.write_byte((count & 0xFF) as u8);
    // Counting starts with the high byte, so take the start time right after it.
    PIT_CHANNEL_2_DATA.write_byte((count >> 8) as u8);
    let start = cpu::time_stamp();
    let mut reads = 0;
    while SYSTEM_CONTROL.read_byte() & CHANNEL_2_OUTPUT == 0 {
        reads += 1;
        if reads == CALIBRATION_READ_LIMIT {
            return Err(CalibrationError::PitSilent);
        }
    }
    let ticks = cpu::time_stamp().wrapping_sub(start);
    let per_millisecond = ticks / CALIBRATION_MILLISECONDS;
    // Below 1 MHz the counter is not the constant-rate TSC this code relies on.
    if per_millisecond < 1000 {
        return Err(CalibrationError::TscTooSlow { ticks });
    }
    TICKS_PER_MILLISECOND.store(per_millisecond, Ordering::Relaxed);
    Ok(per_millisecond)
}

/// PIT input clocks between wake-up ticks: 1193 makes about 1000.15 Hz.
const WAKEUP_DIVISOR: u16 = (PIT_HERTZ / 1000) as u16;

/// Program PIT channel 0 as a rate generator at about 1 kHz (IRQ0). Its interrupts only
/// wake [`cpu::wait_for_interrupt`]; time itself is read from the TSC.
pub fn start_wakeup_tick() {
    // Channel 0, low byte then high byte, mode 2 (rate generator), binary.
    PIT_COMMAND.write_byte(0b0011_0100);
    let [low, high] = WAKEUP_DIVISOR.to_le_bytes();
    PIT_CHANNEL_0_DATA.write_byte(low);
    PIT_CHANNEL_0_DATA.write_byte(high);
}

fn ticks_per_millisecond() -> u64 {
    TICKS_PER_MILLISECOND.load(Ordering::Relaxed)
}

/// A point in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant {
    ticks: u64,
}

impl Instant {
    pub fn now() -> Instant {
        Instant {
            ticks: cpu::time_stamp(),
        }
    }

    /// Whole milliseconds from `self` to now.
    pub fn elapsed_milliseconds(self) -> u64 {
        cpu::time_stamp().saturating_sub(self.ticks) / ticks_per_millisecond()
    }
}

/// The end of a bounded wait.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    end_ticks: u64,
}

impl Deadline {
    pub fn after_milliseconds(milliseconds: u64) -> Deadline {
        Deadline {
            end_ticks: cpu::time_stamp()
                .saturating_add(milliseconds.saturating_mul(ticks_per_millisecond())),
        }
    }

    pub fn expired(&self) -> bool {
        cpu::time_stamp() >= self.end_ticks
    }
}
