//! Execution of one request on its own, at once: reads and writes with blocking
//! `preadv`/`pwritev` while the translation is held, and the operations without guest data.

use std::io;

use hv_vbd::{Access, Transfer, Translation, VbdRef};
use shared_abi::Error;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_OK};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestMemoryBackend, VolatileSlice};

use super::admit::{admit, Admitted};
use super::{Mapped, QueueTarget};
use crate::block::BlockContext;
use crate::disks::{Disk, DiskIo, Release};
use crate::sys;
use crate::uring;
use crate::vbd::{vbd_state, Translator};
use crate::vhost::request::{GuestBuffer, Operation, Range, RequestError};

/// Serve one chain on its own and return the used length.
pub(super) fn serve_chain(
    queue: &QueueTarget<'_>,
    chain: impl IntoIterator<Item = Descriptor>,
    memory: &Mapped,
    translator: &mut Translator,
) -> u32 {
    let request = match admit(queue, chain, memory) {
        Admitted::Done(used) => return used,
        Admitted::Run(request) => request,
    };
    let result = execute(queue, &request.operation, memory, translator);
    let (code, written) = match result {
        Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
        Err(error) => (error.status(), 0),
    };
    let _ = memory.write_obj(code, request.status);
    written.saturating_add(1)
}

/// Carry out a request that moves no data between guest memory and the disks, or only
/// the serial; returns the data bytes written to the guest.
pub(super) fn execute(
    queue: &QueueTarget<'_>,
    operation: &Operation,
    memory: &Mapped,
    translator: &mut Translator,
) -> Result<u32, RequestError> {
    let vbd = &queue.target.vbd;
    match operation {
        Operation::Read { sector, buffers } => {
            transfer_alone(queue, Access::Read, *sector, buffers, memory, translator)
        }
        Operation::Write { sector, buffers } => {
            transfer_alone(queue, Access::Write, *sector, buffers, memory, translator)
        }
        Operation::Flush => {
            block(queue, translator).flush(vbd)?;
            Ok(0)
        }
        Operation::GetId { buffers } => {
            crate::vbd::vbd_state(queue.target.shared.table, vbd)?;
            Ok(write_id(queue, buffers, memory))
        }
        Operation::Discard { ranges } => {
            release(queue, vbd, ranges, translator, |_| Release::Discard)
        }
        Operation::WriteZeroes { ranges } => release(queue, vbd, ranges, translator, |range| {
            Release::WriteZeroes {
                may_unmap: range.unmap,
            }
        }),
    }
}

/// Move a read's or write's data straight between the guest's buffers and the disks with
/// blocking `preadv`/`pwritev`, one for each run of slices that lie end to end on one disk,
/// while the translation is held. Returns the bytes written to the guest.
pub(super) fn transfer_alone(
    queue: &QueueTarget<'_>,
    access: Access,
    sector: u64,
    buffers: &[GuestBuffer],
    memory: &Mapped,
    translator: &mut Translator,
) -> Result<u32, RequestError> {
    let total = request_bytes(buffers);
    let request = hv_vbd::Request::from_bytes(access, sector, total)?;
    let lengths = buffers.iter().map(|buffer| buffer.length as usize);
    let mut run = Pieces::default();
    let mut left = total;
    translator.transfer(&queue.target.vbd, &request, lengths, |transfer| {
        left = left.saturating_sub(transfer.length as u64);
        transfer_slices(
            queue,
            transfer,
            buffers,
            memory,
            &mut |disk, offset, slice| {
                if !run.extends(disk, offset) {
                    move_run(queue, access, &mut run)?;
                    run.start(disk, offset);
                }
                run.push(slice, offset + slice.len() as u64);
                Ok(())
            },
        )?;
        // The translation is held only while transfers are handed out: the last run moves
        // before the last of them returns.
        if left == 0 {
            move_run(queue, access, &mut run)?;
        }
        Ok::<(), RequestError>(())
    })?;
    // hv-vbd's transfers cover the request exactly, so the last run moved in the last of
    // them; one still gathered here would be data never moved.
    if !run.is_empty() {
        return Err(failed(
            queue,
            io::Error::other("a request's transfers fell short of its data"),
        ));
    }
    Ok(match access {
        // At most `u32::MAX - 1`: parsing bounds a request's data.
        Access::Read => total as u32,
        Access::Write => 0,
    })
}

/// The data bytes of a read's or write's buffers.
pub(super) fn request_bytes(buffers: &[GuestBuffer]) -> u64 {
    buffers.iter().map(|buffer| u64::from(buffer.length)).sum()
}

/// Move the data of the slices gathered in `run`, if any, and empty it.
fn move_run(
    queue: &QueueTarget<'_>,
    access: Access,
    run: &mut Pieces<'_>,
) -> Result<(), RequestError> {
    run.take(|disk, offset, slices| match access {
        Access::Read => sys::read_exact_vectored_at(disk.file(), offset, slices),
        Access::Write => disk.write_guest_at(offset, slices),
    })
    .unwrap_or(Ok(()))
    .map_err(|error| failed(queue, error))
}

/// Walk `translation` over the guest's `buffers`, calling `each` with every slice of guest
/// memory, the disk it goes to or comes from and its offset there, in order; the first
/// error ends the walk.
pub(super) fn each_slice<'m>(
    queue: &'m QueueTarget<'_>,
    translation: &Translation<'_, '_>,
    buffers: &[GuestBuffer],
    memory: &'m Mapped,
    mut each: impl FnMut(&'m Disk, u64, VolatileSlice<'m>) -> Result<(), RequestError>,
) -> Result<(), RequestError> {
    let lengths = buffers.iter().map(|buffer| buffer.length as usize);
    translation
        .transfers(lengths)
        .try_for_each(|transfer| transfer_slices(queue, transfer?, buffers, memory, &mut each))
}

/// Call `each` with the slices of guest memory one transfer covers, the disk it goes to
/// or comes from and its offset there, in order; the first error ends the walk.
fn transfer_slices<'m>(
    queue: &'m QueueTarget<'_>,
    transfer: Transfer,
    buffers: &[GuestBuffer],
    memory: &'m Mapped,
    each: &mut impl FnMut(&'m Disk, u64, VolatileSlice<'m>) -> Result<(), RequestError>,
) -> Result<(), RequestError> {
    // Inside a buffer that parsing checked against guest memory.
    let address = buffers
        .get(transfer.buffer)
        .and_then(|buffer| buffer.address.checked_add(transfer.buffer_offset as u64))
        .ok_or(RequestError::BadGuestAddress)?;
    let disk = queue
        .target
        .shared
        .disks
        .find(transfer.device)
        .map_err(|error| failed(queue, error))?;
    let mut offset = transfer.disk_offset;
    for slice in memory.get_slices(address, transfer.length) {
        let slice = slice.map_err(|_| RequestError::BadGuestAddress)?;
        let length = slice.len() as u64;
        each(disk, offset, slice)?;
        offset += length;
    }
    Ok(())
}

/// Consecutive slices of one transfer in the making: one disk, contiguous offsets.
#[derive(Default)]
pub(super) struct Pieces<'m> {
    /// The disk and the offset of the first slice.
    start: Option<(&'m Disk, u64)>,
    /// The offset just past the last slice.
    end: u64,
    slices: Vec<VolatileSlice<'m>>,
}

impl<'m> Pieces<'m> {
    /// Whether a slice of `disk` at `offset` continues this transfer.
    pub(super) fn extends(&self, disk: &Disk, offset: u64) -> bool {
        self.start
            .is_some_and(|(start, _)| std::ptr::eq(start, disk))
            && self.end == offset
            && self.slices.len() < uring::MAX_SLICES
    }

    /// Forget what was gathered, keeping the room for it.
    pub(super) fn clear(&mut self) {
        self.start = None;
        self.slices.clear();
    }

    pub(super) fn start(&mut self, disk: &'m Disk, offset: u64) {
        self.start = Some((disk, offset));
    }

    pub(super) fn push(&mut self, slice: VolatileSlice<'m>, end: u64) {
        self.slices.push(slice);
        self.end = end;
    }

    /// Whether no run is gathered.
    pub(super) fn is_empty(&self) -> bool {
        self.start.is_none()
    }

    /// The bytes of the run gathered: from its first slice's offset to just past its last.
    pub(super) fn bytes(&self) -> u64 {
        self.start.map_or(0, |(_, offset)| self.end - offset)
    }

    /// Hand the run gathered, if any, to `each` (its disk, its offset and its slices) and
    /// empty it.
    pub(super) fn take<R>(
        &mut self,
        each: impl FnOnce(&'m Disk, u64, &[VolatileSlice<'m>]) -> R,
    ) -> Option<R> {
        let (disk, offset) = self.start.take()?;
        let result = each(disk, offset, &self.slices);
        self.slices.clear();
        Some(result)
    }
}

/// The operations without guest data, on this thread's translator.
fn block<'a>(queue: &'a QueueTarget<'_>, translator: &'a mut Translator) -> BlockContext<'a> {
    BlockContext {
        translator,
        io: DiskIo {
            disks: &queue.target.shared.disks,
            channel: &queue.target.name,
        },
    }
}

/// Write the serial, NUL-padded to `VIRTIO_BLK_ID_BYTES` and cut to the buffers.
fn write_id<M: GuestMemoryBackend>(
    queue: &QueueTarget<'_>,
    buffers: &[GuestBuffer],
    memory: &M,
) -> u32 {
    let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
    let serial = queue.target.serial.as_bytes();
    let count = serial.len().min(id.len());
    id[..count].copy_from_slice(&serial[..count]);
    let mut written = 0usize;
    for buffer in buffers {
        let count = (buffer.length as usize).min(id.len() - written);
        if count == 0
            || memory
                .write_slice(&id[written..written + count], buffer.address)
                .is_err()
        {
            break;
        }
        written += count;
    }
    written as u32
}

/// Sectors one step of a discard or write-zeroes releases under its own translation: a
/// change of the VBD waits for one step at most (1 MiB of zeros written, where the disk
/// cannot zero in place), never for a whole request.
pub(super) const RELEASE_STEP_SECTORS: u64 = 2048;

/// Discard or zero `ranges` in steps of [`RELEASE_STEP_SECTORS`], after checking every
/// range lies inside the VBD, so that a request refused changes nothing.
fn release(
    queue: &QueueTarget<'_>,
    vbd: &VbdRef,
    ranges: &[Range],
    translator: &mut Translator,
    how: impl Fn(&Range) -> Release,
) -> Result<u32, RequestError> {
    let size = vbd_state(queue.target.shared.table, vbd)?.size_sectors;
    let inside = |range: &Range| {
        range
            .sector
            .checked_add(u64::from(range.nr_sectors))
            .is_some_and(|end| end <= size)
    };
    if !ranges.iter().all(inside) {
        return Err(RequestError::Refused(Error::OutOfRange));
    }
    let mut block = block(queue, translator);
    for range in ranges {
        let end = range.sector + u64::from(range.nr_sectors);
        let mut sector = range.sector;
        while sector < end {
            let count = (end - sector).min(RELEASE_STEP_SECTORS);
            block.release(vbd, sector, count, how(range))?;
            sector += count;
        }
    }
    Ok(0)
}

/// A disk failed: log it, since the guest learns no more than `VIRTIO_BLK_S_IOERR`.
pub(super) fn failed(queue: &QueueTarget<'_>, failure: io::Error) -> RequestError {
    eprintln!(
        "vbd-backend: {}: disk I/O failed: {failure}",
        queue.target.name
    );
    RequestError::Io
}
