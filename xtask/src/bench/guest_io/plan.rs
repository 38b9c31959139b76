//! What the guest runs, in which order: each backend ("target") and each fio workload, the
//! targets taking turns job by job and their order rotated every round, so a change in the
//! machine's load weighs on every target alike; then the medians of the rounds.

use std::collections::BTreeMap;
use std::time::Duration;

use vbd_machine::guest::{Engine, FioJob, FioReport};

/// A disk of the guest and what serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// vbd-backend (`--queues 1`), a VBD of one extent.
    Vbd1,
    /// vbd-backend (`--queues 1`), a VBD of 1024 extents scattered over two disks.
    Vbd1024,
    /// qemu-storage-daemon's vhost-user-blk export of a raw file.
    Qsd,
    /// QEMU's own virtio-blk on a raw file.
    QemuBuiltin,
    /// A second vbd-backend, `--queues 2`, on the same extent as [`Target::Vbd1`].
    Vbd1TwoQueues,
}

impl Target {
    /// Every target, in the order of the guest's disks: `vda`, `vdb`, ...
    pub const ALL: [Target; 5] = [
        Target::Vbd1,
        Target::Vbd1024,
        Target::Qsd,
        Target::QemuBuiltin,
        Target::Vbd1TwoQueues,
    ];

    /// The key in `summary.json` (and in job names).
    pub fn key(self) -> &'static str {
        match self {
            Target::Vbd1 => "vbd_1",
            Target::Vbd1024 => "vbd_1024",
            Target::Qsd => "qsd",
            Target::QemuBuiltin => "qemu_builtin",
            Target::Vbd1TwoQueues => "vbd_1_queues_2",
        }
    }

    /// The guest's block device.
    pub fn device(self) -> String {
        let index = Target::ALL
            .iter()
            .position(|&target| target == self)
            .expect("every target is in ALL");
        format!("vd{}", char::from(b'a' + index as u8))
    }
}

/// One fio workload on one target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    SequentialRead,
    SequentialWrite,
    RandomReadDepth1,
    RandomReadDepth32,
    /// 4 KiB random reads, 32 in flight from two fio jobs (16 each) on the guest's two CPUs,
    /// so that a two-queue device gets both queues used (Linux maps a queue to each CPU).
    RandomReadDepth32TwoJobs,
}

impl Workload {
    /// The workload's name: what the figure is of, without its unit.
    pub fn name(self) -> &'static str {
        match self {
            Workload::SequentialRead => "seq_read",
            Workload::SequentialWrite => "seq_write",
            Workload::RandomReadDepth1 => "randread_qd1",
            Workload::RandomReadDepth32 => "randread_qd32",
            Workload::RandomReadDepth32TwoJobs => "randread_qd32_2jobs",
        }
    }

    /// The figure's key in `summary.json`: the name and the unit.
    pub fn key(self) -> String {
        let unit = match self {
            Workload::SequentialRead | Workload::SequentialWrite => "mib_s",
            _ => "iops",
        };
        format!("{}_{unit}", self.name())
    }

    /// The fio job, submitting through io_uring: under TCG the guest's CPU is the bound, and
    /// io_uring spends least of it per request.
    pub fn job(self, name: &str, runtime: Duration) -> FioJob {
        let mut job = match self {
            Workload::SequentialRead => FioJob::sequential_read(name, runtime),
            Workload::SequentialWrite => FioJob::sequential_write(name, runtime),
            Workload::RandomReadDepth1 => FioJob::random_read(name, 1, runtime),
            Workload::RandomReadDepth32 => FioJob::random_read(name, 32, runtime),
            Workload::RandomReadDepth32TwoJobs => {
                let mut job = FioJob::random_read(name, 16, runtime);
                job.jobs = 2;
                job
            }
        };
        job.engine = Engine::IoUring;
        job
    }

    /// The figure of a report: MiB/s for sequential transfers, IOPS for random reads.
    pub fn figure(self, report: &FioReport) -> f64 {
        match self {
            Workload::SequentialRead => report.read.mib_per_second(),
            Workload::SequentialWrite => report.write.mib_per_second(),
            _ => report.read.iops,
        }
    }
}

/// Which workloads run on which targets: each workload on every target of its group.
pub const GROUPS: [(&[Workload], &[Target]); 2] = [
    (
        &[
            Workload::SequentialRead,
            Workload::SequentialWrite,
            Workload::RandomReadDepth1,
            Workload::RandomReadDepth32,
        ],
        &[
            Target::Vbd1,
            Target::Vbd1024,
            Target::Qsd,
            Target::QemuBuiltin,
        ],
    ),
    (
        &[Workload::RandomReadDepth32TwoJobs],
        &[Target::Vbd1, Target::Vbd1TwoQueues],
    ),
];

/// One job of the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub round: usize,
    pub target: Target,
    pub workload: Workload,
}

impl Step {
    /// The fio job's name, unique in the schedule (it is also its result key).
    pub fn name(&self) -> String {
        format!(
            "r{}_{}_{}",
            self.round,
            self.target.key(),
            self.workload.name()
        )
    }
}

/// Every job, in order: round by round, group by group, workload by workload, the group's
/// targets rotated by one place each round.
pub fn schedule(rounds: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    for round in 0..rounds {
        for (workloads, targets) in GROUPS {
            for &workload in workloads {
                for turn in 0..targets.len() {
                    steps.push(Step {
                        round,
                        target: targets[(turn + round) % targets.len()],
                        workload,
                    });
                }
            }
        }
    }
    steps
}

/// What every round measured, collected as the jobs finish.
#[derive(Debug, Default)]
pub struct Samples {
    figures: BTreeMap<(Target, Workload), Vec<f64>>,
    /// The server's CPU time and the requests completed, summed over the rounds.
    cpu: BTreeMap<(Target, Workload), (Duration, u64)>,
}

impl Samples {
    pub fn add(&mut self, step: &Step, report: &FioReport, server_cpu: Option<Duration>) {
        let key = (step.target, step.workload);
        self.figures
            .entry(key)
            .or_default()
            .push(step.workload.figure(report));
        if let Some(cpu) = server_cpu {
            let total = self.cpu.entry(key).or_default();
            total.0 += cpu;
            total.1 += report.total_ios();
        }
    }

    /// The median over the rounds of one workload on one target.
    pub fn median(&self, target: Target, workload: Workload) -> Result<f64, String> {
        let mut values = self
            .figures
            .get(&(target, workload))
            .cloned()
            .ok_or_else(|| format!("no {} measured on {}", workload.key(), target.key()))?;
        Ok(super::super::median_of(&mut values))
    }

    /// Microseconds of the server's CPU per request over `workloads` on `target`: all their
    /// rounds' CPU time over all their requests. A ratio of totals rather than a median,
    /// because `/proc` counts CPU time in 10 ms ticks, coarse beside one job's share.
    pub fn cpu_us_per_io(&self, target: Target, workloads: &[Workload]) -> Result<f64, String> {
        let (mut cpu, mut ios) = (Duration::ZERO, 0u64);
        for workload in workloads {
            let (time, count) = self.cpu.get(&(target, *workload)).ok_or_else(|| {
                format!(
                    "no server CPU time taken for {} on {}",
                    workload.key(),
                    target.key()
                )
            })?;
            cpu += *time;
            ios += count;
        }
        if ios == 0 {
            return Err(format!("no requests completed on {}", target.key()));
        }
        Ok(cpu.as_secs_f64() * 1e6 / ios as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_runs_once_a_round_and_the_order_rotates() {
        let steps = schedule(3);
        assert_eq!(steps.len(), 3 * (4 * 4 + 2));
        let names: std::collections::BTreeSet<String> = steps.iter().map(Step::name).collect();
        assert_eq!(names.len(), steps.len(), "job names are unique");
        let first_of_round = |round: usize| {
            steps
                .iter()
                .find(|step| step.round == round)
                .map(|step| step.target)
        };
        assert_eq!(first_of_round(0), Some(Target::Vbd1));
        assert_eq!(first_of_round(1), Some(Target::Vbd1024));
        assert_eq!(first_of_round(2), Some(Target::Qsd));
        assert_eq!(steps[0].name(), "r0_vbd_1_seq_read");
        assert_eq!(Workload::RandomReadDepth1.key(), "randread_qd1_iops");
        assert_eq!(Workload::SequentialWrite.key(), "seq_write_mib_s");
        let queues: Vec<Target> = steps
            .iter()
            .filter(|step| step.workload == Workload::RandomReadDepth32TwoJobs)
            .map(|step| step.target)
            .collect();
        assert_eq!(
            queues,
            [
                Target::Vbd1,
                Target::Vbd1TwoQueues,
                Target::Vbd1TwoQueues,
                Target::Vbd1,
                Target::Vbd1,
                Target::Vbd1TwoQueues
            ]
        );
    }

    #[test]
    fn targets_are_the_guest_disks_in_order() {
        let devices: Vec<String> = Target::ALL.iter().map(|target| target.device()).collect();
        assert_eq!(devices, ["vda", "vdb", "vdc", "vdd", "vde"]);
    }

    #[test]
    fn two_job_depth_32_is_two_fio_jobs_of_16() {
        let job = Workload::RandomReadDepth32TwoJobs.job("x", Duration::from_secs(1));
        assert_eq!((job.jobs, job.iodepth, job.block_size), (2, 16, 4096));
        assert_eq!(job.engine, Engine::IoUring);
    }
}
