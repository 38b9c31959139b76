//! Writing zeros over extents, so that a new virtual disk never shows what a previous owner
//! wrote (seed defect 7).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, SECTOR_SIZE};

use crate::devices::{sectors_of, DeviceSource};
use crate::error::{Error, Result};
use crate::validator::describe_extent;

/// Bytes written per call: large enough to stream, small enough to report progress often.
const CHUNK_BYTES: usize = 1 << 20;

/// The files behind the disks of some extents, opened for writing and checked to be large
/// enough, before anything is written.
pub struct ZeroTarget {
    files: HashMap<DeviceNumber, (PathBuf, File)>,
}

impl ZeroTarget {
    /// Open the disk of every extent. Fails, having written nothing, when a disk is unknown,
    /// cannot be opened, or is too small for an extent.
    pub fn open(extents: &[Extent], devices: &dyn DeviceSource) -> Result<ZeroTarget> {
        let mut files = HashMap::new();
        for extent in extents {
            if files.contains_key(&extent.device) {
                continue;
            }
            let path = devices.path_of(extent.device)?;
            // Never create or truncate: the path is a disk, not a scratch file.
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|error| Error::io(&path, error))?;
            files.insert(extent.device, (path, file));
        }
        for extent in extents {
            let (path, _) = &files[&extent.device];
            let sectors = sectors_of(path)?;
            if extent.end_sector() > sectors {
                return Err(Error::Refused(format!(
                    "{}: ends past the end of {} ({sectors} sectors)",
                    describe_extent(extent),
                    path.display()
                )));
            }
        }
        Ok(ZeroTarget { files })
    }

    /// Zero `extents`, calling `progress` with the bytes written so far after each chunk
    /// (it may fail to stop the work), and flush to stable storage before returning, so that
    /// "zeroed" in the database is never ahead of the disk.
    pub fn zero(
        &self,
        extents: &[Extent],
        progress: &mut dyn FnMut(u64) -> Result<()>,
    ) -> Result<()> {
        let zeros = vec![0u8; CHUNK_BYTES];
        let mut written = 0u64;
        for extent in extents {
            let (path, file) = &self.files[&extent.device];
            let mut offset = extent.start_sector * SECTOR_SIZE;
            let end = extent.end_sector() * SECTOR_SIZE;
            while offset < end {
                let length = (end - offset).min(CHUNK_BYTES as u64) as usize;
                file.write_all_at(&zeros[..length], offset)
                    .map_err(|error| Error::io(path, error))?;
                offset += length as u64;
                written += length as u64;
                progress(written)?;
            }
        }
        for (path, file) in self.files.values() {
            file.sync_data().map_err(|error| Error::io(path, error))?;
        }
        Ok(())
    }
}

/// The bytes `extents` cover.
pub fn total_bytes(extents: &[Extent]) -> u64 {
    extents
        .iter()
        .map(|extent| extent.nr_sectors * SECTOR_SIZE)
        .sum()
}
