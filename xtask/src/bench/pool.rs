//! The `pool` section: `vdisk` on a pool on etcd (a 3-member cluster on loopback) beside the
//! same commands on an SQLite pool, each command a whole `vdisk` process as a user runs it:
//! the latency of `create`, `attach` and `detach` (on a release vbd-backend), the creates a
//! second that 2 hosts racing 10 processes each complete, and one 16 384-extent VD's create.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use serde_json::Value;
use shared_abi::DeviceNumber;
use vbd_machine::etcd::Cluster;
use vbd_machine::process::output;
use vbd_machine::{build_backend, build_vdisk, target_directory, write_devices, Backend};

use super::median_of;
use super::summary::number;
use super::table::Goal;

/// The latency pool: a 1 GiB sparse image in 4 MiB extents.
const SMALL_BYTES: u64 = 1 << 30;
/// The large VD: 16 384 extents of 1 MiB, from a pool with room to spare.
const LARGE_BYTES: u64 = 17 << 30;
const LARGE_CREATE: &str = "16G";
/// Racing processes per host, and hosts.
const RACERS: usize = 10;
const HOSTS: [&str; 2] = ["a", "b"];

/// What the section measured: medians in milliseconds, per store.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolBench {
    pub rounds: usize,
    /// `(create, attach, detach)` on SQLite and on etcd.
    pub sqlite_ms: (f64, f64, f64),
    pub etcd_ms: (f64, f64, f64),
    /// Creates a second completed by 2 hosts racing 10 processes each.
    pub sqlite_racing_per_second: f64,
    pub etcd_racing_per_second: f64,
    /// `vdisk create 16G` of 16 384 extents of 1 MiB on etcd.
    pub etcd_create_16384_ms: f64,
}

/// The pools' stores.
#[derive(Clone, Copy)]
enum Store {
    Sqlite,
    Etcd,
}

/// A pool on one sparse image, with its devices file, and the store that holds it.
struct Pool {
    vdisk: PathBuf,
    devices: PathBuf,
    url: String,
    /// Held to keep the members running; dropped (killed) with the pool.
    _cluster: Option<Cluster>,
}

impl Pool {
    /// A fresh image of `bytes` and a fresh pool on `store` in `scratch/name`.
    fn new(
        vdisk: &Path,
        scratch: &Path,
        name: &str,
        bytes: u64,
        store: Store,
    ) -> Result<Pool, String> {
        let directory = scratch.join(name);
        let _ = fs::remove_dir_all(&directory);
        fs::create_dir_all(&directory)
            .map_err(|error| format!("creating {}: {error}", directory.display()))?;
        let image = directory.join("sda.img");
        fs::File::create(&image)
            .and_then(|file| file.set_len(bytes))
            .map_err(|error| format!("{}: {error}", image.display()))?;
        let devices = directory.join("devices.toml");
        let sda = DeviceNumber::from_name("sda").expect("sda is a device name");
        write_devices(&devices, [("sda", sda, image.as_path())])?;
        // The LUN every host sees.
        let text = fs::read_to_string(&devices).map_err(|error| error.to_string())?;
        fs::write(&devices, format!("{text}shared = true\n")).map_err(|error| error.to_string())?;
        let (url, cluster) = match store {
            Store::Sqlite => (
                format!("sqlite:{}", directory.join("vdisk.sqlite").display()),
                None,
            ),
            Store::Etcd => {
                let cluster = Cluster::start(&directory.join("etcd"), 3)?;
                (cluster.url(), Some(cluster))
            }
        };
        Ok(Pool {
            vdisk: vdisk.to_path_buf(),
            devices,
            url,
            _cluster: cluster,
        })
    }

    fn command(&self, host: &str, arguments: &[&str]) -> Command {
        let mut command = Command::new(&self.vdisk);
        command
            .args(["--pool", &self.url, "--host", host])
            .arg("--devices")
            .arg(&self.devices)
            .args(arguments)
            .env_remove("VDISK_ZERO_WITH_WRITES");
        command
    }

    fn run(&self, arguments: &[&str]) -> Result<String, String> {
        let done = output(&mut self.command(HOSTS[0], arguments))?;
        Ok(String::from_utf8_lossy(&done.stdout).trim().to_string())
    }

    /// Milliseconds `vdisk ARGUMENTS` took, start to exit, and its output.
    fn timed(&self, arguments: &[&str]) -> Result<(f64, String), String> {
        let start = Instant::now();
        let printed = self.run(arguments)?;
        Ok((start.elapsed().as_secs_f64() * 1e3, printed))
    }
}

pub fn measure(quick: bool) -> Result<PoolBench, String> {
    let rounds = if quick { 3 } else { 9 };
    let vdisk = build_vdisk(true)?;
    let backend = build_backend(true)?;
    let scratch = target_directory().join("bench/pool");
    let latencies = |store| latencies(&vdisk, &backend, &scratch, store, rounds);
    let sqlite_ms = latencies(Store::Sqlite)?;
    let etcd_ms = latencies(Store::Etcd)?;
    let racing = |store| racing(&vdisk, &scratch, store, if quick { 1 } else { 3 });
    let sqlite_racing_per_second = racing(Store::Sqlite)?;
    let etcd_racing_per_second = racing(Store::Etcd)?;
    let mut large = Vec::new();
    for _ in 0..if quick { 1 } else { 3 } {
        let pool = Pool::new(&vdisk, &scratch, "large", LARGE_BYTES, Store::Etcd)?;
        pool.run(&["format", "phy:sda", "--extent-size", "1M"])?;
        let (milliseconds, _) = pool.timed(&["create", LARGE_CREATE])?;
        let shown: Value = serde_json::from_str(&pool.run(&["show", "1", "--json"])?)
            .map_err(|error| format!("vdisk show --json: {error}"))?;
        if shown["size_sectors"] != 16384 * 2048 {
            return Err(format!("vdisk create {LARGE_CREATE} made {shown}"));
        }
        large.push(milliseconds);
    }
    let _ = fs::remove_dir_all(&scratch);
    Ok(PoolBench {
        rounds,
        sqlite_ms,
        etcd_ms,
        sqlite_racing_per_second,
        etcd_racing_per_second,
        etcd_create_16384_ms: median_of(&mut large),
    })
}

/// Median milliseconds of `create 4M`, `attach` of it to dom0 on a vbd-backend and `detach`.
fn latencies(
    vdisk: &Path,
    backend: &Path,
    scratch: &Path,
    store: Store,
    rounds: usize,
) -> Result<(f64, f64, f64), String> {
    let pool = Pool::new(vdisk, scratch, "latency", SMALL_BYTES, store)?;
    pool.run(&["format", "phy:sda", "--extent-size", "4M"])?;
    let run_dir = scratch.join("latency/run");
    let server = Backend::start(
        backend,
        &pool.devices,
        &run_dir,
        &[],
        &scratch.join("latency/backend.log"),
    )?;
    let hv = server.endpoint();
    let (mut create, mut attach, mut detach) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (milliseconds, id) = pool.timed(&["create", "4M"])?;
        create.push(milliseconds);
        let uname = format!("vd:{id}");
        attach.push(
            pool.timed(&["--hv", &hv, "attach", &uname, "xvda", "0", "rw"])?
                .0,
        );
        detach.push(pool.timed(&["--hv", &hv, "detach", "xvda", "0"])?.0);
        pool.run(&["delete", &id])?;
    }
    server.stop()?;
    Ok((
        median_of(&mut create),
        median_of(&mut attach),
        median_of(&mut detach),
    ))
}

/// Creates a second completed by 2 hosts of 10 processes each, all started at once on a
/// fresh pool with room for every one of them: the median of `rounds`.
fn racing(vdisk: &Path, scratch: &Path, store: Store, rounds: usize) -> Result<f64, String> {
    let mut rates = Vec::new();
    for _ in 0..rounds {
        let pool = Pool::new(vdisk, scratch, "racing", SMALL_BYTES, store)?;
        pool.run(&["format", "phy:sda", "--extent-size", "4M"])?;
        let start = Instant::now();
        let children: Vec<Child> = HOSTS
            .iter()
            .flat_map(|host| (0..RACERS).map(move |_| host))
            .map(|host| {
                pool.command(host, &["create", "4M"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|error| format!("{}: {error}", pool.vdisk.display()))
            })
            .collect::<Result<_, _>>()?;
        for child in children {
            let done = child
                .wait_with_output()
                .map_err(|error| error.to_string())?;
            if !done.status.success() {
                return Err(format!(
                    "a racing vdisk create failed: {}",
                    String::from_utf8_lossy(&done.stderr)
                ));
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        rates.push((HOSTS.len() * RACERS) as f64 / seconds);
        let listed: Value = serde_json::from_str(&pool.run(&["list", "--json"])?)
            .map_err(|error| format!("vdisk list --json: {error}"))?;
        if listed.as_array().map(Vec::len) != Some(HOSTS.len() * RACERS) {
            return Err(format!("after the race, vdisk list shows {listed}"));
        }
    }
    Ok(median_of(&mut rates))
}

impl PoolBench {
    /// Nothing measured (every figure NaN), for the tests of the summary.
    #[cfg(test)]
    pub fn unmeasured() -> PoolBench {
        PoolBench {
            rounds: 0,
            sqlite_ms: (f64::NAN, f64::NAN, f64::NAN),
            etcd_ms: (f64::NAN, f64::NAN, f64::NAN),
            sqlite_racing_per_second: f64::NAN,
            etcd_racing_per_second: f64::NAN,
            etcd_create_16384_ms: f64::NAN,
        }
    }

    pub fn render(&self, table: &mut String) {
        let _ = writeln!(
            table,
            "\npool: vdisk commands (whole processes), medians of {} rounds; etcd is 3 members on loopback",
            self.rounds
        );
        let _ = writeln!(table, "{:<28} {:>10} {:>10}", "", "sqlite", "etcd");
        let rows = [
            ("create 4M, ms", self.sqlite_ms.0, self.etcd_ms.0),
            ("attach to dom0, ms", self.sqlite_ms.1, self.etcd_ms.1),
            ("detach, ms", self.sqlite_ms.2, self.etcd_ms.2),
            (
                "2 hosts x 10 racing, creates/s",
                self.sqlite_racing_per_second,
                self.etcd_racing_per_second,
            ),
        ];
        for (name, sqlite, etcd) in rows {
            let _ = writeln!(table, "{name:<28} {sqlite:>10.1} {etcd:>10.1}");
        }
        let _ = writeln!(
            table,
            "{:<28} {:>10} {:>10.1}",
            "create 16G (16 384 x 1M), ms", "", self.etcd_create_16384_ms
        );
    }

    pub fn goals(&self) -> Vec<Goal> {
        vec![Goal {
            text: format!(
                "pool: a 16 384-extent VD allocates in under a second on etcd: {:.0} ms",
                self.etcd_create_16384_ms
            ),
            met: self.etcd_create_16384_ms < 1000.0,
        }]
    }

    pub fn json(&self) -> Value {
        let store = |(create, attach, detach): (f64, f64, f64), racing: f64| {
            serde_json::json!({
                "create_ms": number(create),
                "attach_ms": number(attach),
                "detach_ms": number(detach),
                "racing_creates_per_second": number(racing),
            })
        };
        serde_json::json!({
            "rounds": self.rounds,
            "sqlite": store(self.sqlite_ms, self.sqlite_racing_per_second),
            "etcd": store(self.etcd_ms, self.etcd_racing_per_second),
            "etcd_create_16384_ms": number(self.etcd_create_16384_ms),
        })
    }
}
