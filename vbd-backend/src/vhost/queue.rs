//! What a queue thread does with its virtqueue: pop every available chain, parse and
//! translate each, submit the reads of all of them together on the thread's io_uring
//! (straight from the disks into guest memory), and complete each chain as its I/O finishes,
//! signalling the guest once per round of completions rather than per request.
//!
//! Each read keeps its hv-vbd [`Translation`] (its in-flight registration) until every piece
//! of its I/O has completed, so a change that removes its extents is answered only after
//! that. A request's failure (a disk error, a short read, a bad buffer) is its own status
//! byte; the others of the batch go on.
//!
//! Writes run at once with `pwrite` on the queue thread, beside the reads in flight (io_uring
//! does not pay for buffered writes here: [`crate::uring`]). Flush, discard and write-zeroes
//! run after every request popped before them has completed, as they did when requests ran
//! one at a time. A read whose translation has more pieces than a batch slot holds, and every
//! read when the kernel gives no io_uring, runs on its own with `pread` ([`crate::sys`]).

use std::io;

use hv_vbd::{Access, Segment, Translation, VbdRef};
use shared_abi::Error;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_OK};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use super::device::{DeviceTarget, Memory, QUEUE_SIZE};
use super::request::{GuestBuffer, Operation, Range, Request, RequestError};
use super::ResumedRings;
use crate::block::BlockContext;
use crate::disks::{Disk, DiskIo, Release};
use crate::sys;
use crate::uring::{self, Batch, Ring};
use crate::vbd::Translator;

/// Segments a batched request may translate into; one that needs more runs on its own.
const SLOT_SEGMENTS: usize = 32;

/// The guest memory of one connection, as the queue threads map it.
type Mapped = GuestMemoryMmap<()>;

/// One queue thread's I/O state, claimed at its first request.
pub struct QueueWorker {
    /// `None`: no I/O context was free, and this queue's requests fail.
    translator: Option<Translator>,
    /// `None`: the kernel gave no io_uring; transfers run one at a time.
    ring: Option<Ring>,
    /// A segment buffer per request of a batch, each held by its request's translation.
    slots: Vec<Vec<Segment>>,
}

/// What a queue's requests are served against.
pub struct QueueTarget<'a> {
    pub target: &'a DeviceTarget,
    pub resumed: &'a ResumedRings,
}

/// A popped chain, once parsed and checked.
enum Admitted {
    /// Complete at once with this used length.
    Done(u32),
    /// A request that may run.
    Run(Request),
}

/// A read of the batch whose I/O is in flight.
struct Pending<'s> {
    head: u16,
    status: GuestAddress,
    /// The data bytes the read fills in the guest.
    input: u32,
    /// I/O submissions not yet completed.
    transfers: usize,
    error: Option<RequestError>,
    /// Held until the last transfer completed: the registration a fence waits for.
    translation: Option<Translation<'s, 'static>>,
}

impl QueueWorker {
    pub fn new(target: &DeviceTarget, queue: u16) -> QueueWorker {
        let translator = Some(Translator::new(target.shared.table));
        let ring = Ring::new(u32::from(QUEUE_SIZE))
            .map_err(|error| {
                eprintln!(
                    "vbd-backend: {}: queue {queue} has no io_uring ({error}): its reads and writes run one at a time",
                    target.name
                )
            })
            .ok();
        QueueWorker {
            translator,
            ring,
            slots: Vec::new(),
        }
    }

    /// Serve every available request of `vring`, in batches, until none is left.
    pub fn serve(
        &mut self,
        queue: &QueueTarget<'_>,
        vring: &VringRwLock<Memory>,
        memory: &Mapped,
    ) -> io::Result<()> {
        if self.slots.len() < usize::from(QUEUE_SIZE) {
            self.slots.resize(
                usize::from(QUEUE_SIZE),
                vec![Segment::default(); SLOT_SEGMENTS],
            );
        }
        let QueueWorker {
            translator,
            ring,
            slots,
        } = self;
        let mut round = Round {
            queue,
            vring,
            memory,
            translator: translator.as_mut(),
            completed: false,
            pieces: Pieces::default(),
        };
        loop {
            let more = match ring {
                Some(ring) => ring.batch(|batch| round.batch(batch, slots.iter_mut()))?,
                None => round.one_at_a_time()?,
            };
            if !more {
                return Ok(());
            }
        }
    }
}

/// One pass over the available ring.
struct Round<'a, 'q> {
    queue: &'a QueueTarget<'q>,
    vring: &'a VringRwLock<Memory>,
    memory: &'a Mapped,
    translator: Option<&'a mut Translator>,
    /// Whether a chain was completed since the last signal.
    completed: bool,
    /// The read being gathered into one transfer, kept for its room.
    pieces: Pieces<'a>,
}

impl<'a> Round<'a, '_> {
    fn pop(&self) -> Option<virtio_queue::DescriptorChain<&'a Mapped>> {
        self.vring
            .get_mut()
            .get_queue_mut()
            .pop_descriptor_chain(self.memory)
    }

    fn used(&mut self, head: u16, length: u32) -> io::Result<()> {
        self.vring
            .add_used(head, length)
            .map_err(|error| io::Error::other(format!("cannot complete a request: {error:?}")))?;
        self.completed = true;
        Ok(())
    }

    /// Tell the guest about the chains completed since the last time, if it wants to know.
    fn signal(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.completed)
            && self
                .vring
                .needs_notification()
                .map_err(|error| io::Error::other(format!("{error:?}")))?
        {
            self.vring.signal_used_queue()?;
        }
        Ok(())
    }

    /// Write the status byte and complete the chain.
    fn complete(
        &mut self,
        head: u16,
        status: GuestAddress,
        result: Result<u32, RequestError>,
    ) -> io::Result<()> {
        let (code, written) = match result {
            Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
            Err(error) => (error.status(), 0),
        };
        // The status address was checked in parsing; if the guest unmapped it since, there is
        // nothing more to tell it.
        let _ = self.memory.write_obj(code, status);
        self.used(head, written.saturating_add(1))
    }

    /// Serve requests one at a time until the ring is empty; `false`: nothing more to do.
    fn one_at_a_time(&mut self) -> io::Result<bool> {
        while let Some(chain) = self.pop() {
            let head = chain.head_index();
            let used = serve_chain(
                self.queue,
                chain,
                self.memory,
                self.translator.as_deref_mut(),
            );
            self.used(head, used)?;
        }
        self.signal()?;
        Ok(false)
    }

    /// Pop chains until the ring is empty or every slot holds a read, submit the reads
    /// together, and complete them all. `true` when it stopped for want of slots, with
    /// chains possibly left in the ring.
    fn batch<'s>(
        &mut self,
        batch: &mut Batch<'_, 'a>,
        slots: impl Iterator<Item = &'s mut Vec<Segment>>,
    ) -> io::Result<bool> {
        let mut pending: Vec<Pending<'s>> = Vec::new();
        let mut slots = slots.peekable();
        // A slot per read: once they are used up, this batch is full.
        while slots.peek().is_some() {
            let Some(chain) = self.pop() else {
                break;
            };
            let head = chain.head_index();
            let request = match admit(self.queue, chain, self.memory, self.translator.is_some()) {
                Admitted::Done(used) => {
                    self.used(head, used)?;
                    continue;
                }
                Admitted::Run(request) => request,
            };
            match (&request.operation, slots.peek()) {
                (Operation::Read { sector, buffers }, Some(_)) => {
                    let slot = slots.next().expect("peeked");
                    let token = pending.len();
                    if let Some(started) =
                        self.submit(batch, token, (head, request.status), *sector, buffers, slot)?
                    {
                        pending.push(started);
                    }
                }
                // Writes need not wait for the reads in flight: virtio orders no two requests
                // the guest has in flight together.
                (Operation::Write { .. }, _) => {
                    let result = self.execute(&request.operation);
                    self.complete(head, request.status, result)?;
                }
                // A flush covers what completed before it, so the batch completes first.
                _ => {
                    self.finish(batch, &mut pending)?;
                    let result = self.execute(&request.operation);
                    self.complete(head, request.status, result)?;
                }
            }
        }
        let full = slots.peek().is_none();
        self.finish(batch, &mut pending)?;
        Ok(full)
    }

    /// Translate the read of `buffers` from `sector` into `slot` and queue its transfers as
    /// request `token`. Returns the request while its I/O is in flight; `None` once it has
    /// been completed here (refused, or run on its own).
    fn submit<'s>(
        &mut self,
        batch: &mut Batch<'_, 'a>,
        token: usize,
        chain: (u16, GuestAddress),
        sector: u64,
        buffers: &[GuestBuffer],
        slot: &'s mut [Segment],
    ) -> io::Result<Option<Pending<'s>>> {
        let (head, status) = chain;
        let Some(translator) = self.translator.as_deref_mut() else {
            let refused = Err(RequestError::Refused(Error::NoSpace));
            return self.completed(head, status, refused);
        };
        let total: u64 = buffers.iter().map(|buffer| u64::from(buffer.length)).sum();
        let translated =
            hv_vbd::Request::from_bytes(Access::Read, sector, total).and_then(|hv_request| {
                translator.translate_into(&self.queue.target.vbd, &hv_request, slot)
            });
        let translation = match translated {
            Ok(translation) => translation,
            Err(Error::TooBig) => {
                // More pieces than a slot holds: on its own, with a buffer that grows.
                let result = transfer_alone(
                    self.queue,
                    Access::Read,
                    sector,
                    buffers,
                    self.memory,
                    translator,
                );
                return self.completed(head, status, result);
            }
            Err(error) => return self.completed(head, status, Err(error.into())),
        };
        let mut request = Pending {
            head,
            status,
            // At most `u32::MAX - 1`: parsing bounds a request's data.
            input: total as u32,
            transfers: 0,
            error: None,
            translation: None,
        };
        self.pieces.clear();
        let walked = each_slice(
            self.queue,
            &translation,
            buffers,
            self.memory,
            |disk, offset, slice| {
                if !self.pieces.extends(disk, offset) {
                    self.queue_pieces(batch, token, &mut request);
                    self.pieces.start(disk, offset);
                }
                self.pieces.push(slice, offset + slice.len() as u64);
                Ok(())
            },
        );
        if let Err(error) = walked {
            request.error = Some(error);
        }
        if request.error.is_none() {
            self.queue_pieces(batch, token, &mut request);
        }
        request.translation = Some(translation);
        if request.transfers == 0 {
            let result = request.error.map_or(Ok(request.input), Err);
            return self.completed(head, status, result);
        }
        Ok(Some(request))
    }

    /// Queue the read `pieces` gathered (one contiguous run of one disk) as one transfer.
    fn queue_pieces(&mut self, batch: &mut Batch<'_, 'a>, token: usize, request: &mut Pending<'_>) {
        let Some((disk, offset)) = self.pieces.start.take() else {
            return;
        };
        match batch.read(token as u64, disk.file(), offset, &self.pieces.slices) {
            Ok(()) => request.transfers += 1,
            Err(error) => request.error = Some(self.failed(error)),
        }
        self.pieces.slices.clear();
    }

    /// Carry out a request on its own, at once.
    fn execute(&mut self, operation: &Operation) -> Result<u32, RequestError> {
        execute(
            self.queue,
            operation,
            self.memory,
            self.translator.as_deref_mut(),
        )
    }

    /// Complete a request at once; there is then nothing left in flight for it.
    fn completed<'s>(
        &mut self,
        head: u16,
        status: GuestAddress,
        result: Result<u32, RequestError>,
    ) -> io::Result<Option<Pending<'s>>> {
        self.complete(head, status, result).map(|()| None)
    }

    /// Wait for every transfer of the batch, completing each request once its last one has,
    /// and signal the guest after every round of completions.
    fn finish(
        &mut self,
        batch: &mut Batch<'_, 'a>,
        pending: &mut Vec<Pending<'_>>,
    ) -> io::Result<()> {
        while batch.in_flight() > 0 {
            for (token, result) in batch.finish_some()? {
                let Some(request) = pending.get_mut(token as usize) else {
                    continue;
                };
                if let Err(error) = result {
                    request.error = Some(self.failed(error));
                }
                request.transfers -= 1;
                if request.transfers == 0 {
                    // Every piece is done: the fence may pass before the guest hears of it.
                    request.translation = None;
                    let result = request.error.map_or(Ok(request.input), Err);
                    let (head, status) = (request.head, request.status);
                    self.complete(head, status, result)?;
                }
            }
            self.signal()?;
        }
        pending.clear();
        self.signal()
    }

    fn failed(&self, failure: io::Error) -> RequestError {
        failed(self.queue, failure)
    }
}

/// Consecutive slices of one transfer in the making: one disk, contiguous offsets.
#[derive(Default)]
struct Pieces<'m> {
    /// The disk and the offset of the first slice.
    start: Option<(&'m Disk, u64)>,
    /// The offset just past the last slice.
    end: u64,
    slices: Vec<vm_memory::VolatileSlice<'m>>,
}

impl<'m> Pieces<'m> {
    /// Whether a slice of `disk` at `offset` continues this transfer.
    fn extends(&self, disk: &Disk, offset: u64) -> bool {
        self.start
            .is_some_and(|(start, _)| std::ptr::eq(start, disk))
            && self.end == offset
            && self.slices.len() < uring::MAX_SLICES
    }

    /// Forget what was gathered, keeping the room for it.
    fn clear(&mut self) {
        self.start = None;
        self.slices.clear();
    }

    fn start(&mut self, disk: &'m Disk, offset: u64) {
        self.start = Some((disk, offset));
    }

    fn push(&mut self, slice: vm_memory::VolatileSlice<'m>, end: u64) {
        self.slices.push(slice);
        self.end = end;
    }
}

/// Parse a chain and check the request may run.
fn admit<M: GuestMemoryBackend>(
    queue: &QueueTarget<'_>,
    chain: impl IntoIterator<Item = Descriptor>,
    memory: &M,
    has_context: bool,
) -> Admitted {
    let request = match Request::parse(chain, memory, usize::from(QUEUE_SIZE)) {
        Ok(request) => request,
        Err(rejected) => {
            return match rejected.status {
                Some(status) => refuse(memory, status, rejected.error),
                // Nowhere to say what went wrong: complete it empty.
                None => Admitted::Done(0),
            };
        }
    };
    if let Err(error) = check(queue, has_context) {
        return refuse(memory, request.status, error);
    }
    Admitted::Run(request)
}

/// Write `error`'s status; the chain is complete with only that byte.
fn refuse<M: GuestMemoryBackend>(
    memory: &M,
    status: GuestAddress,
    error: RequestError,
) -> Admitted {
    let _ = memory.write_obj(error.status(), status);
    Admitted::Done(1)
}

/// Whether a request may run at all: not once stopping, not on a resumed ring, not without
/// an I/O context.
fn check(queue: &QueueTarget<'_>, has_context: bool) -> Result<(), RequestError> {
    if queue.target.shared.stopping() {
        return Err(RequestError::Stopping);
    }
    if queue.resumed.any() {
        return Err(RequestError::Resumed);
    }
    if !has_context {
        return Err(RequestError::Refused(Error::NoSpace));
    }
    Ok(())
}

/// Serve one chain on its own and return the used length.
fn serve_chain(
    queue: &QueueTarget<'_>,
    chain: impl IntoIterator<Item = Descriptor>,
    memory: &Mapped,
    translator: Option<&mut Translator>,
) -> u32 {
    let request = match admit(queue, chain, memory, translator.is_some()) {
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
fn execute(
    queue: &QueueTarget<'_>,
    operation: &Operation,
    memory: &Mapped,
    translator: Option<&mut Translator>,
) -> Result<u32, RequestError> {
    let translator = translator.ok_or(RequestError::Refused(Error::NoSpace))?;
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
/// blocking `pread`/`pwrite`, each piece at its translated offset, while the translation is
/// held. Returns the bytes written to the guest.
fn transfer_alone(
    queue: &QueueTarget<'_>,
    access: Access,
    sector: u64,
    buffers: &[GuestBuffer],
    memory: &Mapped,
    translator: &mut Translator,
) -> Result<u32, RequestError> {
    let total: u64 = buffers.iter().map(|buffer| u64::from(buffer.length)).sum();
    let request = hv_vbd::Request::from_bytes(access, sector, total)?;
    translator.with(&queue.target.vbd, &request, |translation| {
        each_slice(
            queue,
            translation,
            buffers,
            memory,
            |disk, offset, slice| {
                match access {
                    Access::Read => sys::read_exact_at(disk.file(), offset, &slice),
                    Access::Write => disk.write_guest_at(offset, &slice),
                }
                .map_err(|error| failed(queue, error))
            },
        )
    })??;
    Ok(match access {
        // At most `u32::MAX - 1`: parsing bounds a request's data.
        Access::Read => total as u32,
        Access::Write => 0,
    })
}

/// Walk `translation` over the guest's `buffers`, calling `each` with every slice of guest
/// memory, the disk it goes to or comes from and its offset there, in order; the first
/// error ends the walk.
fn each_slice<'m>(
    queue: &'m QueueTarget<'_>,
    translation: &Translation<'_, '_>,
    buffers: &[GuestBuffer],
    memory: &'m Mapped,
    mut each: impl FnMut(&'m Disk, u64, VolatileSlice<'m>) -> Result<(), RequestError>,
) -> Result<(), RequestError> {
    let lengths = buffers.iter().map(|buffer| buffer.length as usize);
    translation.transfers(lengths).try_for_each(|transfer| {
        let transfer = transfer?;
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
    })
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

fn release(
    queue: &QueueTarget<'_>,
    vbd: &VbdRef,
    ranges: &[Range],
    translator: &mut Translator,
    how: impl Fn(&Range) -> Release,
) -> Result<u32, RequestError> {
    let mut block = block(queue, translator);
    for range in ranges {
        block.release(vbd, range.sector, u64::from(range.nr_sectors), how(range))?;
    }
    Ok(0)
}

/// A disk failed: log it, since the guest learns no more than `VIRTIO_BLK_S_IOERR`.
fn failed(queue: &QueueTarget<'_>, failure: io::Error) -> RequestError {
    eprintln!(
        "vbd-backend: {}: disk I/O failed: {failure}",
        queue.target.name
    );
    RequestError::Io
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use std::io::Write;
    use std::time::{Duration, Instant};

    use crate::disks::tests::{a_disk_on_a_pipe, two_disks};
    use crate::service::Shared;
    use crate::vbd::tests::{create, empty_table, xvda};
    use shared_abi::DOM0;
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};

    /// `dom1/xvda.sock`, writable, serving `vd:1`: the first 8 sectors of `disks`' first
    /// disk, in a fresh table.
    fn vd_1_on(disks: crate::disks::Disks) -> DeviceTarget {
        let table = empty_table();
        let vbd = create(table, xvda(1), &[(0, 0, 8)], true, "vd:1");
        DeviceTarget {
            shared: Arc::new(Shared::new(table, disks, 1, 1)),
            vbd,
            writable: true,
            serial: "vd:1".into(),
            name: "dom1/xvda.sock".into(),
        }
    }

    /// Where a hand-made split virtqueue of 16 entries and its one read request live.
    const DESCRIPTORS: u64 = 0x0;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;
    const HEADER: u64 = 0x3000;
    const STATUS: u64 = 0x3100;
    const DATA: u64 = 0x4000;

    /// A ring of 16 entries holding one chain: a read of sector 0 into 512 bytes at `DATA`.
    fn a_ring_with_one_read(memory: &GuestMemoryAtomic<Mapped>) -> VringRwLock<Memory> {
        let guest = memory.memory();
        let descriptors = [
            (HEADER, 16, VRING_DESC_F_NEXT, 1u16),
            (DATA, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2),
            (STATUS, 1, VRING_DESC_F_WRITE, 0),
        ];
        for (index, (address, length, flags, next)) in descriptors.into_iter().enumerate() {
            let at = DESCRIPTORS + 16 * index as u64;
            guest.write_obj(address, GuestAddress(at)).unwrap();
            guest
                .write_obj(length as u32, GuestAddress(at + 8))
                .unwrap();
            guest
                .write_obj(flags as u16, GuestAddress(at + 12))
                .unwrap();
            guest.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        let mut header = VIRTIO_BLK_T_IN.to_le_bytes().to_vec();
        header.extend_from_slice(&[0; 12]);
        guest.write_slice(&header, GuestAddress(HEADER)).unwrap();
        guest.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        // The avail ring: no flags, one entry, chain 0.
        guest.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
        guest.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
        let vring = VringRwLock::new(memory.clone(), QUEUE_SIZE).unwrap();
        vring.set_queue_size(16);
        vring.set_queue_info(DESCRIPTORS, AVAIL, USED).unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        vring
    }

    /// What one attempt saw: whether the delete's fence had passed while the read was held
    /// in flight, and the read's status and first byte once it was let go.
    struct Seen {
        passed_while_in_flight: bool,
        status: u8,
        first_byte: u8,
    }

    /// Serve one read from a disk on a pipe on the ring path, delete the VBD while the read
    /// waits for the pipe, then let the read finish. (Only the ring can read a pipe at an
    /// offset; `pread` is `ESPIPE`, so the path without io_uring is not tested this way.)
    fn delete_during_a_read_on_the_ring() -> Seen {
        let (disks, mut pipe) = a_disk_on_a_pipe();
        let target = vd_1_on(disks);
        let table = target.shared.table;
        let resumed = ResumedRings::default();
        let queue = QueueTarget {
            target: &target,
            resumed: &resumed,
        };
        let memory =
            GuestMemoryAtomic::new(Mapped::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
        let vring = a_ring_with_one_read(&memory);
        std::thread::scope(|scope| {
            let server = scope.spawn(|| {
                let mut worker = QueueWorker::new(&target, 0);
                assert!(worker.ring.is_some(), "this kernel gives an io_uring");
                worker.serve(&queue, &vring, &memory.memory())
            });
            // Popped, and then (as long as a thread takes to translate and submit) in flight.
            let deadline = Instant::now() + Duration::from_secs(10);
            while vring.get_ref().get_queue().next_avail() == 0 {
                assert!(Instant::now() < deadline, "the queue thread never popped");
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(100));
            let removal = table.delete(DOM0, xvda(1)).unwrap();
            let passed_while_in_flight = removal.fence.is_complete();
            pipe.write_all(&[0x5a; 512]).unwrap();
            server.join().unwrap().unwrap();
            assert!(removal.fence.is_complete(), "the read has completed");
            let guest = memory.memory();
            Seen {
                passed_while_in_flight,
                status: guest.read_obj(GuestAddress(STATUS)).unwrap(),
                first_byte: guest.read_obj(GuestAddress(DATA)).unwrap(),
            }
        })
    }

    #[test]
    fn a_delete_is_not_answered_while_a_read_translated_before_it_is_in_flight_on_the_ring() {
        for _ in 0..3 {
            let seen = delete_during_a_read_on_the_ring();
            if seen.status == VIRTIO_BLK_S_IOERR as u8 {
                // The delete came before the queue thread translated the read (a thread
                // descheduled for 100 ms): the read was refused, as it must be. Again.
                assert!(seen.passed_while_in_flight);
                continue;
            }
            assert_eq!(
                (seen.status, seen.first_byte),
                (VIRTIO_BLK_S_OK as u8, 0x5a),
                "the read got the disk's bytes"
            );
            assert!(
                !seen.passed_while_in_flight,
                "the delete's fence passed while a read it had to wait for was in flight"
            );
            return;
        }
        panic!("the queue thread never translated its read within 100 ms of popping it");
    }

    #[test]
    fn requests_without_a_context_or_once_stopping_fail_and_touch_nothing() {
        let (_directory, disks) = two_disks();
        let target = vd_1_on(disks);
        let (table, shared) = (target.shared.table, target.shared.clone());
        let resumed = ResumedRings::default();
        let queue = QueueTarget {
            target: &target,
            resumed: &resumed,
        };
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut header = VIRTIO_BLK_T_OUT.to_le_bytes().to_vec();
        header.extend_from_slice(&[0; 12]);
        memory.write_slice(&header, GuestAddress(0x100)).unwrap();
        let chain = || {
            vec![
                Descriptor::new(0x100, 16, 0, 0),
                Descriptor::new(0x1000, 512, 0, 0),
                Descriptor::new(0x80, 1, VRING_DESC_F_WRITE as u16, 0),
            ]
        };
        let status = || memory.read_obj::<u8>(GuestAddress(0x80)).unwrap();
        let on_disk = || {
            let mut sector = [0u8; 512];
            shared
                .disks
                .iter()
                .next()
                .unwrap()
                .read_exact_at(&mut sector, 0)
                .unwrap();
            sector[0]
        };
        let mut translator = Translator::new(table);
        memory
            .write_slice(&[0xab; 512], GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            serve_chain(&queue, chain(), &memory, Some(&mut translator)),
            1
        );
        assert_eq!((status(), on_disk()), (VIRTIO_BLK_S_OK as u8, 0xab));

        memory
            .write_slice(&[0xcd; 512], GuestAddress(0x1000))
            .unwrap();
        assert_eq!(serve_chain(&queue, chain(), &memory, None), 1);
        assert_eq!((status(), on_disk()), (VIRTIO_BLK_S_IOERR as u8, 0xab));

        shared.stop();
        memory.write_obj(0xffu8, GuestAddress(0x80)).unwrap();
        assert_eq!(
            serve_chain(&queue, chain(), &memory, Some(&mut translator)),
            1
        );
        assert_eq!((status(), on_disk()), (VIRTIO_BLK_S_IOERR as u8, 0xab));
    }
}
