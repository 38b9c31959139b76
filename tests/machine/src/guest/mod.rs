//! Real Linux guests in QEMU (TCG): Debian's cloud kernel, a busybox initramfs or an ext4
//! root filesystem, vhost-user-blk disks (vbd-backend, qemu-storage-daemon) and virtio-blk
//! disks, and a line protocol on the console by which a guest reports results and the host
//! decides whether the run passed; fio jobs, and the CPU time and resident memory of the
//! servers behind the disks.
//!
//! ```no_run
//! use vbd_machine::guest::{run_guest, GuestArtefacts, GuestConfig, GuestDisk, Initramfs, StorageDaemon};
//! # fn main() -> Result<(), String> {
//! let dir = std::path::Path::new("target/example");
//! let artefacts = GuestArtefacts::ensure()?;
//! let daemon = StorageDaemon::start(dir, &dir.join("disk.img"), 1)?;
//! let initrd = dir.join("initramfs.cpio.gz");
//! Initramfs::guest(&artefacts, "wait_for_block /dev/vda\nresult sum \"$(md5sum < /dev/vda)\"")
//!     .write(&initrd)?;
//! let mut config = GuestConfig::new(dir, &artefacts, &initrd);
//! config.disks.push(GuestDisk::vhost_user(&daemon.vhost_user_socket));
//! let report = run_guest(&config)?;
//! println!("the guest read {}", report.get("sum")?);
//! # Ok(())
//! # }
//! ```

mod apt;
mod artefacts;
mod cpu;
mod fio;
mod initramfs;
mod memory;
mod report;
mod rootfs;
mod runner;
mod script;
mod storage_daemon;

pub use apt::{install as apt_install, is_root};
pub use artefacts::{guest_directory, Fio, GuestArtefacts, VIRTIO_MODULES};
pub use cpu::process_cpu_time;
pub use fio::{run_job, Engine, FioDirection, FioJob, FioReport, FioRun, Pattern};
pub use initramfs::{fio_layer, Initramfs};
pub use memory::{process_resident_bytes, process_shared_resident_bytes};
pub use report::GuestReport;
pub use rootfs::RootFilesystem;
pub use runner::{run_guest, Aio, Cache, Guest, GuestConfig, GuestDisk};
pub use script::{MANIFEST, PREFIX};
pub use storage_daemon::StorageDaemon;
