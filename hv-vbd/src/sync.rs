//! The atomics the fencing and the seqlock are built on: `core`'s, or loom's under
//! `--cfg loom`, so the model test in `model.rs` explores every interleaving of the
//! very code translation and changes run.
//!
//! loom's atomics cannot be made in a `const` context, so the few constructors that the
//! table's `const fn new` needs are declared with [`const_fn!`]: `const` normally, plain
//! under loom (where the table itself is not built).

#[cfg(not(loom))]
pub(crate) use core::hint::spin_loop;
#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use loom::hint::spin_loop;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

/// A constructor that is `const fn` except under loom.
macro_rules! const_fn {
    ($(#[$meta:meta])* $visibility:vis fn $name:ident() -> $returns:ty $body:block) => {
        #[cfg(not(loom))]
        $(#[$meta])*
        $visibility const fn $name() -> $returns $body

        #[cfg(loom)]
        $(#[$meta])*
        $visibility fn $name() -> $returns $body
    };
}
pub(crate) use const_fn;
