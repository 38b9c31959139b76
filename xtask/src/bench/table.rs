//! The human table of `cargo xtask bench`: every figure beside its baseline, then each goal
//! of the issues with its verdict.

use std::fmt::Write as _;

use super::guest_io::{Target, Workload, BUILTIN_AIO, BUILTIN_CACHE, GUEST_CPUS, MANY_VBDS};
use super::summary::Summary;

/// The workloads of the guest table, in its column order.
const WORKLOADS: [Workload; 4] = [
    Workload::SequentialRead,
    Workload::SequentialWrite,
    Workload::RandomReadDepth1,
    Workload::RandomReadDepth32,
];

/// One goal: what it asks, with this run's figure, and whether the figure meets it.
#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    pub text: String,
    pub met: bool,
}

fn goal(text: String, met: bool) -> Goal {
    Goal { text, met }
}

/// Every goal of the issues, judged on `summary`. A figure that is not a number (say, a
/// ratio of a figure that was not measured) never meets its goal.
pub fn goals(summary: &Summary) -> Vec<Goal> {
    let column = |extents: u32, pick: fn(&super::summary::TranslateRow) -> f64| {
        summary.translation(extents).map_or(f64::NAN, pick)
    };
    let pinned = |extents| column(extents, |row| row.pinned);
    let slice = |extents| column(extents, |row| row.slice_walk);
    let list = |extents| column(extents, |row| row.list_walk);
    let at_most = |value: f64, bound: f64| value <= bound;
    let at_least = |value: f64, bound: f64| value >= bound;
    let guest = &summary.guest_io;
    let backend_over_qsd =
        |workload| guest.median(Target::Vbd1, workload) / guest.median(Target::Qsd, workload);
    let (worst_workload, worst_extents_ratio) = WORKLOADS
        .iter()
        .map(|&workload| {
            (
                workload,
                guest.median(Target::Vbd1024, workload) / guest.median(Target::Vbd1, workload),
            )
        })
        .min_by(|left, right| left.1.total_cmp(&right.1))
        .expect("four workloads");
    let one_vs_slice = pinned(1) / slice(1);
    let spread_65536 = pinned(65536) / pinned(1);
    let over_slice_4096 = slice(4096) / pinned(4096);
    let over_list_4096 = list(4096) / pinned(4096);
    let threads = &summary.threads;
    let qd1 = backend_over_qsd(Workload::RandomReadDepth1);
    let qd32 = backend_over_qsd(Workload::RandomReadDepth32);
    let read = backend_over_qsd(Workload::SequentialRead);
    let write = backend_over_qsd(Workload::SequentialWrite);
    let cpu = guest.backend_cpu_us_per_io / guest.qsd_cpu_us_per_io;
    let queues = guest.queues_speedup();
    let resident = guest.backend_rss_mib.1;
    let mut goals = vec![
        goal(
            format!("translation at 1 extent within 2x of the slice walk: {one_vs_slice:.2}x"),
            at_most(one_vs_slice, 2.0),
        ),
        goal(
            format!("translation at 65536 extents within 3x of 1 extent: {spread_65536:.2}x"),
            at_most(spread_65536, 3.0),
        ),
        goal(
            format!("translation at 4096 extents >= 30x the slice walk: {over_slice_4096:.1}x"),
            at_least(over_slice_4096, 30.0),
        ),
        goal(
            format!("translation at 4096 extents >= 50x Xen 1.2's list walk: {over_list_4096:.1}x"),
            at_least(over_list_4096, 50.0),
        ),
        goal(
            format!(
                "2 threads translating >= 1.8x 1, a writer replacing 1024 extents every ms: \
                 {:.2}x (writer's worst wait {:.0} us)",
                threads.spinning.speedup, threads.writer_wait_us_max
            ),
            at_least(threads.spinning.speedup, 1.8),
        ),
        goal(
            format!("set-extents of 1024 into 10 000 in < 100 us: {:.1} us", summary.setextents_us),
            summary.setextents_us < 100.0,
        ),
        goal(
            format!("16384-extent VD allocated in < 100 ms: {:.1} ms", summary.create_ms_16384),
            summary.create_ms_16384 < 100.0,
        ),
        goal(
            format!("validation 10k x 10k in < 10 ms: {:.3} ms", summary.validate_ms_10k),
            summary.validate_ms_10k < 10.0,
        ),
        goal(
            format!("<= 32 bytes per extent: {}", summary.bytes_per_extent),
            summary.bytes_per_extent <= 32,
        ),
        goal(
            format!(
                "test hypervisor I/O through 1000+ extents >= 0.95x one extent: {:.2}x",
                summary.qemu_io.ratio()
            ),
            at_least(summary.qemu_io.ratio(), 0.95),
        ),
        goal(
            format!("guest: vbd-backend >= 1.2x qemu-storage-daemon at QD1: {qd1:.2}x"),
            at_least(qd1, 1.2),
        ),
        goal(
            format!("guest: vbd-backend >= 1.2x qemu-storage-daemon on 1 MiB reads: {read:.2}x"),
            at_least(read, 1.2),
        ),
        goal(
            format!("guest: vbd-backend >= 1.2x qemu-storage-daemon on 1 MiB writes: {write:.2}x"),
            at_least(write, 1.2),
        ),
        goal(
            format!("guest: vbd-backend >= 1.0x qemu-storage-daemon at QD32: {qd32:.2}x"),
            at_least(qd32, 1.0),
        ),
        goal(
            format!(
                "host CPU per 4 KiB read <= 1/3 of qemu-storage-daemon's: {:.1} against {:.1} us ({cpu:.2}x)",
                guest.backend_cpu_us_per_io, guest.qsd_cpu_us_per_io
            ),
            at_most(cpu, 1.0 / 3.0),
        ),
        goal(
            format!(
                "guest: 1024 extents >= 0.95x one extent on every figure: lowest {worst_extents_ratio:.2}x ({})",
                worst_workload.name()
            ),
            at_least(worst_extents_ratio, 0.95),
        ),
        goal(
            format!("guest: --queues 2 >= 1.5x --queues 1 on 4 KiB reads at depth 32: {queues:.2}x"),
            at_least(queues, 1.5),
        ),
        goal(
            format!("vbd-backend under 64 MiB resident with {MANY_VBDS} VBDs: {resident:.1} MiB"),
            resident < 64.0,
        ),
    ];
    goals.extend(summary.nbd.goals());
    goals.extend(summary.backend_io.goals());
    goals.extend(summary.pool.goals());
    goals
}

fn render_translation(table: &mut String, summary: &Summary) {
    let one_extent = summary.translation(1).map_or(f64::NAN, |row| row.pinned);
    let _ = writeln!(table, "\ntranslation, ns per request (median)");
    let _ = writeln!(
        table,
        "{:>8} {:>8} {:>8} {:>12} {:>9} {:>11} {:>9} {:>8}",
        "extents",
        "pinned",
        "by name",
        "Xen 1.2 list",
        "speed-up",
        "slice walk",
        "speed-up",
        "vs 1 ext"
    );
    for row in &summary.translate {
        let _ = writeln!(
            table,
            "{:>8} {:>8.1} {:>8.1} {:>12.1} {:>8.1}x {:>11.1} {:>8.1}x {:>7.2}x",
            row.extents,
            row.pinned,
            row.by_name,
            row.list_walk,
            row.list_walk / row.pinned,
            row.slice_walk,
            row.slice_walk / row.pinned,
            row.pinned / one_extent
        );
    }
    let threads = &summary.threads;
    let _ = writeln!(
        table,
        "\ntranslation on threads, M/s (medians of rounds)  1 thread  2 threads  speed-up"
    );
    for (name, rates) in [
        ("writer spinning on its fences", &threads.spinning),
        ("writer yielding while it waits", &threads.yielding),
        ("no writer", &threads.no_writer),
    ] {
        let _ = writeln!(
            table,
            "{name:<47} {:>9.1} {:>10.1} {:>8.2}x",
            rates.one / 1e6,
            rates.two / 1e6,
            rates.speedup
        );
    }
    let _ = writeln!(
        table,
        "the writer replaces 1024 extents every ms; its wait over {} changes: median {:.0} us, \
         max {:.0} us (max {:.0} us yielding)",
        threads.writer_changes,
        threads.writer_wait_us_median,
        threads.writer_wait_us_max,
        threads.yielding_writer_wait_us_max
    );
}

fn render_guest(table: &mut String, summary: &Summary) {
    let guest = &summary.guest_io;
    let _ = writeln!(
        table,
        "\nguest I/O: fio in a Linux guest under TCG ({GUEST_CPUS} vCPUs, O_DIRECT, io_uring), \
         median of {} rounds of {} s\n(TCG, not the backends, bounds every guest figure here)",
        guest.rounds,
        guest.runtime.as_secs()
    );
    let _ = writeln!(
        table,
        "{:<14} {:>14} {:>15} {:>12} {:>13}",
        "target", "1M read MiB/s", "1M write MiB/s", "4K QD1 IOPS", "4K QD32 IOPS"
    );
    for target in [
        Target::Vbd1,
        Target::Vbd1024,
        Target::Qsd,
        Target::QemuBuiltin,
    ] {
        let figures = WORKLOADS.map(|workload| guest.median(target, workload));
        let _ = writeln!(
            table,
            "{:<14} {:>14.1} {:>15.1} {:>12.0} {:>13.0}",
            target.key(),
            figures[0],
            figures[1],
            figures[2],
            figures[3]
        );
    }
    let _ = writeln!(
        table,
        "qemu_builtin is QEMU's virtio-blk, cache={} aio={}",
        BUILTIN_CACHE.as_str(),
        BUILTIN_AIO.as_str()
    );
    let _ = writeln!(
        table,
        "\nserver CPU per I/O, us {:>9} {:>9} {:>9} {:>9}",
        "1M read", "1M write", "4K QD1", "4K QD32"
    );
    for target in [Target::Vbd1, Target::Vbd1024, Target::Qsd] {
        let cost = WORKLOADS.map(|workload| {
            guest
                .cpu_us_per_io
                .get(&(target, workload))
                .copied()
                .unwrap_or(f64::NAN)
        });
        let _ = writeln!(
            table,
            "{:<22} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            target.key(),
            cost[0],
            cost[1],
            cost[2],
            cost[3]
        );
    }
    let _ = writeln!(
        table,
        "4K reads at both depths: vbd-backend {:.1} us, qemu-storage-daemon {:.1} us",
        guest.backend_cpu_us_per_io, guest.qsd_cpu_us_per_io
    );
    let two_jobs = Workload::RandomReadDepth32TwoJobs;
    let _ = writeln!(
        table,
        "\nvbd-backend --queues, 4K random reads from 2 fio jobs of QD16: --queues 1 {:.0} IOPS, \
         --queues 2 {:.0} IOPS: {:.2}x",
        guest.median(Target::Vbd1, two_jobs),
        guest.median(Target::Vbd1TwoQueues, two_jobs),
        guest.queues_speedup()
    );
    let _ = writeln!(
        table,
        "vbd-backend resident: {:.1} MiB with 1 VBD, {:.1} MiB with {MANY_VBDS}; {:.1} MiB after \
         serving this guest, {:.1} MiB of it the guest's memory (RssShmem)",
        guest.backend_rss_mib.0,
        guest.backend_rss_mib.1,
        guest.backend_rss_mib_serving,
        guest.backend_shmem_mib_serving
    );
}

pub fn render_table(summary: &Summary) -> String {
    let mut table = String::new();
    render_translation(&mut table, summary);
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
            "test hypervisor I/O, MiB/s",
            format!(
                "{:.3} (1 extent), {:.3} (1024 extents)",
                summary.qemu_io.single_extent, summary.qemu_io.many_extents
            ),
        ),
        ("bytes per extent", summary.bytes_per_extent.to_string()),
        ("default table, bytes", summary.table_bytes.to_string()),
    ];
    for (name, value) in rows {
        let _ = writeln!(table, "{name:<34} {value}");
    }
    render_guest(&mut table, summary);
    summary.nbd.render(&mut table);
    summary.backend_io.render(&mut table);
    summary.pool.render(&mut table);
    render_goals(&mut table, &goals(summary));
    table
}

/// Each goal with its verdict, under a `goals` heading.
pub fn render_goals(table: &mut String, goals: &[Goal]) {
    let _ = writeln!(table, "\ngoals");
    for goal in goals {
        let verdict = if goal.met { "met" } else { "MISSED" };
        let _ = writeln!(table, "  {verdict:<7} {}", goal.text);
    }
}
