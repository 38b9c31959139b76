//! dom0's mounted filesystems (`/proc/mounts`) as validator users, resolved to extents of
//! the disks a device namespace knows: a mount of `/dev/sda2`, of `/dev/root`, or of a loop
//! device over a disk image all count.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use shared_abi::DeviceNumber;

use crate::error::{Error, Result};
use crate::validator::{User, UserKind};
use devices::{device_number_of, DeviceSource, Sysfs};

/// One line of `/proc/mounts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub source: String,
    pub mount_point: String,
    pub writable: bool,
}

/// Undo the octal escapes (`\040` for a space) the kernel writes in mount fields.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = bytes.get(index + 1..index + 4).filter(|digits| {
            bytes[index] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match escape {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0'));
                out.push(value as u8);
                index += 4;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse the text of `/proc/mounts`. Malformed lines are skipped: the kernel writes this
/// file, and a line we cannot read names no block device we could resolve anyway.
pub fn parse_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let source = unescape(fields.next()?);
            let mount_point = unescape(fields.next()?);
            let _filesystem = fields.next()?;
            let options = fields.next()?;
            Some(MountEntry {
                source,
                mount_point,
                writable: options.split(',').any(|option| option == "rw"),
            })
        })
        .collect()
}

/// The block device behind a mount: the device node named as its source, or, for
/// `/dev/root` (a name the kernel invents and no node carries), the device the mounted
/// directory lives on. Sources that are not under `/dev` (tmpfs, proc, overlay) have none.
pub fn mount_device(entry: &MountEntry) -> Option<DeviceNumber> {
    if !entry.source.starts_with("/dev/") {
        return None;
    }
    match fs::metadata(&entry.source) {
        Ok(metadata) if metadata.file_type().is_block_device() => device_number_of(metadata.rdev()),
        Ok(_) => None,
        Err(_) if entry.source == "/dev/root" => {
            device_number_of(fs::metadata(&entry.mount_point).ok()?.dev())
        }
        Err(_) => None,
    }
}

/// dom0's mounts as validator users with extents in `devices`' namespace. Mounts on disks
/// the namespace does not know are left out: they cannot share extents with its VBDs.
pub fn mount_users(entries: &[MountEntry], sysfs: &Sysfs, devices: &dyn DeviceSource) -> Vec<User> {
    entries
        .iter()
        .filter_map(|entry| {
            let region = sysfs.host_region(mount_device(entry)?)?;
            let extent = devices.extent_of_host_region(&region)?;
            Some(User {
                kind: UserKind::Mount {
                    source: entry.source.clone(),
                    mount_point: entry.mount_point.clone(),
                },
                writable: entry.writable,
                extents: vec![extent],
            })
        })
        .collect()
}

/// Read `/proc/mounts` (or `path`) and resolve it.
pub fn read_mount_users(
    path: &Path,
    sysfs: &Sysfs,
    devices: &dyn DeviceSource,
) -> Result<Vec<User>> {
    let text = fs::read_to_string(path).map_err(|error| Error::io(path, error))?;
    Ok(mount_users(&parse_mounts(&text), sysfs, devices))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse_with_modes_and_escapes() {
        let text = "/dev/sda2 / ext4 rw,relatime 0 0\nproc /proc proc rw 0 0\n/dev/sdb1 /mnt/my\\040disk vfat ro,noatime 0 0\nbroken\n";
        assert_eq!(
            parse_mounts(text),
            vec![
                MountEntry {
                    source: "/dev/sda2".into(),
                    mount_point: "/".into(),
                    writable: true
                },
                MountEntry {
                    source: "proc".into(),
                    mount_point: "/proc".into(),
                    writable: true
                },
                MountEntry {
                    source: "/dev/sdb1".into(),
                    mount_point: "/mnt/my disk".into(),
                    writable: false
                },
            ]
        );
    }

    #[test]
    fn dev_root_resolves_through_the_mounted_directory() {
        let entry = MountEntry {
            source: "/dev/root".into(),
            mount_point: "/".into(),
            writable: true,
        };
        let expected = device_number_of(fs::metadata("/").unwrap().dev());
        // A machine may have a real /dev/root node; then its number is used instead.
        match fs::metadata("/dev/root") {
            Ok(metadata) if metadata.file_type().is_block_device() => {
                assert_eq!(mount_device(&entry), device_number_of(metadata.rdev()))
            }
            _ => assert_eq!(mount_device(&entry), expected),
        }
        let tmpfs = MountEntry {
            source: "tmpfs".into(),
            mount_point: "/tmp".into(),
            writable: true,
        };
        assert_eq!(mount_device(&tmpfs), None);
    }
}
