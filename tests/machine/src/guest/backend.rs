//! vbd-backend as a server for real guests: started on a devices file with its sockets in a
//! directory, VBDs made through its control socket with the host-tools client (as `vdisk
//! --hv` makes them, but from any extent list), stopped with SIGTERM and a clean exit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use host_tools::hypervisor::Hypervisor;
use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, Label, Mode, SharingLevel};

use crate::machine::terminate;
use crate::process::{spawn_logged, stop_gracefully, wait_until_ready};

/// A running vbd-backend. Dropping it kills the backend.
pub struct VbdBackend {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
    control: Hypervisor,
}

impl VbdBackend {
    /// Start `binary` on `devices` with `queues` virtqueues per vhost-user-blk device; its
    /// sockets go in `dir`, its output in `dir` + `.log`. Returns once control.sock answers.
    pub fn start(
        binary: &Path,
        devices: &Path,
        dir: &Path,
        queues: u16,
    ) -> Result<VbdBackend, String> {
        let mut command = Command::new("setpriv");
        // setpriv execs the backend, so the child's pid is the backend's (for /proc).
        command.args(["--pdeathsig", "TERM", "--"]).arg(binary);
        command.arg("--devices").arg(devices).arg("--dir").arg(dir);
        command.args(["--queues", &queues.to_string()]);
        let log = dir.with_extension("log");
        let mut child = spawn_logged(&mut command, &log, "cargo build -p vbd-backend")?;
        let endpoint = format!("unix:{}", dir.join("control.sock").display());
        let waited = wait_until_ready(
            &mut child,
            "vbd-backend",
            &log,
            Duration::from_secs(20),
            "made no control.sock",
            || dir.join("control.sock").exists(),
        )
        .and_then(|()| {
            Hypervisor::connect(&endpoint).map_err(|error| format!("vbd-backend: {error}"))
        });
        match waited {
            Ok(control) => Ok(VbdBackend {
                child: Some(child),
                dir: dir.to_path_buf(),
                log,
                control,
            }),
            Err(error) => {
                terminate(child);
                Err(error)
            }
        }
    }

    /// The backend's process id, for its CPU time and memory in `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Make a read-write VBD `vdevice` of guest domain `domain` (at least 1) from `extents`,
    /// labelled `label`, and return its vhost-user-blk socket once it exists.
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
        self.control
            .create(domain, vdevice, Mode::READ | Mode::WRITE, label)
            .and_then(|()| {
                self.control
                    .set_extents(domain, vdevice, extents, SharingLevel::ReadersOnly)
            })
            .map_err(|error| format!("{what}: {error}"))?;
        let socket = self.dir.join(format!("dom{domain}/{name}.sock"));
        let child = self.child.as_mut().ok_or("vbd-backend is not running")?;
        wait_until_ready(
            child,
            "vbd-backend",
            &self.log,
            Duration::from_secs(10),
            &format!("made no {}", socket.display()),
            || socket.exists(),
        )?;
        Ok(socket)
    }

    /// Stop the backend with SIGTERM and require a clean exit (status 0).
    pub fn stop(mut self) -> Result<(), String> {
        let child = self.child.take().ok_or("vbd-backend is not running")?;
        stop_gracefully(child, "vbd-backend", Duration::from_secs(30))
    }
}

impl Drop for VbdBackend {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}
