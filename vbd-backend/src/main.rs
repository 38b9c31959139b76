//! `vbd-backend`: the dom0 block backend. It embeds hv-vbd as a hypervisor does (one VBD
//! table, the disks of a devices file) and serves real virtual machines: each guest VBD as a
//! vhost-user-blk socket, each of dom0's as an NBD export, and dom0's hypercall frames on a
//! control socket, so `vdisk --hv unix:DIR/control.sock` drives it as it drives the test
//! hypervisor.

mod block;
mod control;
mod disks;
mod exports;
mod guest_memory;
mod nbd;
mod service;
mod sys;
mod threads;
mod uring;
mod vbd;
mod vhost;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hv_vbd::SharingLevel;

/// Serve VBDs to virtual machines: vhost-user-blk for guests, NBD for dom0, and dom0's
/// hypercall channel on DIR/control.sock.
///
/// Sockets: DIR/control.sock (dom0's hypercalls and block I/O, as the test hypervisor's
/// dom0 port; its Ready reply carries this start's random identifier); DIR/domD/VDEV.sock
/// for each VBD of guest domain D >= 1 (vhost-user-blk, one VMM at a time, get-id is the
/// VBD's label); DIR/dom0/VDEV.nbd for each VBD of dom0 (NBD, export name VDEV). Each
/// exists while its VBD does: `vdisk attach` returns once it exists, `vdisk detach` once it
/// is gone and the I/O in flight on the old mapping has finished.
///
/// Ready: control.sock accepts connections once the disks are registered, and standard
/// error says `vbd-backend: serving N disks on DIR/control.sock (... start 0x...)`.
///
/// A backend that dies leaves a VMM with no one to answer its guest: QEMU then holds the
/// guest's requests for ever. With `reconnect=1` on the VMM's chardev, QEMU reconnects when
/// the socket is back (a new backend, the VBD attached again) and the guest's requests then
/// fail with I/O errors until the guest resets the device, since no backend can vouch for
/// what that guest believes about the disk.
///
/// Exit status: 0 stopped by SIGTERM, SIGINT or dom0's shutdown frame, after finishing the
/// requests in flight (queued ones fail), flushing the disks and removing the sockets; 1
/// could not start or stop cleanly (one line on standard error); 2 usage.
#[derive(Parser)]
#[command(
    name = "vbd-backend",
    version,
    after_help = "Example:\n  vbd-backend --devices machine.toml --dir /run/vbd &\n  vdisk --hv unix:/run/vbd/control.sock attach vd:1 xvda 1 rw\n  qemu-system-x86_64 ... -chardev socket,id=c0,path=/run/vbd/dom1/xvda.sock,reconnect=1 -device vhost-user-blk-pci,chardev=c0"
)]
struct Options {
    /// vdisk's devices file: `[[disk]] name, device, path` for each disk (image or device).
    #[arg(long)]
    devices: PathBuf,
    /// Where the sockets are made; created if missing. Stale sockets are replaced.
    #[arg(long)]
    dir: PathBuf,
    /// The sharing ceiling: the most a request may accept (`vdisk attach --safety N`
    /// asks for N). 0 read-only sharing, 1 one writer with readers, 2 anything.
    #[arg(long, default_value = "2", value_parser = sharing_level)]
    sharing: SharingLevel,
    /// Virtqueues per vhost-user-blk device, each served by its own thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    queues: u16,
}

fn sharing_level(text: &str) -> Result<SharingLevel, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a sharing level: 0, 1 or 2"))
}

fn main() -> ExitCode {
    let options = Options::parse();
    let settings = service::Settings {
        devices: options.devices,
        dir: options.dir,
        sharing_ceiling: options.sharing,
        queues: options.queues,
    };
    match service::run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("vbd-backend: {}", error.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
