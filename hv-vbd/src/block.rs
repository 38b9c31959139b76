//! The block path shared by every embedder: a guest's request becomes a validated
//! [`Request`] before anything else happens, [`crate::VbdTable::translate`] turns it into
//! physical [`Segment`]s, and [`Transfers`] pairs those with the request's buffers, so the
//! embedder is left with its transport on one side and `read_at`/`write_at` on the other.

use shared_abi::{frame::MAX_BLOCK_SECTORS, wire, DeviceNumber, Error, SECTOR_SIZE};

use crate::inflight::InFlight;

/// Access a block request asks for. Discard and write-zeroes change the disk, so they ask
/// for [`Access::Write`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// A validated block request on one VBD: at least one sector, and its end (in sectors and
/// in bytes) fits in a `u64`. Built only by the checking constructors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    access: Access,
    sector: u64,
    nr_sectors: u64,
}

impl Request {
    /// `EINVAL` for zero sectors, `ERANGE` when the end in sectors or bytes overflows.
    pub fn new(access: Access, sector: u64, nr_sectors: u64) -> Result<Request, Error> {
        if nr_sectors == 0 {
            return Err(Error::InvalidArgument);
        }
        sector
            .checked_add(nr_sectors)
            .and_then(|end| end.checked_mul(SECTOR_SIZE))
            .ok_or(Error::OutOfRange)?;
        Ok(Request {
            access,
            sector,
            nr_sectors,
        })
    }

    /// A request of `bytes` bytes from `sector`: `EINVAL` unless a non-zero whole number of
    /// sectors.
    pub fn from_bytes(access: Access, sector: u64, bytes: u64) -> Result<Request, Error> {
        if !bytes.is_multiple_of(SECTOR_SIZE) {
            return Err(Error::InvalidArgument);
        }
        Request::new(access, sector, bytes / SECTOR_SIZE)
    }

    /// The request of a block frame, whose payload after the head is `data_bytes` long:
    /// `E2BIG` past [`MAX_BLOCK_SECTORS`], `EINVAL` unless a write carries exactly its data
    /// and a read carries none.
    pub fn from_frame(
        head: &wire::BlockRequest,
        access: Access,
        data_bytes: usize,
    ) -> Result<(DeviceNumber, Request), Error> {
        if head.nr_sectors > MAX_BLOCK_SECTORS {
            return Err(Error::TooBig);
        }
        let request = Request::new(access, head.sector, u64::from(head.nr_sectors))?;
        let expected = match access {
            Access::Read => 0,
            Access::Write => request.bytes(),
        };
        if data_bytes as u64 != expected {
            return Err(Error::InvalidArgument);
        }
        Ok((DeviceNumber::from_raw(head.vdevice), request))
    }

    pub fn access(&self) -> Access {
        self.access
    }

    pub fn sector(&self) -> u64 {
        self.sector
    }

    pub fn nr_sectors(&self) -> u64 {
        self.nr_sectors
    }

    /// The first sector past the request; cannot overflow.
    pub fn end_sector(&self) -> u64 {
        self.sector + self.nr_sectors
    }

    /// The request's length in bytes; cannot overflow.
    pub fn bytes(&self) -> u64 {
        self.nr_sectors * SECTOR_SIZE
    }
}

/// One piece of a translated request: a physical range, in request order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub device: DeviceNumber,
    pub sector: u64,
    pub nr_sectors: u64,
}

/// A translated request: its segments, and the in-flight registration that a change
/// removing these extents waits for. Hold it until the I/O is done.
#[derive(Debug)]
#[must_use = "the I/O must be done while the translation is held"]
pub struct Translation<'s, 't> {
    segments: &'s [Segment],
    in_flight: InFlight<'t>,
}

impl<'s, 't> Translation<'s, 't> {
    pub(crate) fn new(segments: &'s [Segment], in_flight: InFlight<'t>) -> Self {
        Translation {
            segments,
            in_flight,
        }
    }

    /// Another registration of this I/O, for whatever does the I/O to own: a change that
    /// removes these extents waits for it as for the translation, so an I/O submitted to a
    /// device that finishes on its own time (an io_uring, a DMA engine) can carry its
    /// registration with it and let go of it only at its completion, whatever happens to
    /// the translation meanwhile.
    pub fn registration(&self) -> InFlight<'t> {
        self.in_flight.clone()
    }

    /// The physical segments, in request order.
    pub fn segments(&self) -> &'s [Segment] {
        self.segments
    }

    /// The transfers of I/O against buffers of the given lengths, which together must be the
    /// request's length.
    pub fn transfers<B: IntoIterator<Item = usize>>(
        &self,
        buffers: B,
    ) -> Transfers<'s, B::IntoIter> {
        Transfers::new(self.segments, buffers)
    }
}

/// One contiguous transfer: `length` bytes between `device` at byte `disk_offset` and
/// buffer number `buffer` at byte `buffer_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub device: DeviceNumber,
    pub disk_offset: u64,
    pub buffer: usize,
    pub buffer_offset: usize,
    pub length: usize,
}

/// Walks segments and buffers together, splitting at the boundaries of both: a request's
/// data may be scattered over guest buffers (a virtio descriptor chain) that do not line up
/// with its extents. Yields `EINVAL` once, then ends, when the buffers run out before the
/// segments; buffers left over after the segments are not the walk's concern (the request
/// was built from their total). Bounded: every step consumes bytes of both.
pub struct Transfers<'s, B> {
    segments: core::slice::Iter<'s, Segment>,
    buffers: B,
    /// The current segment: device, next byte offset, bytes left.
    segment: Option<(DeviceNumber, u64, u64)>,
    /// The current buffer: index, next offset, bytes left.
    buffer: Option<(usize, usize, usize)>,
    next_buffer: usize,
    failed: bool,
}

impl<'s, B: Iterator<Item = usize>> Transfers<'s, B> {
    pub fn new(segments: &'s [Segment], buffers: impl IntoIterator<IntoIter = B>) -> Self {
        Transfers {
            segments: segments.iter(),
            buffers: buffers.into_iter(),
            segment: None,
            buffer: None,
            next_buffer: 0,
            failed: false,
        }
    }
}

impl<B: Iterator<Item = usize>> Iterator for Transfers<'_, B> {
    type Item = Result<Transfer, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let (device, disk_offset, segment_left) = match self.segment {
            Some(current) if current.2 != 0 => current,
            _ => {
                let next = self.segments.next()?;
                // Segments lie inside registered disks, whose byte sizes fit in a u64.
                let current = (
                    next.device,
                    next.sector.saturating_mul(SECTOR_SIZE),
                    next.nr_sectors.saturating_mul(SECTOR_SIZE),
                );
                self.segment = Some(current);
                current
            }
        };
        let (buffer, buffer_offset, buffer_left) = match self.buffer {
            Some(current) if current.2 != 0 => current,
            _ => loop {
                let Some(length) = self.buffers.next() else {
                    self.failed = true;
                    return Some(Err(Error::InvalidArgument));
                };
                let index = self.next_buffer;
                self.next_buffer += 1;
                if length != 0 {
                    break (index, 0, length);
                }
            },
        };
        let length =
            usize::try_from(segment_left).map_or(buffer_left, |left| left.min(buffer_left));
        self.segment = Some((
            device,
            disk_offset + length as u64,
            segment_left - length as u64,
        ));
        self.buffer = Some((buffer, buffer_offset + length, buffer_left - length));
        Some(Ok(Transfer {
            device,
            disk_offset,
            buffer,
            buffer_offset,
            length,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_validation() {
        assert_eq!(
            Request::new(Access::Read, 0, 0),
            Err(Error::InvalidArgument)
        );
        assert_eq!(
            Request::new(Access::Read, u64::MAX, 1),
            Err(Error::OutOfRange)
        );
        assert_eq!(
            Request::new(Access::Read, u64::MAX / 512, 1),
            Err(Error::OutOfRange)
        );
        assert_eq!(
            Request::from_bytes(Access::Write, 0, 513),
            Err(Error::InvalidArgument)
        );
        assert_eq!(
            Request::from_bytes(Access::Write, 0, 0),
            Err(Error::InvalidArgument)
        );
        let request = Request::from_bytes(Access::Write, 7, 1024).unwrap();
        assert_eq!(
            (request.sector(), request.nr_sectors(), request.end_sector()),
            (7, 2, 9)
        );
        assert_eq!(request.bytes(), 1024);
    }

    #[test]
    fn frame_requests_carry_exactly_their_data() {
        let head = wire::BlockRequest {
            vdevice: 202 << 20,
            nr_sectors: 2,
            sector: 5,
        };
        let (vdevice, request) = Request::from_frame(&head, Access::Write, 1024).unwrap();
        assert_eq!(vdevice, DeviceNumber::from_raw(202 << 20));
        assert_eq!(request, Request::new(Access::Write, 5, 2).unwrap());
        assert_eq!(
            Request::from_frame(&head, Access::Write, 1023),
            Err(Error::InvalidArgument)
        );
        assert_eq!(
            Request::from_frame(&head, Access::Read, 1),
            Err(Error::InvalidArgument)
        );
        let huge = wire::BlockRequest {
            nr_sectors: MAX_BLOCK_SECTORS + 1,
            ..head
        };
        assert_eq!(
            Request::from_frame(&huge, Access::Read, 0),
            Err(Error::TooBig)
        );
        let empty = wire::BlockRequest {
            nr_sectors: 0,
            ..head
        };
        assert_eq!(
            Request::from_frame(&empty, Access::Read, 0),
            Err(Error::InvalidArgument)
        );
    }

    #[test]
    fn buffers_that_run_out_are_einval_once() {
        let segments = [Segment {
            device: DeviceNumber::from_raw(1),
            sector: 0,
            nr_sectors: 2,
        }];
        let transfers: Vec<_> = Transfers::new(&segments, [512]).collect();
        assert_eq!(transfers.len(), 2);
        assert_eq!(transfers[1], Err(Error::InvalidArgument));
    }

    proptest! {
        /// Against a model: expand segments and buffers to one entry per byte and zip them.
        #[test]
        fn transfers_pair_every_byte_in_order(
            segments in proptest::collection::vec((0u32..3, 0u64..100, 1u64..4), 1..6),
            cuts in proptest::collection::vec(0usize..600, 0..6),
        ) {
            let segments: Vec<Segment> = segments
                .into_iter()
                .map(|(device, sector, nr_sectors)| Segment { device: DeviceNumber::from_raw(device), sector, nr_sectors })
                .collect();
            let total: usize = segments.iter().map(|segment| segment.nr_sectors as usize * 512).sum();
            // Buffers: the total cut at arbitrary points, zero-length buffers included.
            let mut points: Vec<usize> = cuts.into_iter().map(|cut| cut.min(total)).collect();
            points.push(0);
            points.push(total);
            points.sort_unstable();
            let buffers: Vec<usize> = points.windows(2).map(|pair| pair[1] - pair[0]).collect();

            let disk_bytes: Vec<(DeviceNumber, u64)> = segments
                .iter()
                .flat_map(|segment| (0..segment.nr_sectors * 512).map(move |byte| (segment.device, segment.sector * 512 + byte)))
                .collect();
            let buffer_bytes: Vec<(usize, usize)> = buffers
                .iter()
                .enumerate()
                .flat_map(|(index, &length)| (0..length).map(move |byte| (index, byte)))
                .collect();
            let mut walked = Vec::new();
            for transfer in Transfers::new(&segments, buffers.iter().copied()) {
                let transfer = transfer.unwrap();
                prop_assert!(transfer.length > 0);
                for byte in 0..transfer.length {
                    walked.push(((transfer.device, transfer.disk_offset + byte as u64), (transfer.buffer, transfer.buffer_offset + byte)));
                }
            }
            let expected: Vec<_> = disk_bytes.into_iter().zip(buffer_bytes).collect();
            prop_assert_eq!(walked, expected);
        }
    }
}
