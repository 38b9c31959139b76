//! In-flight fencing: a change that removes or moves extents completes only after every I/O
//! translated under the old mapping has finished, so a released extent is never written (or
//! read) again by its old owner. Xen's blkback drains a VBD's ring the same way before it
//! lets the VBD go.
//!
//! The design is sleepable RCU's, sized for an embedder with many I/O threads, no allocator
//! and no OS. Each I/O thread claims an [`IoContext`]: a cache-line-sized slot with two
//! counters, one per parity of the table's *grace period* number. A translation counts itself
//! in the counter of the current period's parity before it reads the mapping, and the
//! [`InFlight`] guard it returns uncounts it when the embedder drops it after the disk I/O.
//! A change, after it has replaced the mapping, advances the period and waits until the old
//! parity's counters are zero in every context: every I/O that could have seen the old
//! mapping has then finished. Counters live in the context's own cache line, so I/O threads
//! never write a line another thread writes.
//!
//! Why this is enough, with every step below `SeqCst`:
//! - A reader loads the period `p`, increments `p`'s counter, and loads the period again;
//!   if it moved, it undoes the increment and starts over. So at the moment of its
//!   increment the period was `p`.
//! - A reader that used the old mapping loaded the seqlock's sequence before the writer
//!   began its write ([`crate::seqlock`]), and its increment came before that load; the
//!   writer advances the period after the write and reads the counters after that. In the
//!   single total order of `SeqCst` operations the increment therefore precedes the
//!   writer's counter loads, which see it.
//! - The counter the writer waits on is the one the reader incremented: the reader's period
//!   was current at its increment, and only this writer's advance can have ended it, since
//!   changes are serialised by the grace lock, which a change holds until its fence is
//!   complete. (Without that, a later change could advance the period twice and send new
//!   readers to the parity an earlier change is still draining, which could then never
//!   drain under load.)

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use shared_abi::Error;
use spin::mutex::{TicketMutex, TicketMutexGuard};

/// One I/O context's counters, alone in a 128-byte line pair so that no two contexts (and
/// nothing else) share a cache line, even with adjacent-line prefetch.
#[repr(align(128))]
pub(crate) struct ContextSlot {
    claimed: AtomicBool,
    in_flight: [AtomicU32; 2],
}

impl ContextSlot {
    const fn new() -> ContextSlot {
        ContextSlot {
            claimed: AtomicBool::new(false),
            in_flight: [AtomicU32::new(0), AtomicU32::new(0)],
        }
    }
}

/// Every context slot, the grace period number, and the lock that serialises changes.
pub(crate) struct Fencing<const CONTEXTS: usize> {
    slots: [ContextSlot; CONTEXTS],
    period: AtomicU64,
    /// Held by a change from before it touches the table until its fence is complete, so
    /// no change (and no reuse of released extents) overtakes an incomplete fence.
    grace: TicketMutex<()>,
}

impl<const CONTEXTS: usize> Fencing<CONTEXTS> {
    pub(crate) const fn new() -> Self {
        Fencing {
            slots: [const { ContextSlot::new() }; CONTEXTS],
            period: AtomicU64::new(0),
            grace: TicketMutex::new(()),
        }
    }

    /// Claim a free context; `ENOSPC` when all `CONTEXTS` are claimed.
    pub(crate) fn claim(&self) -> Result<IoContext<'_>, Error> {
        self.slots
            .iter()
            .find(|slot| {
                slot.claimed
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            })
            .map(|slot| IoContext {
                slot,
                period: &self.period,
                relax: core::hint::spin_loop,
            })
            .ok_or(Error::NoSpace)
    }

    /// Whether `context` was claimed from this table.
    pub(crate) fn owns(&self, context: &IoContext<'_>) -> bool {
        core::ptr::eq(context.period, &self.period)
    }

    /// Serialise a change with every other change and every incomplete fence.
    pub(crate) fn begin_change(&self) -> ChangeTicket<'_> {
        ChangeTicket {
            slots: &self.slots,
            period: &self.period,
            _serial: self.grace.lock(),
        }
    }
}

/// The right to change the table, held from a change's start until its fence completes.
pub(crate) struct ChangeTicket<'t> {
    slots: &'t [ContextSlot],
    period: &'t AtomicU64,
    _serial: TicketMutexGuard<'t, ()>,
}

impl<'t> ChangeTicket<'t> {
    /// The change has replaced the mapping: end the grace period every I/O translated under
    /// the old one belongs to, and return the fence that completes when they have finished.
    pub(crate) fn fence(self) -> Fence<'t> {
        let ended = self.period.fetch_add(1, Ordering::SeqCst);
        Fence {
            slots: self.slots,
            parity: (ended & 1) as usize,
            _serial: self._serial,
        }
    }
}

/// A change that removed or moved extents, waiting for the I/O translated before it.
/// The change is complete, and its hypercall may be answered, only once
/// [`Fence::is_complete`]; until then no other change can start. Dropping an incomplete
/// fence waits for it, spinning, so forgetting to wait can cost time but never safety.
#[must_use = "a change is complete only when its fence is; wait for it before replying"]
pub struct Fence<'t> {
    slots: &'t [ContextSlot],
    parity: usize,
    _serial: TicketMutexGuard<'t, ()>,
}

impl Fence<'_> {
    /// Whether every I/O translated under the old mapping has finished.
    pub fn is_complete(&self) -> bool {
        self.slots
            .iter()
            .all(|slot| slot.in_flight[self.parity].load(Ordering::SeqCst) == 0)
    }

    /// Wait until complete, calling `relax` between checks (a `pause`, a yield, a short
    /// sleep: the embedder knows what waiting costs on its platform).
    pub fn wait(self, mut relax: impl FnMut()) {
        while !self.is_complete() {
            relax();
        }
    }
}

impl Drop for Fence<'_> {
    fn drop(&mut self) {
        while !self.is_complete() {
            core::hint::spin_loop();
        }
    }
}

impl core::fmt::Debug for Fence<'_> {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter
            .debug_struct("Fence")
            .field("complete", &self.is_complete())
            .finish()
    }
}

/// One I/O thread's registration with the table, claimed with
/// [`crate::VbdTable::io_context`] and released when dropped. Every translation goes
/// through one, so a change can wait for the I/O it fences.
pub struct IoContext<'t> {
    slot: &'t ContextSlot,
    period: &'t AtomicU64,
    relax: fn(),
}

impl<'t> IoContext<'t> {
    /// This context, waiting out a change to the mapping (a few microseconds of moving
    /// extents) with `relax` rather than a bare spin: an embedder with an OS whose threads
    /// may outnumber its cores passes a yield, so a preempted writer gets to finish.
    pub fn relaxing_with(mut self, relax: fn()) -> Self {
        self.relax = relax;
        self
    }

    /// What translation calls while a change to the mapping is under way.
    pub(crate) fn relax(&self) -> fn() {
        self.relax
    }

    /// Count one I/O in the current grace period, before its translation reads the mapping.
    #[inline]
    pub(crate) fn enter(&self) -> InFlight<'t> {
        loop {
            let period = self.period.load(Ordering::SeqCst);
            let counter = &self.slot.in_flight[(period & 1) as usize];
            counter.fetch_add(1, Ordering::SeqCst);
            if self.period.load(Ordering::SeqCst) == period {
                return InFlight { counter };
            }
            counter.fetch_sub(1, Ordering::Release);
        }
    }
}

impl Drop for IoContext<'_> {
    fn drop(&mut self) {
        self.slot.claimed.store(false, Ordering::Release);
    }
}

impl core::fmt::Debug for IoContext<'_> {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter.write_str("IoContext")
    }
}

/// One translated I/O that has not finished. Hold it until the disk I/O is done (for a
/// write: until the device has the data or has failed), then drop it. A change that
/// removes the extents it was translated onto waits for the drop.
#[must_use = "dropping this at once tells a waiting change the I/O is already done"]
#[derive(Debug)]
pub struct InFlight<'t> {
    counter: &'t AtomicU32,
}

impl Clone for InFlight<'_> {
    /// One more registration in the same grace period: the original is still held, so the
    /// period it counts in has not been waited out, and a fence waiting on it now waits for
    /// the clone too.
    fn clone(&self) -> Self {
        self.counter.fetch_add(1, Ordering::SeqCst);
        InFlight {
            counter: self.counter,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_claimed_once_and_released_on_drop() {
        let fencing = Fencing::<2>::new();
        let first = fencing.claim().unwrap();
        let second = fencing.claim().unwrap();
        assert_eq!(fencing.claim().err(), Some(Error::NoSpace));
        drop(first);
        let third = fencing.claim().unwrap();
        assert!(fencing.owns(&second) && fencing.owns(&third));
        let other = Fencing::<1>::new();
        assert!(!other.owns(&second));
    }

    #[test]
    fn a_relaxing_context_keeps_its_claim() {
        let fencing = Fencing::<1>::new();
        let context = fencing
            .claim()
            .unwrap()
            .relaxing_with(std::thread::yield_now);
        assert_eq!(fencing.claim().err(), Some(Error::NoSpace), "still claimed");
        assert_eq!(
            context.relax() as usize,
            std::thread::yield_now as fn() as usize
        );
        drop(context);
        assert!(fencing.claim().is_ok());
    }

    #[test]
    fn a_fence_waits_for_io_entered_before_it_and_not_after() {
        let fencing = Fencing::<2>::new();
        let context = fencing.claim().unwrap();
        let before = context.enter();
        let fence = fencing.begin_change().fence();
        let after = context.enter();
        assert!(!fence.is_complete());
        drop(after);
        assert!(!fence.is_complete());
        drop(before);
        assert!(fence.is_complete());
    }

    #[test]
    fn a_fence_waits_for_every_clone_of_a_registration() {
        let fencing = Fencing::<1>::new();
        let context = fencing.claim().unwrap();
        let io = context.enter();
        let carried = io.clone();
        let fence = fencing.begin_change().fence();
        drop(io);
        assert!(!fence.is_complete(), "the clone is still in flight");
        drop(carried);
        assert!(fence.is_complete());
    }

    #[test]
    fn a_change_waits_for_the_previous_fence() {
        let fencing = Fencing::<1>::new();
        let context = fencing.claim().unwrap();
        let io = context.enter();
        let fence = fencing.begin_change().fence();
        let fence_released = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _ticket = fencing.begin_change();
                assert!(fence_released.load(Ordering::SeqCst), "overtook a fence");
            });
            // Give the other change time to try; were changes not serialised, it would
            // get its ticket now and fail the assertion.
            std::thread::sleep(std::time::Duration::from_millis(20));
            fence_released.store(true, Ordering::SeqCst);
            drop(io);
            fence.wait(core::hint::spin_loop);
        });
    }
}
