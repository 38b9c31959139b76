//! The `backend_io` object, the goals' verdicts, the commands and the parsers, on a
//! made-up run.

use super::*;
use vbd_machine::process::display;

/// A run where every target does the same on every job except where a test says: 100 000
/// IOPS, 1000 MiB/s, p50 20 us, p99 50 us, 2 us of CPU per request.
fn figures() -> Figures {
    Figures {
        iops: 100_000.0,
        mib_per_second: 1000.0,
        p50_us: 20.0,
        p99_us: 50.0,
        cpu_us_per_io: 2.0,
    }
}

fn run() -> BackendIo {
    let mut medians = BTreeMap::new();
    for target in Target::ALL {
        for job in Job::ALL {
            medians.insert((target, job), figures());
        }
    }
    BackendIo {
        medians,
        idle_cpu_percent: 0.4,
        queues: QueueScaling {
            one: figures(),
            many: Figures {
                iops: 150_000.0,
                cpu_us_per_io: 1.5,
                ..figures()
            },
        },
        rounds: 5,
        seconds_per_job: 2,
    }
}

fn set(run: &mut BackendIo, target: Target, job: Job, change: impl Fn(&mut Figures)) {
    change(run.medians.get_mut(&(target, job)).unwrap());
}

fn verdicts(run: &BackendIo) -> Vec<(String, bool)> {
    run.goals()
        .into_iter()
        .map(|goal| (goal.text, goal.met))
        .collect()
}

#[test]
fn the_summary_object_has_every_figure_per_target_and_the_ratios() {
    let mut run = run();
    set(
        &mut run,
        Target::QsdUring,
        Job::RandomReadDepth32,
        |figures| figures.iops = 50_000.0,
    );
    set(
        &mut run,
        Target::Vbd1024,
        Job::SequentialWriteDepth8,
        |figures| figures.mib_per_second = 900.0,
    );
    let json = run.json();
    assert_eq!(json["vbd_1"]["randread_4k_qd1"]["p50_us"], 20.0);
    assert_eq!(json["qsd_uring"]["randread_4k_qd32"]["iops"], 50_000.0);
    assert_eq!(json["host_fio"]["write_1m_qd8"]["mib_s"], 1000.0);
    assert_eq!(
        json["qsd_threads"]["randwrite_4k_qd32"]["cpu_us_per_io"],
        2.0
    );
    assert_eq!(json["vbd_1_over_qsd_uring"]["randread_4k_qd32"], 2.0);
    assert_eq!(json["vbd_1_over_host_fio"]["randread_4k_qd32"], 1.0);
    assert_eq!(json["vbd_1024_over_vbd_1"]["write_1m_qd8"], 0.9);
    assert_eq!(json["idle_cpu_percent_64_vbds"], 0.4);
    let queues = &json["randread_4k_qd32_queues_2"];
    assert_eq!(queues["1"]["iops"], 100_000.0);
    assert_eq!(queues["2"]["iops"], 150_000.0);
    assert_eq!(queues["2"]["cpu_us_per_io"], 1.5);
    assert_eq!(queues["speedup"], 1.5);
    assert_eq!(json["run"]["rounds"], 5);
    assert_eq!(json["run"]["image_mib"], 128);
    for target in Target::ALL {
        assert_eq!(json[target.key()].as_object().unwrap().len(), 5);
    }
}

#[test]
fn every_goal_is_judged_on_its_ratio() {
    let mut run = run();
    for target in [Target::Vbd1, Target::Vbd1024] {
        set(&mut run, target, Job::RandomReadDepth32, |figures| {
            figures.iops = 160_000.0;
            figures.cpu_us_per_io = 0.9;
        });
    }
    set(&mut run, Target::Vbd1, Job::RandomReadDepth1, |figures| {
        figures.p50_us = 13.0
    });
    set(
        &mut run,
        Target::QsdThreads,
        Job::SequentialReadDepth8,
        |figures| figures.mib_per_second = 1250.0,
    );
    set(
        &mut run,
        Target::Vbd1024,
        Job::RandomWriteDepth32,
        |figures| figures.iops = 90_000.0,
    );
    assert_eq!(
        verdicts(&run),
        [
            ("backend_io: 4K reads QD32 >= 1.5x qsd_uring: 1.60x".to_owned(), true),
            ("backend_io: 4K reads QD32 >= 1.0x host_fio: 1.60x".to_owned(), true),
            ("backend_io: 4K writes QD32 >= 1.5x qsd_uring: 1.00x".to_owned(), false),
            ("backend_io: server CPU per 4K read at QD32 <= 1.0 us: 0.90 us".to_owned(), true),
            ("backend_io: QD1 p50 latency <= 0.6x qsd_uring's: 0.65x".to_owned(), false),
            ("backend_io: 1M reads QD8 >= 1.2x the better qsd: 0.80x".to_owned(), false),
            (
                "backend_io: vbd_1024 >= 0.95x vbd_1 on every job: lowest 0.90x (randwrite_4k_qd32)"
                    .to_owned(),
                false
            ),
            (
                "backend_io: an idle backend with 64 VBDs uses < 1 % of a core: 0.40 %".to_owned(),
                true
            ),
        ]
    );
}

#[test]
fn a_figure_not_measured_misses_its_goal() {
    let mut run = run();
    run.medians
        .remove(&(Target::HostFio, Job::RandomReadDepth32));
    assert_eq!(
        verdicts(&run)[1],
        (
            "backend_io: 4K reads QD32 >= 1.0x host_fio: NaNx".to_owned(),
            false
        )
    );
    assert_eq!(
        run.json()["vbd_1_over_host_fio"]["randread_4k_qd32"],
        Value::Null
    );
}

#[test]
fn the_runner_and_fio_get_the_same_job() {
    let job = Job::SequentialWriteDepth8;
    assert_eq!(
        display(&runner_command(
            Path::new("/t/blkio-runner"),
            Path::new("/b/vbd.sock"),
            job,
            2,
            1
        )),
        "/t/blkio-runner /b/vbd.sock write 1048576 8 2 1"
    );
    assert_eq!(
        display(&runner_command(
            Path::new("/t/blkio-runner"),
            Path::new("/b/vbd.sock"),
            Job::RandomReadDepth32,
            2,
            2
        )),
        "/t/blkio-runner /b/vbd.sock randread 4096 16 2 2",
        "the depth is shared by the queues"
    );
    assert_eq!(
        display(&fio_command(
            "r0_host_fio_write_1m_qd8",
            Path::new("/b/host.img"),
            job,
            2
        )),
        "fio --name=r0_host_fio_write_1m_qd8 --filename=/b/host.img --size=134217728 \
         --ioengine=io_uring --direct=0 --invalidate=0 --iomem=mmap --rw=write --bs=1048576 \
         --iodepth=8 --time_based --runtime=2s --lat_percentiles=1 --eta=never --output-format=json"
    );
}

#[test]
fn the_runner_report_is_read_and_a_missing_field_is_named() {
    let text = r#"{"iops":50000.0,"ios":100000,"mib_per_second":195.3125,"p50_us":18.5,"p99_us":40.0,"seconds":2.0}"#;
    let (figures, ios) = parse_runner(text).unwrap();
    assert_eq!(ios, 100_000);
    assert_eq!(
        (figures.iops, figures.p50_us, figures.p99_us),
        (50_000.0, 18.5, 40.0)
    );
    assert_eq!(
        parse_runner(r#"{"ios":1}"#),
        Err("blkio-runner's report has no number `iops`".to_owned())
    );
}

/// The shape of fio 3.33's JSON with `--lat_percentiles=1`, trimmed to what is read. The
/// completion latencies (`clat_ns`) are not what is read: a buffered read that io_uring
/// completes inline has all its time before submission returns, so its `clat` is ~0.1 us.
const FIO_REPORT: &str = r#"note first{"jobs":[{"error":0,"usr_cpu":20.0,"sys_cpu":30.0,
  "read":{"iops":250000.0,"bw_bytes":1024000000,"total_ios":500000,"runtime":2000,
    "clat_ns":{"percentile":{"50.000000":100,"99.000000":200}},
    "lat_ns":{"percentile":{"50.000000":3000,"99.000000":9000}}},
  "write":{"iops":0.0,"bw_bytes":0,"total_ios":0,"runtime":0,"clat_ns":{},"lat_ns":{}}}]}"#;

#[test]
fn fio_report_gives_rates_latencies_and_its_cpu_per_request() {
    let figures = parse_fio(FIO_REPORT, Job::RandomReadDepth32).unwrap();
    assert_eq!(
        figures,
        Figures {
            iops: 250_000.0,
            mib_per_second: 1_024_000_000.0 / f64::from(1u32 << 20),
            p50_us: 3.0,
            p99_us: 9.0,
            // Half a core for 2 s over 500 000 requests.
            cpu_us_per_io: 2.0,
        }
    );
    assert_eq!(
        parse_fio(FIO_REPORT, Job::RandomWriteDepth32),
        Err("fio's report has no number lat_ns percentile 50.000000".to_owned())
    );
}
