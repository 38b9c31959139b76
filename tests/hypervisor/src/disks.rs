//! The physical disks: IDE discovery at boot and lookup by device number afterwards.
//!
//! QEMU's `-drive if=ide,index=N` puts index 0..3 on primary master, primary slave,
//! secondary master and secondary slave, which Linux names hda..hdd; the same names give the
//! device numbers the VBD layer and the host tools use (3:0, 3:64, 22:0, 22:64).

use shared_abi::DeviceNumber;

use crate::ata::{self, AtaError, Channel, Drive, SECTOR_BYTES};

/// Every IDE position in index order, with its classic name.
const POSITIONS: [(Channel, Drive, &str); 4] = [
    (ata::PRIMARY, Drive::Master, "hda"),
    (ata::PRIMARY, Drive::Slave, "hdb"),
    (ata::SECONDARY, Drive::Master, "hdc"),
    (ata::SECONDARY, Drive::Slave, "hdd"),
];

/// One disk found at boot.
#[derive(Clone, Copy, Debug)]
pub struct PhysicalDisk {
    pub name: &'static str,
    pub device: DeviceNumber,
    pub ata: ata::Disk,
}

/// Up to four disks, at their IDE positions.
pub struct Disks {
    slots: [Option<PhysicalDisk>; 4],
}

impl Disks {
    /// Reset both channels and IDENTIFY every position.
    pub fn discover() -> Disks {
        ata::PRIMARY.reset();
        ata::SECONDARY.reset();
        let slots = POSITIONS.map(|(channel, drive, name)| {
            let ata = channel.identify(drive)?;
            let device = DeviceNumber::from_name(name)?;
            Some(PhysicalDisk { name, device, ata })
        });
        Disks { slots }
    }

    pub fn iter(&self) -> impl Iterator<Item = &PhysicalDisk> {
        self.slots.iter().flatten()
    }

    pub fn find(&self, device: DeviceNumber) -> Option<&PhysicalDisk> {
        self.iter().find(|disk| disk.device == device)
    }
}

/// Why a block transfer could not be done, for the console; the peer is told `EIO`.
#[derive(Clone, Copy, Debug)]
pub struct TransferError {
    pub device: DeviceNumber,
    pub sector: u64,
    pub error: AtaError,
}

impl core::fmt::Display for TransferError {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            formatter,
            "disk {} at sector {}: {}",
            self.device, self.sector, self.error
        )
    }
}

impl PhysicalDisk {
    fn failed(&self, sector: u64, error: AtaError) -> TransferError {
        TransferError {
            device: self.device,
            sector,
            error,
        }
    }

    pub fn read(&self, sector: u64, buffer: &mut [u8]) -> Result<(), TransferError> {
        self.ata
            .read(sector, buffer)
            .map_err(|error| self.failed(sector, error))
    }

    pub fn write(&self, sector: u64, data: &[u8]) -> Result<(), TransferError> {
        self.ata
            .write(sector, data)
            .map_err(|error| self.failed(sector, error))
    }

    /// Size in MiB, for the console.
    pub fn mebibytes(&self) -> u64 {
        self.ata.sectors() * SECTOR_BYTES as u64 / (1024 * 1024)
    }
}
