//! Every figure of one run, and `summary.json`: one top-level key a line, in a fixed order,
//! each value compact JSON with numbers to three decimals (finer than any of these
//! measurements).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::backend_io::BackendIo;
use super::guest_io::{GuestIo, Target, Workload};
use super::nbd::Nbd;
use super::pool::PoolBench;
use super::qemu_io::QemuIo;
use super::threads::{Rates, Threads};

/// One VBD size of the translation bench, nanoseconds per request (criterion medians).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TranslateRow {
    pub extents: u32,
    /// hv-vbd through a pinned VBD, as an I/O thread translates (`translate_ns`).
    pub pinned: f64,
    /// hv-vbd looking the VBD up by name, as the frame channel does.
    pub by_name: f64,
    /// Xen 1.2's walk of its linked extent list.
    pub list_walk: f64,
    /// The same walk over a contiguous slice: a stronger baseline than Xen 1.2 had.
    pub slice_walk: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub translate: Vec<TranslateRow>,
    pub setextents_us: f64,
    pub threads: Threads,
    pub create_ms_16384: f64,
    pub format_ms_65536: f64,
    pub validate_ms_10k: f64,
    pub validate_naive_ms_10k: f64,
    pub qemu_io: QemuIo,
    pub guest_io: GuestIo,
    pub nbd: Nbd,
    pub backend_io: BackendIo,
    pub pool: PoolBench,
    pub bytes_per_extent: usize,
    pub table_bytes: usize,
}

impl Summary {
    /// The row of `extents`, if measured.
    pub fn translation(&self, extents: u32) -> Option<&TranslateRow> {
        self.translate.iter().find(|row| row.extents == extents)
    }
}

/// A JSON number to three decimals; `null` for what is not finite (a ratio of nothing).
pub fn number(value: f64) -> Value {
    if value.is_finite() {
        Value::from((value * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

fn object<K: ToString>(pairs: impl IntoIterator<Item = (K, Value)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect::<Map<_, _>>(),
    )
}

/// `{"1": .., "2": .., "speedup": ..}`: translations per second on one reader and on two.
fn rates(rates: &Rates) -> Value {
    object([
        ("1", number(rates.one)),
        ("2", number(rates.two)),
        ("speedup", number(rates.speedup)),
    ])
}

/// `{"1": .., "16": ..}` of one column of the translation rows.
fn by_extents(rows: &[TranslateRow], column: impl Fn(&TranslateRow) -> f64) -> Value {
    object(rows.iter().map(|row| (row.extents, number(column(row)))))
}

/// `{label(workload): figure}` of every workload `map` holds for `target`.
fn per_workload(
    map: &BTreeMap<(Target, Workload), f64>,
    target: Target,
    label: impl Fn(Workload) -> String,
) -> Value {
    object(
        map.iter()
            .filter(|((of, _), _)| *of == target)
            .map(|((_, workload), value)| (label(*workload), number(*value))),
    )
}

pub fn render_json(summary: &Summary) -> String {
    let guest = &summary.guest_io;
    let main_targets = [
        Target::Vbd1,
        Target::Vbd1024,
        Target::Qsd,
        Target::QemuBuiltin,
    ];
    let main_medians: BTreeMap<(Target, Workload), f64> = guest
        .medians
        .iter()
        .filter(|((target, workload), _)| {
            main_targets.contains(target) && *workload != Workload::RandomReadDepth32TwoJobs
        })
        .map(|(key, value)| (*key, *value))
        .collect();
    let cpu_targets: Vec<Target> = Target::ALL
        .into_iter()
        .filter(|target| guest.cpu_us_per_io.keys().any(|(of, _)| of == target))
        .collect();
    let fields: Vec<(&str, Value)> = vec![
        (
            "translate_ns",
            by_extents(&summary.translate, |row| row.pinned),
        ),
        (
            "translate_by_name_ns",
            by_extents(&summary.translate, |row| row.by_name),
        ),
        (
            "translate_linear_ns",
            by_extents(&summary.translate, |row| row.list_walk),
        ),
        (
            "translate_slice_walk_ns",
            by_extents(&summary.translate, |row| row.slice_walk),
        ),
        ("setextents_us", number(summary.setextents_us)),
        ("translate_threads", rates(&summary.threads.spinning)),
        (
            "translate_threads_writer_yields",
            rates(&summary.threads.yielding),
        ),
        (
            "translate_threads_no_writer",
            rates(&summary.threads.no_writer),
        ),
        (
            "writer_changes",
            Value::from(summary.threads.writer_changes),
        ),
        (
            "writer_wait_us_median",
            number(summary.threads.writer_wait_us_median),
        ),
        (
            "writer_wait_us_max",
            number(summary.threads.writer_wait_us_max),
        ),
        (
            "yielding_writer_wait_us_max",
            number(summary.threads.yielding_writer_wait_us_max),
        ),
        ("create_ms_16384", number(summary.create_ms_16384)),
        ("format_ms_65536", number(summary.format_ms_65536)),
        ("validate_ms_10k", number(summary.validate_ms_10k)),
        (
            "validate_naive_ms_10k",
            number(summary.validate_naive_ms_10k),
        ),
        (
            "qemu_io_mib_s",
            object([
                ("single_extent", number(summary.qemu_io.single_extent)),
                ("many_extents", number(summary.qemu_io.many_extents)),
            ]),
        ),
        (
            "guest_io",
            object(main_targets.map(|target| {
                (
                    target.key(),
                    per_workload(&main_medians, target, Workload::key),
                )
            })),
        ),
        ("backend_cpu_us_per_io", number(guest.backend_cpu_us_per_io)),
        ("qsd_cpu_us_per_io", number(guest.qsd_cpu_us_per_io)),
        (
            "backend_rss_mib",
            object([
                ("1".to_owned(), number(guest.backend_rss_mib.0)),
                (
                    super::guest_io::MANY_VBDS.to_string(),
                    number(guest.backend_rss_mib.1),
                ),
            ]),
        ),
        (
            "backend_rss_mib_serving",
            number(guest.backend_rss_mib_serving),
        ),
        (
            "backend_shmem_mib_serving",
            number(guest.backend_shmem_mib_serving),
        ),
        (
            "guest_io_queues",
            object([
                (
                    "1",
                    number(guest.median(Target::Vbd1, Workload::RandomReadDepth32TwoJobs)),
                ),
                (
                    "2",
                    number(guest.median(Target::Vbd1TwoQueues, Workload::RandomReadDepth32TwoJobs)),
                ),
                ("speedup", number(guest.queues_speedup())),
            ]),
        ),
        (
            "guest_io_cpu_us_per_io",
            object(cpu_targets.into_iter().map(|target| {
                let name = |workload: Workload| workload.name().to_owned();
                (
                    target.key(),
                    per_workload(&guest.cpu_us_per_io, target, name),
                )
            })),
        ),
        (
            "guest_io_run",
            object([
                ("rounds", Value::from(guest.rounds)),
                ("seconds_per_job", number(guest.runtime.as_secs_f64())),
                ("guest_cpus", Value::from(super::guest_io::GUEST_CPUS)),
            ]),
        ),
        ("nbd", summary.nbd.json()),
        ("backend_io", summary.backend_io.json()),
        ("pool", summary.pool.json()),
        ("bytes_per_extent", Value::from(summary.bytes_per_extent)),
        ("table_bytes", Value::from(summary.table_bytes)),
    ];
    let lines: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("  \"{key}\": {value}"))
        .collect();
    format!("{{\n{}\n}}\n", lines.join(",\n"))
}
