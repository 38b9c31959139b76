//! qemu-storage-daemon serving a raw image as vhost-user-blk and NBD at once: the `qsd`
//! baseline of the guest benchmarks, and a known-good backend for testing the guest side.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::Daemon;

/// A running qemu-storage-daemon. Dropping it stops the daemon.
pub struct StorageDaemon {
    daemon: Daemon,
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
        let arguments = [
            "--blockdev".to_owned(),
            format!("driver=file,node-name=f0,filename={}", image.display()),
            "--blockdev".to_owned(),
            "driver=raw,node-name=d0,file=f0".to_owned(),
            "--export".to_owned(),
            format!(
                "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path={},writable=on,num-queues={queues}",
                vhost_user_socket.display()
            ),
            "--nbd-server".to_owned(),
            format!("addr.type=unix,addr.path={}", nbd_socket.display()),
            "--export".to_owned(),
            "type=nbd,id=e1,node-name=d0,name=d0,writable=on".to_owned(),
        ];
        let daemon = Daemon::spawn_serving(
            Path::new("qemu-storage-daemon"),
            &arguments,
            &dir.join("qsd.log"),
            "install qemu-system-common",
            &[&vhost_user_socket, &nbd_socket],
        )?;
        Ok(StorageDaemon {
            daemon,
            vhost_user_socket,
            nbd_socket,
        })
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Stop the daemon with SIGTERM and require a clean exit (status 0) within 10 s.
    pub fn stop(self) -> Result<(), String> {
        self.daemon.stop(Duration::from_secs(10)).map(drop)
    }
}
