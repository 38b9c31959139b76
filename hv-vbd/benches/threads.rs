//! Translation on several threads while dom0 keeps changing the table: the rate of one
//! translating thread and of two at once (each with its own I/O context and its own VBD),
//! while a third thread replaces 1024 extents of another VBD every millisecond, and how
//! long that writer waits for each change (from asking to a complete fence).
//!
//! Each reader's I/O context yields while a change is under way
//! (`relaxing_with(std::thread::yield_now)`), as vbd-backend's I/O threads do. The writer
//! waits for each fence spinning, as a bare-metal hypervisor with a core to itself would:
//! that is the figure. Beside it, in the same rounds, the same with the writer yielding its
//! CPU while it waits (as vbd-backend, an OS process, does) and with no writer at all, so
//! that what the writer costs shows: on a machine with no more cores than readers, a
//! spinning writer waits for a reader it has itself preempted.
//!
//! The runs alternate, several rounds of each (the order reversed every round), and each
//! rate is the median of its rounds, so a change in the machine's load during the bench
//! weighs on all alike. The writer's waits are those of every round.
//!
//! Not a criterion bench: criterion times one thread. Prints one JSON object, and writes it
//! to `<target>/bench/threads.json` for `cargo xtask bench`. `--quick` runs fewer, shorter
//! rounds.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{hda, xvda, Random};
use hv_vbd::{Access, Disk, Request, Segment, SharingLevel, VbdId, VbdTable};
use shared_abi::{wire::Extent, Label, Mode, DOM0};

/// Extents of each reader's VBD, so a translation does a real search.
const READER_EXTENTS: u64 = 4096;
/// Extents the writer replaces at every change.
const WRITER_EXTENTS: u64 = 1024;
const EXTENT_SECTORS: u64 = 64;
/// Two readers' VBDs, and the writer's old and new lists staged side by side.
const CAPACITY: usize = (2 * READER_EXTENTS + 2 * WRITER_EXTENTS) as usize;

static TABLE: VbdTable<3, 1, CAPACITY, 1> = VbdTable::new(SharingLevel::Unrestricted);

fn id(domain: u32) -> VbdId {
    VbdId {
        domain,
        vdevice: xvda(),
    }
}

/// `count` extents from slot `first` on, shuffled: each lives in its own slot of the disk.
fn extents(random: &mut Random, first: u64, count: u64) -> Vec<Extent> {
    let mut list: Vec<Extent> = (first..first + count)
        .map(|slot| Extent::new(hda(), slot * EXTENT_SECTORS, EXTENT_SECTORS).unwrap())
        .collect();
    random.shuffle(&mut list);
    list
}

/// How the writer waits for a change's fence, if there is a writer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writer {
    Spins,
    Yields,
    Absent,
}

fn set(domain: u32, list: &[Extent], writer: Writer) -> Duration {
    let asked = Instant::now();
    let fence = TABLE
        .set_extents(
            DOM0,
            id(domain),
            list.iter().map(|extent| Ok(*extent)),
            SharingLevel::ReadersOnly,
        )
        .expect("the lists share nothing")
        .fence;
    if writer == Writer::Yields {
        fence.wait(std::thread::yield_now);
    } else {
        fence.wait(std::hint::spin_loop);
    }
    asked.elapsed()
}

/// Translate random 8-sector requests on `domain`'s VBD until `stop`; returns how many.
fn reader(domain: u32, stop: &AtomicBool) -> u64 {
    // Waiting out a change yielding, as vbd-backend's I/O threads do: a reader that spun
    // could hold the core the writer it waits for was preempted from.
    let context = TABLE.io_context().relaxing_with(std::thread::yield_now);
    let vbd = TABLE.pin(DOM0, id(domain)).expect("the VBD exists");
    let mut random = Random::new(0x5EED_0100 + u64::from(domain));
    let requests: Vec<Request> = (0..4096)
        .map(|_| {
            let sector = random.below(READER_EXTENTS * EXTENT_SECTORS - 8);
            Request::new(Access::Read, sector, 8).unwrap()
        })
        .collect();
    let mut out = [Segment::default(); 4];
    let mut done = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for request in &requests {
            let translation = TABLE
                .translate_pinned(&context, &vbd, std::hint::black_box(request), &mut out)
                .expect("every request is inside the VBD");
            std::hint::black_box(translation.segments());
        }
        done += requests.len() as u64;
    }
    done
}

/// Run `readers` readers for `length` beside `writer`; translations per second, and the
/// writer's waits.
fn run(
    readers: u32,
    length: Duration,
    lists: &[Vec<Extent>; 2],
    writer: Writer,
) -> (f64, Vec<Duration>) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (1..=readers)
            .map(|domain| {
                let stop = &stop;
                scope.spawn(move || reader(domain, stop))
            })
            .collect();
        let started = Instant::now();
        let mut waits = Vec::new();
        let mut next = started;
        while started.elapsed() < length {
            next += Duration::from_millis(1);
            if writer != Writer::Absent {
                waits.push(set(3, &lists[waits.len() % 2], writer));
            }
            if let Some(pause) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(pause);
            }
        }
        stop.store(true, Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        let total: u64 = workers
            .into_iter()
            .map(|worker| worker.join().unwrap())
            .sum();
        (total as f64 / elapsed, waits)
    })
}

/// The median of an odd number of values.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|argument| argument == "--quick");
    // `cargo bench` passes `--bench`; a filter that names another bench skips this one.
    if std::env::args()
        .skip(1)
        .any(|argument| !argument.starts_with("--") && !"threads".contains(argument.as_str()))
    {
        return;
    }
    // Odd, so each median is one round's rate.
    let (rounds, length) = if quick {
        (3, Duration::from_millis(500))
    } else {
        (7, Duration::from_millis(1500))
    };
    TABLE
        .register_disk(Disk {
            device: hda(),
            sectors: CAPACITY as u64 * EXTENT_SECTORS,
        })
        .unwrap();
    let mut random = Random::new(0x5EED_0003);
    for domain in 1..=3 {
        TABLE
            .create(DOM0, id(domain), Mode::READ | Mode::WRITE, Label::EMPTY)
            .unwrap();
    }
    set(1, &extents(&mut random, 0, READER_EXTENTS), Writer::Spins);
    set(
        2,
        &extents(&mut random, READER_EXTENTS, READER_EXTENTS),
        Writer::Spins,
    );
    let lists = [
        extents(&mut random, 2 * READER_EXTENTS, WRITER_EXTENTS),
        extents(
            &mut random,
            2 * READER_EXTENTS + WRITER_EXTENTS,
            WRITER_EXTENTS,
        ),
    ];
    set(3, &lists[1], Writer::Spins);
    let writers = [Writer::Spins, Writer::Yields, Writer::Absent];
    // One and two readers beside each writer: rates[2 * writer] and rates[2 * writer + 1].
    let runs: Vec<(u32, Writer)> = writers
        .iter()
        .flat_map(|&writer| [(1, writer), (2, writer)])
        .collect();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    let mut waits: Vec<Vec<Duration>> = vec![Vec::new(); writers.len()];
    for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..runs.len()).collect()
        } else {
            (0..runs.len()).rev().collect()
        };
        for index in order {
            let (readers, writer) = runs[index];
            let (rate, run_waits) = run(readers, length, &lists, writer);
            rates[index].push(rate);
            let writer_index = writers.iter().position(|&each| each == writer).unwrap();
            waits[writer_index].extend(run_waits);
        }
    }
    let mut threads = |writer_index: usize| {
        let one = median(&mut rates[2 * writer_index]);
        let two = median(&mut rates[2 * writer_index + 1]);
        format!(
            "{{\"1\": {one:.0}, \"2\": {two:.0}, \"speedup\": {:.3}}}",
            two / one
        )
    };
    let microseconds = |duration: &Duration| duration.as_secs_f64() * 1e6;
    for list in &mut waits {
        list.sort_unstable();
    }
    let (spinning, yielding) = (&waits[0], &waits[1]);
    let figures = [threads(0), threads(1), threads(2)];
    let json = format!(
        "{{\"translate_threads\": {}, \"translate_threads_writer_yields\": {}, \"translate_threads_no_writer\": {}, \"rounds\": {rounds}, \"seconds_per_run\": {:.1}, \"writer_changes\": {}, \"writer_wait_us_median\": {:.1}, \"writer_wait_us_max\": {:.1}, \"yielding_writer_wait_us_max\": {:.1}}}",
        figures[0],
        figures[1],
        figures[2],
        length.as_secs_f64(),
        spinning.len(),
        microseconds(&spinning[spinning.len() / 2]),
        microseconds(spinning.last().unwrap()),
        microseconds(yielding.last().unwrap())
    );
    println!("{json}");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let directory = target.join("bench");
    std::fs::create_dir_all(&directory).unwrap();
    std::fs::write(directory.join("threads.json"), json + "\n").unwrap();
}
