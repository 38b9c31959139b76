//! What the `vdisk` test suites share: a temporary machine of sparse images partitioned
//! with sfdisk, a devices file and a database path, and ways to run `vdisk` against it and
//! look into its database directly. A machine's pool is an SQLite file, or a pool on an
//! etcd cluster of its own, so that a test can run against both.
#![allow(dead_code)] // each test crate uses its own part of this module

pub mod hypervisor;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use host_tools::database::etcd::EtcdStore;
use host_tools::database::{
    AccessMode, AttachmentTarget, Database, OpenMode, PoolUrl, SqliteFile, Store,
};
use host_tools::uname::VdId;
use serde_json::Value;
use shared_abi::DeviceNumber;
use vbd_machine::etcd::Cluster;

pub const SFDISK: &str = "/usr/sbin/sfdisk";
pub const MIB: u64 = 1 << 20;

/// Where a test machine keeps its pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// An SQLite file, `state/vdisk.sqlite` in the machine's directory.
    Sqlite,
    /// A one-member etcd cluster of the machine's own; its disk is a shared one.
    Etcd,
}

/// Run each named test, a `fn NAME(pool: PoolKind)`, once on each pool: as `NAME::sqlite`
/// and `NAME::etcd`.
#[macro_export]
macro_rules! on_both_pools {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name(super::common::PoolKind::Sqlite)
                }

                #[test]
                fn etcd() {
                    super::$name(super::common::PoolKind::Etcd)
                }
            }
        )*
    };
}

/// A temporary machine: one disk image `hda` (3:0) with partitions, a devices file and a
/// pool.
pub struct Machine {
    /// The cluster of a machine whose pool is on etcd; dropped (its members killed) before
    /// the directory that holds its data.
    pub etcd: Option<Cluster>,
    pub directory: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Machine {
    /// `partitions_mib` sizes the partitions in MiB, starting at 1 MiB.
    pub fn new(disk_mib: u64, partitions_mib: &[u64]) -> Machine {
        Machine::on(PoolKind::Sqlite, disk_mib, partitions_mib)
    }

    /// The same, with its pool on `pool`.
    pub fn on(pool: PoolKind, disk_mib: u64, partitions_mib: &[u64]) -> Machine {
        let members = match pool {
            PoolKind::Sqlite => 0,
            PoolKind::Etcd => 1,
        };
        Machine::with_label_on(members, "dos", disk_mib, partitions_mib)
    }

    /// The same, with its pool on an etcd cluster of `members` members.
    pub fn on_cluster(members: usize, disk_mib: u64, partitions_mib: &[u64]) -> Machine {
        Machine::with_label_on(members, "dos", disk_mib, partitions_mib)
    }

    /// A machine whose disk carries a partition table of sfdisk's `label` (`dos`, `gpt`).
    pub fn with_label(label: &str, disk_mib: u64, partitions_mib: &[u64]) -> Machine {
        Machine::with_label_on(0, label, disk_mib, partitions_mib)
    }

    /// `etcd_members` 0 for an SQLite pool.
    fn with_label_on(
        etcd_members: usize,
        label: &str,
        disk_mib: u64,
        partitions_mib: &[u64],
    ) -> Machine {
        assert!(
            Path::new(SFDISK).exists(),
            "{SFDISK} is missing: install the fdisk package (apt-get install fdisk)"
        );
        let directory = tempfile::tempdir().unwrap();
        let image = directory.path().join("hda.img");
        fs::File::create(&image)
            .unwrap()
            .set_len(disk_mib * MIB)
            .unwrap();
        let mut script = format!("label: {label}\n");
        for size in partitions_mib {
            script.push_str(&format!(",{size}M\n"));
        }
        let mut child = Command::new(SFDISK)
            .args(["-q", "--no-reread"])
            .arg(&image)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "sfdisk failed");
        let shared = if etcd_members > 0 {
            "shared = true\n"
        } else {
            ""
        };
        fs::write(
            directory.path().join("devices.toml"),
            format!("[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"hda.img\"\n{shared}"),
        )
        .unwrap();
        let etcd = (etcd_members > 0)
            .then(|| Cluster::start(&directory.path().join("etcd"), etcd_members).unwrap());
        Machine { etcd, directory }
    }

    /// The pool every command is given, as `--pool` takes it.
    pub fn pool_url(&self) -> String {
        match &self.etcd {
            Some(cluster) => cluster.url(),
            None => format!("sqlite:{}", self.database_path().display()),
        }
    }

    /// Start a hypervisor over this machine's disk, reporting `start_id` and allowing every
    /// sharing level: drop it and start another to restart it.
    pub fn hypervisor(&self, start_id: u64) -> hypervisor::Hypervisor {
        self.hypervisor_with_ceiling(start_id, shared_abi::SharingLevel::Unrestricted)
    }

    /// The same, allowing sharing levels up to `ceiling` only.
    pub fn hypervisor_with_ceiling(
        &self,
        start_id: u64,
        ceiling: shared_abi::SharingLevel,
    ) -> hypervisor::Hypervisor {
        hypervisor::Hypervisor::start(self.directory.path(), &self.image(), start_id, ceiling)
    }

    pub fn database_path(&self) -> PathBuf {
        self.directory.path().join("state/vdisk.sqlite")
    }

    pub fn image(&self) -> PathBuf {
        self.directory.path().join("hda.img")
    }

    pub fn command(&self, arguments: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vdisk"));
        command
            .args(arguments)
            .env("VDISK_DB", self.database_path())
            .env("VDISK_DEVICES", self.directory.path().join("devices.toml"))
            .env_remove("VDISK_HV")
            .env_remove("VDISK_POOL")
            .env_remove("VDISK_HOST");
        if let Some(cluster) = &self.etcd {
            command.env("VDISK_POOL", cluster.url());
        }
        command
    }

    pub fn run(&self, arguments: &[&str]) -> Run {
        let output: Output = self.command(arguments).output().unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    /// Run and require success; returns standard output.
    pub fn ok(&self, arguments: &[&str]) -> String {
        let run = self.run(arguments);
        assert_eq!(run.code, 0, "vdisk {arguments:?} failed: {}", run.stderr);
        assert_eq!(run.stderr, "");
        run.stdout
    }

    pub fn json(&self, arguments: &[&str]) -> Value {
        let mut arguments = arguments.to_vec();
        arguments.push("--json");
        serde_json::from_str(&self.ok(&arguments)).unwrap()
    }

    /// Run and require failure with `code` and exactly `message` as its one line.
    pub fn fails(&self, arguments: &[&str], code: i32, message: &str) {
        let run = self.run(arguments);
        assert_eq!(run.code, code, "vdisk {arguments:?}: {}", run.stderr);
        assert_eq!(
            run.stderr,
            format!("vdisk: {message}\n"),
            "vdisk {arguments:?}"
        );
        assert_eq!(run.stdout, "");
    }

    /// Everything a script can see of the database: the pool and every disk.
    pub fn snapshot(&self) -> (Value, Value) {
        (self.json(&["pool"]), self.json(&["list", "--all"]))
    }

    pub fn database(&self) -> Database {
        Database::open_pool(
            &PoolUrl::parse(&self.pool_url()).unwrap(),
            OpenMode::Existing,
        )
        .unwrap()
    }

    /// Record, straight in the database, VD `vd` attached read-write to domain 1 as `xvda`
    /// at sharing level 1 under start 1, as `vdisk attach --hv` would have.
    pub fn record_vd_attachment(&self, vd: &str) {
        self.database()
            .record_attachment(
                &AttachmentTarget::VirtualDisk(VdId::parse(vd).unwrap()),
                1,
                DeviceNumber::from_name("xvda").unwrap(),
                AccessMode::ReadWrite,
                shared_abi::SharingLevel::ReadersOnly,
                1,
            )
            .unwrap();
    }

    pub fn read_image(&self, sector: u64, sectors: u64) -> Vec<u8> {
        let mut buffer = vec![0u8; (sectors * 512) as usize];
        fs::File::open(self.image())
            .unwrap()
            .read_exact_at(&mut buffer, sector * 512)
            .unwrap();
        buffer
    }

    pub fn fill_image(&self, sector: u64, sectors: u64, byte: u8) {
        let file = fs::OpenOptions::new()
            .write(true)
            .open(self.image())
            .unwrap();
        file.write_all_at(&vec![byte; (sectors * 512) as usize], sector * 512)
            .unwrap();
    }
}

pub fn extents(disk: &Value) -> Vec<(String, u64, u64)> {
    disk["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|extent| {
            (
                extent["device"].as_str().unwrap().to_string(),
                extent["start_sector"].as_u64().unwrap(),
                extent["nr_sectors"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Partition starts as sfdisk reports them, in sectors.
pub fn partition_starts(image: &Path) -> Vec<u64> {
    let output = Command::new(SFDISK).arg("-d").arg(image).output().unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split("start=").nth(1))
        .map(|rest| rest.split(',').next().unwrap().trim().parse().unwrap())
        .collect()
}

impl Machine {
    /// The devices file every command is given.
    pub fn devices_file(&self) -> PathBuf {
        self.directory.path().join("devices.toml")
    }

    /// Replace the devices file.
    pub fn write_devices(&self, text: &str) {
        fs::write(self.devices_file(), text).unwrap();
    }

    /// The database opened with SQLite alone, to inspect what `vdisk` left there.
    pub fn sqlite(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.database_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
    }

    /// Change the database behind `vdisk`'s back, as a damaged or old one would be, with
    /// its foreign keys unchecked.
    pub fn tamper(&self, sql: &str) {
        let connection = rusqlite::Connection::open(self.database_path()).unwrap();
        connection
            .execute_batch(&format!("PRAGMA foreign_keys = OFF; {sql}"))
            .unwrap();
    }

    /// One integer from `query` against the pool's tables, whichever store holds them.
    pub fn count(&self, query: &str) -> i64 {
        let store: Box<dyn Store> = match PoolUrl::parse(&self.pool_url()).unwrap() {
            PoolUrl::Sqlite(path) => Box::new(SqliteFile::open(&path, OpenMode::ReadOnly).unwrap()),
            PoolUrl::Etcd(endpoints) => {
                Box::new(EtcdStore::open(&endpoints, OpenMode::ReadOnly).unwrap())
            }
        };
        let mut count = None;
        store
            .read(&mut |connection| {
                count = Some(connection.query_row(query, [], |row| row.get(0))?);
                Ok(())
            })
            .unwrap();
        count.unwrap()
    }
}

/// Send `signal` to a child process.
pub fn signal(child: &std::process::Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

/// Wait (at most 30 s) until `condition` holds.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
