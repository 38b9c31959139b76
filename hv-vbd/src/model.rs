//! The model check of the fencing and the seqlock (`RUSTFLAGS="--cfg loom"`, run by
//! `cargo xtask test`): loom explores every interleaving, within a preemption bound, of I/O
//! threads translating a VBD while a change replaces its extents, on the very atomics
//! [`crate::inflight`] and [`crate::seqlock`] use. The smallest table that shows the
//! property: one VBD of two extents, two readers, one writer.
//!
//! What must hold: a reader sees the whole old mapping or the whole new one, never a mix;
//! and no I/O translated onto the old extents is still in flight once the change's fence is
//! complete (the writer then marks the old extents released, and a reader holding an old
//! translation must never see that mark).

use loom::sync::Arc;
use loom::thread;

use crate::inflight::Fencing;
use crate::seqlock::SeqLock;
use crate::sync::{AtomicBool, AtomicU64, Ordering};

/// I/O threads racing the change.
const READERS: usize = 2;

/// The old and new physical starts of the VBD's two extents.
const OLD: [u64; 2] = [10, 20];
const NEW: [u64; 2] = [30, 40];

/// The VBD's mapping as translation reads it, and what the test watches.
struct Model {
    sequence: SeqLock,
    extents: [AtomicU64; 2],
    fencing: Fencing<1, 2>,
    /// Set by the writer once its fence is complete: the old extents may go to another VBD.
    released: AtomicBool,
}

impl Model {
    fn new() -> Model {
        Model {
            sequence: SeqLock::new(),
            extents: [AtomicU64::new(OLD[0]), AtomicU64::new(OLD[1])],
            fencing: Fencing::new(),
            released: AtomicBool::new(false),
        }
    }

    /// One I/O on the VBD (slot 0): register, translate, use the extents, let go.
    fn io(&self) {
        let in_flight = self.fencing.grace(0, 0).expect("slot 0").enter();
        let mapping = self.sequence.read(thread::yield_now, || {
            [
                self.extents[0].load(Ordering::Relaxed),
                self.extents[1].load(Ordering::Relaxed),
            ]
        });
        assert!(
            mapping == OLD || mapping == NEW,
            "a torn mapping {mapping:?}"
        );
        if mapping == OLD {
            assert!(
                !self.released.load(Ordering::SeqCst),
                "an I/O on the old extents outlived the change that released them"
            );
        }
        drop(in_flight);
    }

    /// The change: hold the slot, replace the mapping, fence, wait, release.
    fn change(&self) {
        let held = self.fencing.hold(0, 0..1);
        {
            let _section = self.sequence.write();
            self.extents[0].store(NEW[0], Ordering::Relaxed);
            self.extents[1].store(NEW[1], Ordering::Relaxed);
        }
        held.fence().wait(thread::yield_now);
        self.released.store(true, Ordering::SeqCst);
    }
}

/// Run `test` in every interleaving with at most `preemptions` forced switches.
fn explore(preemptions: usize, test: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(preemptions);
    // Every spin of a waiting thread is a branch: waits are long in branches, not in states.
    builder.max_branches = 10_000;
    builder.check(test);
}

/// `readers` I/O threads race one change.
fn race(readers: usize) {
    let model = Arc::new(Model::new());
    let threads: Vec<_> = (0..readers)
        .map(|_| {
            let model = model.clone();
            thread::spawn(move || model.io())
        })
        .collect();
    model.change();
    for thread in threads {
        thread.join().expect("a reader panicked");
    }
}

#[test]
fn no_io_translated_before_a_change_outlives_its_fence() {
    // Deep in preemptions with one reader; two readers with fewer (each further forced switch
    // multiplies the schedules by the threads' steps: two readers at 2 take many minutes).
    explore(4, || race(1));
    explore(1, || race(2));
}

#[test]
fn a_change_to_another_vbd_does_not_wait_for_this_ones_io() {
    explore(4, || {
        let model = Arc::new(Model::new());
        let reader = {
            let model = model.clone();
            thread::spawn(move || {
                // In flight on slot 0 for the whole of the other change.
                let _in_flight = model.fencing.grace(0, 0).expect("slot 0").enter();
                model.fencing.hold(0, 1..2).fence().wait(thread::yield_now);
            })
        };
        reader
            .join()
            .expect("the change of slot 1 waited for slot 0");
    });
}
