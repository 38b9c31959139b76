//! The transmission phase: one request at a time, each checked (magic, command, flags,
//! alignment, size) before any I/O, answered with a simple reply carrying an errno or, once
//! negotiated, structured chunks.
//!
//! A bad request magic, or a write too large to take in, ends the connection: the stream
//! cannot be trusted to be in step any more. Every other bad request gets `EINVAL`, `EPERM`,
//! `ENOSPC` or `ENOTSUP` and the connection goes on.

use std::io::{self, Read, Write};

use hv_vbd::{Access, VbdRef};

use super::allocation::{descriptors, read_runs, with_runs, Piece, MAX_STATUS_RUNS};
use super::handshake::{Negotiated, BASE_ALLOCATION_ID, MAXIMUM_REQUEST};
use super::reply::Replies;
use super::request::{Command, Offered, Request, RequestError};
use super::wire::*;
use super::Target;
use crate::block::BlockContext;
use crate::disks::{DiskIo, Release};
use crate::vbd::Translator;

/// What a request that succeeded answers.
enum Answer {
    Done,
    /// The read's buffer, as data and hole pieces (none: all of it data).
    Read(Vec<Piece>),
    Status(Vec<(u32, u32)>),
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
    let replies = Replies {
        structured: export.structured_replies,
    };
    let mut buffer = Vec::new();
    while let Some(request) = Request::read(stream)? {
        if request.command == CMD_DISC {
            return Ok(());
        }
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
        let handle = request.handle;
        match execute(&mut block, &vbd, export.offered(), &request, &mut buffer) {
            Ok(Answer::Done) => replies.done(stream, handle)?,
            Ok(Answer::Read(pieces)) => {
                replies.read(stream, handle, request.offset, &buffer, &pieces)?
            }
            Ok(Answer::Status(descriptors)) => {
                replies.block_status(stream, handle, BASE_ALLOCATION_ID, &descriptors)?
            }
            Err(error) => replies.error(
                stream,
                handle,
                error.errno(request.writes()),
                &error.to_string(),
            )?,
        }
    }
    Ok(())
}

fn execute(
    block: &mut BlockContext<'_>,
    vbd: &VbdRef,
    offered: Offered,
    request: &Request,
    buffer: &mut Vec<u8>,
) -> Result<Answer, RequestError> {
    match request.check(offered)? {
        Command::Read { sector, whole } => {
            buffer.resize(request.length as usize, 0);
            if whole || !offered.structured_replies {
                block.read(vbd, sector, buffer)?;
                return Ok(Answer::Read(Vec::new()));
            }
            let count = u64::from(request.length) / shared_abi::SECTOR_SIZE;
            let io = &block.io;
            let pieces = with_runs(
                block.translator,
                io,
                vbd,
                (sector, count),
                usize::MAX,
                |runs| read_runs(io, runs, buffer),
            )?;
            return Ok(Answer::Read(pieces));
        }
        Command::Write { sector } => block.write(vbd, sector, buffer)?,
        Command::Flush => block.flush(vbd)?,
        Command::Trim { sector, count } => block.release(vbd, sector, count, Release::Discard)?,
        Command::WriteZeroes {
            sector,
            count,
            may_unmap,
            fast: false,
        } => block.release(vbd, sector, count, Release::WriteZeroes { may_unmap })?,
        Command::WriteZeroes {
            sector,
            count,
            may_unmap,
            fast: true,
        } => zero_in_place(block, vbd, (sector, count), may_unmap)?,
        Command::Cache { sector, count } => prefetch(block, vbd, (sector, count))?,
        Command::BlockStatus { sector, count, one } => {
            let io = &block.io;
            let mut status = with_runs(
                block.translator,
                io,
                vbd,
                (sector, count),
                MAX_STATUS_RUNS,
                |runs| Ok(descriptors(runs)),
            )?;
            if one {
                status.truncate(1);
            }
            return Ok(Answer::Status(status));
        }
    }
    // FUA asks that what the command wrote be durable before the reply; a command that
    // wrote nothing has nothing to make durable.
    if request.flags & CMD_FLAG_FUA != 0 && request.writes() {
        block.flush(vbd)?;
    }
    Ok(Answer::Done)
}

/// Zero the range without writing zeros (`NBD_CMD_FLAG_FAST_ZERO`): `ENOTSUP` from the
/// first disk that could only write them, so the client zeroes its own way instead.
fn zero_in_place(
    block: &mut BlockContext<'_>,
    vbd: &VbdRef,
    (sector, count): (u64, u64),
    may_unmap: bool,
) -> Result<(), RequestError> {
    let request = hv_vbd::Request::new(Access::Write, sector, count)?;
    let io = &block.io;
    let whole = [request.bytes() as usize];
    block.translator.transfer(vbd, &request, whole, |transfer| {
        io.disks
            .find(transfer.device)
            .and_then(|disk| {
                disk.release(
                    transfer.disk_offset,
                    transfer.length as u64,
                    Release::ZeroesInPlace { may_unmap },
                )
            })
            .map_err(|failure| match failure.kind() {
                io::ErrorKind::Unsupported => RequestError::SlowZeroes,
                _ => RequestError::Refused(io.failed(failure)),
            })
    })
}

/// `NBD_CMD_CACHE`: have the range read ahead into the page cache. Only advice, so a disk
/// that does not take it changes nothing; the range is checked like a read's.
fn prefetch(
    block: &mut BlockContext<'_>,
    vbd: &VbdRef,
    (sector, count): (u64, u64),
) -> Result<(), RequestError> {
    let request = hv_vbd::Request::new(Access::Read, sector, count)?;
    let disks = block.io.disks;
    let whole = [request.bytes() as usize];
    block
        .translator
        .transfer(vbd, &request, whole, |transfer| {
            if let Ok(disk) = disks.find(transfer.device) {
                let _advice_only = disk.prefetch(transfer.disk_offset, transfer.length as u64);
            }
            Ok::<(), shared_abi::Error>(())
        })?;
    Ok(())
}
