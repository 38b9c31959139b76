//! The devices file: TOML `[[disk]]` entries that name disks (block devices or raw images)
//! with the device numbers extents use, and the partitions found on them.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shared_abi::wire::Extent;
use shared_abi::DeviceNumber;

use crate::error::{Error, Result};
use crate::names::{is_device_name, parse_device_number};
use crate::partition::{self, TableError};
use crate::{
    device_number_of, identity_of, open_disk, DeviceSource, DiskIdentity, HostRegion, Region,
    TableKind,
};

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
}
