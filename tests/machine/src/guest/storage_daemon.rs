//! qemu-storage-daemon serving a raw image as vhost-user-blk and NBD at once: the `qsd`
//! baseline of the guest benchmarks, and a known-good backend for testing the guest side.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use crate::machine::terminate;
use crate::process::{spawn_logged, stop_gracefully, wait_until_ready};

/// A running qemu-storage-daemon. Dropping it stops the daemon.
pub struct StorageDaemon {
    child: Option<Child>,
    /// The vhost-user-blk socket, for [`super::GuestDisk::VhostUser`].
    pub vhost_user_socket: PathBuf,
    /// The NBD socket; the export is named `d0` (`nbd:unix:PATH:exportname=d0`).
    pub nbd_socket: PathBuf,
}

impl StorageDaemon {
    /// Serve `image` with `queues` virtqueues; the sockets and `qsd.log` go in `dir`. Returns
    /// once both sockets exist.
    pub fn start(dir: &Path, image: &Path, queues: u16) -> Result<StorageDaemon, String> {
        let vhost_user_socket = dir.join("qsd-vhost-user.sock");
        let nbd_socket = dir.join("qsd-nbd.sock");
        for socket in [&vhost_user_socket, &nbd_socket] {
            let _ = fs::remove_file(socket);
        }
        let mut command = Command::new("setpriv");
        // setpriv execs the daemon, so the child's pid is the daemon's (for its CPU time).
        command.args(["--pdeathsig", "TERM", "--", "qemu-storage-daemon"]);
        command.arg("--blockdev").arg(format!(
            "driver=file,node-name=f0,filename={}",
            image.display()
        ));
        command.args(["--blockdev", "driver=raw,node-name=d0,file=f0"]);
        command.arg("--export").arg(format!(
            "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path={},writable=on,num-queues={queues}",
            vhost_user_socket.display()
        ));
        command
            .arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", nbd_socket.display()));
        command.args([
            "--export",
            "type=nbd,id=e1,node-name=d0,name=d0,writable=on",
        ]);
        let log = dir.join("qsd.log");
        let mut child = spawn_logged(&mut command, &log, "install qemu-system-common")?;
        let ready = || vhost_user_socket.exists() && nbd_socket.exists();
        let waited = wait_until_ready(
            &mut child,
            "qemu-storage-daemon",
            &log,
            Duration::from_secs(10),
            "made no sockets",
            ready,
        );
        let daemon = StorageDaemon {
            child: Some(child),
            vhost_user_socket,
            nbd_socket,
        };
        waited.map(|()| daemon)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Stop the daemon with SIGTERM and require a clean exit (status 0).
    pub fn stop(mut self) -> Result<(), String> {
        let child = self
            .child
            .take()
            .ok_or("qemu-storage-daemon is not running")?;
        stop_gracefully(child, "qemu-storage-daemon", Duration::from_secs(10))
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}
