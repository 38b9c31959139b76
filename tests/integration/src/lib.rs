//! Shared set-up for the QEMU integration suite: a booted machine with a VD database, and
//! helpers to run `vdisk` against it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use vbd_machine::{build_hypervisor, build_vdisk, workspace_root, Machine, MachineConfig};

/// The hypervisor ELF and the `vdisk` binary, built once per test process.
pub fn artifacts() -> &'static (PathBuf, PathBuf) {
    static ARTIFACTS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        let hypervisor =
            build_hypervisor().unwrap_or_else(|error| panic!("building the hypervisor: {error}"));
        let vdisk = build_vdisk(false).unwrap_or_else(|error| panic!("building vdisk: {error}"));
        (hypervisor, vdisk)
    })
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
    let (hypervisor, _) = artifacts();
    let mut config = MachineConfig::new(dir, hypervisor.clone());
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
        let _ = std::fs::remove_dir_all(&dir);
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
            let file = std::fs::OpenOptions::new()
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

    /// Run `vdisk` with this machine's database and devices file.
    pub fn vdisk(&self, arguments: &[&str]) -> Output {
        let (_, vdisk) = artifacts();
        Command::new(vdisk)
            .args(arguments)
            .env("VDISK_DB", &self.database)
            .env("VDISK_DEVICES", self.machine.machine_toml())
            .env_remove("VDISK_HV")
            .output()
            .expect("vdisk runs")
    }

    /// Run `vdisk` through domain `domain`'s port and require success; returns stdout.
    pub fn vdisk_ok(&self, arguments: &[&str]) -> String {
        let output = self.vdisk(arguments);
        assert!(
            output.status.success(),
            "vdisk {arguments:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The endpoint of a domain's port.
    pub fn endpoint(&self, domain: u32) -> String {
        self.machine.endpoint(domain)
    }

    /// A client speaking for domain `domain`.
    pub fn client(&self, domain: u32) -> host_tools::hypervisor::Hypervisor {
        host_tools::hypervisor::Hypervisor::connect(&self.endpoint(domain)).expect("port connects")
    }

    /// Power off and require the agreed exit code and the summary line.
    pub fn finish(self) -> String {
        self.machine
            .shutdown()
            .unwrap_or_else(|error| panic!("{error}"))
    }
}
