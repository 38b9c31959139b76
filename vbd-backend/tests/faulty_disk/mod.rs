//! A disk image on a FUSE filesystem served by the test process, whose writes and syncs
//! fail when the test says so: the backend's real `pwrite` and `fdatasync` then return `EIO`,
//! as they do on a disk that loses writes. Its reads can also be held until the test
//! releases them, as a disk that does not answer holds a request in flight. Shared by the unit tests of `disks.rs` and the
//! integration tests, which start the backend as another process on the same image.
#![allow(dead_code)] // Each user takes part of this.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, INodeNo, LockOwner, MountOption,
    OpenFlags, ReplyAttr, ReplyData, ReplyEmpty, ReplyEntry, ReplyWrite, Request, WriteFlags,
};

/// The image's name in the mounted directory.
const IMAGE: &str = "disk.img";
const IMAGE_INODE: INodeNo = INodeNo(2);
/// Attributes never change, so the kernel may keep them.
const ATTRIBUTES_VALID: Duration = Duration::from_secs(60);

/// A mounted image; unmounted when dropped.
pub struct FaultyDisk {
    faults: Arc<Faults>,
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
    /// Whether reads wait, and how many are waiting now.
    holding: Mutex<Holding>,
    released: Condvar,
}

#[derive(Default)]
struct Holding {
    hold: bool,
    waiting: usize,
}

impl FaultyDisk {
    /// Mount a zeroed image of `bytes` in a new directory. Needs root (or FUSE access) and
    /// `/dev/fuse`: a failure to mount fails the test, naming why.
    pub fn mount(bytes: u64) -> FaultyDisk {
        let faults = Arc::new(Faults::default());
        let mount_point = tempfile::tempdir().unwrap();
        let filesystem = ImageFilesystem {
            faults: Arc::clone(&faults),
            data: Mutex::new(vec![0; bytes as usize]),
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

    /// Every read that reaches the filesystem from now on waits until [`Self::release_reads`].
    pub fn hold_reads(&self) {
        self.faults.holding().hold = true;
    }

    /// Let the held reads go, and read at once from now on.
    pub fn release_reads(&self) {
        self.faults.holding().hold = false;
        self.faults.released.notify_all();
    }

    /// Wait until a read is held, so the request that made it is in flight; fails the test
    /// after 20 s.
    pub fn wait_for_a_held_read(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.faults.holding().waiting == 0 {
            assert!(Instant::now() < deadline, "no read reached the disk");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Faults {
    fn holding(&self) -> std::sync::MutexGuard<'_, Holding> {
        self.holding
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for FaultyDisk {
    fn drop(&mut self) {
        // A test that failed with a read held must still unmount.
        self.release_reads();
    }
}

/// One directory holding one image kept in memory.
struct ImageFilesystem {
    faults: Arc<Faults>,
    data: Mutex<Vec<u8>>,
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
        let mut holding = self.faults.holding();
        if holding.hold {
            holding.waiting += 1;
            while holding.hold {
                holding = self
                    .faults
                    .released
                    .wait(holding)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            holding.waiting -= 1;
        }
        drop(holding);
        let data = self.data.lock().unwrap();
        let start = (offset as usize).min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        reply.data(&data[start..end]);
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
