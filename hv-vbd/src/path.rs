//! The block path's one loop, for every embedder: translate a request, walk its transfers
//! over the caller's buffers, and do each transfer's I/O while the translation is held, so
//! a change that removes the extents is answered only after the last transfer is done.
//!
//! The segments go into room the embedder owns ([`SegmentRoom`]): a fixed slice, or a
//! buffer it grows when a request crosses more extents than it holds. hv-vbd asks for more
//! room and never allocates it.

use shared_abi::Error;

use crate::block::{Request, Segment, Transfer};
use crate::inflight::IoContext;
use crate::table::{VbdId, VbdRef, VbdTable};

/// The VBD a request goes to: named, and looked up at each translation (the frame channel,
/// whose requests name their VBD), or pinned (a socket made for one VBD, which must fail
/// once that VBD is gone, whatever is created under its name since).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'v> {
    Named(VbdId),
    Pinned(&'v VbdRef),
}

impl From<VbdId> for Target<'_> {
    fn from(id: VbdId) -> Self {
        Target::Named(id)
    }
}

impl<'v> From<&'v VbdRef> for Target<'v> {
    fn from(vbd: &'v VbdRef) -> Self {
        Target::Pinned(vbd)
    }
}

/// Where a translation writes its segments.
pub trait SegmentRoom {
    /// The room there is now.
    fn segments(&mut self) -> &mut [Segment];

    /// Make room for at least `wanted` segments (more is fine); `false` when the room
    /// cannot grow, and the request then fails with `E2BIG`.
    fn grow(&mut self, wanted: usize) -> bool;
}

/// A fixed buffer: a request with more segments than it holds fails with `E2BIG`.
impl SegmentRoom for [Segment] {
    fn segments(&mut self) -> &mut [Segment] {
        self
    }

    fn grow(&mut self, _wanted: usize) -> bool {
        false
    }
}

impl<const DOMAINS: usize, const VBDS: usize, const EXTENTS: usize, const DISKS: usize>
    VbdTable<DOMAINS, VBDS, EXTENTS, DISKS>
{
    /// Translate `request` on `target` into `room`, then call `each` with every
    /// [`Transfer`] against buffers of the lengths `buffers` yields (together the request's
    /// length), in order, all while the translation is held: a change removing these
    /// extents is complete only after this returns. The first error, from the translation,
    /// the walk (`EINVAL` when the buffers run out) or `each`, ends the walk and is
    /// returned.
    ///
    /// When `room` is too small it is asked to grow, by a factor of four each time, up to
    /// the most segments a request can have (one per sector, and no more than the table
    /// has extents), so this ends.
    pub fn transfer<'t, R, E>(
        &'t self,
        context: &IoContext<'t>,
        target: Target<'_>,
        request: &Request,
        room: &mut R,
        buffers: impl IntoIterator<Item = usize>,
        mut each: impl FnMut(Transfer) -> Result<(), E>,
    ) -> Result<(), E>
    where
        R: SegmentRoom + ?Sized,
        E: From<Error>,
    {
        let most = usize::try_from(request.nr_sectors())
            .unwrap_or(usize::MAX)
            .min(EXTENTS);
        loop {
            let segments = room.segments();
            let had = segments.len();
            let translated = match target {
                Target::Named(id) => self.translate(context, id, request, segments),
                Target::Pinned(vbd) => self.translate_pinned(context, vbd, request, segments),
            };
            match translated {
                Ok(translation) => {
                    return translation
                        .transfers(buffers)
                        .try_for_each(|transfer| each(transfer?));
                }
                Err(Error::TooBig) if had < most => {}
                Err(error) => return Err(error.into()),
            }
            let wanted = had.saturating_mul(4).max(had + 1).min(most);
            // Room that did not grow would retry for ever.
            if !room.grow(wanted) || room.segments().len() <= had {
                return Err(Error::TooBig.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Access, Disk, SharingLevel};
    use shared_abi::wire::Extent;
    use shared_abi::{DeviceNumber, Label, Mode, DOM0};

    type Table = VbdTable<2, 2, 64, 2>;

    fn hda() -> DeviceNumber {
        DeviceNumber::from_name("hda").unwrap()
    }

    fn xvda() -> VbdId {
        VbdId {
            domain: 1,
            vdevice: DeviceNumber::from_name("xvda").unwrap(),
        }
    }

    /// A table with hda (1000 sectors) and xvda of domain 1 made of `extents` of hda,
    /// `(start, count)` each.
    fn table_with(extents: &[(u64, u64)]) -> Table {
        let table = Table::new(SharingLevel::Unrestricted);
        table
            .register_disk(Disk {
                device: hda(),
                sectors: 1000,
            })
            .unwrap();
        table
            .create(
                DOM0,
                xvda(),
                Mode::READ | Mode::WRITE,
                Label::new("").unwrap(),
            )
            .unwrap();
        let extents = extents
            .iter()
            .map(|&(start, count)| Extent::new(hda(), start, count));
        table
            .set_extents(DOM0, xvda(), extents, SharingLevel::Unrestricted)
            .unwrap()
            .fence
            .wait(|| {});
        table
    }

    /// Room that grows as asked, up to `limit`, and counts how often it was asked.
    struct Growing {
        segments: Vec<Segment>,
        limit: usize,
        asked: Vec<usize>,
    }

    impl SegmentRoom for Growing {
        fn segments(&mut self) -> &mut [Segment] {
            &mut self.segments
        }

        fn grow(&mut self, wanted: usize) -> bool {
            self.asked.push(wanted);
            if wanted > self.limit {
                return false;
            }
            self.segments.resize(wanted, Segment::default());
            true
        }
    }

    /// The disk offsets and lengths the walk hands out.
    fn walk(
        table: &Table,
        target: Target<'_>,
        request: &Request,
        room: &mut (impl SegmentRoom + ?Sized),
        buffers: &[usize],
    ) -> Result<Vec<(u64, usize, usize)>, Error> {
        let context = table.io_context();
        let mut walked = Vec::new();
        table.transfer(
            &context,
            target,
            request,
            room,
            buffers.iter().copied(),
            |transfer| {
                walked.push((transfer.disk_offset, transfer.buffer, transfer.length));
                Ok::<(), Error>(())
            },
        )?;
        Ok(walked)
    }

    #[test]
    fn every_transfer_is_handed_out_in_order_by_name_and_pinned() {
        let table = table_with(&[(10, 2), (100, 2)]);
        let request = Request::new(Access::Read, 1, 2).unwrap();
        let expected = vec![
            (10 * 512 + 512, 0, 256),
            (11 * 512 + 256, 1, 256),
            (100 * 512, 1, 512),
        ];
        let mut room = [Segment::default(); 2];
        let named = walk(&table, xvda().into(), &request, &mut room[..], &[256, 768]);
        assert_eq!(named, Ok(expected.clone()));
        let pinned = table.pin(DOM0, xvda()).unwrap();
        let walked = walk(
            &table,
            (&pinned).into(),
            &request,
            &mut room[..],
            &[256, 768],
        );
        assert_eq!(walked, Ok(expected));
    }

    #[test]
    fn an_error_of_the_translation_is_returned_before_any_transfer() {
        let table = table_with(&[(10, 2)]);
        let past = Request::new(Access::Read, 2, 1).unwrap();
        let mut room = [Segment::default(); 2];
        assert_eq!(
            walk(&table, xvda().into(), &past, &mut room[..], &[512]),
            Err(Error::OutOfRange)
        );
    }

    #[test]
    fn buffers_that_run_out_end_the_walk_with_einval() {
        let table = table_with(&[(10, 2)]);
        let request = Request::new(Access::Read, 0, 2).unwrap();
        let mut room = [Segment::default(); 2];
        assert_eq!(
            walk(&table, xvda().into(), &request, &mut room[..], &[512]),
            Err(Error::InvalidArgument)
        );
    }

    #[test]
    fn an_error_of_the_closure_stops_the_walk_and_is_returned() {
        #[derive(Debug, PartialEq, Eq)]
        enum Failure {
            Table(Error),
            Disk(u64),
        }
        impl From<Error> for Failure {
            fn from(error: Error) -> Self {
                Failure::Table(error)
            }
        }
        // Four one-sector extents: four transfers, the second of which fails.
        let table = table_with(&[(10, 1), (20, 1), (30, 1), (40, 1)]);
        let request = Request::new(Access::Write, 0, 4).unwrap();
        let context = table.io_context();
        let mut room = [Segment::default(); 4];
        let mut seen = Vec::new();
        let result = table.transfer(
            &context,
            xvda().into(),
            &request,
            &mut room[..],
            [2048],
            |transfer| {
                seen.push(transfer.disk_offset / 512);
                if transfer.disk_offset == 20 * 512 {
                    return Err(Failure::Disk(20));
                }
                Ok(())
            },
        );
        assert_eq!(result, Err(Failure::Disk(20)));
        assert_eq!(seen, [10, 20], "nothing after the failure");
        // A table error arrives through `From`.
        let past = Request::new(Access::Write, 4, 1).unwrap();
        let result = table.transfer(&context, xvda().into(), &past, &mut room[..], [512], |_| {
            Ok::<(), Failure>(())
        });
        assert_eq!(result, Err(Failure::Table(Error::OutOfRange)));
    }

    #[test]
    fn the_translation_is_held_for_the_whole_walk() {
        let table = table_with(&[(10, 1), (20, 1)]);
        let request = Request::new(Access::Read, 0, 2).unwrap();
        let context = table.io_context();
        let mut room = [Segment::default(); 2];
        let mut fence = None;
        let mut complete_inside = Vec::new();
        table
            .transfer(
                &context,
                xvda().into(),
                &request,
                &mut room[..],
                [1024],
                |_| {
                    // The first transfer deletes the VBD; its fence waits for this walk.
                    if fence.is_none() {
                        fence = Some(table.delete(DOM0, xvda()).unwrap().fence);
                    }
                    complete_inside.push(fence.as_ref().unwrap().is_complete());
                    Ok::<(), Error>(())
                },
            )
            .unwrap();
        assert_eq!(complete_inside, [false, false]);
        let fence = fence.unwrap();
        assert!(fence.is_complete(), "complete once the walk returned");
        fence.wait(|| {});
    }

    #[test]
    fn room_grows_until_every_segment_fits() {
        // 40 one-sector extents, every other sector.
        let extents: Vec<_> = (0..40).map(|index| (index * 2, 1)).collect();
        let table = table_with(&extents);
        let request = Request::new(Access::Read, 0, 40).unwrap();
        let mut room = Growing {
            segments: vec![Segment::default(); 2],
            limit: usize::MAX,
            asked: Vec::new(),
        };
        let walked = walk(&table, xvda().into(), &request, &mut room, &[40 * 512]).unwrap();
        let sectors: Vec<u64> = walked.iter().map(|&(offset, _, _)| offset / 512).collect();
        assert_eq!(sectors, (0..40).map(|index| index * 2).collect::<Vec<_>>());
        // Four times more each time, never past one segment per sector.
        assert_eq!(room.asked, [8, 32, 40]);
    }

    #[test]
    fn room_that_cannot_grow_is_e2big() {
        let extents: Vec<_> = (0..40).map(|index| (index * 2, 1)).collect();
        let table = table_with(&extents);
        let request = Request::new(Access::Read, 0, 40).unwrap();
        let mut room = Growing {
            segments: vec![Segment::default(); 2],
            limit: 16,
            asked: Vec::new(),
        };
        assert_eq!(
            walk(&table, xvda().into(), &request, &mut room, &[40 * 512]),
            Err(Error::TooBig)
        );
        assert_eq!(room.asked, [8, 32]);
        let mut fixed = [Segment::default(); 39];
        assert_eq!(
            walk(&table, xvda().into(), &request, &mut fixed[..], &[40 * 512]),
            Err(Error::TooBig)
        );
    }

    #[test]
    fn room_that_claims_to_grow_but_does_not_is_e2big_not_a_livelock() {
        struct Stuck([Segment; 1]);
        impl SegmentRoom for Stuck {
            fn segments(&mut self) -> &mut [Segment] {
                &mut self.0
            }
            fn grow(&mut self, _wanted: usize) -> bool {
                true
            }
        }
        let table = table_with(&[(10, 1), (20, 1)]);
        let request = Request::new(Access::Read, 0, 2).unwrap();
        let mut room = Stuck([Segment::default()]);
        assert_eq!(
            walk(&table, xvda().into(), &request, &mut room, &[1024]),
            Err(Error::TooBig)
        );
    }
}
