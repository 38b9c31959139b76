//! In-flight fencing, per VBD: a change that removes or moves a VBD's extents completes only
//! after every I/O translated on that VBD under the old mapping has finished, so a released
//! extent is never written (or read) again by its old owner. Xen's blkback drains a VBD's
//! ring the same way before it lets the VBD go, and, as there, a change waits for the I/O
//! of the VBD it changes and of no other: one tenant's slow or hostile I/O can delay only
//! the changes to its own VBDs.
//!
//! The design is sleepable RCU's with a grace period per VBD slot, sized for an embedder
//! with no allocator and no OS. Each slot has a [`Grace`]: a period number and two
//! counters, one per parity of the period. A translation counts itself in the counter of
//! its slot's current parity before it reads the mapping, and the [`InFlight`] guard it
//! returns uncounts it when the embedder drops it after the disk I/O. A change, after it
//! has replaced the mapping, advances the slot's period and waits until the old parity's
//! counter is zero: every I/O that could have seen the old mapping has then finished. Each
//! slot's counters have a cache line pair of their own, so threads serving different VBDs
//! never write a line another writes.
//!
//! Why this is enough: a reader increments its counter, then issues a `SeqCst` fence, then
//! loads the period again (and, if it moved, undoes the increment and starts over) and
//! reads the mapping. A writer replaces the mapping, advances the period, then issues a
//! `SeqCst` fence, then loads the counter. The two fences are ordered one way or the other:
//! - the reader's first: the writer's counter load comes after it, so it sees the
//!   increment, and the fence waits for this reader whatever mapping it read;
//! - the writer's first: the reader's reload sees the advanced period, so it starts over,
//!   counted in the new period, and reads the mapping after the fence, so it sees the
//!   whole new mapping (the seqlock's release and acquire order the mapping itself).
//!
//! The counter the writer waits on is the one the reader incremented: the reader's period
//! was current at its increment, and only this writer's advance can have ended it, since a
//! change *holds* its slots from before it touches the table until its fence is complete.
//! (Without that, a later change could advance the period twice and send new readers to
//! the parity an earlier change is still draining, which could then never drain under
//! load.) Fences rather than `SeqCst` accesses carry the argument because the C11 rules
//! for fences are what the model test's loom checks (it treats a `SeqCst` access as
//! acquire-release only), and on x86 the reader's fence follows a locked increment that has
//! already drained its store buffer.
//!
//! Released extents must not be handed to another VBD while I/O of their old owner may
//! still reach them; [`Fencing::quiet`] tells a change that adds extents whether any
//! fence is still draining anywhere.
//!
//! The model test (`model.rs`, under `--cfg loom`) checks this argument with loom.

use crate::sync::{const_fn, fence, spin_loop, AtomicBool, AtomicU32, AtomicU64, Ordering};

/// One VBD slot's grace period, alone in a 128-byte line pair so that no two slots (and
/// nothing else) share a cache line, even with adjacent-line prefetch.
#[repr(align(128))]
pub(crate) struct Grace {
    period: AtomicU64,
    in_flight: [AtomicU32; 2],
    /// Held by a change from before it touches the slot until its fence is complete.
    held: AtomicBool,
}

impl Grace {
    const_fn! {
        pub(crate) fn new() -> Grace {
            Grace {
                period: AtomicU64::new(0),
                in_flight: [AtomicU32::new(0), AtomicU32::new(0)],
                held: AtomicBool::new(false),
            }
        }
    }

    /// Count one I/O in the current grace period, before its translation reads the mapping.
    #[inline]
    pub(crate) fn enter(&self) -> InFlight<'_> {
        loop {
            let period = self.period.load(Ordering::SeqCst);
            let counter = &self.in_flight[(period & 1) as usize];
            counter.fetch_add(1, Ordering::SeqCst);
            // Against the writer's fence after its advance: see the module's argument.
            fence(Ordering::SeqCst);
            if self.period.load(Ordering::SeqCst) == period {
                return InFlight { counter };
            }
            counter.fetch_sub(1, Ordering::Release);
            spin_loop();
        }
    }

    /// Whether every I/O of the period before the current one has finished. Between
    /// changes this is always so: only a draining fence leaves the old parity counted.
    fn drained(&self) -> bool {
        let ended = self.period.load(Ordering::SeqCst).wrapping_sub(1);
        self.in_flight[(ended & 1) as usize].load(Ordering::SeqCst) == 0
    }

    /// Take the slot for a change, waiting (spinning) for the fence of a change before it.
    fn hold(&self) {
        while self
            .held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spin_loop();
        }
    }

    fn release(&self) {
        self.held.store(false, Ordering::Release);
    }

    pub(crate) fn is_held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }
}

/// The grace periods of every VBD slot of a table, `VBDS` per domain slot.
pub(crate) struct Fencing<const DOMAINS: usize, const VBDS: usize> {
    slots: [[Grace; VBDS]; DOMAINS],
}

impl<const DOMAINS: usize, const VBDS: usize> Fencing<DOMAINS, VBDS> {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Fencing {
            slots: [const { [const { Grace::new() }; VBDS] }; DOMAINS],
        }
    }

    /// loom's atomics are not `const`: the model test builds its table at run time.
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Fencing {
            slots: core::array::from_fn(|_| core::array::from_fn(|_| Grace::new())),
        }
    }

    /// The grace period of VBD slot `vbd` of domain slot `domain`; `None` past the table.
    #[inline]
    pub(crate) fn grace(&self, domain: usize, vbd: usize) -> Option<&Grace> {
        self.slots.get(domain)?.get(vbd)
    }

    /// A context for translating on this table.
    pub(crate) fn context(&self) -> IoContext<'_> {
        IoContext {
            table: self.slots.as_flattened(),
            relax: spin_loop,
        }
    }

    /// Whether `context` was made by this table.
    pub(crate) fn owns(&self, context: &IoContext<'_>) -> bool {
        core::ptr::eq(context.table, self.slots.as_flattened())
    }

    /// Hold the slots `vbds` of domain slot `domain` for a change, in ascending order (so two
    /// changes holding several never wait for each other in a circle), each after the fence
    /// of any change before it on that slot is complete.
    pub(crate) fn hold(&self, domain: usize, vbds: core::ops::Range<usize>) -> Held<'_> {
        let graces = &self.slots[domain][vbds];
        graces.iter().for_each(Grace::hold);
        Held { graces }
    }

    /// Whether no fence is draining anywhere: extents released by a change may be reused.
    pub(crate) fn quiet(&self) -> bool {
        self.slots.as_flattened().iter().all(Grace::drained)
    }
}

/// Slots held by a change that has not yet replaced their mapping. Dropping it lets them go
/// (the change failed and changed nothing); [`Held::fence`] ends their grace periods.
pub(crate) struct Held<'t> {
    graces: &'t [Grace],
}

impl<'t> Held<'t> {
    /// The change has replaced the mapping: end the grace period every I/O translated under
    /// the old one belongs to, and return the fence that completes when they have finished.
    pub(crate) fn fence(self) -> Fence<'t> {
        let graces = self.graces;
        core::mem::forget(self);
        for grace in graces {
            grace.period.fetch_add(1, Ordering::SeqCst);
        }
        // Against the readers' fence after their increment: see the module's argument.
        fence(Ordering::SeqCst);
        Fence { graces }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.graces.iter().for_each(Grace::release);
    }
}

/// A change that removed or moved extents, waiting for the I/O translated before it on the
/// VBDs it changed. The change is complete, and its hypercall may be answered, only once
/// [`Fence::is_complete`]; until then no other change to those VBDs can start, nor can any
/// change give extents to a VBD. Dropping an incomplete fence waits for it, spinning, so
/// forgetting to wait can cost time but never safety.
#[must_use = "a change is complete only when its fence is; wait for it before replying"]
pub struct Fence<'t> {
    graces: &'t [Grace],
}

impl Fence<'_> {
    /// The fence of a change that released nothing.
    pub(crate) fn complete() -> Self {
        Fence { graces: &[] }
    }

    /// Whether every I/O translated under the old mapping has finished.
    pub fn is_complete(&self) -> bool {
        self.graces.iter().all(Grace::drained)
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
            spin_loop();
        }
        self.graces.iter().for_each(Grace::release);
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

/// A thread's way to translate on one table, from [`crate::VbdTable::io_context`]: which
/// table it is for, and how it waits out a change under way. Any number may exist; they
/// cost nothing to make or keep.
#[derive(Clone, Copy)]
pub struct IoContext<'t> {
    table: &'t [Grace],
    relax: fn(),
}

impl IoContext<'_> {
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn contexts_belong_to_their_table() {
        let fencing = Fencing::<1, 2>::new();
        let other = Fencing::<1, 2>::new();
        let context = fencing.context().relaxing_with(std::thread::yield_now);
        assert!(fencing.owns(&context) && !other.owns(&context));
        assert_eq!(
            context.relax() as usize,
            std::thread::yield_now as fn() as usize
        );
    }

    #[test]
    fn a_fence_waits_for_io_entered_before_it_and_not_after() {
        let fencing = Fencing::<1, 1>::new();
        let grace = fencing.grace(0, 0).unwrap();
        let before = grace.enter();
        let fence = fencing.hold(0, 0..1).fence();
        let after = grace.enter();
        assert!(!fence.is_complete());
        assert!(!fencing.quiet(), "a fence is draining");
        drop(after);
        assert!(!fence.is_complete());
        drop(before);
        assert!(fence.is_complete());
        assert!(fencing.quiet());
    }

    #[test]
    fn a_fence_waits_only_for_the_slots_it_changed() {
        let fencing = Fencing::<2, 2>::new();
        let other_vbd = fencing.grace(0, 1).unwrap().enter();
        let other_domain = fencing.grace(1, 0).unwrap().enter();
        let fence = fencing.hold(0, 0..1).fence();
        assert!(fence.is_complete(), "no I/O on the changed VBD");
        let both = fencing.hold(1, 0..2).fence();
        assert!(!both.is_complete());
        drop(other_domain);
        assert!(both.is_complete());
        drop(other_vbd);
    }

    #[test]
    fn a_fence_waits_for_every_clone_of_a_registration() {
        let fencing = Fencing::<1, 1>::new();
        let io = fencing.grace(0, 0).unwrap().enter();
        let carried = io.clone();
        let fence = fencing.hold(0, 0..1).fence();
        drop(io);
        assert!(!fence.is_complete(), "the clone is still in flight");
        drop(carried);
        assert!(fence.is_complete());
    }

    #[test]
    fn a_held_slot_is_let_go_by_a_failed_change_and_by_a_complete_fence() {
        let fencing = Fencing::<1, 2>::new();
        let held = fencing.hold(0, 0..2);
        assert!(fencing.grace(0, 1).unwrap().is_held());
        drop(held);
        assert!(!fencing.grace(0, 1).unwrap().is_held());
        let fence = fencing.hold(0, 1..2).fence();
        assert!(fencing.grace(0, 1).unwrap().is_held());
        fence.wait(core::hint::spin_loop);
        assert!(!fencing.grace(0, 1).unwrap().is_held());
    }

    #[test]
    fn a_change_waits_for_the_previous_fence_on_its_slot() {
        let fencing = Fencing::<1, 1>::new();
        let io = fencing.grace(0, 0).unwrap().enter();
        let fence = fencing.hold(0, 0..1).fence();
        let fence_released = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _held = fencing.hold(0, 0..1);
                assert!(fence_released.load(Ordering::SeqCst), "overtook a fence");
            });
            // Give the other change time to try; were changes not serialised, it would
            // hold the slot now and fail the assertion.
            std::thread::sleep(std::time::Duration::from_millis(20));
            fence_released.store(true, Ordering::SeqCst);
            drop(io);
            fence.wait(core::hint::spin_loop);
        });
    }
}
