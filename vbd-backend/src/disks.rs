//! The physical disks named in the devices file, opened once for reading and writing and
//! shared by every thread: positioned I/O needs no cursor, so no lock either.
//!
//! Disks are opened without `O_DIRECT`: under TCG the guest, not the page cache, is the
//! bottleneck, and `O_DIRECT` would impose 4 KiB alignment on guest buffers that virtio only
//! promises to be sector-sized. Durability comes from `fdatasync` on flush.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use host_tools::devices::{sectors_of, DevicesFile};
use rustix::fs::{fallocate, FallocateFlags};
use shared_abi::{DeviceNumber, SECTOR_SIZE};

use crate::vbd::Table;

/// One opened disk.
#[derive(Debug)]
pub struct Disk {
    pub name: String,
    pub device: DeviceNumber,
    pub sectors: u64,
    file: File,
}

/// Every disk of the devices file.
#[derive(Debug)]
pub struct Disks {
    disks: Vec<Disk>,
}

/// How to zero a range: reads of a discarded range may return anything, reads of a zeroed
/// one must return zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    Discard,
    WriteZeroes { may_unmap: bool },
}

impl Disks {
    /// Open every disk of `file`, in file order. A missing or unreadable disk, or an empty
    /// one, is an error naming it.
    pub fn open(file: &Path) -> Result<Disks, String> {
        let devices = DevicesFile::load(file).map_err(|error| error.to_string())?;
        let disks = devices
            .disks()
            .iter()
            .map(|disk| {
                let opened = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&disk.path)
                    .map_err(|error| {
                        format!("disk {}: {}: {error}", disk.name, disk.path.display())
                    })?;
                let sectors = sectors_of(&disk.path).map_err(|error| error.to_string())?;
                if sectors == 0 {
                    return Err(format!(
                        "disk {}: {}: smaller than one sector",
                        disk.name,
                        disk.path.display()
                    ));
                }
                Ok(Disk {
                    name: disk.name.clone(),
                    device: disk.device,
                    sectors,
                    file: opened,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Disks { disks })
    }

    /// Tell the VBD table about every disk, as a hypervisor does at boot.
    pub fn register(&self, table: &Table) -> Result<(), String> {
        self.disks.iter().try_for_each(|disk| {
            table
                .register_disk(hv_vbd::Disk {
                    device: disk.device,
                    sectors: disk.sectors,
                })
                .map_err(|error| format!("disk {}: cannot register: {error}", disk.name))
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Disk> {
        self.disks.iter()
    }

    /// The disk with this device number. Translation only names registered disks, so
    /// `None` means the table and this list disagree: an I/O error, never a panic.
    pub fn find(&self, device: DeviceNumber) -> io::Result<&Disk> {
        self.disks
            .iter()
            .find(|disk| disk.device == device)
            .ok_or_else(|| io::Error::other(format!("device {device} is not an opened disk")))
    }

    /// `fdatasync` each of `devices`.
    pub fn flush(&self, devices: &[DeviceNumber]) -> io::Result<()> {
        devices
            .iter()
            .try_for_each(|&device| self.find(device)?.file.sync_data())
    }

    /// `fdatasync` every disk, reporting the first failure after trying them all.
    pub fn flush_all(&self) -> io::Result<()> {
        let results: Vec<io::Result<()>> = self
            .disks
            .iter()
            .map(|disk| disk.file.sync_data())
            .collect();
        results.into_iter().collect()
    }
}

impl Disk {
    /// The file, for positioned I/O into guest memory.
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn read_exact_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buffer, offset)
    }

    pub fn write_all_at(&self, buffer: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buffer, offset)
    }

    /// Discard or zero `length` bytes at `offset`, within the disk's size. Where the file or
    /// device cannot zero in place, zeros are written.
    pub fn release(&self, offset: u64, length: u64, how: Release) -> io::Result<()> {
        let flags = match how {
            Release::Discard | Release::WriteZeroes { may_unmap: true } => {
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE
            }
            Release::WriteZeroes { may_unmap: false } => {
                FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE
            }
        };
        match fallocate(&self.file, flags, offset, length) {
            Ok(()) => Ok(()),
            // A discard is a hint: a disk that cannot punch holes keeps its data.
            Err(_) if how == Release::Discard => Ok(()),
            Err(error)
                if error == rustix::io::Errno::OPNOTSUPP || error == rustix::io::Errno::NOSYS =>
            {
                self.write_zeros(offset, length)
            }
            Err(error) => Err(error.into()),
        }
    }

    fn write_zeros(&self, offset: u64, length: u64) -> io::Result<()> {
        const CHUNK: u64 = 256 * SECTOR_SIZE;
        let zeros = [0u8; CHUNK as usize];
        let mut done = 0u64;
        while done < length {
            let count = (length - done).min(CHUNK);
            self.file
                .write_all_at(&zeros[..count as usize], offset + done)?;
            done += count;
        }
        Ok(())
    }
}
