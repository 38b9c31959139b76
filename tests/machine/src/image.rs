//! Sparse disk images partitioned with `sfdisk`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use shared_abi::DeviceNumber;

/// The default layout: three MBR partitions of a quarter, three eighths and the rest of
/// the disk, in whole MiB (64 MiB, 96 MiB and 95 MiB on a 256 MiB disk).
pub fn default_partitions(size_bytes: u64) -> String {
    let mib = size_bytes >> 20;
    format!(
        "label: dos\n,{}M\n,{}M\n,\n",
        (mib / 4).max(1),
        (mib * 3 / 8).max(1)
    )
}

/// One disk of a machine: an IDE name (`hda`..`hdd`), a size, and an `sfdisk` script
/// (empty for an unpartitioned disk).
#[derive(Clone, Debug)]
pub struct DiskSpec {
    pub name: String,
    pub size_bytes: u64,
    pub partitions: String,
}

impl DiskSpec {
    /// Parse `NAME=SIZE` as `cargo xtask qemu --disk` takes it: SIZE in bytes or with a
    /// K, M or G suffix; the default three-partition layout.
    pub fn parse(text: &str) -> Result<DiskSpec, String> {
        let (name, size) = text
            .split_once('=')
            .ok_or_else(|| format!("disk `{text}`: expected NAME=SIZE, e.g. hda=256M"))?;
        if !["hda", "hdb", "hdc", "hdd"].contains(&name) {
            return Err(format!(
                "disk `{text}`: the name must be hda, hdb, hdc or hdd (IDE)"
            ));
        }
        let (digits, unit) = match size.char_indices().last() {
            Some((index, 'K')) => (&size[..index], 1u64 << 10),
            Some((index, 'M')) => (&size[..index], 1 << 20),
            Some((index, 'G')) => (&size[..index], 1 << 30),
            _ => (size, 1),
        };
        let size_bytes = digits
            .parse::<u64>()
            .ok()
            .and_then(|count| count.checked_mul(unit))
            .filter(|&bytes| bytes >= 8 << 20 && bytes % 512 == 0)
            .ok_or_else(|| {
                format!("disk `{text}`: size must be a multiple of 512 bytes and at least 8M")
            })?;
        Ok(DiskSpec {
            name: name.to_owned(),
            size_bytes,
            partitions: default_partitions(size_bytes),
        })
    }

    /// The Linux device number of the whole disk (`hda` is 3:0).
    pub fn device(&self) -> DeviceNumber {
        DeviceNumber::from_name(&self.name).expect("validated IDE name")
    }

    /// QEMU's IDE index: hda 0 .. hdd 3.
    pub fn ide_index(&self) -> usize {
        usize::from(self.name.as_bytes()[2] - b'a')
    }

    /// Create the sparse image at `path` and partition it.
    pub fn create(&self, path: &Path) -> Result<(), String> {
        let file = File::create(path).map_err(|error| format!("{}: {error}", path.display()))?;
        file.set_len(self.size_bytes)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        if self.partitions.is_empty() {
            return Ok(());
        }
        let mut command = Command::new("sfdisk");
        command
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(path);
        eprintln!(
            "$ printf '{}' | {}",
            self.partitions.replace('\n', "\\n"),
            crate::process::display(&command)
        );
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|error| format!("sfdisk: {error} (install the fdisk package)"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(self.partitions.as_bytes())
            .map_err(|error| format!("sfdisk: {error}"))?;
        let status = child.wait().map_err(|error| format!("sfdisk: {error}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("sfdisk failed on {}: {status}", path.display()))
        }
    }
}

/// Disk images made in one directory from their specs; [`crate::write_devices`] names them
/// in a devices file (`vdisk --devices`, `vbd-backend --devices`).
#[derive(Clone, Debug)]
pub struct DiskImages {
    disks: Vec<(DiskSpec, PathBuf)>,
}

impl DiskImages {
    /// Create and partition `DIR/NAME.img` for each disk.
    pub fn create(dir: &Path, specs: &[DiskSpec]) -> Result<DiskImages, String> {
        let mut disks = Vec::new();
        for disk in specs {
            let path = dir.join(format!("{}.img", disk.name));
            disk.create(&path)?;
            disks.push((disk.clone(), path));
        }
        Ok(DiskImages { disks })
    }

    /// Each disk and its image, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&DiskSpec, &Path)> {
        self.disks.iter().map(|(disk, path)| (disk, path.as_path()))
    }

    /// The image file of a disk.
    pub fn image(&self, name: &str) -> Option<&Path> {
        self.iter()
            .find(|(disk, _)| disk.name == name)
            .map(|(_, path)| path)
    }

    /// Each disk as a devices file names it, for [`crate::write_devices`]: its name, device
    /// number and image.
    pub fn devices(&self) -> impl Iterator<Item = (&str, DeviceNumber, &Path)> {
        self.iter()
            .map(|(disk, path)| (disk.name.as_str(), disk.device(), path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs_parse() {
        let disk = DiskSpec::parse("hdb=256M").unwrap();
        assert_eq!(
            (disk.name.as_str(), disk.size_bytes, disk.ide_index()),
            ("hdb", 256 << 20, 1)
        );
        assert_eq!(disk.device().to_string(), "3:64");
        assert_eq!(DiskSpec::parse("hdc=1G").unwrap().size_bytes, 1 << 30);
        assert_eq!(disk.partitions, "label: dos\n,64M\n,96M\n,\n");
        assert_eq!(
            DiskSpec::parse("hda=8M").unwrap().partitions,
            "label: dos\n,2M\n,3M\n,\n"
        );
        for bad in [
            "hda",
            "sda=64M",
            "hda=",
            "hda=1K",
            "hda=xM",
            "hda=513",
            "hda=99999999999999999G",
        ] {
            assert!(DiskSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
