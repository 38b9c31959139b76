//! Property tests against a reference model that walks plain `Vec`s of extents linearly.
//!
//! Translation must agree with the linear walk Xen 1.2 did, for random extent lists and
//! requests including `u64` edge values. Random sequences of operations, issued through
//! `dispatch` exactly as a caller would, must agree with a model of the table, and leave
//! the table's invariants intact whatever happens; garbage arguments must never panic.

mod common;

use common::*;
use hv_vbd::{Access, Disk, GuestAddress, ListPiece, Request, Segment, SliceMemory, VbdTable};
use proptest::prelude::*;
use shared_abi::{
    wire::{Extent, WireExtent},
    DeviceNumber, Error, Label, Op, SharingLevel,
};

/// The linear walk: every extent visited in order, as Xen 1.2 did.
fn linear_translate(
    extents: &[Extent],
    writable: bool,
    sector: u64,
    count: u64,
    access: Access,
    capacity: usize,
) -> Result<Vec<Segment>, Error> {
    let end = request_end(sector, count)?;
    if access == Access::Write && !writable {
        return Err(Error::ReadOnly);
    }
    let total = extents
        .iter()
        .map(|extent| u128::from(extent.nr_sectors()))
        .sum::<u128>();
    if u128::from(end) > total {
        return Err(Error::OutOfRange);
    }
    let mut segments = Vec::new();
    let mut virtual_start = 0u128;
    for extent in extents {
        let virtual_end = virtual_start + u128::from(extent.nr_sectors());
        let from = u128::from(sector).max(virtual_start);
        let to = u128::from(end).min(virtual_end);
        if from < to {
            segments.push(Segment {
                device: extent.device(),
                sector: extent.start_sector() + (from - virtual_start) as u64,
                nr_sectors: (to - from) as u64,
            });
        }
        virtual_start = virtual_end;
    }
    if segments.len() > capacity {
        return Err(Error::TooBig);
    }
    Ok(segments)
}

/// A request's validation, before any lookup: `EINVAL` for no sectors, `ERANGE` when its
/// end in sectors or in bytes overflows.
fn request_end(sector: u64, count: u64) -> Result<u64, Error> {
    if count == 0 {
        return Err(Error::InvalidArgument);
    }
    let end = sector.checked_add(count).ok_or(Error::OutOfRange)?;
    end.checked_mul(512).ok_or(Error::OutOfRange)?;
    Ok(end)
}

type BigTable = VbdTable<2, 2, 512, 2>;

/// The largest disk a table accepts: its size in bytes still fits a `u64`.
const LARGEST_DISK: u64 = u64::MAX / 512;

/// Extent lengths: mostly small, some enormous, so a VBD over both disks approaches the
/// largest size a request can address.
fn length() -> impl Strategy<Value = u64> {
    prop_oneof![6 => 1u64..16, 2 => 1u64..100_000, 1 => (1u64 << 44)..(1u64 << 46)]
}

/// A non-overlapping list of extents on two disks of [`LARGEST_DISK`] sectors, in random
/// order.
fn extent_list() -> impl Strategy<Value = Vec<Extent>> {
    proptest::collection::vec((any::<bool>(), length(), 0u64..8), 1..300).prop_map(|items| {
        let mut next = [0u64; 2];
        items
            .into_iter()
            .map(|(on_hdb, nr_sectors, gap)| {
                let disk = usize::from(on_hdb);
                let start_sector = next[disk] + gap;
                next[disk] = start_sector + nr_sectors;
                Extent::new([hda(), hdb()][disk], start_sector, nr_sectors).unwrap()
            })
            .collect()
    })
}

fn big_table(extents: &[Extent], writable: bool) -> BigTable {
    let table = BigTable::new(SharingLevel::Unrestricted);
    for device in [hda(), hdb()] {
        table
            .register_disk(Disk {
                device,
                sectors: LARGEST_DISK,
            })
            .unwrap();
    }
    let id = hv_vbd::VbdId {
        domain: GUEST,
        vdevice: xvda(),
    };
    let mode = if writable {
        shared_abi::Mode::READ | shared_abi::Mode::WRITE
    } else {
        shared_abi::Mode::READ
    };
    table.create(DOM0, id, mode, Label::EMPTY).unwrap();
    table
        .set_extents(
            DOM0,
            id,
            extents.iter().map(|extent| Ok(*extent)),
            SharingLevel::ReadersOnly,
        )
        .unwrap()
        .fence
        .wait(std::thread::yield_now);
    table
}

/// Translate through a fresh context, as an I/O thread would.
fn translate_on<const D: usize, const V: usize, const E: usize, const K: usize>(
    table: &VbdTable<D, V, E, K>,
    domain: u32,
    vdevice: DeviceNumber,
    sector: u64,
    count: u64,
    access: Access,
    capacity: usize,
) -> Result<Vec<Segment>, Error> {
    let context = table.io_context();
    let request = Request::new(access, sector, count)?;
    let mut out = vec![Segment::default(); capacity];
    let translation = table.translate(
        &context,
        hv_vbd::VbdId { domain, vdevice },
        &request,
        &mut out,
    )?;
    Ok(translation.segments().to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn translation_agrees_with_the_linear_walk(
        extents in extent_list(),
        writable: bool,
        requests in proptest::collection::vec(
            (any::<u64>(), prop_oneof![3 => 0u64..64, 1 => any::<u64>()], any::<bool>(), any::<bool>(), 1usize..64),
            1..32,
        ),
    ) {
        let table = big_table(&extents, writable);
        let total: u128 = extents.iter().map(|extent| u128::from(extent.nr_sectors())).sum();
        for (raw_sector, count, near_end, write, capacity) in requests {
            // Half the requests start near an extent boundary or the end, to cross many.
            let sector = if near_end && total > 0 {
                let boundary = extents.iter().take(raw_sector as usize % extents.len()).map(|extent| u128::from(extent.nr_sectors())).sum::<u128>();
                u64::try_from(boundary.saturating_sub(u128::from(raw_sector % 4))).unwrap_or(u64::MAX)
            } else {
                raw_sector
            };
            let access = if write { Access::Write } else { Access::Read };
            let got = translate_on(&table, GUEST, xvda(), sector, count, access, capacity);
            prop_assert_eq!(got, linear_translate(&extents, writable, sector, count, access, capacity));
        }
    }
}

/// The disks of the model test are small so that random extents collide often.
const MODEL_DISK_SECTORS: u64 = 100;

/// One VBD of the model.
#[derive(Clone, Debug)]
struct ModelVbd {
    vdevice: DeviceNumber,
    writable: bool,
    extents: Vec<Extent>,
}

/// The table as plain vectors, with its capacities: 4 domains, 4 VBDs each, 64 extents.
/// A domain is listed while it has VBDs.
#[derive(Clone, Debug)]
struct Model {
    ceiling: SharingLevel,
    domains: Vec<(u32, Vec<ModelVbd>)>,
}

/// An operation in a random sequence.
#[derive(Clone, Debug)]
enum Action {
    Create {
        caller: u32,
        domain: u32,
        vdevice: u8,
        mode: u32,
    },
    Grow {
        caller: u32,
        domain: u32,
        vdevice: u8,
        extent: WireExtent,
        level: SharingLevel,
    },
    Shrink {
        caller: u32,
        domain: u32,
        vdevice: u8,
    },
    SetExtents {
        caller: u32,
        domain: u32,
        vdevice: u8,
        extents: Vec<WireExtent>,
        level: SharingLevel,
        /// Sent in pieces of this many extents (0: in one call).
        piece: usize,
    },
    Delete {
        caller: u32,
        domain: u32,
        vdevice: u8,
    },
    Destroy {
        domain: u32,
    },
    Translate {
        domain: u32,
        vdevice: u8,
        sector: u64,
        count: u64,
        write: bool,
    },
    Garbage {
        caller: u32,
        op: u32,
        address: u64,
        memory: Vec<u8>,
    },
}

fn vdevice(index: u8) -> DeviceNumber {
    DeviceNumber::new(202, u32::from(index) * 16).unwrap()
}

/// Extents on hda, hdb (100 sectors each) and an unregistered hdc, often overlapping.
fn wire_extent() -> impl Strategy<Value = WireExtent> {
    (
        0u8..7,
        0u64..110,
        0u64..30,
        prop_oneof![20 => Just(0u32), 1 => Just(1u32)],
    )
        .prop_map(|(disk, start, length, reserved)| {
            let device = match disk {
                0..=2 => hda(),
                3..=5 => hdb(),
                _ => DeviceNumber::from_name("hdc").unwrap(),
            };
            WireExtent {
                start_sector: start,
                nr_sectors: length,
                device: device.raw(),
                _reserved: reserved,
            }
        })
}

fn level() -> impl Strategy<Value = SharingLevel> {
    prop_oneof![
        Just(SharingLevel::ReadersOnly),
        Just(SharingLevel::SingleWriter),
        Just(SharingLevel::Unrestricted)
    ]
}

fn action() -> impl Strategy<Value = Action> {
    let caller = prop_oneof![4 => Just(0u32), 1 => 1u32..3];
    let domain = 0u32..6;
    let vdevice = 0u8..5;
    prop_oneof![
        3 => (caller.clone(), domain.clone(), vdevice.clone(), prop_oneof![Just(1u32), Just(3), 0u32..8])
            .prop_map(|(caller, domain, vdevice, mode)| Action::Create { caller, domain, vdevice, mode }),
        4 => (caller.clone(), domain.clone(), vdevice.clone(), wire_extent(), level())
            .prop_map(|(caller, domain, vdevice, extent, level)| Action::Grow { caller, domain, vdevice, extent, level }),
        1 => (caller.clone(), domain.clone(), vdevice.clone()).prop_map(|(caller, domain, vdevice)| Action::Shrink { caller, domain, vdevice }),
        3 => (caller.clone(), domain.clone(), vdevice.clone(), proptest::collection::vec(wire_extent(), 0..12), level(), prop_oneof![2 => Just(0usize), 1 => 1usize..5])
            .prop_map(|(caller, domain, vdevice, extents, level, piece)| Action::SetExtents { caller, domain, vdevice, extents, level, piece }),
        1 => (caller.clone(), domain.clone(), vdevice.clone()).prop_map(|(caller, domain, vdevice)| Action::Delete { caller, domain, vdevice }),
        1 => domain.clone().prop_map(|domain| Action::Destroy { domain }),
        3 => (domain, vdevice, 0u64..200, 0u64..80, any::<bool>())
            .prop_map(|(domain, vdevice, sector, count, write)| Action::Translate { domain, vdevice, sector, count, write }),
        1 => (caller, 0u32..14, prop_oneof![0u64..64, any::<u64>()], proptest::collection::vec(any::<u8>(), 0..160))
            .prop_map(|(caller, op, address, memory)| Action::Garbage { caller, op, address, memory }),
    ]
}

/// Which errors the model allows for an action: usually one, or two when a change is both
/// self-overlapping and badly shared (which the table reports first depends on sort order).
type Expected = Result<(), Vec<Error>>;

impl Model {
    fn vbd(&self, domain: u32, vdevice: DeviceNumber) -> Option<&ModelVbd> {
        self.domains
            .iter()
            .find(|(id, _)| *id == domain)?
            .1
            .iter()
            .find(|vbd| vbd.vdevice == vdevice)
    }

    fn used(&self) -> usize {
        self.domains
            .iter()
            .flat_map(|(_, vbds)| vbds)
            .map(|vbd| vbd.extents.len())
            .sum()
    }

    fn check_extent(wire: &WireExtent) -> Result<Extent, Error> {
        let extent = wire.validate()?;
        if extent.device() != hda() && extent.device() != hdb() {
            return Err(Error::NoDevice);
        }
        if extent.end_sector() > MODEL_DISK_SECTORS {
            return Err(Error::OutOfRange);
        }
        Ok(extent)
    }

    /// Replace VBD (domain, vdevice)'s extents by `kept ++ new`, asking for `level`, if
    /// every rule allows.
    fn replace(
        &mut self,
        domain: u32,
        vdevice: DeviceNumber,
        keep: Option<usize>,
        new: &[WireExtent],
        level: SharingLevel,
    ) -> Expected {
        if level > self.ceiling {
            return Err(vec![Error::PermissionDenied]);
        }
        let vbd = self
            .vbd(domain, vdevice)
            .ok_or(vec![Error::NotFound])?
            .clone();
        let keep = keep.unwrap_or(vbd.extents.len());
        let mut staged = Vec::new();
        let free = 64 - self.used();
        for wire in new {
            let extent = Self::check_extent(wire).map_err(|error| vec![error])?;
            if staged.len() == free {
                return Err(vec![Error::NoSpace]);
            }
            staged.push(extent);
        }
        let mut result = vbd.extents[..keep].to_vec();
        result.extend(&staged);
        let mut errors = Vec::new();
        for (index, extent) in staged.iter().enumerate() {
            let position = keep + index;
            if result
                .iter()
                .enumerate()
                .any(|(other, existing)| other != position && existing.overlaps(extent))
            {
                errors.push(Error::InvalidArgument);
            }
            let others = self.domains.iter().flat_map(|(id, vbds)| {
                vbds.iter()
                    .filter(move |other| !(*id == domain && other.vdevice == vdevice))
            });
            for other in others {
                if other
                    .extents
                    .iter()
                    .any(|existing| existing.overlaps(extent))
                    && !level.allows(vbd.writable, other.writable)
                {
                    errors.push(Error::Busy);
                }
            }
        }
        if keep != 0 {
            let size: u128 = result
                .iter()
                .map(|extent| u128::from(extent.nr_sectors()))
                .sum();
            if size > u128::from(u64::MAX) {
                errors.push(Error::OutOfRange);
            }
        }
        if !errors.is_empty() {
            errors.dedup();
            return Err(errors);
        }
        let slot = self
            .domains
            .iter_mut()
            .find(|(id, _)| *id == domain)
            .unwrap();
        let target = slot
            .1
            .iter_mut()
            .find(|other| other.vdevice == vdevice)
            .unwrap();
        target.extents = result;
        Ok(())
    }

    fn apply(&mut self, action: &Action) -> Expected {
        let one = |error: Error| vec![error];
        match *action {
            Action::Create {
                caller,
                domain,
                vdevice: index,
                mode,
            } => {
                if caller != 0 {
                    return Err(one(Error::PermissionDenied));
                }
                let mode = shared_abi::Mode::from_wire(mode).map_err(one)?;
                let position = match self.domains.iter().position(|(id, _)| *id == domain) {
                    Some(position) => position,
                    None if self.domains.len() == 4 => return Err(one(Error::NoSpace)),
                    None => {
                        self.domains.push((domain, Vec::new()));
                        self.domains.len() - 1
                    }
                };
                let vbds = &mut self.domains[position].1;
                if vbds.iter().any(|vbd| vbd.vdevice == vdevice(index)) {
                    return Err(one(Error::AlreadyExists));
                }
                if vbds.len() == 4 {
                    return Err(one(Error::NoSpace));
                }
                vbds.push(ModelVbd {
                    vdevice: vdevice(index),
                    writable: mode.is_writable(),
                    extents: Vec::new(),
                });
                Ok(())
            }
            Action::Grow {
                caller,
                domain,
                vdevice: index,
                extent,
                level,
            } => {
                if caller != 0 {
                    return Err(one(Error::PermissionDenied));
                }
                extent.validate().map_err(one)?;
                self.replace(domain, vdevice(index), None, &[extent], level)
            }
            Action::Shrink {
                caller,
                domain,
                vdevice: index,
            } => {
                if caller != 0 {
                    return Err(one(Error::PermissionDenied));
                }
                let count = self
                    .vbd(domain, vdevice(index))
                    .ok_or(one(Error::NotFound))?
                    .extents
                    .len();
                let keep = count.checked_sub(1).ok_or(one(Error::InvalidArgument))?;
                // Removing extents checks no sharing: any level will do.
                self.replace(
                    domain,
                    vdevice(index),
                    Some(keep),
                    &[],
                    SharingLevel::ReadersOnly,
                )
            }
            Action::SetExtents {
                caller,
                domain,
                vdevice: index,
                ref extents,
                level,
                ..
            } => {
                if caller != 0 {
                    return Err(one(Error::PermissionDenied));
                }
                self.replace(domain, vdevice(index), Some(0), extents, level)
            }
            Action::Delete {
                caller,
                domain,
                vdevice: index,
            } => {
                if caller != 0 {
                    return Err(one(Error::PermissionDenied));
                }
                self.vbd(domain, vdevice(index))
                    .ok_or(one(Error::NotFound))?;
                let slot = self
                    .domains
                    .iter_mut()
                    .find(|(id, _)| *id == domain)
                    .unwrap();
                slot.1.retain(|vbd| vbd.vdevice != vdevice(index));
                // A domain's slot goes with its last VBD.
                self.domains.retain(|(_, vbds)| !vbds.is_empty());
                Ok(())
            }
            Action::Destroy { domain } => {
                if domain == 0 {
                    return Err(one(Error::InvalidArgument));
                }
                self.domains.retain(|(id, _)| *id != domain);
                Ok(())
            }
            Action::Translate { .. } | Action::Garbage { .. } => Ok(()),
        }
    }
}

/// Issue an action through the table's wire entry point; returns its result, and for
/// garbage whether it happened to change the table.
fn issue(table: &Table, action: &Action) -> Result<bool, Error> {
    let wire = |result: i64| {
        if result >= 0 {
            Ok(false)
        } else {
            Err(Error::from_wire(result).unwrap().unwrap_err())
        }
    };
    match action {
        Action::Create {
            caller,
            domain,
            vdevice: index,
            mode,
        } => wire(create(table, *caller, *domain, vdevice(*index), *mode)),
        Action::Grow {
            caller,
            domain,
            vdevice: index,
            extent,
            level,
        } => wire(grow_at(
            table,
            *caller,
            *domain,
            vdevice(*index),
            *extent,
            *level,
        )),
        Action::Shrink {
            caller,
            domain,
            vdevice: index,
        } => wire(vbd_op(table, *caller, Op::Shrink, *domain, vdevice(*index))),
        Action::SetExtents {
            caller,
            domain,
            vdevice: index,
            extents,
            level,
            piece,
        } => {
            let target = handle(*domain, vdevice(*index));
            if *piece == 0 || extents.is_empty() {
                let whole = ListPiece {
                    first_index: 0,
                    ticket: 0,
                    more: false,
                    level: *level,
                };
                return wire(set_piece(table, *caller, target, extents, whole).0);
            }
            // Several calls; every piece but the last leaves the list pending.
            let pieces: Vec<&[WireExtent]> = extents.chunks(*piece).collect();
            let mut ticket = 0;
            for (number, chunk) in pieces.iter().enumerate() {
                let more = number + 1 < pieces.len();
                let first_index = (number * piece) as u32;
                let next = ListPiece {
                    first_index,
                    ticket,
                    more,
                    level: *level,
                };
                let (result, after) = set_piece(table, *caller, target, chunk, next);
                if result < 0 {
                    return wire(result);
                }
                if more {
                    assert_eq!(result, (first_index as usize + chunk.len()) as i64);
                    ticket = after.ticket;
                }
            }
            Ok(false)
        }
        Action::Delete {
            caller,
            domain,
            vdevice: index,
        } => wire(vbd_op(table, *caller, Op::Delete, *domain, vdevice(*index))),
        Action::Destroy { domain } => {
            let args = shared_abi::wire::DomainArgs {
                domain: *domain,
                _reserved: 0,
            };
            wire(call(
                table,
                DOM0,
                Op::DestroyDomain,
                &mut Image::new(&args, &[]),
            ))
        }
        Action::Translate { .. } => Ok(false),
        Action::Garbage {
            caller,
            op,
            address,
            memory,
        } => {
            let mut memory = memory.clone();
            // Garbage may be refused or, rarely, be a valid call: either way, no panic.
            let in_use = table.extents_in_use();
            let outcome = table.dispatch(
                *caller,
                *op,
                GuestAddress(*address),
                &mut SliceMemory::new(&mut memory),
            );
            Ok(outcome.changed.is_some() || table.extents_in_use() != in_use)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn operations_agree_with_the_model_and_keep_the_invariants(
        ceiling in level(),
        actions in proptest::collection::vec(action(), 1..60),
    ) {
        let table = Table::new(ceiling);
        for device in [hda(), hdb()] {
            table.register_disk(Disk { device, sectors: MODEL_DISK_SECTORS }).unwrap();
        }
        let mut model = Model { ceiling, domains: Vec::new() };
        for action in &actions {
            if matches!(action, Action::Garbage { .. }) {
                // Garbage is checked for safety, not against the model; in the rare case it
                // was a valid change the model no longer applies, so the sequence ends.
                let changed = issue(&table, action).unwrap();
                table.check_invariants().map_err(TestCaseError::fail)?;
                if changed {
                    return Ok(());
                }
                continue;
            }
            if let Action::Translate { domain, vdevice: index, sector, count, write } = *action {
                let access = if write { Access::Write } else { Access::Read };
                let got = translate_on(&table, domain, vdevice(index), sector, count, access, 8);
                let expected = match model.vbd(domain, vdevice(index)) {
                    None => request_end(sector, count).and(Err(Error::NotFound)),
                    Some(vbd) => linear_translate(&vbd.extents, vbd.writable, sector, count, access, 8),
                };
                prop_assert_eq!(got, expected);
                continue;
            }
            let got = issue(&table, action);
            let expected = model.apply(action);
            match (&got, &expected) {
                (Ok(false), Ok(())) => {}
                (Err(error), Err(allowed)) if allowed.contains(error) => {}
                _ => prop_assert!(false, "{:?}: table {:?}, model {:?}", action, got, expected),
            }
            table.check_invariants().map_err(TestCaseError::fail)?;
            prop_assert_eq!(table.extents_in_use(), model.used());
        }
        // Finally every VBD reads back exactly as the model holds it.
        for (domain, vbds) in &model.domains {
            for vbd in vbds {
                let (result, _, extents) = info(&table, DOM0, *domain, vbd.vdevice, 64);
                prop_assert_eq!(result, vbd.extents.len() as i64);
                prop_assert_eq!(extents, vbd.extents.iter().map(Extent::to_wire).collect::<Vec<_>>());
            }
        }
    }
}
