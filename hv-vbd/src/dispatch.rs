//! The hypercall entry point: decode an operation and its wire arguments, run it, copy out.
//!
//! Every argument struct is copied in once, validated, and used only as that local copy.
//! A guest's changing operations are refused before any of its memory is read.

use shared_abi::{
    wire::{
        CreateArgs, DomainArgs, GrowArgs, InfoArgs, ProbeArgs, ProbeEntry, SetExtentsArgs,
        VbdHandle, WireExtent,
    },
    DeviceNumber, Error, Op, ABI_VERSION, DOM0,
};

use crate::memory::{read_struct, write_struct, GuestAddress, GuestMemory};
use crate::table::{Changed, VbdId, VbdTable};

/// The result of one hypercall: the wire result (a count, a version, zero, or a negative
/// errno) and, when VBDs changed, which domain should be told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub result: i64,
    pub changed: Option<Changed>,
}

impl From<Result<(u64, Option<Changed>), Error>> for Outcome {
    fn from(result: Result<(u64, Option<Changed>), Error>) -> Outcome {
        match result {
            Ok((value, changed)) => Outcome {
                result: Error::result_to_wire(Ok(value)),
                changed,
            },
            Err(error) => Outcome {
                result: error.to_wire(),
                changed: None,
            },
        }
    }
}

fn vbd_id(handle: VbdHandle) -> VbdId {
    VbdId {
        domain: handle.domain,
        vdevice: DeviceNumber::from_raw(handle.vdevice),
    }
}

impl<const DOMAINS: usize, const VBDS: usize, const EXTENTS: usize, const DISKS: usize>
    VbdTable<DOMAINS, VBDS, EXTENTS, DISKS>
{
    /// Run hypercall `op` for domain `caller` (known from the channel it came on, never from
    /// the arguments) with its argument struct at `args` in the caller's memory.
    pub fn dispatch<M: GuestMemory + ?Sized>(
        &self,
        caller: u32,
        op: u32,
        args: GuestAddress,
        memory: &mut M,
    ) -> Outcome {
        Outcome::from(self.run(caller, op, args, memory))
    }

    fn run<M: GuestMemory + ?Sized>(
        &self,
        caller: u32,
        op: u32,
        args: GuestAddress,
        memory: &mut M,
    ) -> Result<(u64, Option<Changed>), Error> {
        let op = Op::try_from(op)?;
        if op.changes_vbds() && caller != DOM0 {
            return Err(Error::PermissionDenied);
        }
        let changed = |changed: Changed| (0, Some(changed));
        match op {
            Op::Version => Ok((u64::from(ABI_VERSION), None)),
            Op::Create => {
                let create = read_struct::<CreateArgs, M>(memory, args)?.validate()?;
                let id = VbdId {
                    domain: create.domain,
                    vdevice: create.vdevice,
                };
                self.create(caller, id, create.mode).map(changed)
            }
            Op::Grow => {
                let grow: GrowArgs = read_struct(memory, args)?;
                let extent = grow.extent.validate()?;
                self.grow(caller, vbd_id(grow.handle), extent).map(changed)
            }
            Op::Shrink => {
                let handle: VbdHandle = read_struct(memory, args)?;
                self.shrink(caller, vbd_id(handle)).map(changed)
            }
            Op::Delete => {
                let handle: VbdHandle = read_struct(memory, args)?;
                self.delete(caller, vbd_id(handle)).map(changed)
            }
            Op::SetExtents => {
                let set: SetExtentsArgs = read_struct(memory, args)?;
                set.validate()?;
                let base = GuestAddress(set.extents_address);
                let memory = &*memory;
                // Each element is read once, inside the table's staging loop; the count is
                // bounded by the arena's capacity, which refuses the first extent too many.
                let extents = (0..u64::from(set.nr_extents)).map(|index| {
                    let address = base.element(index, core::mem::size_of::<WireExtent>())?;
                    read_struct::<WireExtent, M>(memory, address)?.validate()
                });
                self.set_extents(caller, vbd_id(set.handle), extents)
                    .map(changed)
            }
            Op::Probe => self.probe_op(caller, args, memory),
            Op::Info => self.info_op(caller, args, memory),
            Op::DestroyDomain => {
                let domain = read_struct::<DomainArgs, M>(memory, args)?.validate()?;
                let (released, changed) = self.destroy_domain(caller, domain)?;
                Ok((released as u64, Some(changed)))
            }
        }
    }

    fn probe_op<M: GuestMemory + ?Sized>(
        &self,
        caller: u32,
        args: GuestAddress,
        memory: &mut M,
    ) -> Result<(u64, Option<Changed>), Error> {
        let mut probe: ProbeArgs = read_struct(memory, args)?;
        probe.validate()?;
        let entries = GuestAddress(probe.entries_address);
        let summary = self.probe(
            caller,
            probe.domain,
            probe.capacity as usize,
            |index, entry| {
                write_struct(
                    memory,
                    entries.element(index as u64, core::mem::size_of::<ProbeEntry>())?,
                    &entry,
                )
            },
        )?;
        probe.count = u32::try_from(summary.count).map_err(|_| Error::OutOfRange)?;
        probe.generation = summary.generation;
        write_struct(memory, args, &probe)?;
        if summary.complete {
            Ok((summary.count as u64, None))
        } else {
            Err(Error::TooBig)
        }
    }

    fn info_op<M: GuestMemory + ?Sized>(
        &self,
        caller: u32,
        args: GuestAddress,
        memory: &mut M,
    ) -> Result<(u64, Option<Changed>), Error> {
        let mut info: InfoArgs = read_struct(memory, args)?;
        info.validate()?;
        let extents = GuestAddress(info.extents_address);
        let summary = self.info(
            caller,
            vbd_id(info.handle),
            info.capacity as usize,
            |index, extent| {
                let address = extents.element(index as u64, core::mem::size_of::<WireExtent>())?;
                write_struct(memory, address, &extent.to_wire())
            },
        )?;
        info.nr_extents = u32::try_from(summary.nr_extents).map_err(|_| Error::OutOfRange)?;
        info.mode = summary.mode.bits();
        info.size_sectors = summary.size_sectors;
        write_struct(memory, args, &info)?;
        if summary.complete {
            Ok((summary.nr_extents as u64, None))
        } else {
            Err(Error::TooBig)
        }
    }
}
