//! The backend's life: claim `DIR`, open and register the disks, serve control.sock, keep the
//! per-VBD sockets in step with the table, and on SIGTERM, SIGINT or dom0's `Shutdown`
//! frame stop cleanly: no new connections, in-flight requests finished, disks flushed,
//! sockets removed.

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use hv_vbd::SharingLevel;

use crate::control::{Service, Stop};
use crate::disks::Disks;
use crate::exports::Exports;
use crate::shared::Shared;
use crate::sockets::{Access, SocketDirectory};
use crate::vbd::Table;

/// The table, in a `static` as a hypervisor keeps it: it is about 2 MiB.
static TABLE: Table = Table::new(SharingLevel::Unrestricted);

/// How the backend was started.
pub struct Settings {
    pub devices: PathBuf,
    pub dir: PathBuf,
    /// The most permissive sharing level a request may ask for.
    pub sharing_ceiling: SharingLevel,
    pub queues: u16,
    /// Who besides the backend's user may reach the sockets.
    pub access: Access,
    /// How long a client of control.sock, or of an NBD export, may stay idle.
    pub control_idle_timeout: Duration,
    pub nbd_idle_timeout: Duration,
    /// The host's lease in a shared pool, when there is one.
    pub lease: Option<crate::lease::LeaseSettings>,
}

/// Run the backend until it is told to stop. An error is one line for standard error.
pub fn run(settings: Settings) -> Result<(), String> {
    TABLE
        .set_sharing_ceiling(settings.sharing_ceiling)
        .map_err(|error| format!("cannot set the sharing ceiling: {error}"))?;
    let start_id = fresh_start_id()?;
    if let Some(lease) = &settings.lease {
        crate::lease::start(lease, start_id)?;
    }
    let disks = Disks::open(&settings.devices)?;
    disks.register(&TABLE)?;
    let sockets = Arc::new(SocketDirectory::claim(&settings.dir, settings.access)?);
    let control_path = settings.dir.join("control.sock");
    let listener = sockets.listen(&control_path)?;

    let (stop_sender, stop_receiver) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|error| format!("cannot handle SIGTERM and SIGINT: {error}"))?;
    let signal_sender = stop_sender.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let _ = signal_sender.send(Stop::Signal(signal));
            }
        })
        .map_err(|error| format!("cannot start the signal thread: {error}"))?;

    let shared = Arc::new(Shared::new(&TABLE, disks, settings.queues, start_id));
    let service = Arc::new(Service::new(
        shared.clone(),
        Exports::new(shared.clone(), sockets.clone(), settings.nbd_idle_timeout),
        stop_sender,
    ));
    let control = crate::control::serve(service.clone(), listener, settings.control_idle_timeout)
        .map_err(|error| format!("{}: cannot serve: {error}", control_path.display()))?;
    eprintln!(
        "vbd-backend: serving {} disks on {} (sharing ceiling {}, queues per guest VBD: {}, start {start_id:#018x})",
        shared.disks.iter().count(),
        control_path.display(),
        shared.table.sharing_ceiling(),
        shared.queues
    );

    let reason = stop_receiver
        .recv()
        .map_err(|_| "the stop channel closed".to_string())?;
    eprintln!("vbd-backend: stopping ({reason:?})");
    shared.stop();
    control.stop();
    service.lock_exports().stop();
    let flushed = shared.disks.flush_all();
    let _ = fs::remove_file(&control_path);
    sockets.remove_private();
    flushed.map_err(|error| format!("flushing the disks failed: {error}"))?;
    eprintln!("vbd-backend: stopped");
    Ok(())
}

/// A random identifier for this start: 64 bits from the kernel's generator, so no two
/// starts share one.
fn fresh_start_id() -> Result<u64, String> {
    let mut bytes = [0u8; 8];
    fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|error| format!("/dev/urandom: cannot read a start identifier: {error}"))?;
    Ok(u64::from_ne_bytes(bytes))
}
