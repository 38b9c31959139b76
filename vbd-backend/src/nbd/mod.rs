//! NBD exports of dom0's VBDs, so dom0 fills, copies and inspects virtual disks with
//! standard tools (`qemu-img`, `qemu-io`, nbdcopy, nbdinfo, fio). A small fixed-newstyle
//! server written here: the Rust NBD server crates are immature or GPL-licensed
//! (tokio-nbd). It speaks structured replies, `base:allocation` block status (holes found on
//! the disks, see `allocation`), multi-conn, fast zero and cache, as qemu-nbd does.
//!
//! One thread per connection: a client that stops reading its replies blocks its own
//! thread only, never another connection's. Each connection takes in what its client has
//! sent in one receive and answers it in one send (`batched`).

mod allocation;
mod batched;
mod handshake;
mod reply;
mod transmission;

use std::io::{self, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use hv_vbd::VbdRef;
use vbd_backend::nbd::{options, request, wire};

use crate::shared::Shared;
use crate::sockets::Peers;
use crate::threads::{Connections, Policy, VbdSocket};
use crate::vbd::{Translator, VbdState};

/// Clients of one export at once. Large: the idle timeout, not this bound, is what keeps
/// idle clients from locking the others out.
const MAX_CONNECTIONS: usize = 256;

/// How long a client past `MAX_CONNECTIONS` waits for a slot.
const WAIT_FOR_SLOT: Duration = Duration::from_secs(10);

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
        idle_timeout: Duration,
    ) -> io::Result<Export> {
        let target = Arc::new(Target {
            shared,
            vbd: state.vbd,
            name: name.clone(),
        });
        let connections = Connections::serve(
            format!("dom0/{name}.nbd"),
            listener,
            Policy {
                limit: MAX_CONNECTIONS,
                wait_for_slot: WAIT_FOR_SLOT,
                // dom0's exports carry dom0's authority over its disks.
                peers: Peers::Owner,
                idle_timeout: Some(idle_timeout),
            },
            move |stream| connection(&target, stream),
        )?;
        Ok(Export {
            socket: VbdSocket::new(connections),
        })
    }
}

/// Serve one client: the handshake, then its requests.
fn connection(target: &Target, stream: UnixStream) -> io::Result<()> {
    let mut stream = batched::Batched::new(&stream);
    let served = serve(target, &mut stream);
    // Replies to what came before an error or a disconnect still go out.
    let flushed = stream.flush();
    served.and(flushed)
}

fn serve(target: &Target, stream: &mut batched::Batched) -> io::Result<()> {
    let Some(export) = handshake::negotiate(stream, target)? else {
        return Ok(());
    };
    let mut translator = Translator::new(target.shared.table);
    transmission::serve(stream, target, &mut translator, export)
}
