//! Typed hypercalls and block I/O over a [`Channel`].
//!
//! A hypercall frame carries the caller's memory image: the argument struct at offset 0 and
//! any array after it at [`ARRAY_ADDRESS`]. The reply carries the image back as the
//! hypervisor left it, from which results are copied out. Arrays longer than one call can
//! carry (the hypervisor's limits say how long that is) go in pieces: set-extents builds a
//! pending list that the last piece swaps in at once, and info reads from an index on.

use std::time::Duration;

use shared_abi::frame::{FrameKind, MAX_BLOCK_SECTORS, MAX_PAYLOAD};
use shared_abi::wire::{
    BlockRequest, BlockResponse, CreateArgs, DomainArgs, Extent, GrowArgs, HypercallRequest,
    HypercallResponse, InfoArgs, LimitsArgs, ProbeArgs, ProbeEntry, ReadyNotice, SetExtentsArgs,
    SetExtentsFlags, VbdHandle, WireExtent, PROBE_ALL,
};
use shared_abi::{DeviceNumber, Label, Mode, Op, SharingLevel, SECTOR_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::channel::REPLY_TIMEOUT;
use super::{Channel, Endpoint, HypervisorError};

/// Where the array of a hypercall sits in the memory image, after the argument struct (the
/// largest, `InfoArgs`, is 72 bytes).
const ARRAY_ADDRESS: usize = 128;
/// The most bytes of memory image one frame carries.
const MAX_IMAGE_BYTES: usize = MAX_PAYLOAD - std::mem::size_of::<HypercallRequest>();
/// How many extents info's first piece has room for: a VBD's list, mostly, in a page of
/// memory image; the first reply says how many there are, and later pieces are sized to
/// the rest.
const FIRST_INFO_EXTENTS: usize = (4096 - ARRAY_ADDRESS) / std::mem::size_of::<WireExtent>();
/// How long the `Ready` handshake may take: a port answers it at once unless another
/// client holds it, and then the caller should hear so well before [`REPLY_TIMEOUT`].
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a read in pieces starts again because the VBD changed meanwhile, before it
/// gives up.
const PIECE_RESTARTS: usize = 8;

/// One VBD as probe reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VbdSummary {
    pub domain: u32,
    pub vdevice: DeviceNumber,
    pub mode: Mode,
    pub size_sectors: u64,
    pub nr_extents: u32,
}

/// One VBD in full, as info reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VbdDetails {
    pub domain: u32,
    pub vdevice: DeviceNumber,
    pub mode: Mode,
    pub size_sectors: u64,
    /// What dom0 named it when it created it, e.g. `vd:3`; may be empty.
    pub label: Label,
    pub extents: Vec<Extent>,
}

/// What the hypervisor enforces and how large its tables are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub sharing_ceiling: SharingLevel,
    pub domains: u32,
    pub vbds_per_domain: u32,
    pub extents: u32,
    pub extents_free: u32,
    pub disks: u32,
    /// The most bytes of arguments and array one call carries.
    pub max_call_bytes: u64,
}

impl Limits {
    /// How many elements of `element_bytes` one call can carry beside its arguments.
    fn array_room(&self, element_bytes: usize) -> usize {
        let call_bytes = usize::try_from(self.max_call_bytes).unwrap_or(usize::MAX);
        call_bytes
            .min(MAX_IMAGE_BYTES)
            .saturating_sub(ARRAY_ADDRESS)
            / element_bytes
    }
}

/// A connection to one hypervisor port, speaking for that port's domain.
pub struct Hypervisor {
    channel: Channel,
    endpoint: String,
    domain: u32,
    start_id: u64,
    limits: Option<Limits>,
}

fn handle(domain: u32, vdevice: DeviceNumber) -> VbdHandle {
    VbdHandle {
        domain,
        vdevice: vdevice.raw(),
    }
}

fn describe(domain: u32, vdevice: DeviceNumber) -> String {
    match vdevice.name() {
        Some(name) => format!("{name} of domain {domain}"),
        None => format!("{vdevice} of domain {domain}"),
    }
}

impl Hypervisor {
    /// Connect to `unix:PATH` and learn which domain the port belongs to: the client sends
    /// an empty `Ready` frame and the hypervisor answers with the port's [`ReadyNotice`].
    pub fn connect(endpoint: &str) -> Result<Hypervisor, HypervisorError> {
        Hypervisor::connect_within(endpoint, HANDSHAKE_TIMEOUT)
    }

    /// [`Hypervisor::connect`], waiting `handshake` for the `Ready` reply.
    fn connect_within(endpoint: &str, handshake: Duration) -> Result<Hypervisor, HypervisorError> {
        let parsed: Endpoint = endpoint.parse()?;
        let mut channel = Channel::connect(&parsed)?;
        channel.set_reply_timeout(handshake)?;
        let reply = channel
            .request(FrameKind::Ready, &[], FrameKind::Ready)
            .map_err(|error| match error {
                HypervisorError::NoReply { endpoint, waited } => HypervisorError::Protocol {
                    endpoint,
                    message: format!(
                        "no answer to the handshake within {} s: another client may hold \
                         the port (a port serves one connection at a time)",
                        waited.as_secs_f64()
                    ),
                },
                other => other,
            })?;
        channel.set_reply_timeout(REPLY_TIMEOUT)?;
        let notice = ReadyNotice::read_from_prefix(&reply)
            .map(|(notice, _)| notice)
            .map_err(|_| HypervisorError::Protocol {
                endpoint: endpoint.to_owned(),
                message: "short ready reply".to_owned(),
            })?;
        if notice.abi_version != shared_abi::ABI_VERSION {
            return Err(HypervisorError::Protocol {
                endpoint: endpoint.to_owned(),
                message: format!(
                    "speaks ABI version {}, this vdisk speaks {}",
                    notice.abi_version,
                    shared_abi::ABI_VERSION
                ),
            });
        }
        Ok(Hypervisor {
            channel,
            endpoint: endpoint.to_owned(),
            domain: notice.domain,
            start_id: notice.start_id,
            limits: None,
        })
    }

    /// The domain this port belongs to.
    pub fn domain(&self) -> u32 {
        self.domain
    }

    /// The identifier of the hypervisor's current start: a record made under another start
    /// describes a VBD that a restart took away.
    pub fn start_id(&self) -> u64 {
        self.start_id
    }

    /// The endpoint this client is connected to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The underlying channel, for notices and raw bytes.
    pub fn channel(&mut self) -> &mut Channel {
        &mut self.channel
    }

    fn protocol_error(&self, message: impl Into<String>) -> HypervisorError {
        HypervisorError::Protocol {
            endpoint: self.endpoint.clone(),
            message: message.into(),
        }
    }

    /// Issue `op` with `args` and `array` in a memory image with `array_room` bytes for the
    /// array; returns the wire result and the memory image after the call.
    fn hypercall<T: IntoBytes + Immutable>(
        &mut self,
        op: Op,
        args: &T,
        array: &[u8],
        array_room: usize,
        operation: impl FnOnce() -> String,
    ) -> Result<(u64, Vec<u8>), HypervisorError> {
        let room = array_room.max(array.len());
        if ARRAY_ADDRESS + room > MAX_IMAGE_BYTES {
            return Err(self.protocol_error(format!(
                "{}: {room} bytes of arguments exceed one frame ({} bytes)",
                operation(),
                MAX_IMAGE_BYTES - ARRAY_ADDRESS
            )));
        }
        let mut memory = vec![0u8; ARRAY_ADDRESS + room];
        memory[..args.as_bytes().len()].copy_from_slice(args.as_bytes());
        memory[ARRAY_ADDRESS..ARRAY_ADDRESS + array.len()].copy_from_slice(array);
        let request = HypercallRequest {
            op: op as u32,
            _reserved: 0,
            args_address: 0,
        };
        let reply = self.channel.request(
            FrameKind::HypercallRequest,
            &[request.as_bytes(), &memory],
            FrameKind::HypercallResponse,
        )?;
        let (response, image) = HypercallResponse::read_from_prefix(&reply)
            .map_err(|_| self.protocol_error("short hypercall reply"))?;
        // The reply carries the image as far as the call wrote; the rest is ours as sent.
        let written = memory
            .get_mut(..image.len())
            .ok_or_else(|| self.protocol_error("hypercall reply with a longer memory image"))?;
        written.copy_from_slice(image);
        match shared_abi::Error::from_wire(response.result) {
            Some(Ok(value)) => Ok((value, memory)),
            Some(Err(error)) => Err(HypervisorError::Refused {
                operation: operation(),
                error,
                image: Some(memory),
            }),
            None => Err(self.protocol_error(format!("unknown result {}", response.result))),
        }
    }

    fn read_back<T: FromBytes + KnownLayout + Immutable>(
        &self,
        image: &[u8],
        offset: usize,
    ) -> Result<T, HypervisorError> {
        image
            .get(offset..)
            .and_then(|bytes| T::read_from_prefix(bytes).ok())
            .map(|(value, _)| value)
            .ok_or_else(|| self.protocol_error("memory image too short"))
    }

    /// The hypervisor's ABI version.
    pub fn version(&mut self) -> Result<u32, HypervisorError> {
        let (version, _) = self.hypercall(Op::Version, &0u64, &[], 0, || "version".to_owned())?;
        u32::try_from(version).map_err(|_| self.protocol_error("version out of range"))
    }

    /// The hypervisor's limits and sharing ceiling, asked once per connection.
    pub fn limits(&mut self) -> Result<Limits, HypervisorError> {
        if let Some(limits) = self.limits {
            return Ok(limits);
        }
        let (_, image) = self.hypercall(Op::Limits, &LimitsArgs::default(), &[], 0, || {
            "limits".to_owned()
        })?;
        let wire: LimitsArgs = self.read_back(&image, 0)?;
        let limits = Limits {
            sharing_ceiling: SharingLevel::try_from(wire.sharing_ceiling)
                .map_err(|_| self.protocol_error("a sharing ceiling out of range"))?,
            domains: wire.domains,
            vbds_per_domain: wire.vbds_per_domain,
            extents: wire.extents,
            extents_free: wire.extents_free,
            disks: wire.disks,
            max_call_bytes: wire.max_call_bytes,
        };
        self.limits = Some(limits);
        Ok(limits)
    }

    /// Create an empty VBD named `label`.
    pub fn create(
        &mut self,
        domain: u32,
        vdevice: DeviceNumber,
        mode: Mode,
        label: Label,
    ) -> Result<(), HypervisorError> {
        let args = CreateArgs {
            handle: handle(domain, vdevice),
            mode: mode.bits(),
            label: label.to_wire(),
        };
        self.hypercall(Op::Create, &args, &[], 0, || {
            format!("create {}", describe(domain, vdevice))
        })
        .map(drop)
    }

    /// Replace a VBD's extents atomically, accepting sharing up to `level`: in one call
    /// when the list fits, otherwise in pieces that only the last one makes visible.
    pub fn set_extents(
        &mut self,
        domain: u32,
        vdevice: DeviceNumber,
        extents: &[Extent],
        level: SharingLevel,
    ) -> Result<(), HypervisorError> {
        let room = self
            .limits()?
            .array_room(std::mem::size_of::<WireExtent>())
            .max(1);
        let wire: Vec<WireExtent> = extents.iter().map(Extent::to_wire).collect();
        let operation = || format!("set-extents on {}", describe(domain, vdevice));
        let pieces: Vec<&[WireExtent]> = if wire.is_empty() {
            vec![&[]]
        } else {
            wire.chunks(room).collect()
        };
        let mut ticket = 0;
        for (number, piece) in pieces.iter().enumerate() {
            let more = number + 1 < pieces.len();
            let args = SetExtentsArgs {
                handle: handle(domain, vdevice),
                extents_address: ARRAY_ADDRESS as u64,
                nr_extents: u32::try_from(piece.len())
                    .map_err(|_| self.protocol_error("a piece of over 4 G extents"))?,
                first_index: u32::try_from(number * room)
                    .map_err(|_| self.protocol_error("over 4 G extents"))?,
                sharing: level.number(),
                flags: if more {
                    SetExtentsFlags::MORE.bits()
                } else {
                    0
                },
                ticket,
            };
            let (_, image) =
                self.hypercall(Op::SetExtents, &args, piece.as_bytes(), 0, operation)?;
            ticket = self.read_back::<SetExtentsArgs>(&image, 0)?.ticket;
        }
        Ok(())
    }

    /// Append one extent, accepting sharing up to `level`.
    pub fn grow(
        &mut self,
        domain: u32,
        vdevice: DeviceNumber,
        extent: Extent,
        level: SharingLevel,
    ) -> Result<(), HypervisorError> {
        let args = GrowArgs {
            handle: handle(domain, vdevice),
            extent: extent.to_wire(),
            sharing: level.number(),
            _reserved: 0,
        };
        self.hypercall(Op::Grow, &args, &[], 0, || {
            format!("grow {}", describe(domain, vdevice))
        })
        .map(drop)
    }

    /// Remove the last extent.
    pub fn shrink(&mut self, domain: u32, vdevice: DeviceNumber) -> Result<(), HypervisorError> {
        self.hypercall(Op::Shrink, &handle(domain, vdevice), &[], 0, || {
            format!("shrink {}", describe(domain, vdevice))
        })
        .map(drop)
    }

    /// Delete a VBD.
    pub fn delete(&mut self, domain: u32, vdevice: DeviceNumber) -> Result<(), HypervisorError> {
        self.hypercall(Op::Delete, &handle(domain, vdevice), &[], 0, || {
            format!("delete {}", describe(domain, vdevice))
        })
        .map(drop)
    }

    /// Release everything a domain had; returns how many VBDs that was.
    pub fn destroy_domain(&mut self, domain: u32) -> Result<u64, HypervisorError> {
        let args = DomainArgs {
            domain,
            _reserved: 0,
        };
        self.hypercall(Op::DestroyDomain, &args, &[], 0, || {
            format!("destroy domain {domain}")
        })
        .map(|(released, _)| released)
    }

    /// The VBDs of `domain` (or of every domain for `None`) and the generation. A first
    /// call with room for a domain's worth of VBDs; when that is too small the hypervisor
    /// says how many there are, and the second call has exactly that room.
    pub fn probe(
        &mut self,
        domain: Option<u32>,
    ) -> Result<(Vec<VbdSummary>, u64), HypervisorError> {
        let target = domain.unwrap_or(PROBE_ALL);
        let entry_size = std::mem::size_of::<ProbeEntry>();
        let operation = || match domain {
            Some(domain) => format!("probe of domain {domain}"),
            None => "probe of all domains".to_owned(),
        };
        let mut capacity = self.limits()?.vbds_per_domain.max(1);
        for _ in 0..PIECE_RESTARTS {
            let args = ProbeArgs {
                domain: target,
                capacity,
                entries_address: ARRAY_ADDRESS as u64,
                ..Default::default()
            };
            match self.hypercall(
                Op::Probe,
                &args,
                &[],
                capacity as usize * entry_size,
                operation,
            ) {
                Ok((count, image)) => {
                    let after: ProbeArgs = self.read_back(&image, 0)?;
                    let entries = (0..count as usize)
                        .map(|index| {
                            self.read_back::<ProbeEntry>(&image, ARRAY_ADDRESS + index * entry_size)
                        })
                        .map(|entry| entry.map(summary))
                        .collect::<Result<Vec<_>, _>>()?;
                    return Ok((entries, after.generation));
                }
                Err(HypervisorError::Refused {
                    error: shared_abi::Error::TooBig,
                    image: Some(image),
                    ..
                }) => {
                    // The count needed was written back; VBDs may come and go meanwhile,
                    // so the next call may be too small again, a bounded number of times.
                    capacity = self.read_back::<ProbeArgs>(&image, 0)?.count.max(1);
                }
                Err(error) => return Err(error),
            }
        }
        Err(self.protocol_error(format!("{}: the VBDs kept changing", operation())))
    }

    /// One VBD's mode, size, label and every extent, read in as many pieces as the list
    /// needs; a piece that finds the VBD changed since the first starts the read again.
    pub fn info(
        &mut self,
        domain: u32,
        vdevice: DeviceNumber,
    ) -> Result<VbdDetails, HypervisorError> {
        let extent_size = std::mem::size_of::<WireExtent>();
        let most = self.limits()?.array_room(extent_size).max(1);
        let operation = || format!("info on {}", describe(domain, vdevice));
        'restart: for _ in 0..PIECE_RESTARTS {
            let mut extents = Vec::new();
            let mut first: Option<InfoArgs> = None;
            loop {
                // The whole image travels to the hypervisor, so each piece has room for
                // what is still to come (known after the first), not for a whole frame.
                let room = match first {
                    None => FIRST_INFO_EXTENTS,
                    Some(first) => (first.nr_extents as usize).saturating_sub(extents.len()),
                }
                .clamp(1, most);
                let args = InfoArgs {
                    handle: handle(domain, vdevice),
                    extents_address: ARRAY_ADDRESS as u64,
                    capacity: u32::try_from(room).unwrap_or(u32::MAX),
                    first_index: extents.len() as u32,
                    ..Default::default()
                };
                let (count, image) =
                    self.hypercall(Op::Info, &args, &[], room * extent_size, operation)?;
                let after: InfoArgs = self.read_back(&image, 0)?;
                match first {
                    Some(first) if first.generation != after.generation => continue 'restart,
                    Some(_) => {}
                    None => first = Some(after),
                }
                for index in 0..count as usize {
                    let wire: WireExtent =
                        self.read_back(&image, ARRAY_ADDRESS + index * extent_size)?;
                    extents.push(wire.validate().map_err(|error| {
                        self.protocol_error(format!("bad extent in info: {error}"))
                    })?);
                }
                if extents.len() >= after.nr_extents as usize || count == 0 {
                    break;
                }
            }
            let after = first.ok_or_else(|| self.protocol_error("no info"))?;
            if extents.len() != after.nr_extents as usize {
                return Err(self.protocol_error(format!(
                    "{}: {} of {} extents returned",
                    operation(),
                    extents.len(),
                    after.nr_extents
                )));
            }
            return Ok(VbdDetails {
                domain,
                vdevice,
                mode: Mode::from_wire(after.mode)
                    .map_err(|_| self.protocol_error("a VBD mode out of range"))?,
                size_sectors: after.size_sectors,
                label: Label::from_wire(after.label)
                    .map_err(|_| self.protocol_error("a malformed VBD label"))?,
                extents,
            });
        }
        Err(self.protocol_error(format!("{}: the VBD kept changing", operation())))
    }

    /// Every VBD of `domain` (or of every domain for `None`), in full.
    pub fn all_vbds(&mut self, domain: Option<u32>) -> Result<Vec<VbdDetails>, HypervisorError> {
        let (summaries, _) = self.probe(domain)?;
        summaries
            .iter()
            .map(|vbd| self.info(vbd.domain, vbd.vdevice))
            .collect()
    }

    /// Read `nr_sectors` sectors from the port's VBD `vdevice`, starting at `sector`.
    pub fn read(
        &mut self,
        vdevice: DeviceNumber,
        sector: u64,
        nr_sectors: u32,
    ) -> Result<Vec<u8>, HypervisorError> {
        let request = block_request(vdevice, sector, nr_sectors);
        let reply = self.channel.request(
            FrameKind::BlockRead,
            &[request.as_bytes()],
            FrameKind::BlockResponse,
        )?;
        let data = self.block_result(&reply, || {
            format!("read of {nr_sectors} sectors at {sector} from {vdevice}")
        })?;
        if data.len() as u64 != u64::from(nr_sectors) * SECTOR_SIZE {
            return Err(self.protocol_error("a read reply of the wrong length"));
        }
        Ok(data.to_vec())
    }

    /// Write whole sectors to the port's VBD `vdevice`, starting at `sector`.
    pub fn write(
        &mut self,
        vdevice: DeviceNumber,
        sector: u64,
        data: &[u8],
    ) -> Result<(), HypervisorError> {
        if !(data.len() as u64).is_multiple_of(SECTOR_SIZE)
            || data.len() as u64 > u64::from(MAX_BLOCK_SECTORS) * SECTOR_SIZE
        {
            return Err(self.protocol_error(format!(
                "a write of {} bytes is not whole sectors within one request",
                data.len()
            )));
        }
        let nr_sectors = (data.len() as u64 / SECTOR_SIZE) as u32;
        let request = block_request(vdevice, sector, nr_sectors);
        let reply = self.channel.request(
            FrameKind::BlockWrite,
            &[request.as_bytes(), data],
            FrameKind::BlockResponse,
        )?;
        self.block_result(&reply, || {
            format!("write of {nr_sectors} sectors at {sector} to {vdevice}")
        })?;
        Ok(())
    }

    fn block_result<'a>(
        &self,
        reply: &'a [u8],
        operation: impl FnOnce() -> String,
    ) -> Result<&'a [u8], HypervisorError> {
        let (response, data) = BlockResponse::read_from_prefix(reply)
            .map_err(|_| self.protocol_error("short block reply"))?;
        match shared_abi::Error::from_wire(response.result) {
            Some(Ok(_)) => Ok(data),
            Some(Err(error)) => Err(HypervisorError::Refused {
                operation: operation(),
                error,
                image: None,
            }),
            None => Err(self.protocol_error(format!("unknown result {}", response.result))),
        }
    }
}

fn block_request(vdevice: DeviceNumber, sector: u64, nr_sectors: u32) -> BlockRequest {
    BlockRequest {
        vdevice: vdevice.raw(),
        nr_sectors,
        sector,
    }
}

fn summary(entry: ProbeEntry) -> VbdSummary {
    let read_only = entry.info & shared_abi::ProbeInfo::READ_ONLY.bits() != 0;
    VbdSummary {
        domain: entry.domain,
        vdevice: DeviceNumber::from_raw(entry.device),
        mode: if read_only {
            Mode::READ
        } else {
            Mode::READ | Mode::WRITE
        },
        size_sectors: entry.capacity_sectors,
        nr_extents: entry.nr_extents,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_port_that_never_answers_the_handshake_is_named_as_possibly_held() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("held.sock");
        // Accepted but never served, as a QEMU serial socket queues a second client.
        let _listener = UnixListener::bind(&path).unwrap();
        let endpoint = format!("unix:{}", path.display());
        let error = Hypervisor::connect_within(&endpoint, Duration::from_millis(200))
            .err()
            .expect("no handshake");
        assert_eq!(
            error.to_string(),
            format!(
                "hypervisor at {endpoint}: no answer to the handshake within 0.2 s: another \
                 client may hold the port (a port serves one connection at a time)"
            )
        );
    }
}
