//! `cargo xtask bench [--quick]`: every benchmark of the project beside its baseline, as a
//! table on standard output and as `target/bench/summary.json` (medians).
//!
//! The micro-benchmarks are criterion benches (`hv-vbd/benches`, `host-tools/benches`);
//! this module runs them and reads the medians criterion writes to
//! `<target>/criterion/**/new/estimates.json`. The `vdisk` figures are wall-clock times of
//! the release binary on a sparse image. xtask stays light: no serde, the JSON is read and
//! written by hand.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use vbd_machine::process::{output, run as run_command};
use vbd_machine::{build_vdisk, target_directory, workspace_root};

use crate::qemu_io::{self, QemuIo};

/// The VBD sizes the translation benchmark measures, in extents.
const EXTENT_COUNTS: [u32; 5] = [1, 16, 256, 4096, 65536];

/// The pool for the `vdisk` figures: a 256 GiB sparse image split into 4 MiB extents.
const IMAGE_BYTES: u64 = 256 << 30;
const POOL_EXTENTS: u64 = 65536;
const CREATE_SIZE: &str = "64G";

/// Criterion's settings for `--quick`: the whole run stays under three minutes once built.
const QUICK_CRITERION: [&str; 6] = [
    "--warm-up-time",
    "1",
    "--measurement-time",
    "2",
    "--sample-size",
    "10",
];

pub struct Options {
    quick: bool,
}

impl Options {
    pub fn parse(arguments: &[String]) -> Result<Options, String> {
        let mut quick = false;
        for argument in arguments {
            match argument.as_str() {
                "--quick" => quick = true,
                other => return Err(format!("bench: unknown option `{other}`")),
            }
        }
        Ok(Options { quick })
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

/// Every figure of one run, in the units of `summary.json`.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    /// `(extents, ns)` per translation, hv-vbd's binary search.
    pub translate_ns: Vec<(u32, f64)>,
    /// `(extents, ns)` per translation, Xen 1.2's linear walk of its linked extent list.
    pub translate_linear_ns: Vec<(u32, f64)>,
    /// `(extents, ns)` per translation, the same walk over a contiguous slice: a stronger
    /// baseline than Xen 1.2 had, reported beside it (`translate_slice_walk_ns`).
    pub translate_slice_walk_ns: Vec<(u32, f64)>,
    pub setextents_us: f64,
    pub create_ms_16384: f64,
    pub format_ms_65536: f64,
    pub validate_ms_10k: f64,
    pub validate_naive_ms_10k: f64,
    /// Guest throughput through one extent and through 1024; `None` (written `null`) only
    /// in tests of the rendering.
    pub qemu_io_mib_s: Option<QemuIo>,
    pub bytes_per_extent: usize,
    pub table_bytes: usize,
}

pub fn run(options: Options) -> Result<(), String> {
    let root = workspace_root();
    let target = target_directory();
    let started = SystemTime::now();
    run_criterion(&root, options.quick)?;
    let criterion = target.join("criterion");
    let median = |benchmark: &str| read_median(&criterion, benchmark, started);
    let mut summary = Summary {
        bytes_per_extent: hv_vbd::BYTES_PER_EXTENT,
        table_bytes: hv_vbd::DEFAULT_TABLE_BYTES,
        setextents_us: median("set_extents/1024_into_10000")? / 1e3,
        validate_ms_10k: median("validate/sweep_10k")? / 1e6,
        validate_naive_ms_10k: median("validate/naive_10k")? / 1e6,
        ..Summary::default()
    };
    for extents in EXTENT_COUNTS {
        let binary_search = median(&format!("translate/binary_search/{extents}"))?;
        let linear_walk = median(&format!("translate/linear_walk/{extents}"))?;
        summary.translate_ns.push((extents, binary_search));
        summary.translate_linear_ns.push((extents, linear_walk));
        let slice_walk = median(&format!("translate/slice_walk/{extents}"))?;
        summary.translate_slice_walk_ns.push((extents, slice_walk));
    }
    (summary.format_ms_65536, summary.create_ms_16384) = time_vdisk(&target, options.vdisk_runs())?;
    summary.qemu_io_mib_s = Some(qemu_io::measure(options.quick)?);

    print!("{}", render_table(&summary));
    let directory = target.join("bench");
    fs::create_dir_all(&directory)
        .map_err(|error| format!("creating {}: {error}", directory.display()))?;
    let path = directory.join("summary.json");
    fs::write(&path, render_json(&summary))
        .map_err(|error| format!("writing {}: {error}", path.display()))?;
    println!("\nwrote {}", path.display());
    Ok(())
}

fn run_criterion(root: &Path, quick: bool) -> Result<(), String> {
    let suites: [&[&str]; 2] = [
        &["hv-vbd", "--bench", "translate", "--bench", "set_extents"],
        &["host-tools", "--bench", "validate"],
    ];
    for suite in suites {
        let mut command = Command::new(env!("CARGO"));
        command
            .current_dir(root)
            .args(["bench", "--package"])
            .args(suite)
            .arg("--");
        if quick {
            command.args(QUICK_CRITERION);
        }
        run_command(&mut command)?;
    }
    Ok(())
}

/// The median of one criterion benchmark in nanoseconds, refusing a file older than this
/// run: a benchmark that was renamed or skipped must not report a stale figure.
fn read_median(criterion: &Path, benchmark: &str, started: SystemTime) -> Result<f64, String> {
    let path = criterion.join(benchmark).join("new/estimates.json");
    let stale = fs::metadata(&path)
        .and_then(|metadata| metadata.modified())
        .map_err(|error| format!("{}: {error}", path.display()))?
        < started;
    if stale {
        return Err(format!("{}: not written by this run", path.display()));
    }
    let text = fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    parse_median(&text).ok_or_else(|| format!("{}: no median point estimate", path.display()))
}

/// `median.point_estimate` from criterion's `estimates.json`. Criterion writes the key
/// `"median"` once, as an object whose first number is its point estimate; that is all
/// this needs to know about the format.
pub fn parse_median(estimates: &str) -> Option<f64> {
    let median = estimates.find("\"median\"")?;
    number_after(&estimates[median..], "point_estimate")
}

/// The number after the first `"key":` in `json`: enough JSON reading for criterion's
/// estimates and `qemu-io`'s one-line output, without a JSON crate in xtask.
pub fn number_after(json: &str, key: &str) -> Option<f64> {
    let quoted = format!("\"{key}\"");
    let rest = json[json.find(&quoted)? + quoted.len()..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let end = rest
        .find(|character: char| {
            !(character.is_ascii_digit() || matches!(character, '.' | '-' | '+' | 'e' | 'E'))
        })
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Median wall-clock milliseconds of `vdisk format` (65 536 extents of 4 MiB from a 256 GiB
/// sparse image) and of `vdisk create 64G` (16 384 of them), as a user runs them: each run on
/// a fresh database and a fresh image, so every extent is dirty and `create` zeros 64 GiB.
/// That is only affordable because `vdisk` zeros a regular file by punching holes; a probe
/// checks that it does so here before anything large is zeroed.
fn time_vdisk(target: &Path, runs: usize) -> Result<(f64, f64), String> {
    let vdisk = build_vdisk(true)?;
    let scratch = target.join("bench/vdisk");
    fs::create_dir_all(&scratch)
        .map_err(|error| format!("creating {}: {error}", scratch.display()))?;
    let pool = Pool::new(&vdisk, &scratch, "hda", IMAGE_BYTES)?;
    let probe = Pool::new(&vdisk, &scratch, "probe", PROBE_BYTES)?;
    let measured = probe
        .check_zeroing_keeps_sparse()
        .and_then(|()| pool.time(runs));
    let removed = pool.remove().and(probe.remove());
    let (format_ms, create_ms) = measured?;
    removed?;
    Ok((format_ms, create_ms))
}

/// The probe's image: room for a few extents, so a `vdisk` that wrote its zeros would write
/// this much and no more.
const PROBE_BYTES: u64 = 64 << 20;

/// What an image may gain in blocks and still count as sparse: room for a file system's
/// own bookkeeping, far below the 64 MiB the probe would gain by being written.
const SPARSE_SLACK_BYTES: u64 = 1 << 20;

/// An image standing in for a disk, with its devices file and database.
struct Pool<'a> {
    vdisk: &'a Path,
    image: PathBuf,
    devices: PathBuf,
    database: PathBuf,
    bytes: u64,
}

impl<'a> Pool<'a> {
    fn new(vdisk: &'a Path, scratch: &Path, name: &str, bytes: u64) -> Result<Pool<'a>, String> {
        let image = scratch.join(format!("{name}.img"));
        let devices = scratch.join(format!("{name}.toml"));
        fs::write(
            &devices,
            format!(
                "[[disk]]\nname = \"hda\"\ndevice = \"3:0\"\npath = \"{}\"\n",
                image.display()
            ),
        )
        .map_err(|error| format!("writing {}: {error}", devices.display()))?;
        Ok(Pool {
            vdisk,
            image,
            database: scratch.join(format!("{name}.sqlite")),
            devices,
            bytes,
        })
    }

    fn command(&self, arguments: &[&str]) -> Command {
        let mut command = Command::new(self.vdisk);
        command
            .arg("--db")
            .arg(&self.database)
            .arg("--devices")
            .arg(&self.devices)
            .args(arguments)
            // The write path is a test hook; a user never has it set, nor may the bench.
            .env_remove("VDISK_ZERO_WITH_WRITES");
        command
    }

    /// A new database and a new sparse image: `set_len` on a new file allocates no blocks.
    fn make_fresh(&self) -> Result<(), String> {
        remove_database(&self.database)?;
        let file = fs::File::create(&self.image)
            .map_err(|error| format!("creating {}: {error}", self.image.display()))?;
        file.set_len(self.bytes)
            .map_err(|error| format!("sizing {}: {error}", self.image.display()))
    }

    /// Bytes of the file system the image occupies.
    fn allocated_bytes(&self) -> Result<u64, String> {
        fs::metadata(&self.image)
            .map(|metadata| metadata.blocks() * 512)
            .map_err(|error| format!("{}: {error}", self.image.display()))
    }

    /// Format the probe's image and create a disk over all of it, as the bench will, and
    /// require the image to stay sparse. Where the file system cannot punch holes `vdisk`
    /// falls back to writing zeros, and the bench would write 64 GiB per run.
    fn check_zeroing_keeps_sparse(&self) -> Result<(), String> {
        self.make_fresh()?;
        output(&mut self.command(&["format", "phy:hda", "--extent-size", "4M"]))?;
        output(&mut self.command(&["create", &format!("{}M", self.bytes >> 20)]))?;
        let allocated = self.allocated_bytes()?;
        if allocated > SPARSE_SLACK_BYTES {
            return Err(format!(
                "{}: zeroing a {} MiB disk allocated {allocated} bytes of the image: this file \
                 system does not punch holes, so vdisk writes its zeros, and `vdisk create {CREATE_SIZE}` \
                 would write {CREATE_SIZE} on each run; set CARGO_TARGET_DIR to a file system \
                 that punches holes (ext4, XFS, Btrfs, tmpfs)",
                self.image.display(),
                self.bytes >> 20
            ));
        }
        Ok(())
    }

    /// Median milliseconds of `format` and of `create`, each run on a fresh pool.
    fn time(&self, runs: usize) -> Result<(f64, f64), String> {
        let (mut format_ms, mut create_ms) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            self.make_fresh()?;
            format_ms.push(timed(&mut self.command(&[
                "format",
                "phy:hda",
                "--extent-size",
                "4M",
            ]))?);
            let extents = self.count_extents()?;
            if extents != POOL_EXTENTS {
                return Err(format!(
                    "the pool should hold {POOL_EXTENTS} extents, vdisk pool says {extents}"
                ));
            }
            create_ms.push(timed(&mut self.command(&["create", CREATE_SIZE]))?);
            let allocated = self.allocated_bytes()?;
            if allocated > SPARSE_SLACK_BYTES {
                return Err(format!(
                    "{}: vdisk create {CREATE_SIZE} allocated {allocated} bytes of the image",
                    self.image.display()
                ));
            }
        }
        Ok((median_of(&mut format_ms), median_of(&mut create_ms)))
    }

    /// `total_extents` of the one partition `vdisk pool --json` reports.
    fn count_extents(&self) -> Result<u64, String> {
        let pool = output(&mut self.command(&["pool", "--json"]))?;
        let pool = String::from_utf8_lossy(&pool.stdout);
        let key = "\"total_extents\":";
        let rest = pool[pool
            .find(key)
            .ok_or_else(|| format!("vdisk pool --json: no {key} in {pool}"))?
            + key.len()..]
            .trim_start();
        let digits = rest
            .find(|character: char| !character.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..digits]
            .parse()
            .map_err(|error| format!("vdisk pool --json: total_extents: {error}"))
    }

    fn remove(&self) -> Result<(), String> {
        remove_database(&self.database)?;
        for path in [&self.image, &self.devices] {
            match fs::remove_file(path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("removing {}: {error}", path.display()))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn remove_database(database: &Path) -> Result<(), String> {
    for suffix in ["", "-wal", "-shm"] {
        let mut path = database.as_os_str().to_owned();
        path.push(suffix);
        match fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("removing {}: {error}", Path::new(&path).display()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Milliseconds a command took, start to exit; it must succeed.
fn timed(command: &mut Command) -> Result<f64, String> {
    let start = Instant::now();
    output(command)?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
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

/// A JSON number: three decimals are finer than any of these measurements.
fn json_number(value: f64) -> String {
    if value.is_finite() {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        "null".to_string()
    }
}

/// `{"key": number, ...}`, keys in the order given.
pub fn json_object<K: std::fmt::Display>(pairs: &[(K, f64)]) -> String {
    let fields: Vec<String> = pairs
        .iter()
        .map(|(key, value)| format!("\"{key}\": {}", json_number(*value)))
        .collect();
    format!("{{{}}}", fields.join(", "))
}

pub fn render_json(summary: &Summary) -> String {
    let fields = [
        ("translate_ns", json_object(&summary.translate_ns)),
        (
            "translate_linear_ns",
            json_object(&summary.translate_linear_ns),
        ),
        (
            "translate_slice_walk_ns",
            json_object(&summary.translate_slice_walk_ns),
        ),
        ("setextents_us", json_number(summary.setextents_us)),
        ("create_ms_16384", json_number(summary.create_ms_16384)),
        ("format_ms_65536", json_number(summary.format_ms_65536)),
        ("validate_ms_10k", json_number(summary.validate_ms_10k)),
        (
            "validate_naive_ms_10k",
            json_number(summary.validate_naive_ms_10k),
        ),
        (
            "qemu_io_mib_s",
            summary.qemu_io_mib_s.map_or_else(
                || "null".to_string(),
                |io| {
                    json_object(&[
                        ("single_extent", io.single_extent),
                        ("many_extents", io.many_extents),
                    ])
                },
            ),
        ),
        ("bytes_per_extent", summary.bytes_per_extent.to_string()),
        ("table_bytes", summary.table_bytes.to_string()),
    ];
    let lines: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("  \"{key}\": {value}"))
        .collect();
    format!("{{\n{}\n}}\n", lines.join(",\n"))
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// The human table: every figure beside its baseline, then each goal of the issue.
pub fn render_table(summary: &Summary) -> String {
    let mut table = String::new();
    let one_extent = summary.translate_ns.first().map_or(f64::NAN, |pair| pair.1);
    let _ = writeln!(table, "\ntranslation, ns per request (median)");
    let _ = writeln!(
        table,
        "{:>8} {:>10} {:>12} {:>9} {:>12} {:>9} {:>12}",
        "extents", "hv-vbd", "Xen 1.2 list", "speed-up", "slice walk", "speed-up", "vs 1 extent"
    );
    for (((extents, ours), (_, linear)), (_, slice)) in summary
        .translate_ns
        .iter()
        .zip(&summary.translate_linear_ns)
        .zip(&summary.translate_slice_walk_ns)
    {
        let _ = writeln!(
            table,
            "{extents:>8} {ours:>10.1} {linear:>12.1} {:>8.1}x {slice:>12.1} {:>8.1}x {:>11.1}x",
            linear / ours,
            slice / ours,
            ours / one_extent
        );
    }
    let _ = writeln!(table);
    let rows = [
        (
            "set_extents, 1024 into 10 000",
            format!("{:.1} us", summary.setextents_us),
        ),
        (
            "vdisk format, 65 536 extents",
            format!("{:.1} ms", summary.format_ms_65536),
        ),
        (
            "vdisk create 64G, 16 384 extents",
            format!("{:.1} ms", summary.create_ms_16384),
        ),
        (
            "validate 10k x 10k, sweep",
            format!("{:.3} ms", summary.validate_ms_10k),
        ),
        (
            "validate 10k x 10k, all pairs",
            format!("{:.3} ms", summary.validate_naive_ms_10k),
        ),
        (
            "QEMU I/O, MiB/s",
            summary.qemu_io_mib_s.map_or_else(
                || "not measured".to_string(),
                |io| {
                    format!(
                        "{:.3} (1 extent), {:.3} (1024 extents)",
                        io.single_extent, io.many_extents
                    )
                },
            ),
        ),
        ("bytes per extent", summary.bytes_per_extent.to_string()),
        ("default table, bytes", summary.table_bytes.to_string()),
    ];
    for (name, value) in rows {
        let _ = writeln!(table, "{name:<34} {value}");
    }

    let translate_at = |pairs: &[(u32, f64)], extents: u32| {
        pairs
            .iter()
            .find(|pair| pair.0 == extents)
            .map_or(f64::NAN, |pair| pair.1)
    };
    let speed_up_4096 = translate_at(&summary.translate_linear_ns, 4096)
        / translate_at(&summary.translate_ns, 4096);
    let ratio_65536 = translate_at(&summary.translate_ns, 65536) / one_extent;
    let goals = [
        (
            format!("translation at 4096 extents >= 50x Xen 1.2's list walk: {speed_up_4096:.1}x"),
            speed_up_4096 >= 50.0,
        ),
        (
            format!("translation at 65536 extents within 3x of 1 extent: {ratio_65536:.1}x"),
            ratio_65536 <= 3.0,
        ),
        (
            format!(
                "16384-extent VD allocated in < 100 ms: {:.1} ms",
                summary.create_ms_16384
            ),
            summary.create_ms_16384 < 100.0,
        ),
        (
            format!(
                "validation 10k x 10k in < 10 ms: {:.3} ms",
                summary.validate_ms_10k
            ),
            summary.validate_ms_10k < 10.0,
        ),
        (
            format!("<= 32 bytes per extent: {}", summary.bytes_per_extent),
            summary.bytes_per_extent <= 32,
        ),
    ];
    let _ = writeln!(table, "\ngoals");
    for (goal, met) in goals {
        let _ = writeln!(table, "  {:<7} {goal}", verdict(met));
    }
    if let Some(io) = summary.qemu_io_mib_s {
        let _ = writeln!(
            table,
            "  {:<7} I/O through 1000+ extents >= 0.95x one extent: {:.2}x",
            verdict(io.ratio() >= 0.95),
            io.ratio()
        );
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape criterion 0.5 writes, abridged.
    const ESTIMATES: &str = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":17.9,"upper_bound":18.8},"point_estimate":18.3,"standard_error":0.2},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":18.2,"upper_bound":18.6},"point_estimate":18.414,"standard_error":0.1},"median_abs_dev":{"confidence_interval":{"confidence_level":0.95,"lower_bound":0.1,"upper_bound":0.4},"point_estimate":0.25,"standard_error":0.07},"slope":null,"std_dev":{"confidence_interval":{"confidence_level":0.95,"lower_bound":0.2,"upper_bound":0.9},"point_estimate":0.5,"standard_error":0.1}}"#;

    #[test]
    fn the_median_point_estimate_is_read_not_the_mean() {
        assert_eq!(parse_median(ESTIMATES), Some(18.414));
    }

    #[test]
    fn spacing_and_exponents_are_accepted() {
        let spaced = "{\n  \"median\": {\n    \"point_estimate\" : 1.5e6,\n    \"x\": 2\n  }\n}";
        assert_eq!(parse_median(spaced), Some(1.5e6));
    }

    #[test]
    fn a_file_without_a_median_is_refused() {
        assert_eq!(parse_median(r#"{"mean":{"point_estimate":3.0}}"#), None);
        assert_eq!(parse_median(r#"{"median":{"point_estimate":"x"}}"#), None);
        assert_eq!(parse_median(""), None);
    }

    #[test]
    fn the_summary_has_the_issue_keys_and_exact_footprint() {
        let summary = Summary {
            translate_ns: vec![(1, 18.25), (65536, 110.0)],
            translate_linear_ns: vec![(1, 6.0), (65536, 14603.5)],
            translate_slice_walk_ns: vec![(1, 5.0), (65536, 9000.0)],
            setextents_us: 336.15,
            create_ms_16384: 80.0,
            format_ms_65536: 150.125,
            validate_ms_10k: 0.9716,
            validate_naive_ms_10k: 112.0,
            qemu_io_mib_s: None,
            bytes_per_extent: hv_vbd::BYTES_PER_EXTENT,
            table_bytes: hv_vbd::DEFAULT_TABLE_BYTES,
        };
        let json = render_json(&summary);
        assert!(json.contains("\"translate_ns\": {\"1\": 18.25, \"65536\": 110}"));
        assert!(json.contains("\"translate_linear_ns\": {\"1\": 6, \"65536\": 14603.5}"));
        assert!(json.contains("\"validate_ms_10k\": 0.972,"));
        assert!(json.contains("\"qemu_io_mib_s\": null,"));
        assert!(json.contains("\"bytes_per_extent\": 26,"));
        let keys = [
            "translate_ns",
            "translate_linear_ns",
            "translate_slice_walk_ns",
            "setextents_us",
            "create_ms_16384",
            "format_ms_65536",
            "validate_ms_10k",
            "validate_naive_ms_10k",
            "qemu_io_mib_s",
            "bytes_per_extent",
            "table_bytes",
        ];
        for key in keys {
            assert_eq!(json.matches(&format!("\"{key}\":")).count(), 1, "{key}");
        }
        assert_eq!(json.lines().count(), keys.len() + 2);
    }

    #[test]
    fn medians_of_odd_and_even_runs() {
        assert_eq!(median_of(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_of(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
