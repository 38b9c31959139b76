//! Zeroing extents, so that a new virtual disk never shows what a previous owner wrote
//! (seed defect 7).
//!
//! Writing zeros costs as long as the disk takes to write them: 64 GiB for a 64 GiB disk on
//! a freshly formatted pool. So the file system or the device is asked to zero each range
//! itself, with `fallocate`, and zeros are written only where it says it cannot:
//!
//! - a regular file (an image standing in for a disk) gets a hole punched, which reads as
//!   zeros and frees the blocks. `FALLOC_FL_ZERO_RANGE` is not used there: ext4 and XFS
//!   implement it by allocating unwritten extents, so zeroing 64 GiB of a sparse image
//!   would take 64 GiB of the file system's space;
//! - a block device gets `FALLOC_FL_ZERO_RANGE`, which Linux turns into WRITE ZEROES where
//!   the device has it and into writes of its own where not, keeping the device's
//!   provisioning as it was.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use rustix::fs::FallocateFlags;
use rustix::io::Errno;
use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, SECTOR_SIZE};

use crate::allocate::merge_adjacent;
use crate::database::pool_moved as moved;
use crate::error::{Error, Result};
use crate::validator::describe_extent;
use devices::{open_disk, DeviceSource, DiskIdentity};

/// Bytes written per call: large enough to stream, small enough to report progress often.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// Bytes per `fallocate` call. Punching a hole in a sparse file costs the same whatever its
/// length, so fewer calls are faster; a block device without WRITE ZEROES makes the kernel
/// write the range, and this keeps each call to a second or so, so progress stays live and
/// the create lease is renewed in time.
const OFFLOAD_CHUNK_BYTES: u64 = 256 << 20;

/// How extents are zeroed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Zeroing {
    /// Ask the file system or device to zero each range, writing zeros only where it
    /// cannot.
    #[default]
    Offload,
    /// Always write zeros. A test hook (`vdisk`'s hidden `--zero-with-writes`, or
    /// `VDISK_ZERO_WITH_WRITES=1`): a crash test needs a create that zeros slowly enough to
    /// be killed in the middle, which offloading to a sparse image never does.
    Writes,
}

/// The `fallocate` mode that zeros a range of one kind of file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Offload {
    PunchHole,
    ZeroRange,
}

impl Offload {
    /// What suits `file`; `None` for a file that cannot zero in place (a character
    /// device, say), which gets writes.
    fn for_file(file: &File, path: &Path) -> Result<Option<Offload>> {
        let file_type = file
            .metadata()
            .map_err(|error| Error::io(path, error))?
            .file_type();
        Ok(if file_type.is_file() {
            Some(Offload::PunchHole)
        } else if file_type.is_block_device() {
            Some(Offload::ZeroRange)
        } else {
            None
        })
    }

    fn flags(self) -> FallocateFlags {
        match self {
            // KEEP_SIZE is required with PUNCH_HOLE: the file's length is the disk's size.
            Offload::PunchHole => FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            Offload::ZeroRange => FallocateFlags::ZERO_RANGE,
        }
    }
}

/// How a range was zeroed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Zeroed {
    InPlace,
    /// The file system or device said it cannot zero in place; nothing was changed.
    Unsupported,
}

/// One disk to zero on.
struct Target {
    path: PathBuf,
    file: File,
    /// Its size, read once: a large disk has thousands of extents to check against it.
    sectors: u64,
    offload: Option<Offload>,
}

/// The files behind the disks of some extents, opened for writing and checked to be large
/// enough, before anything is written.
pub struct ZeroTarget {
    targets: HashMap<DeviceNumber, Target>,
}

impl ZeroTarget {
    /// Open the disk of every extent. Fails, having written nothing, when a disk is unknown,
    /// cannot be opened, is not the disk `pool` (what `format` recorded) says the number
    /// stands for, or is too small for an extent.
    pub fn open(
        extents: &[Extent],
        devices: &dyn DeviceSource,
        zeroing: Zeroing,
        pool: &[(DeviceNumber, DiskIdentity)],
    ) -> Result<ZeroTarget> {
        let mut targets = HashMap::new();
        for extent in extents {
            if targets.contains_key(&extent.device()) {
                continue;
            }
            let path = devices.disk(extent.device())?.path;
            let (file, opened, sectors) = open_disk(&path, true)?;
            // Checked on the open file, so the disk cannot change between check and write.
            check_pool_disk(pool, extent.device(), &opened)?;
            let offload = match zeroing {
                Zeroing::Offload => Offload::for_file(&file, &path)?,
                Zeroing::Writes => None,
            };
            targets.insert(
                extent.device(),
                Target {
                    path,
                    file,
                    sectors,
                    offload,
                },
            );
        }
        for extent in extents {
            let target = &targets[&extent.device()];
            if extent.end_sector() > target.sectors {
                return Err(Error::Refused(format!(
                    "{}: ends past the end of {} ({} sectors)",
                    describe_extent(extent),
                    target.path.display(),
                    target.sectors
                )));
            }
        }
        Ok(ZeroTarget { targets })
    }

    /// Zero `extents`, calling `progress` with the bytes zeroed so far after each piece
    /// (it may fail to stop the work), and flush to stable storage before returning, so that
    /// "zeroed" in the database is never ahead of the disk.
    pub fn zero(
        &self,
        extents: &[Extent],
        progress: &mut dyn FnMut(u64) -> Result<()>,
    ) -> Result<()> {
        // Adjacent extents are one range to the disk: fewer, longer calls.
        let ranges = merge_adjacent(extents);
        // Disks that refused to zero in place once are not asked again.
        let mut refused: HashSet<DeviceNumber> = HashSet::new();
        let mut done = 0u64;
        for range in &ranges {
            let target = &self.targets[&range.device()];
            let mut offset = range.start_sector() * SECTOR_SIZE;
            let end = range.end_sector() * SECTOR_SIZE;
            while offset < end {
                let length = (end - offset).min(OFFLOAD_CHUNK_BYTES);
                let zeroed = match target.offload {
                    Some(offload) if !refused.contains(&range.device()) => {
                        zero_in_place(&target.file, offload, offset, length)
                            .map_err(|error| Error::io(&target.path, error))?
                    }
                    _ => Zeroed::Unsupported,
                };
                if zeroed == Zeroed::Unsupported {
                    refused.insert(range.device());
                    write_zeros(&target.file, offset, length, &mut |written| {
                        progress(done + written)
                    })
                    .map_err(|error| match error {
                        WriteError::Io(error) => Error::io(&target.path, error),
                        WriteError::Stopped(error) => error,
                    })?;
                } else {
                    progress(done + length)?;
                }
                offset += length;
                done += length;
            }
        }
        for target in self.targets.values() {
            target
                .file
                .sync_data()
                .map_err(|error| Error::io(&target.path, error))?;
        }
        Ok(())
    }
}

/// Refuse `disk` as device `device` when the pool knows that number as another disk.
pub fn check_pool_disk(
    pool: &[(DeviceNumber, DiskIdentity)],
    device: DeviceNumber,
    disk: &DiskIdentity,
) -> Result<()> {
    match pool
        .iter()
        .find(|(known_device, _)| *known_device == device)
    {
        Some((_, known)) if known.identity != disk.identity => {
            Err(Error::Refused(moved(device, known, disk)))
        }
        _ => Ok(()),
    }
}

/// Ask the file system or device to zero `length` bytes at `offset`.
fn zero_in_place(
    file: &File,
    offload: Offload,
    offset: u64,
    length: u64,
) -> std::io::Result<Zeroed> {
    match rustix::fs::fallocate(file, offload.flags(), offset, length) {
        Ok(()) => Ok(Zeroed::InPlace),
        // The answers of a file system or driver without this mode, and of a file that is
        // not a regular file or block device after all.
        Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NODEV) => Ok(Zeroed::Unsupported),
        Err(error) => Err(error.into()),
    }
}

/// Why writing zeros stopped.
enum WriteError {
    Io(std::io::Error),
    /// `progress` asked to stop.
    Stopped(Error),
}

/// Write zeros over `length` bytes at `offset`, calling `progress` with the bytes written
/// so far after each chunk.
fn write_zeros(
    file: &File,
    offset: u64,
    length: u64,
    progress: &mut dyn FnMut(u64) -> Result<()>,
) -> std::result::Result<(), WriteError> {
    let zeros = vec![0u8; WRITE_CHUNK_BYTES];
    let mut written = 0u64;
    while written < length {
        let chunk = (length - written).min(WRITE_CHUNK_BYTES as u64) as usize;
        file.write_all_at(&zeros[..chunk], offset + written)
            .map_err(WriteError::Io)?;
        written += chunk as u64;
        progress(written).map_err(WriteError::Stopped)?;
    }
    Ok(())
}

/// The bytes `extents` cover.
pub fn total_bytes(extents: &[Extent]) -> u64 {
    extents
        .iter()
        .map(|extent| extent.nr_sectors() * SECTOR_SIZE)
        .sum()
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const MIB: u64 = 1 << 20;

    /// A 16 MiB file full of 0xAB.
    fn file_of_data() -> (tempfile::NamedTempFile, File) {
        let temporary = tempfile::NamedTempFile::new().unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(temporary.path())
            .unwrap();
        file.write_all_at(&vec![0xAB; (16 * MIB) as usize], 0)
            .unwrap();
        file.sync_all().unwrap();
        (temporary, file)
    }

    /// Whether `file` holds zeros exactly in `zeroed` (bytes) and 0xAB everywhere else.
    fn assert_only_zeroed(file: &File, zeroed: std::ops::Range<u64>) {
        let mut contents = vec![0u8; (16 * MIB) as usize];
        file.read_exact_at(&mut contents, 0).unwrap();
        for (offset, &byte) in contents.iter().enumerate() {
            let expected = if zeroed.contains(&(offset as u64)) {
                0
            } else {
                0xAB
            };
            assert_eq!(byte, expected, "byte {offset}");
        }
    }

    /// A range that starts and ends inside file system blocks, so partial blocks are
    /// zeroed as well as whole ones.
    const RANGE: std::ops::Range<u64> = (3 * MIB + 512)..(9 * MIB + 1536);

    #[test]
    fn zeroing_in_place_zeros_the_range_and_keeps_the_rest() {
        let (_temporary, file) = file_of_data();
        let before = file.metadata().unwrap().blocks();
        let zeroed = zero_in_place(
            &file,
            Offload::PunchHole,
            RANGE.start,
            RANGE.end - RANGE.start,
        )
        .unwrap();
        // Every file system a Linux /tmp lives on punches holes (ext4, XFS, Btrfs, tmpfs).
        assert_eq!(zeroed, Zeroed::InPlace);
        assert_only_zeroed(&file, RANGE);
        assert!(
            file.metadata().unwrap().blocks() < before,
            "punching a hole frees blocks"
        );
    }

    #[test]
    fn writing_zeros_zeros_the_range_and_keeps_the_rest() {
        let (_temporary, file) = file_of_data();
        let mut reported = Vec::new();
        let length = RANGE.end - RANGE.start;
        let written = write_zeros(&file, RANGE.start, length, &mut |written| {
            reported.push(written);
            Ok(())
        });
        assert!(written.is_ok());
        assert_only_zeroed(&file, RANGE);
        // One report per chunk, ending with the whole range.
        assert_eq!(reported.len(), 7);
        assert_eq!(reported.last(), Some(&length));
    }

    #[test]
    fn zero_range_zeros_the_range_or_changes_nothing() {
        // ext4 and XFS zero a regular file's range with ZERO_RANGE, tmpfs refuses; either
        // way nothing outside the range changes.
        let (_temporary, file) = file_of_data();
        let length = RANGE.end - RANGE.start;
        match zero_in_place(&file, Offload::ZeroRange, RANGE.start, length).unwrap() {
            Zeroed::InPlace => assert_only_zeroed(&file, RANGE),
            Zeroed::Unsupported => assert_only_zeroed(&file, 0..0),
        }
    }

    #[test]
    fn a_progress_that_fails_stops_the_writes() {
        let (_temporary, file) = file_of_data();
        let written = write_zeros(&file, 0, 4 * MIB, &mut |written| {
            if written >= 2 * MIB {
                Err(Error::Refused("stop".into()))
            } else {
                Ok(())
            }
        });
        match written {
            Err(WriteError::Stopped(error)) => assert_eq!(error.to_string(), "stop"),
            Err(WriteError::Io(error)) => panic!("stopped by {error}, not by progress"),
            Ok(()) => panic!("progress failed, yet the writes went on"),
        }
        assert_only_zeroed(&file, 0..2 * MIB);
    }

    #[test]
    fn a_target_zeros_its_extents_either_way_and_reports_every_byte() {
        for zeroing in [Zeroing::Offload, Zeroing::Writes] {
            let (temporary, file) = file_of_data();
            let directory = tempfile::tempdir().unwrap();
            let devices_file = directory.path().join("devices.toml");
            std::fs::write(
                &devices_file,
                format!(
                    "[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"{}\"\n",
                    temporary.path().display()
                ),
            )
            .unwrap();
            let devices = devices::DevicesFile::load(&devices_file).unwrap();
            let extent = |start_sector, nr_sectors| {
                Extent::new(DeviceNumber::new(3, 0).unwrap(), start_sector, nr_sectors).unwrap()
            };
            // Two adjacent extents (zeroed as one range) and the range's expected bytes.
            let extents = [extent(2048, 4096), extent(6144, 1)];
            let target = ZeroTarget::open(&extents, &devices, zeroing, &[]).unwrap();
            let mut reported = 0;
            target
                .zero(&extents, &mut |done| {
                    reported = done;
                    Ok(())
                })
                .unwrap();
            assert_eq!(reported, total_bytes(&extents), "{zeroing:?}");
            assert_only_zeroed(&file, MIB..(3 * MIB + 512));
        }
    }
}
