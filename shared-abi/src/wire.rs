//! Raw argument and result structs of every operation, exactly as they sit in guest memory.
//!
//! All fields are little-endian fixed-width integers; padding is spelled `_reserved` and must
//! be zero, so it can carry meaning in a later version. Decode a struct with zerocopy's
//! `FromBytes::read_from_bytes` (it copies, so nothing keeps pointing into guest memory), then
//! reach the typed value through a `validate` method.

use static_assertions::{assert_eq_size, const_assert_eq};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use bitflags::bitflags;

use crate::label::{Label, LABEL_BYTES};
use crate::{DeviceNumber, Error, Mode, SharingLevel};

/// Xen 1.2's `PROBE_ALL`: probe every domain's VBDs (dom0 only).
pub const PROBE_ALL: u32 = 0xFFFF_FFFF;

macro_rules! wire_struct {
    ($(#[$meta:meta])* $name:ident { $($(#[$field_meta:meta])* $field:ident : $type:ty),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
        pub struct $name { $($(#[$field_meta])* pub $field: $type),* }
    };
}

wire_struct!(
    /// One physical extent: `nr_sectors` sectors from `start_sector` of `device`.
    WireExtent {
        start_sector: u64,
        nr_sectors: u64,
        device: u32,
        _reserved: u32,
    }
);

wire_struct!(
    /// Names one VBD: the domain it belongs to and its virtual device number.
    VbdHandle { domain: u32, vdevice: u32 }
);

wire_struct!(
    /// Arguments of [`crate::Op::Create`]: an empty VBD of `mode`, labelled `label`
    /// ([`Label`]: printable ASCII, zero-padded; may be empty).
    CreateArgs { handle: VbdHandle, mode: u32, label: [u8; LABEL_BYTES] }
);

wire_struct!(
    /// Arguments of [`crate::Op::Grow`]: append `extent`, sharing at most at level `sharing`.
    GrowArgs { handle: VbdHandle, extent: WireExtent, sharing: u32, _reserved: u32 }
);

wire_struct!(
    /// Arguments of [`crate::Op::SetExtents`]: one piece of a VBD's new extent list,
    /// `nr_extents` [`WireExtent`]s at `extents_address` that continue the list at
    /// `first_index`.
    ///
    /// A piece with `first_index` 0 starts a new pending list for the VBD (discarding any
    /// other) and the hypervisor writes the list's `ticket`; a later piece must carry that
    /// ticket (`ESTALE` otherwise) and continue exactly where the list ends (`EINVAL`
    /// otherwise). The pending list is invisible until a piece without
    /// [`SetExtentsFlags::MORE`] arrives: then the whole list is checked against every other
    /// VBD at sharing level `sharing` and replaces the VBD's extents in one step. A single
    /// piece at index 0 without `MORE` is the classic one-call set-extents; an empty one
    /// empties the VBD. The result is the pending list's length while `MORE` is set, then 0.
    SetExtentsArgs {
        handle: VbdHandle,
        extents_address: u64,
        nr_extents: u32,
        first_index: u32,
        sharing: u32,
        flags: u32,
        ticket: u64,
    }
);

wire_struct!(
    /// Arguments and results of [`crate::Op::Probe`]. The caller fills `domain` (or
    /// [`PROBE_ALL`]), `entries_address` and `capacity`; the hypervisor writes `count` (the
    /// number of VBDs, even when they did not fit: then the result is `E2BIG` and no entry is
    /// written, so the caller sizes its buffer from `count` and asks once more) and
    /// `generation` (the probed domain's change counter).
    ProbeArgs {
        domain: u32,
        capacity: u32,
        entries_address: u64,
        count: u32,
        _reserved: u32,
        generation: u64,
    }
);

wire_struct!(
    /// One VBD as reported by [`crate::Op::Probe`]: Xen 1.2's `xen_disk_t`, widened.
    ProbeEntry {
        device: u32,
        info: u32,
        capacity_sectors: u64,
        domain: u32,
        nr_extents: u32,
    }
);

wire_struct!(
    /// Arguments and results of [`crate::Op::Info`], which reads a VBD's extents in pieces:
    /// the caller fills `handle`, `extents_address`, `capacity` and `first_index`; the
    /// hypervisor writes up to `capacity` extents from `first_index` on (the result is how
    /// many), and `nr_extents` (all of them), `mode`, `size_sectors`, `label`, and
    /// `generation`, which changes whenever the VBD does: a caller reading several pieces
    /// starts again when it moves. `ERANGE` when `first_index` is past the last extent (it
    /// may equal `nr_extents`); `EINVAL` when `_reserved` is not zero.
    InfoArgs {
        handle: VbdHandle,
        extents_address: u64,
        capacity: u32,
        first_index: u32,
        nr_extents: u32,
        mode: u32,
        size_sectors: u64,
        generation: u64,
        _reserved: u32,
        label: [u8; LABEL_BYTES],
    }
);

wire_struct!(
    /// Arguments of [`crate::Op::DestroyDomain`].
    DomainArgs { domain: u32, _reserved: u32 }
);

wire_struct!(
    /// Results of [`crate::Op::Limits`], all written by the hypervisor: what it enforces
    /// and how large its tables are, so tools size their calls instead of guessing.
    LimitsArgs {
        abi_version: u32,
        /// The most permissive sharing level any request may ask for.
        sharing_ceiling: u32,
        domains: u32,
        vbds_per_domain: u32,
        /// Extents the table can hold in all, and how many of them are free now.
        extents: u32,
        extents_free: u32,
        disks: u32,
        _reserved: u32,
        /// The most bytes of argument struct plus array one call can carry on this channel.
        max_call_bytes: u64,
    }
);

wire_struct!(
    /// Payload head of a hypercall frame: the operation and where its argument struct lies
    /// in the guest memory image that follows.
    HypercallRequest { op: u32, _reserved: u32, args_address: u64 }
);

wire_struct!(
    /// Payload head of a hypercall reply, followed by the guest memory image as it stands
    /// after the call.
    HypercallResponse { result: i64 }
);

wire_struct!(
    /// Payload head of a block read or write; a write's data follows.
    BlockRequest { vdevice: u32, nr_sectors: u32, sector: u64 }
);

wire_struct!(
    /// Payload head of a block reply (`result` 0 or a negative errno); a read's data follows.
    BlockResponse { result: i64 }
);

wire_struct!(
    /// Sent by the hypervisor on a port when it starts serving it: the port's domain, the
    /// ABI it speaks, and an identifier of this start of the hypervisor, different at every
    /// boot, so tools can tell the VBDs they recorded before a restart from current ones.
    ReadyNotice { domain: u32, abi_version: u32, start_id: u64 }
);

wire_struct!(
    /// Pushed to a guest when its VBDs changed: probe again.
    ChangeNotice { domain: u32, _reserved: u32, generation: u64 }
);

assert_eq_size!(WireExtent, [u8; 24]);
assert_eq_size!(VbdHandle, [u8; 8]);
assert_eq_size!(CreateArgs, [u8; 32]);
assert_eq_size!(GrowArgs, [u8; 40]);
assert_eq_size!(SetExtentsArgs, [u8; 40]);
assert_eq_size!(ProbeArgs, [u8; 32]);
assert_eq_size!(ProbeEntry, [u8; 24]);
assert_eq_size!(InfoArgs, [u8; 72]);
assert_eq_size!(DomainArgs, [u8; 8]);
assert_eq_size!(LimitsArgs, [u8; 40]);
assert_eq_size!(HypercallRequest, [u8; 16]);
assert_eq_size!(HypercallResponse, [u8; 8]);
assert_eq_size!(BlockRequest, [u8; 16]);
assert_eq_size!(BlockResponse, [u8; 8]);
assert_eq_size!(ReadyNotice, [u8; 16]);
assert_eq_size!(ChangeNotice, [u8; 16]);
const_assert_eq!(core::mem::offset_of!(WireExtent, device), 16);
const_assert_eq!(core::mem::offset_of!(CreateArgs, label), 12);
const_assert_eq!(core::mem::offset_of!(GrowArgs, extent), 8);
const_assert_eq!(core::mem::offset_of!(GrowArgs, sharing), 32);
const_assert_eq!(core::mem::offset_of!(SetExtentsArgs, extents_address), 8);
const_assert_eq!(core::mem::offset_of!(SetExtentsArgs, nr_extents), 16);
const_assert_eq!(core::mem::offset_of!(SetExtentsArgs, ticket), 32);
const_assert_eq!(core::mem::offset_of!(ProbeArgs, entries_address), 8);
const_assert_eq!(core::mem::offset_of!(ProbeArgs, count), 16);
const_assert_eq!(core::mem::offset_of!(ProbeArgs, generation), 24);
const_assert_eq!(core::mem::offset_of!(ProbeEntry, capacity_sectors), 8);
const_assert_eq!(core::mem::offset_of!(InfoArgs, extents_address), 8);
const_assert_eq!(core::mem::offset_of!(InfoArgs, size_sectors), 32);
const_assert_eq!(core::mem::offset_of!(InfoArgs, generation), 40);
const_assert_eq!(core::mem::offset_of!(InfoArgs, label), 52);
const_assert_eq!(core::mem::offset_of!(LimitsArgs, max_call_bytes), 32);
const_assert_eq!(core::mem::offset_of!(BlockRequest, sector), 8);
const_assert_eq!(core::mem::offset_of!(ReadyNotice, start_id), 8);

bitflags! {
    /// The `flags` word of [`SetExtentsArgs`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct SetExtentsFlags: u32 {
        /// More pieces follow: keep the list pending.
        const MORE = 0x1;
    }
}

/// A validated extent: non-empty, and its end fits in a `u64`. Its fields are private, so
/// the only way to one is through [`Extent::new`] or [`WireExtent::validate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Extent {
    device: DeviceNumber,
    start_sector: u64,
    nr_sectors: u64,
}

impl Extent {
    /// A checked extent, or `EINVAL` for an empty one and `ERANGE` for one whose end wraps.
    pub const fn new(
        device: DeviceNumber,
        start_sector: u64,
        nr_sectors: u64,
    ) -> Result<Extent, Error> {
        if nr_sectors == 0 {
            return Err(Error::InvalidArgument);
        }
        if start_sector.checked_add(nr_sectors).is_none() {
            return Err(Error::OutOfRange);
        }
        Ok(Extent {
            device,
            start_sector,
            nr_sectors,
        })
    }

    pub const fn device(&self) -> DeviceNumber {
        self.device
    }

    pub const fn start_sector(&self) -> u64 {
        self.start_sector
    }

    /// At least 1.
    pub const fn nr_sectors(&self) -> u64 {
        self.nr_sectors
    }

    /// The first sector past the extent. Cannot overflow: [`Extent::new`] checked it.
    pub const fn end_sector(&self) -> u64 {
        self.start_sector + self.nr_sectors
    }

    /// The wire form.
    pub fn to_wire(&self) -> WireExtent {
        WireExtent {
            start_sector: self.start_sector,
            nr_sectors: self.nr_sectors,
            device: self.device.raw(),
            _reserved: 0,
        }
    }

    /// This extent and `next` as one, when `next` starts on the same device exactly where
    /// this one ends.
    pub fn joined(&self, next: &Extent) -> Option<Extent> {
        if self.device != next.device || self.end_sector() != next.start_sector {
            return None;
        }
        Extent::new(
            self.device,
            self.start_sector,
            self.nr_sectors + next.nr_sectors,
        )
        .ok()
    }

    /// Whether the two extents share a sector.
    pub fn overlaps(&self, other: &Extent) -> bool {
        self.device == other.device
            && self.start_sector < other.end_sector()
            && other.start_sector < self.end_sector()
    }
}

impl WireExtent {
    /// Check the raw extent: reserved bits zero, non-empty, no wrap-around. Whether the
    /// device exists and the extent fits in it is the hypervisor's registry to say.
    pub fn validate(&self) -> Result<Extent, Error> {
        if self._reserved != 0 {
            return Err(Error::InvalidArgument);
        }
        Extent::new(
            DeviceNumber::from_raw(self.device),
            self.start_sector,
            self.nr_sectors,
        )
    }
}

/// A validated [`CreateArgs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Create {
    pub handle: VbdHandle,
    pub mode: Mode,
    pub label: Label,
}

impl CreateArgs {
    pub fn validate(&self) -> Result<Create, Error> {
        Ok(Create {
            handle: self.handle,
            mode: Mode::from_wire(self.mode)?,
            label: Label::from_wire(self.label)?,
        })
    }
}

/// A validated [`GrowArgs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grow {
    pub handle: VbdHandle,
    pub extent: Extent,
    pub sharing: SharingLevel,
}

impl GrowArgs {
    pub fn validate(&self) -> Result<Grow, Error> {
        if self._reserved != 0 {
            return Err(Error::InvalidArgument);
        }
        Ok(Grow {
            handle: self.handle,
            extent: self.extent.validate()?,
            sharing: SharingLevel::try_from(self.sharing)?,
        })
    }
}

/// A validated [`SetExtentsArgs`]: one piece of a new extent list. The extents themselves
/// are validated as they are copied in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetExtentsPiece {
    pub handle: VbdHandle,
    pub extents_address: u64,
    pub nr_extents: u32,
    pub first_index: u32,
    /// The pending list this piece continues; meaningless when `first_index` is 0.
    pub ticket: u64,
    pub sharing: SharingLevel,
    /// Whether more pieces follow (the list stays pending).
    pub more: bool,
}

impl SetExtentsArgs {
    pub fn validate(&self) -> Result<SetExtentsPiece, Error> {
        let flags = SetExtentsFlags::from_bits(self.flags).ok_or(Error::InvalidArgument)?;
        Ok(SetExtentsPiece {
            handle: self.handle,
            extents_address: self.extents_address,
            nr_extents: self.nr_extents,
            first_index: self.first_index,
            ticket: self.ticket,
            sharing: SharingLevel::try_from(self.sharing)?,
            more: flags.contains(SetExtentsFlags::MORE),
        })
    }
}

impl ProbeArgs {
    /// Check the input fields. `count` and `generation` are outputs, so their input value
    /// does not matter.
    pub fn validate(&self) -> Result<(), Error> {
        if self._reserved != 0 {
            return Err(Error::InvalidArgument);
        }
        Ok(())
    }
}

impl InfoArgs {
    /// Check the input fields; everything but the handle, address, capacity and index is
    /// an output.
    pub fn validate(&self) -> Result<(), Error> {
        if self._reserved != 0 {
            return Err(Error::InvalidArgument);
        }
        Ok(())
    }
}

impl DomainArgs {
    pub fn validate(&self) -> Result<u32, Error> {
        if self._reserved != 0 {
            return Err(Error::InvalidArgument);
        }
        Ok(self.domain)
    }
}

impl HypercallRequest {
    pub fn validate(&self) -> Result<(), Error> {
        if self._reserved != 0 {
            return Err(Error::InvalidArgument);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip<
        T: FromBytes + IntoBytes + Immutable + KnownLayout + PartialEq + core::fmt::Debug,
    >(
        value: T,
    ) {
        let bytes = value.as_bytes().to_vec();
        assert_eq!(T::read_from_bytes(&bytes).unwrap(), value);
        // A short buffer is refused, never read past.
        assert!(T::read_from_bytes(&bytes[..bytes.len() - 1]).is_err());
    }

    proptest! {
        #[test]
        fn wire_structs_round_trip(a: u64, b: u64, c: u32, d: u32, e: u32, f: u32, label: [u8; LABEL_BYTES]) {
            let handle = VbdHandle { domain: c, vdevice: d };
            let extent = WireExtent { start_sector: a, nr_sectors: b, device: e, _reserved: f };
            round_trip(extent);
            round_trip(handle);
            round_trip(CreateArgs { handle, mode: e, label });
            round_trip(GrowArgs { handle, extent, sharing: e, _reserved: f });
            round_trip(SetExtentsArgs { handle, extents_address: a, nr_extents: e, first_index: f, sharing: c, flags: d, ticket: b });
            round_trip(ProbeArgs { domain: c, capacity: d, entries_address: a, count: e, _reserved: f, generation: b });
            round_trip(ProbeEntry { device: c, info: d, capacity_sectors: a, domain: e, nr_extents: f });
            round_trip(InfoArgs { handle, extents_address: a, capacity: e, first_index: f, nr_extents: c, mode: d, size_sectors: b, generation: a, _reserved: e, label });
            round_trip(DomainArgs { domain: c, _reserved: d });
            round_trip(LimitsArgs { abi_version: c, sharing_ceiling: d, domains: e, vbds_per_domain: f, extents: c, extents_free: d, disks: e, _reserved: f, max_call_bytes: a });
            round_trip(HypercallRequest { op: c, _reserved: d, args_address: a });
            round_trip(HypercallResponse { result: a as i64 });
            round_trip(BlockRequest { vdevice: c, nr_sectors: d, sector: a });
            round_trip(BlockResponse { result: b as i64 });
            round_trip(ReadyNotice { domain: c, abi_version: d, start_id: a });
            round_trip(ChangeNotice { domain: c, _reserved: d, generation: a });
        }

        #[test]
        fn extent_validation_matches_its_definition(start: u64, length: u64, reserved in prop_oneof![Just(0u32), any::<u32>()]) {
            let wire = WireExtent { start_sector: start, nr_sectors: length, device: 3 << 20, _reserved: reserved };
            let expected = if reserved != 0 || length == 0 {
                Err(Error::InvalidArgument)
            } else if start.checked_add(length).is_none() {
                Err(Error::OutOfRange)
            } else {
                Extent::new(DeviceNumber::from_raw(3 << 20), start, length)
            };
            prop_assert_eq!(wire.validate(), expected);
            if let Ok(extent) = expected {
                prop_assert_eq!((extent.start_sector(), extent.nr_sectors(), extent.end_sector()), (start, length, start + length));
                prop_assert_eq!(extent.to_wire(), wire);
            }
        }
    }

    #[test]
    fn layout_is_little_endian_and_fixed() {
        let extent = WireExtent {
            start_sector: 1,
            nr_sectors: 2,
            device: 3,
            _reserved: 0,
        };
        assert_eq!(
            extent.as_bytes(),
            &[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn extent_errors() {
        let hda = DeviceNumber::from_name("hda").unwrap();
        assert_eq!(Extent::new(hda, 0, 0), Err(Error::InvalidArgument));
        assert_eq!(Extent::new(hda, u64::MAX, 1), Err(Error::OutOfRange));
        // The defect the issue names: an extent whose end wraps cannot be built at all.
        assert_eq!(Extent::new(hda, u64::MAX, 2), Err(Error::OutOfRange));
        assert_eq!(
            Extent::new(hda, u64::MAX - 1, 1).unwrap().end_sector(),
            u64::MAX
        );
    }

    #[test]
    fn only_adjacent_extents_on_one_device_join() {
        let hda = DeviceNumber::from_name("hda").unwrap();
        let hdb = DeviceNumber::from_name("hdb").unwrap();
        let first = Extent::new(hda, 0, 10).unwrap();
        assert_eq!(
            first.joined(&Extent::new(hda, 10, 5).unwrap()),
            Some(Extent::new(hda, 0, 15).unwrap())
        );
        assert_eq!(first.joined(&Extent::new(hda, 11, 5).unwrap()), None);
        assert_eq!(first.joined(&Extent::new(hdb, 10, 5).unwrap()), None);
    }

    #[test]
    fn overlap_includes_containment_and_excludes_adjacency() {
        let hda = DeviceNumber::from_name("hda").unwrap();
        let hdb = DeviceNumber::from_name("hdb").unwrap();
        let outer = Extent::new(hda, 0, 100).unwrap();
        assert!(outer.overlaps(&Extent::new(hda, 10, 5).unwrap()));
        assert!(Extent::new(hda, 10, 5).unwrap().overlaps(&outer));
        assert!(!outer.overlaps(&Extent::new(hda, 100, 5).unwrap()));
        assert!(!outer.overlaps(&Extent::new(hdb, 10, 5).unwrap()));
    }

    fn handle() -> VbdHandle {
        VbdHandle {
            domain: 1,
            vdevice: 202 << 20,
        }
    }

    #[test]
    fn create_validation() {
        let good = CreateArgs {
            handle: handle(),
            mode: 3,
            label: Label::new("vd:7").unwrap().to_wire(),
        };
        assert_eq!(
            good.validate(),
            Ok(Create {
                handle: handle(),
                mode: Mode::READ | Mode::WRITE,
                label: Label::new("vd:7").unwrap()
            })
        );
        let bad_mode = CreateArgs { mode: 4, ..good };
        assert_eq!(bad_mode.validate(), Err(Error::InvalidArgument));
        let mut label = good.label;
        label[6] = b'x';
        let bad_label = CreateArgs { label, ..good };
        assert_eq!(bad_label.validate(), Err(Error::InvalidArgument));
    }

    #[test]
    fn grow_validation() {
        let extent = WireExtent {
            start_sector: 0,
            nr_sectors: 8,
            device: 3 << 20,
            _reserved: 0,
        };
        let good = GrowArgs {
            handle: handle(),
            extent,
            sharing: 1,
            _reserved: 0,
        };
        assert_eq!(
            good.validate(),
            Ok(Grow {
                handle: handle(),
                extent: extent.validate().unwrap(),
                sharing: SharingLevel::SingleWriter
            })
        );
        assert_eq!(
            GrowArgs { sharing: 3, ..good }.validate(),
            Err(Error::InvalidArgument)
        );
        assert_eq!(
            GrowArgs {
                _reserved: 1,
                ..good
            }
            .validate(),
            Err(Error::InvalidArgument)
        );
        let wrapping = WireExtent {
            start_sector: u64::MAX,
            nr_sectors: 2,
            ..extent
        };
        assert_eq!(
            GrowArgs {
                extent: wrapping,
                ..good
            }
            .validate(),
            Err(Error::OutOfRange)
        );
    }

    #[test]
    fn set_extents_validation() {
        let good = SetExtentsArgs {
            handle: handle(),
            extents_address: 64,
            nr_extents: 2,
            first_index: 5,
            sharing: 2,
            flags: SetExtentsFlags::MORE.bits(),
            ticket: 9,
        };
        assert_eq!(
            good.validate(),
            Ok(SetExtentsPiece {
                handle: handle(),
                extents_address: 64,
                nr_extents: 2,
                first_index: 5,
                ticket: 9,
                sharing: SharingLevel::Unrestricted,
                more: true
            })
        );
        assert!(!SetExtentsArgs { flags: 0, ..good }.validate().unwrap().more);
        assert_eq!(
            SetExtentsArgs { flags: 2, ..good }.validate(),
            Err(Error::InvalidArgument)
        );
        assert_eq!(
            SetExtentsArgs { sharing: 7, ..good }.validate(),
            Err(Error::InvalidArgument)
        );
    }

    #[test]
    fn reserved_fields_must_be_zero() {
        assert_eq!(
            ProbeArgs {
                _reserved: 1,
                ..Default::default()
            }
            .validate(),
            Err(Error::InvalidArgument)
        );
        assert_eq!(
            DomainArgs {
                domain: 1,
                _reserved: 1
            }
            .validate(),
            Err(Error::InvalidArgument)
        );
        assert_eq!(
            InfoArgs {
                _reserved: 1,
                ..Default::default()
            }
            .validate(),
            Err(Error::InvalidArgument)
        );
        assert_eq!(
            HypercallRequest {
                op: 3,
                _reserved: 1,
                args_address: 0
            }
            .validate(),
            Err(Error::InvalidArgument)
        );
    }
}
