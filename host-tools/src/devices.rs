//! Where `phy:NAME` lives: a disk or partition named in a devices file (raw images stand in
//! for disks), or, without one, in Linux sysfs. Both answer in the same terms: the whole
//! disk's device number and absolute sectors on it.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, SECTOR_SIZE};

use crate::error::{Error, Result};
pub use crate::partition::TableKind;
use crate::partition::{self, TableError};
use crate::uname::{is_device_name, parse_device_number};

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
    pub fn extent(&self) -> crate::Result<Extent> {
        Extent::new(self.disk_device, self.start_sector, self.nr_sectors).map_err(|error| {
            crate::Error::Refused(format!(
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

/// One `[[disk]]` of a devices file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub name: String,
    pub device: DeviceNumber,
    pub path: PathBuf,
    /// A LUN every host of a shared pool sees under the same name and device number.
    pub shared: bool,
}

#[derive(Deserialize)]
struct DevicesToml {
    #[serde(default)]
    disk: Vec<DiskToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskToml {
    name: String,
    device: String,
    path: PathBuf,
    #[serde(default)]
    shared: bool,
}

/// The disks named in a devices file. Other tables in the file (such as a machine
/// description's `[endpoints]`) are ignored, so one file can serve both purposes.
#[derive(Clone, Debug)]
pub struct DevicesFile {
    file: PathBuf,
    disks: Vec<Disk>,
}

impl DevicesFile {
    /// Read and check a devices file. Relative disk paths are relative to the file.
    pub fn load(file: &Path) -> Result<DevicesFile> {
        let text = fs::read_to_string(file).map_err(|error| Error::io(file, error))?;
        Self::parse(file, &text)
    }

    /// Check the text of a devices file that lives at `file`.
    pub fn parse(file: &Path, text: &str) -> Result<DevicesFile> {
        let bad =
            |reason: String| Error::Refused(format!("devices file {}: {reason}", file.display()));
        let parsed: DevicesToml =
            toml::from_str(text).map_err(|error| bad(error.message().replace('\n', " ")))?;
        let base = file.parent().unwrap_or(Path::new("."));
        let mut names = HashSet::new();
        let mut numbers = HashSet::new();
        let mut disks = Vec::new();
        for entry in parsed.disk {
            if !is_device_name(&entry.name) {
                return Err(bad(format!(
                    "disk name {:?} is not a device name",
                    entry.name
                )));
            }
            let device = parse_device_number(&entry.device).ok_or_else(|| {
                bad(format!(
                    "disk {}: device {:?} is not major:minor or a device name",
                    entry.name, entry.device
                ))
            })?;
            if !names.insert(entry.name.clone()) {
                return Err(bad(format!("disk name {} appears twice", entry.name)));
            }
            if !numbers.insert(device) {
                return Err(bad(format!("device {device} appears twice")));
            }
            disks.push(Disk {
                name: entry.name,
                device,
                path: base.join(entry.path),
                shared: entry.shared,
            });
        }
        // Two entries for one disk (a link, the same block device) would let two virtual
        // disks share bytes. Paths that cannot be read yet are refused where they are used.
        let mut identities: Vec<(String, &Disk)> = Vec::new();
        for disk in &disks {
            let Ok(identity) = fs::metadata(&disk.path)
                .map_err(|error| Error::io(&disk.path, error))
                .and_then(|metadata| identity_of(&disk.path, &metadata))
            else {
                continue;
            };
            if let Some((_, first)) = identities.iter().find(|(known, _)| *known == identity) {
                return Err(bad(format!(
                    "disks {} and {} are one disk ({} and {})",
                    first.name,
                    disk.name,
                    first.path.display(),
                    disk.path.display()
                )));
            }
            identities.push((identity, disk));
        }
        Ok(DevicesFile {
            file: file.to_path_buf(),
            disks,
        })
    }

    /// The disks, in file order.
    pub fn disks(&self) -> &[Disk] {
        &self.disks
    }

    fn not_found(&self, name: &str) -> Error {
        Error::NotFound(format!(
            "phy:{name}: no such disk or partition in devices file {}",
            self.file.display()
        ))
    }
}

impl DevicesFile {
    /// Resolve `name` on `disk`, the entry it is or whose partition it names.
    fn resolve_on(&self, disk: &Disk, name: &str, number: Option<u32>) -> Result<Region> {
        let (file, identity, disk_sectors) = open_disk(&disk.path, false)?;
        let table = partition::read_partition_table(&file, disk_sectors);
        let mut region = Region {
            name: name.to_string(),
            disk_device: disk.device,
            start_sector: 0,
            nr_sectors: disk_sectors,
            disk: identity,
            partition_table: None,
            warnings: Vec::new(),
            shared: disk.shared,
        };
        let Some(number) = number else {
            region.partition_table = match table {
                Ok(table) => Some(table.kind),
                Err(TableError::NoTable) => None,
                Err(_) => Some(TableKind::Damaged),
            };
            return Ok(region);
        };
        let table = match table {
            Ok(table) => table,
            Err(TableError::NoTable) => return Err(self.not_found(name)),
            Err(error) => return Err(Error::Refused(format!("{}: {error}", disk.path.display()))),
        };
        let partition = table
            .partitions
            .iter()
            .find(|partition| partition.number == number)
            .ok_or_else(|| self.not_found(name))?;
        region.start_sector = partition.start_sector;
        region.nr_sectors = partition.nr_sectors;
        region.warnings = table
            .warnings
            .iter()
            .map(|warning| format!("{}: {warning}", disk.path.display()))
            .collect();
        Ok(region)
    }
}

impl DeviceSource for DevicesFile {
    fn resolve(&self, name: &str) -> Result<Region> {
        let (disk, number) = self
            .disks
            .iter()
            .find_map(|disk| {
                if disk.name == name {
                    Some((disk, None))
                } else {
                    partition::partition_number(&disk.name, name).map(|number| (disk, Some(number)))
                }
            })
            .ok_or_else(|| self.not_found(name))?;
        self.resolve_on(disk, name, number)
            .map_err(|error| match error {
                Error::NotFound(_) => error,
                other => Error::Refused(format!("phy:{name}: {other}")),
            })
    }

    fn disk(&self, disk: DeviceNumber) -> Result<DiskIdentity> {
        let entry = self
            .disks
            .iter()
            .find(|entry| entry.device == disk)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "device {disk}: not in devices file {}",
                    self.file.display()
                ))
            })?;
        let metadata = fs::metadata(&entry.path).map_err(|error| Error::io(&entry.path, error))?;
        Ok(DiskIdentity {
            path: entry.path.clone(),
            identity: identity_of(&entry.path, &metadata)?,
        })
    }

    fn extent_of_host_region(&self, region: &HostRegion) -> Option<Extent> {
        let backing = region
            .backing_file
            .as_ref()
            .and_then(|file| fs::canonicalize(file).ok());
        self.disks.iter().find_map(|disk| {
            let same_file = backing.is_some() && fs::canonicalize(&disk.path).ok() == backing;
            let same_device = fs::metadata(&disk.path).is_ok_and(|metadata| {
                use std::os::unix::fs::MetadataExt;
                metadata.file_type().is_block_device()
                    && device_number_of(metadata.rdev()) == Some(region.disk_device)
            });
            if !(same_file || same_device) {
                return None;
            }
            Extent::new(disk.device, region.start_sector, region.nr_sectors).ok()
        })
    }
}

/// A glibc `dev_t` (as `stat` returns it) as a device number.
pub fn device_number_of(dev: u64) -> Option<DeviceNumber> {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    DeviceNumber::new(u32::try_from(major).ok()?, u32::try_from(minor).ok()?)
}

/// The disks the running Linux kernel knows, read from sysfs. The roots are parameters so
/// tests can build a fake tree.
#[derive(Clone, Debug)]
pub struct Sysfs {
    pub sys_root: PathBuf,
    pub dev_root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Sysfs {
        Sysfs {
            sys_root: PathBuf::from("/sys"),
            dev_root: PathBuf::from("/dev"),
        }
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_string())
}

fn read_number(path: &Path) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

/// What sysfs says about one block device directory.
struct SysfsEntry {
    /// The whole disk's directory: the entry itself, or its parent for a partition.
    disk_directory: PathBuf,
    start_sector: u64,
    nr_sectors: u64,
}

impl Sysfs {
    fn entry(&self, directory: &Path) -> Option<SysfsEntry> {
        let directory = fs::canonicalize(directory).ok()?;
        // A directory without a well-formed `dev` is not a block device.
        read_trimmed(&directory.join("dev"))?
            .parse::<DeviceNumber>()
            .ok()?;
        let nr_sectors = read_number(&directory.join("size"))?;
        if directory.join("partition").exists() {
            Some(SysfsEntry {
                disk_directory: directory.parent()?.to_path_buf(),
                start_sector: read_number(&directory.join("start"))?,
                nr_sectors,
            })
        } else {
            Some(SysfsEntry {
                disk_directory: directory,
                start_sector: 0,
                nr_sectors,
            })
        }
    }

    /// The range of dom0's disks that device `device` (a disk, partition or loop device)
    /// covers.
    pub fn host_region(&self, device: DeviceNumber) -> Option<HostRegion> {
        let entry = self.entry(&self.sys_root.join("dev/block").join(device.to_string()))?;
        let disk_device: DeviceNumber = read_trimmed(&entry.disk_directory.join("dev"))?
            .parse()
            .ok()?;
        let loop_directory = entry.disk_directory.join("loop");
        let (backing_file, offset) = match read_trimmed(&loop_directory.join("backing_file")) {
            Some(file) => (
                Some(PathBuf::from(file)),
                read_number(&loop_directory.join("offset")).unwrap_or(0) / SECTOR_SIZE,
            ),
            None => (None, 0),
        };
        Some(HostRegion {
            disk_device,
            backing_file,
            start_sector: entry.start_sector + offset,
            nr_sectors: entry.nr_sectors,
        })
    }
}

impl DeviceSource for Sysfs {
    fn resolve(&self, name: &str) -> Result<Region> {
        let not_found = || {
            Error::NotFound(format!(
                "phy:{name}: no such block device in {}",
                self.sys_root.join("class/block").display()
            ))
        };
        if !is_device_name(name) {
            return Err(not_found());
        }
        let entry = self
            .entry(&self.sys_root.join("class/block").join(name))
            .ok_or_else(not_found)?;
        let disk_device = read_trimmed(&entry.disk_directory.join("dev"))
            .and_then(|text| text.parse().ok())
            .ok_or_else(not_found)?;
        // The kernel lists a whole disk's partitions as directories that say `partition`.
        let partitioned = entry.start_sector == 0
            && fs::read_dir(&entry.disk_directory).is_ok_and(|children| {
                children
                    .flatten()
                    .any(|child| child.path().join("partition").exists())
            });
        Ok(Region {
            name: name.to_string(),
            disk_device,
            start_sector: entry.start_sector,
            nr_sectors: entry.nr_sectors,
            disk: self.disk(disk_device)?,
            partition_table: partitioned.then_some(TableKind::Some),
            warnings: Vec::new(),
            shared: false,
        })
    }

    fn disk(&self, disk: DeviceNumber) -> Result<DiskIdentity> {
        let directory = fs::canonicalize(self.sys_root.join("dev/block").join(disk.to_string()))
            .map_err(|_| {
                Error::NotFound(format!("device {disk}: not a block device of this machine"))
            })?;
        let name = directory
            .file_name()
            .ok_or_else(|| Error::NotFound(format!("device {disk}: no name in sysfs")))?;
        // The kernel's number is the disk's identity here: the path is only how to reach it.
        Ok(DiskIdentity {
            path: self.dev_root.join(name),
            identity: format!("block {disk}"),
        })
    }

    fn extent_of_host_region(&self, region: &HostRegion) -> Option<Extent> {
        Extent::new(region.disk_device, region.start_sector, region.nr_sectors).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_file_parses_and_checks() {
        let file = Path::new("/images/machine.toml");
        let devices = DevicesFile::parse(
            file,
            "[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"hda.img\"\n\n[[disk]]\nname = \"sda\"\ndevice = \"8:0\"\npath = \"/san/lun0\"\nshared = true\n\n[endpoints]\ndom0 = \"unix:/x\"\n",
        )
        .unwrap();
        assert_eq!(
            devices.disks(),
            &[
                Disk {
                    name: "hda".into(),
                    device: DeviceNumber::new(3, 0).unwrap(),
                    path: PathBuf::from("/images/hda.img"),
                    shared: false,
                },
                Disk {
                    name: "sda".into(),
                    device: DeviceNumber::new(8, 0).unwrap(),
                    path: PathBuf::from("/san/lun0"),
                    shared: true,
                }
            ]
        );
        assert_eq!(
            DevicesFile::parse(file, "[[disk]]\nname = \"hda\"\ndevice = \"3\"\npath = \"a\"\n")
                .unwrap_err()
                .to_string(),
            "devices file /images/machine.toml: disk hda: device \"3\" is not major:minor or a device name"
        );
        assert_eq!(
            DevicesFile::parse(
                file,
                "[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"a\"\n[[disk]]\nname = \"hdb\"\ndevice = \"hda\"\npath = \"b\"\n"
            )
            .unwrap_err()
            .to_string(),
            "devices file /images/machine.toml: device 3:0 appears twice"
        );
    }

    #[test]
    fn glibc_device_numbers_decode() {
        assert_eq!(device_number_of(0x0801), DeviceNumber::new(8, 1));
        assert_eq!(device_number_of((259 << 8) | 3), DeviceNumber::new(259, 3));
        assert_eq!(
            device_number_of(0x0010_0000 | (1 << 8)),
            DeviceNumber::new(1, 0x100)
        );
    }

    /// Build a fake sysfs with disk `sda` (8:0) and partition `sda2` (8:2) at sector 4096.
    fn fake_sysfs() -> (tempfile::TempDir, Sysfs) {
        let root = tempfile::tempdir().unwrap();
        let disk = root.path().join("devices/pci/block/sda");
        let part = disk.join("sda2");
        fs::create_dir_all(&part).unwrap();
        fs::write(disk.join("dev"), "8:0\n").unwrap();
        fs::write(disk.join("size"), "100000\n").unwrap();
        fs::write(part.join("dev"), "8:2\n").unwrap();
        fs::write(part.join("size"), "2048\n").unwrap();
        fs::write(part.join("start"), "4096\n").unwrap();
        fs::write(part.join("partition"), "2\n").unwrap();
        for link_directory in ["class/block", "dev/block"] {
            fs::create_dir_all(root.path().join(link_directory)).unwrap();
        }
        let link = |target: &Path, link: &str| {
            std::os::unix::fs::symlink(target, root.path().join(link)).unwrap()
        };
        link(&disk, "class/block/sda");
        link(&part, "class/block/sda2");
        link(&disk, "dev/block/8:0");
        link(&part, "dev/block/8:2");
        let sysfs = Sysfs {
            sys_root: root.path().to_path_buf(),
            dev_root: PathBuf::from("/dev"),
        };
        (root, sysfs)
    }

    #[test]
    fn sysfs_resolves_partitions_to_whole_disk_sectors() {
        let (_root, sysfs) = fake_sysfs();
        let sda = DeviceNumber::new(8, 0).unwrap();
        assert_eq!(
            sysfs.resolve("sda2").unwrap(),
            Region {
                name: "sda2".into(),
                disk_device: sda,
                start_sector: 4096,
                nr_sectors: 2048,
                disk: DiskIdentity {
                    path: PathBuf::from("/dev/sda"),
                    identity: "block 8:0".into()
                },
                partition_table: None,
                warnings: vec![],
                shared: false,
            }
        );
        assert_eq!(
            sysfs.resolve("sda").unwrap(),
            Region {
                name: "sda".into(),
                disk_device: sda,
                start_sector: 0,
                nr_sectors: 100000,
                disk: DiskIdentity {
                    path: PathBuf::from("/dev/sda"),
                    identity: "block 8:0".into()
                },
                partition_table: Some(TableKind::Some),
                warnings: vec![],
                shared: false,
            }
        );
        assert_eq!(sysfs.disk(sda).unwrap().path, PathBuf::from("/dev/sda"));
        assert_eq!(
            sysfs.host_region(DeviceNumber::new(8, 2).unwrap()),
            Some(HostRegion {
                disk_device: sda,
                backing_file: None,
                start_sector: 4096,
                nr_sectors: 2048
            })
        );
        assert_eq!(
            sysfs.resolve("sdz").unwrap_err().to_string(),
            format!(
                "phy:sdz: no such block device in {}",
                sysfs.sys_root.join("class/block").display()
            )
        );
    }
}
