//! One running QEMU machine: start it, describe it in `machine.toml`, shut it down cleanly.

use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use shared_abi::frame::{encode, FrameKind, HEADER_LEN, SHUTDOWN_EXIT_VALUE};

use crate::devices::{devices_toml, toml_string};
use crate::image::{DiskImages, DiskSpec};
use crate::process::{spawn_logged, tail, terminate};

/// The console line the hypervisor prints once every port is served.
const READY_PREFIX: &str = "vbd-hypervisor: ready";
/// The console line the hypervisor prints last, on a clean shutdown.
pub const SUMMARY_PREFIX: &str = "vbd-hypervisor: summary";

/// What to boot.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// Where the images, sockets, `console.log` and `machine.toml` go.
    pub dir: PathBuf,
    pub disks: Vec<DiskSpec>,
    /// QEMU is killed after this long, whatever happens.
    pub timeout: Duration,
    pub hypervisor: PathBuf,
    /// The hypervisor's sharing ceiling (0, 1 or 2), passed on its command line: the most
    /// permissive level a request may ask for.
    pub sharing: u8,
}

impl MachineConfig {
    /// Two 256 MiB disks, hda and hdb, with three partitions each.
    pub fn new(dir: impl Into<PathBuf>, hypervisor: PathBuf) -> MachineConfig {
        let disk = |name: &str| DiskSpec {
            name: name.to_owned(),
            size_bytes: 256 << 20,
            partitions: crate::default_partitions(256 << 20),
        };
        MachineConfig {
            dir: dir.into(),
            disks: vec![disk("hda"), disk("hdb")],
            timeout: Duration::from_secs(600),
            hypervisor,
            sharing: 2,
        }
    }
}

/// A booted machine. Dropping it kills QEMU.
pub struct Machine {
    child: Option<Child>,
    dir: PathBuf,
    disks: DiskImages,
}

impl Machine {
    /// Create the images, boot QEMU and wait until the hypervisor says it is ready.
    pub fn start(config: &MachineConfig) -> Result<Machine, String> {
        fs::create_dir_all(&config.dir)
            .map_err(|error| format!("{}: {error}", config.dir.display()))?;
        let dir = config
            .dir
            .canonicalize()
            .map_err(|error| format!("{}: {error}", config.dir.display()))?;
        let disks = DiskImages::create(&dir, &config.disks)?;
        for name in ["console.log", "dom0.sock", "dom1.sock", "dom2.sock"] {
            let _ = fs::remove_file(dir.join(name));
        }
        let mut machine = Machine {
            child: None,
            dir,
            disks,
        };
        fs::write(machine.machine_toml(), machine.describe())
            .map_err(|error| format!("machine.toml: {error}"))?;
        machine.boot(config)?;
        Ok(machine)
    }

    fn boot(&mut self, config: &MachineConfig) -> Result<(), String> {
        let mut command = Command::new("setpriv");
        // QEMU dies with whoever started it (setpriv's death signal reaches `timeout`, which
        // passes it on), and in any case after the wall-clock timeout.
        command.args(["--pdeathsig", "TERM", "--", "timeout", "--kill-after=5"]);
        command.arg(config.timeout.as_secs().max(1).to_string());
        command.args([
            "qemu-system-x86_64",
            "-machine",
            "pc",
            "-accel",
            "tcg",
            "-m",
            "256M",
            "-display",
            "none",
        ]);
        command.args([
            "-monitor",
            "none",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]);
        command
            .args(["-nic", "none"])
            .arg("-kernel")
            .arg(&config.hypervisor);
        command
            .arg("-append")
            .arg(format!("sharing={}", config.sharing));
        command
            .arg("-serial")
            .arg(format!("file:{}", self.console_path().display()));
        for domain in 0..3 {
            let socket = self.socket_path(domain);
            command.arg("-chardev").arg(format!(
                "socket,id=dom{domain},path={},server=on,wait=off",
                socket.display()
            ));
            command.arg("-serial").arg(format!("chardev:dom{domain}"));
        }
        for (disk, path) in self.disks.iter() {
            command.arg("-drive").arg(format!(
                "file={},format=raw,if=ide,index={}",
                path.display(),
                disk.ide_index()
            ));
        }
        let child = spawn_logged(
            &mut command,
            &self.dir.join("qemu.log"),
            "install qemu-system-x86",
        )?;
        self.child = Some(child);
        self.wait_for_console(READY_PREFIX, Duration::from_secs(60))
    }

    /// Wait until the console has a line starting with `prefix`.
    fn wait_for_console(&mut self, prefix: &str, limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if self.console().lines().any(|line| line.starts_with(prefix)) {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten())
            {
                return Err(format!(
                    "QEMU exited ({status}) before `{prefix}`; console:\n{}\nqemu.log:\n{}",
                    self.console(),
                    self.qemu_log()
                ));
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "no `{prefix}` on the console after {limit:?}; console:\n{}",
                    self.console()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn console_path(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    fn socket_path(&self, domain: u32) -> PathBuf {
        self.dir.join(format!("dom{domain}.sock"))
    }

    /// `unix:PATH` of a domain's port, as `vdisk --hv` takes it.
    pub fn endpoint(&self, domain: u32) -> String {
        format!("unix:{}", self.socket_path(domain).display())
    }

    /// The devices file describing the machine (also usable as `vdisk --devices`).
    pub fn machine_toml(&self) -> PathBuf {
        self.dir.join("machine.toml")
    }

    /// The image file of a disk.
    pub fn image(&self, name: &str) -> Option<&Path> {
        self.disks.image(name)
    }

    /// Everything the hypervisor printed so far.
    pub fn console(&self) -> String {
        fs::read_to_string(self.console_path()).unwrap_or_default()
    }

    fn qemu_log(&self) -> String {
        fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default()
    }

    fn describe(&self) -> String {
        let mut toml = String::from(
            "# Written by vbd-machine: the disks and hypervisor ports of one QEMU machine.\n",
        );
        toml.push_str(&devices_toml(self.disks.devices(), None));
        toml.push_str("\n[endpoints]\n");
        for domain in 0..3 {
            toml.push_str(&format!(
                "dom{domain} = {}\n",
                toml_string(&self.endpoint(domain))
            ));
        }
        toml
    }

    /// Run until QEMU exits by itself (or its timeout kills it).
    pub fn wait(&mut self) -> Result<ExitStatus, String> {
        let child = self.child.as_mut().ok_or("QEMU is not running")?;
        child.wait().map_err(|error| error.to_string())
    }

    /// Ask the hypervisor to power off, and check that it did so cleanly: QEMU's exit status
    /// must be the agreed one and the console's last line the summary. Returns that line.
    pub fn shutdown(mut self) -> Result<String, String> {
        let mut frame = [0u8; HEADER_LEN];
        encode(FrameKind::Shutdown, 0, &[], &mut frame).map_err(|error| error.to_string())?;
        let mut stream = UnixStream::connect(self.socket_path(0))
            .map_err(|error| format!("dom0 port: {error}"))?;
        stream
            .write_all(&frame)
            .map_err(|error| format!("dom0 port: {error}"))?;
        let mut child = self.child.take().ok_or("QEMU is not running")?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|error| error.to_string())? {
                break status;
            }
            if started.elapsed() > Duration::from_secs(30) {
                terminate(child);
                return Err(format!(
                    "QEMU did not power off after Shutdown; console:\n{}",
                    self.console()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let expected = i32::from(SHUTDOWN_EXIT_VALUE) << 1 | 1;
        let console = self.console();
        let last_line = console.lines().last().unwrap_or_default().to_owned();
        if status.code() != Some(expected) || !last_line.starts_with(SUMMARY_PREFIX) {
            return Err(format!(
                "unclean shutdown: QEMU {status} (expected exit {expected}); console ends:\n{}",
                tail(&console, 20)
            ));
        }
        Ok(last_line)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}
