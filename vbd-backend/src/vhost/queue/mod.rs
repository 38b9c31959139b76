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
//! does not pay for buffered writes here: [`crate::uring`]), except the part of a large write
//! over several disks that goes to the disk of its first run, which io_uring's workers write
//! meanwhile, holding the translation as reads do ([`batch`]). Flush, discard and write-zeroes
//! run after every request popped before them has completed, as they did when requests ran
//! one at a time. A read whose translation has more pieces than a batch slot holds, and every
//! read when the kernel gives no io_uring, runs on its own with `pread` ([`crate::sys`]).
//!
//! Every chain popped is recorded in the ring's inflight record before anything is done for
//! it, and cleared only once its used element is published ([`super::inflight`]); a ring
//! resumed from a record first replays the chains it names ([`replay`]).

mod admit;
mod batch;
mod execute;
mod replay;
#[cfg(test)]
mod tests;

use std::io;

use hv_vbd::Segment;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use self::batch::SLOT_SEGMENTS;
use self::execute::Pieces;
use self::execute::{execute, failed, serve_chain};
use super::device::{DeviceTarget, Memory, QUEUE_SIZE};
use super::inflight::{Inflight, RingTracker};
use super::memory_table::MemoryTable;
use super::request::{Operation, RequestError};
use super::ResumedRings;
use crate::uring::Ring;
use crate::vbd::Translator;

/// The guest memory of one connection, as the queue threads map it.
type Mapped = GuestMemoryMmap<()>;

/// One queue thread's I/O state, claimed at its first request.
pub struct QueueWorker {
    translator: Translator,
    /// `None`: the kernel gave no io_uring; transfers run one at a time.
    ring: Option<Ring>,
    /// The segments of the read being submitted.
    segments: Vec<Segment>,
}

/// What a queue's requests are served against.
pub struct QueueTarget<'a> {
    pub target: &'a DeviceTarget,
    pub resumed: &'a ResumedRings,
    /// Where the batch learns that a newer guest memory table was published.
    pub table: &'a MemoryTable,
    /// The connection's inflight records, and the index of this queue's ring.
    pub inflight: &'a Inflight,
    pub ring: u16,
}

impl QueueWorker {
    pub fn new(target: &DeviceTarget, queue: u16) -> QueueWorker {
        let translator = Translator::new(target.shared.table);
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
            segments: vec![Segment::default(); SLOT_SEGMENTS],
        }
    }

    /// Serve every available request of `vring`, in batches, until none is left. Nothing a
    /// guest writes in its rings makes this fail: only the ring's and the VMM's own
    /// failures (an io_uring that cannot be waited on, a call eventfd that cannot be
    /// written) are returned, and only once every request popped has been answered.
    pub fn serve(
        &mut self,
        queue: &QueueTarget<'_>,
        vring: &VringRwLock<Memory>,
        memory: &Mapped,
    ) -> io::Result<()> {
        let QueueWorker {
            translator,
            ring,
            segments,
        } = self;
        // Held while serving: the relay sets the tracker up only as the ring starts.
        let mut tracked = queue.inflight.ring(queue.ring);
        let mut untracked = RingTracker::default();
        let tracker = tracked.as_deref_mut().unwrap_or(&mut untracked);
        let replay = tracker.take_replay(vring.get_mut().get_queue_mut(), memory);
        let mut round = Round {
            queue,
            vring,
            memory,
            translator,
            tracker,
            completed: false,
            failure: None,
            pieces: Pieces::default(),
        };
        if let Some(heads) = replay {
            round.replay(&heads);
        }
        loop {
            let more = match ring {
                Some(ring) => ring.batch(|batch| round.batch(batch, segments))?,
                None => round.one_at_a_time(),
            };
            if !more {
                return round.failure.map_or(Ok(()), Err);
            }
        }
    }
}

/// One pass over the available ring.
struct Round<'a, 'q> {
    queue: &'a QueueTarget<'q>,
    vring: &'a VringRwLock<Memory>,
    memory: &'a Mapped,
    translator: &'a mut Translator,
    /// The ring's inflight record.
    tracker: &'a mut RingTracker,
    /// Whether a chain was completed since the last signal.
    completed: bool,
    /// The first failure to signal the guest, reported when the round is over.
    failure: Option<io::Error>,
    /// The read being gathered into one transfer, kept for its room.
    pieces: Pieces<'a>,
}

impl<'a> Round<'a, '_> {
    /// The next available chain, unless a newer memory table was published since the round
    /// began: the requests posted after it are for a round under it, and none once another
    /// process took over: they are left in the ring for it. It is recorded in flight before
    /// it is returned.
    fn pop(&mut self) -> Option<virtio_queue::DescriptorChain<&'a Mapped>> {
        if self.queue.target.shared.handed_over() {
            return None;
        }
        let chain = self.queue.table.pop_under(self.memory, || {
            self.vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(self.memory)
        })?;
        self.tracker.take(chain.head_index());
        Some(chain)
    }

    /// Put chain `head` in the used ring. A head the used ring refuses (one at or past the
    /// queue size, which the avail ring may hold but no descriptor has) cannot be named
    /// to the guest, so it is skipped: the guest broke the ring, not the queue.
    fn used(&mut self, head: u16, length: u32) {
        self.tracker.publishing(head);
        let mut vring = self.vring.get_mut();
        let queue = vring.get_queue_mut();
        if queue.add_used(self.memory, head, length).is_ok() {
            self.tracker.published(head, queue.next_used());
            self.completed = true;
        }
    }

    /// Tell the guest about the chains completed since the last time, if it wants to know
    /// (and when its ring cannot say, tell it anyway).
    fn signal(&mut self) {
        let completed = std::mem::take(&mut self.completed);
        if completed
            && self
                .vring
                .get_mut()
                .get_queue_mut()
                .needs_notification(self.memory)
                .unwrap_or(true)
        {
            match self.vring.signal_used_queue() {
                // The counter is full (the bridge made it non-blocking): the guest has a
                // notification it has not read yet, which covers these chains too.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => {
                    self.failure.get_or_insert(error);
                }
                Ok(()) => {}
            }
        }
    }

    /// Write the status byte and complete the chain.
    fn complete(&mut self, head: u16, status: GuestAddress, result: Result<u32, RequestError>) {
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
    fn one_at_a_time(&mut self) -> bool {
        while let Some(chain) = self.pop() {
            let head = chain.head_index();
            let used = serve_chain(self.queue, chain, self.memory, &mut *self.translator);
            self.used(head, used);
        }
        self.signal();
        false
    }

    /// Carry out a request on its own, at once.
    fn execute(&mut self, operation: &Operation) -> Result<u32, RequestError> {
        execute(self.queue, operation, self.memory, self.translator)
    }

    fn failed(&self, failure: io::Error) -> RequestError {
        failed(self.queue, failure)
    }
}
