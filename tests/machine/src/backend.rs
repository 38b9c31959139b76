//! vbd-backend as dom0 runs it: started on a devices file and a socket directory, ready once
//! its control socket answers, VBDs made on that socket from any extent list (as `vdisk
//! --hv` makes them, with the host-tools client), stopped with SIGTERM (a clean exit
//! required), killed with SIGKILL as a crash would kill it, or upgraded in place by a new
//! process started with `--takeover`.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use host_tools::hypervisor::Hypervisor;
use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, Label, Mode, SharingLevel};

use crate::process::Daemon;

/// What the backend prints last when it stopped cleanly.
const STOPPED: &str = "vbd-backend: stopped";

/// How long a stop may take: the backend finishes the requests in flight and flushes the
/// disks, which after a benchmark's writes to hundreds of MiB of images takes a while.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// A running `vbd-backend`. Dropping it stops the backend.
pub struct Backend {
    daemon: Daemon,
    dir: PathBuf,
    /// dom0's client on control.sock for [`Backend::attach`], connected at its first use and
    /// kept, so that many VBDs are made over one connection.
    control: Option<Hypervisor>,
}

impl Backend {
    /// Start `binary --devices DEVICES --dir DIR` with `options` after them (`--sharing 1`,
    /// `--queues 2`), both outputs in `log`; returns once `DIR/control.sock` accepts
    /// connections (a socket left by a killed backend does not count).
    pub fn start(
        binary: &Path,
        devices: &Path,
        dir: &Path,
        options: &[&str],
        log: &Path,
    ) -> Result<Backend, String> {
        let mut daemon = spawn(binary, devices, dir, options, log)?;
        let control = dir.join("control.sock");
        daemon.wait_until("serving control.sock", Duration::from_secs(20), || {
            UnixStream::connect(&control).is_ok()
        })?;
        Ok(Backend {
            daemon,
            dir: dir.to_path_buf(),
            control: None,
        })
    }

    /// Start a new backend with `--takeover` on the directory `self` serves, wait until it
    /// has taken over, then until `self` has finished and exited 0 on its own, logging
    /// `vbd-backend: handed over`. Returns the new backend.
    pub fn upgrade(
        self,
        binary: &Path,
        devices: &Path,
        options: &[&str],
        log: &Path,
    ) -> Result<Backend, String> {
        let takeover: Vec<&str> = ["--takeover"]
            .into_iter()
            .chain(options.iter().copied())
            .collect();
        let mut daemon = spawn(binary, devices, &self.dir, &takeover, log)?;
        daemon.wait_until("taking over", Duration::from_secs(20), || {
            fs::read_to_string(log).is_ok_and(|text| text.contains("vbd-backend: took over"))
        })?;
        let (status, old_log) = self.daemon.wait_exit(STOP_LIMIT)?;
        if !status.success() || old_log.lines().last() != Some("vbd-backend: handed over") {
            return Err(format!(
                "the old backend exited with {status} after the takeover: {}",
                old_log.trim()
            ));
        }
        Ok(Backend {
            daemon,
            dir: self.dir,
            control: None,
        })
    }

    /// The backend's process id (`setpriv` execs it), for its CPU time and memory in `/proc`.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// `unix:DIR/control.sock`, dom0's hypercall channel, as `vdisk --hv` takes it.
    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.dir.join("control.sock").display())
    }

    /// The vhost-user-blk socket of guest domain `domain`'s VBD `vdevice` (`xvda`).
    pub fn vhost_user_socket(&self, domain: u32, vdevice: &str) -> PathBuf {
        self.dir.join(format!("dom{domain}/{vdevice}.sock"))
    }

    /// The NBD socket of dom0's VBD `vdevice`.
    pub fn nbd_socket(&self, vdevice: &str) -> PathBuf {
        self.dir.join(format!("dom0/{vdevice}.nbd"))
    }

    /// The NBD URL of dom0's VBD `vdevice`, as `qemu-img` and `qemu-io` take it (the export
    /// is named after the device).
    pub fn nbd_url(&self, vdevice: &str) -> String {
        format!(
            "nbd+unix:///{vdevice}?socket={}",
            self.nbd_socket(vdevice).display()
        )
    }

    /// Make a read-write VBD `vdevice` of domain `domain` from `extents`, labelled `label`, on
    /// control.sock, and return its socket once it exists: the NBD export's for dom0, the
    /// vhost-user-blk socket's for a guest domain.
    pub fn attach(
        &mut self,
        domain: u32,
        vdevice: DeviceNumber,
        label: &str,
        extents: &[Extent],
    ) -> Result<PathBuf, String> {
        let name = vdevice
            .name()
            .map_or_else(|| vdevice.to_string(), |name| name.to_string());
        let what = format!("vbd-backend: attach {name} of domain {domain}");
        let label = Label::new(label).map_err(|error| format!("{what}: label: {error}"))?;
        let endpoint = self.endpoint();
        let control = match &mut self.control {
            Some(control) => control,
            unconnected => unconnected.insert(
                Hypervisor::connect(&endpoint).map_err(|error| format!("vbd-backend: {error}"))?,
            ),
        };
        control
            .create(domain, vdevice, Mode::READ | Mode::WRITE, label)
            .and_then(|()| control.set_extents(domain, vdevice, extents, SharingLevel::ReadersOnly))
            .map_err(|error| format!("{what}: {error}"))?;
        let socket = if domain == 0 {
            self.nbd_socket(&name)
        } else {
            self.vhost_user_socket(domain, &name)
        };
        self.daemon.wait_until(
            &format!("making {}", socket.display()),
            Duration::from_secs(10),
            || socket.exists(),
        )?;
        Ok(socket)
    }

    /// Stop the backend with SIGTERM and require what a clean stop is: exit status 0, the
    /// last line `vbd-backend: stopped`, and no control socket left behind. Returns all the
    /// backend printed.
    pub fn stop(self) -> Result<String, String> {
        let control = self.dir.join("control.sock");
        let log = self.daemon.stop(STOP_LIMIT)?;
        if log.lines().last() != Some(STOPPED) {
            return Err(format!(
                "vbd-backend exited 0 but its log does not end `{STOPPED}`: {}",
                log.trim()
            ));
        }
        if control.exists() {
            return Err(format!(
                "vbd-backend stopped and left {}",
                control.display()
            ));
        }
        Ok(log)
    }

    /// Kill the backend with SIGKILL, as a crash would: no flush, sockets left behind.
    pub fn kill(self) -> Result<(), String> {
        self.daemon.kill().map(drop)
    }
}

/// Spawn `binary --devices DEVICES --dir DIR OPTIONS...`, both outputs in `log`.
fn spawn(
    binary: &Path,
    devices: &Path,
    dir: &Path,
    options: &[&str],
    log: &Path,
) -> Result<Daemon, String> {
    let mut arguments = vec![
        "--devices".to_owned(),
        devices.display().to_string(),
        "--dir".to_owned(),
        dir.display().to_string(),
    ];
    arguments.extend(options.iter().map(|option| option.to_string()));
    Daemon::spawn(
        binary,
        &arguments,
        log,
        "build it with cargo build -p vbd-backend",
    )
}
