//! A disk image on a FUSE filesystem served by the test process, whose writes and syncs
//! fail when the test says so: the backend's real `pwrite` and `fdatasync` then return `EIO`,
//! as they do on a disk that loses writes. Its reads can also be held unanswered until the
//! test releases them, as on a disk far slower than any bound a test could wait for. Shared
//! by the unit tests of `disks.rs` and the integration tests, which start the backend as
//! another process on the same image.
#![allow(dead_code)] // Each user takes part of this.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, INodeNo, LockOwner, MountOption,
    OpenFlags, ReplyAttr, ReplyData, ReplyEmpty, ReplyEntry, ReplyWrite, Request, WriteFlags,
};

/// The image's bytes, shared by the filesystem and the test that releases held reads.
type Image = Arc<Mutex<Vec<u8>>>;

/// The image's name in the mounted directory.
const IMAGE: &str = "disk.img";
const IMAGE_INODE: INodeNo = INodeNo(2);
/// Attributes never change, so the kernel may keep them.
const ATTRIBUTES_VALID: Duration = Duration::from_secs(60);

/// A mounted image; unmounted when dropped.
pub struct FaultyDisk {
    faults: Arc<Faults>,
    data: Image,
    path: PathBuf,
    // Declared before the directory: unmount first, then remove the mount point.
    _session: fuser::BackgroundSession,
    _mount_point: tempfile::TempDir,
}

/// What the test asks of the filesystem, and what it saw.
#[derive(Default)]
struct Faults {
    fail_next_sync: AtomicBool,
    fail_writes: AtomicBool,
    syncs: AtomicUsize,
    /// `Some` while reads are held: the reads waiting for their answer. The check whether
    /// to hold and the push happen under this lock, so a release never misses a read.
    held_reads: Mutex<Option<Vec<HeldRead>>>,
}

/// A read the filesystem has not answered yet.
struct HeldRead {
    offset: u64,
    size: u32,
    reply: ReplyData,
}

impl FaultyDisk {
    /// Mount a zeroed image of `bytes` in a new directory. Needs root (or FUSE access) and
    /// `/dev/fuse`: a failure to mount fails the test, naming why.
    pub fn mount(bytes: u64) -> FaultyDisk {
        let faults = Arc::new(Faults::default());
        let data = Arc::new(Mutex::new(vec![0; bytes as usize]));
        let mount_point = tempfile::tempdir().unwrap();
        let filesystem = ImageFilesystem {
            faults: Arc::clone(&faults),
            data: Arc::clone(&data),
            // The owner of a directory this process made: this process.
            owner: std::fs::metadata(mount_point.path())
                .map(|metadata| (metadata.uid(), metadata.gid()))
                .unwrap(),
        };
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("vbd-faulty-disk".into())];
        let session = fuser::spawn_mount(filesystem, mount_point.path(), &config)
            .unwrap_or_else(|error| panic!("mounting a FUSE image (needs /dev/fuse): {error}"));
        FaultyDisk {
            faults,
            data,
            path: mount_point.path().join(IMAGE),
            _session: session,
            _mount_point: mount_point,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next sync of the image fails with `EIO` and later ones succeed again: Linux
    /// reports a failed writeback to one `fsync` of a file description, never twice.
    pub fn fail_next_sync(&self) {
        self.faults.fail_next_sync.store(true, Ordering::SeqCst);
    }

    /// Every write fails with `EIO` until called with `false`.
    pub fn fail_writes(&self, fail: bool) {
        self.faults.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// How many syncs reached the filesystem.
    pub fn syncs(&self) -> usize {
        self.faults.syncs.load(Ordering::SeqCst)
    }

    /// Every read from now on waits unanswered until [`FaultyDisk::release_reads`]: the
    /// reader blocks in the kernel as on a disk that has not answered yet.
    pub fn hold_reads(&self) {
        let mut held = self.faults.held_reads.lock().unwrap();
        held.get_or_insert_with(Vec::new);
    }

    /// Wait until a read is held, so the request that made it is in flight; fails the test
    /// after 20 s.
    pub fn wait_for_a_held_read(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self
            .faults
            .held_reads
            .lock()
            .unwrap()
            .as_ref()
            .is_none_or(Vec::is_empty)
        {
            assert!(Instant::now() < deadline, "no read reached the disk");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Answer every held read with the bytes the image holds now, as a slow disk answers
    /// with what is on it when it gets there, and answer later reads at once.
    pub fn release_reads(&self) {
        let held = self.faults.held_reads.lock().unwrap().take();
        for read in held.into_iter().flatten() {
            answer(&self.data, read.offset, read.size, read.reply);
        }
    }
}

impl Drop for FaultyDisk {
    /// A test that fails while reads are held must not leave their readers blocked in the
    /// kernel, where the backend could never be stopped.
    fn drop(&mut self) {
        self.release_reads();
    }
}

/// Answer a read of `size` bytes at `offset` with the image's bytes; short at its end.
fn answer(data: &Mutex<Vec<u8>>, offset: u64, size: u32, reply: ReplyData) {
    let data = data.lock().unwrap();
    let start = (offset as usize).min(data.len());
    let end = start.saturating_add(size as usize).min(data.len());
    reply.data(&data[start..end]);
}

/// One directory holding one image kept in memory.
struct ImageFilesystem {
    faults: Arc<Faults>,
    data: Image,
    owner: (u32, u32),
}

impl ImageFilesystem {
    fn attributes(&self, inode: INodeNo) -> Option<FileAttr> {
        let (kind, size, permissions, links) = if inode == INodeNo::ROOT {
            (FileType::Directory, 0, 0o700, 2)
        } else if inode == IMAGE_INODE {
            let size = self.data.lock().unwrap().len() as u64;
            (FileType::RegularFile, size, 0o600, 1)
        } else {
            return None;
        };
        Some(FileAttr {
            ino: inode,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm: permissions,
            nlink: links,
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for ImageFilesystem {
    fn lookup(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.attributes(IMAGE_INODE) {
            Some(attributes) if parent == INodeNo::ROOT && name == IMAGE => {
                reply.entry(&ATTRIBUTES_VALID, &attributes, fuser::Generation(0))
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(
        &self,
        _request: &Request,
        inode: INodeNo,
        _handle: Option<FileHandle>,
        reply: ReplyAttr,
    ) {
        match self.attributes(inode) {
            Some(attributes) => reply.attr(&ATTRIBUTES_VALID, &attributes),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _request: &Request,
        _inode: INodeNo,
        _handle: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut held = self.faults.held_reads.lock().unwrap();
        match held.as_mut() {
            Some(reads) => reads.push(HeldRead {
                offset,
                size,
                reply,
            }),
            None => {
                drop(held);
                answer(&self.data, offset, size, reply);
            }
        }
    }

    fn write(
        &self,
        _request: &Request,
        _inode: INodeNo,
        _handle: FileHandle,
        offset: u64,
        bytes: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if self.faults.fail_writes.load(Ordering::SeqCst) {
            return reply.error(Errno::EIO);
        }
        let mut data = self.data.lock().unwrap();
        let start = offset as usize;
        match start.checked_add(bytes.len()) {
            // A disk does not grow.
            Some(end) if end <= data.len() => {
                data[start..end].copy_from_slice(bytes);
                reply.written(bytes.len() as u32);
            }
            _ => reply.error(Errno::ENOSPC),
        }
    }

    fn flush(
        &self,
        _request: &Request,
        _inode: INodeNo,
        _handle: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _request: &Request,
        _inode: INodeNo,
        _handle: FileHandle,
        _data_only: bool,
        reply: ReplyEmpty,
    ) {
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        if self.faults.fail_next_sync.swap(false, Ordering::SeqCst) {
            reply.error(Errno::EIO);
        } else {
            reply.ok();
        }
    }
}
