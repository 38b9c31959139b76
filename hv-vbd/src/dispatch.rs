//! The hypercall entry point: decode an operation and its wire arguments, run it, copy out.
//!
//! Every argument struct is copied in once, validated, and used only as that local copy.
//! A guest's changing operations are refused before any of its memory is read.

use shared_abi::{
    wire::{
        CreateArgs, DomainArgs, GrowArgs, InfoArgs, LimitsArgs, ProbeArgs, ProbeEntry,
        SetExtentsArgs, VbdHandle, WireExtent,
    },
    DeviceNumber, Error, Op, ABI_VERSION, DOM0,
};

use crate::inflight::Fence;
use crate::memory::{read_struct, write_struct, GuestAddress, GuestMemory};
use crate::table::{Changed, ListPiece, Removal, SetExtents, VbdId, VbdTable};

/// The result of one hypercall: the wire result (a count, a version, zero, or a negative
/// errno), which domain should be told its VBDs changed, and, for a change that removed or
/// moved extents, the fence to wait on before replying.
#[derive(Debug)]
#[must_use = "reply only once the fence, if any, is complete"]
pub struct Outcome<'t> {
    pub result: i64,
    pub changed: Option<Changed>,
    pub fence: Option<Fence<'t>>,
}

/// What an operation did, before it is put in wire form.
struct Done<'t> {
    value: u64,
    changed: Option<Changed>,
    fence: Option<Fence<'t>>,
}

impl<'t> Done<'t> {
    fn value(value: u64) -> Done<'t> {
        Done {
            value,
            changed: None,
            fence: None,
        }
    }

    fn changed(changed: Changed) -> Done<'t> {
        Done {
            value: 0,
            changed: Some(changed),
            fence: None,
        }
    }

    fn removed(value: u64, removal: Removal<'t>) -> Done<'t> {
        Done {
            value,
            changed: Some(removal.changed),
            fence: Some(removal.fence),
        }
    }
}

impl<'t> From<Result<Done<'t>, Error>> for Outcome<'t> {
    fn from(result: Result<Done<'t>, Error>) -> Outcome<'t> {
        match result {
            Ok(done) => Outcome {
                result: Error::result_to_wire(Ok(done.value)),
                changed: done.changed,
                fence: done.fence,
            },
            Err(error) => Outcome {
                result: error.to_wire(),
                changed: None,
                fence: None,
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

fn count(value: usize) -> Result<u32, Error> {
    u32::try_from(value).map_err(|_| Error::OutOfRange)
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
    ) -> Outcome<'_> {
        Outcome::from(self.run(caller, op, args, memory))
    }

    fn run<M: GuestMemory + ?Sized>(
        &self,
        caller: u32,
        op: u32,
        args: GuestAddress,
        memory: &mut M,
    ) -> Result<Done<'_>, Error> {
        let op = Op::try_from(op)?;
        if op.changes_vbds() && caller != DOM0 {
            return Err(Error::PermissionDenied);
        }
        match op {
            Op::Version => Ok(Done::value(u64::from(ABI_VERSION))),
            Op::Limits => self.limits_op(args, memory),
            Op::Create => {
                let create = read_struct::<CreateArgs, M>(memory, args)?.validate()?;
                self.create(caller, vbd_id(create.handle), create.mode, create.label)
                    .map(Done::changed)
            }
            Op::Grow => {
                let grow = read_struct::<GrowArgs, M>(memory, args)?.validate()?;
                self.grow(caller, vbd_id(grow.handle), grow.extent, grow.sharing)
                    .map(Done::changed)
            }
            Op::Shrink => {
                let handle: VbdHandle = read_struct(memory, args)?;
                Ok(Done::removed(0, self.shrink(caller, vbd_id(handle))?))
            }
            Op::Delete => {
                let handle: VbdHandle = read_struct(memory, args)?;
                Ok(Done::removed(0, self.delete(caller, vbd_id(handle))?))
            }
            Op::SetExtents => self.set_extents_op(caller, args, memory),
            Op::Probe => self.probe_op(caller, args, memory),
            Op::Info => self.info_op(caller, args, memory),
            Op::DestroyDomain => {
                let domain = read_struct::<DomainArgs, M>(memory, args)?.validate()?;
                let (released, removal) = self.destroy_domain(caller, domain)?;
                Ok(Done::removed(released as u64, removal))
            }
        }
    }

    fn limits_op<M: GuestMemory + ?Sized>(
        &self,
        args: GuestAddress,
        memory: &mut M,
    ) -> Result<Done<'_>, Error> {
        let limits = self.limits();
        let wire = LimitsArgs {
            abi_version: ABI_VERSION,
            sharing_ceiling: limits.sharing_ceiling.number(),
            domains: count(limits.domains)?,
            vbds_per_domain: count(limits.vbds_per_domain)?,
            extents: count(limits.extents)?,
            extents_free: count(limits.extents_free)?,
            disks: count(limits.disks)?,
            _reserved: 0,
            max_call_bytes: memory.max_call_bytes(),
        };
        write_struct(memory, args, &wire)?;
        Ok(Done::value(0))
    }

    fn set_extents_op<M: GuestMemory + ?Sized>(
        &self,
        caller: u32,
        args: GuestAddress,
        memory: &mut M,
    ) -> Result<Done<'_>, Error> {
        let mut wire: SetExtentsArgs = read_struct(memory, args)?;
        let set = wire.validate()?;
        let base = GuestAddress(set.extents_address);
        let piece = ListPiece {
            first_index: set.first_index,
            ticket: set.ticket,
            more: set.more,
            level: set.sharing,
        };
        let outcome = {
            let memory = &*memory;
            // Each element is read once, a batch at a time before the table's writer mutex
            // is taken; the count is bounded by the arena's capacity, which refuses the
            // first extent too many.
            let extents = (0..u64::from(set.nr_extents)).map(|index| {
                let address = base.element(index, core::mem::size_of::<WireExtent>())?;
                read_struct::<WireExtent, M>(memory, address)?.validate()
            });
            self.set_extents_piece(caller, vbd_id(set.handle), piece, extents)?
        };
        match outcome {
            SetExtents::Pending { ticket, length } => {
                wire.ticket = ticket;
                write_struct(memory, args, &wire)?;
                Ok(Done::value(length as u64))
            }
            SetExtents::Committed(removal) => Ok(Done::removed(0, removal)),
        }
    }

    fn probe_op<M: GuestMemory + ?Sized>(
        &self,
        caller: u32,
        args: GuestAddress,
        memory: &mut M,
    ) -> Result<Done<'_>, Error> {
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
        probe.count = count(summary.count)?;
        probe.generation = summary.generation;
        write_struct(memory, args, &probe)?;
        if summary.complete {
            Ok(Done::value(summary.count as u64))
        } else {
            Err(Error::TooBig)
        }
    }

    fn info_op<M: GuestMemory + ?Sized>(
        &self,
        caller: u32,
        args: GuestAddress,
        memory: &mut M,
    ) -> Result<Done<'_>, Error> {
        let mut info: InfoArgs = read_struct(memory, args)?;
        info.validate()?;
        let extents = GuestAddress(info.extents_address);
        let summary = self.info(
            caller,
            vbd_id(info.handle),
            info.first_index as usize,
            info.capacity as usize,
            |index, extent| {
                let offset = (index - info.first_index as usize) as u64;
                let address = extents.element(offset, core::mem::size_of::<WireExtent>())?;
                write_struct(memory, address, &extent.to_wire())
            },
        )?;
        info.nr_extents = count(summary.nr_extents)?;
        info.mode = summary.mode.bits();
        info.size_sectors = summary.size_sectors;
        info.generation = summary.generation;
        info.label = summary.label.to_wire();
        write_struct(memory, args, &info)?;
        Ok(Done::value(summary.written as u64))
    }
}
