//! `cargo xtask bench [--quick]`: every benchmark of the project beside its baseline, as a
//! table on standard output and as `target/bench/summary.json` (medians).
//!
//! The micro-benchmarks are criterion benches ([`criterion`]) and hv-vbd's threads bench
//! ([`threads`]); the `vdisk` figures are wall-clock times of the release binary
//! ([`vdisk`]); the test hypervisor's I/O runs in QEMU ([`qemu_io`]); and a real Linux guest
//! runs fio on vbd-backend, qemu-storage-daemon and QEMU's own virtio-blk ([`guest_io`]);
//! dom0's NBD tools run on vbd-backend's and qemu-storage-daemon's NBD exports ([`nbd`]),
//! alone with `--only nbd`; and a host client with no guest runs on vbd-backend,
//! qemu-storage-daemon and, as fio, on the file itself ([`backend_io`]), alone with
//! `--only backend_io`; and `vdisk` on a pool on etcd beside SQLite ([`pool`]), alone with
//! `--only pool`.

mod backend_io;
mod criterion;
mod guest_io;
mod nbd;
mod pool;
mod qemu_io;
mod summary;
mod table;
mod threads;
mod vdisk;

use std::fs;
use std::time::{Instant, SystemTime};

use vbd_machine::{target_directory, workspace_root};

use criterion::Medians;
use summary::{render_json, Summary, TranslateRow};
use table::{render_goals, render_table};

/// The VBD sizes the translation benchmark measures, in extents.
const EXTENT_COUNTS: [u32; 5] = [1, 16, 256, 4096, 65536];

/// A section `--only` runs alone: its table, its goals and `target/bench/SECTION.json`, in
/// minutes rather than the whole bench's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Nbd,
    BackendIo,
    Pool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    quick: bool,
    only: Option<Section>,
}

impl Options {
    pub fn parse(arguments: &[String]) -> Result<Options, String> {
        let mut quick = false;
        let mut only = None;
        let mut arguments = arguments.iter();
        while let Some(argument) = arguments.next() {
            match argument.as_str() {
                "--quick" => quick = true,
                "--only" => match arguments.next().map(String::as_str) {
                    Some("nbd") => only = Some(Section::Nbd),
                    Some("backend_io") => only = Some(Section::BackendIo),
                    Some("pool") => only = Some(Section::Pool),
                    Some(other) => {
                        return Err(format!(
                            "bench: `--only {other}`: the sections are nbd, backend_io and pool"
                        ))
                    }
                    None => {
                        return Err(
                            "bench: `--only` needs a section: nbd, backend_io or pool".to_owned()
                        )
                    }
                },
                other => return Err(format!("bench: unknown option `{other}`")),
            }
        }
        Ok(Options { quick, only })
    }

    /// Timed runs of each `vdisk` command; the median is reported.
    fn vdisk_runs(&self) -> usize {
        if self.quick {
            3
        } else {
            5
        }
    }
}

pub fn run(options: Options) -> Result<(), String> {
    // Every section builds vbd-backend (protoc for its etcd client) or runs a tool the
    // machine may lack (qemu-storage-daemon, fio, nbdcopy, etcd).
    crate::provision::ensure_all()?;
    let root = workspace_root();
    let target = target_directory();
    match options.only {
        Some(Section::Nbd) => {
            let nbd = nbd::measure(options.quick)?;
            return write_alone(
                &target,
                "nbd",
                |table| nbd.render(table),
                &nbd.goals(),
                nbd.json(),
            );
        }
        Some(Section::BackendIo) => {
            let io = backend_io::measure(options.quick)?;
            return write_alone(
                &target,
                "backend_io",
                |table| io.render(table),
                &io.goals(),
                io.json(),
            );
        }
        Some(Section::Pool) => {
            let pool = pool::measure(options.quick)?;
            return write_alone(
                &target,
                "pool",
                |table| pool.render(table),
                &pool.goals(),
                pool.json(),
            );
        }
        None => {}
    }
    let started = SystemTime::now();
    let clock = Instant::now();
    let lap = |what: &str| {
        eprintln!(
            "bench: {what} done at {:.0} s",
            clock.elapsed().as_secs_f64()
        )
    };
    criterion::run_suites(&root, options.quick)?;
    let medians = Medians::new(&target, started);
    let mut translate = Vec::new();
    for extents in EXTENT_COUNTS {
        let median =
            |function: &str| medians.nanoseconds(&format!("translate/{function}/{extents}"));
        translate.push(TranslateRow {
            extents,
            pinned: median("binary_search")?,
            by_name: median("by_name")?,
            list_walk: median("linear_walk")?,
            slice_walk: median("slice_walk")?,
        });
    }
    lap("criterion");
    let threads = threads::measure(&root, &target, options.quick)?;
    lap("threads");
    let (format_ms_65536, create_ms_16384) = vdisk::measure(&target, options.vdisk_runs())?;
    lap("vdisk");
    let qemu_io = qemu_io::measure(options.quick)?;
    lap("test hypervisor I/O");
    let guest_io = guest_io::measure(options.quick)?;
    lap("guest I/O");
    let nbd = nbd::measure(options.quick)?;
    lap("NBD");
    let backend_io = backend_io::measure(options.quick)?;
    lap("backend I/O");
    let pool = pool::measure(options.quick)?;
    lap("pool");
    let summary = Summary {
        translate,
        setextents_us: medians.nanoseconds("set_extents/1024_into_10000")? / 1e3,
        threads,
        create_ms_16384,
        format_ms_65536,
        validate_ms_10k: medians.nanoseconds("validate/sweep_10k")? / 1e6,
        validate_naive_ms_10k: medians.nanoseconds("validate/naive_10k")? / 1e6,
        qemu_io,
        guest_io,
        nbd,
        backend_io,
        pool,
        bytes_per_extent: hv_vbd::BYTES_PER_EXTENT,
        table_bytes: hv_vbd::DEFAULT_TABLE_BYTES,
    };

    print!("{}", render_table(&summary));
    let directory = target.join("bench");
    fs::create_dir_all(&directory)
        .map_err(|error| format!("creating {}: {error}", directory.display()))?;
    let path = directory.join("summary.json");
    fs::write(&path, render_json(&summary))
        .map_err(|error| format!("writing {}: {error}", path.display()))?;
    println!(
        "\nwrote {} after {:.0} s",
        path.display(),
        clock.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--only SECTION`: the section's table and goals, and its object of `summary.json` alone in
/// `target/bench/SECTION.json` (a partial run must not pass for a whole one's summary).
fn write_alone(
    target: &std::path::Path,
    section: &str,
    render: impl FnOnce(&mut String),
    goals: &[table::Goal],
    json: serde_json::Value,
) -> Result<(), String> {
    let mut table = String::new();
    render(&mut table);
    render_goals(&mut table, goals);
    print!("{table}");
    let path = target.join(format!("bench/{section}.json"));
    fs::write(&path, format!("{json:#}\n"))
        .map_err(|error| format!("writing {}: {error}", path.display()))?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// A file a bench writes, refused when older than `started`: a bench that was renamed or
/// skipped must not report a stale figure.
fn read_fresh(path: &std::path::Path, started: SystemTime) -> Result<String, String> {
    let failed = |error: &dyn std::fmt::Display| format!("{}: {error}", path.display());
    let modified = fs::metadata(path)
        .and_then(|metadata| metadata.modified())
        .map_err(|error| failed(&error))?;
    if modified < started {
        return Err(failed(&"not written by this run"));
    }
    fs::read_to_string(path).map_err(|error| failed(&error))
}

/// Write every dirty page back (`sync`) before a timed job, outside its time: the writes of
/// the jobs before it would otherwise be written back during it, by the kernel's flusher on
/// the same two cores, and weigh on whichever server ran then.
fn write_back_dirty_pages() -> Result<(), String> {
    vbd_machine::process::output(&mut std::process::Command::new("sync")).map(drop)
}

fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

#[cfg(test)]
mod tests;
