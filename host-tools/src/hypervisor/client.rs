//! Typed hypercalls and block I/O over a [`Channel`].
//!
//! A hypercall frame carries the caller's memory image: the argument struct at offset 0 and
//! any array after it at [`ARRAY_ADDRESS`]. The reply carries the image back as the
//! hypervisor left it, from which results are copied out.

use shared_abi::frame::{FrameKind, MAX_BLOCK_SECTORS, MAX_PAYLOAD};
use shared_abi::wire::{
    BlockRequest, BlockResponse, CreateArgs, DomainArgs, Extent, GrowArgs, HypercallRequest,
    HypercallResponse, InfoArgs, ProbeArgs, ProbeEntry, ReadyNotice, SetExtentsArgs, VbdHandle,
    WireExtent, PROBE_ALL,
};
use shared_abi::{DeviceNumber, Mode, Op, SECTOR_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{Channel, Endpoint, HypervisorError};

/// Where the array of a hypercall sits in the memory image, after the argument struct.
const ARRAY_ADDRESS: usize = 64;
/// Room for arrays in one frame.
const MAX_ARRAY_BYTES: usize =
    MAX_PAYLOAD - ARRAY_ADDRESS - std::mem::size_of::<HypercallRequest>();

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
    pub extents: Vec<Extent>,
}

/// A connection to one hypervisor port, speaking for that port's domain.
pub struct Hypervisor {
    channel: Channel,
    endpoint: String,
    domain: u32,
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
        let parsed: Endpoint = endpoint.parse()?;
        let mut channel = Channel::connect(&parsed)?;
        let reply = channel.request(FrameKind::Ready, &[], FrameKind::Ready)?;
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
        })
    }

    /// The domain this port belongs to.
    pub fn domain(&self) -> u32 {
        self.domain
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
        if room > MAX_ARRAY_BYTES {
            return Err(self.protocol_error(format!(
                "{}: {room} bytes of arguments exceed one frame ({MAX_ARRAY_BYTES})",
                operation()
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
        if image.len() != memory.len() {
            return Err(self.protocol_error("hypercall reply with a memory image of another size"));
        }
        match shared_abi::Error::from_wire(response.result) {
            Some(Ok(value)) => Ok((value, image.to_vec())),
            Some(Err(error)) => Err(HypervisorError::Refused {
                operation: operation(),
                error,
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

    /// Create an empty VBD.
    pub fn create(
        &mut self,
        domain: u32,
        vdevice: DeviceNumber,
        mode: Mode,
    ) -> Result<(), HypervisorError> {
        let args = CreateArgs {
            handle: handle(domain, vdevice),
            mode: mode.bits(),
            _reserved: 0,
        };
        self.hypercall(Op::Create, &args, &[], 0, || {
            format!("create {}", describe(domain, vdevice))
        })
        .map(drop)
    }

    /// Replace a VBD's extents atomically.
    pub fn set_extents(
        &mut self,
        domain: u32,
        vdevice: DeviceNumber,
        extents: &[Extent],
    ) -> Result<(), HypervisorError> {
        let wire: Vec<WireExtent> = extents.iter().map(Extent::to_wire).collect();
        let count =
            u32::try_from(wire.len()).map_err(|_| self.protocol_error("too many extents"))?;
        let args = SetExtentsArgs {
            handle: handle(domain, vdevice),
            extents_address: ARRAY_ADDRESS as u64,
            nr_extents: count,
            _reserved: 0,
        };
        self.hypercall(Op::SetExtents, &args, wire.as_bytes(), 0, || {
            format!("set-extents on {}", describe(domain, vdevice))
        })
        .map(drop)
    }

    /// Append one extent.
    pub fn grow(
        &mut self,
        domain: u32,
        vdevice: DeviceNumber,
        extent: Extent,
    ) -> Result<(), HypervisorError> {
        let args = GrowArgs {
            handle: handle(domain, vdevice),
            extent: extent.to_wire(),
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

    /// The VBDs of `domain` (or of every domain for `None`) and the generation; asks again
    /// with a larger buffer when the first did not fit, so nothing is ever cut short.
    pub fn probe(
        &mut self,
        domain: Option<u32>,
    ) -> Result<(Vec<VbdSummary>, u64), HypervisorError> {
        let target = domain.unwrap_or(PROBE_ALL);
        let entry_size = std::mem::size_of::<ProbeEntry>();
        let mut capacity = 16u32;
        loop {
            let args = ProbeArgs {
                domain: target,
                capacity,
                entries_address: ARRAY_ADDRESS as u64,
                ..Default::default()
            };
            let operation = || match domain {
                Some(domain) => format!("probe of domain {domain}"),
                None => "probe of all domains".to_owned(),
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
                    ..
                }) => capacity = capacity.saturating_mul(4),
                Err(error) => return Err(error),
            }
        }
    }

    /// One VBD's mode, size and every extent.
    pub fn info(
        &mut self,
        domain: u32,
        vdevice: DeviceNumber,
    ) -> Result<VbdDetails, HypervisorError> {
        let extent_size = std::mem::size_of::<WireExtent>();
        let mut capacity = 64u32;
        loop {
            let args = InfoArgs {
                handle: handle(domain, vdevice),
                extents_address: ARRAY_ADDRESS as u64,
                capacity,
                ..Default::default()
            };
            let operation = || format!("info on {}", describe(domain, vdevice));
            match self.hypercall(
                Op::Info,
                &args,
                &[],
                capacity as usize * extent_size,
                operation,
            ) {
                Ok((count, image)) => {
                    let after: InfoArgs = self.read_back(&image, 0)?;
                    let extents = (0..count as usize)
                        .map(|index| {
                            let wire: WireExtent =
                                self.read_back(&image, ARRAY_ADDRESS + index * extent_size)?;
                            wire.validate().map_err(|error| {
                                self.protocol_error(format!("bad extent in info: {error}"))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    return Ok(VbdDetails {
                        domain,
                        vdevice,
                        mode: Mode::from_bits_truncate(after.mode),
                        size_sectors: after.size_sectors,
                        extents,
                    });
                }
                Err(HypervisorError::Refused {
                    error: shared_abi::Error::TooBig,
                    ..
                }) => capacity = capacity.saturating_mul(8),
                Err(error) => return Err(error),
            }
        }
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
        if data.len() as u64 % SECTOR_SIZE != 0
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
