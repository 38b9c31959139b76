//! Booting a Linux guest in QEMU under TCG (never KVM: `/dev/kvm` here is kvm-pvm inside a
//! Firecracker VM, where stock kernels hang), with vhost-user-blk and virtio-blk disks, the
//! console in a file, and a wall-clock limit that kills QEMU and fails the run.

use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::artefacts::GuestArtefacts;
use super::report::{self, GuestReport};
use crate::process::{spawn_logged, tail, terminate};

/// The control port's socket, in the guest's directory.
const CONTROL_SOCKET: &str = "control.sock";

/// QEMU's host cache mode for a [`GuestDisk::Drive`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cache {
    /// `cache=writeback`: QEMU's default, the host page cache, as qemu-storage-daemon's
    /// `driver=file` uses by default.
    Writeback,
    /// `cache=none`: `O_DIRECT` on the image, no host page cache.
    None,
}

/// QEMU's I/O submission for a [`GuestDisk::Drive`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aio {
    /// `aio=threads`: QEMU's default, a thread pool doing `preadv`/`pwritev`.
    Threads,
    /// `aio=io_uring`.
    IoUring,
    /// `aio=native`: Linux AIO, which QEMU accepts only with `cache=none`.
    Native,
}

impl Cache {
    /// QEMU's word for it (`cache=WORD`).
    pub fn as_str(self) -> &'static str {
        match self {
            Cache::Writeback => "writeback",
            Cache::None => "none",
        }
    }
}

impl Aio {
    /// QEMU's word for it (`aio=WORD`).
    pub fn as_str(self) -> &'static str {
        match self {
            Aio::Threads => "threads",
            Aio::IoUring => "io_uring",
            Aio::Native => "native",
        }
    }
}

/// One disk of the guest; the guest sees them as `vda`, `vdb`, ... in this order.
#[derive(Clone, Debug)]
pub enum GuestDisk {
    /// A vhost-user-blk socket served by a backend (vbd-backend, qemu-storage-daemon), which
    /// must exist before QEMU starts. With `reconnect`, QEMU retries the socket every second
    /// when its backend goes away (`reconnect=1`), as a VMM that outlives a backend crash does.
    VhostUser {
        socket: PathBuf,
        queues: u16,
        reconnect: bool,
    },
    /// QEMU's own virtio-blk on a raw image file (the `qemu_builtin` baseline).
    Drive {
        image: PathBuf,
        cache: Cache,
        aio: Aio,
        read_only: bool,
        queues: u16,
    },
}

impl GuestDisk {
    /// A vhost-user-blk socket with one virtqueue, not reconnected.
    pub fn vhost_user(socket: impl Into<PathBuf>) -> GuestDisk {
        GuestDisk::VhostUser {
            socket: socket.into(),
            queues: 1,
            reconnect: false,
        }
    }
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// Where `console.log` and `qemu.log` go.
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The kernel command line; [`GuestConfig::new`] starts it with what every run needs.
    pub append: String,
    /// Guest RAM, all of it a shared memfd so vhost-user backends can map it.
    pub memory_mib: u32,
    /// Virtual CPUs (TCG runs one host thread per vCPU).
    pub cpus: u32,
    pub disks: Vec<GuestDisk>,
    /// A second serial port, the guest's `/dev/ttyS1`, on `DIR/control.sock`, by which
    /// [`Guest::release`] lets a guest in `wait_for_host` go on.
    pub control: bool,
    /// QEMU is killed after this long, and the run fails.
    pub timeout: Duration,
}

impl GuestConfig {
    /// 512 MiB, one vCPU, no disks, two minutes; the console on ttyS0, quiet, and a panic
    /// reboots at once (which `-no-reboot` turns into QEMU's exit).
    pub fn new(dir: impl Into<PathBuf>, artefacts: &GuestArtefacts, initrd: &Path) -> GuestConfig {
        GuestConfig {
            dir: dir.into(),
            kernel: artefacts.kernel.clone(),
            initrd: Some(initrd.to_path_buf()),
            append: "console=ttyS0 panic=-1 quiet".to_owned(),
            memory_mib: 512,
            cpus: 1,
            disks: Vec::new(),
            control: false,
            timeout: Duration::from_secs(120),
        }
    }

    /// The QEMU command line, wrapped so QEMU dies with its starter and after the timeout.
    fn command(&self) -> Result<Command, String> {
        let mut command = Command::new("setpriv");
        // setpriv's death signal reaches `timeout`, which passes it on to QEMU.
        command.args(["--pdeathsig", "TERM", "--", "timeout", "--kill-after=5"]);
        command.arg(self.timeout.as_secs().max(1).to_string());
        let memory = format!("{}M", self.memory_mib);
        command.args(["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg"]);
        command.args(["-smp", &self.cpus.to_string(), "-m", &memory]);
        command.args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={memory},share=on"),
            "-numa",
            "node,memdev=mem",
        ]);
        command.args(["-nodefaults", "-display", "none", "-no-reboot"]);
        command
            .arg("-serial")
            .arg(format!("file:{}", self.dir.join("console.log").display()));
        if self.control {
            command.arg("-chardev").arg(format!(
                "socket,id=control,path={},server=on,wait=off",
                self.dir.join(CONTROL_SOCKET).display()
            ));
            command.args(["-serial", "chardev:control"]);
        }
        command.arg("-kernel").arg(&self.kernel);
        if let Some(initrd) = &self.initrd {
            command.arg("-initrd").arg(initrd);
        }
        command.arg("-append").arg(&self.append);
        for (index, disk) in self.disks.iter().enumerate() {
            // Fixed PCI slots, so the guest's vda, vdb, ... follow the list's order.
            let slot = index + 4;
            match disk {
                GuestDisk::VhostUser {
                    socket,
                    queues,
                    reconnect,
                } => {
                    if !socket.exists() {
                        return Err(format!(
                            "vhost-user socket {} does not exist",
                            socket.display()
                        ));
                    }
                    command.arg("-chardev").arg(format!(
                        "socket,id=disk{index},path={}{}",
                        socket.display(),
                        if *reconnect { ",reconnect=1" } else { "" }
                    ));
                    command.arg("-device").arg(format!(
                        "vhost-user-blk-pci,chardev=disk{index},num-queues={queues},addr={slot:#x}"
                    ));
                }
                GuestDisk::Drive {
                    image,
                    cache,
                    aio,
                    read_only,
                    queues,
                } => {
                    if *aio == Aio::Native && *cache != Cache::None {
                        return Err("aio=native needs cache=none".to_owned());
                    }
                    command.arg("-drive").arg(format!(
                        "file={},format=raw,if=none,id=disk{index},cache={},aio={},read-only={}",
                        image.display(),
                        cache.as_str(),
                        aio.as_str(),
                        if *read_only { "on" } else { "off" }
                    ));
                    command.arg("-device").arg(format!(
                        "virtio-blk-pci,drive=disk{index},num-queues={queues},addr={slot:#x}"
                    ));
                }
            }
        }
        Ok(command)
    }
}

/// A running guest. Dropping it kills QEMU.
pub struct Guest {
    child: Option<Child>,
    /// The control port's connection, kept open while the guest runs: QEMU drops what a
    /// client wrote but the guest's UART had not taken yet when the client hangs up.
    control: Option<UnixStream>,
    dir: PathBuf,
    started: Instant,
    timeout: Duration,
}

impl Guest {
    /// Start QEMU (printing its command line); the guest runs on while the caller works.
    pub fn start(config: &GuestConfig) -> Result<Guest, String> {
        fs::create_dir_all(&config.dir)
            .map_err(|error| format!("{}: {error}", config.dir.display()))?;
        for stale in ["console.log", CONTROL_SOCKET] {
            let _ = fs::remove_file(config.dir.join(stale));
        }
        let child = spawn_logged(
            &mut config.command()?,
            &config.dir.join("qemu.log"),
            "install qemu-system-x86",
        )?;
        Ok(Guest {
            child: Some(child),
            control: None,
            dir: config.dir.clone(),
            started: Instant::now(),
            timeout: config.timeout,
        })
    }

    /// Everything on the guest's console so far.
    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// Wait until the guest reports `RESULT key=...` and return the value, so a test can act
    /// while the guest runs on; fails if QEMU exits first or the run's time is up.
    pub fn wait_for_result(&mut self, key: &str) -> Result<String, String> {
        let wanted = format!("{} RESULT {key}=", super::script::PREFIX);
        let line = self.wait_for_line(key, |line| line.starts_with(&wanted))?;
        Ok(line[wanted.len()..].to_owned())
    }

    /// Wait for the first console line that `matches`; `what` names it in errors.
    fn wait_for_line(
        &mut self,
        what: &str,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        loop {
            let console = self.console();
            // Only whole lines: the guest may be halfway through printing the last one.
            let complete = &console[..console.rfind('\n').map_or(0, |end| end + 1)];
            if let Some(line) = complete
                .lines()
                .map(|line| line.trim_end_matches('\r'))
                .find(|line| matches(line))
            {
                return Ok(line.to_owned());
            }
            if self.exited()? {
                return Err(format!(
                    "QEMU exited before the guest printed {what}; console ends:\n{}",
                    tail(&self.console(), 30)
                ));
            }
            self.check_time()?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until the guest is in `wait_for_host WORD`, then send it WORD on the control port
    /// (the guest must have been started with [`GuestConfig::control`]).
    pub fn release(&mut self, word: &str) -> Result<(), String> {
        let waiting = format!("{} WAIT {word}", super::script::PREFIX);
        self.wait_for_line(&format!("WAIT {word}"), |line| line == waiting)?;
        let socket = self.dir.join(CONTROL_SOCKET);
        let failed = |error: std::io::Error| format!("{}: {error}", socket.display());
        if self.control.is_none() {
            self.control = Some(UnixStream::connect(&socket).map_err(failed)?);
        }
        let stream = self.control.as_mut().expect("just connected");
        stream
            .write_all(format!("{word}\n").as_bytes())
            .map_err(failed)
    }

    fn exited(&mut self) -> Result<bool, String> {
        let child = self.child.as_mut().ok_or("QEMU is not running")?;
        Ok(child
            .try_wait()
            .map_err(|error| format!("QEMU: {error}"))?
            .is_some())
    }

    fn check_time(&self) -> Result<(), String> {
        if self.started.elapsed() > self.timeout + Duration::from_secs(10) {
            Err(format!(
                "the guest is still running after {:?}; console ends:\n{}",
                self.timeout,
                tail(&self.console(), 30)
            ))
        } else {
            Ok(())
        }
    }

    /// Wait for the guest to power off and check the run against the protocol
    /// ([`super::report::results`]) and QEMU's exit status.
    pub fn finish(mut self) -> Result<GuestReport, String> {
        let status = loop {
            let child = self.child.as_mut().ok_or("QEMU is not running")?;
            if let Some(status) = child.try_wait().map_err(|error| format!("QEMU: {error}"))? {
                break status;
            }
            self.check_time()?;
            std::thread::sleep(Duration::from_millis(50));
        };
        let elapsed = self.started.elapsed();
        self.child = None;
        let console = self.console();
        // 124 is `timeout`'s own status when the limit struck.
        if status.code() == Some(124) {
            return Err(format!(
                "QEMU was killed after {:?}; console ends:\n{}",
                self.timeout,
                tail(&console, 30)
            ));
        }
        if !status.success() {
            let qemu_log = fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default();
            return Err(format!(
                "QEMU failed ({status}): {}; console ends:\n{}",
                qemu_log.trim(),
                tail(&console, 30)
            ));
        }
        Ok(GuestReport {
            results: report::results(&console)?,
            console,
            elapsed,
        })
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}

/// Boot, wait for the power-off and check the run: [`Guest::start`] then [`Guest::finish`].
pub fn run_guest(config: &GuestConfig) -> Result<GuestReport, String> {
    Guest::start(config)?.finish()
}
