//! Serving one frame of dom0's control channel: hypercalls through hv-vbd's dispatch, block
//! reads and writes through the adapter, and the Ready handshake.
//!
//! This is the logic of the test hypervisor's `server.rs` for its dom0 port, over the same
//! `VbdTable::dispatch` and translation. Issue 8 moves "serve a frame" into hv-vbd as one
//! no_std function that both embeddings call; this module then becomes a call to it. The
//! caller is always dom0: control.sock is dom0's channel, whatever a frame says.

use shared_abi::frame::{FrameHeader, FrameKind, MAX_BLOCK_SECTORS};
use shared_abi::wire::{
    BlockRequest, BlockResponse, HypercallRequest, HypercallResponse, ReadyNotice,
};
use shared_abi::{DeviceNumber, Error, ABI_VERSION, DOM0, SECTOR_SIZE};
use zerocopy::{FromBytes, IntoBytes};

use crate::buffered::BlockContext;
use crate::vbd::{VbdRef, WalkError};

/// What serving one frame produced.
#[derive(Debug, Default)]
pub struct Served {
    /// The encoded reply frame, if the frame gets one.
    pub reply: Option<Vec<u8>>,
    /// A domain whose VBDs changed: its sockets must be brought up to date.
    pub changed: Option<u32>,
    /// dom0 asked the backend to stop.
    pub shutdown: bool,
}

/// Encode a frame whose payload is the concatenation of `payload`. Every reply built here
/// fits in a frame (a block read is at most `MAX_BLOCK_SECTORS`), so an encoding failure is
/// answered with a `Reject` instead.
pub fn encode(kind: FrameKind, sequence: u32, payload: &[&[u8]]) -> Vec<u8> {
    match FrameHeader::for_payload(kind, sequence, payload) {
        Ok(header) => {
            let mut frame = header.to_bytes().to_vec();
            payload
                .iter()
                .for_each(|part| frame.extend_from_slice(part));
            frame
        }
        Err(error) => reject(sequence, error.errno()),
    }
}

/// A `Reject` frame carrying `error`.
pub fn reject(sequence: u32, error: Error) -> Vec<u8> {
    let response = BlockResponse {
        result: error.to_wire(),
    };
    let payload = response.as_bytes();
    let mut frame = FrameHeader::for_payload(FrameKind::Reject, sequence, &[payload])
        .map(|header| header.to_bytes().to_vec())
        .unwrap_or_default();
    frame.extend_from_slice(payload);
    frame
}

/// Serve one well-formed frame from dom0.
pub fn serve(block: &mut BlockContext<'_>, header: FrameHeader, payload: &mut [u8]) -> Served {
    let sequence = header.sequence;
    let reply = |frame: Vec<u8>| Served {
        reply: Some(frame),
        ..Served::default()
    };
    match header.kind {
        FrameKind::HypercallRequest => hypercall(block, sequence, payload),
        FrameKind::BlockRead => reply(block_reply(sequence, read(block, payload))),
        FrameKind::BlockWrite => reply(block_reply(
            sequence,
            write(block, payload).map(|()| Vec::new()),
        )),
        FrameKind::Shutdown => Served {
            shutdown: true,
            ..Served::default()
        },
        FrameKind::Ready if payload.is_empty() => {
            let notice = ReadyNotice {
                domain: DOM0,
                abi_version: ABI_VERSION,
            };
            reply(encode(FrameKind::Ready, sequence, &[notice.as_bytes()]))
        }
        FrameKind::Ready => reply(reject(sequence, Error::InvalidArgument)),
        // Kinds only the hypervisor sends: a peer sending one speaks another protocol.
        FrameKind::HypercallResponse
        | FrameKind::BlockResponse
        | FrameKind::ChangeNotice
        | FrameKind::Reject => reply(reject(sequence, Error::NotImplemented)),
    }
}

/// Run a hypercall with the frame's memory image as dom0's memory and send the image back
/// as the call left it.
fn hypercall(block: &mut BlockContext<'_>, sequence: u32, payload: &mut [u8]) -> Served {
    let respond = |result: i64, image: &[u8]| {
        let response = HypercallResponse { result };
        encode(
            FrameKind::HypercallResponse,
            sequence,
            &[response.as_bytes(), image],
        )
    };
    let Ok((request, _)) = HypercallRequest::read_from_prefix(payload) else {
        return Served {
            reply: Some(respond(Error::InvalidArgument.to_wire(), &[])),
            ..Served::default()
        };
    };
    let image = &mut payload[size_of::<HypercallRequest>()..];
    if let Err(error) = request.validate() {
        return Served {
            reply: Some(respond(error.to_wire(), image)),
            ..Served::default()
        };
    }
    let outcome = block.table.dispatch(
        DOM0,
        request.op,
        hv_vbd::GuestAddress(request.args_address),
        &mut hv_vbd::SliceMemory::new(image),
    );
    Served {
        reply: Some(respond(outcome.result, image)),
        changed: outcome.changed.map(|changed| changed.domain),
        shutdown: false,
    }
}

fn block_reply(sequence: u32, result: Result<Vec<u8>, Error>) -> Vec<u8> {
    let (response, data) = match result {
        Ok(data) => (BlockResponse { result: 0 }, data),
        Err(error) => (
            BlockResponse {
                result: error.to_wire(),
            },
            Vec::new(),
        ),
    };
    encode(
        FrameKind::BlockResponse,
        sequence,
        &[response.as_bytes(), &data],
    )
}

/// The request head of a block frame, its VBD and its data, checked against each other.
fn block_request(payload: &[u8], with_data: bool) -> Result<(VbdRef, u64, usize, &[u8]), Error> {
    let (request, data) =
        BlockRequest::read_from_prefix(payload).map_err(|_| Error::InvalidArgument)?;
    if request.nr_sectors > MAX_BLOCK_SECTORS {
        return Err(Error::TooBig);
    }
    let bytes = request.nr_sectors as usize * SECTOR_SIZE as usize;
    if data.len() != if with_data { bytes } else { 0 } {
        return Err(Error::InvalidArgument);
    }
    let vbd = VbdRef {
        domain: DOM0,
        vdevice: DeviceNumber::from_raw(request.vdevice),
    };
    Ok((vbd, request.sector, bytes, data))
}

fn read(block: &mut BlockContext<'_>, payload: &[u8]) -> Result<Vec<u8>, Error> {
    let (vbd, sector, bytes, _) = block_request(payload, false)?;
    let mut buffer = vec![0u8; bytes];
    block.read(vbd, sector, &mut buffer).map_err(wire_error)?;
    Ok(buffer)
}

fn write(block: &mut BlockContext<'_>, payload: &[u8]) -> Result<(), Error> {
    let (vbd, sector, _, data) = block_request(payload, true)?;
    block.write(vbd, sector, data).map_err(wire_error)
}

/// A refused request keeps its errno; a failed disk is `EIO`, logged since dom0 sees no more.
fn wire_error(error: WalkError<std::io::Error>) -> Error {
    match error {
        WalkError::Refused(error) => error,
        WalkError::Failed(failure) => {
            eprintln!("vbd-backend: control: disk I/O failed: {failure}");
            Error::Io
        }
    }
}
