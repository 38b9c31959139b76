//! The seam to hv-vbd's block path: every call into the VBD table other than the hypercall
//! dispatch of the control channel goes through here, so the in-flight fencing of issue 8
//! (a translation guard held until the I/O completes) changes this module only.
//!
//! [`Translator::walk`] translates one request and pairs each physical segment with the
//! part of the caller's buffers it covers. The table's lock is released inside
//! `translate`, before any pair is handed out, so no lock is held across a read or a write.

use hv_vbd::{Access, DefaultVbdTable, Segment};
use shared_abi::{wire::ProbeEntry, DeviceNumber, Error, Mode, ProbeInfo, DOM0, SECTOR_SIZE};

/// The one VBD table of this backend.
pub type Table = DefaultVbdTable;

/// Names a VBD: the domain it belongs to and its virtual device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VbdRef {
    pub domain: u32,
    pub vdevice: DeviceNumber,
}

/// One VBD as the table reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VbdState {
    pub vbd: VbdRef,
    pub writable: bool,
    pub size_sectors: u64,
}

/// One piece of a request: `length` bytes at `disk_offset` of `device`, to or from
/// `buffer_offset` in the caller's buffer number `buffer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub device: DeviceNumber,
    pub disk_offset: u64,
    pub buffer: usize,
    pub buffer_offset: u64,
    pub length: u64,
}

/// Why a request did not complete.
#[derive(Debug, PartialEq, Eq)]
pub enum WalkError<E> {
    /// The table refused the request: no such VBD, read-only, out of range, malformed.
    Refused(Error),
    /// The caller's transfer failed.
    Failed(E),
}

/// A reusable segment buffer: each queue or connection thread owns one.
#[derive(Debug, Default)]
pub struct Translator {
    segments: Vec<Segment>,
}

/// Segments to start with; the buffer grows when a request crosses more extents.
const INITIAL_SEGMENTS: usize = 16;

impl Translator {
    /// Translate `nr_sectors` at `sector` of `vbd`, growing the buffer until every segment
    /// fits (at most one per sector, so this ends).
    fn translate(
        &mut self,
        table: &Table,
        vbd: VbdRef,
        access: Access,
        sector: u64,
        nr_sectors: u64,
    ) -> Result<&[Segment], Error> {
        let most = usize::try_from(nr_sectors).map_err(|_| Error::OutOfRange)?;
        let mut room = self
            .segments
            .len()
            .clamp(INITIAL_SEGMENTS.min(most.max(1)), most.max(1));
        loop {
            if self.segments.len() < room {
                self.segments.resize(room, Segment::default());
            }
            match table.translate(
                vbd.domain,
                vbd.vdevice,
                sector,
                nr_sectors,
                access,
                &mut self.segments[..room],
            ) {
                Ok(count) => return Ok(&self.segments[..count]),
                Err(Error::TooBig) if room < most => room = room.saturating_mul(4).min(most),
                Err(error) => return Err(error),
            }
        }
    }

    /// Translate a request covering the buffers of `buffer_lengths` (in bytes, in order,
    /// whole sectors in all) starting at `sector`, and call `each` for every piece in
    /// request order. Stops at the first failure.
    pub fn walk<E>(
        &mut self,
        table: &Table,
        vbd: VbdRef,
        access: Access,
        sector: u64,
        buffer_lengths: &[u64],
        mut each: impl FnMut(Transfer) -> Result<(), E>,
    ) -> Result<(), WalkError<E>> {
        let total = buffer_lengths
            .iter()
            .try_fold(0u64, |sum, &length| sum.checked_add(length))
            .ok_or(WalkError::Refused(Error::OutOfRange))?;
        if total % SECTOR_SIZE != 0 {
            return Err(WalkError::Refused(Error::InvalidArgument));
        }
        let segments = self
            .translate(table, vbd, access, sector, total / SECTOR_SIZE)
            .map_err(WalkError::Refused)?;
        let mut buffers = buffer_lengths
            .iter()
            .enumerate()
            .filter(|(_, &length)| length != 0);
        let mut current = buffers.next();
        let mut buffer_offset = 0u64;
        for segment in segments {
            // Translation covers the request exactly, so the buffers cover the segments.
            let mut disk_offset = segment.sector * SECTOR_SIZE;
            let mut left = segment.nr_sectors * SECTOR_SIZE;
            while left != 0 {
                let Some((buffer, &buffer_length)) = current else {
                    return Err(WalkError::Refused(Error::OutOfRange));
                };
                let length = left.min(buffer_length - buffer_offset);
                each(Transfer {
                    device: segment.device,
                    disk_offset,
                    buffer,
                    buffer_offset,
                    length,
                })
                .map_err(WalkError::Failed)?;
                disk_offset += length;
                left -= length;
                buffer_offset += length;
                if buffer_offset == buffer_length {
                    current = buffers.next();
                    buffer_offset = 0;
                }
            }
        }
        Ok(())
    }

    /// Translate `nr_sectors` at `sector` for writing and call `each` with every physical
    /// range as `(device, byte offset, byte length)`: for discard and write-zeroes, which
    /// touch the VBD's extents and no guest buffer.
    pub fn ranges<E>(
        &mut self,
        table: &Table,
        vbd: VbdRef,
        sector: u64,
        nr_sectors: u64,
        mut each: impl FnMut(DeviceNumber, u64, u64) -> Result<(), E>,
    ) -> Result<(), WalkError<E>> {
        let segments = self
            .translate(table, vbd, Access::Write, sector, nr_sectors)
            .map_err(WalkError::Refused)?;
        segments.iter().try_for_each(|segment| {
            each(
                segment.device,
                segment.sector * SECTOR_SIZE,
                segment.nr_sectors * SECTOR_SIZE,
            )
            .map_err(WalkError::Failed)
        })
    }
}

/// Every VBD of `domain`, asked as dom0 (the backend is the hypervisor and sees them all).
/// A domain without VBDs has none.
pub fn domain_vbds(table: &Table, domain: u32) -> Result<Vec<VbdState>, Error> {
    let mut found = Vec::new();
    loop {
        let capacity = found.capacity().max(16);
        found.clear();
        found.reserve(capacity);
        let summary = table.probe(DOM0, domain, capacity, |_, entry: ProbeEntry| {
            found.push(VbdState {
                vbd: VbdRef {
                    domain: entry.domain,
                    vdevice: DeviceNumber::from_raw(entry.device),
                },
                writable: entry.info & ProbeInfo::READ_ONLY.bits() == 0,
                size_sectors: entry.capacity_sectors,
            });
            Ok(())
        })?;
        if summary.complete {
            return Ok(found);
        }
        found = Vec::with_capacity(summary.count);
    }
}

/// The current mode and size of one VBD.
pub fn vbd_state(table: &Table, vbd: VbdRef) -> Result<VbdState, Error> {
    let info = table.info(DOM0, hv_vbd::VbdId::from(vbd), 0, |_, _| Ok(()))?;
    Ok(VbdState {
        vbd,
        writable: info.mode.contains(Mode::WRITE),
        size_sectors: info.size_sectors,
    })
}

/// The disks a VBD's extents lie on, each once: what a flush must sync.
pub fn vbd_devices(table: &Table, vbd: VbdRef) -> Result<Vec<DeviceNumber>, Error> {
    let mut devices = Vec::new();
    let mut capacity = 64usize;
    loop {
        devices.clear();
        let info = table.info(DOM0, hv_vbd::VbdId::from(vbd), capacity, |_, extent| {
            if !devices.contains(&extent.device) {
                devices.push(extent.device);
            }
            Ok(())
        })?;
        if info.complete {
            return Ok(devices);
        }
        capacity = info.nr_extents;
    }
}

impl From<VbdRef> for hv_vbd::VbdId {
    fn from(vbd: VbdRef) -> hv_vbd::VbdId {
        hv_vbd::VbdId {
            domain: vbd.domain,
            vdevice: vbd.vdevice,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hv_vbd::SharingLevel;
    use proptest::prelude::*;
    use shared_abi::wire::Extent;

    pub fn disk(index: u32) -> DeviceNumber {
        DeviceNumber::new(3, index * 64).unwrap()
    }

    pub fn xvda(domain: u32) -> VbdRef {
        VbdRef {
            domain,
            vdevice: DeviceNumber::from_name("xvda").unwrap(),
        }
    }

    /// A leaked table (it is 1.8 MiB: built on a thread with room, since a test thread's
    /// stack is smaller) with two disks of 4096 sectors and domain 1's xvda of `extents`.
    pub fn table_with(extents: &[(u32, u64, u64)], writable: bool) -> &'static Table {
        let table: &'static Table = std::thread::Builder::new()
            .stack_size(16 << 20)
            .spawn(|| Box::leak(Box::new(Table::new(SharingLevel::Unrestricted))))
            .unwrap()
            .join()
            .unwrap();
        for index in 0..2 {
            table
                .register_disk(hv_vbd::Disk {
                    device: disk(index),
                    sectors: 4096,
                })
                .unwrap();
        }
        let mode = if writable {
            Mode::READ | Mode::WRITE
        } else {
            Mode::READ
        };
        table.create(DOM0, xvda(1).into(), mode).unwrap();
        let extents = extents
            .iter()
            .map(|&(index, start, count)| Extent::new(disk(index), start, count));
        table.set_extents(DOM0, xvda(1).into(), extents).unwrap();
        table
    }

    /// The reference model: the physical byte of every virtual byte, walked linearly.
    fn physical_bytes(extents: &[(u32, u64, u64)]) -> Vec<(DeviceNumber, u64)> {
        extents
            .iter()
            .flat_map(|&(index, start, count)| {
                (start * SECTOR_SIZE..(start + count) * SECTOR_SIZE)
                    .map(move |byte| (disk(index), byte))
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn walk_pairs_every_byte_of_every_buffer_with_its_translated_byte(
            counts in proptest::collection::vec(1u64..8, 1..6),
            buffers in proptest::collection::vec(0u64..3000, 1..6),
            start in 0u64..4,
        ) {
            // Extents out of order, alternating disks, 64 sectors apart.
            let extents: Vec<(u32, u64, u64)> = counts
                .iter()
                .enumerate()
                .map(|(index, &count)| ((index % 2) as u32, 3000 - 64 * index as u64, count))
                .collect();
            let table = table_with(&extents, true);
            let total: u64 = buffers.iter().sum();
            let mut lengths = buffers.clone();
            // Round the last buffer up so the request is whole sectors.
            *lengths.last_mut().unwrap() += (SECTOR_SIZE - total % SECTOR_SIZE) % SECTOR_SIZE;
            let total: u64 = lengths.iter().sum();
            let model = physical_bytes(&extents);
            let virtual_bytes = model.len() as u64;
            let mut seen = Vec::new();
            let result = Translator::default().walk(table, xvda(1), Access::Read, start, &lengths, |transfer| {
                seen.push(transfer);
                Ok::<(), ()>(())
            });
            if start * SECTOR_SIZE + total > virtual_bytes {
                prop_assert_eq!(result, Err(WalkError::Refused(Error::OutOfRange)));
                prop_assert!(seen.is_empty());
            } else {
                prop_assert_eq!(result, Ok(()));
                let mut virtual_byte = start * SECTOR_SIZE;
                let mut position = (0usize, 0u64);
                let skip_full = |position: &mut (usize, u64)| {
                    while position.0 < lengths.len() && position.1 == lengths[position.0] {
                        *position = (position.0 + 1, 0);
                    }
                };
                skip_full(&mut position);
                for transfer in seen {
                    prop_assert_eq!((transfer.buffer, transfer.buffer_offset), position);
                    prop_assert!(transfer.length > 0);
                    prop_assert_eq!((transfer.device, transfer.disk_offset), model[virtual_byte as usize]);
                    let last = model[(virtual_byte + transfer.length - 1) as usize];
                    prop_assert_eq!(last, (transfer.device, transfer.disk_offset + transfer.length - 1));
                    virtual_byte += transfer.length;
                    position.1 += transfer.length;
                    skip_full(&mut position);
                }
                prop_assert_eq!(virtual_byte, start * SECTOR_SIZE + total);
            }
        }
    }

    /// Walk a request of `lengths` at sector 0, doing nothing with the pieces.
    fn walk(
        table: &Table,
        vbd: VbdRef,
        access: Access,
        lengths: &[u64],
    ) -> Result<(), WalkError<()>> {
        Translator::default().walk(table, vbd, access, 0, lengths, |_| Ok(()))
    }

    #[test]
    fn a_read_only_vbd_refuses_writes_and_ranges() {
        let table = table_with(&[(0, 0, 8)], false);
        assert_eq!(
            walk(table, xvda(1), Access::Write, &[512]),
            Err(WalkError::Refused(Error::ReadOnly))
        );
        assert_eq!(
            Translator::default().ranges(table, xvda(1), 0, 1, |_, _, _| Ok::<(), ()>(())),
            Err(WalkError::Refused(Error::ReadOnly))
        );
        assert_eq!(walk(table, xvda(1), Access::Read, &[512]), Ok(()));
    }

    #[test]
    fn partial_sectors_other_domains_and_failures_are_refused() {
        let table = table_with(&[(0, 0, 8)], true);
        assert_eq!(
            walk(table, xvda(1), Access::Read, &[100]),
            Err(WalkError::Refused(Error::InvalidArgument))
        );
        assert_eq!(
            walk(table, xvda(2), Access::Read, &[512]),
            Err(WalkError::Refused(Error::NotFound))
        );
        assert_eq!(
            walk(table, xvda(1), Access::Read, &[0]),
            Err(WalkError::Refused(Error::InvalidArgument))
        );
        assert_eq!(
            Translator::default().walk(table, xvda(1), Access::Read, 0, &[512], |_| Err(
                "disk failed"
            )),
            Err(WalkError::Failed("disk failed"))
        );
    }

    #[test]
    fn state_devices_and_domain_listing_follow_the_table() {
        let table = table_with(&[(1, 100, 8), (0, 0, 8), (1, 0, 8)], true);
        assert_eq!(vbd_devices(table, xvda(1)), Ok(vec![disk(1), disk(0)]));
        let state = VbdState {
            vbd: xvda(1),
            writable: true,
            size_sectors: 24,
        };
        assert_eq!(vbd_state(table, xvda(1)), Ok(state));
        assert_eq!(domain_vbds(table, 1), Ok(vec![state]));
        assert_eq!(domain_vbds(table, 7), Ok(vec![]));
        assert_eq!(vbd_state(table, xvda(7)), Err(Error::NotFound));
    }
}
