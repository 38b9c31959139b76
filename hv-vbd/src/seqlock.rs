//! A sequence lock: readers never write shared memory, so any number of I/O threads
//! translate at once without bouncing a cache line between them, and a writer never waits
//! for readers.
//!
//! The writer (there is one at a time: the table's writer mutex decides who) makes the
//! sequence odd, changes the data, and makes it even again. A reader notes the sequence,
//! reads, and keeps what it read only if the sequence was even and has not moved. Every
//! datum a reader looks at is an atomic, loaded `Relaxed`, so a read that races a write is
//! a stale or torn *value*, never undefined behaviour; the reader's code must only be
//! unable to panic or loop forever on such values, and its result is then thrown away.
//! This is the construction of Boehm, "Can seqlocks get along with programming language
//! memory models?" (2012), with atomics instead of `unsafe`.

use crate::sync::{const_fn, fence, spin_loop, AtomicU64, Ordering};

pub(crate) struct SeqLock {
    sequence: AtomicU64,
}

impl SeqLock {
    const_fn! {
        pub(crate) fn new() -> SeqLock {
            SeqLock {
                sequence: AtomicU64::new(0),
            }
        }
    }

    /// Run `attempt` until it ran while no write was under way, and return its result,
    /// calling `relax` while a write is under way. `SeqCst` on the first load, so a
    /// reader's earlier in-flight registration (also `SeqCst`) is ordered before it: see
    /// [`crate::inflight`].
    #[inline]
    pub(crate) fn read<T>(&self, relax: fn(), mut attempt: impl FnMut() -> T) -> T {
        loop {
            let before = self.sequence.load(Ordering::SeqCst);
            if before & 1 != 0 {
                // A writer mid-write: where threads outnumber cores it may have been
                // preempted, and spinning here would keep it off the core it needs.
                relax();
                continue;
            }
            let result = attempt();
            fence(Ordering::Acquire);
            if self.sequence.load(Ordering::Relaxed) == before {
                return result;
            }
            spin_loop();
        }
    }

    /// Begin a write. The caller must be the only writer (it holds the writer mutex, which
    /// `&mut` on the guard's token proves) and ends the write by dropping the returned section.
    pub(crate) fn write(&self) -> WriteSection<'_> {
        let sequence = self.sequence.load(Ordering::Relaxed);
        debug_assert!(sequence & 1 == 0, "nested seqlock write");
        self.sequence.store(sequence + 1, Ordering::SeqCst);
        fence(Ordering::Release);
        WriteSection {
            lock: self,
            sequence: sequence + 2,
        }
    }
}

/// An open write; readers retry until it is dropped.
pub(crate) struct WriteSection<'a> {
    lock: &'a SeqLock,
    sequence: u64,
}

impl Drop for WriteSection<'_> {
    fn drop(&mut self) {
        self.lock.sequence.store(self.sequence, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicU32;

    /// Two values a writer keeps equal; a reader must never see them differ.
    #[test]
    fn readers_see_only_whole_writes() {
        let lock = SeqLock::new();
        let pair = [AtomicU32::new(0), AtomicU32::new(0)];
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for value in 1..=20_000u32 {
                    let _section = lock.write();
                    pair[0].store(value, Ordering::Relaxed);
                    pair[1].store(value, Ordering::Relaxed);
                }
            });
            let mut last = 0;
            while last < 20_000 {
                let (first, second) = lock.read(std::thread::yield_now, || {
                    (
                        pair[0].load(Ordering::Relaxed),
                        pair[1].load(Ordering::Relaxed),
                    )
                });
                assert_eq!(first, second);
                assert!(first >= last, "time went backwards");
                last = first;
            }
        });
    }
}
