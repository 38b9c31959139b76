//! `blkio-runner SOCKET PATTERN BLOCK_BYTES DEPTH SECONDS [QUEUES]`: one timed I/O job on a
//! vhost-user-blk socket through libblkio (`QUEUES` queues, 1 unless given, each driven by a
//! thread of its own that keeps `DEPTH` requests of `BLOCK_BYTES` in flight), printed as one
//! JSON object: requests completed, IOPS, MiB/s and the p50 and p99 latencies, over every
//! queue. No guest stands between the client and the server, so the figures are the
//! server's, not an emulated CPU's.

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
    queues: usize,
}

const USAGE: &str =
    "usage: blkio-runner SOCKET randread|randwrite|read|write BLOCK_BYTES DEPTH SECONDS [QUEUES]";

fn parse_job(arguments: &[String]) -> Result<Job, String> {
    let (socket, pattern, block_bytes, depth, seconds, queues) = match arguments {
        [socket, pattern, block_bytes, depth, seconds] => {
            (socket, pattern, block_bytes, depth, seconds, "1")
        }
        [socket, pattern, block_bytes, depth, seconds, queues] => (
            socket,
            pattern,
            block_bytes,
            depth,
            seconds,
            queues.as_str(),
        ),
        _ => return Err(USAGE.to_owned()),
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
        queues: positive("QUEUES", queues)?,
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
    /// The offsets of queue `queue`: each queue has a seed of its own, or starts its
    /// sequential pattern at its own share of the device.
    fn new(capacity: u64, block_bytes: usize, random: bool, queue: usize) -> Offsets {
        let blocks = capacity / block_bytes as u64;
        Offsets {
            blocks,
            block_bytes: block_bytes as u64,
            random,
            // The generator's seed, or the sequential pattern's first block.
            state: if random {
                0x9e37_79b9_7f4a_7c15 ^ (queue as u64).wrapping_mul(0x1000_0000_01b3)
            } else {
                blocks / 8 * queue as u64
            },
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

/// A connected client: its queues, one buffer of `depth` blocks per queue, and the length of
/// the segments a block is split into.
struct Client {
    /// Kept so the connection and the mapping outlive the queues.
    _blkio: Blkio,
    _buffer: MemoryRegion,
    queues: Vec<Blkioq>,
    capacity: u64,
    /// The buffer's address in this process.
    buffer: usize,
    segment_bytes: usize,
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
        let queues = i32::try_from(job.queues).map_err(|_| "too many queues")?;
        blkio
            .set_i32("num-queues", queues)
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
        let buffer_bytes = job.block_bytes * job.depth * job.queues;
        let buffer = blkio
            .alloc_mem_region(buffer_bytes)
            .map_err(failed("allocating the buffer"))?;
        let started = blkio.start().map_err(failed("starting"))?.queues;
        if started.len() != job.queues {
            return Err(format!(
                "libblkio started {} queues, not {}",
                started.len(),
                job.queues
            ));
        }
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
        let capacity = blkio.get_u64("capacity").map_err(failed("capacity"))?;
        Ok(Client {
            _blkio: blkio,
            buffer: buffer.addr,
            _buffer: buffer,
            queues: started,
            capacity,
            segment_bytes,
        })
    }
}

/// One queue and its share of the buffer: `depth` slots, each a block split into segments.
struct Lane {
    queue: Blkioq,
    slots: Vec<Vec<blkio::iovec>>,
}

impl Lane {
    /// The lane of queue `index`, whose slots start at `buffer + index * depth * block`.
    fn new(queue: Blkioq, index: usize, buffer: usize, segment_bytes: usize, job: &Job) -> Lane {
        let first = buffer + index * job.depth * job.block_bytes;
        let slots = (0..job.depth)
            .map(|slot| {
                let start = first + slot * job.block_bytes;
                (0..job.block_bytes)
                    .step_by(segment_bytes)
                    .map(|offset| blkio::iovec {
                        iov_base: (start + offset) as *mut _,
                        iov_len: segment_bytes.min(job.block_bytes - offset),
                    })
                    .collect()
            })
            .collect();
        Lane { queue, slots }
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

/// What one queue measured: each counted request's latency, and when counting ended.
struct Measured {
    latencies_ns: Vec<u64>,
    ended: Option<Instant>,
}

/// Drive every queue from a thread of its own for the job's duration, all started together,
/// and put their figures together.
fn run(job: &Job) -> Result<Report, String> {
    let mut client = Client::connect(job)?;
    if client.capacity < job.block_bytes as u64 {
        return Err(format!(
            "the device holds {} bytes, less than one block",
            client.capacity
        ));
    }
    let (capacity, buffer, segment_bytes) = (client.capacity, client.buffer, client.segment_bytes);
    let started = Instant::now();
    let measured: Vec<Result<Measured, String>> = std::thread::scope(|scope| {
        let threads: Vec<_> = client
            .queues
            .drain(..)
            .enumerate()
            .map(|(index, queue)| {
                scope.spawn(move || {
                    let mut lane = Lane::new(queue, index, buffer, segment_bytes, job);
                    let offsets =
                        Offsets::new(capacity, job.block_bytes, job.pattern.random(), index);
                    drive(&mut lane, offsets, job, started)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|_| Err("a queue's thread panicked".into()))
            })
            .collect()
    });
    let mut latencies_ns = Vec::new();
    let mut ended = started;
    for queue in measured {
        let queue = queue?;
        latencies_ns.extend(queue.latencies_ns);
        ended = ended.max(queue.ended.unwrap_or_else(Instant::now));
    }
    if latencies_ns.is_empty() {
        return Err("no request completed".to_owned());
    }
    Ok(Report {
        ios: latencies_ns.len() as u64,
        elapsed: ended - started,
        block_bytes: job.block_bytes,
        latencies_ns,
    })
}

/// Keep `depth` requests in flight on `lane` until the job's duration from `started` is
/// over; requests still in flight then are waited for but not counted.
fn drive(
    lane: &mut Lane,
    mut offsets: Offsets,
    job: &Job,
    started: Instant,
) -> Result<Measured, String> {
    let writes = job.pattern.writes();
    let mut submitted = vec![Instant::now(); job.depth];
    let mut latencies_ns = Vec::with_capacity(1 << 22);
    let mut completions: Vec<MaybeUninit<Completion>> =
        (0..job.depth).map(|_| MaybeUninit::uninit()).collect();
    for (slot, at) in submitted.iter_mut().enumerate() {
        *at = Instant::now();
        lane.submit(slot, offsets.next(), writes);
    }
    let deadline = started + job.duration;
    let mut in_flight = job.depth;
    let mut ended = None;
    while in_flight > 0 {
        let mut timeout = Duration::from_secs(20);
        let done = lane
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
                lane.submit(slot, offsets.next(), writes);
                in_flight += 1;
            }
        }
    }
    Ok(Measured {
        latencies_ns,
        ended,
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
                queues: 1,
            })
        );
        assert_eq!(
            parse_job(&arguments(&["/run/x.sock", "read", "4096", "16", "2", "2"]))
                .map(|job| job.queues),
            Ok(2)
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
        assert_eq!(
            parse_job(&arguments(&["s", "read", "4096", "1", "1", "0"])),
            Err("QUEUES `0` is not a positive whole number".to_owned())
        );
    }

    fn offsets_of_queue_0() -> Vec<u64> {
        let mut random = Offsets::new(1 << 20, 4096, true, 0);
        (0..10).map(|_| random.next()).collect()
    }

    #[test]
    fn random_offsets_are_whole_blocks_inside_the_device_and_sequential_ones_wrap() {
        let mut random = Offsets::new(1 << 20, 4096, true, 0);
        let offsets: Vec<u64> = (0..1000).map(|_| random.next()).collect();
        assert!(offsets
            .iter()
            .all(|offset| offset % 4096 == 0 && *offset < 1 << 20));
        let distinct: std::collections::BTreeSet<_> = offsets.iter().collect();
        assert!(distinct.len() > 200, "{} distinct offsets", distinct.len());
        let mut sequential = Offsets::new(3 << 20, 1 << 20, false, 0);
        let offsets: Vec<u64> = (0..4).map(|_| sequential.next()).collect();
        assert_eq!(offsets, [0, 1 << 20, 2 << 20, 0]);

        // Each queue its own: another seed, another eighth of the device to start from.
        let mut second = Offsets::new(1 << 20, 4096, true, 1);
        let second: Vec<u64> = (0..1000).map(|_| second.next()).collect();
        assert_ne!(second[..10], offsets_of_queue_0()[..10]);
        let mut sequential = Offsets::new(16 << 20, 1 << 20, false, 1);
        assert_eq!(sequential.next(), 2 << 20);
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
