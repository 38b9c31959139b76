//! ATA PIO driver for the legacy IDE controller: IDENTIFY, LBA48 reads and writes.
//!
//! One command at a time. A wait reads the status register and, while the drive is busy,
//! sleeps until an interrupt: QEMU completes each sector's I/O on its main-loop thread,
//! which a guest polling the status register in a tight loop starves of the global lock
//! (see [`crate::interrupts`]). The drives' IRQs (14, 15) are enabled only to wake that
//! sleep; the 1 kHz timer wakes it too. Every wait is bounded by a deadline and every
//! failure is an [`AtaError`] the caller reports as `EIO`, never a panic. After a failure
//! the channel is reset, so a command abandoned mid-transfer cannot confuse the next one.

use core::fmt;

use crate::cpu::{self, Port, Registers};
use crate::timer::Deadline;

pub const SECTOR_BYTES: usize = 512;

/// Register offsets from a channel's command block.
const DATA: u16 = 0;
const ERROR: u16 = 1;
const SECTOR_COUNT: u16 = 2;
const LBA_LOW: u16 = 3;
const LBA_MID: u16 = 4;
const LBA_HIGH: u16 = 5;
const DRIVE_SELECT: u16 = 6;
const STATUS_COMMAND: u16 = 7;

const STATUS_BUSY: u8 = 0x80;
const STATUS_DEVICE_FAULT: u8 = 0x20;
const STATUS_DATA_REQUEST: u8 = 0x08;
const STATUS_ERROR: u8 = 0x01;

/// Device control bits (written to the control block); nIEN (0x02) stays clear, so the
/// drive raises its IRQ when it finishes a sector or a command.
const CONTROL_INTERRUPTS_ON: u8 = 0x00;
const CONTROL_SOFTWARE_RESET: u8 = 0x04;

const COMMAND_IDENTIFY: u8 = 0xEC;
const COMMAND_READ_SECTORS_EXT: u8 = 0x24;
const COMMAND_WRITE_SECTORS_EXT: u8 = 0x34;

/// Sectors per READ/WRITE SECTORS EXT command. The command takes up to 65536, but a short
/// command bounds how much one failure costs and keeps a deadline per command meaningful.
const SECTORS_PER_COMMAND: usize = 256;
/// The most a single command may take before the disk counts as hung.
const COMMAND_MILLISECONDS: u64 = 5_000;
/// LBA48 addresses 2^48 sectors.
const LBA48_LIMIT: u64 = 1 << 48;

/// One IDE channel: its command block and control block ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Channel {
    command: Registers<8>,
    control: Port,
}

/// The legacy IDE controller's channels on QEMU's `pc` machine; only this module drives them.
pub const PRIMARY: Channel = Channel {
    // SAFETY: the primary channel's eight command-block registers.
    command: unsafe { Registers::new(0x1F0) },
    // SAFETY: the primary channel's device control / alternate status register.
    control: unsafe { Port::new(0x3F6) },
};
pub const SECONDARY: Channel = Channel {
    // SAFETY: the secondary channel's eight command-block registers.
    command: unsafe { Registers::new(0x170) },
    // SAFETY: the secondary channel's device control / alternate status register.
    control: unsafe { Port::new(0x376) },
};

/// Which of a channel's two drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drive {
    Master,
    Slave,
}

impl Drive {
    /// The drive select register's drive bit.
    fn select_bit(self) -> u8 {
        match self {
            Drive::Master => 0x00,
            Drive::Slave => 0x10,
        }
    }
}

/// Why a transfer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtaError {
    /// The drive stayed busy, or never asked for data, until the deadline.
    Timeout { status: u8 },
    /// The drive reported an error (ERR set) with this error register.
    Device { status: u8, error: u8 },
    /// The drive reported a device fault (DF set).
    Fault { status: u8 },
    /// The sectors lie outside the disk; the VBD layer should never ask for them.
    OutOfRange,
}

impl fmt::Display for AtaError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AtaError::Timeout { status } => write!(formatter, "timeout (status {status:#04x})"),
            AtaError::Device { status, error } => {
                write!(
                    formatter,
                    "device error (status {status:#04x}, error {error:#04x})"
                )
            }
            AtaError::Fault { status } => write!(formatter, "device fault (status {status:#04x})"),
            AtaError::OutOfRange => write!(formatter, "sectors outside the disk"),
        }
    }
}

/// An ATA disk found by IDENTIFY.
#[derive(Clone, Copy, Debug)]
pub struct Disk {
    channel: Channel,
    drive: Drive,
    sectors: u64,
    /// The model string from IDENTIFY words 27..47, space-padded ASCII.
    model: [u8; 40],
}

impl Channel {
    fn status(self) -> u8 {
        self.command.at(STATUS_COMMAND).read_byte()
    }

    /// The status without the side effects of reading the status register; four reads
    /// also give the 400 ns a drive needs after being selected.
    fn settle(self) -> u8 {
        let mut status = 0;
        for _ in 0..4 {
            status = self.control.read_byte();
        }
        status
    }

    /// Put the drives in a known state, with their interrupts on (they only wake waits).
    pub fn reset(self) {
        self.control
            .write_byte(CONTROL_INTERRUPTS_ON | CONTROL_SOFTWARE_RESET);
        self.settle();
        self.control.write_byte(CONTROL_INTERRUPTS_ON);
        self.settle();
        let deadline = Deadline::after_milliseconds(COMMAND_MILLISECONDS);
        // A drive that stays busy shows up as a timeout on its first command.
        let _ = self.wait_not_busy(&deadline);
    }

    fn wait_not_busy(self, deadline: &Deadline) -> Result<u8, AtaError> {
        loop {
            let status = self.status();
            if status & STATUS_BUSY == 0 {
                return Ok(status);
            }
            if deadline.expired() {
                return Err(AtaError::Timeout { status });
            }
            // Reading the status register cleared any pending drive interrupt, so the next
            // one means the drive moved on.
            cpu::wait_for_interrupt();
        }
    }

    /// Wait until the drive offers or wants one sector of data.
    fn wait_data_request(self, deadline: &Deadline) -> Result<(), AtaError> {
        loop {
            let status = self.status();
            if status & STATUS_BUSY == 0 {
                self.check(status)?;
                if status & STATUS_DATA_REQUEST != 0 {
                    return Ok(());
                }
            }
            if deadline.expired() {
                return Err(AtaError::Timeout { status });
            }
            cpu::wait_for_interrupt();
        }
    }

    fn check(self, status: u8) -> Result<(), AtaError> {
        if status & STATUS_ERROR != 0 {
            return Err(AtaError::Device {
                status,
                error: self.command.at(ERROR).read_byte(),
            });
        }
        if status & STATUS_DEVICE_FAULT != 0 {
            return Err(AtaError::Fault { status });
        }
        Ok(())
    }

    fn select(self, drive: Drive, deadline: &Deadline) -> Result<(), AtaError> {
        self.wait_not_busy(deadline)?;
        // 0x40: LBA addressing; 0xA0 are bits that old drives require set.
        self.command
            .at(DRIVE_SELECT)
            .write_byte(0xE0 | drive.select_bit());
        self.settle();
        self.wait_not_busy(deadline).map(drop)
    }

    /// Load an LBA48 address and count: the high bytes first, each register remembers both.
    fn load_address(self, sector: u64, count: u16) {
        let [count_low, count_high] = count.to_le_bytes();
        let lba = sector.to_le_bytes();
        self.command.at(SECTOR_COUNT).write_byte(count_high);
        self.command.at(LBA_LOW).write_byte(lba[3]);
        self.command.at(LBA_MID).write_byte(lba[4]);
        self.command.at(LBA_HIGH).write_byte(lba[5]);
        self.command.at(SECTOR_COUNT).write_byte(count_low);
        self.command.at(LBA_LOW).write_byte(lba[0]);
        self.command.at(LBA_MID).write_byte(lba[1]);
        self.command.at(LBA_HIGH).write_byte(lba[2]);
    }

    /// Send IDENTIFY to `drive`; `None` when nothing answers or the device is not an ATA
    /// disk (QEMU's default CD-ROM on hdc answers as ATAPI).
    pub fn identify(self, drive: Drive) -> Option<Disk> {
        let deadline = Deadline::after_milliseconds(COMMAND_MILLISECONDS);
        // A channel without drives floats its status register high.
        if self.settle() == 0xFF {
            return None;
        }
        self.select(drive, &deadline).ok()?;
        self.load_address(0, 0);
        self.command.at(STATUS_COMMAND).write_byte(COMMAND_IDENTIFY);
        self.settle();
        if self.status() == 0 {
            return None;
        }
        self.wait_not_busy(&deadline).ok()?;
        // ATAPI and SATA devices abort IDENTIFY and leave their signature here.
        if self.command.at(LBA_MID).read_byte() != 0 || self.command.at(LBA_HIGH).read_byte() != 0 {
            return None;
        }
        self.wait_data_request(&deadline).ok()?;
        let mut identity = [0u8; SECTOR_BYTES];
        self.command.at(DATA).read_words_into(&mut identity);
        let word =
            |index: usize| u16::from_le_bytes([identity[2 * index], identity[2 * index + 1]]);
        let supports_lba48 = word(83) & (1 << 10) != 0;
        let sectors = if supports_lba48 {
            (0..4).fold(0u64, |sectors, index| {
                sectors | u64::from(word(100 + index)) << (16 * index)
            })
        } else {
            u64::from(word(60)) | u64::from(word(61)) << 16
        };
        let mut model = [0u8; 40];
        // ATA strings hold two characters per word, the first in the high byte.
        for (index, pair) in model.chunks_exact_mut(2).enumerate() {
            pair.copy_from_slice(&word(27 + index).to_be_bytes());
        }
        Some(Disk {
            channel: self,
            drive,
            sectors: sectors.min(LBA48_LIMIT),
            model,
        })
    }
}

impl Disk {
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// The model string, trimmed.
    pub fn model(&self) -> &str {
        core::str::from_utf8(&self.model).map_or("?", |model| model.trim())
    }

    /// Read `buffer.len() / 512` sectors starting at `sector`.
    pub fn read(&self, sector: u64, buffer: &mut [u8]) -> Result<(), AtaError> {
        self.check_range(sector, buffer.len())?;
        let mut first = sector;
        for chunk in buffer.chunks_mut(SECTORS_PER_COMMAND * SECTOR_BYTES) {
            self.recover_on_error(self.read_command(first, chunk))?;
            first += (chunk.len() / SECTOR_BYTES) as u64;
        }
        Ok(())
    }

    /// Write `data` (a whole number of sectors) starting at `sector`. Done means the drive
    /// accepted every sector: QEMU has then written them to the image file, where the host
    /// sees them. That is all a reply promises; no cache flush (which would make small
    /// writes several times slower) is needed for the host to read them back.
    pub fn write(&self, sector: u64, data: &[u8]) -> Result<(), AtaError> {
        self.check_range(sector, data.len())?;
        let mut first = sector;
        for chunk in data.chunks(SECTORS_PER_COMMAND * SECTOR_BYTES) {
            self.recover_on_error(self.write_command(first, chunk))?;
            first += (chunk.len() / SECTOR_BYTES) as u64;
        }
        Ok(())
    }

    fn check_range(&self, sector: u64, bytes: usize) -> Result<(), AtaError> {
        if !bytes.is_multiple_of(SECTOR_BYTES) {
            return Err(AtaError::OutOfRange);
        }
        let end = sector
            .checked_add((bytes / SECTOR_BYTES) as u64)
            .ok_or(AtaError::OutOfRange)?;
        if end > self.sectors {
            return Err(AtaError::OutOfRange);
        }
        Ok(())
    }

    fn recover_on_error(&self, result: Result<(), AtaError>) -> Result<(), AtaError> {
        if result.is_err() {
            self.channel.reset();
        }
        result
    }

    /// One READ SECTORS EXT of at most [`SECTORS_PER_COMMAND`] sectors.
    fn read_command(&self, sector: u64, buffer: &mut [u8]) -> Result<(), AtaError> {
        let deadline = Deadline::after_milliseconds(COMMAND_MILLISECONDS);
        self.start(COMMAND_READ_SECTORS_EXT, sector, buffer.len(), &deadline)?;
        for sector_bytes in buffer.chunks_exact_mut(SECTOR_BYTES) {
            self.channel.wait_data_request(&deadline)?;
            self.channel.command.at(DATA).read_words_into(sector_bytes);
        }
        self.channel.settle();
        let status = self.channel.wait_not_busy(&deadline)?;
        self.channel.check(status)
    }

    /// One WRITE SECTORS EXT of at most [`SECTORS_PER_COMMAND`] sectors.
    fn write_command(&self, sector: u64, data: &[u8]) -> Result<(), AtaError> {
        let deadline = Deadline::after_milliseconds(COMMAND_MILLISECONDS);
        self.start(COMMAND_WRITE_SECTORS_EXT, sector, data.len(), &deadline)?;
        for sector_bytes in data.chunks_exact(SECTOR_BYTES) {
            self.channel.wait_data_request(&deadline)?;
            self.channel.command.at(DATA).write_words_from(sector_bytes);
        }
        self.channel.settle();
        let status = self.channel.wait_not_busy(&deadline)?;
        self.channel.check(status)
    }

    fn start(
        &self,
        command: u8,
        sector: u64,
        bytes: usize,
        deadline: &Deadline,
    ) -> Result<(), AtaError> {
        self.channel.select(self.drive, deadline)?;
        // At most SECTORS_PER_COMMAND, so it fits the 16-bit count.
        self.channel
            .load_address(sector, (bytes / SECTOR_BYTES) as u16);
        self.channel.command.at(STATUS_COMMAND).write_byte(command);
        self.channel.settle();
        Ok(())
    }
}
