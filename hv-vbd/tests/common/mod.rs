//! A test guest: builds a memory image, issues hypercalls through `dispatch`, reads results.
#![allow(dead_code)] // Each test binary uses part of this harness.

use hv_vbd::{
    Access, Disk, GuestAddress, ListPiece, Request, Segment, SliceMemory, VbdId, VbdTable,
};
use shared_abi::{
    wire::{
        CreateArgs, GrowArgs, InfoArgs, ProbeArgs, ProbeEntry, SetExtentsArgs, SetExtentsFlags,
        VbdHandle, WireExtent,
    },
    DeviceNumber, Error, Label, Op, SharingLevel,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub type Table = VbdTable<4, 4, 64, 4>;

/// Where the harness puts the argument struct and the array beside it.
pub const ARGS: u64 = 0;
pub const ARRAY: u64 = 256;
pub const MEMORY_BYTES: usize = 256 + 64 * 24;

pub const DOM0: u32 = 0;
pub const GUEST: u32 = 1;
pub const OTHER_GUEST: u32 = 2;
pub const DISK_SECTORS: u64 = 1000;

/// The level the harness's grow and set-extents ask for unless told otherwise.
pub const LEVEL: SharingLevel = SharingLevel::ReadersOnly;

pub fn hda() -> DeviceNumber {
    DeviceNumber::from_name("hda").unwrap()
}

pub fn hdb() -> DeviceNumber {
    DeviceNumber::from_name("hdb").unwrap()
}

pub fn xvda() -> DeviceNumber {
    DeviceNumber::from_name("xvda").unwrap()
}

pub fn xvdb() -> DeviceNumber {
    DeviceNumber::from_name("xvdb").unwrap()
}

/// A table with hda and hdb, 1000 sectors each, and the default ceiling (level 2).
pub fn table() -> Table {
    let table = Table::new(SharingLevel::Unrestricted);
    for device in [hda(), hdb()] {
        table
            .register_disk(Disk {
                device,
                sectors: DISK_SECTORS,
            })
            .unwrap();
    }
    table
}

pub fn extent(device: DeviceNumber, start_sector: u64, nr_sectors: u64) -> WireExtent {
    WireExtent {
        start_sector,
        nr_sectors,
        device: device.raw(),
        _reserved: 0,
    }
}

pub fn handle(domain: u32, vdevice: DeviceNumber) -> VbdHandle {
    VbdHandle {
        domain,
        vdevice: vdevice.raw(),
    }
}

pub fn id(domain: u32, vdevice: DeviceNumber) -> VbdId {
    VbdId { domain, vdevice }
}

/// A guest memory image with `args` at [`ARGS`] and `array` at [`ARRAY`].
pub struct Image(pub Vec<u8>);

impl Image {
    pub fn new<T: IntoBytes + Immutable>(args: &T, array: &[u8]) -> Image {
        let mut bytes = vec![0u8; MEMORY_BYTES.max(ARRAY as usize + array.len())];
        bytes[..args.as_bytes().len()].copy_from_slice(args.as_bytes());
        bytes[ARRAY as usize..ARRAY as usize + array.len()].copy_from_slice(array);
        Image(bytes)
    }

    pub fn args<T: FromBytes + KnownLayout + Immutable>(&self) -> T {
        T::read_from_prefix(&self.0).unwrap().0
    }

    pub fn array<T: FromBytes + KnownLayout + Immutable>(&self, count: usize) -> Vec<T> {
        let size = core::mem::size_of::<T>();
        (0..count)
            .map(|index| {
                T::read_from_bytes(&self.0[ARRAY as usize + index * size..][..size]).unwrap()
            })
            .collect()
    }
}

/// Issue `op` from `caller` with `image` as its memory; returns the wire result, once any
/// fence is complete.
pub fn call(table: &Table, caller: u32, op: Op, image: &mut Image) -> i64 {
    let outcome = table.dispatch(
        caller,
        op as u32,
        GuestAddress(ARGS),
        &mut SliceMemory::new(&mut image.0),
    );
    if let Some(fence) = outcome.fence {
        fence.wait(std::thread::yield_now);
    }
    outcome.result
}

pub fn errno(error: Error) -> i64 {
    error.to_wire()
}

pub fn create_labelled(
    table: &Table,
    caller: u32,
    domain: u32,
    vdevice: DeviceNumber,
    mode: u32,
    label: &str,
) -> i64 {
    let args = CreateArgs {
        handle: handle(domain, vdevice),
        mode,
        label: Label::new(label).unwrap().to_wire(),
    };
    call(table, caller, Op::Create, &mut Image::new(&args, &[]))
}

pub fn create(table: &Table, caller: u32, domain: u32, vdevice: DeviceNumber, mode: u32) -> i64 {
    create_labelled(table, caller, domain, vdevice, mode, "")
}

pub fn grow_at(
    table: &Table,
    caller: u32,
    domain: u32,
    vdevice: DeviceNumber,
    extent: WireExtent,
    level: SharingLevel,
) -> i64 {
    let args = GrowArgs {
        handle: handle(domain, vdevice),
        extent,
        sharing: level.number(),
        _reserved: 0,
    };
    call(table, caller, Op::Grow, &mut Image::new(&args, &[]))
}

pub fn grow(
    table: &Table,
    caller: u32,
    domain: u32,
    vdevice: DeviceNumber,
    extent: WireExtent,
) -> i64 {
    grow_at(table, caller, domain, vdevice, extent, LEVEL)
}

/// A piece at `first_index` of the list `ticket` names, at the harness's level.
pub fn piece(first_index: u32, ticket: u64, more: bool) -> ListPiece {
    ListPiece {
        first_index,
        ticket,
        more,
        level: LEVEL,
    }
}

/// One set-extents piece through `dispatch`: (result, args after the call).
pub fn set_piece(
    table: &Table,
    caller: u32,
    target: VbdHandle,
    extents: &[WireExtent],
    piece: ListPiece,
) -> (i64, SetExtentsArgs) {
    let args = SetExtentsArgs {
        handle: target,
        extents_address: ARRAY,
        nr_extents: extents.len() as u32,
        first_index: piece.first_index,
        sharing: piece.level.number(),
        flags: if piece.more {
            SetExtentsFlags::MORE.bits()
        } else {
            0
        },
        ticket: piece.ticket,
    };
    let mut image = Image::new(&args, extents.as_bytes());
    let result = call(table, caller, Op::SetExtents, &mut image);
    (result, image.args())
}

pub fn set_extents_at(
    table: &Table,
    caller: u32,
    domain: u32,
    vdevice: DeviceNumber,
    extents: &[WireExtent],
    level: SharingLevel,
) -> i64 {
    set_piece(
        table,
        caller,
        handle(domain, vdevice),
        extents,
        ListPiece {
            level,
            ..piece(0, 0, false)
        },
    )
    .0
}

pub fn set_extents(
    table: &Table,
    caller: u32,
    domain: u32,
    vdevice: DeviceNumber,
    extents: &[WireExtent],
) -> i64 {
    set_extents_at(table, caller, domain, vdevice, extents, LEVEL)
}

pub fn vbd_op(table: &Table, caller: u32, op: Op, domain: u32, vdevice: DeviceNumber) -> i64 {
    call(
        table,
        caller,
        op,
        &mut Image::new(&handle(domain, vdevice), &[]),
    )
}

/// Probe with room for `capacity` entries: (result, args after the call, entries written).
pub fn probe(
    table: &Table,
    caller: u32,
    domain: u32,
    capacity: u32,
) -> (i64, ProbeArgs, Vec<ProbeEntry>) {
    let args = ProbeArgs {
        domain,
        capacity,
        entries_address: ARRAY,
        ..Default::default()
    };
    let mut image = Image::new(&args, &[]);
    let result = call(table, caller, Op::Probe, &mut image);
    let after: ProbeArgs = image.args();
    let written = if result >= 0 { result as usize } else { 0 };
    (result, after, image.array(written))
}

/// Info of up to `capacity` extents from `first_index`: (result, args after, extents).
pub fn info_from(
    table: &Table,
    caller: u32,
    domain: u32,
    vdevice: DeviceNumber,
    first_index: u32,
    capacity: u32,
) -> (i64, InfoArgs, Vec<WireExtent>) {
    let args = InfoArgs {
        handle: handle(domain, vdevice),
        extents_address: ARRAY,
        capacity,
        first_index,
        ..Default::default()
    };
    let mut image = Image::new(&args, &[]);
    let result = call(table, caller, Op::Info, &mut image);
    let after: InfoArgs = image.args();
    let written = if result >= 0 { result as usize } else { 0 };
    (result, after, image.array(written))
}

/// Info with room for `capacity` extents from the first.
pub fn info(
    table: &Table,
    caller: u32,
    domain: u32,
    vdevice: DeviceNumber,
    capacity: u32,
) -> (i64, InfoArgs, Vec<WireExtent>) {
    info_from(table, caller, domain, vdevice, 0, capacity)
}

/// Translate a request of `domain` on `vdevice` with room for `room` segments.
pub fn translate_with_room(
    table: &Table,
    domain: u32,
    vdevice: DeviceNumber,
    sector: u64,
    count: u64,
    access: Access,
    room: usize,
) -> Result<Vec<Segment>, Error> {
    let context = table.io_context();
    let request = Request::new(access, sector, count)?;
    let mut out = vec![Segment::default(); room];
    let translation = table.translate(&context, id(domain, vdevice), &request, &mut out)?;
    Ok(translation.segments().to_vec())
}

/// Translate a request of `domain` on its xvda.
pub fn translate(
    table: &Table,
    domain: u32,
    sector: u64,
    count: u64,
    access: Access,
) -> Result<Vec<Segment>, Error> {
    translate_with_room(table, domain, xvda(), sector, count, access, 8)
}
