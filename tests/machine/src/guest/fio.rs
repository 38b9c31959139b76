//! fio in the guest: a job as the shell lines an initramfs guest runs (it waits for the host,
//! then its JSON report, newlines dropped, becomes one `RESULT fio.NAME=...` line), the host's
//! side of running it ([`run_job`], which also takes a server's CPU time across it), and that
//! report read back. The guest's initramfs needs [`super::fio_layer`], its configuration
//! [`super::GuestConfig::control`].

use std::time::Duration;

use serde_json::Value;

use super::cpu::process_cpu_time;
use super::runner::Guest;

/// How fio submits I/O in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Libaio,
    IoUring,
}

/// fio's `rw=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    SequentialRead,
    SequentialWrite,
    RandomRead,
}

/// One fio job on a guest block device, `O_DIRECT`, run for a fixed time. fio's progress line
/// is off (`--eta=never`): it has no newline and would run into the next console line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FioJob {
    /// The job's name, also its result key: `fio.NAME`.
    pub name: String,
    pub pattern: Pattern,
    pub block_size: u32,
    pub iodepth: u32,
    /// fio processes, each with `iodepth` in flight and reported together (`--numjobs`,
    /// `--group_reporting`): more than one spreads the I/O over the guest's CPUs, and so
    /// over a multi-queue device's queues.
    pub jobs: u32,
    pub engine: Engine,
    pub runtime: Duration,
}

impl FioJob {
    /// Sequential reads in 1 MiB blocks, one at a time.
    pub fn sequential_read(name: &str, runtime: Duration) -> FioJob {
        FioJob::new(name, Pattern::SequentialRead, 1 << 20, 1, runtime)
    }

    /// Sequential writes in 1 MiB blocks, one at a time.
    pub fn sequential_write(name: &str, runtime: Duration) -> FioJob {
        FioJob::new(name, Pattern::SequentialWrite, 1 << 20, 1, runtime)
    }

    /// Random 4 KiB reads with `iodepth` in flight.
    pub fn random_read(name: &str, iodepth: u32, runtime: Duration) -> FioJob {
        FioJob::new(name, Pattern::RandomRead, 4096, iodepth, runtime)
    }

    fn new(
        name: &str,
        pattern: Pattern,
        block_size: u32,
        iodepth: u32,
        runtime: Duration,
    ) -> FioJob {
        FioJob {
            name: name.to_owned(),
            pattern,
            block_size,
            iodepth,
            jobs: 1,
            engine: Engine::Libaio,
            runtime,
        }
    }

    /// The result key the guest reports this job under.
    pub fn key(&self) -> String {
        format!("fio.{}", self.name)
    }

    /// The guest's shell lines: wait for [`run_job`] to start the job, run it on `device` and
    /// report its JSON.
    pub fn guest_command(&self, device: &str) -> String {
        let pattern = match self.pattern {
            Pattern::SequentialRead => "read",
            Pattern::SequentialWrite => "write",
            Pattern::RandomRead => "randread",
        };
        let engine = match self.engine {
            Engine::Libaio => "libaio",
            Engine::IoUring => "io_uring",
        };
        let output = format!("/tmp/fio-{}.json", self.name);
        let jobs = if self.jobs > 1 {
            format!(" --numjobs={} --group_reporting", self.jobs)
        } else {
            String::new()
        };
        format!(
            "wait_for_host {key}\n\
             fio --name={name} --filename={device} --rw={pattern} --bs={block_size} \
             --iodepth={iodepth}{jobs} --ioengine={engine} --direct=1 --time_based \
             --runtime={runtime}ms --eta=never --output-format=json --output={output}\n\
             result {key} \"$(tr -d '\\n' < {output})\"\n",
            name = self.name,
            block_size = self.block_size,
            iodepth = self.iodepth,
            runtime = self.runtime.as_millis().max(1),
            key = self.key(),
        )
    }
}

/// What [`run_job`] measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FioRun {
    pub report: FioReport,
    /// CPU time the server process spent from the job's start to its report, when asked.
    pub server_cpu: Option<Duration>,
}

/// Start `job` in a guest whose script holds its [`FioJob::guest_command`], wait for its report,
/// and take the CPU time process `server` (a block backend) spent meanwhile. Start each job
/// in the order the script has them.
pub fn run_job(guest: &mut Guest, job: &FioJob, server: Option<u32>) -> Result<FioRun, String> {
    let before = server.map(process_cpu_time).transpose()?;
    guest.release(&job.key())?;
    let json = guest.wait_for_result(&job.key())?;
    let server_cpu = match (server, before) {
        (Some(pid), Some(before)) => Some(process_cpu_time(pid)?.saturating_sub(before)),
        _ => None,
    };
    Ok(FioRun {
        report: FioReport::parse(&json).map_err(|error| format!("{}: {error}", job.key()))?,
        server_cpu,
    })
}

/// One direction (read or write) of a job's report.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FioDirection {
    pub io_bytes: u64,
    pub bandwidth_bytes_per_second: u64,
    pub iops: f64,
    pub total_ios: u64,
    pub runtime: Duration,
}

impl FioDirection {
    pub fn mib_per_second(&self) -> f64 {
        self.bandwidth_bytes_per_second as f64 / f64::from(1u32 << 20)
    }

    fn parse(job: &Value, direction: &str) -> Result<FioDirection, String> {
        let number = |field: &str| {
            job[direction][field]
                .as_f64()
                .ok_or_else(|| format!("fio's report has no number {direction}.{field}"))
        };
        Ok(FioDirection {
            io_bytes: number("io_bytes")? as u64,
            bandwidth_bytes_per_second: number("bw_bytes")? as u64,
            iops: number("iops")?,
            total_ios: number("total_ios")? as u64,
            runtime: Duration::from_millis(number("runtime")? as u64),
        })
    }
}

/// What fio reported for one job.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FioReport {
    pub read: FioDirection,
    pub write: FioDirection,
}

impl FioReport {
    /// Read `--output-format=json` output (newlines may have been dropped) of exactly one job
    /// that ran without error.
    pub fn parse(text: &str) -> Result<FioReport, String> {
        // fio may print notes before the JSON document.
        let start = text.find('{').ok_or("fio's output holds no JSON")?;
        let document: Value = serde_json::from_str(&text[start..])
            .map_err(|error| format!("fio's JSON does not parse: {error}"))?;
        let jobs = document["jobs"]
            .as_array()
            .ok_or("fio's report has no jobs array")?;
        let [job] = jobs.as_slice() else {
            return Err(format!("fio's report has {} jobs, not one", jobs.len()));
        };
        match job["error"].as_i64() {
            Some(0) => {}
            Some(error) => return Err(format!("fio's job failed with error {error}")),
            None => return Err("fio's report has no error field".to_owned()),
        }
        Ok(FioReport {
            read: FioDirection::parse(job, "read")?,
            write: FioDirection::parse(job, "write")?,
        })
    }

    /// Requests completed in both directions.
    pub fn total_ios(&self) -> u64 {
        self.read.total_ios + self.write.total_ios
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of fio 3.33's JSON, trimmed to what is read, newlines dropped as the guest does.
    const REPORT: &str = r#"note: a line fio prints first{  "fio version" : "fio-3.33",  "jobs" : [    {      "jobname" : "seq",      "error" : 0,      "read" : {        "io_bytes" : 209715200,        "bw_bytes" : 104857600,        "iops" : 100.5,        "runtime" : 2000,        "total_ios" : 200      },      "write" : {        "io_bytes" : 0,        "bw_bytes" : 0,        "iops" : 0.000000,        "runtime" : 0,        "total_ios" : 0      }    }  ]}"#;

    #[test]
    fn a_report_is_read_field_by_field() {
        let report = FioReport::parse(REPORT).unwrap();
        assert_eq!(
            report.read,
            FioDirection {
                io_bytes: 209_715_200,
                bandwidth_bytes_per_second: 104_857_600,
                iops: 100.5,
                total_ios: 200,
                runtime: Duration::from_secs(2),
            }
        );
        assert_eq!(report.read.mib_per_second(), 100.0);
        assert_eq!(report.write.total_ios, 0);
        assert_eq!(report.total_ios(), 200);
    }

    #[test]
    fn broken_reports_are_refused_by_name() {
        assert_eq!(
            FioReport::parse("fio: no such file"),
            Err("fio's output holds no JSON".to_owned())
        );
        assert_eq!(
            FioReport::parse(&REPORT.replace("\"error\" : 0", "\"error\" : 5")),
            Err("fio's job failed with error 5".to_owned())
        );
        assert_eq!(
            FioReport::parse(&REPORT.replace("\"bw_bytes\" : 104857600", "\"bw\" : 1")),
            Err("fio's report has no number read.bw_bytes".to_owned())
        );
        assert_eq!(
            FioReport::parse(r#"{"jobs": []}"#),
            Err("fio's report has 0 jobs, not one".to_owned())
        );
        assert!(FioReport::parse(&REPORT[..REPORT.len() - 3])
            .unwrap_err()
            .starts_with("fio's JSON does not parse"));
    }

    #[test]
    fn a_job_becomes_one_fio_run_and_one_result() {
        let mut job = FioJob::random_read("qd32", 32, Duration::from_secs(3));
        job.engine = Engine::IoUring;
        assert_eq!(
            job.guest_command("/dev/vda"),
            "wait_for_host fio.qd32\n\
             fio --name=qd32 --filename=/dev/vda --rw=randread --bs=4096 --iodepth=32 \
             --ioengine=io_uring --direct=1 --time_based --runtime=3000ms \
             --eta=never --output-format=json --output=/tmp/fio-qd32.json\n\
             result fio.qd32 \"$(tr -d '\\n' < /tmp/fio-qd32.json)\"\n"
        );
        job.jobs = 2;
        assert!(job
            .guest_command("/dev/vdb")
            .contains(" --iodepth=32 --numjobs=2 --group_reporting --ioengine=io_uring "));
    }
}
