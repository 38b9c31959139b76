//! A running vbd-backend over two sparse disk images, and `vdisk` pointed at it: what every
//! integration test of the backend starts from.
#![allow(dead_code)] // Each test file uses part of this.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use host_tools::hypervisor::Hypervisor;
use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, Label, Mode, SharingLevel};

/// Each image: 64 MiB, sparse.
pub const IMAGE_BYTES: u64 = 64 << 20;

pub fn vdisk_binary() -> &'static Path {
    static VDISK: OnceLock<PathBuf> = OnceLock::new();
    VDISK.get_or_init(|| vbd_machine::build_vdisk(false).expect("vdisk builds"))
}

pub fn xvda() -> DeviceNumber {
    DeviceNumber::from_name("xvda").unwrap()
}

pub fn label(text: &str) -> Label {
    Label::new(text).unwrap()
}

pub fn hda() -> DeviceNumber {
    DeviceNumber::from_name("hda").unwrap()
}

pub fn hdb() -> DeviceNumber {
    DeviceNumber::from_name("hdb").unwrap()
}

/// A pattern that differs at every sector, so a misplaced sector is noticed.
pub fn pattern(length: usize, seed: u8) -> Vec<u8> {
    (0..length)
        .map(|index| (index / 512) as u8 ^ (index as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// A backend under test, killed if the test ends without stopping it.
pub struct Backend {
    pub work: tempfile::TempDir,
    pub dir: PathBuf,
    pub devices: PathBuf,
    /// The umask the backend starts under, when not the test's.
    umask: Option<u32>,
    child: Option<Child>,
}

impl Backend {
    /// Two images (`hda` 3:0, `hdb` 3:64), a devices file, and a backend serving them.
    pub fn start(extra: &[&str]) -> Backend {
        Backend::start_with(None, None, extra)
    }

    /// As [`Backend::start`], with `hda` at `hda` when given (an image whose faults the test
    /// controls) instead of the image in the work directory, and the backend started under
    /// `umask` when one is given.
    pub fn start_with(hda: Option<&Path>, umask: Option<u32>, extra: &[&str]) -> Backend {
        let work = tempfile::tempdir().unwrap();
        for name in ["hda", "hdb"] {
            File::create(work.path().join(format!("{name}.img")))
                .unwrap()
                .set_len(IMAGE_BYTES)
                .unwrap();
        }
        let hda = hda.map_or_else(|| PathBuf::from("hda.img"), Path::to_path_buf);
        let devices = work.path().join("devices.toml");
        fs::write(
            &devices,
            format!(
                "[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"{}\"\n\n[[disk]]\nname = \"hdb\"\ndevice = \"3:64\"\npath = \"hdb.img\"\n",
                hda.display()
            ),
        )
        .unwrap();
        let dir = work.path().join("run");
        let mut backend = Backend {
            work,
            dir,
            devices,
            umask,
            child: None,
        };
        backend.restart(extra);
        backend
    }

    /// Start the backend (again) on the same files and wait until it is ready.
    pub fn restart(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "the backend is running");
        self.child = Some(self.spawn(extra));
        self.wait_ready();
    }

    /// Start another backend process on the same files.
    pub fn spawn(&self, extra: &[&str]) -> Child {
        let mut command = match self.umask {
            Some(umask) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("umask {umask:03o} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_vbd-backend"));
                shell
            }
            None => Command::new(env!("CARGO_BIN_EXE_vbd-backend")),
        };
        command
            .arg("--devices")
            .arg(&self.devices)
            .arg("--dir")
            .arg(&self.dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(self.log_path()).unwrap())
            .spawn()
            .unwrap()
    }

    pub fn log_path(&self) -> PathBuf {
        self.work.path().join("backend.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.control().display())
    }

    /// Wait for the backend's ready line (control.sock may accept a moment before it).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(self.control()).is_err()
            || !self.log().contains("vbd-backend: serving ")
        {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("vbd-backend exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "vbd-backend did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn image(&self, name: &str) -> PathBuf {
        self.work.path().join(format!("{name}.img"))
    }

    pub fn read_image(&self, name: &str, offset: u64, length: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; length];
        File::open(self.image(name))
            .unwrap()
            .read_exact_at(&mut bytes, offset)
            .unwrap();
        bytes
    }

    pub fn write_image(&self, name: &str, offset: u64, bytes: &[u8]) {
        File::options()
            .write(true)
            .open(self.image(name))
            .unwrap()
            .write_all_at(bytes, offset)
            .unwrap();
    }

    /// `vdisk ARGS` with this backend's database, devices file and control socket.
    pub fn vdisk(&self, args: &[&str]) -> Output {
        Command::new(vdisk_binary())
            .env("VDISK_DB", self.work.path().join("vdisk.sqlite"))
            .env("VDISK_DEVICES", &self.devices)
            .env("VDISK_HV", self.endpoint())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `vdisk ARGS`, which must succeed; its standard output.
    pub fn vdisk_ok(&self, args: &[&str]) -> String {
        let output = self.vdisk(args);
        assert!(
            output.status.success(),
            "vdisk {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    pub fn hypervisor(&self) -> Hypervisor {
        Hypervisor::connect(&self.endpoint()).unwrap()
    }

    /// The socket of `vdevice` of `domain`.
    pub fn socket(&self, domain: u32, name: &str) -> PathBuf {
        let extension = if domain == 0 { "nbd" } else { "sock" };
        self.dir.join(format!("dom{domain}/{name}.{extension}"))
    }

    /// The backend's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the backend is running").id()
    }

    /// Send SIGTERM and wait for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let id = self.child.as_ref().expect("the backend is running").id();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(id.to_string())
            .status()
            .unwrap();
        assert!(status.success());
        self.wait(Duration::from_secs(30))
    }

    /// Wait for the backend to exit by itself.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the backend is running");
        wait_with_timeout(&mut child, limit)
    }
}

/// Wait for `child`, killing it (and failing) after `limit`.
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `domain`'s xvda, labelled `text`, in `mode`, over `extents` in that order.
pub fn attach_xvda(backend: &Backend, domain: u32, mode: Mode, text: &str, extents: &[Extent]) {
    let mut hypervisor = backend.hypervisor();
    hypervisor
        .create(domain, xvda(), mode, label(text))
        .unwrap();
    hypervisor
        .set_extents(domain, xvda(), extents, SharingLevel::ReadersOnly)
        .unwrap();
}

/// dom0's xvda, labelled `vd:1`, over `extents` of `(disk, start, count)` (disk 0 is hda,
/// 1 hdb), in that order.
pub fn attach_dom0_xvda(backend: &Backend, mode: Mode, extents: &[(u32, u64, u64)]) {
    let extents: Vec<Extent> = extents
        .iter()
        .map(|&(disk, start, count)| {
            Extent::new(if disk == 0 { hda() } else { hdb() }, start, count).unwrap()
        })
        .collect();
    attach_xvda(backend, 0, mode, "vd:1", &extents);
}

/// Two tenants, each an xvda read-write: domain 1's `vd:1` scattered over hdb 1000..1008
/// then hda 5000..5004, and domain 2's `vd:2` on hda 100..116, the bystander the tests of a
/// hostile domain 1 watch.
pub fn attach_two_tenants(backend: &Backend) {
    let rw = Mode::READ | Mode::WRITE;
    let scattered = [
        Extent::new(hdb(), 1000, 8).unwrap(),
        Extent::new(hda(), 5000, 4).unwrap(),
    ];
    attach_xvda(backend, 1, rw, "vd:1", &scattered);
    attach_xvda(
        backend,
        2,
        rw,
        "vd:2",
        &[Extent::new(hda(), 100, 16).unwrap()],
    );
}

/// The NBD URL of dom0's xvda export.
pub fn xvda_url(backend: &Backend) -> String {
    format!(
        "nbd+unix:///xvda?socket={}",
        backend.socket(0, "xvda").display()
    )
}

/// Run a client program under a two-minute timeout, showing its command and output.
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new("timeout")
        .arg("120")
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{program}: {error}"));
    eprintln!(
        "$ {program} {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `qemu-io -f raw -c COMMAND...` on dom0's xvda export, which must succeed with every
/// pattern it checks intact.
pub fn qemu_io(backend: &Backend, commands: &[&str]) {
    let mut args = vec!["-f", "raw"];
    commands
        .iter()
        .for_each(|command| args.extend(["-c", command]));
    let url = xvda_url(backend);
    args.push(&url);
    let output = run("qemu-io", &args);
    assert!(output.status.success(), "qemu-io {args:?} failed");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("Pattern verification failed"));
}
