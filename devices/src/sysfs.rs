//! The disks the running Linux kernel knows, read from sysfs: names, device numbers and
//! the sectors partitions and loop devices cover on their whole disks.

use std::fs;
use std::path::{Path, PathBuf};

use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, SECTOR_SIZE};

use crate::error::{Error, Result};
use crate::names::is_device_name;
use crate::{DeviceSource, DiskIdentity, HostRegion, Region, TableKind};

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
