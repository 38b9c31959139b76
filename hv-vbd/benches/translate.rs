//! Nanoseconds per translation of a guest request, for VBDs of 1 to 65 536 extents: hv-vbd's
//! search over the arena beside Xen 1.2's linear walk of its linked extent list, and beside
//! the same walk over a contiguous slice (a stronger baseline than Xen 1.2 ever had), on the
//! same extents and the same requests, in the same run.
//!
//! Requests are drawn once from a seeded generator: random offsets and sizes, and one in
//! eight placed astride an extent boundary, so the split into segments is measured too.
//! Before timing, both translations are checked to give the same segments for every request.

mod common;

use std::hint::black_box;

use common::{hda, xvda, Random};
use criterion::{criterion_group, criterion_main, Bencher, BenchmarkId, Criterion};
use hv_vbd::{Access, Disk, IoContext, Request, Segment, SharingLevel, VbdId, VbdRef, VbdTable};
use shared_abi::{wire::Extent, Error, Label, Mode, DOM0};

/// The VBD sizes measured, in extents.
const EXTENT_COUNTS: [usize; 5] = [1, 16, 256, 4096, 65536];
/// Room for every VBD at once: each size has its own domain with one VBD.
const TOTAL_EXTENTS: usize = 1 + 16 + 256 + 4096 + 65536;
/// Requests per VBD, a power of two so the benchmark loop indexes with a mask.
const REQUESTS: usize = 4096;
/// Extent lengths are multiples of 8 sectors below this, so each physical slot this wide
/// holds one extent and no two extents overlap.
const SLOT_SECTORS: u64 = 1024;
/// Each VBD's extents live in their own region of the disk.
const REGION_SECTORS: u64 = 1 << 27;
/// Longest request: 128 KiB, the most a guest ring slot asks for in one go.
const MAX_REQUEST_SECTORS: u64 = 256;
/// Room for the most segments a request can split into (256 sectors over 8-sector extents).
const MAX_SEGMENTS: usize = 64;

/// About 1.9 MiB: too large for the stack, so it lives in a static (`new` is `const`).
static TABLE: VbdTable<5, 1, TOTAL_EXTENTS, 1> = VbdTable::new(SharingLevel::Unrestricted);

/// One pre-generated request.
#[derive(Clone, Copy)]
struct Sample {
    sector: u64,
    nr_sectors: u64,
}

/// One VBD under test: its extents as a slice and as Xen 1.2's linked list, its domain in
/// [`TABLE`], and the requests to translate.
struct Workload {
    extent_count: usize,
    domain: u32,
    /// The VBD, pinned as an I/O thread holds it.
    vbd: VbdRef,
    extents: Vec<Extent>,
    list: ExtentList,
    requests: Vec<Sample>,
}

/// Xen 1.2's extent list (`xen_extent_le_t`): one node per extent, each naming the next,
/// allocated one after another in list order as Xen 1.2's `kmalloc` calls did. Walking it
/// is a chain of dependent loads; indices stand in for pointers.
struct ExtentList {
    nodes: Vec<ListNode>,
}

struct ListNode {
    extent: Extent,
    next: Option<u32>,
}

impl ExtentList {
    fn new(extents: &[Extent]) -> ExtentList {
        let nodes = extents
            .iter()
            .enumerate()
            .map(|(index, extent)| ListNode {
                extent: *extent,
                next: (index + 1 < extents.len()).then_some(index as u32 + 1),
            })
            .collect();
        ExtentList { nodes }
    }

    /// The extents from the head, following each node's `next`.
    fn walk(&self) -> impl Iterator<Item = &Extent> {
        let mut next = (!self.nodes.is_empty()).then_some(0u32);
        std::iter::from_fn(move || {
            let node = &self.nodes[next? as usize];
            next = node.next;
            Some(&node.extent)
        })
    }
}

/// Scatter `extent_count` extents of 8 to 1016 sectors over region `region` of the disk,
/// in a shuffled physical order, as a fragmented pool would hand them out.
fn make_extents(random: &mut Random, region: u64, extent_count: usize) -> Vec<Extent> {
    let mut slots: Vec<u64> = (0..extent_count as u64).collect();
    random.shuffle(&mut slots);
    slots
        .iter()
        .map(|slot| {
            let length = 8 * (1 + random.below(SLOT_SECTORS / 8 - 1));
            Extent::new(hda(), region * REGION_SECTORS + slot * SLOT_SECTORS, length)
                .expect("lengths are non-zero and far from overflow")
        })
        .collect()
}

fn make_requests(random: &mut Random, extents: &[Extent]) -> Vec<Sample> {
    let mut virtual_ends = Vec::with_capacity(extents.len());
    let mut size = 0;
    for extent in extents {
        size += extent.nr_sectors();
        virtual_ends.push(size);
    }
    (0..REQUESTS)
        .map(|index| {
            if index % 8 == 0 && extents.len() > 1 {
                // Astride a boundary: the last 4 sectors of one extent, the first 4 of the next.
                let boundary = virtual_ends[random.below(extents.len() as u64 - 1) as usize];
                Sample {
                    sector: boundary - 4,
                    nr_sectors: 8,
                }
            } else {
                let nr_sectors = (1 + random.below(MAX_REQUEST_SECTORS)).min(size);
                Sample {
                    sector: random.below(size - nr_sectors + 1),
                    nr_sectors,
                }
            }
        })
        .collect()
}

/// Build every VBD in [`TABLE`] and its requests.
fn workloads() -> Vec<Workload> {
    TABLE
        .register_disk(Disk {
            device: hda(),
            sectors: EXTENT_COUNTS.len() as u64 * REGION_SECTORS,
        })
        .expect("a fresh table has room for one disk");
    let mut random = Random::new(0x5EED_0001);
    EXTENT_COUNTS
        .iter()
        .enumerate()
        .map(|(region, &extent_count)| {
            let domain = region as u32 + 1;
            let extents = make_extents(&mut random, region as u64, extent_count);
            let requests = make_requests(&mut random, &extents);
            let id = VbdId {
                domain,
                vdevice: xvda(),
            };
            TABLE
                .create(DOM0, id, Mode::READ, Label::EMPTY)
                .expect("create a benchmark VBD");
            TABLE
                .set_extents(
                    DOM0,
                    id,
                    extents.iter().map(|extent| Ok(*extent)),
                    SharingLevel::ReadersOnly,
                )
                .expect("set a benchmark VBD's extents")
                .fence
                .wait(std::hint::spin_loop);
            Workload {
                extent_count,
                domain,
                vbd: TABLE.pin(DOM0, id).expect("the VBD was just made"),
                list: ExtentList::new(&extents),
                extents,
                requests,
            }
        })
        .collect()
}

/// Xen 1.2's translation (`vbd_translate` walking `xen_extent_le_t`) over any walk of the
/// list: from the head, subtract each extent's length until the sector falls inside one,
/// then emit segments extent by extent. Unlike Xen 1.2 it follows a request across any
/// number of boundaries, so that every side produces the same segments. It takes no lock and
/// looks up no VBD, which only helps it.
fn translate_linear<'a>(
    extents: impl IntoIterator<Item = &'a Extent>,
    writable: bool,
    sector: u64,
    nr_sectors: u64,
    access: Access,
    out: &mut [Segment],
) -> Result<usize, Error> {
    if nr_sectors == 0 {
        return Err(Error::InvalidArgument);
    }
    if access == Access::Write && !writable {
        return Err(Error::ReadOnly);
    }
    let mut remaining = nr_sectors;
    let mut offset = sector;
    let mut list = extents.into_iter();
    let mut extent = loop {
        let candidate = list.next().ok_or(Error::OutOfRange)?;
        if offset < candidate.nr_sectors() {
            break candidate;
        }
        offset -= candidate.nr_sectors();
    };
    let mut written = 0;
    loop {
        let length = (extent.nr_sectors() - offset).min(remaining);
        let slot = out.get_mut(written).ok_or(Error::TooBig)?;
        *slot = Segment {
            device: extent.device(),
            sector: extent.start_sector() + offset,
            nr_sectors: length,
        };
        written += 1;
        remaining -= length;
        if remaining == 0 {
            return Ok(written);
        }
        extent = list.next().ok_or(Error::OutOfRange)?;
        offset = 0;
    }
}

/// hv-vbd's whole block path for one request, as an I/O thread runs it: validate the
/// request, translate it under the in-flight registration, and complete it. Returns the
/// number of segments.
fn translate_table(
    context: &IoContext<'static>,
    vbd: &VbdRef,
    sample: Sample,
    out: &mut [Segment],
) -> Result<usize, Error> {
    let request = Request::new(Access::Read, sample.sector, sample.nr_sectors)?;
    let translation = TABLE.translate_pinned(context, vbd, &request, out)?;
    Ok(translation.segments().len())
}

/// The same through the VBD's name, as a frame channel looks each request up: the domain
/// and VBD lookups on top of [`translate_table`].
fn translate_by_name(
    context: &IoContext<'static>,
    domain: u32,
    sample: Sample,
    out: &mut [Segment],
) -> Result<usize, Error> {
    let request = Request::new(Access::Read, sample.sector, sample.nr_sectors)?;
    let id = VbdId {
        domain,
        vdevice: xvda(),
    };
    let translation = TABLE.translate(context, id, &request, out)?;
    Ok(translation.segments().len())
}

/// Both translations must agree on every request, or the comparison means nothing.
fn check_agreement(context: &IoContext<'static>, workload: &Workload) {
    let mut crossing = 0;
    for request in &workload.requests {
        let mut ours = [Segment::default(); MAX_SEGMENTS];
        let mut theirs = [Segment::default(); MAX_SEGMENTS];
        let mut listed = [Segment::default(); MAX_SEGMENTS];
        let written = translate_table(context, &workload.vbd, *request, &mut ours)
            .expect("hv-vbd translates every benchmark request");
        let mut named = [Segment::default(); MAX_SEGMENTS];
        let by_name = translate_by_name(context, workload.domain, *request, &mut named)
            .expect("hv-vbd translates every benchmark request by name");
        assert_eq!(ours[..written], named[..by_name]);
        let walked = translate_linear(
            &workload.extents,
            false,
            request.sector,
            request.nr_sectors,
            Access::Read,
            &mut theirs,
        )
        .expect("the linear walk translates every benchmark request");
        let followed = translate_linear(
            workload.list.walk(),
            false,
            request.sector,
            request.nr_sectors,
            Access::Read,
            &mut listed,
        )
        .expect("the list walk translates every benchmark request");
        assert_eq!(ours[..written], theirs[..walked]);
        assert_eq!(ours[..written], listed[..followed]);
        crossing += usize::from(written > 1);
    }
    if workload.extent_count > 1 {
        assert!(
            crossing >= REQUESTS / 8,
            "too few requests cross a boundary"
        );
    }
}

/// Time `translate` on one request per call, cycling through the pre-generated ones, so the
/// median is the cost of one translation.
fn bench_requests<R>(
    bencher: &mut Bencher<'_>,
    requests: &[Sample],
    mut translate: impl FnMut(Sample, &mut [Segment]) -> R,
) {
    let mut out = [Segment::default(); MAX_SEGMENTS];
    let mut next = 0;
    bencher.iter(|| {
        let request = black_box(requests[next % REQUESTS]);
        next += 1;
        translate(request, &mut out)
    })
}

fn translate(criterion: &mut Criterion) {
    let workloads = workloads();
    let context = TABLE.io_context();
    let mut group = criterion.benchmark_group("translate");
    for workload in &workloads {
        check_agreement(&context, workload);
        let extent_count = workload.extent_count;
        group.bench_function(BenchmarkId::new("binary_search", extent_count), |bencher| {
            bench_requests(bencher, &workload.requests, |request, out| {
                translate_table(&context, black_box(&workload.vbd), request, out)
            })
        });
        group.bench_function(BenchmarkId::new("by_name", extent_count), |bencher| {
            bench_requests(bencher, &workload.requests, |request, out| {
                translate_by_name(&context, black_box(workload.domain), request, out)
            })
        });
        group.bench_function(BenchmarkId::new("linear_walk", extent_count), |bencher| {
            bench_requests(bencher, &workload.requests, |request, out| {
                translate_linear(
                    black_box(&workload.list).walk(),
                    black_box(false),
                    request.sector,
                    request.nr_sectors,
                    Access::Read,
                    out,
                )
            })
        });
        group.bench_function(BenchmarkId::new("slice_walk", extent_count), |bencher| {
            bench_requests(bencher, &workload.requests, |request, out| {
                translate_linear(
                    black_box(&workload.extents),
                    black_box(false),
                    request.sector,
                    request.nr_sectors,
                    Access::Read,
                    out,
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, translate);
criterion_main!(benches);
