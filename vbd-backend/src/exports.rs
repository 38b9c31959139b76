//! The per-VBD sockets, kept in step with the VBD table: after every change the control
//! channel makes, the changed domain is probed and its sockets created, removed or told
//! about a new size.
//!
//! dom0's VBDs are NBD exports, `DIR/dom0/VDEV.nbd`; a guest domain D's are vhost-user-blk
//! sockets, `DIR/domD/VDEV.sock`. The socket is the identity: each socket is made for one
//! VBD, pinned ([`hv_vbd::VbdRef`]), and a connection to it reaches that VBD of that domain
//! only. A removed VBD's socket disappears at once; a connection still open on it keeps
//! getting I/O errors until its peer goes, so a VBD created again under the same name is
//! never reached through a connection made to the old one: it gets a socket of its own.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shared_abi::{DeviceNumber, DOM0};

use crate::nbd;
use crate::shared::Shared;
use crate::sockets::{claim_socket_path, SocketDirectory};
use crate::threads::VbdSocket;
use crate::vbd::{domain_vbds, VbdState};
use crate::vhost;

/// How a socket serves its VBD.
enum Server {
    Nbd(nbd::Export),
    Vhost(vhost::Export),
}

struct Export {
    path: PathBuf,
    state: VbdState,
    server: Server,
}

impl Export {
    fn socket(&self) -> &VbdSocket {
        match &self.server {
            Server::Nbd(export) => &export.socket,
            Server::Vhost(export) => &export.socket,
        }
    }

    /// Stop accepting and remove the socket; connections still open fail their requests,
    /// since the VBD they were pinned to is gone.
    fn retire(&self) {
        self.socket().retire();
        let _ = fs::remove_file(&self.path);
        eprintln!("vbd-backend: removed {}", self.path.display());
    }
}

/// A VBD's name: its domain and virtual device.
type VbdName = (u32, DeviceNumber);

/// Every socket of every VBD.
pub struct Exports {
    shared: Arc<Shared>,
    sockets: Arc<SocketDirectory>,
    /// How long an NBD client may stay idle.
    nbd_idle_timeout: Duration,
    live: BTreeMap<VbdName, Export>,
    /// Removed VBDs whose connections are still open.
    retired: Vec<Export>,
}

/// The socket file name of a virtual device: its classic name (`xvda`) or `major:minor`.
fn vdevice_name(vdevice: DeviceNumber) -> String {
    vdevice
        .name()
        .map_or_else(|| vdevice.to_string(), |name| name.to_string())
}

fn name_of(state: &VbdState) -> VbdName {
    (state.id().domain, state.id().vdevice)
}

impl Exports {
    pub fn new(
        shared: Arc<Shared>,
        sockets: Arc<SocketDirectory>,
        nbd_idle_timeout: Duration,
    ) -> Exports {
        Exports {
            shared,
            sockets,
            nbd_idle_timeout,
            live: BTreeMap::new(),
            retired: Vec::new(),
        }
    }

    /// Bring `domain`'s sockets up to date with the table. Failures are logged: the table
    /// stays authoritative, and the next change of the domain tries again.
    pub fn reconcile(&mut self, domain: u32) {
        let current = match domain_vbds(self.shared.table, domain) {
            Ok(current) => current,
            Err(error) => {
                eprintln!("vbd-backend: cannot list the VBDs of domain {domain}: {error}");
                return;
            }
        };
        // A VBD deleted and created again under its name is another VBD: another socket.
        let gone: Vec<VbdName> = self
            .live
            .iter()
            .filter(|((vbd_domain, _), export)| {
                *vbd_domain == domain
                    && !current
                        .iter()
                        .any(|state| state.vbd.incarnation() == export.state.vbd.incarnation())
            })
            .map(|(name, _)| *name)
            .collect();
        for name in gone {
            if let Some(export) = self.live.remove(&name) {
                export.retire();
                self.retired.push(export);
            }
        }
        for state in current {
            match self.live.get_mut(&name_of(&state)) {
                Some(export) if export.state.size_sectors != state.size_sectors => {
                    export.state = state;
                    if let Server::Vhost(device) = &export.server {
                        device.resized();
                    }
                }
                // Its extents may have been set anew: what a guest's record names follows.
                Some(Export {
                    server: Server::Vhost(device),
                    ..
                }) => device.changed(),
                Some(_) => {}
                None => match self.create(state) {
                    Ok(export) => {
                        eprintln!("vbd-backend: serving {}", export.path.display());
                        self.live.insert(name_of(&state), export);
                    }
                    Err(error) => eprintln!("vbd-backend: {error}"),
                },
            }
        }
        self.retired.retain(|export| export.socket().is_serving());
    }

    fn create(&self, state: VbdState) -> Result<Export, String> {
        let domain = state.id().domain;
        let directory = self.sockets.domain(domain)?;
        let name = vdevice_name(state.id().vdevice);
        let extension = if domain == DOM0 { "nbd" } else { "sock" };
        let path = directory.join(format!("{name}.{extension}"));
        // While taking over, the live socket there is the old process's, replaced below.
        if !self.sockets.taking_over() {
            claim_socket_path(&path)?;
        }
        let listener = self.sockets.listen(&path)?;
        let server = if domain == DOM0 {
            nbd::Export::start(
                self.shared.clone(),
                state,
                name,
                listener,
                self.nbd_idle_timeout,
            )
            .map(Server::Nbd)
        } else {
            vhost::Export::start(
                self.shared.clone(),
                state,
                name,
                listener,
                self.sockets.clone(),
            )
            .map(Server::Vhost)
        }
        .map_err(|error| {
            let _ = fs::remove_file(&path);
            format!("{}: cannot serve: {error}", path.display())
        })?;
        Ok(Export {
            path,
            state,
            server,
        })
    }

    /// Another process took over and serves the sockets' paths: stop every socket and
    /// connection, each VMM's once its queue threads completed what they popped, and leave
    /// the paths alone.
    pub fn hand_over(&mut self) {
        for export in std::mem::take(&mut self.live).into_values() {
            match &export.server {
                Server::Vhost(device) => device.hand_over(),
                Server::Nbd(export) => export.socket.stop(),
            }
        }
        for export in self.retired.drain(..) {
            export.socket().stop();
        }
    }

    /// Stop every socket and connection and remove the sockets.
    pub fn stop(&mut self) {
        for export in std::mem::take(&mut self.live).into_values() {
            export.retire();
            export.socket().stop();
        }
        for export in self.retired.drain(..) {
            export.socket().stop();
        }
        for entry in fs::read_dir(self.sockets.root())
            .into_iter()
            .flatten()
            .flatten()
        {
            // Only the domain directories go, and only when empty.
            if entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with("dom"))
            {
                let _ = fs::remove_dir(entry.path());
            }
        }
    }
}
