//! The transmission phase: one request at a time, each checked (magic, command, flags,
//! alignment, size) before any I/O, answered with a simple reply carrying an errno.
//!
//! A bad request magic, or a write too large to take in, ends the connection: the stream
//! cannot be trusted to be in step any more. Every other bad request gets `EINVAL`, `EPERM`
//! or `ENOSPC` and the connection goes on.

use std::io::{self, Read, Write};

use hv_vbd::VbdRef;
use shared_abi::{Error, SECTOR_SIZE};

use super::handshake::{Negotiated, MAXIMUM_REQUEST};
use super::wire::*;
use super::Target;
use crate::block::BlockContext;
use crate::disks::{DiskIo, Release};
use crate::vbd::Translator;

/// Why a request failed.
#[derive(Debug)]
enum RequestError {
    /// A flag the command does not take, or that was not advertised.
    UnknownFlags,
    /// A command this server does not offer.
    UnknownCommand,
    /// Offset or length not whole sectors, a zero length, or data on a command without.
    Malformed,
    /// Longer than the advertised maximum.
    TooLarge,
    /// A change to a read-only export.
    ReadOnly,
    /// The table refused the request (`ENOENT` once the VBD is gone), or the disk failed
    /// (`EIO`, logged where it happened).
    Refused(Error),
}

impl RequestError {
    /// The errno of the reply. Exhaustive, with no `_` arm: a new error needs a decision.
    fn errno(&self, writes: bool) -> u32 {
        match self {
            RequestError::UnknownFlags
            | RequestError::UnknownCommand
            | RequestError::Malformed
            | RequestError::TooLarge => EINVAL,
            RequestError::ReadOnly => EPERM,
            RequestError::Refused(error) => match error {
                Error::ReadOnly | Error::PermissionDenied | Error::AccessDenied => EPERM,
                // Past the end: the protocol asks for ENOSPC on writes, EINVAL otherwise.
                Error::OutOfRange if writes => ENOSPC,
                Error::OutOfRange | Error::InvalidArgument | Error::TooBig => EINVAL,
                Error::NotFound
                | Error::NoDevice
                | Error::Io
                | Error::BadAddress
                | Error::Busy
                | Error::AlreadyExists
                | Error::NoSpace
                | Error::NotImplemented
                | Error::Stale => EIO,
            },
        }
    }
}

impl From<Error> for RequestError {
    fn from(error: Error) -> RequestError {
        RequestError::Refused(error)
    }
}

/// One request header, as sent.
struct Request {
    flags: u16,
    command: u16,
    handle: u64,
    offset: u64,
    length: u32,
}

fn read_request(stream: &mut impl Read) -> io::Result<Option<Request>> {
    let mut header = [0u8; 28];
    // A clean end of the stream between requests is the client leaving without DISC.
    let mut filled = 0;
    while filled < header.len() {
        match stream.read(&mut header[filled..])? {
            0 if filled == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            count => filled += count,
        }
    }
    let field = |range: std::ops::Range<usize>| &header[range];
    if u32::from_be_bytes(field(0..4).try_into().unwrap_or_default()) != REQUEST_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad request magic",
        ));
    }
    Ok(Some(Request {
        flags: u16::from_be_bytes([header[4], header[5]]),
        command: u16::from_be_bytes([header[6], header[7]]),
        handle: u64::from_be_bytes(field(8..16).try_into().unwrap_or_default()),
        offset: u64::from_be_bytes(field(16..24).try_into().unwrap_or_default()),
        length: u32::from_be_bytes(field(24..28).try_into().unwrap_or_default()),
    }))
}

fn reply(stream: &mut impl Write, handle: u64, error: u32, data: &[u8]) -> io::Result<()> {
    let mut message = Vec::with_capacity(16 + data.len());
    message
        .put_u32(SIMPLE_REPLY_MAGIC)
        .put_u32(error)
        .put_u64(handle);
    stream.write_all(&message)?;
    stream.write_all(data)
}

/// The whole sectors `request` covers: `(first sector, count)`.
fn sectors(request: &Request) -> Result<(u64, u64), RequestError> {
    let length = u64::from(request.length);
    if length == 0 || length % SECTOR_SIZE != 0 || !request.offset.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::Malformed);
    }
    if request.length > MAXIMUM_REQUEST {
        return Err(RequestError::TooLarge);
    }
    Ok((request.offset / SECTOR_SIZE, length / SECTOR_SIZE))
}

fn check_flags(request: &Request, allowed: u16) -> Result<(), RequestError> {
    if request.flags & !allowed != 0 {
        Err(RequestError::UnknownFlags)
    } else {
        Ok(())
    }
}

/// Serve requests until the client disconnects. Each request's disk I/O is done (and its
/// translation released) before its reply is sent, so a client that stops reading holds up
/// no change of the table.
pub fn serve<S: Read + Write>(
    stream: &mut S,
    target: &Target,
    translator: &mut Translator,
    export: Negotiated,
) -> io::Result<()> {
    let vbd = target.vbd;
    let channel = format!("dom0/{}.nbd", target.name);
    let mut block = BlockContext {
        translator,
        io: DiskIo {
            disks: &target.shared.disks,
            channel: &channel,
        },
    };
    let mut buffer = Vec::new();
    while let Some(request) = read_request(stream)? {
        if request.command == CMD_DISC {
            return Ok(());
        }
        let writes = matches!(request.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
        if request.command == CMD_WRITE {
            // The data follows whatever the verdict; one too large to take in ends the
            // connection, since the stream could not be kept in step.
            if request.length > MAXIMUM_REQUEST {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "write larger than advertised",
                ));
            }
            buffer.resize(request.length as usize, 0);
            stream.read_exact(&mut buffer)?;
        }
        match execute(&mut block, &vbd, export, &request, &mut buffer) {
            Ok(()) if request.command == CMD_READ => reply(stream, request.handle, 0, &buffer)?,
            Ok(()) => reply(stream, request.handle, 0, &[])?,
            Err(error) => reply(stream, request.handle, error.errno(writes), &[])?,
        }
    }
    Ok(())
}

fn execute(
    block: &mut BlockContext<'_>,
    vbd: &VbdRef,
    export: Negotiated,
    request: &Request,
    buffer: &mut Vec<u8>,
) -> Result<(), RequestError> {
    let changes = matches!(request.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if changes && !export.writable {
        return Err(RequestError::ReadOnly);
    }
    match request.command {
        CMD_READ => {
            check_flags(request, 0)?;
            let (sector, _) = sectors(request)?;
            buffer.resize(request.length as usize, 0);
            block.read(vbd, sector, buffer)?;
        }
        CMD_WRITE => {
            check_flags(request, CMD_FLAG_FUA)?;
            let (sector, _) = sectors(request)?;
            block.write(vbd, sector, buffer)?;
        }
        CMD_FLUSH => {
            check_flags(request, 0)?;
            if request.offset != 0 || request.length != 0 {
                return Err(RequestError::Malformed);
            }
            block.flush(vbd)?;
            return Ok(());
        }
        CMD_TRIM => {
            check_flags(request, CMD_FLAG_FUA)?;
            let (sector, count) = trim_sectors(request)?;
            block.release(vbd, sector, count, Release::Discard)?;
        }
        CMD_WRITE_ZEROES => {
            check_flags(request, CMD_FLAG_FUA | CMD_FLAG_NO_HOLE)?;
            let (sector, count) = trim_sectors(request)?;
            let may_unmap = request.flags & CMD_FLAG_NO_HOLE == 0;
            block.release(vbd, sector, count, Release::WriteZeroes { may_unmap })?;
        }
        _ => return Err(RequestError::UnknownCommand),
    }
    if request.flags & CMD_FLAG_FUA != 0 {
        block.flush(vbd)?;
    }
    Ok(())
}

/// Trim and write-zeroes carry no data, so they may exceed the transfer limit.
fn trim_sectors(request: &Request) -> Result<(u64, u64), RequestError> {
    let length = u64::from(request.length);
    if length == 0 || length % SECTOR_SIZE != 0 || !request.offset.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::Malformed);
    }
    Ok((request.offset / SECTOR_SIZE, length / SECTOR_SIZE))
}
