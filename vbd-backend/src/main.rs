//! `vbd-backend`: the dom0 block backend. It embeds hv-vbd as a hypervisor does (one VBD
//! table, the disks of a devices file) and serves real virtual machines: each guest VBD as a
//! vhost-user-blk socket, each of dom0's as an NBD export, and dom0's hypercall frames on a
//! control socket, so `vdisk --hv unix:DIR/control.sock` drives it as it drives the test
//! hypervisor.
//!
//! `unsafe` is denied here and allowed only in the modules that must hand memory to the
//! kernel or take a signal: [`sys`] and [`uring`] (positioned and ring I/O into guest
//! memory), [`guest_memory`] (the SIGBUS guard) and `vhost::exit_events` (closing the
//! descriptors vhost-user-backend leaks).
#![deny(unsafe_code)]

mod block;
mod control;
mod disks;
mod exports;
mod fence;
#[allow(unsafe_code)]
mod guest_memory;
mod lease;
mod nbd;
mod polling;
mod service;
mod shared;
mod sockets;
#[allow(unsafe_code)]
mod sys;
mod takeover;
mod threads;
#[allow(unsafe_code)]
mod uring;
mod vbd;
mod vhost;

#[cfg(test)]
#[path = "../tests/faulty_disk/mod.rs"]
mod faulty_disk;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hv_vbd::SharingLevel;
use pool_cluster::PoolUrl;

/// Serve VBDs to virtual machines: vhost-user-blk for guests, NBD for dom0, and dom0's
/// hypercall channel on DIR/control.sock.
///
/// Sockets: DIR and everything in it are the backend user's alone (0700 directories, 0600
/// sockets, whatever the umask) unless --socket-group widens them; control.sock and dom0's
/// exports close, at once and with a log line, a peer that is neither root nor the
/// backend's own user. DIR/control.sock (dom0's hypercalls and block I/O, as the test hypervisor's
/// dom0 port; its Ready reply carries this start's random identifier); DIR/domD/VDEV.sock
/// for each VBD of guest domain D >= 1 (vhost-user-blk, one VMM at a time: another waits
/// up to 10 s for it to end; get-id is the VBD's label); DIR/dom0/VDEV.nbd for each VBD of dom0 (NBD, export name VDEV). Each
/// exists while its VBD does: `vdisk attach` returns once it exists, `vdisk detach` once it
/// is gone and the I/O in flight on the old mapping has finished. DIR/takeover.sock (root
/// and the backend's user only) is where a --takeover asks for everything.
///
/// Ready: control.sock accepts connections once the disks are registered, and standard
/// error says `vbd-backend: serving N disks on DIR/control.sock (... start 0x...)`.
///
/// A backend that dies leaves a VMM with no one to answer its guest: QEMU then holds the
/// guest's requests. With `reconnect=1` on the VMM's chardev, QEMU reconnects when the
/// socket is back (a new backend, the VBD restored) and hands back its inflight record: the
/// requests that were in flight are done again and the guest goes on. A record of another
/// VBD (other extents, another mode), or none, makes the guest's requests fail with I/O
/// errors until it resets the device.
///
/// Upgrade in place: --takeover takes the VBDs and sockets of the backend serving DIR over
/// (through DIR/takeover.sock); that backend then finishes its requests in flight, closes
/// its connections (VMMs reconnect here) and exits 0.
///
/// Exit status: 0 stopped by SIGTERM, SIGINT or dom0's shutdown frame, after finishing the
/// requests in flight (queued ones fail), flushing the disks and removing the sockets, or
/// after handing everything over to a --takeover; 1 could not start or stop cleanly (one
/// line on standard error); 2 usage.
#[derive(Parser)]
#[command(
    name = "vbd-backend",
    version,
    after_help = "Example:\n  vbd-backend --devices machine.toml --dir /run/vbd &\n  vdisk --hv unix:/run/vbd/control.sock attach vd:1 xvda 1 rw\n  qemu-system-x86_64 ... -chardev socket,id=c0,path=/run/vbd/dom1/xvda.sock,reconnect=1 -device vhost-user-blk-pci,chardev=c0\n  vbd-backend --devices machine.toml --dir /run/vbd --takeover &   # a new binary, in place"
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
    /// Widen DIR, its domain directories and the sockets from owner-only (0700, 0600) to
    /// GROUP (0750, 0660), a name or a number: for VMMs that run as another user.
    /// control.sock and dom0's exports still serve only root and the backend's own user.
    #[arg(long, value_name = "GROUP", value_parser = sockets::group_id)]
    socket_group: Option<u32>,
    /// Close a client of control.sock that sends nothing (or takes no reply) for this many
    /// seconds, so idle clients never lock out vdisk.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    control_idle_timeout: u64,
    /// Close an NBD client that sends nothing (or takes no reply) for this many seconds, so
    /// idle clients never lock out others.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    nbd_idle_timeout: u64,
    /// Upgrade in place: take the VBDs and the sockets over from the backend serving DIR
    /// (its guests' VMMs reconnect here and resume), then that backend finishes its
    /// requests in flight and exits 0.
    #[arg(long)]
    takeover: bool,
    /// A pool on etcd, `etcd://HOST:PORT[,HOST:PORT...]`, to register this host with: the
    /// backend holds a lease there and fences itself (every I/O fails, nothing reaches the
    /// disks) from the moment the lease may have expired, so other hosts may then take
    /// over what it mapped.
    #[arg(long, value_parser = pool_argument)]
    pool: Option<Endpoints>,
    /// The host this backend serves, as `vdisk --host` names it (default: the machine's
    /// host name).
    #[arg(long)]
    host: Option<String>,
    /// The lease's time to live: I/O stops a second before it may run out without a
    /// renewal, which is tried every third of it.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=3600))]
    lease_ttl: u64,
}

/// The client endpoints of a pool's etcd members.
#[derive(Clone)]
struct Endpoints(Vec<String>);

fn pool_argument(text: &str) -> Result<Endpoints, String> {
    match PoolUrl::parse(text).map_err(|error| error.to_string())? {
        PoolUrl::Etcd(endpoints) => Ok(Endpoints(endpoints)),
        PoolUrl::Sqlite(_) => Err(format!(
            "{text:?}: a backend registers its host only with a pool on etcd (etcd://HOST:PORT)"
        )),
    }
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
        access: sockets::Access {
            group: options.socket_group,
        },
        control_idle_timeout: Duration::from_secs(options.control_idle_timeout),
        nbd_idle_timeout: Duration::from_secs(options.nbd_idle_timeout),
        takeover: options.takeover,
        lease: options
            .pool
            .map(|Endpoints(endpoints)| lease::LeaseSettings {
                url: format!("etcd://{}", endpoints.join(",")),
                endpoints,
                host: options.host.unwrap_or_else(|| {
                    rustix::system::uname()
                        .nodename()
                        .to_string_lossy()
                        .into_owned()
                }),
                ttl: Duration::from_secs(options.lease_ttl),
            }),
    };
    match service::run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("vbd-backend: {}", error.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
