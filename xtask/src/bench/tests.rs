//! The summary's keys and the goals' verdicts, on a made-up run.

use std::collections::BTreeMap;
use std::time::Duration;

use super::backend_io::{BackendIo, Figures, QueueScaling};
use super::guest_io::{GuestIo, Target, Workload};
use super::nbd::Nbd;
use super::pool::PoolBench;
use super::qemu_io::QemuIo;
use super::summary::{render_json, Summary, TranslateRow};
use super::table::{goals, render_table};
use super::threads::{Rates, Threads};
use super::{median_of, Options, Section};

fn summary() -> Summary {
    let not_measured = Figures {
        iops: f64::NAN,
        mib_per_second: f64::NAN,
        p50_us: f64::NAN,
        p99_us: f64::NAN,
        cpu_us_per_io: f64::NAN,
    };
    let mut medians = BTreeMap::new();
    let mut cpu_us_per_io = BTreeMap::new();
    for (index, target) in [
        Target::Vbd1,
        Target::Vbd1024,
        Target::Qsd,
        Target::QemuBuiltin,
    ]
    .into_iter()
    .enumerate()
    {
        for (offset, workload) in [
            Workload::SequentialRead,
            Workload::SequentialWrite,
            Workload::RandomReadDepth1,
            Workload::RandomReadDepth32,
        ]
        .into_iter()
        .enumerate()
        {
            medians.insert((target, workload), 1000.0 + (index * 10 + offset) as f64);
            if target != Target::QemuBuiltin {
                cpu_us_per_io.insert((target, workload), 20.0 + offset as f64);
            }
        }
    }
    medians.insert((Target::Vbd1, Workload::RandomReadDepth32TwoJobs), 4000.0);
    medians.insert(
        (Target::Vbd1TwoQueues, Workload::RandomReadDepth32TwoJobs),
        6500.0,
    );
    Summary {
        translate: vec![
            TranslateRow {
                extents: 1,
                pinned: 9.0,
                by_name: 12.5,
                list_walk: 6.0,
                slice_walk: 5.0,
            },
            TranslateRow {
                extents: 4096,
                pinned: 20.0,
                by_name: 24.0,
                list_walk: 3400.0,
                slice_walk: 610.0,
            },
            TranslateRow {
                extents: 65536,
                pinned: 30.0,
                by_name: 33.0,
                list_walk: 56000.0,
                slice_walk: 10000.0,
            },
        ],
        setextents_us: 110.25,
        threads: Threads {
            spinning: Rates {
                one: 3.0e7,
                two: 5.7e7,
                speedup: 1.9,
            },
            yielding: Rates {
                one: 3.0e7,
                two: 4.5e7,
                speedup: 1.5,
            },
            no_writer: Rates {
                one: 3.2e7,
                two: 6.0e7,
                speedup: 1.875,
            },
            writer_changes: 1000,
            writer_wait_us_median: 105.0,
            writer_wait_us_max: 950.5,
            yielding_writer_wait_us_max: 700.0,
        },
        create_ms_16384: 80.0,
        format_ms_65536: 150.125,
        validate_ms_10k: 0.9716,
        validate_naive_ms_10k: 112.0,
        qemu_io: QemuIo {
            single_extent: 0.3,
            many_extents: 0.31,
        },
        guest_io: GuestIo {
            medians,
            cpu_us_per_io,
            backend_cpu_us_per_io: 20.5,
            qsd_cpu_us_per_io: 60.0,
            backend_rss_mib: (5.5, 7.25),
            backend_rss_mib_serving: 9.0,
            backend_shmem_mib_serving: 6.0,
            rounds: 3,
            runtime: Duration::from_secs(1),
        },
        // Nothing measured: the `nbd` section's own tests fill it in.
        nbd: Nbd {
            medians: BTreeMap::new(),
            sparse_allocated_bytes: BTreeMap::new(),
            rounds: 3,
            fio_runtime: Duration::from_secs(1),
        },
        // Nothing measured: the `backend_io` section's own tests fill it in.
        backend_io: BackendIo {
            medians: BTreeMap::new(),
            idle_cpu_percent: f64::NAN,
            queues: QueueScaling {
                one: not_measured,
                many: not_measured,
            },
            rounds: 3,
            seconds_per_job: 1,
        },
        // Nothing measured: the `pool` section is measured against real processes only.
        pool: PoolBench::unmeasured(),
        bytes_per_extent: hv_vbd::BYTES_PER_EXTENT,
        table_bytes: hv_vbd::DEFAULT_TABLE_BYTES,
    }
}

#[test]
fn the_summary_has_the_issue_keys_one_a_line() {
    let json = render_json(&summary());
    let document: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(document["translate_ns"]["1"], 9.0);
    assert_eq!(document["translate_by_name_ns"]["4096"], 24.0);
    assert_eq!(document["translate_threads"]["speedup"], 1.9);
    assert_eq!(document["translate_threads_writer_yields"]["2"], 4.5e7);
    assert_eq!(document["translate_threads_no_writer"]["speedup"], 1.875);
    assert_eq!(document["yielding_writer_wait_us_max"], 700.0);
    assert_eq!(document["writer_wait_us_max"], 950.5);
    assert_eq!(document["setextents_us"], 110.25);
    assert_eq!(document["validate_ms_10k"], 0.972);
    assert_eq!(
        document["guest_io"]["vbd_1024"]["randread_qd1_iops"],
        1012.0
    );
    assert_eq!(
        document["guest_io"]["qemu_builtin"]["seq_write_mib_s"],
        1031.0
    );
    assert_eq!(
        document["guest_io"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["qemu_builtin", "qsd", "vbd_1", "vbd_1024"]
    );
    for target in ["qemu_builtin", "qsd", "vbd_1", "vbd_1024"] {
        assert_eq!(
            document["guest_io"][target]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            [
                "randread_qd1_iops",
                "randread_qd32_iops",
                "seq_read_mib_s",
                "seq_write_mib_s"
            ],
            "{target}"
        );
    }
    assert_eq!(document["backend_cpu_us_per_io"], 20.5);
    assert_eq!(document["qsd_cpu_us_per_io"], 60.0);
    assert_eq!(document["backend_rss_mib"]["1"], 5.5);
    assert_eq!(document["backend_rss_mib"]["64"], 7.25);
    assert_eq!(document["guest_io_queues"]["speedup"], 1.625);
    assert_eq!(
        document["guest_io_cpu_us_per_io"]["qsd"]["randread_qd1"],
        22.0
    );
    assert!(document["guest_io_cpu_us_per_io"]
        .get("qemu_builtin")
        .is_none());
    assert_eq!(document["nbd"]["run"]["rounds"], 3);
    assert_eq!(document["backend_io"]["run"]["seconds_per_job"], 1);
    // Exact: hv-vbd packs an extent's place in one word, so an extent costs 26 bytes.
    assert_eq!(document["bytes_per_extent"], 26);
    let keys = document.as_object().unwrap().len();
    assert_eq!(json.lines().count(), keys + 2, "one key a line");
}

#[test]
fn every_goal_is_judged_on_its_figure() {
    let verdicts: Vec<(String, bool)> = goals(&summary())
        .into_iter()
        .map(|goal| (goal.text, goal.met))
        .collect();
    let verdict = |start: &str| {
        let found: Vec<&(String, bool)> = verdicts
            .iter()
            .filter(|(text, _)| text.starts_with(start))
            .collect();
        assert_eq!(found.len(), 1, "{start}: {verdicts:?}");
        found[0].1
    };
    assert!(verdict(
        "translation at 1 extent within 2x of the slice walk: 1.80x"
    ));
    assert!(!verdict(
        "translation at 65536 extents within 3x of 1 extent: 3.33x"
    ));
    assert!(verdict(
        "translation at 4096 extents >= 30x the slice walk: 30.5x"
    ));
    assert!(verdict("2 threads translating >= 1.8x 1"));
    assert!(!verdict(
        "set-extents of 1024 into 10 000 in < 100 us: 110.2 us"
    ));
    assert!(!verdict(
        "guest: vbd-backend >= 1.2x qemu-storage-daemon at QD1: 0.98x"
    ));
    assert!(!verdict(
        "guest: vbd-backend >= 1.0x qemu-storage-daemon at QD32: 0.98x"
    ));
    assert!(!verdict(
        "host CPU per 4 KiB read <= 1/3 of qemu-storage-daemon's: 20.5 against 60.0 us (0.34x)"
    ));
    assert!(verdict(
        "guest: 1024 extents >= 0.95x one extent on every figure: lowest 1.01x (randread_qd32)"
    ));
    assert!(verdict(
        "guest: --queues 2 >= 1.5x --queues 1 on 4 KiB reads at depth 32: 1.62x"
    ));
    assert!(verdict(
        "vbd-backend under 64 MiB resident with 64 VBDs: 7.2 MiB"
    ));
    assert!(!verdict(
        "nbd: vbd-backend >= 1.2x qemu-storage-daemon on copy_full_to_null_ms: NaNx"
    ));
    assert!(!verdict(
        "backend_io: 4K reads QD32 >= 1.5x qsd_uring: NaNx"
    ));
    let table = render_table(&summary());
    assert!(table.contains("qemu_builtin is QEMU's virtio-blk, cache=writeback aio=threads"));
    assert!(table.contains("  MISSED  set-extents of 1024 into 10 000 in < 100 us"));
}

#[test]
fn only_runs_one_section_and_an_unknown_one_is_named() {
    let parse = |words: &[&str]| {
        Options::parse(
            &words
                .iter()
                .map(|word| word.to_string())
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        parse(&["--only", "backend_io", "--quick"]),
        Ok(Options {
            quick: true,
            only: Some(Section::BackendIo)
        })
    );
    assert_eq!(
        parse(&["--only", "nbd"]),
        Ok(Options {
            quick: false,
            only: Some(Section::Nbd)
        })
    );
    assert_eq!(
        parse(&["--only", "pool"]),
        Ok(Options {
            quick: false,
            only: Some(Section::Pool)
        })
    );
    assert_eq!(
        parse(&["--only", "guest"]),
        Err("bench: `--only guest`: the sections are nbd, backend_io and pool".to_owned())
    );
    assert_eq!(
        parse(&["--only"]),
        Err("bench: `--only` needs a section: nbd, backend_io or pool".to_owned())
    );
}

#[test]
fn medians_of_odd_and_even_runs() {
    assert_eq!(median_of(&mut [3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median_of(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
}
