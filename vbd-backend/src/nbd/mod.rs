//! NBD exports of dom0's VBDs, so dom0 fills and inspects virtual disks with standard tools
//! (`qemu-img`, `qemu-io`, libnbd). A small fixed-newstyle server written here: the Rust NBD
//! server crates are immature or GPL-licensed (tokio-nbd), and the subset needed (the
//! handshake, simple replies, six commands) is a few hundred lines.
//!
//! Structured replies are refused (`NBD_REP_ERR_UNSUP`), which every client must accept;
//! the data path is then one header and the data per request.

mod handshake;
mod transmission;

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use hv_vbd::VbdRef;
use vbd_backend::nbd::{options, request, wire};

use crate::service::Shared;
use crate::threads::{Connections, VbdSocket};
use crate::vbd::{Translator, VbdState};

/// Clients of one export at once.
const MAX_CONNECTIONS: usize = 8;

/// One VBD's NBD socket.
pub struct Export {
    pub socket: VbdSocket,
}

/// What a connection serves.
struct Target {
    shared: Arc<Shared>,
    /// The VBD the socket was made for; once it is gone, so is the export.
    vbd: VbdRef,
    /// The export name: the VBD's device name. The empty default name is accepted too.
    name: String,
}

impl Export {
    pub fn start(
        shared: Arc<Shared>,
        state: VbdState,
        name: String,
        listener: UnixListener,
    ) -> io::Result<Export> {
        let target = Arc::new(Target {
            shared,
            vbd: state.vbd,
            name: name.clone(),
        });
        let connections = Connections::serve(
            format!("dom0/{name}.nbd"),
            listener,
            MAX_CONNECTIONS,
            move |stream| {
                if let Err(error) = connection(&target, stream) {
                    eprintln!(
                        "vbd-backend: dom0/{}.nbd: connection ended: {error}",
                        target.name
                    );
                }
            },
        )?;
        Ok(Export {
            socket: VbdSocket::new(connections),
        })
    }
}

/// Serve one client. Its I/O context is claimed first: a client the table has no room for
/// is closed before the handshake.
fn connection(target: &Target, mut stream: UnixStream) -> io::Result<()> {
    let mut translator = Translator::new(target.shared.table)
        .map_err(|error| io::Error::other(format!("no I/O context for it: {error}")))?;
    match handshake::negotiate(&mut stream, target)? {
        Some(export) => transmission::serve(&mut stream, target, &mut translator, export),
        None => Ok(()),
    }
}
