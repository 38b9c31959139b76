//! The backend's life: claim `DIR`, open and register the disks, serve control.sock, keep the
//! per-VBD sockets in step with the table, and on SIGTERM, SIGINT or dom0's `Shutdown`
//! frame stop cleanly: no new connections, in-flight requests finished, disks flushed,
//! sockets removed. Or hand everything over to a new process ([`crate::takeover`]), or
//! take it over from an old one.

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use hv_vbd::SharingLevel;

use crate::control::{Service, Stop};
use crate::disks::Disks;
use crate::exports::Exports;
use crate::shared::Shared;
use crate::sockets::{Access, SocketDirectory};
use crate::takeover::{self, Handover};
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
    /// Take the VBDs and sockets over from the backend serving `dir`.
    pub takeover: bool,
    /// The host's lease in a shared pool, when there is one.
    pub lease: Option<crate::lease::LeaseSettings>,
}

/// Run the backend until it is told to stop. An error is one line for standard error.
pub fn run(settings: Settings) -> Result<(), String> {
    TABLE
        .set_sharing_ceiling(settings.sharing_ceiling)
        .map_err(|error| format!("cannot set the sharing ceiling: {error}"))?;
    let disks = Disks::open(&settings.devices)?;
    disks.register(&TABLE)?;
    let sockets = Arc::new(SocketDirectory::claim(
        &settings.dir,
        settings.access,
        settings.takeover,
    )?);
    let (start_id, registration, predecessor) = if settings.takeover {
        let (snapshot, stream) = takeover::request(&settings.dir)?;
        // The registration first: VBDs granted under one that has lapsed are never made.
        let registration = match (&settings.lease, snapshot.registration) {
            (None, Some(_)) => {
                return Err(format!(
                    "the backend serving {} is registered with a pool: take it over with --pool and --host",
                    settings.dir.display()
                ))
            }
            (None, None) => None,
            (Some(lease), continues) => Some(
                crate::lease::start(lease, snapshot.start_id, continues).map_err(|error| {
                    format!(
                        "{error}: the VBDs of the backend serving {} were granted under it, and other hosts may have their disks now; start without --takeover, then vdisk restore checks them again",
                        settings.dir.display()
                    )
                })?,
            ),
        };
        let domains = snapshot.restore(&TABLE)?;
        (
            snapshot.start_id,
            registration,
            Some((stream, domains, snapshot.vbds.len())),
        )
    } else {
        let start_id = fresh_start_id()?;
        let registration = settings
            .lease
            .as_ref()
            .map(|lease| crate::lease::start(lease, start_id, None))
            .transpose()?;
        (start_id, registration, None)
    };
    let control_path = settings.dir.join("control.sock");

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

    let shared = Arc::new(Shared::new(
        &TABLE,
        disks,
        settings.queues,
        start_id,
        registration,
    ));
    let service = Arc::new(Service::new(
        shared.clone(),
        Exports::new(shared.clone(), sockets.clone(), settings.nbd_idle_timeout),
        stop_sender,
    ));
    let taken_over = predecessor
        .map(|(stream, domains, count)| {
            {
                let mut exports = service.lock_exports();
                for domain in domains {
                    exports.reconcile(domain);
                }
            }
            sockets.taken_over();
            takeover::taken(stream).map(|()| count)
        })
        .transpose()?;
    let listener = sockets.listen(&control_path)?;
    let control = crate::control::serve(service.clone(), listener, settings.control_idle_timeout)
        .map_err(|error| format!("{}: cannot serve: {error}", control_path.display()))?;
    if let Some(count) = taken_over {
        eprintln!(
            "vbd-backend: took over {count} VBDs from the backend serving {}",
            settings.dir.display()
        );
    }
    let handover = Arc::new(Handover {
        service: service.clone(),
        sockets: sockets.clone(),
        control: Mutex::new(control),
        control_idle_timeout: settings.control_idle_timeout,
        successor: Mutex::new(None),
    });
    let takeover_socket = takeover::serve(handover.clone())?;
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
    takeover_socket.stop();
    handover
        .control
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .stop();
    if reason == Stop::HandedOver {
        // The paths are the new process's: only the connections end here.
        service.lock_exports().hand_over();
        shared
            .disks
            .flush_all()
            .map_err(|error| format!("flushing the disks failed: {error}"))?;
        eprintln!("vbd-backend: handed over");
        return Ok(());
    }
    shared.stop();
    service.lock_exports().stop();
    let flushed = shared.disks.flush_all();
    let _ = fs::remove_file(&control_path);
    let _ = fs::remove_file(settings.dir.join(takeover::SOCKET));
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
