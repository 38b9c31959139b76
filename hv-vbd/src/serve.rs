//! Serving the frame channel (shared_abi::frame): hypercalls with the caller's memory image,
//! and block reads and writes, in one place that every embedding calls. An embedder
//! reassembles frames from its transport, hands each to [`VbdTable::serve_frame`] with the
//! port's domain, and sends what it is told to send; it supplies the disk I/O as
//! [`BlockDevices`]. The caller's domain is the port's, never a field of the frame.

use shared_abi::frame::{FrameKind, MAX_BLOCK_SECTORS, MAX_PAYLOAD};
use shared_abi::wire::{
    BlockRequest, BlockResponse, ChangeNotice, HypercallRequest, HypercallResponse, ReadyNotice,
};
use shared_abi::{DeviceNumber, Error, Op, ABI_VERSION, DOM0, SECTOR_SIZE};
use zerocopy::{FromBytes, IntoBytes};

use crate::block::{Access, Request, Segment};
use crate::inflight::IoContext;
use crate::memory::{GuestAddress, SliceMemory};
use crate::table::{Changed, VbdId, VbdTable};

/// The largest block transfer one frame carries, in bytes.
pub const MAX_BLOCK_BYTES: usize = MAX_BLOCK_SECTORS as usize * SECTOR_SIZE as usize;
/// Room for every segment of the largest request: single-sector extents split a request
/// into one segment per sector.
pub const MAX_SEGMENTS: usize = MAX_BLOCK_SECTORS as usize;
/// The most bytes of memory image a hypercall frame carries, reported as the channel's
/// `max_call_bytes` ([`shared_abi::wire::LimitsArgs`]).
pub const MAX_IMAGE_BYTES: usize = MAX_PAYLOAD - core::mem::size_of::<HypercallRequest>();

/// How the embedder sends a frame on the port: kind, sequence, payload in parts.
pub type SendFrame<'a> = dyn FnMut(FrameKind, u32, &[&[u8]]) + 'a;

/// The embedder's disks, by device number, in bytes.
pub trait BlockDevices {
    /// Fill `buffer` from `device` at byte `offset`.
    fn read(&mut self, device: DeviceNumber, offset: u64, buffer: &mut [u8]) -> Result<(), Error>;
    /// Write `data` to `device` at byte `offset`.
    fn write(&mut self, device: DeviceNumber, offset: u64, data: &[u8]) -> Result<(), Error>;
}

/// One port's serving state: whose port it is, and the embedder's buffers.
pub struct Port<'a, 't, B: BlockDevices> {
    /// The domain this port speaks for.
    pub domain: u32,
    /// This start of the hypervisor, reported in every Ready notice.
    pub start_id: u64,
    pub context: &'a IoContext<'t>,
    pub disks: &'a mut B,
    /// At least [`MAX_BLOCK_BYTES`], for read data.
    pub buffer: &'a mut [u8],
    /// At least [`MAX_SEGMENTS`].
    pub segments: &'a mut [Segment],
}

/// What serving a frame did beyond replying to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// A domain whose VBDs changed, to be sent a [`change_notice`].
    pub changed: Option<Changed>,
    /// A domain dom0 destroyed: its port now serves a fresh domain.
    pub destroyed: Option<u32>,
    /// dom0 asked the hypervisor to stop.
    pub shutdown: bool,
    /// The disks failed a block request (answered with `EIO`).
    pub io_error: bool,
}

/// The notice a port sends when it starts serving, and in answer to a peer's `Ready`.
pub fn ready_notice(domain: u32, start_id: u64) -> ReadyNotice {
    ReadyNotice {
        domain,
        abi_version: ABI_VERSION,
        start_id,
    }
}

/// The notice to send a domain whose VBDs changed.
pub fn change_notice(changed: Changed) -> ChangeNotice {
    ChangeNotice {
        domain: changed.domain,
        _reserved: 0,
        generation: changed.generation,
    }
}

/// The payload of a `Reject` frame: the errno of a frame the transport found malformed.
pub fn reject_payload(error: Error) -> BlockResponse {
    BlockResponse {
        result: error.to_wire(),
    }
}

impl<const DOMAINS: usize, const VBDS: usize, const EXTENTS: usize, const DISKS: usize>
    VbdTable<DOMAINS, VBDS, EXTENTS, DISKS>
{
    /// Serve one well-formed frame that arrived on `port`, replying through `send` (kind,
    /// sequence, payload parts). A hypercall that removed or moved extents is answered only
    /// after its fence is complete, waiting with `relax` between checks. Nothing a peer
    /// sends makes this panic; every request gets a reply.
    pub fn serve_frame<B: BlockDevices>(
        &self,
        port: &mut Port<'_, '_, B>,
        kind: FrameKind,
        sequence: u32,
        payload: &mut [u8],
        relax: &mut dyn FnMut(),
        send: &mut SendFrame<'_>,
    ) -> Served {
        let reject = |send: &mut SendFrame<'_>, error: Error| {
            send(
                FrameKind::Reject,
                sequence,
                &[reject_payload(error).as_bytes()],
            );
        };
        match kind {
            FrameKind::HypercallRequest => {
                self.serve_hypercall(port, sequence, payload, relax, send)
            }
            FrameKind::BlockRead => self.serve_block(port, sequence, Access::Read, payload, send),
            FrameKind::BlockWrite => self.serve_block(port, sequence, Access::Write, payload, send),
            FrameKind::Shutdown if port.domain == DOM0 => Served {
                shutdown: true,
                ..Served::default()
            },
            FrameKind::Shutdown => {
                reject(send, Error::PermissionDenied);
                Served::default()
            }
            // A peer opens every connection this way: the reply names its domain and ABI.
            FrameKind::Ready if payload.is_empty() => {
                let notice = ready_notice(port.domain, port.start_id);
                send(FrameKind::Ready, sequence, &[notice.as_bytes()]);
                Served::default()
            }
            FrameKind::Ready => {
                reject(send, Error::InvalidArgument);
                Served::default()
            }
            // Kinds only the hypervisor sends: a peer sending one speaks another protocol.
            FrameKind::HypercallResponse
            | FrameKind::BlockResponse
            | FrameKind::ChangeNotice
            | FrameKind::Reject => {
                reject(send, Error::NotImplemented);
                Served::default()
            }
        }
    }

    /// Run a hypercall with the frame's memory image as the caller's memory, and send the
    /// image back as far as the call wrote into it, once its fence is complete: the rest
    /// is still what the caller sent, so a set-extents of a megabyte of extents is answered
    /// with its forty bytes of arguments, not the megabyte again.
    fn serve_hypercall<B: BlockDevices>(
        &self,
        port: &Port<'_, '_, B>,
        sequence: u32,
        payload: &mut [u8],
        relax: &mut dyn FnMut(),
        send: &mut SendFrame<'_>,
    ) -> Served {
        let mut reply = |result: i64, image: &[u8]| {
            let response = HypercallResponse { result };
            send(
                FrameKind::HypercallResponse,
                sequence,
                &[response.as_bytes(), image],
            );
        };
        let Ok((request, _)) = HypercallRequest::read_from_prefix(payload) else {
            reply(Error::InvalidArgument.to_wire(), &[]);
            return Served::default();
        };
        let image = &mut payload[core::mem::size_of::<HypercallRequest>()..];
        if let Err(error) = request.validate() {
            reply(error.to_wire(), &[]);
            return Served::default();
        }
        let mut memory = SliceMemory::with_call_limit(image, MAX_IMAGE_BYTES as u64);
        let outcome = self.dispatch(
            port.domain,
            request.op,
            GuestAddress(request.args_address),
            &mut memory,
        );
        let written = memory.written_end();
        if let Some(fence) = outcome.fence {
            fence.wait(&mut *relax);
        }
        reply(outcome.result, &image[..written]);
        let destroyed = (request.op == Op::DestroyDomain as u32 && outcome.result >= 0)
            .then_some(outcome.changed)
            .flatten()
            .map(|changed| changed.domain);
        Served {
            changed: outcome.changed,
            destroyed,
            ..Served::default()
        }
    }

    /// Serve a block read or write and reply with its result (and a read's data).
    fn serve_block<B: BlockDevices>(
        &self,
        port: &mut Port<'_, '_, B>,
        sequence: u32,
        access: Access,
        payload: &[u8],
        send: &mut SendFrame<'_>,
    ) -> Served {
        let result = self.block_transfer(port, access, payload);
        let response = BlockResponse {
            result: match result {
                Ok(_) => 0,
                Err(error) => error.to_wire(),
            },
        };
        let data = match (access, result) {
            (Access::Read, Ok(bytes)) => &port.buffer[..bytes],
            _ => &[][..],
        };
        send(
            FrameKind::BlockResponse,
            sequence,
            &[response.as_bytes(), data],
        );
        Served {
            io_error: result == Err(Error::Io),
            ..Served::default()
        }
    }

    /// Check the request, translate it for the port's domain, and move the data transfer
    /// by transfer while the translation is held. Returns the bytes moved.
    fn block_transfer<B: BlockDevices>(
        &self,
        port: &mut Port<'_, '_, B>,
        access: Access,
        payload: &[u8],
    ) -> Result<usize, Error> {
        let (head, data) =
            BlockRequest::read_from_prefix(payload).map_err(|_| Error::InvalidArgument)?;
        let (vdevice, request) = Request::from_frame(&head, access, data.len())?;
        let bytes = usize::try_from(request.bytes()).map_err(|_| Error::TooBig)?;
        if bytes > port.buffer.len() {
            return Err(Error::TooBig);
        }
        let id = VbdId {
            domain: port.domain,
            vdevice,
        };
        let (disks, buffer) = (&mut *port.disks, &mut *port.buffer);
        self.transfer(
            port.context,
            id.into(),
            &request,
            &mut *port.segments,
            [bytes],
            |transfer| {
                let range = transfer.buffer_offset..transfer.buffer_offset + transfer.length;
                match access {
                    Access::Read => {
                        let buffer = buffer.get_mut(range).ok_or(Error::OutOfRange)?;
                        disks.read(transfer.device, transfer.disk_offset, buffer)
                    }
                    Access::Write => {
                        let chunk = data.get(range).ok_or(Error::OutOfRange)?;
                        disks.write(transfer.device, transfer.disk_offset, chunk)
                    }
                }
            },
        )?;
        Ok(bytes)
    }
}
