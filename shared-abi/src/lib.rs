//! The contract between guests, dom0 and the hypervisor's virtual block device layer.
//!
//! Everything here crosses a trust boundary, so every type comes in two forms: a raw wire
//! form (`#[repr(C)]`, fixed-width integers, named `_reserved` padding, sizes asserted at
//! compile time) and, where the raw form can hold nonsense, a validated typed form reached
//! only through a checking constructor. The numbers follow Xen 1.2's block operations where
//! they still make sense; `DESIGN.md` lists where and why they differ.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod device;
pub mod error;
pub mod flags;
pub mod frame;
pub mod label;
pub mod op;
pub mod reassembly;
pub mod sharing;
pub mod wire;

pub use device::DeviceNumber;
pub use error::Error;
pub use flags::{Mode, ProbeInfo};
pub use label::Label;
pub use op::Op;
pub use sharing::SharingLevel;

/// Version of this ABI, returned by [`Op::Version`]. Bumped on any incompatible change.
pub const ABI_VERSION: u32 = 2;

/// Bytes in one sector: the unit of every `*_sector` and `nr_sectors` field.
pub const SECTOR_SIZE: u64 = 512;

/// The domain that owns the physical disks and alone may change VBDs.
pub const DOM0: u32 = 0;
