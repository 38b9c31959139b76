//! Shared set-up for the QEMU integration suite: what is built once per test process, a
//! booted bare-metal machine or a running vbd-backend with a VD database and `vdisk` pointed
//! at it, and the small helpers the guest tests share.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use host_tools::hypervisor::Hypervisor;
use vbd_machine::guest::GuestArtefacts;
use vbd_machine::process::output;
use vbd_machine::{
    build_backend, build_hypervisor, build_vdisk, workspace_root, write_devices, Backend,
    DiskImages, DiskSpec, Machine, MachineConfig, Vdisk,
};

/// Build or fetch something once per test process; a failure fails every test that needs it.
fn once<T>(
    cell: &'static OnceLock<T>,
    what: &str,
    make: impl FnOnce() -> Result<T, String>,
) -> &'static T {
    cell.get_or_init(|| make().unwrap_or_else(|error| panic!("{what}: {error}")))
}

/// The bare-metal test hypervisor's ELF.
pub fn hypervisor_elf() -> &'static Path {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    once(&ELF, "building the hypervisor", build_hypervisor).as_path()
}

/// The `vdisk` binary.
pub fn vdisk_binary() -> &'static Path {
    static VDISK: OnceLock<PathBuf> = OnceLock::new();
    once(&VDISK, "building vdisk", || build_vdisk(false)).as_path()
}

/// The `vbd-backend` binary.
pub fn backend_binary() -> &'static Path {
    static BACKEND: OnceLock<PathBuf> = OnceLock::new();
    once(&BACKEND, "building vbd-backend", || build_backend(false)).as_path()
}

/// The guests' kernel, modules and busybox.
pub fn guest_artefacts() -> &'static GuestArtefacts {
    static ARTEFACTS: OnceLock<GuestArtefacts> = OnceLock::new();
    once(&ARTEFACTS, "the guest artefacts", GuestArtefacts::ensure)
}

/// A fresh directory for one test, `target/integration/NAME`.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = workspace_root().join("target/integration").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic bytes that differ with `seed`.
pub fn noise(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The SHA-256 of a file, by `sha256sum` (what the guests use), in hex.
pub fn sha256(path: &Path) -> String {
    let listed = output(Command::new("sha256sum").arg(path)).unwrap();
    String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The SHA-256 of `bytes`, by way of a file `scratch` in `dir`.
pub fn sha256_of(bytes: &[u8], scratch: &Path) -> String {
    fs::write(scratch, bytes).unwrap();
    sha256(scratch)
}

/// The standard output of a `vdisk` run that must have succeeded.
fn succeeded(arguments: &[&str], output: Output) -> String {
    assert!(
        output.status.success(),
        "vdisk {arguments:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A booted machine with its own directory, database and `vdisk` runner. Shut it down with
/// [`TestMachine::finish`], which checks the clean exit; dropping it just kills QEMU.
pub struct TestMachine {
    pub machine: Machine,
    pub database: PathBuf,
    sharing: u8,
}

/// The disks every test machine has (those of [`MachineConfig::new`]).
const DISKS: [&str; 2] = ["hda", "hdb"];

/// How a disk image is compared and put back: in pieces of this many bytes.
const PIECE_BYTES: usize = 1 << 20;

/// What a disk image holds: every piece of it that is not all zeros, by offset.
fn contents(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let file = File::open(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let length = file.metadata().expect("an image has metadata").len();
    let mut pieces = Vec::new();
    let mut offset = 0;
    while offset < length {
        let size = PIECE_BYTES.min((length - offset) as usize);
        let mut piece = vec![0u8; size];
        file.read_exact_at(&mut piece, offset)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        if piece.iter().any(|&byte| byte != 0) {
            pieces.push((offset, piece));
        }
        offset += size as u64;
    }
    pieces
}

/// Boot a machine in `dir`, enforcing sharing level `sharing`.
fn start(name: &str, dir: &Path, sharing: u8) -> Machine {
    let mut config = MachineConfig::new(dir, hypervisor_elf().to_path_buf());
    config.timeout = std::time::Duration::from_secs(600);
    config.sharing = sharing;
    Machine::start(&config).unwrap_or_else(|error| panic!("booting {name}: {error}"))
}

impl TestMachine {
    /// Boot a machine named after the test, with the default two disks and the default
    /// sharing ceiling (2: every request's own level rules).
    pub fn boot(name: &str) -> TestMachine {
        TestMachine::boot_with_sharing(name, 2)
    }

    /// Boot with the hypervisor's sharing ceiling at `sharing`.
    pub fn boot_with_sharing(name: &str, sharing: u8) -> TestMachine {
        let dir = workspace_root().join("target/integration").join(name);
        let _ = fs::remove_dir_all(&dir);
        TestMachine {
            database: dir.join("vdisk.sqlite"),
            machine: start(name, &dir, sharing),
            sharing,
        }
    }

    /// Shut the machine down cleanly and boot a new one, a new start of the hypervisor,
    /// over the same disk images (the same files, holding the same bytes) and database.
    /// Booting lays each image out afresh (`Machine::start` partitions it), so what the
    /// images held is read first and written back, in place, once the new one is up.
    pub fn restart(self) -> TestMachine {
        let dir = self.machine.dir().to_path_buf();
        let images: Vec<PathBuf> = DISKS
            .iter()
            .map(|disk| self.machine.image(disk).expect("a test disk").to_path_buf())
            .collect();
        let before: Vec<_> = images.iter().map(|image| contents(image)).collect();
        let (database, sharing) = (self.database.clone(), self.sharing);
        self.finish();
        let machine = start("the restarted machine", &dir, sharing);
        for (image, pieces) in images.iter().zip(&before) {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(image)
                .unwrap_or_else(|error| panic!("{}: {error}", image.display()));
            for (offset, piece) in pieces {
                file.write_all_at(piece, *offset)
                    .unwrap_or_else(|error| panic!("{}: {error}", image.display()));
            }
            file.sync_all().expect("the image is written back");
        }
        let after: Vec<_> = images.iter().map(|image| contents(image)).collect();
        assert!(after == before, "the images hold what they held before");
        TestMachine {
            machine,
            database,
            sharing,
        }
    }

    fn runner(&self) -> Vdisk {
        Vdisk {
            binary: vdisk_binary().to_path_buf(),
            database: self.database.clone(),
            devices: self.machine.machine_toml(),
        }
    }

    /// Run `vdisk` with this machine's database and devices file.
    pub fn vdisk(&self, arguments: &[&str]) -> Output {
        self.runner().output(arguments).unwrap()
    }

    /// Run `vdisk` and require success; returns stdout.
    pub fn vdisk_ok(&self, arguments: &[&str]) -> String {
        succeeded(arguments, self.vdisk(arguments))
    }

    /// The endpoint of a domain's port.
    pub fn endpoint(&self, domain: u32) -> String {
        self.machine.endpoint(domain)
    }

    /// A client speaking for domain `domain`.
    pub fn client(&self, domain: u32) -> Hypervisor {
        Hypervisor::connect(&self.endpoint(domain)).expect("port connects")
    }

    /// Power off and require the agreed exit code and the summary line.
    pub fn finish(self) -> String {
        self.machine
            .shutdown()
            .unwrap_or_else(|error| panic!("{error}"))
    }
}

/// vbd-backend serving disk images, with its own directory, devices file, database and
/// `vdisk`. Stop it with [`TestBackend::stop`], which checks the clean exit; dropping it
/// just stops the process.
pub struct TestBackend {
    pub dir: PathBuf,
    pub images: DiskImages,
    vdisk: Vdisk,
    options: Vec<String>,
    backend: Option<Backend>,
    starts: u32,
}

impl TestBackend {
    /// Create the images of `disks` in `dir` and start a backend on them with `options`
    /// (`--sharing 1`).
    pub fn start(dir: &Path, disks: &[DiskSpec], options: &[&str]) -> TestBackend {
        let images = DiskImages::create(dir, disks).unwrap();
        let devices = dir.join("devices.toml");
        write_devices(&devices, images.devices()).unwrap();
        let mut test = TestBackend {
            dir: dir.to_path_buf(),
            images,
            vdisk: Vdisk {
                binary: vdisk_binary().to_path_buf(),
                database: dir.join("vdisk.sqlite"),
                devices,
            },
            options: options.iter().map(|option| option.to_string()).collect(),
            backend: None,
            starts: 0,
        };
        test.restart();
        test
    }

    /// Start the backend (again, after [`TestBackend::kill`]) on the same disks and
    /// directory; each start logs to a file of its own, `backend-N.log`.
    pub fn restart(&mut self) {
        assert!(self.backend.is_none(), "the backend is running");
        self.starts += 1;
        let options: Vec<&str> = self.options.iter().map(String::as_str).collect();
        let log = self.dir.join(format!("backend-{}.log", self.starts));
        self.backend = Some(
            Backend::start(
                backend_binary(),
                &self.vdisk.devices,
                &self.dir.join("run"),
                &options,
                &log,
            )
            .unwrap_or_else(|error| panic!("{error}")),
        );
    }

    /// The running backend.
    pub fn backend(&self) -> &Backend {
        self.backend.as_ref().expect("the backend is running")
    }

    /// The image of disk `name`.
    pub fn image(&self, name: &str) -> &Path {
        self.images.image(name).expect("a disk of this test")
    }

    /// Run `vdisk --hv CONTROL ARGUMENTS` with this test's database and devices file.
    pub fn vdisk(&self, arguments: &[&str]) -> Output {
        let endpoint = self.backend().endpoint();
        let mut all = vec!["--hv", endpoint.as_str()];
        all.extend(arguments);
        self.vdisk.output(&all).unwrap()
    }

    /// Run `vdisk --hv CONTROL ARGUMENTS` and require success; returns stdout.
    pub fn vdisk_ok(&self, arguments: &[&str]) -> String {
        succeeded(arguments, self.vdisk(arguments))
    }

    /// A client speaking for dom0 on control.sock.
    pub fn client(&self) -> Hypervisor {
        Hypervisor::connect(&self.backend().endpoint()).expect("control.sock connects")
    }

    /// Upgrade the backend in place: a new one started with `--takeover` takes its VBDs and
    /// sockets over, and the old one exits 0 once it has finished; each logs to a file of
    /// its own, `backend-N.log`.
    pub fn upgrade(&mut self) {
        let old = self.backend.take().expect("the backend is running");
        self.starts += 1;
        let options: Vec<&str> = self.options.iter().map(String::as_str).collect();
        let log = self.dir.join(format!("backend-{}.log", self.starts));
        self.backend = Some(
            old.upgrade(backend_binary(), &self.vdisk.devices, &options, &log)
                .unwrap_or_else(|error| panic!("{error}")),
        );
    }

    /// Kill the backend with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let backend = self.backend.take().expect("the backend is running");
        backend.kill().unwrap_or_else(|error| panic!("{error}"));
    }

    /// Stop the backend with SIGTERM and require a clean stop.
    pub fn stop(mut self) {
        let backend = self.backend.take().expect("the backend is running");
        backend.stop().unwrap_or_else(|error| panic!("{error}"));
    }
}
