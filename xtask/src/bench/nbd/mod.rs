//! The `nbd` figures: dom0's tools on vbd-backend's NBD exports beside qemu-storage-daemon's
//! export of the same image files, in one run: fio's `nbd` engine (4 KiB random reads and
//! writes at depth 1 and 32) and nbdcopy (a full and a sparse disk, to `null:` and from a
//! file), every operation on each server in turn, rounds rotated ([`plan`]), medians kept;
//! and beside the workloads that only write, the floor: nbdkit's `null` plugin, a server that
//! throws the writes away, so the table shows what the client costs with a server that does
//! no I/O.

mod plan;
mod setup;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use vbd_machine::guest::FioReport;
use vbd_machine::process::output;
use vbd_machine::{build_backend, target_directory};

pub use plan::{Server, Workload};

use plan::{schedule, Samples, Step, Unit};
use setup::{allocated_bytes, Servers, DISK_BYTES, SPARSE_DATA_BYTES};

use super::table::Goal;

/// What vbd-backend must reach on every figure, in times qemu-storage-daemon's.
const SPEEDUP_GOAL: f64 = 1.2;
/// The most a sparse copy may cost, in times the full copy's time.
const SPARSE_COST_GOAL: f64 = 0.3;

/// Rounds and the length of each fio job. A copy of a full disk takes a fraction of a
/// second here, so the rounds, not the copies, set the section's length.
fn settings(quick: bool) -> (usize, Duration) {
    if quick {
        (3, Duration::from_secs(1))
    } else {
        (5, Duration::from_secs(2))
    }
}

/// Everything the section measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Nbd {
    /// The median over the rounds of each workload on each server.
    pub medians: BTreeMap<(Server, Workload), f64>,
    /// Each server's sparse image's allocated bytes after the run: what copying the sparse
    /// file into the sparse disk left of its holes, which the sparse copies after it see.
    pub sparse_allocated_bytes: BTreeMap<Server, u64>,
    pub rounds: usize,
    pub fio_runtime: Duration,
}

impl Nbd {
    /// One median (NaN where it was not measured).
    pub fn median(&self, server: Server, workload: Workload) -> f64 {
        self.medians
            .get(&(server, workload))
            .copied()
            .unwrap_or(f64::NAN)
    }

    /// vbd-backend against qemu-storage-daemon on `workload`, above 1 when better.
    pub fn speedup(&self, workload: Workload) -> f64 {
        self.over_qsd(Server::Backend, workload)
    }

    /// `server` against qemu-storage-daemon on `workload`, above 1 when better; for the
    /// floor, what a server that does no I/O reaches.
    fn over_qsd(&self, server: Server, workload: Workload) -> f64 {
        workload.speedup(
            self.median(server, workload),
            self.median(Server::Qsd, workload),
        )
    }

    /// A sparse copy's time over the full copy's, on `server`: (to null, from a file).
    pub fn sparse_cost(&self, server: Server) -> (f64, f64) {
        let ratio = |sparse, full| self.median(server, sparse) / self.median(server, full);
        (
            ratio(Workload::CopySparseToNull, Workload::CopyFullToNull),
            ratio(Workload::CopySparseFromFile, Workload::CopyFullFromFile),
        )
    }

    /// The `nbd` object of `summary.json`.
    pub fn json(&self) -> Value {
        let number = super::summary::number;
        let figures = |server: Server, figure: &dyn Fn(Workload) -> f64| {
            Value::Object(
                Workload::ALL
                    .into_iter()
                    .filter(|workload| server.runs(*workload))
                    .map(|workload| (workload.key().to_owned(), number(figure(workload))))
                    .collect(),
            )
        };
        let mut object = serde_json::Map::new();
        for server in Server::ALL {
            object.insert(
                server.key().to_owned(),
                figures(server, &|workload| self.median(server, workload)),
            );
        }
        for server in [Server::Backend, Server::Floor] {
            object.insert(
                format!("{}_over_qsd", server.key()),
                figures(server, &|workload| self.over_qsd(server, workload)),
            );
        }
        for server in Server::EXPORTS {
            let (to_null, from_file) = self.sparse_cost(server);
            object.insert(
                format!("{}_sparse_over_full", server.key()),
                serde_json::json!({"to_null": number(to_null), "from_file": number(from_file)}),
            );
        }
        object.insert(
            "run".to_owned(),
            serde_json::json!({
                "rounds": self.rounds,
                "seconds_per_fio_job": number(self.fio_runtime.as_secs_f64()),
                "disk_mib": DISK_BYTES >> 20,
                "sparse_data_mib": SPARSE_DATA_BYTES >> 20,
                "sparse_allocated_mib_after": Value::Object(self.sparse_allocated_bytes.iter().map(|(server, bytes)| (server.key().to_owned(), number(*bytes as f64 / f64::from(1u32 << 20)))).collect()),
            }),
        );
        Value::Object(object)
    }

    /// The goals of issue 16, judged on this run.
    pub fn goals(&self) -> Vec<Goal> {
        let mut goals: Vec<Goal> = Workload::ALL
            .into_iter()
            .map(|workload| {
                let speedup = self.speedup(workload);
                let floor = if Server::Floor.runs(workload) {
                    format!(
                        " (a server that does nothing: {:.2}x)",
                        self.over_qsd(Server::Floor, workload)
                    )
                } else {
                    String::new()
                };
                Goal {
                    text: format!(
                        "nbd: vbd-backend >= {SPEEDUP_GOAL}x qemu-storage-daemon on {}: {speedup:.2}x{floor}",
                        workload.key()
                    ),
                    met: speedup >= SPEEDUP_GOAL,
                }
            })
            .collect();
        let (to_null, from_file) = self.sparse_cost(Server::Backend);
        for (what, cost) in [("to null", to_null), ("from a file", from_file)] {
            goals.push(Goal {
                text: format!(
                    "nbd: a sparse copy {what} <= {SPARSE_COST_GOAL}x a full one: {cost:.2}x"
                ),
                met: cost <= SPARSE_COST_GOAL,
            });
        }
        goals
    }

    /// The section's rows of the human table.
    pub fn render(&self, table: &mut String) {
        let _ = writeln!(
            table,
            "\nNBD exports of {} MiB disks (the sparse one holding {} MiB), medians of {} rounds; \
             fio's nbd engine, {:.0} s a job, and nbdcopy, on the host",
            DISK_BYTES >> 20,
            SPARSE_DATA_BYTES >> 20,
            self.rounds,
            self.fio_runtime.as_secs_f64()
        );
        let _ = writeln!(
            table,
            "{:<26} {:>12} {:>12} {:>10} {:>12} {:>10}",
            "", "vbd-backend", "qsd", "vbd/qsd", "floor", "floor/qsd"
        );
        for workload in Workload::ALL {
            let floor = if Server::Floor.runs(workload) {
                format!(
                    "{:>12.1} {:>9.2}x",
                    self.median(Server::Floor, workload),
                    self.over_qsd(Server::Floor, workload)
                )
            } else {
                format!("{:>12} {:>10}", "-", "-")
            };
            let _ = writeln!(
                table,
                "{:<26} {:>12.1} {:>12.1} {:>9.2}x {floor}",
                workload.key(),
                self.median(Server::Backend, workload),
                self.median(Server::Qsd, workload),
                self.speedup(workload)
            );
        }
        let _ = writeln!(
            table,
            "floor: nbdkit's null plugin, a server that throws writes away and does no I/O"
        );
        for server in Server::EXPORTS {
            let (to_null, from_file) = self.sparse_cost(server);
            let allocated = self
                .sparse_allocated_bytes
                .get(&server)
                .map_or(f64::NAN, |bytes| *bytes as f64 / f64::from(1u32 << 20));
            let _ = writeln!(
                table,
                "sparse copy over full, {}: {to_null:.2}x to null, {from_file:.2}x from a file; \
                 its sparse image holds {allocated:.1} MiB after the run",
                server.key()
            );
        }
    }
}

/// fio's `nbd` engine on `uri`: 4 KiB random reads or writes at `depth`, for `runtime`.
fn fio_command(name: &str, uri: &str, write: bool, depth: u32, runtime: Duration) -> Command {
    let pattern = if write { "randwrite" } else { "randread" };
    let mut command = Command::new("fio");
    command.args([
        format!("--name={name}"),
        "--ioengine=nbd".to_owned(),
        format!("--uri={uri}"),
        format!("--rw={pattern}"),
        "--bs=4k".to_owned(),
        format!("--iodepth={depth}"),
        "--time_based".to_owned(),
        format!("--runtime={}ms", runtime.as_millis()),
        "--eta=never".to_owned(),
        "--output-format=json".to_owned(),
    ]);
    command
}

/// Run one step and return its figure: fio's IOPS, or nbdcopy's wall-clock milliseconds.
fn run_step(servers: &Servers, step: &Step, runtime: Duration) -> Result<f64, String> {
    let workload = step.workload;
    let uri = servers.uri(step.server, workload.disk());
    let name = format!("r{}_{}_{}", step.round, step.server.key(), workload.key());
    let random = |write: bool, depth: u32| -> Result<f64, String> {
        let printed = output(&mut fio_command(&name, &uri, write, depth, runtime))?;
        let report = FioReport::parse(&String::from_utf8_lossy(&printed.stdout))
            .map_err(|error| format!("nbd: {name}: {error}"))?;
        Ok(if write {
            report.write.iops
        } else {
            report.read.iops
        })
    };
    let copy = |from: &str, to: &str| -> Result<f64, String> {
        let started = Instant::now();
        output(Command::new("nbdcopy").args([from, to]))?;
        Ok(started.elapsed().as_secs_f64() * 1e3)
    };
    let file = servers.file(workload.disk()).display().to_string();
    match workload {
        Workload::RandomReadDepth1 => random(false, 1),
        Workload::RandomReadDepth32 => random(false, 32),
        Workload::RandomWriteDepth1 => random(true, 1),
        Workload::RandomWriteDepth32 => random(true, 32),
        Workload::CopyFullToNull | Workload::CopySparseToNull => copy(&uri, "null:"),
        Workload::CopyFullFromFile | Workload::CopySparseFromFile => copy(&file, &uri),
    }
}

/// Start both servers on the same images and measure.
pub fn measure(quick: bool) -> Result<Nbd, String> {
    let (rounds, fio_runtime) = settings(quick);
    let binary = build_backend(true)?;
    let dir = target_directory().join("bench/nbd");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let servers = Servers::start(&dir, &binary)?;
    let steps = schedule(rounds);
    let mut samples = Samples::default();
    for (number, step) in steps.iter().enumerate() {
        super::write_back_dirty_pages()?;
        let figure = run_step(&servers, step, fio_runtime)?;
        let unit = match step.workload.unit() {
            Unit::Iops => "IOPS",
            Unit::Milliseconds => "ms",
        };
        eprintln!(
            "nbd: {}/{} round {} {} on {}: {figure:.1} {unit}",
            number + 1,
            steps.len(),
            step.round,
            step.workload.key(),
            step.server.key()
        );
        samples.add(step, figure);
    }
    let mut medians = BTreeMap::new();
    for server in Server::ALL {
        for workload in Workload::ALL.into_iter().filter(|w| server.runs(*w)) {
            medians.insert((server, workload), samples.median(server, workload)?);
        }
    }
    let mut sparse_allocated_bytes = BTreeMap::new();
    for (server, image) in servers.sparse_images() {
        sparse_allocated_bytes.insert(server, allocated_bytes(image)?);
    }
    servers.stop()?;
    Ok(Nbd {
        medians,
        sparse_allocated_bytes,
        rounds,
        fio_runtime,
    })
}

#[cfg(test)]
mod tests;
