//! What the `backend_io` section measures, in which order: each job on each target, the
//! targets taking turns and their order rotated every round, so a change in the machine's
//! load weighs on all alike; then the medians of the rounds, figure by figure.

use std::collections::BTreeMap;

/// A server of the section, or the host reading the file itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// vbd-backend: a VBD of one extent, a whole image.
    Vbd1,
    /// vbd-backend: a VBD of 1024 extents scattered over two images.
    Vbd1024,
    /// qemu-storage-daemon, `aio=io_uring`, the host page cache.
    QsdUring,
    /// qemu-storage-daemon, `aio=threads` (its default), the host page cache.
    QsdThreads,
    /// fio on the host, `ioengine=io_uring`, buffered, on an image alike: what the host
    /// itself gets from a page-cached file.
    HostFio,
}

impl Target {
    pub const ALL: [Target; 5] = [
        Target::Vbd1,
        Target::Vbd1024,
        Target::QsdUring,
        Target::QsdThreads,
        Target::HostFio,
    ];

    /// The key in `summary.json`.
    pub fn key(self) -> &'static str {
        match self {
            Target::Vbd1 => "vbd_1",
            Target::Vbd1024 => "vbd_1024",
            Target::QsdUring => "qsd_uring",
            Target::QsdThreads => "qsd_threads",
            Target::HostFio => "host_fio",
        }
    }
}

/// One measured job: a pattern, a block size and a queue depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Job {
    RandomReadDepth1,
    RandomReadDepth32,
    RandomWriteDepth32,
    SequentialReadDepth8,
    SequentialWriteDepth8,
}

impl Job {
    pub const ALL: [Job; 5] = [
        Job::RandomReadDepth1,
        Job::RandomReadDepth32,
        Job::RandomWriteDepth32,
        Job::SequentialReadDepth8,
        Job::SequentialWriteDepth8,
    ];

    /// The key in `summary.json`.
    pub fn key(self) -> &'static str {
        match self {
            Job::RandomReadDepth1 => "randread_4k_qd1",
            Job::RandomReadDepth32 => "randread_4k_qd32",
            Job::RandomWriteDepth32 => "randwrite_4k_qd32",
            Job::SequentialReadDepth8 => "read_1m_qd8",
            Job::SequentialWriteDepth8 => "write_1m_qd8",
        }
    }

    /// fio's name of the pattern, which the runner takes too.
    pub fn pattern(self) -> &'static str {
        match self {
            Job::RandomReadDepth1 | Job::RandomReadDepth32 => "randread",
            Job::RandomWriteDepth32 => "randwrite",
            Job::SequentialReadDepth8 => "read",
            Job::SequentialWriteDepth8 => "write",
        }
    }

    pub fn block_bytes(self) -> u64 {
        match self {
            Job::SequentialReadDepth8 | Job::SequentialWriteDepth8 => 1 << 20,
            _ => 4 << 10,
        }
    }

    pub fn depth(self) -> u32 {
        match self {
            Job::RandomReadDepth1 => 1,
            Job::RandomReadDepth32 | Job::RandomWriteDepth32 => 32,
            Job::SequentialReadDepth8 | Job::SequentialWriteDepth8 => 8,
        }
    }

    /// Whether the job's figure is bandwidth (MiB/s) rather than IOPS.
    pub fn bandwidth(self) -> bool {
        self.block_bytes() >= 1 << 20
    }
}

/// What one run of a job on a target measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figures {
    pub iops: f64,
    pub mib_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// The server's CPU time (user and system, every thread) per request; for
    /// [`Target::HostFio`], fio's own, kernel included.
    pub cpu_us_per_io: f64,
}

impl Figures {
    /// Each figure's median over `runs`.
    pub fn median(runs: &[Figures]) -> Figures {
        let median = |figure: fn(&Figures) -> f64| {
            let mut values: Vec<f64> = runs.iter().map(figure).collect();
            super::super::median_of(&mut values)
        };
        Figures {
            iops: median(|figures| figures.iops),
            mib_per_second: median(|figures| figures.mib_per_second),
            p50_us: median(|figures| figures.p50_us),
            p99_us: median(|figures| figures.p99_us),
            cpu_us_per_io: median(|figures| figures.cpu_us_per_io),
        }
    }

    /// The job's headline: MiB/s for 1 MiB jobs, IOPS otherwise.
    pub fn rate(&self, job: Job) -> f64 {
        if job.bandwidth() {
            self.mib_per_second
        } else {
            self.iops
        }
    }
}

/// One run of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub round: usize,
    pub target: Target,
    pub job: Job,
}

/// Every run, in order: round by round, job by job, each job on every target, the order of
/// the targets rotated by one every round.
pub fn schedule(rounds: usize, targets: &[Target]) -> Vec<Step> {
    let mut steps = Vec::new();
    for round in 0..rounds {
        for job in Job::ALL {
            for turn in 0..targets.len() {
                steps.push(Step {
                    round,
                    target: targets[(turn + round) % targets.len()],
                    job,
                });
            }
        }
    }
    steps
}

/// The figures of every round, collected as the runs finish.
#[derive(Debug, Default)]
pub struct Samples {
    runs: BTreeMap<(Target, Job), Vec<Figures>>,
}

impl Samples {
    pub fn add(&mut self, step: &Step, figures: Figures) {
        self.runs
            .entry((step.target, step.job))
            .or_default()
            .push(figures);
    }

    /// The medians of one job on one target.
    pub fn median(&self, target: Target, job: Job) -> Result<Figures, String> {
        self.runs
            .get(&(target, job))
            .map(|runs| Figures::median(runs))
            .ok_or_else(|| format!("backend_io: no {} measured on {}", job.key(), target.key()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_runs_once_a_round_and_the_first_target_rotates() {
        let steps = schedule(3, &Target::ALL);
        assert_eq!(steps.len(), 3 * 5 * 5);
        for round in 0..3 {
            for job in Job::ALL {
                let targets: Vec<Target> = steps
                    .iter()
                    .filter(|step| step.round == round && step.job == job)
                    .map(|step| step.target)
                    .collect();
                let mut expected = Target::ALL.to_vec();
                expected.rotate_left(round);
                assert_eq!(targets, expected, "round {round}, {}", job.key());
            }
        }
    }

    fn figures(value: f64) -> Figures {
        Figures {
            iops: value,
            mib_per_second: value / 2.0,
            p50_us: 100.0 - value,
            p99_us: value * 3.0,
            cpu_us_per_io: 1.0,
        }
    }

    #[test]
    fn medians_are_figure_by_figure_and_a_missing_one_is_named() {
        let mut samples = Samples::default();
        for (round, value) in [30.0, 10.0, 20.0].into_iter().enumerate() {
            let step = Step {
                round,
                target: Target::QsdUring,
                job: Job::RandomReadDepth1,
            };
            samples.add(&step, figures(value));
        }
        assert_eq!(
            samples.median(Target::QsdUring, Job::RandomReadDepth1),
            Ok(figures(20.0))
        );
        assert_eq!(
            samples.median(Target::Vbd1, Job::RandomReadDepth1),
            Err("backend_io: no randread_4k_qd1 measured on vbd_1".to_owned())
        );
    }

    #[test]
    fn large_blocks_are_judged_by_bandwidth_and_small_ones_by_requests() {
        let run = figures(40.0);
        assert_eq!(run.rate(Job::SequentialWriteDepth8), 20.0);
        assert_eq!(run.rate(Job::RandomWriteDepth32), 40.0);
        assert_eq!(
            (
                Job::SequentialReadDepth8.block_bytes(),
                Job::SequentialReadDepth8.depth()
            ),
            (1 << 20, 8)
        );
    }
}
