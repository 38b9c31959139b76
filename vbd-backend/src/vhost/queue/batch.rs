//! Batching: the reads of every chain popped in one pass go on the io_uring together,
//! each gathered into as few transfers as its translation allows, and each completed once
//! its last transfer has. The first half of a large read's bytes, over however many disks
//! and extents, is copied by io_uring's workers while the queue thread copies the rest, so
//! one large request does not wait for one core's copy. A large write over several disks
//! likewise: io_uring's workers write what goes to the disk its first run is on while the
//! queue thread writes the rest (the kernel writes one file's data one write at a time, so
//! a write to one disk gains nothing from a second thread).

use std::io;

use hv_vbd::{Access, Segment, Translation};
use shared_abi::Error;
use vm_memory::GuestAddress;

use super::admit::{admit, Admitted};
use super::execute::{each_slice, request_bytes, transfer_alone};
use super::Round;
use crate::disks::Disk;
use crate::uring::Batch;
use crate::vhost::device::QUEUE_SIZE;
use crate::vhost::request::{GuestBuffer, Operation, RequestError};

/// Segments a batched request may translate into; one that needs more runs on its own.
pub(super) const SLOT_SEGMENTS: usize = 32;

/// Reads one batch submits before it waits for them all, so that a batch ends.
const BATCH_READS: usize = QUEUE_SIZE as usize;

/// Reads of at least this many bytes have their first half copied by io_uring's workers, and
/// writes this large over several disks have one disk's part written there. Smaller ones
/// are copied faster than a worker wakes.
const SPLIT_BYTES: u64 = 256 << 10;

/// How many bytes of a read's transfer go to io_uring's workers: the part of the read's
/// first half ([`SPLIT_BYTES`] or more in all, `total`) that the transfers queued before it
/// (`queued` bytes) have not taken.
fn to_workers(total: u64, queued: u64) -> u64 {
    if total < SPLIT_BYTES {
        return 0;
    }
    (total / 2).saturating_sub(queued)
}

/// A read or write of the batch whose I/O is in flight. Its in-flight registrations belong
/// to its transfers on the ring ([`crate::uring`]), so none is let go before the kernel is
/// done, whichever way the batch ends.
struct Pending<'a> {
    head: u16,
    status: GuestAddress,
    /// The data bytes a read fills in the guest; 0 for a write.
    input: u32,
    /// For a write, the disk its part on the ring goes to, which a failure there may mark
    /// as having lost writes.
    writing_to: Option<&'a Disk>,
    /// I/O submissions not yet completed.
    transfers: usize,
    /// Bytes of the read its transfers queued so far.
    queued: u64,
    error: Option<RequestError>,
}

impl Pending<'_> {
    /// A request of `chain` (its head and status byte) filling `input` bytes of the guest's
    /// memory, nothing of it in flight yet.
    fn new(chain: (u16, GuestAddress), input: u32) -> Self {
        let (head, status) = chain;
        Pending {
            head,
            status,
            input,
            writing_to: None,
            transfers: 0,
            queued: 0,
            error: None,
        }
    }
}

impl<'a> Round<'a, '_> {
    /// Pop chains until the ring is empty or [`BATCH_READS`] reads were popped, submit the
    /// reads together, and complete them all. `true` when it stopped at that bound, with
    /// chains possibly left in the ring. An error is the ring's own, never a request's.
    pub(super) fn batch(
        &mut self,
        batch: &mut Batch<'_, 'a>,
        segments: &mut [Segment],
    ) -> io::Result<bool> {
        let mut pending = Vec::new();
        let mut reads = 0;
        while reads < BATCH_READS {
            let Some(chain) = self.pop() else {
                break;
            };
            let head = chain.head_index();
            let request = match admit(self.queue, chain, self.memory) {
                Admitted::Done(used) => {
                    self.used(head, used);
                    continue;
                }
                Admitted::Run(request) => request,
            };
            match &request.operation {
                Operation::Read { sector, buffers } => {
                    reads += 1;
                    let token = pending.len();
                    let chain = (head, request.status);
                    if let Some(started) =
                        self.submit(batch, token, chain, *sector, buffers, segments)
                    {
                        pending.push(started);
                    }
                }
                // Writes need not wait for the reads in flight: virtio orders no two requests
                // the guest has in flight together.
                Operation::Write { sector, buffers } if request_bytes(buffers) >= SPLIT_BYTES => {
                    let token = pending.len();
                    let chain = (head, request.status);
                    if let Some(started) =
                        self.submit_write(batch, token, chain, *sector, buffers, segments)
                    {
                        pending.push(started);
                    }
                }
                Operation::Write { .. } => {
                    let result = self.execute(&request.operation);
                    self.complete(head, request.status, result);
                }
                // A flush covers what completed before it, so the batch completes first.
                _ => {
                    self.finish(batch, &mut pending)?;
                    let result = self.execute(&request.operation);
                    self.complete(head, request.status, result);
                }
            }
        }
        self.finish(batch, &mut pending)?;
        Ok(reads == BATCH_READS)
    }

    /// Translate the read or write of `buffers` (`total` bytes) at `sector` into `segments`.
    /// `None` once the
    /// request has been completed here instead: refused by the translation, or run on its
    /// own ([`transfer_alone`], with a buffer that grows) for having more pieces than a slot
    /// holds.
    fn translate<'s>(
        &mut self,
        access: Access,
        chain: (u16, GuestAddress),
        sector: u64,
        total: u64,
        buffers: &[GuestBuffer],
        segments: &'s mut [Segment],
    ) -> Option<Translation<'s, 'static>> {
        let (head, status) = chain;
        let translated = hv_vbd::Request::from_bytes(access, sector, total).and_then(|request| {
            (self.translator).translate_into(&self.queue.target.vbd, &request, segments)
        });
        let result = match translated {
            Ok(translation) => return Some(translation),
            Err(Error::TooBig) => transfer_alone(
                self.queue,
                access,
                sector,
                buffers,
                self.memory,
                self.translator,
            ),
            Err(error) => Err(error.into()),
        };
        self.complete(head, status, result);
        None
    }

    /// Translate the read of `buffers` from `sector` into `segments` and queue its
    /// transfers as request `token`, each holding a registration of the translation.
    /// Returns the request while its I/O is in flight; `None` once it has been completed
    /// here (refused, or run on its own).
    fn submit(
        &mut self,
        batch: &mut Batch<'_, 'a>,
        token: usize,
        chain: (u16, GuestAddress),
        sector: u64,
        buffers: &[GuestBuffer],
        segments: &mut [Segment],
    ) -> Option<Pending<'a>> {
        let total = request_bytes(buffers);
        let translation = self.translate(Access::Read, chain, sector, total, buffers, segments)?;
        // At most `u32::MAX - 1`: parsing bounds a request's data.
        let mut request = Pending::new(chain, total as u32);
        let walked = self.each_run(&translation, buffers, |round| {
            round.queue_pieces(batch, token, &mut request, &translation)
        });
        // The transfers queued hold registrations of their own; this one may go.
        drop(translation);
        self.started(request, walked)
    }

    /// Translate the large write of `buffers` to `sector` into `segments`; when they lie on
    /// more than one disk, queue the runs bound for the first one's disk on the ring as
    /// request `token` and write the others at once. Returns the request while its part on
    /// the ring is in flight; `None` once it has been completed here.
    fn submit_write(
        &mut self,
        batch: &mut Batch<'_, 'a>,
        token: usize,
        chain: (u16, GuestAddress),
        sector: u64,
        buffers: &[GuestBuffer],
        segments: &mut [Segment],
    ) -> Option<Pending<'a>> {
        let total = request_bytes(buffers);
        let translation = self.translate(Access::Write, chain, sector, total, buffers, segments)?;
        let ring_device = match translation.segments() {
            [first, rest @ ..] if rest.iter().any(|other| other.device != first.device) => {
                Some(first.device)
            }
            _ => None,
        };
        let mut request = Pending::new(chain, 0);
        let walked = self.each_run(&translation, buffers, |round| {
            round.write_pieces(batch, token, &mut request, &translation, ring_device)
        });
        drop(translation);
        self.started(request, walked)
    }

    /// Walk `translation` over the guest's `buffers`, gathering in [`Round::pieces`] the
    /// slices that lie end to end on one disk, and call `run` to take each run gathered;
    /// the first error ends the walk.
    fn each_run(
        &mut self,
        translation: &Translation<'_, 'static>,
        buffers: &[GuestBuffer],
        mut run: impl FnMut(&mut Self) -> Result<(), RequestError>,
    ) -> Result<(), RequestError> {
        self.pieces.clear();
        let (queue, memory) = (self.queue, self.memory);
        each_slice(
            queue,
            translation,
            buffers,
            memory,
            |disk, offset, slice| {
                if !self.pieces.extends(disk, offset) {
                    run(self)?;
                    self.pieces.start(disk, offset);
                }
                self.pieces.push(slice, offset + slice.len() as u64);
                Ok(())
            },
        )?;
        run(self)
    }

    /// `request` once its walk has `walked`: in flight, or, when none of its transfers is,
    /// completed here (`None`).
    fn started(
        &mut self,
        mut request: Pending<'a>,
        walked: Result<(), RequestError>,
    ) -> Option<Pending<'a>> {
        if let Err(error) = walked {
            request.error = Some(error);
        }
        if request.transfers > 0 {
            return Some(request);
        }
        let result = request.error.map_or(Ok(request.input), Err);
        self.complete(request.head, request.status, result);
        None
    }

    /// Write the `pieces` gathered (one contiguous run of one disk): on the ring when they
    /// go to `ring_device`, holding a registration of `translation` until the kernel is
    /// done; otherwise at once. The first error ends the request's walk.
    fn write_pieces(
        &mut self,
        batch: &mut Batch<'_, 'a>,
        token: usize,
        request: &mut Pending<'a>,
        translation: &Translation<'_, 'static>,
        ring_device: Option<shared_abi::DeviceNumber>,
    ) -> Result<(), RequestError> {
        let written = self.pieces.take(|disk, offset, slices| {
            if ring_device != Some(disk.device) {
                return disk.write_guest_at(offset, slices);
            }
            let registration = translation.registration();
            disk.file_to_write()
                .and_then(|file| batch.write(token as u64, file, offset, slices, registration))?;
            request.writing_to = Some(disk);
            request.transfers += 1;
            Ok(())
        });
        written
            .unwrap_or(Ok(()))
            .map_err(|error| self.failed(error))
    }

    /// Queue the read `pieces` gathered (one contiguous run of one disk) as one transfer,
    /// which holds a registration of `translation` until the kernel has finished it.
    fn queue_pieces(
        &mut self,
        batch: &mut Batch<'_, 'a>,
        token: usize,
        request: &mut Pending<'a>,
        translation: &Translation<'_, 'static>,
    ) -> Result<(), RequestError> {
        let workers = to_workers(u64::from(request.input), request.queued);
        request.queued += self.pieces.bytes();
        let queued = self.pieces.take(|disk, offset, slices| {
            let registration = translation.registration();
            batch.read(
                token as u64,
                disk.file(),
                offset,
                slices,
                registration,
                workers,
            )
        });
        match queued {
            Some(Ok(())) => request.transfers += 1,
            Some(Err(error)) => return Err(self.failed(error)),
            None => {}
        }
        Ok(())
    }

    /// Wait for every transfer of the batch, completing each request once its last one has,
    /// and signal the guest after every round of completions.
    fn finish(
        &mut self,
        batch: &mut Batch<'_, 'a>,
        pending: &mut Vec<Pending<'a>>,
    ) -> io::Result<()> {
        while batch.in_flight() > 0 {
            for (token, result) in batch.finish_some()? {
                let Some(request) = pending.get_mut(token as usize) else {
                    continue;
                };
                if let Err(error) = result {
                    let error = match request.writing_to {
                        Some(disk) => disk.write_failed(error),
                        None => error,
                    };
                    request.error = Some(self.failed(error));
                }
                request.transfers -= 1;
                if request.transfers == 0 {
                    let result = request.error.map_or(Ok(request.input), Err);
                    let (head, status) = (request.head, request.status);
                    self.complete(head, status, result);
                }
            }
            self.signal();
        }
        pending.clear();
        self.signal();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_half_of_a_large_read_goes_to_the_workers_however_it_is_cut() {
        const KIB: u64 = 1 << 10;
        assert_eq!(to_workers(SPLIT_BYTES - 512, 0), 0, "small reads stay here");
        assert_eq!(
            to_workers(1024 * KIB, 0),
            512 * KIB,
            "one transfer: cut in the middle"
        );
        // Eight transfers of 128 KiB (eight extents): the first four whole, none of the rest.
        let shares: Vec<u64> = (0..8)
            .map(|run| to_workers(1024 * KIB, run * 128 * KIB) / KIB)
            .collect();
        assert_eq!(shares, [512, 384, 256, 128, 0, 0, 0, 0]);
    }
}
