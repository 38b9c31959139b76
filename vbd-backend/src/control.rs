//! `DIR/control.sock`: dom0's hypercall channel. Accepts connections, reassembles frames
//! from each byte stream (a blocking read of the 24-byte header, then of the payload it
//! announces) and hands each to hv-vbd's frame server ([`hv_vbd::VbdTable::serve_frame`]),
//! which decodes, dispatches, waits for a change's fence and replies. The backend adds the
//! transport and the disks; the caller is always dom0, whatever a frame says.
//!
//! A hypercall and the update of the sockets it calls for happen under one lock, before the
//! reply is sent: when `vdisk attach` returns, the VBD's socket exists; when `vdisk detach`
//! returns, every I/O translated under the old mapping has finished and the socket is gone.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;

use hv_vbd::serve::{reject_payload, Port, MAX_BLOCK_BYTES, MAX_SEGMENTS};
use shared_abi::frame::{self, FrameHeader, FrameKind, HEADER_LEN};
use shared_abi::DOM0;
use zerocopy::IntoBytes;

use crate::disks::DiskIo;
use crate::exports::Exports;
use crate::shared::Shared;
use crate::sockets::Peers;
use crate::threads::{Connections, Policy};
use crate::vbd::Translator;

/// Connections served at once (vdisk opens one per command). Large: the idle timeout, not
/// this bound, is what keeps idle clients from locking the others out.
const MAX_CONNECTIONS: usize = 256;

/// How long a connection past `MAX_CONNECTIONS` waits for a slot.
const WAIT_FOR_SLOT: Duration = Duration::from_secs(10);

/// How long a change waits between looks at its fence: I/O takes microseconds to
/// milliseconds, and the waiting thread should leave the cores to it.
const FENCE_POLL: Duration = Duration::from_micros(20);

/// Why the backend stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Signal(i32),
    ShutdownFrame,
}

/// The shared state, the sockets, and the way to ask for a stop.
pub struct Service {
    pub shared: Arc<Shared>,
    exports: Mutex<Exports>,
    stop: Mutex<mpsc::Sender<Stop>>,
}

impl std::ops::Deref for Service {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Service {
    pub fn new(shared: Arc<Shared>, exports: Exports, stop: mpsc::Sender<Stop>) -> Service {
        Service {
            shared,
            exports: Mutex::new(exports),
            stop: Mutex::new(stop),
        }
    }

    /// The sockets, locked: a hypercall and the update it calls for happen under this lock.
    pub fn lock_exports(&self) -> MutexGuard<'_, Exports> {
        self.exports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn request_stop(&self, reason: Stop) {
        let _ = self
            .stop
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .send(reason);
    }
}

/// Serve `listener` until the service stops; a client idle for `idle_timeout` is closed.
pub fn serve(
    service: Arc<Service>,
    listener: UnixListener,
    idle_timeout: Duration,
) -> io::Result<Connections> {
    Connections::serve(
        "control.sock".into(),
        listener,
        Policy {
            limit: MAX_CONNECTIONS,
            wait_for_slot: WAIT_FOR_SLOT,
            peers: Peers::Owner,
            idle_timeout: Some(idle_timeout),
        },
        move |stream| connection(&service, stream),
    )
}

/// Append one frame to `outgoing`. Every reply hv-vbd builds fits in a frame, so a failure
/// here is a bug worth a log line, not a reply.
fn encode(outgoing: &mut Vec<u8>, kind: FrameKind, sequence: u32, parts: &[&[u8]]) {
    match FrameHeader::for_payload(kind, sequence, parts) {
        Ok(header) => {
            outgoing.extend_from_slice(&header.to_bytes());
            parts
                .iter()
                .for_each(|part| outgoing.extend_from_slice(part));
        }
        Err(error) => eprintln!("vbd-backend: control.sock: cannot send a {kind:?} frame: {error}"),
    }
}

/// Serve one connection until the peer closes it or the service stops.
fn connection(service: &Service, stream: UnixStream) -> io::Result<()> {
    let mut translator = Translator::new(service.table);
    let mut reader = Reassembly::new(stream.try_clone()?);
    let mut writer = stream;
    let mut buffer = vec![0u8; MAX_BLOCK_BYTES];
    let mut outgoing = Vec::new();
    while let Some(incoming) = reader.next()? {
        let mut shutdown = false;
        match incoming {
            Incoming::Rejected { sequence, error } => encode(
                &mut outgoing,
                FrameKind::Reject,
                sequence,
                &[reject_payload(error.errno()).as_bytes()],
            ),
            Incoming::Frame { header, length } => {
                let payload = &mut reader.buffer[HEADER_LEN..length];
                let (context, segments) = translator.parts(MAX_SEGMENTS);
                let mut port = Port {
                    domain: DOM0,
                    start_id: service.start_id,
                    context,
                    disks: &mut DiskIo {
                        disks: &service.disks,
                        channel: "control.sock",
                    },
                    buffer: &mut buffer,
                    segments,
                };
                let mut serve = || {
                    service.table.serve_frame(
                        &mut port,
                        header.kind,
                        header.sequence,
                        payload,
                        &mut || std::thread::sleep(FENCE_POLL),
                        &mut |kind, sequence, parts| encode(&mut outgoing, kind, sequence, parts),
                    )
                };
                let served = if header.kind == FrameKind::HypercallRequest {
                    let mut exports = service.lock_exports();
                    let served = serve();
                    if let Some(changed) = served.changed {
                        exports.reconcile(changed.domain);
                    }
                    served
                } else {
                    serve()
                };
                shutdown = served.shutdown;
                reader.consume(length);
            }
        }
        writer.write_all(&outgoing)?;
        outgoing.clear();
        if shutdown {
            service.request_stop(Stop::ShutdownFrame);
            return Ok(());
        }
    }
    Ok(())
}

/// What the byte stream held next.
enum Incoming {
    /// A checked frame of `length` bytes at the start of the buffer.
    Frame { header: FrameHeader, length: usize },
    /// A frame whose header was sound and whose payload was not.
    Rejected {
        sequence: u32,
        error: frame::FrameError,
    },
}

/// The bytes of at most one frame, read as the frame needs them.
struct Reassembly {
    stream: UnixStream,
    buffer: Vec<u8>,
    skipped: usize,
}

impl Reassembly {
    fn new(stream: UnixStream) -> Reassembly {
        Reassembly {
            stream,
            buffer: Vec::with_capacity(HEADER_LEN),
            skipped: 0,
        }
    }

    /// Read until the buffer holds `wanted` bytes; `false` at the end of the stream.
    fn fill(&mut self, wanted: usize) -> io::Result<bool> {
        while self.buffer.len() < wanted {
            let start = self.buffer.len();
            self.buffer.resize(wanted, 0);
            match self.stream.read(&mut self.buffer[start..]) {
                Ok(0) => {
                    self.buffer.truncate(start);
                    return Ok(false);
                }
                Ok(count) => self.buffer.truncate(start + count),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {
                    self.buffer.truncate(start)
                }
                Err(error) => return Err(error),
            }
        }
        Ok(true)
    }

    fn consume(&mut self, count: usize) {
        self.buffer.drain(..count);
    }

    /// Drop garbage up to the next place a frame could start.
    fn resync(&mut self) -> usize {
        let count = frame::resync(&self.buffer);
        self.consume(count);
        count
    }

    /// The next frame, or `None` at the end of the stream. Garbage is skipped (and counted)
    /// the way the hypervisor's serial reader skips it.
    fn next(&mut self) -> io::Result<Option<Incoming>> {
        let result = self.next_unreported();
        if self.skipped != 0 {
            eprintln!(
                "vbd-backend: control.sock: skipped {} bytes that were not a frame",
                self.skipped
            );
            self.skipped = 0;
        }
        result
    }

    fn next_unreported(&mut self) -> io::Result<Option<Incoming>> {
        loop {
            if !self.fill(HEADER_LEN)? {
                self.skipped += self.buffer.len();
                return Ok(None);
            }
            let Some(bytes) = self.buffer.first_chunk::<HEADER_LEN>() else {
                continue;
            };
            let header = match FrameHeader::parse(bytes) {
                Ok(header) => header,
                Err(_) => {
                    self.skipped += self.resync();
                    continue;
                }
            };
            let length = HEADER_LEN + header.length as usize;
            if !self.fill(length)? {
                return Ok(None);
            }
            if let Err(error) = header.check_payload(&self.buffer[HEADER_LEN..length]) {
                // The next frame may have started inside what was taken for this payload.
                self.skipped += self.resync();
                return Ok(Some(Incoming::Rejected {
                    sequence: header.sequence,
                    error,
                }));
            }
            return Ok(Some(Incoming::Frame { header, length }));
        }
    }
}
