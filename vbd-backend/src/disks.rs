//! The physical disks named in the devices file, opened once for reading and writing and
//! shared by every thread: positioned I/O needs no cursor, so no lock either. [`DiskIo`]
//! offers them to hv-vbd's block path as [`BlockDevices`].
//!
//! Disks are opened without `O_DIRECT`: under TCG the guest, not the page cache, is the
//! bottleneck, and `O_DIRECT` would impose 4 KiB alignment on guest buffers that virtio only
//! promises to be sector-sized. Durability comes from `fdatasync` on flush.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use host_tools::devices::{open_disk, DevicesFile};
use hv_vbd::serve::BlockDevices;
use rustix::fs::{fallocate, FallocateFlags};
use shared_abi::{DeviceNumber, Error, SECTOR_SIZE};

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
                let (opened, _, sectors) = open_disk(&disk.path, true)
                    .map_err(|error| format!("disk {}: {error}", disk.name))?;
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

/// The disks as hv-vbd's block path addresses them, for the buffers of this process (the
/// control channel's frames, the NBD exports). A failure is logged under `channel` and
/// reported as `EIO`, which is all a peer learns.
pub struct DiskIo<'a> {
    pub disks: &'a Disks,
    pub channel: &'a str,
}

impl DiskIo<'_> {
    pub fn failed(&self, failure: io::Error) -> Error {
        eprintln!("vbd-backend: {}: disk I/O failed: {failure}", self.channel);
        Error::Io
    }
}

impl BlockDevices for DiskIo<'_> {
    fn read(&mut self, device: DeviceNumber, offset: u64, buffer: &mut [u8]) -> Result<(), Error> {
        self.disks
            .find(device)
            .and_then(|disk| disk.read_exact_at(buffer, offset))
            .map_err(|failure| self.failed(failure))
    }

    fn write(&mut self, device: DeviceNumber, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.disks
            .find(device)
            .and_then(|disk| disk.write_all_at(data, offset))
            .map_err(|failure| self.failed(failure))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Two images of 4096 sectors, `hda` (3:0) and `hdb` (3:64), the disks of
    /// [`crate::vbd::tests::empty_table`], opened from a devices file.
    pub fn two_disks() -> (tempfile::TempDir, Disks) {
        let directory = tempfile::tempdir().unwrap();
        for name in ["hda", "hdb"] {
            File::create(directory.path().join(format!("{name}.img")))
                .unwrap()
                .set_len(4096 * SECTOR_SIZE)
                .unwrap();
        }
        let devices = directory.path().join("devices.toml");
        std::fs::write(
            &devices,
            "[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"hda.img\"\n\n[[disk]]\nname = \"hdb\"\ndevice = \"3:64\"\npath = \"hdb.img\"\n",
        )
        .unwrap();
        let disks = Disks::open(&devices).unwrap();
        (directory, disks)
    }

    /// `hda` (3:0) of 4096 sectors, the first disk of [`crate::vbd::tests::empty_table`],
    /// whose every read waits for bytes written to the pipe returned with it: a read the
    /// test keeps in flight for as long as it likes.
    pub fn a_disk_on_a_pipe() -> (Disks, std::io::PipeWriter) {
        let (reader, writer) = std::io::pipe().unwrap();
        let disk = Disk {
            name: "hda".into(),
            device: DeviceNumber::new(3, 0).unwrap(),
            sectors: 4096,
            file: File::from(std::os::fd::OwnedFd::from(reader)),
        };
        (Disks { disks: vec![disk] }, writer)
    }

    #[test]
    fn a_device_the_table_names_but_no_disk_backs_is_eio() {
        let (_directory, disks) = two_disks();
        let mut io = DiskIo {
            disks: &disks,
            channel: "test",
        };
        let unknown = DeviceNumber::new(8, 0).unwrap();
        assert_eq!(io.read(unknown, 0, &mut [0; 512]), Err(Error::Io));
        assert_eq!(io.write(unknown, 0, &[0; 512]), Err(Error::Io));
        assert_eq!(
            io.read(
                disks.iter().next().unwrap().device,
                4096 * SECTOR_SIZE,
                &mut [0; 512]
            ),
            Err(Error::Io),
            "past the end of the image"
        );
    }
}
