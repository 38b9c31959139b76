//! Boots the bare-metal test hypervisor in QEMU with partitioned disk images, real Linux
//! guests ([`guest`]), and vbd-backend ([`Backend`]) to serve them.
//!
//! Shared by `cargo xtask` (demo, qemu, bench) and the integration suite, so that every run
//! is set up the same way: the hypervisor built for `x86_64-unknown-none`, sparse disk images
//! partitioned by `sfdisk`, COM1 logged to `console.log`, COM2..COM4 on unix sockets for
//! dom0, dom1 and dom2, `machine.toml` describing it all, and QEMU under a wall-clock timeout
//! that dies with the process that started it.

mod backend;
mod build;
mod devices;
pub mod etcd;
pub mod guest;
mod image;
mod machine;
pub mod process;
mod vdisk;
pub mod walkthrough;

pub use backend::Backend;
pub use build::{
    build_backend, build_blkio_runner, build_hypervisor, build_vdisk, target_directory,
    workspace_root,
};
pub use devices::write_devices;
pub use image::{default_partitions, DiskImages, DiskSpec};
pub use machine::{Machine, MachineConfig, SUMMARY_PREFIX};
pub use vdisk::Vdisk;
