//! `blkio-runner SOCKET PATTERN BLOCK_BYTES DEPTH SECONDS`: one timed I/O job on a
//! vhost-user-blk socket through libblkio (one queue, `DEPTH` requests kept in flight, each
//! of `BLOCK_BYTES`), printed as one JSON object: requests completed, IOPS, MiB/s and the
//! p50 and p99 latencies. No guest stands between the client and the server, so the figures
//! are the server's, not an emulated CPU's.

use std::fs::File;
use std::mem::MaybeUninit;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};

/// What each request does, and where the next one lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pattern {
    RandomRead,
    RandomWrite,
    SequentialRead,
    SequentialWrite,
}

impl Pattern {
    /// fio's names for the same patterns.
    fn parse(word: &str) -> Result<Pattern, String> {
        match word {
            "randread" => Ok(Pattern::RandomRead),
            "randwrite" => Ok(Pattern::RandomWrite),
            "read" => Ok(Pattern::SequentialRead),
            "write" => Ok(Pattern::SequentialWrite),
            other => Err(format!(
                "pattern `{other}` is none of randread, randwrite, read, write"
            )),
        }
    }

    fn writes(self) -> bool {
        matches!(self, Pattern::RandomWrite | Pattern::SequentialWrite)
    }

    fn random(self) -> bool {
        matches!(self, Pattern::RandomRead | Pattern::RandomWrite)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Job {
    socket: PathBuf,
    pattern: Pattern,
    block_bytes: usize,
    depth: usize,
    duration: Duration,
}

const USAGE: &str =
    "usage: blkio-runner SOCKET randread|randwrite|read|write BLOCK_BYTES DEPTH SECONDS";

fn parse_job(arguments: &[String]) -> Result<Job, String> {
    let [socket, pattern, block_bytes, depth, seconds] = arguments else {
        return Err(USAGE.to_owned());
    };
    let positive = |what: &str, text: &str| match text.parse::<usize>() {
        Ok(value) if value > 0 => Ok(value),
        _ => Err(format!("{what} `{text}` is not a positive whole number")),
    };
    let block_bytes = positive("BLOCK_BYTES", block_bytes)?;
    if block_bytes % 512 != 0 {
        return Err(format!(
            "BLOCK_BYTES {block_bytes} is not a multiple of 512"
        ));
    }
    Ok(Job {
        socket: PathBuf::from(socket),
        pattern: Pattern::parse(pattern)?,
        block_bytes,
        depth: positive("DEPTH", depth)?,
        duration: Duration::from_secs(positive("SECONDS", seconds)? as u64),
    })
}

/// Where each request lands: a whole block of the device, at random (xorshift64*, a fixed
/// seed so every server sees the same offsets) or one after another, wrapping at the end.
struct Offsets {
    blocks: u64,
    block_bytes: u64,
    random: bool,
    state: u64,
}

impl Offsets {
    fn new(capacity: u64, block_bytes: usize, random: bool) -> Offsets {
        Offsets {
            blocks: capacity / block_bytes as u64,
            block_bytes: block_bytes as u64,
            random,
            // The generator's seed, or the sequential pattern's first block.
            state: if random { 0x9e37_79b9_7f4a_7c15 } else { 0 },
        }
    }

    fn next(&mut self) -> u64 {
        let block = if self.random {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) % self.blocks
        } else {
            let block = self.state % self.blocks;
            self.state = block + 1;
            block
        };
        block * self.block_bytes
    }
}

/// The nearest-rank percentile of `sorted` (ascending), `fraction` in (0, 1].
fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What one job measured.
#[derive(Debug, PartialEq)]
struct Report {
    ios: u64,
    elapsed: Duration,
    block_bytes: usize,
    /// Each completed request's time from submission to completion, in nanoseconds.
    latencies_ns: Vec<u64>,
}

impl Report {
    fn json(mut self) -> serde_json::Value {
        self.latencies_ns.sort_unstable();
        let seconds = self.elapsed.as_secs_f64();
        let microseconds = |fraction| percentile(&self.latencies_ns, fraction) as f64 / 1e3;
        serde_json::json!({
            "ios": self.ios,
            "seconds": seconds,
            "iops": self.ios as f64 / seconds,
            "mib_per_second": (self.ios * self.block_bytes as u64) as f64 / seconds / f64::from(1u32 << 20),
            "p50_us": microseconds(0.50),
            "p99_us": microseconds(0.99),
        })
    }
}

/// A connected client: its queue, one buffer of `depth` blocks, and each slot's segments.
struct Client {
    /// Kept so the connection and the mapping outlive the queue.
    _blkio: Blkio,
    _buffer: MemoryRegion,
    queue: Blkioq,
    capacity: u64,
    /// The segments of each slot's block, split at the device's longest segment.
    slots: Vec<Vec<blkio::iovec>>,
}

fn failed(what: &str) -> impl Fn(blkio::Error) -> String + '_ {
    move |error| format!("{what}: {error}")
}

impl Client {
    fn connect(job: &Job) -> Result<Client, String> {
        let mut blkio = Blkio::new("virtio-blk-vhost-user").map_err(failed("libblkio"))?;
        let socket = job.socket.to_str().ok_or("the socket path is not UTF-8")?;
        blkio.set_str("path", socket).map_err(failed("path"))?;
        blkio
            .connect()
            .map_err(failed(&format!("connecting to {socket}")))?;
        blkio
            .set_i32("num-queues", 1)
            .map_err(failed("num-queues"))?;
        let max_transfer = blkio
            .get_i32("max-transfer")
            .map_err(failed("max-transfer"))?;
        if max_transfer > 0 && job.block_bytes > max_transfer as usize {
            return Err(format!(
                "the device takes at most {max_transfer} bytes a request, not {}",
                job.block_bytes
            ));
        }
        let segment_bytes = match blkio
            .get_i32("max-segment-len")
            .map_err(failed("max-segment-len"))?
        {
            0 => job.block_bytes,
            bytes => bytes as usize,
        };
        let buffer_bytes = job.block_bytes * job.depth;
        let buffer = blkio
            .alloc_mem_region(buffer_bytes)
            .map_err(failed("allocating the buffer"))?;
        let queue = blkio
            .start()
            .map_err(failed("starting"))?
            .queues
            .pop()
            .ok_or("libblkio started no queue")?;
        blkio
            .map_mem_region(&buffer)
            .map_err(failed("mapping the buffer"))?;
        if job.pattern.writes() {
            // Data, not the memfd's zeros: a server could treat zeros as a cheaper request.
            let file = File::options()
                .write(true)
                .open(format!("/proc/self/fd/{}", buffer.fd))
                .map_err(|error| format!("the buffer's memfd: {error}"))?;
            let bytes: Vec<u8> = (0..buffer_bytes).map(|index| index as u8 | 1).collect();
            file.write_all_at(&bytes, buffer.fd_offset as u64)
                .map_err(|error| format!("filling the buffer: {error}"))?;
        }
        let slots = (0..job.depth)
            .map(|slot| {
                let start = buffer.addr + slot * job.block_bytes;
                (0..job.block_bytes)
                    .step_by(segment_bytes)
                    .map(|offset| blkio::iovec {
                        iov_base: (start + offset) as *mut _,
                        iov_len: segment_bytes.min(job.block_bytes - offset),
                    })
                    .collect()
            })
            .collect();
        let capacity = blkio.get_u64("capacity").map_err(failed("capacity"))?;
        Ok(Client {
            _blkio: blkio,
            _buffer: buffer,
            queue,
            capacity,
            slots,
        })
    }

    fn submit(&mut self, slot: usize, offset: u64, writes: bool) {
        let segments = &self.slots[slot];
        let (pointer, count) = (segments.as_ptr(), segments.len() as u32);
        if writes {
            self.queue
                .writev(offset, pointer, count, slot, ReqFlags::empty());
        } else {
            self.queue
                .readv(offset, pointer, count, slot, ReqFlags::empty());
        }
    }
}

/// Keep `depth` requests in flight for the job's duration; requests still in flight at the
/// end are waited for but not counted.
fn run(job: &Job) -> Result<Report, String> {
    let mut client = Client::connect(job)?;
    if client.capacity < job.block_bytes as u64 {
        return Err(format!(
            "the device holds {} bytes, less than one block",
            client.capacity
        ));
    }
    let mut offsets = Offsets::new(client.capacity, job.block_bytes, job.pattern.random());
    let writes = job.pattern.writes();
    let mut submitted = vec![Instant::now(); job.depth];
    let mut latencies_ns = Vec::with_capacity(1 << 22);
    let mut completions: Vec<MaybeUninit<Completion>> =
        (0..job.depth).map(|_| MaybeUninit::uninit()).collect();
    let started = Instant::now();
    for (slot, at) in submitted.iter_mut().enumerate() {
        *at = Instant::now();
        client.submit(slot, offsets.next(), writes);
    }
    let deadline = started + job.duration;
    let mut in_flight = job.depth;
    let mut ended = None;
    while in_flight > 0 {
        let mut timeout = Duration::from_secs(20);
        let done = client
            .queue
            .do_io(&mut completions, 1, Some(&mut timeout), None)
            .map_err(failed("waiting for completions"))?;
        if done == 0 {
            return Err("no request completed within 20 s".to_owned());
        }
        let now = Instant::now();
        let counting = ended.is_none();
        if counting && now >= deadline {
            ended = Some(now);
        }
        for completion in &completions[..done] {
            // SAFETY: `do_io` initialised the first `done` completions.
            let completion = unsafe { completion.assume_init_read() };
            if completion.ret != 0 {
                return Err(format!("a request failed: errno {}", -completion.ret));
            }
            let slot = completion.user_data;
            in_flight -= 1;
            if counting {
                latencies_ns.push(now.duration_since(submitted[slot]).as_nanos() as u64);
            }
            if ended.is_none() {
                submitted[slot] = Instant::now();
                client.submit(slot, offsets.next(), writes);
                in_flight += 1;
            }
        }
    }
    if latencies_ns.is_empty() {
        return Err("no request completed".to_owned());
    }
    Ok(Report {
        ios: latencies_ns.len() as u64,
        elapsed: ended.unwrap_or_else(Instant::now) - started,
        block_bytes: job.block_bytes,
        latencies_ns,
    })
}

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    match parse_job(&arguments).and_then(|job| run(&job)) {
        Ok(report) => {
            println!("{}", report.json());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("blkio-runner: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arguments(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| word.to_string()).collect()
    }

    #[test]
    fn a_job_is_read_from_its_five_arguments() {
        assert_eq!(
            parse_job(&arguments(&["/run/x.sock", "randwrite", "4096", "32", "2"])),
            Ok(Job {
                socket: PathBuf::from("/run/x.sock"),
                pattern: Pattern::RandomWrite,
                block_bytes: 4096,
                depth: 32,
                duration: Duration::from_secs(2),
            })
        );
    }

    #[test]
    fn a_wrong_argument_is_named() {
        assert_eq!(
            parse_job(&arguments(&["/run/x.sock"])),
            Err(USAGE.to_owned())
        );
        assert_eq!(
            parse_job(&arguments(&["s", "trim", "4096", "1", "1"])),
            Err("pattern `trim` is none of randread, randwrite, read, write".to_owned())
        );
        assert_eq!(
            parse_job(&arguments(&["s", "read", "4000", "1", "1"])),
            Err("BLOCK_BYTES 4000 is not a multiple of 512".to_owned())
        );
        assert_eq!(
            parse_job(&arguments(&["s", "read", "4096", "0", "1"])),
            Err("DEPTH `0` is not a positive whole number".to_owned())
        );
    }

    #[test]
    fn random_offsets_are_whole_blocks_inside_the_device_and_sequential_ones_wrap() {
        let mut random = Offsets::new(1 << 20, 4096, true);
        let offsets: Vec<u64> = (0..1000).map(|_| random.next()).collect();
        assert!(offsets
            .iter()
            .all(|offset| offset % 4096 == 0 && *offset < 1 << 20));
        let distinct: std::collections::BTreeSet<_> = offsets.iter().collect();
        assert!(distinct.len() > 200, "{} distinct offsets", distinct.len());
        let mut sequential = Offsets::new(3 << 20, 1 << 20, false);
        let offsets: Vec<u64> = (0..4).map(|_| sequential.next()).collect();
        assert_eq!(offsets, [0, 1 << 20, 2 << 20, 0]);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 0.50), 50);
        assert_eq!(percentile(&sorted, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
    }

    #[test]
    fn the_report_gives_rates_and_latencies_in_microseconds() {
        let report = Report {
            ios: 4,
            elapsed: Duration::from_secs(2),
            block_bytes: 1 << 20,
            latencies_ns: vec![4000, 1000, 3000, 2000],
        };
        let json = report.json();
        assert_eq!(json["iops"], 2.0);
        assert_eq!(json["mib_per_second"], 2.0);
        assert_eq!(json["p50_us"], 2.0);
        assert_eq!(json["p99_us"], 4.0);
    }
}
