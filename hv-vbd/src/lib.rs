//! Virtual block devices for a hypervisor: per-domain VBD tables, extent lists, sector
//! translation and the block hypercalls, with no allocator and no `unsafe`.
//!
//! A VBD is an ordered list of physical extents that a domain sees as one contiguous disk.
//! The embedding hypervisor keeps one [`VbdTable`] (usually in a `static`), registers the
//! physical disks it found, feeds hypercalls to [`VbdTable::dispatch`] with the caller's
//! domain taken from the channel, and calls [`VbdTable::translate`] for every block request
//! before doing the I/O itself, outside the table's lock.
//!
//! Guest input is hostile: arguments are copied in once and validated, guest addresses are
//! checked before use ([`GuestAddress`]), every loop over guest data is bounded by a fixed
//! capacity, and a full table is an error code, never a panic.
//!
//! # Footprint
//!
//! Each extent of capacity costs [`BYTES_PER_EXTENT`] bytes (an 8-byte virtual end, kept
//! in its own dense array for the search, a 16-byte physical place and a 4-byte slot in the
//! physical index). [`DefaultVbdTable`] (64 domains, 16 VBDs each, 65 536
//! extents, 16 disks) occupies [`DEFAULT_TABLE_BYTES`] bytes, about 1.8 MiB, almost all of
//! it the extent arena.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

mod arena;
mod dispatch;
mod memory;
mod registry;
mod sharing;
mod table;

pub use arena::BYTES_PER_EXTENT;
pub use dispatch::Outcome;
pub use memory::{GuestAddress, GuestMemory, SliceMemory};
pub use registry::Disk;
pub use sharing::SharingLevel;
pub use table::{Access, Changed, ProbeSummary, Segment, VbdId, VbdInfo, VbdTable};

/// A typical configuration: 64 domains, 16 VBDs each, 65 536 extents, 16 physical disks.
pub type DefaultVbdTable = VbdTable<64, 16, 65536, 16>;

/// The size of [`DefaultVbdTable`] in bytes.
pub const DEFAULT_TABLE_BYTES: usize = core::mem::size_of::<DefaultVbdTable>();

// The footprint promised above, checked at compile time: at most 32 bytes per extent, and
// the default table is the arena plus under 64 KiB of VBD and domain slots.
const _: () = assert!(BYTES_PER_EXTENT == 28);
const _: () = assert!(DEFAULT_TABLE_BYTES >= 65536 * BYTES_PER_EXTENT);
const _: () = assert!(DEFAULT_TABLE_BYTES < 65536 * BYTES_PER_EXTENT + 64 * 1024);
