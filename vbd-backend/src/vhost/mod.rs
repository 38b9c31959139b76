//! vhost-user-blk sockets of guest VBDs, served with the rust-vmm crates. One connection at
//! a time: a second waits (up to 10 s) for the first to end, and is closed if it does not.
//! Each connection gets a fresh vhost-user daemon, with its own queue threads, joined when
//! the VMM goes.
//!
//! A VMM whose backend went away (killed, or stopped) and that reconnects (QEMU's
//! `-chardev socket,...,reconnect=1`) resumes its rings where its guest left them, without
//! resetting the device. A VMM that took up inflight tracking ([`inflight`]) hands back the
//! record of its rings: when it was made for the VBD this socket serves now (same label,
//! mode, size and extents), the requests that were in flight are done again, in order, and
//! the rings are served from there: the guest sees a pause. Without a record, or with one
//! of another VBD, a restarted backend cannot know what that guest believes about the
//! disk, so every request of such a connection fails with `VIRTIO_BLK_S_IOERR`: the guest
//! sees errors, never another VBD's data under the old name. The errors last until the
//! guest resets the device (its rings start at 0 again, and it reads the disk afresh).
//! Without a record, only a VMM that this socket's VBD saw start its rings (same process,
//! rings at 0) is trusted to resume.

mod bridge;
mod device;
#[allow(unsafe_code)]
mod exit_events;
mod inflight;
mod memory_regions;
mod memory_table;
mod queue;

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use vbd_backend::vhost::request;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use self::bridge::{BackendChannel, Inbound, Vmm};
use self::device::{BlockDevice, DeviceTarget};
use self::inflight::{Inflight, Start};
use crate::shared::Shared;
use crate::sockets::{Peers, SocketDirectory};
use crate::threads::{Connections, Policy, VbdSocket};
use crate::vbd::VbdState;

/// One VMM at a time. A VMM that reconnects right after a disconnect (QEMU's `reconnect=N`)
/// finds its old connection still tearing down (the daemon joins its queue threads, each
/// after the request it serves): the new one waits for that, bounded, rather than being
/// refused.
const ONE_VMM: Policy = Policy {
    limit: 1,
    wait_for_slot: Duration::from_secs(10),
    // A VMM may run as another user, one of the group `--socket-group` names.
    peers: Peers::Anyone,
    // A VMM's connection is quiet while its guest is: its life is the VMM's to end.
    idle_timeout: None,
};

/// One guest VBD's vhost-user-blk socket.
pub struct Export {
    pub socket: VbdSocket,
    session: Arc<Session>,
}

/// What the connections of one socket share.
struct Session {
    target: Arc<DeviceTarget>,
    channel: BackendChannel,
    /// Where the private sockets between the relay and the daemon are made.
    sockets: Arc<SocketDirectory>,
    /// The VMM processes whose rings started at 0 on this socket: they may resume.
    started_by: Mutex<Vec<u32>>,
    /// The connection being served, if any.
    current: Mutex<Option<Current>>,
}

/// What the socket's other users need of the connection being served.
#[derive(Clone)]
struct Current {
    inflight: Arc<Inflight>,
    resumed: Arc<ResumedRings>,
    device: Arc<BlockDevice>,
}

impl Export {
    pub fn start(
        shared: Arc<Shared>,
        state: VbdState,
        name: String,
        listener: UnixListener,
        sockets: Arc<SocketDirectory>,
    ) -> io::Result<Export> {
        let label = format!("dom{}/{name}.sock", state.id().domain);
        let serial = if state.label.is_empty() {
            name
        } else {
            state.label.to_string()
        };
        let session = Arc::new(Session {
            target: Arc::new(DeviceTarget {
                shared,
                vbd: state.vbd,
                writable: state.writable,
                serial,
                name: label.clone(),
            }),
            channel: BackendChannel::default(),
            sockets,
            started_by: Mutex::new(Vec::new()),
            current: Mutex::new(None),
        });
        let serving = session.clone();
        let connections = Connections::serve(label, listener, ONE_VMM, move |stream| {
            serving.serve(stream)
        })?;
        Ok(Export {
            socket: VbdSocket::new(connections),
            session,
        })
    }

    /// Another process took over: wait until the current connection's queue threads have
    /// completed every request they popped, then end the connections.
    pub fn hand_over(&self) {
        let current = lock(&self.session.current).clone();
        if let Some(current) = current {
            current.device.quiesce();
        }
        self.socket.stop();
    }

    /// The VBD changed (grown, or its extents set anew): record it anew in the inflight
    /// region, so that a restart resumes onto the VBD the guest is served now. Not when a
    /// ring resumed untrusted: the guest's view of the disk is unknown, and stays so until
    /// it resets the device.
    pub fn changed(&self) {
        let current = lock(&self.session.current).clone();
        if let (Some(current), Some(stamp)) = (current, self.session.stamp()) {
            if !current.resumed.any() {
                current.inflight.restamp(stamp);
            }
        }
    }

    /// The VBD's size changed: tell the VMM to re-read the config space.
    pub fn resized(&self) {
        self.changed();
        match self.session.channel.config_changed() {
            Ok(true) | Ok(false) => {}
            Err(error) => eprintln!("vbd-backend: cannot signal a config change: {error}"),
        }
    }
}

/// The rings of one connection that were resumed where this backend did not start them: a
/// bit per ring index (indices past 63 share the last bit, and the daemon refuses them).
#[derive(Debug, Default)]
pub struct ResumedRings {
    rings: AtomicU64,
}

impl ResumedRings {
    /// Whether any ring is resumed: then the guest's view of the disk is unknown here.
    pub fn any(&self) -> bool {
        self.rings.load(Ordering::Acquire) != 0
    }

    fn bit(index: u32) -> u64 {
        1 << index.min(63)
    }

    /// Ring `index` resumes elsewhere than at 0; `true` if it is the first such ring.
    fn resume(&self, index: u32) -> bool {
        self.rings.fetch_or(Self::bit(index), Ordering::AcqRel) == 0
    }

    /// Ring `index` starts at 0: the driver (re)started it.
    fn start(&self, index: u32) {
        self.rings.fetch_and(!Self::bit(index), Ordering::AcqRel);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Session {
    fn started_by(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        lock(&self.started_by)
    }

    /// The stamp of the socket's VBD as it is now, for inflight records.
    fn stamp(&self) -> Option<inflight::Stamp> {
        inflight::stamp_of(self.target.shared.table, &self.target.vbd)
    }

    /// Serve one VMM connection until it ends.
    fn serve(&self, vmm: UnixStream) -> io::Result<()> {
        let vmm_process = rustix::net::sockopt::socket_peercred(&vmm)?
            .pid
            .as_raw_nonzero()
            .get() as u32;
        let trusted = self.started_by().contains(&vmm_process);
        let resumed = Arc::new(ResumedRings::default());
        let started = AtomicBool::new(false);
        let inflight = Arc::new(Inflight::new(self.target.shared.queues));
        let name = &self.target.name;
        let ring_base = |index: u32, base: u32| {
            match inflight.ring_starts(index, base, || self.stamp())? {
                Start::Fresh => {
                    started.store(true, Ordering::Release);
                    resumed.start(index);
                }
                Start::Resumed => {
                    resumed.start(index);
                    eprintln!("vbd-backend: {name}: ring {index} resumes from its inflight record: the requests in flight are done again");
                }
                Start::Foreign(why) => {
                    if resumed.resume(index) {
                        eprintln!("vbd-backend: {name}: ring {index} resumes from an inflight record of another VBD ({why}): its requests fail until the guest resets the device");
                    }
                }
                Start::Unrecorded if base == 0 => {
                    started.store(true, Ordering::Release);
                    resumed.start(index);
                }
                Start::Unrecorded => {
                    if !trusted && resumed.resume(index) {
                        eprintln!(
                            "vbd-backend: {name}: VMM process {vmm_process} resumes ring {index} at {base}, which this backend did not start, with no inflight record (a VMM reconnecting after a restart?): its requests fail until the guest resets the device"
                        );
                    }
                }
            }
            Ok(())
        };
        let get_inflight = |asked: &[u8; inflight::PAYLOAD_BYTES]| {
            let stamp = self
                .stamp()
                .ok_or_else(|| io::Error::other("the VBD is gone"))?;
            inflight.get(asked, stamp)
        };
        let memory = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
        let device = Arc::new(BlockDevice::new(
            self.target.clone(),
            memory.clone(),
            resumed.clone(),
            inflight.clone(),
            vmm.try_clone()?,
        ));
        *lock(&self.current) = Some(Current {
            inflight: inflight.clone(),
            resumed: resumed.clone(),
            device: device.clone(),
        });
        let mut daemon = VhostUserDaemon::new(self.target.serial.clone(), device, memory)
            .map_err(|error| io::Error::other(error.to_string()))?;
        let daemon_side = self.connect_daemon(&mut daemon)?;
        let watch = Inbound {
            channel: &self.channel,
            ring_base: &ring_base,
            inflight: &inflight,
            get_inflight: &get_inflight,
        };
        let vmm_side = Vmm::new(&vmm);
        let result = thread::scope(|scope| {
            let inbound = scope.spawn(|| bridge::relay_inbound(&vmm_side, &daemon_side, &watch));
            let outbound = bridge::relay_outbound(&daemon_side, &vmm_side);
            let inbound = inbound
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("relay panicked")));
            outbound.and(inbound)
        });
        self.channel.clear();
        // The daemon's thread sees its connection end; dropping it joins the queue threads,
        // each after the request it was serving.
        let waited = match daemon.wait() {
            // The VMM going away is how every connection ends.
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => Ok(()),
            Err(error) => Err(io::Error::other(error.to_string())),
        };
        drop(daemon);
        lock(&self.current).take();
        if started.load(Ordering::Acquire) && !resumed.any() && !trusted {
            self.started_by().push(vmm_process);
        }
        result.and(waited)
    }

    /// Connect the daemon to a private socket, accept it, and check it is this process.
    fn connect_daemon(
        &self,
        daemon: &mut VhostUserDaemon<Arc<BlockDevice>>,
    ) -> io::Result<UnixStream> {
        let path = self.sockets.private_path("bridge");
        let listener = UnixListener::bind(&path)?;
        let connected = path
            .to_str()
            .ok_or_else(|| io::Error::other("a socket path that is not UTF-8"))
            .and_then(|text| {
                daemon
                    .start_client(text)
                    .map_err(|error| io::Error::other(error.to_string()))
            });
        let accepted = connected.and_then(|()| listener.accept());
        let _ = std::fs::remove_file(&path);
        let (stream, _) = accepted?;
        let peer = rustix::net::sockopt::socket_peercred(&stream)?;
        if peer.pid.as_raw_nonzero().get() as u32 != std::process::id() {
            return Err(io::Error::other(
                "another process connected to the private socket",
            ));
        }
        Ok(stream)
    }
}
