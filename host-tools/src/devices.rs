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
use crate::partition::{self, TableError};
use crate::uname::is_device_name;

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
    /// The file or block device through which `disk` is written (to zero extents).
    fn path_of(&self, disk: DeviceNumber) -> Result<PathBuf>;
    /// The extent a range of one of dom0's own disks occupies in this namespace, if it lies
    /// on a disk this namespace knows.
    fn extent_of_host_region(&self, region: &HostRegion) -> Option<Extent>;
}

/// The size of a file or block device in whole sectors.
pub fn sectors_of(path: &Path) -> Result<u64> {
    let mut file = File::open(path).map_err(|error| Error::io(path, error))?;
    // Seeking to the end works for block devices too, whose metadata length is zero.
    let bytes = file
        .seek(SeekFrom::End(0))
        .map_err(|error| Error::io(path, error))?;
    Ok(bytes / SECTOR_SIZE)
}

/// One `[[disk]]` of a devices file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub name: String,
    pub device: DeviceNumber,
    pub path: PathBuf,
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
            let device: DeviceNumber = entry.device.parse().map_err(|_| {
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
            });
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

impl DeviceSource for DevicesFile {
    fn resolve(&self, name: &str) -> Result<Region> {
        for disk in &self.disks {
            if disk.name == name {
                return Ok(Region {
                    name: name.to_string(),
                    disk_device: disk.device,
                    start_sector: 0,
                    nr_sectors: sectors_of(&disk.path)?,
                });
            }
            let Some(number) = partition::partition_number(&disk.name, name) else {
                continue;
            };
            let disk_sectors = sectors_of(&disk.path)?;
            let file = File::open(&disk.path).map_err(|error| Error::io(&disk.path, error))?;
            let partitions = match partition::read_partition_table(&file, disk_sectors) {
                Ok(partitions) => partitions,
                Err(TableError::NoTable) => return Err(self.not_found(name)),
                Err(error) => {
                    return Err(Error::Refused(format!(
                        "phy:{name}: {}: {error}",
                        disk.path.display()
                    )))
                }
            };
            return partitions
                .iter()
                .find(|partition| partition.number == number)
                .map(|partition| Region {
                    name: name.to_string(),
                    disk_device: disk.device,
                    start_sector: partition.start_sector,
                    nr_sectors: partition.nr_sectors,
                })
                .ok_or_else(|| self.not_found(name));
        }
        Err(self.not_found(name))
    }

    fn path_of(&self, disk: DeviceNumber) -> Result<PathBuf> {
        self.disks
            .iter()
            .find(|entry| entry.device == disk)
            .map(|entry| entry.path.clone())
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "device {disk}: not in devices file {}",
                    self.file.display()
                ))
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
        Ok(Region {
            name: name.to_string(),
            disk_device,
            start_sector: entry.start_sector,
            nr_sectors: entry.nr_sectors,
        })
    }

    fn path_of(&self, disk: DeviceNumber) -> Result<PathBuf> {
        let directory = fs::canonicalize(self.sys_root.join("dev/block").join(disk.to_string()))
            .map_err(|_| {
                Error::NotFound(format!("device {disk}: not a block device of this machine"))
            })?;
        let name = directory
            .file_name()
            .ok_or_else(|| Error::NotFound(format!("device {disk}: no name in sysfs")))?;
        Ok(self.dev_root.join(name))
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
            "[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"hda.img\"\n\n[endpoints]\ndom0 = \"unix:/x\"\n",
        )
        .unwrap();
        assert_eq!(
            devices.disks(),
            &[Disk {
                name: "hda".into(),
                device: DeviceNumber::new(3, 0).unwrap(),
                path: PathBuf::from("/images/hda.img"),
            }]
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
                nr_sectors: 2048
            }
        );
        assert_eq!(
            sysfs.resolve("sda").unwrap(),
            Region {
                name: "sda".into(),
                disk_device: sda,
                start_sector: 0,
                nr_sectors: 100000
            }
        );
        assert_eq!(sysfs.path_of(sda).unwrap(), PathBuf::from("/dev/sda"));
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
