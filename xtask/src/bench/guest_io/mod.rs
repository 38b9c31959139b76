//! The `guest_io` figures: fio in one real Linux guest (Debian's cloud kernel under TCG, two
//! vCPUs) with every backend attached at once, so one boot measures them all: vbd-backend
//! with a VBD of one extent and one of 1024, qemu-storage-daemon's vhost-user-blk export,
//! QEMU's own virtio-blk, and a second vbd-backend with two queues. The host starts each fio
//! job in turn ([`plan`]) and takes the serving process's CPU time across it from `/proc`;
//! then vbd-backend's resident memory ([`resident`]).

mod plan;
mod resident;
mod setup;

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use vbd_machine::guest::{
    fio_layer, process_resident_bytes, process_shared_resident_bytes, run_job, Guest,
    GuestArtefacts, GuestConfig, Initramfs,
};
use vbd_machine::{build_backend, target_directory};

pub use plan::{Target, Workload};
pub use resident::MANY_VBDS;
pub use setup::{
    hda, scattered_extents, single_extent, start_backend, write_image, xvda, BUILTIN_AIO,
    BUILTIN_CACHE, DISK_BYTES,
};

use plan::{schedule, Samples, Step, GROUPS};
use setup::Servers;

/// Linux gives a virtio-blk device at most one queue per CPU, so the two-queue figure needs
/// two; every other figure runs one fio job, on whichever CPU the guest picks.
pub const GUEST_CPUS: u32 = 2;

/// The CPU per request the issue compares: 4 KiB random reads, at both depths.
const RANDOM_READS: [Workload; 2] = [Workload::RandomReadDepth1, Workload::RandomReadDepth32];

/// Rounds and the length of each fio job. Seven full rounds put each of four targets in
/// each place of the rotation at least once; jobs of one figure spread by a third between
/// rounds on this shared machine, so the medians need every one of them.
fn settings(quick: bool) -> (usize, Duration) {
    if quick {
        (3, Duration::from_secs(1))
    } else {
        (7, Duration::from_secs(2))
    }
}

/// Everything the guest section measured.
#[derive(Clone, Debug, PartialEq)]
pub struct GuestIo {
    /// The median over the rounds of each workload on each target of its group.
    pub medians: BTreeMap<(Target, Workload), f64>,
    /// Microseconds of the serving process's CPU per request, per target with a server
    /// process of its own and per workload (totals over the rounds).
    pub cpu_us_per_io: BTreeMap<(Target, Workload), f64>,
    /// The same over 4 KiB random reads at depth 1 and 32: vbd-backend on [`Target::Vbd1`].
    pub backend_cpu_us_per_io: f64,
    /// And qemu-storage-daemon.
    pub qsd_cpu_us_per_io: f64,
    /// vbd-backend's resident MiB with one VBD attached and with [`MANY_VBDS`].
    pub backend_rss_mib: (f64, f64),
    /// The resident MiB of the backend that served the guest, after its last job.
    pub backend_rss_mib_serving: f64,
    /// How much of that is shared memory (`RssShmem`): the guest's pages it touched.
    pub backend_shmem_mib_serving: f64,
    pub rounds: usize,
    pub runtime: Duration,
}

impl GuestIo {
    /// One median (NaN where the schedule never ran the pair).
    pub fn median(&self, target: Target, workload: Workload) -> f64 {
        self.medians
            .get(&(target, workload))
            .copied()
            .unwrap_or(f64::NAN)
    }

    /// `--queues 2` against `--queues 1`, on two jobs at depth 16 each.
    pub fn queues_speedup(&self) -> f64 {
        self.median(Target::Vbd1TwoQueues, Workload::RandomReadDepth32TwoJobs)
            / self.median(Target::Vbd1, Workload::RandomReadDepth32TwoJobs)
    }
}

/// The guest's `/init` body: wait for and describe every disk, then every job in order.
fn guest_body(steps: &[Step], runtime: Duration) -> String {
    let mut body = String::new();
    for target in Target::ALL {
        let disk = target.device();
        body.push_str(&format!(
            "wait_for_block /dev/{disk}\n\
             result {disk}.sectors \"$(cat /sys/block/{disk}/size)\"\n\
             result {disk}.queues \"$(ls /sys/block/{disk}/mq | wc -l)\"\n"
        ));
    }
    body.push_str("result cpus \"$(grep -c ^processor /proc/cpuinfo)\"\n");
    for step in steps {
        let job = step.workload.job(&step.name(), runtime);
        body.push_str(&job.guest_command(&format!("/dev/{}", step.target.device())));
    }
    body
}

/// Every disk must be the same size, and each device have the queues it was given.
fn check_disks(guest: &mut Guest) -> Result<(), String> {
    for target in Target::ALL {
        let disk = target.device();
        let sectors = guest.wait_for_result(&format!("{disk}.sectors"))?;
        if sectors != (DISK_BYTES / 512).to_string() {
            return Err(format!(
                "{} ({disk}) has {sectors} sectors, not {}",
                target.key(),
                DISK_BYTES / 512
            ));
        }
        let expected = if target == Target::Vbd1TwoQueues {
            2
        } else {
            1
        };
        let queues = guest.wait_for_result(&format!("{disk}.queues"))?;
        if queues != expected.to_string() {
            return Err(format!(
                "{} ({disk}): the guest uses {queues} queues, not {expected}",
                target.key()
            ));
        }
    }
    let cpus = guest.wait_for_result("cpus")?;
    if cpus != GUEST_CPUS.to_string() {
        return Err(format!("the guest has {cpus} CPUs, not {GUEST_CPUS}"));
    }
    Ok(())
}

/// Boot the guest on every backend and measure.
pub fn measure(quick: bool) -> Result<GuestIo, String> {
    let (rounds, runtime) = settings(quick);
    let artefacts = GuestArtefacts::ensure()?;
    let layer = fio_layer()?;
    let binary = build_backend(true)?;
    let dir = target_directory().join("bench/guest");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let servers = Servers::start(&dir, &binary)?;

    let steps = schedule(rounds);
    let mut initramfs = Initramfs::guest(&artefacts, &guest_body(&steps, runtime));
    initramfs.layer(&layer);
    let initrd = dir.join("initramfs.cpio.gz");
    initramfs.write(&initrd)?;
    let mut config = GuestConfig::new(&dir, &artefacts, &initrd);
    config.cpus = GUEST_CPUS;
    config.control = true;
    config.disks = servers.disks.clone();
    // Boot, then each job with room for fio's start and report; QEMU dies after that.
    config.timeout =
        Duration::from_secs(60) + (runtime + Duration::from_secs(10)) * steps.len() as u32;
    let mut guest = Guest::start(&config)?;
    check_disks(&mut guest)?;

    let mut samples = Samples::default();
    for (number, step) in steps.iter().enumerate() {
        let job = step.workload.job(&step.name(), runtime);
        let run = run_job(&mut guest, &job, servers.server(step.target))?;
        eprintln!(
            "guest_io: job {}/{} {}: {:.1} {} (TCG guest)",
            number + 1,
            steps.len(),
            step.name(),
            step.workload.figure(&run.report),
            if step.workload.key().ends_with("iops") {
                "IOPS"
            } else {
                "MiB/s"
            }
        );
        samples.add(step, &run.report, run.server_cpu);
    }
    let serving = process_resident_bytes(servers.backend.pid())?;
    let serving_shared = process_shared_resident_bytes(servers.backend.pid())?;
    let mut medians = BTreeMap::new();
    let mut cpu_us_per_io = BTreeMap::new();
    for (workloads, targets) in GROUPS {
        for &workload in workloads {
            for &target in targets {
                medians.insert((target, workload), samples.median(target, workload)?);
                if servers.server(target).is_some() {
                    cpu_us_per_io.insert(
                        (target, workload),
                        samples.cpu_us_per_io(target, &[workload])?,
                    );
                }
            }
        }
    }
    let report = guest.finish()?;
    eprintln!(
        "guest_io: the guest ran {} jobs in {:.1} s",
        steps.len(),
        report.elapsed.as_secs_f64()
    );
    let devices = servers.devices.clone();
    servers.stop()?;
    let backend_rss_mib = resident::measure(&binary, &devices, &dir.join("backend-rss"))?;
    Ok(GuestIo {
        medians,
        cpu_us_per_io,
        backend_cpu_us_per_io: samples.cpu_us_per_io(Target::Vbd1, &RANDOM_READS)?,
        qsd_cpu_us_per_io: samples.cpu_us_per_io(Target::Qsd, &RANDOM_READS)?,
        backend_rss_mib,
        backend_rss_mib_serving: resident::mebibytes(serving),
        backend_shmem_mib_serving: resident::mebibytes(serving_shared),
        rounds,
        runtime,
    })
}
