//! dom0's side of virtual disks: the VD database and free pool, device and partition
//! lookup, the sharing validator, and the operations behind the `vdisk` command.
#![forbid(unsafe_code)]

pub mod allocate;
pub mod database;
pub mod devices;
pub mod duration;
pub mod error;
pub mod hypervisor;
pub mod lifecycle;
pub mod mounts;
pub mod partition;
pub mod schema;
pub mod size;
pub mod timestamp;
pub mod uname;
pub mod validator;
pub mod zero;

pub use error::{Error, Result};
