//! Serving frames: hypercalls through hv-vbd's dispatch, block requests through its
//! translation and the ATA driver, and the notices the hypervisor pushes to its peers.
//!
//! The caller's domain is the port's, never a field of the frame. A request that cannot be
//! served gets a reply carrying the errno, with the request's sequence number; nothing a
//! peer sends can make this module panic or stop serving.

use hv_vbd::{Access, Changed, DefaultVbdTable, GuestAddress, Segment, SliceMemory};
use shared_abi::frame::{FrameHeader, FrameKind, MAX_BLOCK_SECTORS};
use shared_abi::wire::{
    BlockRequest, BlockResponse, ChangeNotice, HypercallRequest, HypercallResponse, ReadyNotice,
};
use shared_abi::{DeviceNumber, Error, Op, ABI_VERSION, DOM0};
use zerocopy::{FromBytes, IntoBytes};

use crate::ata::SECTOR_BYTES;
use crate::disks::Disks;
use crate::serial::{log, Uart};

/// The largest block transfer, in bytes.
pub const MAX_BLOCK_BYTES: usize = MAX_BLOCK_SECTORS as usize * SECTOR_BYTES;
/// A request of single-sector extents splits into one segment per sector.
pub const MAX_SEGMENTS: usize = MAX_BLOCK_SECTORS as usize;
/// How long a peer may leave its socket unread before a frame to it is cut short.
const TRANSMIT_PATIENCE_MILLISECONDS: u64 = 1_000;

/// A serial port that carries one domain's frames.
#[derive(Clone, Copy, Debug)]
pub struct ChannelPort {
    pub name: &'static str,
    pub uart: Uart,
    pub domain: u32,
}

/// COM2 is dom0's, COM3 and COM4 are guest domains 1 and 2.
pub const CHANNEL_PORTS: [ChannelPort; 3] = [
    ChannelPort {
        name: "COM2",
        uart: Uart::new(0x2F8),
        domain: 0,
    },
    ChannelPort {
        name: "COM3",
        uart: Uart::new(0x3E8),
        domain: 1,
    },
    ChannelPort {
        name: "COM4",
        uart: Uart::new(0x2E8),
        domain: 2,
    },
];

impl ChannelPort {
    /// Send one frame whose payload is the concatenation of `payload`. A peer that stops
    /// reading gets the frame cut short (its reader resynchronises) rather than stalling
    /// every other port.
    pub fn send(&self, kind: FrameKind, sequence: u32, payload: &[&[u8]]) {
        let header = match FrameHeader::for_payload(kind, sequence, payload) {
            Ok(header) => header,
            Err(error) => {
                log!("{}: cannot send a {kind:?} frame: {error}", self.name);
                return;
            }
        };
        let sent = core::iter::once(&header.to_bytes()[..])
            .chain(payload.iter().copied())
            .try_for_each(|part| self.uart.write(part, TRANSMIT_PATIENCE_MILLISECONDS));
        if sent.is_err() {
            log!(
                "{}: peer stopped reading; a {kind:?} frame was cut short",
                self.name
            );
        }
    }

    /// Say that this port is served, for the domain it speaks for: unprompted with
    /// sequence 0 when serving starts, or in reply to a peer's `Ready` with its sequence.
    pub fn send_ready(&self, sequence: u32) {
        let notice = ReadyNotice {
            domain: self.domain,
            abi_version: ABI_VERSION,
        };
        self.send(FrameKind::Ready, sequence, &[notice.as_bytes()]);
    }

    /// Tell the peer a frame it sent was malformed.
    pub fn send_reject(&self, sequence: u32, error: Error) {
        let response = BlockResponse {
            result: error.to_wire(),
        };
        self.send(FrameKind::Reject, sequence, &[response.as_bytes()]);
    }

    /// Tell a guest its VBDs changed, so it probes again.
    pub fn send_change(&self, changed: Changed) {
        let notice = ChangeNotice {
            domain: changed.domain,
            _reserved: 0,
            generation: changed.generation,
        };
        self.send(FrameKind::ChangeNotice, 0, &[notice.as_bytes()]);
    }
}

/// What serving a frame did beyond replying to it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Served {
    /// A domain whose VBDs changed.
    pub changed: Option<Changed>,
    /// A domain dom0 destroyed: its port now serves a fresh domain.
    pub destroyed: Option<u32>,
    /// dom0 asked the hypervisor to power off.
    pub shutdown: bool,
}

/// Counters for the summary line printed at shutdown.
#[derive(Clone, Copy, Debug, Default)]
pub struct Statistics {
    pub frames_served: u64,
    pub frames_rejected: u64,
    pub bytes_skipped: u64,
    pub partial_frames_abandoned: u64,
    pub io_errors: u64,
}

impl core::fmt::Display for Statistics {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            formatter,
            "frames_served={} frames_rejected={} bytes_skipped={} partial_frames_abandoned={} io_errors={}",
            self.frames_served,
            self.frames_rejected,
            self.bytes_skipped,
            self.partial_frames_abandoned,
            self.io_errors
        )
    }
}

/// Everything serving needs: the VBD table, the disks and the transfer buffers.
pub struct Server<'a> {
    pub table: &'a DefaultVbdTable,
    pub disks: &'a Disks,
    pub block_buffer: &'a mut [u8; MAX_BLOCK_BYTES],
    pub segments: &'a mut [Segment; MAX_SEGMENTS],
    pub statistics: Statistics,
}

impl Server<'_> {
    /// Serve one well-formed frame that arrived on `port`.
    pub fn serve(&mut self, port: &ChannelPort, header: FrameHeader, payload: &mut [u8]) -> Served {
        self.statistics.frames_served += 1;
        match header.kind {
            FrameKind::HypercallRequest => self.hypercall(port, header.sequence, payload),
            FrameKind::BlockRead => {
                self.block(port, header.sequence, Access::Read, payload);
                Served::default()
            }
            FrameKind::BlockWrite => {
                self.block(port, header.sequence, Access::Write, payload);
                Served::default()
            }
            FrameKind::Shutdown if port.domain == DOM0 => Served {
                shutdown: true,
                ..Served::default()
            },
            FrameKind::Shutdown => {
                port.send_reject(header.sequence, Error::PermissionDenied);
                Served::default()
            }
            // A peer opens every connection this way: the reply names its domain and ABI.
            FrameKind::Ready if payload.is_empty() => {
                port.send_ready(header.sequence);
                Served::default()
            }
            FrameKind::Ready => {
                port.send_reject(header.sequence, Error::InvalidArgument);
                Served::default()
            }
            // Kinds only the hypervisor sends: a peer sending one speaks another protocol.
            FrameKind::HypercallResponse
            | FrameKind::BlockResponse
            | FrameKind::ChangeNotice
            | FrameKind::Reject => {
                port.send_reject(header.sequence, Error::NotImplemented);
                Served::default()
            }
        }
    }

    /// Run a hypercall with the frame's memory image as the caller's memory, and send the
    /// image back as the call left it.
    fn hypercall(&mut self, port: &ChannelPort, sequence: u32, payload: &mut [u8]) -> Served {
        let reply = |result: i64, image: &[u8]| {
            let response = HypercallResponse { result };
            port.send(
                FrameKind::HypercallResponse,
                sequence,
                &[response.as_bytes(), image],
            );
        };
        let Ok((request, _)) = HypercallRequest::read_from_prefix(payload) else {
            reply(Error::InvalidArgument.to_wire(), &[]);
            return Served::default();
        };
        let image = &mut payload[size_of::<HypercallRequest>()..];
        if let Err(error) = request.validate() {
            reply(error.to_wire(), image);
            return Served::default();
        }
        let outcome = self.table.dispatch(
            port.domain,
            request.op,
            GuestAddress(request.args_address),
            &mut SliceMemory::new(image),
        );
        reply(outcome.result, image);
        let destroyed = (request.op == Op::DestroyDomain as u32 && outcome.result >= 0)
            .then_some(outcome.changed)
            .flatten()
            .map(|changed| changed.domain);
        if let Some(domain) = destroyed {
            log!(
                "domain {domain} destroyed by dom0 ({} VBDs released)",
                outcome.result
            );
        }
        Served {
            changed: outcome.changed,
            destroyed,
            shutdown: false,
        }
    }

    /// Serve a block read or write and reply with its result (and a read's data).
    fn block(&mut self, port: &ChannelPort, sequence: u32, access: Access, payload: &[u8]) {
        match self.transfer(port, access, payload) {
            Ok(bytes) => {
                let data = match access {
                    Access::Read => &self.block_buffer[..bytes],
                    Access::Write => &[][..],
                };
                let response = BlockResponse { result: 0 };
                port.send(
                    FrameKind::BlockResponse,
                    sequence,
                    &[response.as_bytes(), data],
                );
            }
            Err(error) => {
                let response = BlockResponse {
                    result: error.to_wire(),
                };
                port.send(FrameKind::BlockResponse, sequence, &[response.as_bytes()]);
            }
        }
    }

    /// Check the request, translate it for the port's domain, and move the data segment by
    /// segment. Returns the bytes moved. Translation releases the table's lock before it
    /// returns, so no disk I/O happens under it.
    fn transfer(
        &mut self,
        port: &ChannelPort,
        access: Access,
        payload: &[u8],
    ) -> Result<usize, Error> {
        let (request, data) =
            BlockRequest::read_from_prefix(payload).map_err(|_| Error::InvalidArgument)?;
        if request.nr_sectors > MAX_BLOCK_SECTORS {
            return Err(Error::TooBig);
        }
        let bytes = request.nr_sectors as usize * SECTOR_BYTES;
        let expected_data = match access {
            Access::Read => 0,
            Access::Write => bytes,
        };
        if data.len() != expected_data {
            return Err(Error::InvalidArgument);
        }
        let count = self.table.translate(
            port.domain,
            DeviceNumber::from_raw(request.vdevice),
            request.sector,
            u64::from(request.nr_sectors),
            access,
            &mut self.segments[..],
        )?;
        let segments = &self.segments[..count];
        let mut offset = 0usize;
        for segment in segments {
            let disk = self.disks.find(segment.device).ok_or(Error::NoDevice)?;
            // Translation covers exactly the request, so these cannot fail; if they did,
            // refusing is better than panicking in the middle of serving.
            let length = usize::try_from(segment.nr_sectors)
                .ok()
                .and_then(|sectors| sectors.checked_mul(SECTOR_BYTES))
                .ok_or(Error::OutOfRange)?;
            let range = offset..offset.checked_add(length).ok_or(Error::OutOfRange)?;
            let result = match access {
                Access::Read => {
                    let buffer = self
                        .block_buffer
                        .get_mut(range.clone())
                        .ok_or(Error::OutOfRange)?;
                    disk.read(segment.sector, buffer)
                }
                Access::Write => {
                    let chunk = data.get(range.clone()).ok_or(Error::OutOfRange)?;
                    disk.write(segment.sector, chunk)
                }
            };
            if let Err(failure) = result {
                log!("{}: I/O error: {failure}", port.name);
                self.statistics.io_errors += 1;
                return Err(Error::Io);
            }
            offset = range.end;
        }
        Ok(bytes)
    }
}
