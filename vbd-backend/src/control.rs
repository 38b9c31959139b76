//! `DIR/control.sock`: dom0's hypercall channel. Accepts connections, reassembles frames
//! from each byte stream (shared-abi's [`Reassembler`], read with blocking reads of the
//! bytes the current frame lacks: the rest of its header, then of its payload) and hands each to hv-vbd's frame server ([`hv_vbd::VbdTable::serve_frame`]),
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
use shared_abi::frame::{FrameHeader, FrameKind, HEADER_LEN, MAX_FRAME};
use shared_abi::reassembly::{Reassembler, Step};
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
    /// A new process took the VBDs and the sockets over ([`crate::takeover`]).
    HandedOver,
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
    let mut reader = stream.try_clone()?;
    let mut writer = stream;
    let mut frames = Reassembler::new(vec![0u8; MAX_FRAME]);
    let mut buffer = vec![0u8; MAX_BLOCK_BYTES];
    let mut outgoing = Vec::new();
    loop {
        let mut shutdown = false;
        match frames.step() {
            Step::NeedMore => {
                if !receive(&mut reader, &mut frames)? {
                    // A header cut short by the end of the stream was not a frame either.
                    let unfinished_header = match frames.buffered() {
                        held if held < HEADER_LEN => held,
                        _ => 0,
                    };
                    report_skipped(frames.take_discarded() + unfinished_header);
                    return Ok(());
                }
                continue;
            }
            Step::Rejected { sequence, error } => encode(
                &mut outgoing,
                FrameKind::Reject,
                sequence,
                &[reject_payload(error.errno()).as_bytes()],
            ),
            Step::Frame { header, payload } => {
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
            }
        }
        report_skipped(frames.take_discarded());
        writer.write_all(&outgoing)?;
        outgoing.clear();
        if shutdown {
            service.request_stop(Stop::ShutdownFrame);
            return Ok(());
        }
    }
}

/// Read the bytes the current frame still lacks, and no more, so that the buffer holds at
/// most one frame; `false` at the end of the stream.
fn receive(stream: &mut UnixStream, frames: &mut Reassembler<Vec<u8>>) -> io::Result<bool> {
    loop {
        match stream.read(frames.space()) {
            Ok(0) => return Ok(false),
            Ok(count) => {
                frames.commit(count);
                return Ok(true);
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

/// Say how much garbage the stream held, the way the hypervisor's serial reader does.
fn report_skipped(count: usize) {
    if count != 0 {
        eprintln!("vbd-backend: control.sock: skipped {count} bytes that were not a frame");
    }
}
