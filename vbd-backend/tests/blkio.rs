//! libblkio's vhost-user-blk driver (what nbdkit's blkio plugin, QEMU's blkio block driver
//! and fio's libblkio engine reach a vhost-user-blk device with) against a guest VBD's
//! socket: read, write, flush, discard, write-zeroes, capacity, read-only and a resize,
//! byte for byte against the disk images. The same checks run against qemu-storage-daemon,
//! the reference server, so a difference between the two is the backend's to explain.

mod common;

use std::fs::{self, File};
use std::mem::MaybeUninit;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, Errno, MemoryRegion, ReqFlags};
use common::{hda, hdb, label, pattern, xvda, Backend};
use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, Mode, SharingLevel};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// The writable device before and after its resize, and the read-only device.
const WRITABLE_BYTES: u64 = MIB;
const GROWN_BYTES: u64 = MIB + 512 * KIB;
const READ_ONLY_BYTES: u64 = 128 * KIB;
/// The client's I/O buffer, and so the largest request the checks make.
const BUFFER_BYTES: usize = 256 << 10;

/// A piece of a device: `bytes` of it lie in `image` at `offset`.
struct Piece {
    image: PathBuf,
    offset: u64,
    bytes: u64,
}

/// A server under test: its two devices' sockets, where their bytes lie, and how the
/// writable one grows to [`GROWN_BYTES`].
trait Server {
    fn writable_socket(&self) -> PathBuf;
    fn read_only_socket(&self) -> PathBuf;
    /// The writable device's pieces, in device order, as grown.
    fn writable_pieces(&self) -> Vec<Piece>;
    /// The read-only device's image and where the device starts in it.
    fn read_only_piece(&self) -> Piece;
    /// Grow the writable device to [`GROWN_BYTES`]; `false` when the server cannot resize a
    /// device it serves.
    fn grow(&mut self) -> bool;
}

/// `length` bytes at `offset` of the device made of `pieces`, read from the images.
fn device_bytes(pieces: &[Piece], offset: u64, length: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut piece_start = 0;
    for piece in pieces {
        let start = offset.max(piece_start);
        let end = (offset + length).min(piece_start + piece.bytes);
        if start < end {
            let mut part = vec![0u8; (end - start) as usize];
            File::open(&piece.image)
                .unwrap()
                .read_exact_at(&mut part, piece.offset + start - piece_start)
                .unwrap();
            bytes.extend_from_slice(&part);
        }
        piece_start += piece.bytes;
    }
    assert_eq!(
        bytes.len() as u64,
        length,
        "the range lies inside the device"
    );
    bytes
}

/// A libblkio client of one device, with one queue and one mapped buffer.
struct Client {
    blkio: Blkio,
    queue: Blkioq,
    buffer: MemoryRegion,
    /// The buffer's memfd opened again by path, so its bytes are read and written with
    /// `pread`/`pwrite` instead of through a raw pointer.
    buffer_file: File,
    /// The longest segment the device takes (`size_max`), so a request is split as a
    /// virtio-blk driver splits it.
    segment_bytes: usize,
}

impl Client {
    fn connect(socket: &Path, read_only: bool) -> Result<Client, blkio::Error> {
        let mut blkio = Blkio::new("virtio-blk-vhost-user")?;
        blkio.set_str("path", socket.to_str().unwrap())?;
        blkio.set_bool("read-only", read_only)?;
        blkio.connect()?;
        blkio.set_i32("num-queues", 1)?;
        let buffer = blkio.alloc_mem_region(BUFFER_BYTES)?;
        let queue = blkio.start()?.queues.pop().unwrap();
        blkio.map_mem_region(&buffer)?;
        let buffer_file = reopen(&buffer);
        let segment_bytes = match blkio.get_i32("max-segment-len")? {
            0 => BUFFER_BYTES,
            bytes => bytes as usize,
        };
        Ok(Client {
            blkio,
            queue,
            buffer,
            buffer_file,
            segment_bytes,
        })
    }

    /// Map a new buffer, then unmap the old one (`ADD_MEM_REG`, `REM_MEM_REG`): the requests
    /// after it lie in memory the server learnt of after it started.
    fn replace_buffer(&mut self) {
        let buffer = self.blkio.alloc_mem_region(BUFFER_BYTES).unwrap();
        self.blkio.map_mem_region(&buffer).unwrap();
        self.blkio.unmap_mem_region(&self.buffer);
        self.blkio.free_mem_region(&self.buffer);
        self.buffer_file = reopen(&buffer);
        self.buffer = buffer;
    }

    fn capacity(&self) -> u64 {
        self.blkio.get_u64("capacity").unwrap()
    }

    /// The buffer's first `length` bytes, split into segments the device takes.
    fn segments(&self, length: usize) -> Vec<blkio::iovec> {
        assert!(length <= BUFFER_BYTES);
        (0..length)
            .step_by(self.segment_bytes)
            .map(|start| blkio::iovec {
                iov_base: (self.buffer.addr + start) as *mut _,
                iov_len: self.segment_bytes.min(length - start),
            })
            .collect()
    }

    /// Wait for the one request in flight: its result, 0 or a negative errno.
    fn complete(&mut self) -> i32 {
        let mut completions = [MaybeUninit::<Completion>::uninit()];
        let mut timeout = Duration::from_secs(20);
        let done = self
            .queue
            .do_io(&mut completions, 1, Some(&mut timeout), None)
            .unwrap();
        assert_eq!(done, 1, "the request completes within 20 s");
        // SAFETY: `do_io` initialised the first `done` completions, and `done` is 1.
        let completion = unsafe { completions[0].assume_init_read() };
        completion.ret
    }

    fn read(&mut self, offset: u64, length: usize) -> Result<Vec<u8>, i32> {
        let segments = self.segments(length);
        self.queue.readv(
            offset,
            segments.as_ptr(),
            segments.len() as u32,
            0,
            ReqFlags::empty(),
        );
        match self.complete() {
            0 => {
                let mut bytes = vec![0u8; length];
                self.buffer_file
                    .read_exact_at(&mut bytes, self.buffer.fd_offset as u64)
                    .unwrap();
                Ok(bytes)
            }
            error => Err(error),
        }
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), i32> {
        self.buffer_file
            .write_all_at(bytes, self.buffer.fd_offset as u64)
            .unwrap();
        let segments = self.segments(bytes.len());
        self.queue.writev(
            offset,
            segments.as_ptr(),
            segments.len() as u32,
            0,
            ReqFlags::empty(),
        );
        result(self.complete())
    }

    fn flush(&mut self) -> Result<(), i32> {
        self.queue.flush(0, ReqFlags::empty());
        result(self.complete())
    }

    fn discard(&mut self, offset: u64, length: u64) -> Result<(), i32> {
        self.queue.discard(offset, length, 0, ReqFlags::empty());
        result(self.complete())
    }

    fn write_zeroes(&mut self, offset: u64, length: u64) -> Result<(), i32> {
        self.queue
            .write_zeroes(offset, length, 0, ReqFlags::empty());
        result(self.complete())
    }

    /// The whole device, in buffer-sized reads.
    fn read_all(&mut self) -> Vec<u8> {
        let capacity = self.capacity();
        let mut bytes = Vec::new();
        for offset in (0..capacity).step_by(BUFFER_BYTES) {
            let length = (capacity - offset).min(BUFFER_BYTES as u64) as usize;
            bytes.extend(self.read(offset, length).unwrap());
        }
        bytes
    }
}

/// `region`'s memfd opened again by path.
fn reopen(region: &MemoryRegion) -> File {
    File::options()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", region.fd))
        .unwrap()
}

fn result(ret: i32) -> Result<(), i32> {
    match ret {
        0 => Ok(()),
        error => Err(error),
    }
}

/// Every check, against `server`.
fn a_libblkio_client_is_served(server: &mut impl Server) {
    // Read-only: the device says so, and its bytes are the image's.
    let read_only = server.read_only_piece();
    let expected = pattern(READ_ONLY_BYTES as usize, 7);
    fs::OpenOptions::new()
        .write(true)
        .open(&read_only.image)
        .unwrap()
        .write_all_at(&expected, read_only.offset)
        .unwrap();
    let refused = Client::connect(&server.read_only_socket(), false).map(|_| ());
    assert_eq!(
        refused.map_err(|error| (error.errno(), error.message().to_owned())),
        Err((Errno::ROFS, "Device is read-only".to_owned())),
        "a read-only device is started read-write"
    );
    let mut client = Client::connect(&server.read_only_socket(), true).unwrap();
    assert_eq!(client.capacity(), READ_ONLY_BYTES);
    assert!(
        client.read_all() == expected,
        "the read-only device reads its image"
    );
    drop(client);

    // Capacity, writes and reads across the whole device, and flush.
    let mut client = Client::connect(&server.writable_socket(), false).unwrap();
    assert_eq!(client.capacity(), WRITABLE_BYTES);
    let written = pattern(WRITABLE_BYTES as usize, 1);
    for (index, chunk) in written.chunks(BUFFER_BYTES).enumerate() {
        client.write((index * BUFFER_BYTES) as u64, chunk).unwrap();
    }
    assert_eq!(client.flush(), Ok(()));
    let pieces = server.writable_pieces();
    assert!(
        device_bytes(&pieces, 0, WRITABLE_BYTES) == written,
        "the writes reached the image"
    );
    client.replace_buffer();
    assert!(client.read_all() == written, "the reads return the writes");
    // A request past the end fails and changes nothing.
    assert_eq!(client.read(WRITABLE_BYTES, 4096), Err(-libc::EIO));
    assert_eq!(
        client.write(WRITABLE_BYTES - 512, &[9; 1024]),
        Err(-libc::EIO)
    );
    assert!(device_bytes(&pieces, 0, WRITABLE_BYTES) == written);

    // Write-zeroes and discard zero exactly their ranges, in the image as on the device.
    let mut expected = written;
    let zeroed = 64 * KIB..72 * KIB;
    assert_eq!(
        client.write_zeroes(zeroed.start, zeroed.end - zeroed.start),
        Ok(())
    );
    expected[zeroed.start as usize..zeroed.end as usize].fill(0);
    let discarded = 128 * KIB..192 * KIB;
    assert_eq!(
        client.discard(discarded.start, discarded.end - discarded.start),
        Ok(())
    );
    expected[discarded.start as usize..discarded.end as usize].fill(0);
    assert!(device_bytes(&pieces, 0, WRITABLE_BYTES) == expected);
    assert!(client.read_all() == expected);

    // A resize reaches the connected client, and the new end is served.
    if !server.grow() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.capacity() != GROWN_BYTES {
        assert!(
            Instant::now() < deadline,
            "the client sees {} bytes, not {GROWN_BYTES}",
            client.capacity()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let across = WRITABLE_BYTES - 64 * KIB;
    let written = pattern(BUFFER_BYTES, 3);
    client.write(across, &written).unwrap();
    let pieces = server.writable_pieces();
    assert!(device_bytes(&pieces, across, BUFFER_BYTES as u64) == written);
    assert!(client.read(across, BUFFER_BYTES).unwrap() == written);
    assert!(device_bytes(&pieces, 0, across) == expected[..across as usize]);
}

/// vbd-backend: the writable device is `xvda` of domain 1, 1 MiB of `hda` grown by 512 KiB
/// of `hdb`; the read-only one is `xvdb`, elsewhere on `hda`.
struct VbdBackend {
    backend: Backend,
}

const XVDA_START: u64 = 4096;
const XVDB_START: u64 = 20480;

fn xvdb() -> DeviceNumber {
    DeviceNumber::from_name("xvdb").unwrap()
}

impl VbdBackend {
    fn start() -> VbdBackend {
        let backend = Backend::start(&[]);
        let mut hypervisor = backend.hypervisor();
        for (device, mode, start, bytes) in [
            (xvda(), Mode::READ | Mode::WRITE, XVDA_START, WRITABLE_BYTES),
            (xvdb(), Mode::READ, XVDB_START, READ_ONLY_BYTES),
        ] {
            hypervisor.create(1, device, mode, label("vd:1")).unwrap();
            hypervisor
                .set_extents(
                    1,
                    device,
                    &[Extent::new(hda(), start, bytes / 512).unwrap()],
                    SharingLevel::ReadersOnly,
                )
                .unwrap();
        }
        VbdBackend { backend }
    }
}

impl Server for VbdBackend {
    fn writable_socket(&self) -> PathBuf {
        self.backend.socket(1, "xvda")
    }

    fn read_only_socket(&self) -> PathBuf {
        self.backend.socket(1, "xvdb")
    }

    fn writable_pieces(&self) -> Vec<Piece> {
        vec![
            Piece {
                image: self.backend.image("hda"),
                offset: XVDA_START * 512,
                bytes: WRITABLE_BYTES,
            },
            Piece {
                image: self.backend.image("hdb"),
                offset: 0,
                bytes: GROWN_BYTES - WRITABLE_BYTES,
            },
        ]
    }

    fn read_only_piece(&self) -> Piece {
        Piece {
            image: self.backend.image("hda"),
            offset: XVDB_START * 512,
            bytes: READ_ONLY_BYTES,
        }
    }

    fn grow(&mut self) -> bool {
        self.backend
            .hypervisor()
            .grow(
                1,
                xvda(),
                Extent::new(hdb(), 0, (GROWN_BYTES - WRITABLE_BYTES) / 512).unwrap(),
                SharingLevel::ReadersOnly,
            )
            .unwrap();
        true
    }
}

/// qemu-storage-daemon serving two raw images, stopped when dropped, even when the test
/// fails.
struct StorageDaemon {
    directory: tempfile::TempDir,
    child: Child,
}

impl StorageDaemon {
    fn start() -> StorageDaemon {
        let directory = tempfile::tempdir().unwrap();
        let path = |name: &str| directory.path().join(name).display().to_string();
        for (name, bytes) in [
            ("writable.img", WRITABLE_BYTES),
            ("read-only.img", READ_ONLY_BYTES),
        ] {
            File::create(path(name)).unwrap().set_len(bytes).unwrap();
        }
        let arguments = [
            format!(
                "--blockdev=driver=file,node-name=f0,filename={},discard=unmap",
                path("writable.img")
            ),
            "--blockdev=driver=raw,node-name=d0,file=f0,discard=unmap".to_owned(),
            format!(
                "--export=type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path={},writable=on",
                path("writable.sock")
            ),
            format!(
                "--blockdev=driver=file,node-name=f1,filename={},read-only=on",
                path("read-only.img")
            ),
            "--blockdev=driver=raw,node-name=d1,file=f1,read-only=on".to_owned(),
            format!(
                "--export=type=vhost-user-blk,id=e1,node-name=d1,addr.type=unix,addr.path={}",
                path("read-only.sock")
            ),
        ];
        let child = Command::new("qemu-storage-daemon")
            .args(&arguments)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(path("daemon.log")).unwrap())
            .spawn()
            .expect("qemu-storage-daemon starts (package qemu-system-common)");
        let mut daemon = StorageDaemon { directory, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while ["writable.sock", "read-only.sock"]
            .iter()
            .any(|name| !daemon.directory.path().join(name).exists())
        {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("qemu-storage-daemon exited with {status}: {}", daemon.log());
            }
            assert!(
                Instant::now() < deadline,
                "qemu-storage-daemon did not start: {}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    fn log(&self) -> String {
        fs::read_to_string(self.directory.path().join("daemon.log")).unwrap_or_default()
    }
}

impl Server for StorageDaemon {
    fn writable_socket(&self) -> PathBuf {
        self.directory.path().join("writable.sock")
    }

    fn read_only_socket(&self) -> PathBuf {
        self.directory.path().join("read-only.sock")
    }

    fn writable_pieces(&self) -> Vec<Piece> {
        vec![Piece {
            image: self.directory.path().join("writable.img"),
            offset: 0,
            bytes: GROWN_BYTES,
        }]
    }

    fn read_only_piece(&self) -> Piece {
        Piece {
            image: self.directory.path().join("read-only.img"),
            offset: 0,
            bytes: READ_ONLY_BYTES,
        }
    }

    fn grow(&mut self) -> bool {
        // qemu-storage-daemon 7.2's vhost-user-blk export keeps the capacity it was created
        // with: `block_resize` grows the node, and neither a connected client nor a new one
        // sees it. The reference has no resize to compare with.
        false
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn libblkio_is_served_by_a_guest_vbd() {
    a_libblkio_client_is_served(&mut VbdBackend::start());
}

#[test]
fn libblkio_is_served_by_qemu_storage_daemon_the_reference() {
    a_libblkio_client_is_served(&mut StorageDaemon::start());
}
