//! A hypervisor inside the test process: hv-vbd's table and frame server, the ones both
//! embeddings run, on a unix socket for each of domains 0, 1, 2 and 3, over a machine's
//! disk image as `hda` (3:0), reporting a start id of the test's choosing. Dropping it and
//! starting another over the same directory is a restart: the same disk, no VBDs, a new
//! start. It counts the bytes its ports receive, so a test can see what a call costs on a
//! serial line.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use hv_vbd::serve::{BlockDevices, Port, MAX_BLOCK_BYTES, MAX_SEGMENTS};
use hv_vbd::{Disk, Segment, SharingLevel, VbdTable};
use shared_abi::frame::{self, FrameError, FrameHeader};
use shared_abi::{DeviceNumber, Error};

/// Small enough to build on a test thread's stack: 4 domains of 8 VBDs, 4096 extents.
type Table = VbdTable<4, 8, 4096, 1>;

/// The domains served, one socket each: `domD.sock`.
const DOMAINS: [u32; 4] = [0, 1, 2, 3];

/// A running hypervisor; dropping it stops it and removes its sockets.
pub struct Hypervisor {
    directory: PathBuf,
    stopping: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

/// The disk image as hv-vbd's disks.
struct Image {
    file: File,
}

impl BlockDevices for Image {
    fn read(&mut self, device: DeviceNumber, offset: u64, buffer: &mut [u8]) -> Result<(), Error> {
        if device != hda() {
            return Err(Error::NoDevice);
        }
        self.file
            .read_exact_at(buffer, offset)
            .map_err(|_| Error::Io)
    }

    fn write(&mut self, device: DeviceNumber, offset: u64, data: &[u8]) -> Result<(), Error> {
        if device != hda() {
            return Err(Error::NoDevice);
        }
        self.file.write_all_at(data, offset).map_err(|_| Error::Io)
    }
}

fn hda() -> DeviceNumber {
    DeviceNumber::new(3, 0).unwrap()
}

impl Hypervisor {
    /// Serve `image` in `directory`'s sockets, reporting `start_id` in every handshake and
    /// allowing requests up to sharing level `ceiling`.
    pub fn start(
        directory: &Path,
        image: &Path,
        start_id: u64,
        ceiling: SharingLevel,
    ) -> Hypervisor {
        let table: &'static Table = Box::leak(Box::new(Table::new(ceiling)));
        let sectors = std::fs::metadata(image).unwrap().len() / 512;
        table
            .register_disk(Disk {
                device: hda(),
                sectors,
            })
            .unwrap();
        let stopping = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let threads = DOMAINS
            .iter()
            .map(|&domain| {
                let socket = socket_path(directory, domain);
                let _ = std::fs::remove_file(&socket);
                let listener = UnixListener::bind(&socket).unwrap();
                let image = image.to_path_buf();
                let stopping = Arc::clone(&stopping);
                let received = Arc::clone(&received);
                std::thread::spawn(move || {
                    // One connection at a time, as a serial port serves them.
                    for stream in listener.incoming() {
                        if stopping.load(Ordering::Acquire) {
                            return;
                        }
                        let file = std::fs::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(&image)
                            .unwrap();
                        let port = Connection {
                            domain,
                            start_id,
                            stream: stream.unwrap(),
                            received: &received,
                        };
                        serve(table, port, Image { file });
                    }
                })
            })
            .collect();
        Hypervisor {
            directory: directory.to_path_buf(),
            stopping,
            received,
            threads,
        }
    }

    /// `unix:PATH` of domain `domain`'s port, as `vdisk --hv` takes it.
    pub fn endpoint(&self, domain: u32) -> String {
        format!("unix:{}", socket_path(&self.directory, domain).display())
    }

    /// How many bytes every port has received since the start.
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

fn socket_path(directory: &Path, domain: u32) -> PathBuf {
    directory.join(format!("dom{domain}.sock"))
}

/// One accepted connection to a domain's port.
struct Connection<'a> {
    domain: u32,
    start_id: u64,
    stream: UnixStream,
    received: &'a AtomicU64,
}

/// Serve one connection until its peer closes it.
fn serve(table: &'static Table, mut connection: Connection, mut disks: Image) {
    let Connection {
        domain, start_id, ..
    } = connection;
    let context = table.io_context();
    let mut buffer = vec![0u8; MAX_BLOCK_BYTES];
    let mut segments = vec![Segment::default(); MAX_SEGMENTS];
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        loop {
            let (kind, sequence, mut payload, used) = match frame::decode(&received) {
                Ok((frame, used)) => (frame.kind, frame.sequence, frame.payload.to_vec(), used),
                Err(FrameError::Truncated { .. }) => break,
                Err(_) => {
                    let garbage = frame::resync(&received);
                    received.drain(..garbage);
                    continue;
                }
            };
            received.drain(..used);
            let mut port = Port {
                domain,
                start_id,
                context: &context,
                disks: &mut disks,
                buffer: &mut buffer,
                segments: &mut segments,
            };
            let mut reply = Vec::new();
            table.serve_frame(
                &mut port,
                kind,
                sequence,
                &mut payload,
                &mut std::thread::yield_now,
                &mut |kind, sequence, parts| {
                    let header = FrameHeader::for_payload(kind, sequence, parts).unwrap();
                    reply.extend_from_slice(&header.to_bytes());
                    parts.iter().for_each(|part| reply.extend_from_slice(part));
                },
            );
            if connection.stream.write_all(&reply).is_err() {
                return;
            }
        }
        match connection.stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(count) => {
                connection
                    .received
                    .fetch_add(count as u64, Ordering::Relaxed);
                received.extend_from_slice(&chunk[..count]);
            }
        }
    }
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        for domain in DOMAINS {
            // Wakes the port's accept, which then sees it is stopping.
            let _ = UnixStream::connect(socket_path(&self.directory, domain));
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        for domain in DOMAINS {
            let _ = std::fs::remove_file(socket_path(&self.directory, domain));
        }
    }
}
