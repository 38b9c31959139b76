//! What the `nbd` section measures, in which order: each NBD server and each workload (fio's
//! `nbd` engine, nbdcopy), the servers taking turns and their order rotated every round, so
//! a change in the machine's load weighs on all alike; then the medians of the rounds.

use std::collections::BTreeMap;

/// An NBD server of the section: the two that export the same two image files, and the
/// floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Server {
    /// vbd-backend: dom0's VBDs of one extent each, a whole image file.
    Backend,
    /// qemu-storage-daemon's NBD export of each image file.
    Qsd,
    /// nbdkit's `null` plugin, which throws every write away: the client's cost with a
    /// server that does no I/O at all. Measured on the workloads that only write.
    Floor,
}

impl Server {
    pub const ALL: [Server; 3] = [Server::Backend, Server::Qsd, Server::Floor];
    /// The servers that export the images.
    pub const EXPORTS: [Server; 2] = [Server::Backend, Server::Qsd];

    /// The key in `summary.json`.
    pub fn key(self) -> &'static str {
        match self {
            Server::Backend => "vbd",
            Server::Qsd => "qsd",
            Server::Floor => "floor",
        }
    }

    /// Whether the server runs `workload`: the floor only where it could stand for a real
    /// server, the workloads that write and never read.
    pub fn runs(self, workload: Workload) -> bool {
        self != Server::Floor || workload.only_writes()
    }
}

/// Which virtual disk a workload uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disk {
    /// Every byte written.
    Full,
    /// Data in a few places, holes elsewhere.
    Sparse,
}

/// One measured operation on one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    RandomReadDepth1,
    RandomReadDepth32,
    RandomWriteDepth1,
    RandomWriteDepth32,
    CopyFullToNull,
    CopySparseToNull,
    CopyFullFromFile,
    CopySparseFromFile,
}

/// What a figure is: requests a second (more is better) or milliseconds (less is better).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Iops,
    Milliseconds,
}

impl Workload {
    pub const ALL: [Workload; 8] = [
        Workload::RandomReadDepth1,
        Workload::RandomReadDepth32,
        Workload::RandomWriteDepth1,
        Workload::RandomWriteDepth32,
        Workload::CopyFullToNull,
        Workload::CopySparseToNull,
        Workload::CopyFullFromFile,
        Workload::CopySparseFromFile,
    ];

    /// The figure's key in `summary.json`: what it is of, and its unit.
    pub fn key(self) -> &'static str {
        match self {
            Workload::RandomReadDepth1 => "randread_qd1_iops",
            Workload::RandomReadDepth32 => "randread_qd32_iops",
            Workload::RandomWriteDepth1 => "randwrite_qd1_iops",
            Workload::RandomWriteDepth32 => "randwrite_qd32_iops",
            Workload::CopyFullToNull => "copy_full_to_null_ms",
            Workload::CopySparseToNull => "copy_sparse_to_null_ms",
            Workload::CopyFullFromFile => "copy_full_from_file_ms",
            Workload::CopySparseFromFile => "copy_sparse_from_file_ms",
        }
    }

    pub fn unit(self) -> Unit {
        match self {
            Workload::RandomReadDepth1
            | Workload::RandomReadDepth32
            | Workload::RandomWriteDepth1
            | Workload::RandomWriteDepth32 => Unit::Iops,
            _ => Unit::Milliseconds,
        }
    }

    /// Whether the workload sends the server writes (and write-zeroes) and no reads.
    pub fn only_writes(self) -> bool {
        matches!(
            self,
            Workload::RandomWriteDepth1
                | Workload::RandomWriteDepth32
                | Workload::CopyFullFromFile
                | Workload::CopySparseFromFile
        )
    }

    /// The disk the workload runs on: fio's random I/O on the full one.
    pub fn disk(self) -> Disk {
        match self {
            Workload::CopySparseToNull | Workload::CopySparseFromFile => Disk::Sparse,
            _ => Disk::Full,
        }
    }

    /// How much better vbd-backend's figure is than qemu-storage-daemon's: above 1 is
    /// better whatever the unit (IOPS over IOPS, or time over time the other way round).
    pub fn speedup(self, backend: f64, qsd: f64) -> f64 {
        match self.unit() {
            Unit::Iops => backend / qsd,
            Unit::Milliseconds => qsd / backend,
        }
    }
}

/// One operation of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub round: usize,
    pub server: Server,
    pub workload: Workload,
}

/// Every operation, in order: round by round, workload by workload, each workload on every
/// server that runs it, the order rotated every round.
pub fn schedule(rounds: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    for round in 0..rounds {
        for workload in Workload::ALL {
            for turn in 0..Server::ALL.len() {
                let server = Server::ALL[(turn + round) % Server::ALL.len()];
                if server.runs(workload) {
                    steps.push(Step {
                        round,
                        server,
                        workload,
                    });
                }
            }
        }
    }
    steps
}

/// The figures of every round, collected as the operations finish.
#[derive(Debug, Default)]
pub struct Samples {
    figures: BTreeMap<(Server, Workload), Vec<f64>>,
}

impl Samples {
    pub fn add(&mut self, step: &Step, figure: f64) {
        self.figures
            .entry((step.server, step.workload))
            .or_default()
            .push(figure);
    }

    /// The median over the rounds of one workload on one server.
    pub fn median(&self, server: Server, workload: Workload) -> Result<f64, String> {
        let mut values = self
            .figures
            .get(&(server, workload))
            .cloned()
            .ok_or_else(|| format!("nbd: no {} measured on {}", workload.key(), server.key()))?;
        Ok(super::super::median_of(&mut values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_runs_once_a_round_the_order_rotates_and_the_floor_only_writes() {
        use Server::{Backend, Floor, Qsd};
        let steps = schedule(3);
        assert_eq!(steps.len(), 3 * (8 * 2 + 4));
        for round in 0..3 {
            for workload in Workload::ALL {
                let servers: Vec<Server> = steps
                    .iter()
                    .filter(|step| step.round == round && step.workload == workload)
                    .map(|step| step.server)
                    .collect();
                let all = [
                    [Backend, Qsd, Floor],
                    [Qsd, Floor, Backend],
                    [Floor, Backend, Qsd],
                ];
                let expected: Vec<Server> = all[round]
                    .into_iter()
                    .filter(|server| workload.only_writes() || *server != Floor)
                    .collect();
                assert_eq!(servers, expected, "round {round}, {}", workload.key());
            }
        }
    }

    #[test]
    fn a_speedup_is_above_one_when_the_backend_does_better_in_either_unit() {
        assert_eq!(Workload::RandomReadDepth32.speedup(1200.0, 1000.0), 1.2);
        assert_eq!(Workload::CopyFullToNull.speedup(100.0, 150.0), 1.5);
        assert_eq!(Workload::CopySparseFromFile.speedup(200.0, 100.0), 0.5);
    }

    #[test]
    fn medians_are_per_server_and_workload_and_a_missing_one_is_named() {
        let mut samples = Samples::default();
        for (round, figure) in [30.0, 10.0, 20.0].into_iter().enumerate() {
            let step = Step {
                round,
                server: Server::Qsd,
                workload: Workload::CopyFullToNull,
            };
            samples.add(&step, figure);
        }
        assert_eq!(
            samples.median(Server::Qsd, Workload::CopyFullToNull),
            Ok(20.0)
        );
        assert_eq!(
            samples.median(Server::Backend, Workload::CopyFullToNull),
            Err("nbd: no copy_full_to_null_ms measured on vbd".to_owned())
        );
    }
}
