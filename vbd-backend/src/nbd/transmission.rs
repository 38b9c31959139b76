//! The transmission phase: one request at a time, each checked (magic, command, flags,
//! alignment, size) before any I/O, answered with a simple reply carrying an errno.
//!
//! A bad request magic, or a write too large to take in, ends the connection: the stream
//! cannot be trusted to be in step any more. Every other bad request gets `EINVAL`, `EPERM`
//! or `ENOSPC` and the connection goes on.

use std::io::{self, Read, Write};

use hv_vbd::VbdRef;

use super::handshake::{Negotiated, MAXIMUM_REQUEST};
use super::request::{Command, Request, RequestError};
use super::wire::*;
use super::Target;
use crate::block::BlockContext;
use crate::disks::{DiskIo, Release};
use crate::vbd::Translator;

fn reply(stream: &mut impl Write, handle: u64, error: u32, data: &[u8]) -> io::Result<()> {
    let mut message = Vec::with_capacity(16 + data.len());
    message
        .put_u32(SIMPLE_REPLY_MAGIC)
        .put_u32(error)
        .put_u64(handle);
    stream.write_all(&message)?;
    stream.write_all(data)
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
    while let Some(request) = Request::read(stream)? {
        if request.command == CMD_DISC {
            return Ok(());
        }
        let writes = request.writes();
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
    match request.check(export.writable, MAXIMUM_REQUEST)? {
        Command::Read { sector } => {
            buffer.resize(request.length as usize, 0);
            block.read(vbd, sector, buffer)?;
        }
        Command::Write { sector } => block.write(vbd, sector, buffer)?,
        Command::Flush => {
            block.flush(vbd)?;
            return Ok(());
        }
        Command::Trim { sector, count } => block.release(vbd, sector, count, Release::Discard)?,
        Command::WriteZeroes {
            sector,
            count,
            may_unmap,
        } => block.release(vbd, sector, count, Release::WriteZeroes { may_unmap })?,
    }
    if request.flags & CMD_FLAG_FUA != 0 {
        block.flush(vbd)?;
    }
    Ok(())
}
