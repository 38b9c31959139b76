//! Where `phy:NAME` lives: a disk or partition named in a devices file (raw images stand in
//! for disks), or, without one, in Linux sysfs. Both answer in the same terms: the whole
//! disk's device number and absolute sectors on it. `vdisk` resolves names through either;
//! vbd-backend opens the devices file's disks to serve them.
#![forbid(unsafe_code)]

mod error;
mod file;
mod names;
pub mod partition;
mod sysfs;

use std::fs::{self, File};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, SECTOR_SIZE};

pub use error::{Error, Result};
pub use file::{DevicesFile, Disk};
pub use names::{is_device_name, parse_device_number};
pub use partition::TableKind;
pub use sysfs::Sysfs;

/// Which disk a device number stands for: the file or block device through which it is
/// read and written, and what makes that disk itself whatever path names it (a file by its
/// file system and inode, a block device by its number), so that two names for one disk
/// are seen to be one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskIdentity {
    pub path: PathBuf,
    pub identity: String,
}

/// A named range of a physical disk: the whole disk or one partition of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// The Linux name: `hda`, `hda2`, `nvme0n1p3`.
    pub name: String,
    /// The device number of the whole disk, the only device extents ever name.
    pub disk_device: DeviceNumber,
    /// The first sector, counted from the start of the whole disk (seed defect 2 counted
    /// from the partition's start).
    pub start_sector: u64,
    pub nr_sectors: u64,
    /// The whole disk the region lies on.
    pub disk: DiskIdentity,
    /// For a whole disk, the partition table it carries, if any.
    pub partition_table: Option<TableKind>,
    /// What was found amiss but worked around (a GPT read from its backup), to be told.
    pub warnings: Vec<String>,
    /// It lies on a disk every host of a shared pool sees (`shared = true` in the devices
    /// file); only such regions go into a pool on etcd.
    pub shared: bool,
}

impl Region {
    /// The region as one extent of its whole disk; refused for an empty region or one
    /// whose end overflows (a damaged partition table says such things).
    pub fn extent(&self) -> Result<Extent> {
        Extent::new(self.disk_device, self.start_sector, self.nr_sectors).map_err(|error| {
            Error::Refused(format!(
                "{}: {} sectors from sector {} is not an extent: {error}",
                self.name, self.nr_sectors, self.start_sector
            ))
        })
    }
}

/// A range of a disk as dom0's kernel sees it, found from a mount: the whole disk's dom0
/// device number, the image file behind it when it is a loop device, and the sectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRegion {
    pub disk_device: DeviceNumber,
    pub backing_file: Option<PathBuf>,
    pub start_sector: u64,
    pub nr_sectors: u64,
}

/// A namespace of physical disks.
pub trait DeviceSource {
    /// The disk or partition called `name`.
    fn resolve(&self, name: &str) -> Result<Region>;
    /// The disk `disk` stands for, through which it is written (to zero extents).
    fn disk(&self, disk: DeviceNumber) -> Result<DiskIdentity>;
    /// The extent a range of one of dom0's own disks occupies in this namespace, if it lies
    /// on a disk this namespace knows.
    fn extent_of_host_region(&self, region: &HostRegion) -> Option<Extent>;
}

/// What makes the file `metadata` describes one disk, or why it is no disk at all: only a
/// regular file (an image) or a block device is (a directory "holds" 2^63 bytes).
pub fn identity_of(path: &Path, metadata: &fs::Metadata) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let file_type = metadata.file_type();
    if file_type.is_file() {
        Ok(format!("file {}:{}", metadata.dev(), metadata.ino()))
    } else if file_type.is_block_device() {
        Ok(format!("block {:x}", metadata.rdev()))
    } else {
        let what = if file_type.is_dir() {
            "a directory"
        } else if file_type.is_char_device() {
            "a character device"
        } else if file_type.is_fifo() {
            "a pipe"
        } else if file_type.is_socket() {
            "a socket"
        } else {
            "something else"
        };
        Err(Error::Refused(format!(
            "{}: {what}, not a disk image or block device",
            path.display()
        )))
    }
}

/// Open the disk at `path` (for writing too with `write`), refusing anything that is not a
/// regular file or block device; returns it with its identity and size in whole sectors.
pub fn open_disk(path: &Path, write: bool) -> Result<(File, DiskIdentity, u64)> {
    // Never create or truncate: the path is a disk, not a scratch file.
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|error| Error::io(path, error))?;
    let metadata = file.metadata().map_err(|error| Error::io(path, error))?;
    let identity = identity_of(path, &metadata)?;
    // Seeking to the end works for block devices too, whose metadata length is zero.
    let bytes = file
        .seek(SeekFrom::End(0))
        .map_err(|error| Error::io(path, error))?;
    let disk = DiskIdentity {
        path: path.to_path_buf(),
        identity,
    };
    Ok((file, disk, bytes / SECTOR_SIZE))
}

/// A glibc `dev_t` (as `stat` returns it) as a device number.
pub fn device_number_of(dev: u64) -> Option<DeviceNumber> {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    DeviceNumber::new(u32::try_from(major).ok()?, u32::try_from(minor).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_device_numbers_decode() {
        assert_eq!(device_number_of(0x0801), DeviceNumber::new(8, 1));
        assert_eq!(device_number_of((259 << 8) | 3), DeviceNumber::new(259, 3));
        assert_eq!(
            device_number_of(0x0010_0000 | (1 << 8)),
            DeviceNumber::new(1, 0x100)
        );
    }
}
