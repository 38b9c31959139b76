//! Virtual block devices for a hypervisor: per-domain VBD tables, extent lists, sector
//! translation, the block path with in-flight fencing, and the block hypercalls, with no
//! allocator and no `unsafe`.
//!
//! A VBD is an ordered list of physical extents that a domain sees as one contiguous disk.
//! The embedding hypervisor keeps one [`VbdTable`] (usually in a `static`), registers the
//! physical disks it found, and then supplies only its transport and its disk I/O:
//! - hypercalls go to [`VbdTable::dispatch`] with the caller's domain taken from the
//!   channel, or whole frames to [`VbdTable::serve_frame`], which also answers the channel's
//!   block requests;
//! - each I/O thread takes an [`IoContext`] (as many as it likes: they are free); a guest
//!   request becomes a [`Request`], which [`VbdTable::translate`] turns into physical
//!   [`Segment`]s without taking a lock; the [`Translation`] it returns pairs them with the
//!   request's buffers ([`Transfers`]) and is held until the disk I/O is done;
//!   [`VbdTable::transfer`] is that whole loop, with the embedder's I/O as a closure and
//!   its segment buffer as [`SegmentRoom`], grown on request;
//! - a change that removes or moves a VBD's extents returns a [`Fence`], complete once
//!   every I/O translated on that VBD under the old mapping has finished; only then may it
//!   be answered. It waits for that VBD's I/O and no other's.
//!
//! Guest input is hostile: arguments are copied in once and validated, guest addresses are
//! checked before use ([`GuestAddress`]), every loop over guest data is bounded by a fixed
//! capacity, and a full table is an error code, never a panic.
//!
//! # Footprint
//!
//! Each extent of capacity costs [`BYTES_PER_EXTENT`] bytes: a virtual end and a packed
//! physical place (disk index and sector) for translation; an index slot, its merge buffer
//! and an owner for changes. Each VBD slot costs about 250 bytes, half of it the cache
//! lines of its grace period.
//! [`DefaultVbdTable`] (64 domains, 16 VBDs each, 65 536 extents, 16 disks) occupies
//! [`DEFAULT_TABLE_BYTES`] bytes, about 2 MiB, almost all of it the extent arena.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
// Under loom only the model test uses the fencing.
#![cfg_attr(loom, allow(dead_code))]

// Under `--cfg loom` only the fencing and the seqlock are built, on loom's atomics, for the
// model test (`model`): loom's atomics cannot be made in the table's `const fn new`.
mod inflight;
#[cfg(all(loom, test))]
mod model;
mod seqlock;
mod sync;

#[cfg(not(loom))]
mod arena;
#[cfg(not(loom))]
mod block;
#[cfg(not(loom))]
mod dispatch;
#[cfg(not(loom))]
mod memory;
#[cfg(not(loom))]
mod path;
#[cfg(not(loom))]
mod registry;
#[cfg(not(loom))]
pub mod serve;
#[cfg(not(loom))]
mod sweep;
#[cfg(not(loom))]
mod table;

#[cfg(not(loom))]
pub use {
    arena::BYTES_PER_EXTENT,
    block::{Access, Request, Segment, Transfer, Transfers, Translation},
    dispatch::Outcome,
    inflight::{Fence, InFlight, IoContext},
    memory::{GuestAddress, GuestMemory, SliceMemory},
    path::{SegmentRoom, Target},
    registry::Disk,
    shared_abi::SharingLevel,
    table::{
        Changed, Limits, ListPiece, ProbeSummary, Removal, SetExtents, VbdId, VbdInfo, VbdRef,
        VbdTable,
    },
};

/// A typical configuration: 64 domains, 16 VBDs each, 65 536 extents, 16 physical disks.
#[cfg(not(loom))]
pub type DefaultVbdTable = VbdTable<64, 16, 65536, 16>;

/// The size of [`DefaultVbdTable`] in bytes.
#[cfg(not(loom))]
pub const DEFAULT_TABLE_BYTES: usize = core::mem::size_of::<DefaultVbdTable>();

// The footprint promised above, checked at compile time: at most 32 bytes per extent, and
// the default table is the arena plus under 256 KiB of VBD and domain slots.
#[cfg(not(loom))]
const _: () = assert!(BYTES_PER_EXTENT == 26);
#[cfg(not(loom))]
const _: () = assert!(DEFAULT_TABLE_BYTES >= 65536 * BYTES_PER_EXTENT);
#[cfg(not(loom))]
const _: () = assert!(DEFAULT_TABLE_BYTES < 65536 * BYTES_PER_EXTENT + 256 * 1024);
