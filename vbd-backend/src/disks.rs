//! The physical disks named in the devices file, opened once for reading and writing and
//! shared by every thread: positioned I/O needs no cursor, so no lock either. [`DiskIo`]
//! offers them to hv-vbd's block path as [`BlockDevices`].
//!
//! Disks are opened without `O_DIRECT`: under TCG the guest, not the page cache, is the
//! bottleneck, and `O_DIRECT` would impose 4 KiB alignment on guest buffers that virtio only
//! promises to be sector-sized. Durability comes from `fdatasync` on flush.
//!
//! A disk that fails a sync, or a write with `EIO`, has lost writes its tenants were told
//! had succeeded, and the kernel reports a failed writeback to one `fsync` of the shared
//! file description only. So the disk remembers: every later write and flush of it fails
//! until the backend is restarted, and reads go on.
//!
//! An image's holes are found with `SEEK_DATA`/`SEEK_HOLE`, for the NBD exports' block
//! status and sparse reads; a block device reports data throughout.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use devices::{open_disk, DevicesFile};
use hv_vbd::serve::BlockDevices;
use rustix::fs::{fadvise, fallocate, seek, Advice, FallocateFlags, SeekFrom};
use shared_abi::{DeviceNumber, Error, SECTOR_SIZE};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

use crate::sys;
use crate::vbd::Table;

/// One opened disk.
#[derive(Debug)]
pub struct Disk {
    pub name: String,
    pub device: DeviceNumber,
    pub sectors: u64,
    path: PathBuf,
    file: File,
    /// A write or sync failed in a way that may have lost written data.
    lost_writes: AtomicBool,
    /// Syncs run one at a time, so that the one the kernel tells of a failed writeback has
    /// marked the disk before another can sync and hear nothing.
    syncing: Mutex<()>,
    /// A regular file, whose holes `SEEK_DATA` and `SEEK_HOLE` find.
    has_holes: bool,
}

/// Every disk of the devices file.
#[derive(Debug)]
pub struct Disks {
    disks: Vec<Disk>,
}

/// How to zero a range: reads of a discarded range may return anything, reads of a zeroed
/// one must return zeros. Zeroes in place fail with `ErrorKind::Unsupported` where the
/// disk could only write zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    Discard,
    WriteZeroes { may_unmap: bool },
    ZeroesInPlace { may_unmap: bool },
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
                Ok(Disk::new(
                    disk.name.clone(),
                    disk.device,
                    sectors,
                    disk.path.clone(),
                    opened,
                ))
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
            .try_for_each(|&device| self.find(device)?.sync())
    }

    /// `fdatasync` every disk, reporting the first failure after trying them all.
    pub fn flush_all(&self) -> io::Result<()> {
        let results: Vec<io::Result<()>> = self.disks.iter().map(Disk::sync).collect();
        results.into_iter().collect()
    }
}

/// What a failed write can have lost: a write refused for want of space took nothing, so
/// only an I/O error counts.
const WRITE_LOSSES: &[i32] = &[libc::EIO];
/// What a failed sync can have lost: any writeback error, also for want of space.
const SYNC_LOSSES: &[i32] = &[libc::EIO, libc::ENOSPC, libc::EDQUOT];

impl Disk {
    fn new(name: String, device: DeviceNumber, sectors: u64, path: PathBuf, file: File) -> Disk {
        let has_holes = file
            .metadata()
            .is_ok_and(|metadata| metadata.file_type().is_file());
        Disk {
            has_holes,
            name,
            device,
            sectors,
            path,
            file,
            lost_writes: AtomicBool::new(false),
            syncing: Mutex::new(()),
        }
    }

    /// The file, for reads only: writes go through this disk's methods, which refuse them
    /// once the disk has lost writes.
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn read_exact_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buffer, offset)
    }

    pub fn write_all_at(&self, buffer: &[u8], offset: u64) -> io::Result<()> {
        self.writing(|file| file.write_all_at(buffer, offset))
    }

    /// Write all of `slices`, guest memory, in order from byte `offset`.
    pub fn write_guest_at(
        &self,
        offset: u64,
        slices: &[VolatileSlice<impl BitmapSlice>],
    ) -> io::Result<()> {
        self.writing(|file| sys::write_all_vectored_at(file, offset, slices))
    }

    /// `fdatasync`, refused once the disk has lost writes.
    pub fn sync(&self) -> io::Result<()> {
        let _one_at_a_time = self.syncing.lock().unwrap_or_else(PoisonError::into_inner);
        self.check_writable()?;
        self.file
            .sync_data()
            .map_err(|error| self.lost_if(error, "fdatasync", SYNC_LOSSES))
    }

    /// Discard or zero `length` bytes at `offset`, within the disk's size. Where the file or
    /// device cannot zero in place, zeros are written. A range to unmap that is a hole
    /// already is left alone: the look is a `SEEK_DATA`, where a punch is a journalled change
    /// of the inode that drops the range from the page cache (what a copy of a sparse disk
    /// asks of every hole it skips).
    pub fn release(&self, offset: u64, length: u64, how: Release) -> io::Result<()> {
        let flags = match how {
            Release::Discard
            | Release::WriteZeroes { may_unmap: true }
            | Release::ZeroesInPlace { may_unmap: true } => {
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE
            }
            Release::WriteZeroes { may_unmap: false }
            | Release::ZeroesInPlace { may_unmap: false } => {
                FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE
            }
        };
        let punch = flags.contains(FallocateFlags::PUNCH_HOLE);
        self.writing(|file| {
            if punch && self.allocation(offset, offset + length)? == (length, true) {
                return Ok(());
            }
            self.fallocate_or_write(file, flags, offset, length, how)
        })
    }

    /// `fallocate`, or where the disk has none, zeros written (a discard: nothing done).
    fn fallocate_or_write(
        &self,
        file: &File,
        flags: FallocateFlags,
        offset: u64,
        length: u64,
        how: Release,
    ) -> io::Result<()> {
        match fallocate(file, flags, offset, length) {
            Ok(()) => Ok(()),
            // A discard is a hint: a disk that cannot punch holes keeps its data.
            Err(_) if how == Release::Discard => Ok(()),
            Err(error)
                if error == rustix::io::Errno::OPNOTSUPP || error == rustix::io::Errno::NOSYS =>
            {
                match how {
                    Release::ZeroesInPlace { .. } => Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("disk {} cannot zero in place", self.name),
                    )),
                    _ => write_zeros(file, offset, length),
                }
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The run of bytes from `offset` up to at most `end` that is all data or all hole:
    /// `(length, hole)`. Only images have holes; a block device is data throughout.
    pub fn allocation(&self, offset: u64, end: u64) -> io::Result<(u64, bool)> {
        if !self.has_holes {
            return Ok((end - offset, false));
        }
        match seek(&self.file, SeekFrom::Data(offset)) {
            Ok(data) if data > offset => Ok((data.min(end) - offset, true)),
            Ok(_) => {
                let hole = seek(&self.file, SeekFrom::Hole(offset))?;
                Ok((hole.min(end) - offset, false))
            }
            // No data at or after `offset`.
            Err(rustix::io::Errno::NXIO) => Ok((end - offset, true)),
            Err(error) => Err(error.into()),
        }
    }

    /// Ask the kernel to read `length` bytes at `offset` into the page cache, ahead of use.
    pub fn prefetch(&self, offset: u64, length: u64) -> io::Result<()> {
        Ok(fadvise(
            &self.file,
            offset,
            std::num::NonZeroU64::new(length),
            Advice::WillNeed,
        )?)
    }

    /// The file, for a write made elsewhere (on io_uring), unless the disk has lost writes;
    /// that write's failure goes through [`Disk::write_failed`].
    pub fn file_to_write(&self) -> io::Result<&File> {
        self.check_writable()?;
        Ok(&self.file)
    }

    /// A write made elsewhere failed with `error`: the disk is marked if it may have lost
    /// data, as for a write made here.
    pub fn write_failed(&self, error: io::Error) -> io::Error {
        self.lost_if(error, "a write", WRITE_LOSSES)
    }

    /// Run `write` on the file unless the disk has lost writes; an error of it that may
    /// have lost data marks the disk.
    fn writing(&self, write: impl FnOnce(&File) -> io::Result<()>) -> io::Result<()> {
        write(self.file_to_write()?).map_err(|error| self.write_failed(error))
    }

    /// Whether writes and flushes may still run: an error naming the disk once it has lost
    /// writes.
    fn check_writable(&self) -> io::Result<()> {
        if self.lost_writes.load(Ordering::Acquire) {
            return Err(io::Error::other(format!(
                "disk {} ({}) lost writes earlier: its writes and flushes fail until the backend is restarted",
                self.name,
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Mark the disk if `error`, from `operation`, is one of `losses`, saying so once; the
    /// error is returned as it was, for the request that met it.
    fn lost_if(&self, error: io::Error, operation: &str, losses: &[i32]) -> io::Error {
        let lost = error
            .raw_os_error()
            .is_some_and(|code| losses.contains(&code));
        if lost && !self.lost_writes.swap(true, Ordering::AcqRel) {
            eprintln!(
                "vbd-backend: disk {} ({}): {operation} failed: {error}; writes acknowledged before it may be lost, so every write and flush of this disk fails from now on (reads go on) until the backend is restarted",
                self.name,
                self.path.display()
            );
        }
        error
    }
}

/// Write `length` zero bytes at `offset`, a chunk at a time.
fn write_zeros(file: &File, offset: u64, length: u64) -> io::Result<()> {
    const CHUNK: u64 = 256 * SECTOR_SIZE;
    let zeros = [0u8; CHUNK as usize];
    let mut done = 0u64;
    while done < length {
        let count = (length - done).min(CHUNK);
        file.write_all_at(&zeros[..count as usize], offset + done)?;
        done += count;
    }
    Ok(())
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
        crate::fence::check()?;
        self.disks
            .find(device)
            .and_then(|disk| disk.read_exact_at(buffer, offset))
            .map_err(|failure| self.failed(failure))
    }

    fn write(&mut self, device: DeviceNumber, offset: u64, data: &[u8]) -> Result<(), Error> {
        crate::fence::check()?;
        self.disks
            .find(device)
            .and_then(|disk| disk.write_all_at(data, offset))
            .map_err(|failure| self.failed(failure))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::faulty_disk::FaultyDisk;

    /// Two images of 4096 sectors, `hda` (3:0) and `hdb` (3:64), the disks of
    /// [`crate::vbd::tests::empty_table`], opened from a devices file.
    pub fn two_disks() -> (tempfile::TempDir, Disks) {
        let directory = tempfile::tempdir().unwrap();
        let hda = image(directory.path(), "hda");
        let disks = Disks::open(&devices_file(directory.path(), &hda)).unwrap();
        (directory, disks)
    }

    /// The disks of [`two_disks`], with `hda` on a FUSE image whose writes and syncs fail
    /// when the test says so; also the devices file, to open them again.
    pub fn hda_on_a_faulty_disk() -> (tempfile::TempDir, FaultyDisk, PathBuf, Disks) {
        let directory = tempfile::tempdir().unwrap();
        let hda = FaultyDisk::mount(4096 * SECTOR_SIZE);
        let devices = devices_file(directory.path(), hda.path());
        let disks = Disks::open(&devices).unwrap();
        (directory, hda, devices, disks)
    }

    /// An image of 4096 sectors named `name` in `directory`.
    fn image(directory: &Path, name: &str) -> PathBuf {
        let path = directory.join(format!("{name}.img"));
        File::create(&path)
            .unwrap()
            .set_len(4096 * SECTOR_SIZE)
            .unwrap();
        path
    }

    /// A devices file in `directory` naming `hda` (3:0) at `hda` and `hdb` (3:64) on a new
    /// image there.
    fn devices_file(directory: &Path, hda: &Path) -> PathBuf {
        image(directory, "hdb");
        let devices = directory.join("devices.toml");
        std::fs::write(
            &devices,
            format!(
                "[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"{}\"\n\n[[disk]]\nname = \"hdb\"\ndevice = \"3:64\"\npath = \"hdb.img\"\n",
                hda.display()
            ),
        )
        .unwrap();
        devices
    }

    /// `hda` (3:0) of 4096 sectors, the first disk of [`crate::vbd::tests::empty_table`],
    /// whose every read waits for bytes written to the pipe returned with it: a read the
    /// test keeps in flight for as long as it likes.
    pub fn a_disk_on_a_pipe() -> (Disks, std::io::PipeWriter) {
        let (reader, writer) = std::io::pipe().unwrap();
        let disk = Disk::new(
            "hda".into(),
            DeviceNumber::new(3, 0).unwrap(),
            4096,
            PathBuf::from("a pipe"),
            File::from(std::os::fd::OwnedFd::from(reader)),
        );
        (Disks { disks: vec![disk] }, writer)
    }

    #[test]
    fn an_images_runs_of_data_and_holes_are_found_and_a_pipe_is_all_data() {
        let (_directory, disks) = two_disks();
        let hda = disks.iter().next().unwrap();
        hda.write_all_at(&[1; 8192], 16384).unwrap();
        assert_eq!(hda.allocation(0, 65536).unwrap(), (16384, true));
        assert_eq!(
            hda.allocation(4096, 8192).unwrap(),
            (4096, true),
            "up to end"
        );
        assert_eq!(hda.allocation(16384, 65536).unwrap(), (8192, false));
        assert_eq!(hda.allocation(20480, 22528).unwrap(), (2048, false));
        assert_eq!(hda.allocation(24576, 65536).unwrap(), (40960, true));
        let end = 4096 * SECTOR_SIZE;
        assert_eq!(hda.allocation(end - 512, end).unwrap(), (512, true));
        let (on_a_pipe, _writer) = a_disk_on_a_pipe();
        let pipe = on_a_pipe.iter().next().unwrap();
        assert_eq!(pipe.allocation(0, 4096).unwrap(), (4096, false));
    }

    #[test]
    fn zeroes_in_place_punch_or_zero_and_never_fall_back_to_writes() {
        let (_directory, disks) = two_disks();
        let hda = disks.iter().next().unwrap();
        hda.write_all_at(&[1; 16384], 0).unwrap();
        hda.release(0, 4096, Release::ZeroesInPlace { may_unmap: true })
            .unwrap();
        hda.release(4096, 4096, Release::ZeroesInPlace { may_unmap: false })
            .unwrap();
        let mut bytes = vec![0u8; 16384];
        hda.read_exact_at(&mut bytes, 0).unwrap();
        assert_eq!(bytes, [vec![0; 8192], vec![1; 8192]].concat());
        // Punched: a hole. (A zeroed range's extent may stay allocated.)
        assert_eq!(hda.allocation(0, 4096).unwrap(), (4096, true));
        // The FUSE image implements no fallocate: write-zeroes writes zeros, zeroes in
        // place refuse.
        let (_directory, _image, _devices, disks) = hda_on_a_faulty_disk();
        let hda = disks.iter().next().unwrap();
        hda.write_all_at(&[1; 1024], 0).unwrap();
        assert_eq!(
            hda.release(0, 512, Release::ZeroesInPlace { may_unmap: true })
                .map_err(|error| (error.kind(), error.to_string())),
            Err((
                io::ErrorKind::Unsupported,
                "disk hda cannot zero in place".to_string()
            ))
        );
        hda.release(0, 512, Release::WriteZeroes { may_unmap: true })
            .unwrap();
        let mut bytes = vec![0u8; 1024];
        hda.read_exact_at(&mut bytes, 0).unwrap();
        assert_eq!(bytes, [vec![0; 512], vec![1; 512]].concat());
    }

    #[test]
    fn unmapping_a_range_that_is_already_a_hole_leaves_the_file_alone() {
        let (_directory, disks) = two_disks();
        let hda = disks.iter().next().unwrap();
        hda.write_all_at(&[1; 4096], 65536).unwrap();
        let long_ago = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30);
        hda.file.set_modified(long_ago).unwrap();
        let modified = || hda.file.metadata().unwrap().modified().unwrap();
        // All hole: nothing to punch, so the file is not touched (a punch is a journalled
        // change of the inode, far dearer than the look).
        for how in [
            Release::Discard,
            Release::WriteZeroes { may_unmap: true },
            Release::ZeroesInPlace { may_unmap: true },
        ] {
            hda.release(0, 65536, how).unwrap();
            assert_eq!(modified(), long_ago, "{how:?} of a hole");
        }
        // Any data in the range: punched, and it reads as zeros.
        hda.release(0, 131072, Release::WriteZeroes { may_unmap: true })
            .unwrap();
        assert_ne!(modified(), long_ago);
        assert_eq!(hda.allocation(0, 131072).unwrap(), (131072, true));
        let mut bytes = vec![1u8; 4096];
        hda.read_exact_at(&mut bytes, 65536).unwrap();
        assert_eq!(bytes, vec![0; 4096]);
        // A zeroing that must keep the range allocated still allocates it.
        hda.file.set_modified(long_ago).unwrap();
        hda.release(0, 4096, Release::WriteZeroes { may_unmap: false })
            .unwrap();
        assert_ne!(modified(), long_ago);
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
