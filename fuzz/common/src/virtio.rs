//! virtio-blk requests as a hostile driver makes them. Each chain is described as a request
//! (type, sector, data, segments, framing) and laid by a driver that writes the descriptor
//! table, indirect tables and available ring into guest memory itself; edits then change
//! any field of any descriptor, and pokes write any bytes into the rings or the data. The
//! chains are popped with virtio-queue, as the backend's queue threads pop them, and each
//! goes through `Request::parse`.
//!
//! What parse returns is checked twice: always against what execution relies on (every
//! buffer inside guest memory, the status byte where the chain ends, whole sectors, bounded
//! segments), and, for a chain left exactly as laid, against the request the driver meant:
//! accepted as meant when it is valid, rejected when it is not.

use arbitrary::Arbitrary;
use serde::{Deserialize, Serialize};

use crate::Mostly;
use shared_abi::SECTOR_SIZE;
use vbd_backend::vhost::request::{
    GuestBuffer, Operation, Range, Rejected, Request, RequestError, MAX_SEGMENTS,
    MAX_SEGMENT_SECTORS,
};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// The backend's queue size, which is also the most descriptors it takes in one chain.
pub const QUEUE_SIZE: u16 = 256;
const MEMORY_BYTES: u64 = 4 << 20;
const DESCRIPTOR_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
/// Headers, segments, data, status bytes and indirect tables are laid from here on.
const DATA: u64 = 0x4000;
/// Data pieces per chain and bytes per poke: enough for every case, little enough to fit.
const MAX_DATA_PIECES: usize = 16;
const MAX_POKE_BYTES: usize = 64;
const HEADER_BYTES: u64 = 16;
const SEGMENT_BYTES: u64 = 16;
const DESCRIPTOR_BYTES: u64 = 16;

/// What the driver puts on the queue.
#[derive(Arbitrary, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct QueueInput {
    pub chains: Vec<Chain>,
    /// The available index the driver publishes, when not the count of chains laid.
    pub avail_index: Mostly<u16>,
    pub pokes: Mostly<Vec<Poke>>,
}

/// One request as the driver means it, and what it then does to its descriptors.
#[derive(Arbitrary, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub kind: Kind,
    pub sector: u64,
    /// The data pieces of a read, write or get-id (and of an unknown type), one each.
    pub data: Vec<Length>,
    /// The segments of a discard or write-zeroes.
    pub segments: Vec<Segment>,
    pub framing: Framing,
    pub edits: Mostly<Vec<Edit>>,
}

#[derive(Arbitrary, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Other(u32),
}

impl Kind {
    fn value(self) -> u32 {
        match self {
            Kind::Read => VIRTIO_BLK_T_IN,
            Kind::Write => VIRTIO_BLK_T_OUT,
            Kind::Flush => VIRTIO_BLK_T_FLUSH,
            Kind::GetId => VIRTIO_BLK_T_GET_ID,
            Kind::Discard => VIRTIO_BLK_T_DISCARD,
            Kind::WriteZeroes => VIRTIO_BLK_T_WRITE_ZEROES,
            Kind::Other(kind) => kind,
        }
    }

    /// The named kind an `Other` value is, if it is one.
    fn named(self) -> Kind {
        let value = self.value();
        [
            Kind::Read,
            Kind::Write,
            Kind::Flush,
            Kind::GetId,
            Kind::Discard,
            Kind::WriteZeroes,
        ]
        .into_iter()
        .find(|kind| kind.value() == value)
        .unwrap_or(self)
    }
}

#[derive(Arbitrary, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    Sectors(u8),
    Bytes(u16),
}

#[derive(Arbitrary, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub sector: u64,
    pub sectors: Count,
    pub flags: SegmentFlags,
}

#[derive(Arbitrary, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    Small(u16),
    Any(u32),
}

#[derive(Arbitrary, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentFlags {
    None,
    Unmap,
    Any(u32),
}

/// How the request's bytes are framed in descriptors.
#[derive(Arbitrary, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Header, segments, each data piece and the status byte each in its own descriptor.
    Separate,
    /// One descriptor for everything the device reads, one for everything it writes.
    Merged,
    /// As `Separate`, in an indirect table.
    Indirect,
}

/// A change to one descriptor of the chain (its index taken modulo the chain's length).
#[derive(Arbitrary, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edit {
    pub descriptor: u8,
    pub change: Change,
}

#[derive(Arbitrary, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Address(u64),
    Length(u32),
    Flags(u16),
    Next(u16),
}

/// Bytes written over whatever the driver laid.
#[derive(Arbitrary, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Poke {
    pub place: Place,
    pub offset: u16,
    pub bytes: Vec<u8>,
}

#[derive(Arbitrary, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    DescriptorTable,
    AvailRing,
    UsedRing,
    Data,
}

/// What parse must return for one popped chain.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expected {
    Accepted(Request),
    Rejected,
    /// Edited, poked or laid over: only the safety checks hold.
    Unknown,
}

/// Lay `input` in guest memory, pop every chain as the backend does, parse each, and check
/// what parse returns. Panics when a check fails.
pub fn drive(input: &QueueInput) {
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEMORY_BYTES as usize)])
        .expect("guest memory for the driver");
    let expected = Driver::new(&memory).lay(input);
    let mut queue = Queue::new(QUEUE_SIZE).expect("a queue of the backend's size");
    let address = |at: u64| (Some(at as u32), Some((at >> 32) as u32));
    let (low, high) = address(DESCRIPTOR_TABLE);
    queue.set_desc_table_address(low, high);
    let (low, high) = address(AVAIL_RING);
    queue.set_avail_ring_address(low, high);
    let (low, high) = address(USED_RING);
    queue.set_used_ring_address(low, high);
    queue.set_ready(true);
    assert!(queue.is_valid(&memory));
    let mut popped = 0;
    while let Some(chain) = queue.pop_descriptor_chain(&memory) {
        // The available ring holds at most a queue's worth of chains.
        assert!(popped < usize::from(QUEUE_SIZE), "more chains than entries");
        let descriptors: Vec<Descriptor> = chain.clone().collect();
        let result = Request::parse(chain, &memory, usize::from(QUEUE_SIZE));
        check(&memory, &descriptors, &result);
        match expected.get(popped).unwrap_or(&Expected::Unknown) {
            Expected::Accepted(request) => {
                assert_eq!(result.as_ref(), Ok(request), "a valid chain left as laid")
            }
            Expected::Rejected => assert!(result.is_err(), "an invalid chain was accepted"),
            Expected::Unknown => {}
        }
        popped += 1;
    }
}

/// What execution relies on, whatever the chain was.
fn check(memory: &GuestMemoryMmap<()>, chain: &[Descriptor], result: &Result<Request, Rejected>) {
    let request = match result {
        Ok(request) => request,
        Err(Rejected {
            status: Some(status),
            error,
        }) => {
            assert!(memory.check_range(*status, 1), "status outside memory");
            assert_ne!(error.status(), 0, "an error reported as success");
            return;
        }
        Err(Rejected {
            status: None,
            error,
        }) => {
            assert!(
                matches!(
                    error,
                    RequestError::NoStatus
                        | RequestError::BadGuestAddress
                        | RequestError::TooManyDescriptors
                ),
                "{error:?} without a status byte"
            );
            return;
        }
    };
    assert!(memory.check_range(request.status, 1));
    let last = chain.last().expect("an accepted chain has descriptors");
    assert!(last.is_write_only());
    assert_eq!(
        request.status,
        last.addr().unchecked_add(u64::from(last.len()) - 1)
    );
    let bytes = |writable: bool| -> u64 {
        chain
            .iter()
            .filter(|descriptor| descriptor.is_write_only() == writable)
            .map(|descriptor| u64::from(descriptor.len()))
            .sum()
    };
    let (readable, writable) = (bytes(false), bytes(true));
    let inside = |buffers: &[GuestBuffer]| {
        buffers.iter().all(|buffer| {
            buffer.length > 0 && memory.check_range(buffer.address, buffer.length as usize)
        })
    };
    let total = |buffers: &[GuestBuffer]| -> u64 {
        buffers.iter().map(|buffer| u64::from(buffer.length)).sum()
    };
    match &request.operation {
        Operation::Read { buffers, .. } => {
            assert!(inside(buffers));
            let data = total(buffers);
            assert!(data > 0 && data.is_multiple_of(SECTOR_SIZE));
            assert_eq!((readable, writable), (HEADER_BYTES, data + 1));
        }
        Operation::Write { buffers, .. } => {
            assert!(inside(buffers));
            let data = total(buffers);
            assert!(data > 0 && data.is_multiple_of(SECTOR_SIZE));
            assert_eq!((readable, writable), (HEADER_BYTES + data, 1));
        }
        Operation::Flush => assert_eq!((readable, writable), (HEADER_BYTES, 1)),
        Operation::GetId { buffers } => {
            assert!(inside(buffers));
            assert_eq!((readable, writable), (HEADER_BYTES, total(buffers) + 1));
        }
        Operation::Discard { ranges } | Operation::WriteZeroes { ranges } => {
            let zeroes = matches!(request.operation, Operation::WriteZeroes { .. });
            assert!(!ranges.is_empty() && ranges.len() <= MAX_SEGMENTS as usize);
            assert_eq!(
                (readable, writable),
                (HEADER_BYTES + SEGMENT_BYTES * ranges.len() as u64, 1)
            );
            for range in ranges {
                assert!(range.nr_sectors > 0 && range.nr_sectors <= MAX_SEGMENT_SECTORS);
                assert!(!range.unmap || zeroes);
            }
        }
    }
}

/// The driver's ring writer: it writes guest memory directly, so it can write anything.
struct Driver<'m> {
    memory: &'m GuestMemoryMmap<()>,
    /// The next free byte of the data area.
    next: u64,
    /// The data area ran out and was laid again from its start: earlier chains' bytes may
    /// be overwritten.
    wrapped: bool,
    /// The next free slot of the descriptor table.
    slot: u16,
}

/// A descriptor as the driver writes it into a table: any value in any field.
#[derive(Clone, Copy)]
struct TableEntry {
    address: u64,
    length: u32,
    flags: u16,
    next: u16,
}

impl TableEntry {
    fn bytes(&self) -> [u8; DESCRIPTOR_BYTES as usize] {
        let mut bytes = [0u8; DESCRIPTOR_BYTES as usize];
        bytes[..8].copy_from_slice(&self.address.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.length.to_le_bytes());
        bytes[12..14].copy_from_slice(&self.flags.to_le_bytes());
        bytes[14..].copy_from_slice(&self.next.to_le_bytes());
        bytes
    }
}

/// One piece of a request in guest memory.
#[derive(Clone, Copy)]
struct Piece {
    address: u64,
    length: u64,
}

impl<'m> Driver<'m> {
    fn new(memory: &'m GuestMemoryMmap<()>) -> Driver<'m> {
        Driver {
            memory,
            next: DATA,
            wrapped: false,
            slot: 0,
        }
    }

    fn write(&self, address: u64, bytes: &[u8]) {
        let room = MEMORY_BYTES.saturating_sub(address) as usize;
        let bytes = &bytes[..bytes.len().min(room)];
        self.memory
            .write_slice(bytes, GuestAddress(address))
            .expect("the driver writes inside guest memory");
    }

    /// `length` bytes of the data area, 16-aligned.
    fn take(&mut self, length: u64) -> u64 {
        let mut address = self.next.next_multiple_of(16);
        // Strictly below the end, so even an empty last piece has an address in memory.
        if address + length >= MEMORY_BYTES {
            self.wrapped = true;
            address = DATA;
        }
        self.next = address + length;
        address
    }

    /// Consecutive pieces of the given lengths.
    fn take_block(&mut self, lengths: &[u64]) -> Vec<Piece> {
        let mut address = self.take(lengths.iter().sum());
        lengths
            .iter()
            .map(|&length| {
                let piece = Piece { address, length };
                address += length;
                piece
            })
            .collect()
    }

    /// Lay every chain and publish them; what parse must return for each, in order.
    fn lay(mut self, input: &QueueInput) -> Vec<Expected> {
        let mut heads = Vec::new();
        let mut expected = Vec::new();
        for chain in &input.chains {
            let Some((head, meant)) = self.lay_chain(chain) else {
                break;
            };
            heads.push(head);
            expected.push(meant);
        }
        for (index, head) in heads.iter().enumerate() {
            self.write(AVAIL_RING + 4 + 2 * index as u64, &head.to_le_bytes());
        }
        let published = input.avail_index.0.unwrap_or(heads.len() as u16);
        self.write(AVAIL_RING + 2, &published.to_le_bytes());
        let pokes = input.pokes.0.as_deref().unwrap_or_default();
        for poke in pokes {
            let (base, size) = match poke.place {
                Place::DescriptorTable => (DESCRIPTOR_TABLE, AVAIL_RING - DESCRIPTOR_TABLE),
                Place::AvailRing => (AVAIL_RING, USED_RING - AVAIL_RING),
                Place::UsedRing => (USED_RING, DATA - USED_RING),
                Place::Data => (DATA, MEMORY_BYTES - DATA),
            };
            let length = poke.bytes.len().min(MAX_POKE_BYTES);
            self.write(base + u64::from(poke.offset) % size, &poke.bytes[..length]);
        }
        let laid_as_meant = !self.wrapped && pokes.is_empty() && input.avail_index.0.is_none();
        if laid_as_meant {
            expected
        } else {
            Vec::new()
        }
    }

    /// Lay one chain; its head and what parse must return for it. `None` when the
    /// descriptor table is full.
    fn lay_chain(&mut self, chain: &Chain) -> Option<(u16, Expected)> {
        let kind = chain.kind.named();
        let moves_data = matches!(
            kind,
            Kind::Read | Kind::Write | Kind::GetId | Kind::Other(_)
        );
        let data: Vec<u64> = if moves_data {
            chain
                .data
                .iter()
                .take(MAX_DATA_PIECES)
                .map(|length| match *length {
                    Length::Sectors(count) => u64::from(count) * SECTOR_SIZE,
                    Length::Bytes(count) => u64::from(count),
                })
                .collect()
        } else {
            Vec::new()
        };
        let segments: Vec<(u64, u32, u32)> = if matches!(kind, Kind::Discard | Kind::WriteZeroes) {
            chain
                .segments
                .iter()
                .take(MAX_SEGMENTS as usize + 1)
                .map(|segment| {
                    let count = match segment.sectors {
                        Count::Small(count) => u32::from(count),
                        Count::Any(count) => count,
                    };
                    let flags = match segment.flags {
                        SegmentFlags::None => 0,
                        SegmentFlags::Unmap => VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
                        SegmentFlags::Any(flags) => flags,
                    };
                    (segment.sector, count, flags)
                })
                .collect()
        } else {
            Vec::new()
        };
        let data_readable = kind == Kind::Write;
        // The device-readable block: header, segments, a write's data; the writable block:
        // the other data, then the status byte.
        let mut readable_lengths = vec![HEADER_BYTES];
        if !segments.is_empty() {
            readable_lengths.push(SEGMENT_BYTES * segments.len() as u64);
        }
        let mut writable_lengths = Vec::new();
        if data_readable {
            readable_lengths.extend(&data);
        } else {
            writable_lengths.extend(&data);
        }
        writable_lengths.push(1);
        let readable = self.take_block(&readable_lengths);
        let writable = self.take_block(&writable_lengths);
        let mut header = [0u8; HEADER_BYTES as usize];
        header[..4].copy_from_slice(&kind.value().to_le_bytes());
        header[8..].copy_from_slice(&chain.sector.to_le_bytes());
        self.write(readable[0].address, &header);
        if !segments.is_empty() {
            let bytes: Vec<u8> = segments
                .iter()
                .flat_map(|&(sector, count, flags)| {
                    sector
                        .to_le_bytes()
                        .into_iter()
                        .chain(count.to_le_bytes())
                        .chain(flags.to_le_bytes())
                })
                .collect();
            self.write(readable[1].address, &bytes);
        }
        let status = writable[writable.len() - 1].address;
        let data_pieces = if data_readable {
            &readable[readable.len() - data.len()..]
        } else {
            &writable[..data.len()]
        };
        let meant = meant(kind, chain, data_pieces, &segments);

        let framed = |pieces: &[Piece], flags: u16| -> Vec<TableEntry> {
            match chain.framing {
                Framing::Merged => vec![TableEntry {
                    address: pieces[0].address,
                    length: pieces.iter().map(|piece| piece.length).sum::<u64>() as u32,
                    flags,
                    next: 0,
                }],
                Framing::Separate | Framing::Indirect => pieces
                    .iter()
                    .map(|piece| TableEntry {
                        address: piece.address,
                        length: piece.length as u32,
                        flags,
                        next: 0,
                    })
                    .collect(),
            }
        };
        let mut descriptors = framed(&readable, 0);
        descriptors.extend(framed(&writable, VRING_DESC_F_WRITE as u16));
        let indirect = chain.framing == Framing::Indirect;
        let slots_needed = if indirect { 1 } else { descriptors.len() };
        if usize::from(self.slot) + slots_needed > usize::from(QUEUE_SIZE) {
            return None;
        }
        let first = if indirect { 0 } else { self.slot };
        let count = descriptors.len();
        for (index, descriptor) in descriptors.iter_mut().enumerate() {
            if index + 1 < count {
                descriptor.flags |= VRING_DESC_F_NEXT as u16;
                descriptor.next = first + index as u16 + 1;
            }
        }
        let edits = chain.edits.0.as_deref().unwrap_or_default();
        for edit in edits {
            let descriptor = &mut descriptors[usize::from(edit.descriptor) % count];
            match edit.change {
                Change::Address(address) => descriptor.address = address,
                Change::Length(length) => descriptor.length = length,
                Change::Flags(flags) => descriptor.flags = flags,
                Change::Next(next) => descriptor.next = next,
            }
        }
        let table: Vec<u8> = descriptors.iter().flat_map(TableEntry::bytes).collect();
        let head = self.slot;
        if indirect {
            let address = self.take(table.len() as u64);
            self.write(address, &table);
            let entry = TableEntry {
                address,
                length: table.len() as u32,
                flags: VRING_DESC_F_INDIRECT as u16,
                next: 0,
            };
            self.write(
                DESCRIPTOR_TABLE + DESCRIPTOR_BYTES * u64::from(head),
                &entry.bytes(),
            );
        } else {
            self.write(
                DESCRIPTOR_TABLE + DESCRIPTOR_BYTES * u64::from(head),
                &table,
            );
        }
        self.slot += slots_needed as u16;
        let expected = match meant {
            _ if !edits.is_empty() => Expected::Unknown,
            Some(operation) => Expected::Accepted(Request {
                operation,
                status: GuestAddress(status),
            }),
            None => Expected::Rejected,
        };
        Some((head, expected))
    }
}

/// The operation `chain` means when it is valid, laid with its data in `pieces` and its
/// segments as given; `None` for a request the device must refuse.
fn meant(
    kind: Kind,
    chain: &Chain,
    pieces: &[Piece],
    segments: &[(u64, u32, u32)],
) -> Option<Operation> {
    let data: u64 = pieces.iter().map(|piece| piece.length).sum();
    let buffers = match chain.framing {
        Framing::Merged if data > 0 => vec![GuestBuffer {
            address: GuestAddress(pieces[0].address),
            length: data as u32,
        }],
        Framing::Merged => Vec::new(),
        Framing::Separate | Framing::Indirect => pieces
            .iter()
            .filter(|piece| piece.length > 0)
            .map(|piece| GuestBuffer {
                address: GuestAddress(piece.address),
                length: piece.length as u32,
            })
            .collect(),
    };
    let sectors = data > 0 && data.is_multiple_of(SECTOR_SIZE);
    let sector = chain.sector;
    let ranges = |zeroes: bool| -> Option<Vec<Range>> {
        if segments.is_empty() || segments.len() > MAX_SEGMENTS as usize {
            return None;
        }
        segments
            .iter()
            .map(|&(sector, count, flags)| {
                let unmap = flags == VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
                let valid =
                    (1..=MAX_SEGMENT_SECTORS).contains(&count) && (flags == 0 || (unmap && zeroes));
                valid.then_some(Range {
                    sector,
                    nr_sectors: count,
                    unmap,
                })
            })
            .collect()
    };
    match kind {
        Kind::Read => sectors.then_some(Operation::Read { sector, buffers }),
        Kind::Write => sectors.then_some(Operation::Write { sector, buffers }),
        Kind::Flush => Some(Operation::Flush),
        Kind::GetId => (data > 0).then_some(Operation::GetId { buffers }),
        Kind::Discard => ranges(false).map(|ranges| Operation::Discard { ranges }),
        Kind::WriteZeroes => ranges(true).map(|ranges| Operation::WriteZeroes { ranges }),
        Kind::Other(_) => None,
    }
}

/// The seed corpus: one input per kind of request and framing, and the hostile cases the
/// backend has met or must meet (a loop, a head outside the table, an index far ahead, a
/// status byte the device may not write).
pub fn seeds() -> Vec<(&'static str, QueueInput)> {
    let chain = |kind, data: &[Length], framing| Chain {
        kind,
        sector: 8,
        data: data.to_vec(),
        segments: Vec::new(),
        framing,
        edits: Mostly(None),
    };
    let one = |chain: Chain| QueueInput {
        chains: vec![chain],
        avail_index: Mostly(None),
        pokes: Mostly(None),
    };
    let segments = |kind, flags| Chain {
        segments: vec![
            Segment {
                sector: 0,
                sectors: Count::Small(8),
                flags,
            },
            Segment {
                sector: 100,
                sectors: Count::Small(1),
                flags: SegmentFlags::None,
            },
        ],
        ..chain(kind, &[], Framing::Separate)
    };
    let edited = |descriptor, change| Chain {
        edits: Mostly(Some(vec![Edit { descriptor, change }])),
        ..chain(Kind::Read, &[Length::Sectors(8)], Framing::Separate)
    };
    let read = || chain(Kind::Read, &[Length::Sectors(8)], Framing::Separate);
    vec![
        ("read", one(read())),
        (
            "write_in_pieces",
            one(chain(
                Kind::Write,
                &[Length::Bytes(1024), Length::Bytes(0), Length::Sectors(1)],
                Framing::Separate,
            )),
        ),
        (
            "write_merged",
            one(chain(Kind::Write, &[Length::Sectors(2)], Framing::Merged)),
        ),
        (
            "read_indirect",
            one(chain(
                Kind::Read,
                &[Length::Sectors(1), Length::Sectors(3)],
                Framing::Indirect,
            )),
        ),
        ("flush", one(chain(Kind::Flush, &[], Framing::Separate))),
        (
            "get_id",
            one(chain(Kind::GetId, &[Length::Bytes(20)], Framing::Separate)),
        ),
        ("discard", one(segments(Kind::Discard, SegmentFlags::None))),
        (
            "write_zeroes_unmap",
            one(segments(Kind::WriteZeroes, SegmentFlags::Unmap)),
        ),
        (
            "unknown_type",
            one(chain(
                Kind::Other(99),
                &[Length::Sectors(1)],
                Framing::Separate,
            )),
        ),
        ("loop", one(edited(1, Change::Next(0)))),
        ("status_read_only", one(edited(2, Change::Flags(0)))),
        (
            "outside_memory",
            one(edited(1, Change::Address(u64::MAX - 8))),
        ),
        (
            "many_chains",
            QueueInput {
                chains: vec![read(); 8],
                avail_index: Mostly(None),
                pokes: Mostly(None),
            },
        ),
        (
            "head_outside_the_table",
            QueueInput {
                chains: vec![read(), read()],
                avail_index: Mostly(None),
                pokes: Mostly(Some(vec![Poke {
                    place: Place::AvailRing,
                    offset: 6,
                    bytes: vec![0xff, 0xff],
                }])),
            },
        ),
        (
            "index_far_ahead",
            QueueInput {
                chains: vec![read()],
                avail_index: Mostly(Some(0xffff)),
                pokes: Mostly(None),
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_driven_and_written() {
        let seeds = seeds();
        for (_, input) in &seeds {
            drive(input);
        }
        crate::write_corpus("virtio_request", &seeds).unwrap();
    }

    #[test]
    fn chains_left_as_laid_are_expected_exactly() {
        let memory =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEMORY_BYTES as usize)])
                .unwrap();
        let seeds = seeds();
        let (_, read) = &seeds[0];
        let expected = Driver::new(&memory).lay(read);
        assert_eq!(
            expected,
            vec![Expected::Accepted(Request {
                operation: Operation::Read {
                    sector: 8,
                    buffers: vec![GuestBuffer {
                        address: GuestAddress(DATA + 16),
                        length: 4096
                    }]
                },
                status: GuestAddress(DATA + 16 + 4096),
            })]
        );
    }
}
