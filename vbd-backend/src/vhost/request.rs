//! A virtio-blk request, parsed from its descriptor chain and validated before any I/O: the
//! header, the data buffers, the status byte, and every length against the sector size.
//!
//! The layout is not assumed (virtio 1.x lets a driver frame a request any way it likes):
//! the device-readable bytes are the 16-byte header and then the request's output, the
//! device-writable bytes are the request's input and then the status byte, the last byte
//! of the chain. Every guest range is checked against guest memory here, so execution
//! cannot meet an address outside it. The header and discard segments are copied in once.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use shared_abi::SECTOR_SIZE;

/// Bytes of the request header: type, reserved (ioprio), sector.
const HEADER_BYTES: u64 = 16;
/// Bytes of one discard or write-zeroes segment: sector, count, flags.
const SEGMENT_BYTES: u64 = 16;
/// Discard and write-zeroes segments per request, as advertised in the config space.
pub const MAX_SEGMENTS: u32 = 16;
/// Sectors per discard or write-zeroes segment, as advertised: 64 MiB. Execution goes in
/// smaller steps, each under its own translation ([`super::queue`]).
pub const MAX_SEGMENT_SECTORS: u32 = 1 << 17;
/// Bytes of data one read, write or get-id may move: 4 MiB, the bound QEMU and Cloud
/// Hypervisor keep too. One request pins its translation for as long as its I/O takes,
/// and every change of the VBD waits for it; a larger request is refused before any I/O.
pub const MAX_TRANSFER_BYTES: u64 = 4 << 20;

/// A range of guest memory the device reads or writes, checked to lie in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestBuffer {
    pub address: GuestAddress,
    pub length: u32,
}

/// One discard or write-zeroes segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub sector: u64,
    pub nr_sectors: u32,
    /// Write-zeroes may deallocate (`VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`).
    pub unmap: bool,
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    Read {
        sector: u64,
        buffers: Vec<GuestBuffer>,
    },
    Write {
        sector: u64,
        buffers: Vec<GuestBuffer>,
    },
    Flush,
    GetId {
        buffers: Vec<GuestBuffer>,
    },
    Discard {
        ranges: Vec<Range>,
    },
    WriteZeroes {
        ranges: Vec<Range>,
    },
}

/// A validated request and where its status byte goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub operation: Operation,
    pub status: GuestAddress,
}

/// Every way a request can fail, in parsing or in execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// The chain is longer than the queue allows.
    TooManyDescriptors,
    /// The chain does not end in a device-writable byte for the status.
    NoStatus,
    /// A device-readable descriptor follows a device-writable one.
    ReadableAfterWritable,
    /// A descriptor's range is not inside guest memory, or wraps.
    BadGuestAddress,
    /// Fewer than 16 device-readable bytes.
    ShortHeader,
    /// A request type this device does not implement.
    UnsupportedType(u32),
    /// Data in the direction the request type does not move data.
    UnexpectedData,
    /// A read, write or get-id without data.
    NoData,
    /// Read or write data that is not whole sectors.
    DataNotSectors,
    /// More data than one request may carry ([`MAX_TRANSFER_BYTES`]).
    TooLarge,
    /// Discard or write-zeroes data that is not whole segments.
    SegmentsNotWhole,
    /// More segments than advertised.
    TooManySegments,
    /// A segment of zero sectors, or of more than advertised.
    BadSegmentLength,
    /// A discard segment with the unmap flag, which only write-zeroes may carry.
    DiscardWithUnmap,
    /// Segment flags this device does not know.
    UnknownSegmentFlags,
    /// The backend is stopping: a request it has not started is failed, not left in the
    /// ring, where a VMM whose backend is gone would leave it unanswered for ever.
    Stopping,
    /// The VMM resumed rings this backend never started (it reconnected after the backend
    /// was restarted): what the guest believes about the disk is unknown here.
    Resumed,
    /// hv-vbd refused the request: read-only, out of range, or `ENOENT` once the VBD the
    /// socket was made for is gone (deleted, or its domain destroyed).
    Refused(shared_abi::Error),
    /// The disk failed the transfer.
    Io,
}

impl From<shared_abi::Error> for RequestError {
    /// A disk failure reported through hv-vbd's `EIO` is one; anything else is a refusal.
    fn from(error: shared_abi::Error) -> RequestError {
        match error {
            shared_abi::Error::Io => RequestError::Io,
            other => RequestError::Refused(other),
        }
    }
}

impl RequestError {
    /// The virtio status byte. One exhaustive match, with no `_` arm, so that a new error
    /// cannot silently become an I/O error.
    pub fn status(self) -> u8 {
        let status = match self {
            RequestError::UnsupportedType(_)
            | RequestError::DiscardWithUnmap
            | RequestError::UnknownSegmentFlags => VIRTIO_BLK_S_UNSUPP,
            RequestError::TooManyDescriptors
            | RequestError::NoStatus
            | RequestError::ReadableAfterWritable
            | RequestError::BadGuestAddress
            | RequestError::ShortHeader
            | RequestError::UnexpectedData
            | RequestError::NoData
            | RequestError::DataNotSectors
            | RequestError::TooLarge
            | RequestError::SegmentsNotWhole
            | RequestError::TooManySegments
            | RequestError::BadSegmentLength
            | RequestError::Stopping
            | RequestError::Resumed
            | RequestError::Refused(_)
            | RequestError::Io => VIRTIO_BLK_S_IOERR,
        };
        status as u8
    }
}

/// A chain that could not be accepted: its error and, when the chain has one, where the
/// status byte goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub status: Option<GuestAddress>,
    pub error: RequestError,
}

/// The buffers of `pieces` from byte `at` on, and the bytes before it (`None` when the
/// pieces hold fewer than `at` bytes).
fn split_at(pieces: &[GuestBuffer], at: u64) -> Option<(Vec<GuestBuffer>, Vec<GuestBuffer>)> {
    let mut before = Vec::new();
    let mut after = Vec::new();
    let mut left = at;
    for piece in pieces {
        let length = u64::from(piece.length);
        if left >= length {
            before.push(*piece);
            left -= length;
        } else {
            if left > 0 {
                before.push(GuestBuffer {
                    address: piece.address,
                    length: left as u32,
                });
            }
            after.push(GuestBuffer {
                address: piece.address.unchecked_add(left),
                length: (length - left) as u32,
            });
            left = 0;
        }
    }
    (left == 0).then_some((before, after))
}

fn total(pieces: &[GuestBuffer]) -> u64 {
    pieces.iter().map(|piece| u64::from(piece.length)).sum()
}

/// Copy exactly `out.len()` bytes from the start of `pieces`.
fn gather<M: GuestMemoryBackend>(
    memory: &M,
    pieces: &[GuestBuffer],
    out: &mut [u8],
) -> Result<(), RequestError> {
    let mut done = 0usize;
    for piece in pieces {
        if done == out.len() {
            break;
        }
        let count = (piece.length as usize).min(out.len() - done);
        memory
            .read_slice(&mut out[done..done + count], piece.address)
            .map_err(|_| RequestError::BadGuestAddress)?;
        done += count;
    }
    if done == out.len() {
        Ok(())
    } else {
        Err(RequestError::ShortHeader)
    }
}

impl Request {
    /// Parse the descriptors of one chain, in chain order, taking at most `max_descriptors`.
    pub fn parse<M: GuestMemoryBackend>(
        descriptors: impl IntoIterator<Item = Descriptor>,
        memory: &M,
        max_descriptors: usize,
    ) -> Result<Request, Rejected> {
        let without_status = |error| Rejected {
            status: None,
            error,
        };
        let mut chain = Vec::new();
        for descriptor in descriptors {
            if chain.len() == max_descriptors {
                return Err(without_status(RequestError::TooManyDescriptors));
            }
            chain.push(descriptor);
        }
        let status = match chain.last() {
            Some(last) if last.is_write_only() && last.len() > 0 => last
                .addr()
                .checked_add(u64::from(last.len()) - 1)
                .filter(|&status| memory.check_range(status, 1))
                .ok_or(without_status(RequestError::BadGuestAddress))?,
            _ => return Err(without_status(RequestError::NoStatus)),
        };
        let rejected = |error| Rejected {
            status: Some(status),
            error,
        };
        let first_writable = chain
            .iter()
            .position(Descriptor::is_write_only)
            .unwrap_or(chain.len());
        if chain[first_writable..]
            .iter()
            .any(|descriptor| !descriptor.is_write_only())
        {
            return Err(rejected(RequestError::ReadableAfterWritable));
        }
        for descriptor in &chain {
            let inside = descriptor
                .addr()
                .checked_add(u64::from(descriptor.len()))
                .is_some()
                && memory.check_range(descriptor.addr(), descriptor.len() as usize);
            if !inside {
                return Err(rejected(RequestError::BadGuestAddress));
            }
        }
        let buffers = |descriptors: &[Descriptor]| -> Vec<GuestBuffer> {
            descriptors
                .iter()
                .filter(|descriptor| descriptor.len() > 0)
                .map(|descriptor| GuestBuffer {
                    address: descriptor.addr(),
                    length: descriptor.len(),
                })
                .collect()
        };
        let readable = buffers(&chain[..first_writable]);
        let writable = buffers(&chain[first_writable..]);
        let (header_pieces, output) =
            split_at(&readable, HEADER_BYTES).ok_or(rejected(RequestError::ShortHeader))?;
        let (input, _status_byte) =
            split_at(&writable, total(&writable) - 1).ok_or(rejected(RequestError::NoStatus))?;
        let mut header = [0u8; HEADER_BYTES as usize];
        gather(memory, &header_pieces, &mut header).map_err(rejected)?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        let operation = Self::operation(kind, sector, output, input, memory).map_err(rejected)?;
        Ok(Request { operation, status })
    }

    fn operation<M: GuestMemoryBackend>(
        kind: u32,
        sector: u64,
        output: Vec<GuestBuffer>,
        input: Vec<GuestBuffer>,
        memory: &M,
    ) -> Result<Operation, RequestError> {
        let data = |buffers: Vec<GuestBuffer>, other: &[GuestBuffer], sectors: bool| {
            if !other.is_empty() {
                return Err(RequestError::UnexpectedData);
            }
            let bytes = total(&buffers);
            if bytes == 0 {
                return Err(RequestError::NoData);
            }
            if bytes > MAX_TRANSFER_BYTES {
                return Err(RequestError::TooLarge);
            }
            if sectors && !bytes.is_multiple_of(SECTOR_SIZE) {
                return Err(RequestError::DataNotSectors);
            }
            Ok(buffers)
        };
        match kind {
            VIRTIO_BLK_T_IN => Ok(Operation::Read {
                sector,
                buffers: data(input, &output, true)?,
            }),
            VIRTIO_BLK_T_OUT => Ok(Operation::Write {
                sector,
                buffers: data(output, &input, true)?,
            }),
            VIRTIO_BLK_T_FLUSH if output.is_empty() && input.is_empty() => Ok(Operation::Flush),
            VIRTIO_BLK_T_FLUSH => Err(RequestError::UnexpectedData),
            VIRTIO_BLK_T_GET_ID => Ok(Operation::GetId {
                buffers: data(input, &output, false)?,
            }),
            VIRTIO_BLK_T_DISCARD => Ok(Operation::Discard {
                ranges: Self::ranges(output, &input, false, memory)?,
            }),
            VIRTIO_BLK_T_WRITE_ZEROES => Ok(Operation::WriteZeroes {
                ranges: Self::ranges(output, &input, true, memory)?,
            }),
            other => Err(RequestError::UnsupportedType(other)),
        }
    }

    /// The segments of a discard or write-zeroes request, copied in once and checked.
    fn ranges<M: GuestMemoryBackend>(
        output: Vec<GuestBuffer>,
        input: &[GuestBuffer],
        zeroes: bool,
        memory: &M,
    ) -> Result<Vec<Range>, RequestError> {
        if !input.is_empty() {
            return Err(RequestError::UnexpectedData);
        }
        let bytes = total(&output);
        if bytes == 0 || !bytes.is_multiple_of(SEGMENT_BYTES) {
            return Err(RequestError::SegmentsNotWhole);
        }
        if bytes / SEGMENT_BYTES > u64::from(MAX_SEGMENTS) {
            return Err(RequestError::TooManySegments);
        }
        let mut raw = vec![0u8; bytes as usize];
        gather(memory, &output, &mut raw)?;
        raw.chunks_exact(SEGMENT_BYTES as usize)
            .map(|segment| {
                let field = |range: std::ops::Range<usize>| {
                    segment[range]
                        .iter()
                        .rev()
                        .fold(0u64, |value, &byte| (value << 8) | u64::from(byte))
                };
                let nr_sectors = field(8..12) as u32;
                let flags = field(12..16) as u32;
                if nr_sectors == 0 || nr_sectors > MAX_SEGMENT_SECTORS {
                    return Err(RequestError::BadSegmentLength);
                }
                if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
                    return Err(RequestError::UnknownSegmentFlags);
                }
                let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
                if unmap && !zeroes {
                    return Err(RequestError::DiscardWithUnmap);
                }
                Ok(Range {
                    sector: field(0..8),
                    nr_sectors,
                    unmap,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::GuestMemoryMmap;

    const MEMORY_BYTES: u64 = 0x10000;

    fn memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_BYTES as usize)]).unwrap()
    }

    fn readable(address: u64, length: u32) -> Descriptor {
        Descriptor::new(address, length, 0, 0)
    }

    fn writable(address: u64, length: u32) -> Descriptor {
        Descriptor::new(address, length, VRING_DESC_F_WRITE as u16, 0)
    }

    /// Write a header at 0x100 and return its descriptor.
    fn header(memory: &GuestMemoryMmap<()>, kind: u32, sector: u64) -> Descriptor {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&kind.to_le_bytes());
        bytes[8..].copy_from_slice(&sector.to_le_bytes());
        memory.write_slice(&bytes, GuestAddress(0x100)).unwrap();
        readable(0x100, 16)
    }

    fn segments(memory: &GuestMemoryMmap<()>, segments: &[(u64, u32, u32)]) -> Descriptor {
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
        memory.write_slice(&bytes, GuestAddress(0x200)).unwrap();
        readable(0x200, bytes.len() as u32)
    }

    fn status() -> Descriptor {
        writable(0x80, 1)
    }

    fn parse(chain: Vec<Descriptor>, memory: &GuestMemoryMmap<()>) -> Result<Request, Rejected> {
        Request::parse(chain, memory, 256)
    }

    fn refused(error: RequestError) -> Result<Request, Rejected> {
        Err(Rejected {
            status: Some(GuestAddress(0x80)),
            error,
        })
    }

    #[test]
    fn a_linux_style_read_parses() {
        let memory = memory();
        let chain = vec![
            header(&memory, VIRTIO_BLK_T_IN, 7),
            writable(0x1000, 4096),
            status(),
        ];
        assert_eq!(
            parse(chain, &memory),
            Ok(Request {
                operation: Operation::Read {
                    sector: 7,
                    buffers: vec![GuestBuffer {
                        address: GuestAddress(0x1000),
                        length: 4096
                    }]
                },
                status: GuestAddress(0x80),
            })
        );
    }

    #[test]
    fn any_layout_splits_header_data_and_status_out_of_shared_descriptors() {
        let memory = memory();
        header(&memory, VIRTIO_BLK_T_OUT, 3);
        // Header and data in one descriptor; data and status in one descriptor.
        let chain = vec![readable(0x100, 16 + 512)];
        assert_eq!(
            parse(chain, &memory),
            Err(Rejected {
                status: None,
                error: RequestError::NoStatus
            })
        );
        let chain = vec![readable(0x100, 16 + 512), writable(0x2000, 1)];
        let request = parse(chain, &memory).unwrap();
        assert_eq!(
            request.operation,
            Operation::Write {
                sector: 3,
                buffers: vec![GuestBuffer {
                    address: GuestAddress(0x110),
                    length: 512
                }]
            }
        );
        header(&memory, VIRTIO_BLK_T_IN, 3);
        let chain = vec![
            readable(0x100, 8),
            readable(0x108, 8),
            writable(0x3000, 1024 + 1),
        ];
        let request = parse(chain, &memory).unwrap();
        assert_eq!(request.status, GuestAddress(0x3000 + 1024));
        assert_eq!(
            request.operation,
            Operation::Read {
                sector: 3,
                buffers: vec![GuestBuffer {
                    address: GuestAddress(0x3000),
                    length: 1024
                }]
            }
        );
    }

    #[test]
    fn one_negative_test_per_error() {
        let memory = memory();
        let data = writable(0x1000, 512);
        let in_header = || header(&memory, VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            Request::parse(vec![in_header(), data, status()], &memory, 2),
            Err(Rejected {
                status: None,
                error: RequestError::TooManyDescriptors
            })
        );
        assert_eq!(
            parse(vec![in_header(), writable(0x1000, 513)], &memory).map(|request| request.status),
            Ok(GuestAddress(0x1000 + 512)),
            "without a separate status descriptor, the last byte is the status"
        );
        assert_eq!(
            parse(vec![in_header(), readable(0x1000, 512)], &memory),
            Err(Rejected {
                status: None,
                error: RequestError::NoStatus
            })
        );
        assert_eq!(
            parse(vec![in_header(), writable(MEMORY_BYTES, 1)], &memory),
            Err(Rejected {
                status: None,
                error: RequestError::BadGuestAddress
            })
        );
        assert_eq!(
            parse(
                vec![in_header(), data, readable(0x300, 16), status()],
                &memory
            ),
            refused(RequestError::ReadableAfterWritable)
        );
        assert_eq!(
            parse(
                vec![in_header(), writable(MEMORY_BYTES - 256, 512), status()],
                &memory
            ),
            refused(RequestError::BadGuestAddress)
        );
        assert_eq!(
            parse(
                vec![in_header(), writable(u64::MAX - 8, 512), status()],
                &memory
            ),
            refused(RequestError::BadGuestAddress)
        );
        assert_eq!(
            parse(vec![readable(0x100, 15), data, status()], &memory),
            refused(RequestError::ShortHeader)
        );
        assert_eq!(
            parse(vec![header(&memory, 99, 0), data, status()], &memory),
            refused(RequestError::UnsupportedType(99))
        );
        assert_eq!(
            parse(
                vec![in_header(), readable(0x300, 512), data, status()],
                &memory
            ),
            refused(RequestError::UnexpectedData)
        );
        assert_eq!(
            parse(vec![in_header(), status()], &memory),
            refused(RequestError::NoData)
        );
        assert_eq!(
            parse(vec![in_header(), writable(0x1000, 500), status()], &memory),
            refused(RequestError::DataNotSectors)
        );
        assert_eq!(
            parse(
                vec![header(&memory, VIRTIO_BLK_T_FLUSH, 0), data, status()],
                &memory
            ),
            refused(RequestError::UnexpectedData)
        );
        let discard = || header(&memory, VIRTIO_BLK_T_DISCARD, 0);
        assert_eq!(
            parse(vec![discard(), readable(0x200, 24), status()], &memory),
            refused(RequestError::SegmentsNotWhole)
        );
        assert_eq!(
            parse(vec![discard(), status()], &memory),
            refused(RequestError::SegmentsNotWhole)
        );
        let many = vec![(0, 1, 0); MAX_SEGMENTS as usize + 1];
        assert_eq!(
            parse(vec![discard(), segments(&memory, &many), status()], &memory),
            refused(RequestError::TooManySegments)
        );
        assert_eq!(
            parse(
                vec![discard(), segments(&memory, &[(0, 0, 0)]), status()],
                &memory
            ),
            refused(RequestError::BadSegmentLength)
        );
        assert_eq!(
            parse(
                vec![
                    discard(),
                    segments(&memory, &[(0, MAX_SEGMENT_SECTORS + 1, 0)]),
                    status()
                ],
                &memory
            ),
            refused(RequestError::BadSegmentLength)
        );
        assert_eq!(
            parse(
                vec![discard(), segments(&memory, &[(0, 8, 1)]), status()],
                &memory
            ),
            refused(RequestError::DiscardWithUnmap)
        );
        assert_eq!(
            parse(
                vec![discard(), segments(&memory, &[(0, 8, 2)]), status()],
                &memory
            ),
            refused(RequestError::UnknownSegmentFlags)
        );
        let zeroes = header(&memory, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        assert_eq!(
            parse(
                vec![
                    zeroes,
                    segments(&memory, &[(9, 8, 1), (100, 1, 0)]),
                    status()
                ],
                &memory
            )
            .map(|request| request.operation),
            Ok(Operation::WriteZeroes {
                ranges: vec![
                    Range {
                        sector: 9,
                        nr_sectors: 8,
                        unmap: true
                    },
                    Range {
                        sector: 100,
                        nr_sectors: 1,
                        unmap: false
                    }
                ]
            })
        );
    }

    #[test]
    fn a_transfer_of_the_most_bytes_parses_and_one_sector_more_is_too_large() {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(
            GuestAddress(0),
            MAX_TRANSFER_BYTES as usize + 0x10000,
        )])
        .unwrap();
        let in_header = header(&memory, VIRTIO_BLK_T_IN, 0);
        let most = MAX_TRANSFER_BYTES as u32;
        let read = |length| parse(vec![in_header, writable(0x1000, length), status()], &memory);
        assert_eq!(
            read(most).map(|request| request.operation),
            Ok(Operation::Read {
                sector: 0,
                buffers: vec![GuestBuffer {
                    address: GuestAddress(0x1000),
                    length: most
                }]
            })
        );
        assert_eq!(read(most + 512), refused(RequestError::TooLarge));
        let out_header = header(&memory, VIRTIO_BLK_T_OUT, 0);
        let split = vec![
            out_header,
            readable(0x1000, most / 2),
            readable(0x1000 + u64::from(most / 2), most / 2 + 512),
            status(),
        ];
        assert_eq!(parse(split, &memory), refused(RequestError::TooLarge));
        let id_header = header(&memory, VIRTIO_BLK_T_GET_ID, 0);
        assert_eq!(
            parse(
                vec![id_header, writable(0x1000, most + 1), status()],
                &memory
            ),
            refused(RequestError::TooLarge)
        );
    }

    #[test]
    fn a_segment_of_the_most_sectors_parses() {
        let memory = memory();
        let zeroes = header(&memory, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        let most = segments(&memory, &[(5, MAX_SEGMENT_SECTORS, 0)]);
        assert_eq!(
            parse(vec![zeroes, most, status()], &memory).map(|request| request.operation),
            Ok(Operation::WriteZeroes {
                ranges: vec![Range {
                    sector: 5,
                    nr_sectors: MAX_SEGMENT_SECTORS,
                    unmap: false
                }]
            })
        );
    }

    #[test]
    fn statuses_follow_the_error() {
        assert_eq!(
            RequestError::UnsupportedType(2).status(),
            VIRTIO_BLK_S_UNSUPP as u8
        );
        assert_eq!(
            RequestError::DiscardWithUnmap.status(),
            VIRTIO_BLK_S_UNSUPP as u8
        );
        assert_eq!(
            RequestError::UnknownSegmentFlags.status(),
            VIRTIO_BLK_S_UNSUPP as u8
        );
        assert_eq!(RequestError::Stopping.status(), VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(RequestError::Resumed.status(), VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(
            RequestError::Refused(shared_abi::Error::ReadOnly).status(),
            VIRTIO_BLK_S_IOERR as u8
        );
        assert_eq!(
            RequestError::DataNotSectors.status(),
            VIRTIO_BLK_S_IOERR as u8
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// A well-formed read or write of any size and split survives parsing intact: the
        /// buffers are exactly the data descriptors.
        #[test]
        fn well_formed_transfers_keep_their_buffers(
            write in any::<bool>(),
            sector in any::<u64>(),
            sectors in proptest::collection::vec(1u32..4, 1..6),
        ) {
            let memory = memory();
            let kind = if write { VIRTIO_BLK_T_OUT } else { VIRTIO_BLK_T_IN };
            let mut chain = vec![header(&memory, kind, sector)];
            let mut expected = Vec::new();
            let mut address = 0x1000u64;
            for count in sectors {
                let length = count * 512;
                chain.push(if write { readable(address, length) } else { writable(address, length) });
                expected.push(GuestBuffer { address: GuestAddress(address), length });
                address += u64::from(length) + 64;
            }
            chain.push(status());
            let request = parse(chain, &memory).unwrap();
            let operation = if write {
                Operation::Write { sector, buffers: expected }
            } else {
                Operation::Read { sector, buffers: expected }
            };
            prop_assert_eq!(request.operation, operation);
        }
    }
}
