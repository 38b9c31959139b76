//! The `backend_io` figures: the servers measured with no guest in the way. A host client
//! (`blkio-runner`, libblkio's vhost-user-blk driver, one queue) runs each job on
//! vbd-backend's VBDs and on qemu-storage-daemon in both its `aio` modes; fio with io_uring
//! runs the same jobs on a page-cached image from the host, for what the host itself gets
//! from the file. Every job on every target in one run, rounds rotated ([`plan`]), medians
//! kept, each server's CPU time per request from `/proc/PID/stat`. Then `--queues`
//! scaling: 4 KiB random reads, 32 in flight, from one client queue and from [`QUEUES`]
//! queues (one client thread each), on a backend with that many queues a VBD.

mod plan;
mod setup;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use vbd_machine::guest::process_cpu_time;
use vbd_machine::process::output;
use vbd_machine::{build_backend, build_blkio_runner, target_directory};

pub use plan::{Figures, Job, Target};

use plan::{schedule, Samples, Step};
use setup::{Servers, IDLE_VBDS, IMAGE_BYTES, QUEUES};

/// How long the idle backend's CPU time is measured over.
const IDLE_SECONDS: u64 = 5;

use super::table::Goal;

/// Rounds and each job's length, in whole seconds (the runner's unit).
fn settings(quick: bool) -> (usize, u64) {
    if quick {
        (3, 1)
    } else {
        (5, 2)
    }
}

/// Everything the section measured.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendIo {
    /// The medians over the rounds of each job on each target.
    pub medians: BTreeMap<(Target, Job), Figures>,
    /// vbd-backend's CPU over [`IDLE_SECONDS`] with [`IDLE_VBDS`] attached and no client,
    /// right after the jobs, in percent of one core.
    pub idle_cpu_percent: f64,
    /// 4 KiB random reads at depth 32 in all on `vbd_1`'s VBD of a backend with [`QUEUES`]
    /// queues: the medians from one client queue, and from [`QUEUES`].
    pub queues: QueueScaling,
    pub rounds: usize,
    pub seconds_per_job: u64,
}

/// The figures of one client queue and of several, on the same backend.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueScaling {
    pub one: Figures,
    pub many: Figures,
}

impl QueueScaling {
    /// The client queues used for the `many` figure, and the depth of each: 32 in all.
    const DEPTH_EACH: u32 = 32 / QUEUES as u32;

    pub fn speedup(&self) -> f64 {
        self.many.iops / self.one.iops
    }
}

/// `numerator` over `denominator`, NaN (never a met goal) where either was not measured.
fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> f64 {
    match (numerator, denominator) {
        (Some(numerator), Some(denominator)) => numerator / denominator,
        _ => f64::NAN,
    }
}

impl BackendIo {
    fn figures(&self, target: Target, job: Job) -> Option<&Figures> {
        self.medians.get(&(target, job))
    }

    /// The job's headline figure on `target`: IOPS, or MiB/s for 1 MiB blocks.
    pub fn rate(&self, target: Target, job: Job) -> Option<f64> {
        self.figures(target, job).map(|figures| figures.rate(job))
    }

    /// `target`'s headline figure over `baseline`'s, above 1 when `target` does better.
    pub fn speedup(&self, target: Target, baseline: Target, job: Job) -> f64 {
        ratio(self.rate(target, job), self.rate(baseline, job))
    }

    /// The `backend_io` object of `summary.json`.
    pub fn json(&self) -> Value {
        let number = super::summary::number;
        let mut object = serde_json::Map::new();
        for target in Target::ALL {
            let jobs: serde_json::Map<String, Value> = Job::ALL
                .into_iter()
                .filter_map(|job| {
                    let figures = self.figures(target, job)?;
                    Some((
                        job.key().to_owned(),
                        serde_json::json!({
                            "iops": number(figures.iops),
                            "mib_s": number(figures.mib_per_second),
                            "p50_us": number(figures.p50_us),
                            "p99_us": number(figures.p99_us),
                            "cpu_us_per_io": number(figures.cpu_us_per_io),
                        }),
                    ))
                })
                .collect();
            object.insert(target.key().to_owned(), Value::Object(jobs));
        }
        for baseline in [
            Target::QsdUring,
            Target::QsdThreads,
            Target::HostFio,
            Target::Vbd1,
        ] {
            let target = if baseline == Target::Vbd1 {
                Target::Vbd1024
            } else {
                Target::Vbd1
            };
            let ratios: serde_json::Map<String, Value> = Job::ALL
                .into_iter()
                .map(|job| {
                    (
                        job.key().to_owned(),
                        number(self.speedup(target, baseline, job)),
                    )
                })
                .collect();
            object.insert(
                format!("{}_over_{}", target.key(), baseline.key()),
                Value::Object(ratios),
            );
        }
        object.insert(
            format!("idle_cpu_percent_{IDLE_VBDS}_vbds"),
            number(self.idle_cpu_percent),
        );
        let number_of = |figures: &Figures| {
            serde_json::json!({
                "iops": number(figures.iops),
                "cpu_us_per_io": number(figures.cpu_us_per_io),
            })
        };
        object.insert(
            format!("randread_4k_qd32_queues_{QUEUES}"),
            serde_json::json!({
                "1": number_of(&self.queues.one),
                QUEUES.to_string(): number_of(&self.queues.many),
                "speedup": number(self.queues.speedup()),
            }),
        );
        object.insert(
            "run".to_owned(),
            serde_json::json!({
                "rounds": self.rounds,
                "seconds_per_job": self.seconds_per_job,
                "image_mib": IMAGE_BYTES >> 20,
                "queues": 1,
            }),
        );
        Value::Object(object)
    }

    /// The goals of issue 15's point 3 that this section measures, judged on this run.
    pub fn goals(&self) -> Vec<Goal> {
        let vbd = Target::Vbd1;
        let qd32 = Job::RandomReadDepth32;
        let read_over_qsd = self.speedup(vbd, Target::QsdUring, qd32);
        let read_over_host = self.speedup(vbd, Target::HostFio, qd32);
        let write_over_qsd = self.speedup(vbd, Target::QsdUring, Job::RandomWriteDepth32);
        let cpu = self
            .figures(vbd, qd32)
            .map_or(f64::NAN, |figures| figures.cpu_us_per_io);
        let p50 = |target| {
            self.figures(target, Job::RandomReadDepth1)
                .map(|figures| figures.p50_us)
        };
        let latency = ratio(p50(vbd), p50(Target::QsdUring));
        let sequential = Job::SequentialReadDepth8;
        let best_qsd = [Target::QsdUring, Target::QsdThreads]
            .into_iter()
            .filter_map(|target| self.rate(target, sequential))
            .reduce(f64::max);
        let sequential_over_qsd = ratio(self.rate(vbd, sequential), best_qsd);
        let (worst_job, scattered) = Job::ALL
            .into_iter()
            .map(|job| (job, self.speedup(Target::Vbd1024, vbd, job)))
            .min_by(|left, right| left.1.total_cmp(&right.1))
            .expect("five jobs");
        let goal = |text: String, met: bool| Goal { text, met };
        vec![
            goal(
                format!("backend_io: 4K reads QD32 >= 1.5x qsd_uring: {read_over_qsd:.2}x"),
                read_over_qsd >= 1.5,
            ),
            goal(
                format!("backend_io: 4K reads QD32 >= 1.0x host_fio: {read_over_host:.2}x"),
                read_over_host >= 1.0,
            ),
            goal(
                format!("backend_io: 4K writes QD32 >= 1.5x qsd_uring: {write_over_qsd:.2}x"),
                write_over_qsd >= 1.5,
            ),
            goal(
                format!("backend_io: server CPU per 4K read at QD32 <= 1.0 us: {cpu:.2} us"),
                cpu <= 1.0,
            ),
            goal(
                format!("backend_io: QD1 p50 latency <= 0.6x qsd_uring's: {latency:.2}x"),
                latency <= 0.6,
            ),
            goal(
                format!(
                    "backend_io: 1M reads QD8 >= 1.2x the better qsd: {sequential_over_qsd:.2}x"
                ),
                sequential_over_qsd >= 1.2,
            ),
            goal(
                format!(
                    "backend_io: vbd_1024 >= 0.95x vbd_1 on every job: lowest {scattered:.2}x ({})",
                    worst_job.key()
                ),
                scattered >= 0.95,
            ),
            goal(
                format!(
                    "backend_io: an idle backend with {IDLE_VBDS} VBDs uses < 1 % of a core: {:.2} %",
                    self.idle_cpu_percent
                ),
                self.idle_cpu_percent < 1.0,
            ),
        ]
    }

    /// The section's rows of the human table.
    pub fn render(&self, table: &mut String) {
        let _ = writeln!(
            table,
            "\nbackend I/O without a guest: libblkio from the host (one queue) on {} MiB \
             page-cached images, and fio io_uring on one; medians of {} rounds of {} s",
            IMAGE_BYTES >> 20,
            self.rounds,
            self.seconds_per_job
        );
        let _ = writeln!(
            table,
            "{:<12} {:>10} {:>9} {:>9} {:>11} {:>11} {:>10} {:>10} {:>10}",
            "target",
            "QD1 IOPS",
            "p50 us",
            "p99 us",
            "QD32 IOPS",
            "W QD32",
            "1M R MiB/s",
            "1M W MiB/s",
            "CPU us/IO"
        );
        for target in Target::ALL {
            let figure =
                |job, pick: fn(&Figures) -> f64| self.figures(target, job).map_or(f64::NAN, pick);
            let _ = writeln!(
                table,
                "{:<12} {:>10.0} {:>9.1} {:>9.1} {:>11.0} {:>11.0} {:>10.0} {:>10.0} {:>10.2}",
                target.key(),
                figure(Job::RandomReadDepth1, |figures| figures.iops),
                figure(Job::RandomReadDepth1, |figures| figures.p50_us),
                figure(Job::RandomReadDepth1, |figures| figures.p99_us),
                figure(Job::RandomReadDepth32, |figures| figures.iops),
                figure(Job::RandomWriteDepth32, |figures| figures.iops),
                figure(Job::SequentialReadDepth8, |figures| figures.mib_per_second),
                figure(Job::SequentialWriteDepth8, |figures| figures.mib_per_second),
                figure(Job::RandomReadDepth32, |figures| figures.cpu_us_per_io),
            );
        }
        let _ = writeln!(
            table,
            "CPU us/IO: the server's user and system time per 4K read at QD32 (host_fio: fio's \
             own, the kernel's copy included)\nvbd-backend idle with {IDLE_VBDS} VBDs, over \
             {IDLE_SECONDS} s: {:.2} % of a core",
            self.idle_cpu_percent
        );
        let _ = writeln!(
            table,
            "vbd-backend --queues {QUEUES}, 4K random reads, 32 in flight: one client queue \
             {:.0} IOPS ({:.2} us CPU/IO), {QUEUES} queues of {} {:.0} IOPS ({:.2} us): {:.2}x",
            self.queues.one.iops,
            self.queues.one.cpu_us_per_io,
            QueueScaling::DEPTH_EACH,
            self.queues.many.iops,
            self.queues.many.cpu_us_per_io,
            self.queues.speedup()
        );
    }
}

/// The runner's command for `job` on `socket`, its depth shared by `queues` client queues.
fn runner_command(runner: &Path, socket: &Path, job: Job, seconds: u64, queues: u32) -> Command {
    let mut command = Command::new(runner);
    command
        .arg(socket)
        .arg(job.pattern())
        .arg(job.block_bytes().to_string())
        .arg((job.depth() / queues).to_string())
        .arg(seconds.to_string())
        .arg(queues.to_string());
    command
}

/// fio's command for `job` on `image`: io_uring through the page cache, which it neither
/// drops before the job (`--invalidate=0`) nor bypasses.
fn fio_command(name: &str, image: &Path, job: Job, seconds: u64) -> Command {
    let mut command = Command::new("fio");
    command.args([
        format!("--name={name}"),
        format!("--filename={}", image.display()),
        format!("--size={IMAGE_BYTES}"),
        "--ioengine=io_uring".to_owned(),
        "--direct=0".to_owned(),
        "--invalidate=0".to_owned(),
        // Page-aligned buffers, as a guest's are: fio's default ones come from `malloc`,
        // 16 bytes past a page boundary, and the kernel copied 1 MiB reads into them at a
        // fifth of the rate (BENCHMARKS.md, issue 15), which is not the host at its best.
        "--iomem=mmap".to_owned(),
        format!("--rw={}", job.pattern()),
        format!("--bs={}", job.block_bytes()),
        format!("--iodepth={}", job.depth()),
        "--time_based".to_owned(),
        format!("--runtime={seconds}s"),
        // Submission to completion, as the runner measures: a buffered read io_uring
        // completes inline spends its time before submission returns, outside fio's `clat`.
        "--lat_percentiles=1".to_owned(),
        "--eta=never".to_owned(),
        "--output-format=json".to_owned(),
    ]);
    command
}

/// The runner's JSON: its figures, the CPU per request left for the caller to fill.
fn parse_runner(text: &str) -> Result<(Figures, u64), String> {
    let report: Value = serde_json::from_str(text.trim())
        .map_err(|error| format!("blkio-runner's JSON does not parse: {error}"))?;
    let field = |key: &str| {
        report[key]
            .as_f64()
            .ok_or_else(|| format!("blkio-runner's report has no number `{key}`"))
    };
    let ios = report["ios"]
        .as_u64()
        .ok_or("blkio-runner's report has no number `ios`")?;
    Ok((
        Figures {
            iops: field("iops")?,
            mib_per_second: field("mib_per_second")?,
            p50_us: field("p50_us")?,
            p99_us: field("p99_us")?,
            cpu_us_per_io: f64::NAN,
        },
        ios,
    ))
}

/// fio's JSON for one job of one direction: rates, total latency percentiles (`lat_ns`) and
/// its own CPU time per request.
fn parse_fio(text: &str, job: Job) -> Result<Figures, String> {
    let start = text.find('{').ok_or("fio's output holds no JSON")?;
    let document: Value = serde_json::from_str(&text[start..])
        .map_err(|error| format!("fio's JSON does not parse: {error}"))?;
    let report = &document["jobs"][0];
    let direction = &report[if job.pattern().contains("write") {
        "write"
    } else {
        "read"
    }];
    let number = |value: &Value, what: &str| {
        value
            .as_f64()
            .ok_or_else(|| format!("fio's report has no number {what}"))
    };
    let percentile = |key: &str| {
        number(
            &direction["lat_ns"]["percentile"][key],
            &format!("lat_ns percentile {key}"),
        )
        .map(|nanoseconds| nanoseconds / 1e3)
    };
    let ios = number(&direction["total_ios"], "total_ios")?;
    let runtime_ms = number(&direction["runtime"], "runtime")?;
    let cpu_percent =
        number(&report["usr_cpu"], "usr_cpu")? + number(&report["sys_cpu"], "sys_cpu")?;
    Ok(Figures {
        iops: number(&direction["iops"], "iops")?,
        mib_per_second: number(&direction["bw_bytes"], "bw_bytes")? / f64::from(1u32 << 20),
        p50_us: percentile("50.000000")?,
        p99_us: percentile("99.000000")?,
        cpu_us_per_io: cpu_percent / 100.0 * runtime_ms * 1e3 / ios,
    })
}

/// Run one step and return its figures.
fn run_step(
    servers: &Servers,
    runner: &Path,
    step: &Step,
    seconds: u64,
) -> Result<Figures, String> {
    let name = format!("r{}_{}_{}", step.round, step.target.key(), step.job.key());
    let (Some(socket), Some(pid)) = (servers.socket(step.target), servers.server(step.target))
    else {
        let printed = output(&mut fio_command(
            &name,
            &servers.host_image,
            step.job,
            seconds,
        ))?;
        return parse_fio(&String::from_utf8_lossy(&printed.stdout), step.job)
            .map_err(|error| format!("backend_io: {name}: {error}"));
    };
    run_runner(runner, (socket, pid), step.job, seconds, 1)
        .map_err(|error| format!("backend_io: {name}: {error}"))
}

/// Run `job` from `queues` client queues on `socket`, served by process `pid`, and return
/// its figures with the server's CPU per request.
fn run_runner(
    runner: &Path,
    (socket, pid): (&Path, u32),
    job: Job,
    seconds: u64,
    queues: u32,
) -> Result<Figures, String> {
    let before = process_cpu_time(pid)?;
    let printed = output(&mut runner_command(runner, socket, job, seconds, queues))?;
    let cpu = process_cpu_time(pid)? - before;
    let (mut figures, ios) = parse_runner(&String::from_utf8_lossy(&printed.stdout))?;
    figures.cpu_us_per_io = cpu.as_secs_f64() * 1e6 / ios as f64;
    Ok(figures)
}

/// `--queues` scaling: 4 KiB random reads at depth 32 from one client queue and from
/// [`QUEUES`], taking turns (the first swapped every round), medians of the rounds.
fn measure_queues(
    servers: &Servers,
    runner: &Path,
    rounds: usize,
    seconds: u64,
) -> Result<QueueScaling, String> {
    let job = Job::RandomReadDepth32;
    let mut one = Vec::new();
    let mut many = Vec::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [1, u32::from(QUEUES)]
        } else {
            [u32::from(QUEUES), 1]
        };
        for queues in order {
            servers.reload(Target::Vbd1)?;
            let figures = run_runner(runner, servers.queues_target(), job, seconds, queues)
                .map_err(|error| format!("backend_io: round {round}, {queues} queues: {error}"))?;
            eprintln!(
                "backend_io: round {round} {} from {queues} client queues on vbd-backend \
                 --queues {QUEUES}: {:.0} IOPS, {:.2} us CPU/IO",
                job.key(),
                figures.iops,
                figures.cpu_us_per_io
            );
            if queues == 1 { &mut one } else { &mut many }.push(figures);
        }
    }
    Ok(QueueScaling {
        one: Figures::median(&one),
        many: Figures::median(&many),
    })
}

/// Start every server and measure.
pub fn measure(quick: bool) -> Result<BackendIo, String> {
    let (rounds, seconds_per_job) = settings(quick);
    let backend = build_backend(true)?;
    let runner = build_blkio_runner()?;
    let dir = target_directory().join("bench/backend_io");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let servers = Servers::start(&dir, &backend)?;
    let steps = schedule(rounds, &Target::ALL);
    let mut samples = Samples::default();
    for (number, step) in steps.iter().enumerate() {
        servers.reload(step.target)?;
        let figures = run_step(&servers, &runner, step, seconds_per_job)?;
        eprintln!(
            "backend_io: {}/{} round {} {} on {}: {:.0} IOPS, {:.0} MiB/s, p50 {:.1} us, \
             {:.2} us CPU/IO",
            number + 1,
            steps.len(),
            step.round,
            step.job.key(),
            step.target.key(),
            figures.iops,
            figures.mib_per_second,
            figures.p50_us,
            figures.cpu_us_per_io
        );
        samples.add(step, figures);
    }
    let mut medians = BTreeMap::new();
    for target in Target::ALL {
        for job in Job::ALL {
            medians.insert((target, job), samples.median(target, job)?);
        }
    }
    let queues = measure_queues(&servers, &runner, rounds, seconds_per_job)?;
    let idle = Duration::from_secs(IDLE_SECONDS);
    let before = process_cpu_time(servers.backend_pid())?;
    std::thread::sleep(idle);
    let idle_cpu_percent = (process_cpu_time(servers.backend_pid())? - before).as_secs_f64()
        / idle.as_secs_f64()
        * 100.0;
    servers.stop()?;
    Ok(BackendIo {
        medians,
        idle_cpu_percent,
        queues,
        rounds,
        seconds_per_job,
    })
}

#[cfg(test)]
mod tests;
