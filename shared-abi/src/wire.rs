//! Raw argument and result structs of every operation, exactly as they sit in guest memory.
//!
//! All fields are little-endian fixed-width integers; padding is spelled `_reserved` and must
//! be zero, so it can carry meaning in a later version. Decode a struct with zerocopy's
//! `FromBytes::read_from_bytes` (it copies, so nothing keeps pointing into guest memory), then
//! reach the typed value through a `validate` method.

use static_assertions::{assert_eq_size, const_assert_eq};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{DeviceNumber, Error, Mode};

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
    /// Arguments of [`crate::Op::Create`].
    CreateArgs { handle: VbdHandle, mode: u32, _reserved: u32 }
);

wire_struct!(
    /// Arguments of [`crate::Op::Grow`].
    GrowArgs { handle: VbdHandle, extent: WireExtent }
);

wire_struct!(
    /// Arguments of [`crate::Op::SetExtents`]: `nr_extents` [`WireExtent`]s at
    /// `extents_address`. An empty list empties the VBD.
    SetExtentsArgs { handle: VbdHandle, extents_address: u64, nr_extents: u32, _reserved: u32 }
);

wire_struct!(
    /// Arguments and results of [`crate::Op::Probe`]. The caller fills `domain` (or
    /// [`PROBE_ALL`]), `entries_address` and `capacity`; the hypervisor writes `count` (the
    /// number of VBDs, even when they did not fit: then the result is `E2BIG` and no entry is
    /// written) and `generation` (the probed domain's change counter).
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
    /// Arguments and results of [`crate::Op::Info`]: the caller fills `handle`,
    /// `extents_address` and `capacity`; the hypervisor writes `mode`, `nr_extents` and
    /// `size_sectors`, and the extents when they fit (`E2BIG` otherwise).
    InfoArgs {
        handle: VbdHandle,
        extents_address: u64,
        capacity: u32,
        nr_extents: u32,
        mode: u32,
        _reserved: u32,
        size_sectors: u64,
    }
);

wire_struct!(
    /// Arguments of [`crate::Op::DestroyDomain`].
    DomainArgs { domain: u32, _reserved: u32 }
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
    /// Sent by the hypervisor on a port when it starts serving it.
    ReadyNotice { domain: u32, abi_version: u32 }
);

wire_struct!(
    /// Pushed to a guest when its VBDs changed: probe again.
    ChangeNotice { domain: u32, _reserved: u32, generation: u64 }
);

assert_eq_size!(WireExtent, [u8; 24]);
assert_eq_size!(VbdHandle, [u8; 8]);
assert_eq_size!(CreateArgs, [u8; 16]);
assert_eq_size!(GrowArgs, [u8; 32]);
assert_eq_size!(SetExtentsArgs, [u8; 24]);
assert_eq_size!(ProbeArgs, [u8; 32]);
assert_eq_size!(ProbeEntry, [u8; 24]);
assert_eq_size!(InfoArgs, [u8; 40]);
assert_eq_size!(DomainArgs, [u8; 8]);
assert_eq_size!(HypercallRequest, [u8; 16]);
assert_eq_size!(HypercallResponse, [u8; 8]);
assert_eq_size!(BlockRequest, [u8; 16]);
assert_eq_size!(BlockResponse, [u8; 8]);
assert_eq_size!(ReadyNotice, [u8; 8]);
assert_eq_size!(ChangeNotice, [u8; 16]);
const_assert_eq!(core::mem::offset_of!(WireExtent, device), 16);
const_assert_eq!(core::mem::offset_of!(GrowArgs, extent), 8);
const_assert_eq!(core::mem::offset_of!(SetExtentsArgs, extents_address), 8);
const_assert_eq!(core::mem::offset_of!(SetExtentsArgs, nr_extents), 16);
const_assert_eq!(core::mem::offset_of!(ProbeArgs, entries_address), 8);
const_assert_eq!(core::mem::offset_of!(ProbeArgs, count), 16);
const_assert_eq!(core::mem::offset_of!(ProbeArgs, generation), 24);
const_assert_eq!(core::mem::offset_of!(ProbeEntry, capacity_sectors), 8);
const_assert_eq!(core::mem::offset_of!(InfoArgs, extents_address), 8);
const_assert_eq!(core::mem::offset_of!(InfoArgs, size_sectors), 32);
const_assert_eq!(core::mem::offset_of!(BlockRequest, sector), 8);

/// A validated extent: non-empty, and its end fits in a `u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Extent {
    pub device: DeviceNumber,
    pub start_sector: u64,
    pub nr_sectors: u64,
}

impl Extent {
    /// The first sector past the extent. Cannot overflow: [`WireExtent::validate`] and
    /// [`Extent::new`] checked it.
    pub const fn end_sector(&self) -> u64 {
        self.start_sector + self.nr_sectors
    }

    /// A checked extent, or `EINVAL` for an empty one and `ERANGE` for one whose end wraps.
    pub fn new(device: DeviceNumber, start_sector: u64, nr_sectors: u64) -> Result<Extent, Error> {
        if nr_sectors == 0 {
            return Err(Error::InvalidArgument);
        }
        start_sector
            .checked_add(nr_sectors)
            .ok_or(Error::OutOfRange)?;
        Ok(Extent {
            device,
            start_sector,
            nr_sectors,
        })
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
    pub domain: u32,
    pub vdevice: DeviceNumber,
    pub mode: Mode,
}

impl CreateArgs {
    pub fn validate(&self) -> Result<Create, Error> {
        if self._reserved != 0 {
            return Err(Error::InvalidArgument);
        }
        Ok(Create {
            domain: self.handle.domain,
            vdevice: DeviceNumber::from_raw(self.handle.vdevice),
            mode: Mode::from_wire(self.mode)?,
        })
    }
}

impl SetExtentsArgs {
    /// Check the reserved field; the list itself is validated as it is copied in.
    pub fn validate(&self) -> Result<(), Error> {
        if self._reserved != 0 {
            return Err(Error::InvalidArgument);
        }
        Ok(())
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
    /// Check the input fields; `nr_extents`, `mode` and `size_sectors` are outputs.
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
        fn wire_structs_round_trip(a: u64, b: u64, c: u32, d: u32, e: u32, f: u32) {
            round_trip(WireExtent { start_sector: a, nr_sectors: b, device: c, _reserved: d });
            round_trip(VbdHandle { domain: c, vdevice: d });
            round_trip(CreateArgs { handle: VbdHandle { domain: c, vdevice: d }, mode: e, _reserved: f });
            round_trip(GrowArgs { handle: VbdHandle { domain: c, vdevice: d }, extent: WireExtent { start_sector: a, nr_sectors: b, device: e, _reserved: f } });
            round_trip(SetExtentsArgs { handle: VbdHandle { domain: c, vdevice: d }, extents_address: a, nr_extents: e, _reserved: f });
            round_trip(ProbeArgs { domain: c, capacity: d, entries_address: a, count: e, _reserved: f, generation: b });
            round_trip(ProbeEntry { device: c, info: d, capacity_sectors: a, domain: e, nr_extents: f });
            round_trip(InfoArgs { handle: VbdHandle { domain: c, vdevice: d }, extents_address: a, capacity: e, nr_extents: f, mode: c, _reserved: d, size_sectors: b });
            round_trip(DomainArgs { domain: c, _reserved: d });
            round_trip(HypercallRequest { op: c, _reserved: d, args_address: a });
            round_trip(HypercallResponse { result: a as i64 });
            round_trip(BlockRequest { vdevice: c, nr_sectors: d, sector: a });
            round_trip(BlockResponse { result: b as i64 });
            round_trip(ReadyNotice { domain: c, abi_version: d });
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
                Ok(Extent { device: DeviceNumber::from_raw(3 << 20), start_sector: start, nr_sectors: length })
            };
            prop_assert_eq!(wire.validate(), expected);
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
        assert_eq!(
            Extent::new(hda, u64::MAX - 1, 1).unwrap().end_sector(),
            u64::MAX
        );
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

    #[test]
    fn reserved_fields_must_be_zero() {
        let handle = VbdHandle {
            domain: 1,
            vdevice: 202 << 20,
        };
        assert_eq!(
            CreateArgs {
                handle,
                mode: 1,
                _reserved: 1
            }
            .validate(),
            Err(Error::InvalidArgument)
        );
        assert_eq!(
            CreateArgs {
                handle,
                mode: 4,
                _reserved: 0
            }
            .validate(),
            Err(Error::InvalidArgument)
        );
        assert_eq!(
            SetExtentsArgs {
                handle,
                extents_address: 0,
                nr_extents: 0,
                _reserved: 9
            }
            .validate(),
            Err(Error::InvalidArgument)
        );
        assert_eq!(
            ProbeArgs {
                _reserved: 1,
                ..Default::default()
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
            DomainArgs {
                domain: 1,
                _reserved: 1
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
        assert_eq!(
            CreateArgs {
                handle,
                mode: 3,
                _reserved: 0
            }
            .validate(),
            Ok(Create {
                domain: 1,
                vdevice: DeviceNumber::from_raw(202 << 20),
                mode: Mode::READ | Mode::WRITE
            })
        );
    }
}
