//! Shared set-up for the QEMU integration suite: a booted machine with a VD database, and
//! helpers to run `vdisk` against it.

use std::path::PathBuf;
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
}

impl TestMachine {
    /// Boot a machine named after the test, with the default two disks and the default
    /// sharing ceiling (2: every request's own level rules).
    pub fn boot(name: &str) -> TestMachine {
        TestMachine::boot_with_sharing(name, 2)
    }

    /// Boot with the hypervisor's sharing ceiling at `sharing`.
    pub fn boot_with_sharing(name: &str, sharing: u8) -> TestMachine {
        let (hypervisor, _) = artifacts();
        let dir = workspace_root().join("target/integration").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = MachineConfig::new(&dir, hypervisor.clone());
        config.timeout = std::time::Duration::from_secs(600);
        config.sharing = sharing;
        let machine =
            Machine::start(&config).unwrap_or_else(|error| panic!("booting {name}: {error}"));
        TestMachine {
            database: dir.join("vdisk.sqlite"),
            machine,
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
