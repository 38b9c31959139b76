//! The CMOS real-time clock, read once at boot for the start identifier: the time of day
//! makes two boots differ even when the time-stamp counter, which under TCG counts from the
//! machine's start, happens to read the same.

use crate::cpu::Port;

// SAFETY: the CMOS index port; this module alone selects CMOS registers, and only ever the
// clock's, with the NMI-disable bit left clear.
const INDEX: Port = unsafe { Port::new(0x70) };
// SAFETY: the CMOS data port, read (never written) for the register just selected.
const DATA: Port = unsafe { Port::new(0x71) };

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0A;
const STATUS_B: u8 = 0x0B;
/// Status A: an update is under way and the clock registers are not stable.
const UPDATING: u8 = 0x80;
/// Status B: the registers hold binary, not BCD.
const BINARY: u8 = 0x04;
/// Reads of status A before the clock counts as stuck mid-update.
const UPDATE_WAIT_LIMIT: u32 = 100_000;

fn read(register: u8) -> u8 {
    INDEX.write_byte(register);
    DATA.read_byte()
}

/// The wall-clock time as a number that grows by one each second (not a calendar
/// conversion: every month counts 31 days), or `None` when the clock stays mid-update.
pub fn seconds() -> Option<u64> {
    let mut waited = 0;
    while read(STATUS_A) & UPDATING != 0 {
        waited += 1;
        if waited == UPDATE_WAIT_LIMIT {
            return None;
        }
    }
    let binary = read(STATUS_B) & BINARY != 0;
    let value = |register| {
        let raw = read(register);
        u64::from(if binary {
            raw
        } else {
            (raw >> 4) * 10 + (raw & 0x0F)
        })
    };
    let days = (value(YEAR) * 12 + value(MONTH)) * 31 + value(DAY);
    // Hours in 24-hour BCD or binary; the 12-hour flag (bit 7) only ever adds 12 hours,
    // which is still a distinct value.
    let hours = value(HOURS);
    Some(((days * 24 + hours) * 60 + value(MINUTES)) * 60 + value(SECONDS))
}
