//! dom0's side of virtual disks: the VD database and free pool, device and partition
//! lookup, the sharing validator, and the operations behind the `vdisk` command.
#![forbid(unsafe_code)]

pub mod allocate;
pub mod database;
pub mod duration;
pub mod error;
pub mod hypervisor;
pub mod lifecycle;
pub mod mounts;
pub mod reconcile;
pub mod schema;
pub mod size;
pub mod timestamp;
pub mod uname;
pub mod validator;
pub mod zero;

pub use error::{Error, Result};

/// Serialise a value by its `Display` form: device numbers as `3:0` in every JSON shape.
pub fn serialize_display<T: std::fmt::Display, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}
