//! The test hypervisor's side of serving: its channel ports (UARTs, one per domain), the
//! ATA disks as hv-vbd's [`BlockDevices`], and the counters of the summary line. What a
//! frame means is hv-vbd's to say ([`hv_vbd::VbdTable::serve_frame`]).

use hv_vbd::serve::{change_notice, ready_notice, reject_payload, BlockDevices};
use hv_vbd::Changed;
use shared_abi::frame::{FrameHeader, FrameKind};
use shared_abi::{DeviceNumber, Error};
use zerocopy::IntoBytes;

use crate::ata::SECTOR_BYTES;
use crate::disks::Disks;
use crate::serial::{log, Uart};

/// How long a peer may leave its socket unread before a frame to it is cut short.
const TRANSMIT_PATIENCE_MILLISECONDS: u64 = 1_000;

/// A serial port that carries one domain's frames.
#[derive(Clone, Copy, Debug)]
pub struct ChannelPort {
    pub name: &'static str,
    pub uart: Uart,
    pub domain: u32,
}

/// COM2 is dom0's, COM3 and COM4 are guest domains 1 and 2. Each UART is driven only
/// through its port here.
pub const CHANNEL_PORTS: [ChannelPort; 3] = [
    ChannelPort {
        name: "COM2",
        // SAFETY: COM2's legacy base on QEMU's `pc` machine.
        uart: unsafe { Uart::new(0x2F8) },
        domain: 0,
    },
    ChannelPort {
        name: "COM3",
        // SAFETY: COM3's legacy base on QEMU's `pc` machine.
        uart: unsafe { Uart::new(0x3E8) },
        domain: 1,
    },
    ChannelPort {
        name: "COM4",
        // SAFETY: COM4's legacy base on QEMU's `pc` machine.
        uart: unsafe { Uart::new(0x2E8) },
        domain: 2,
    },
];

impl ChannelPort {
    /// Send one frame whose payload is the concatenation of `payload`. A peer that stops
    /// reading gets the frame cut short (its reader resynchronises) rather than stalling
    /// every other port.
    pub fn send(&self, kind: FrameKind, sequence: u32, payload: &[&[u8]]) {
        let header = match FrameHeader::for_payload(kind, sequence, payload) {
            Ok(header) => header,
            Err(error) => {
                log!("{}: cannot send a {kind:?} frame: {error}", self.name);
                return;
            }
        };
        let sent = core::iter::once(&header.to_bytes()[..])
            .chain(payload.iter().copied())
            .try_for_each(|part| self.uart.write(part, TRANSMIT_PATIENCE_MILLISECONDS));
        if sent.is_err() {
            log!(
                "{}: peer stopped reading; a {kind:?} frame was cut short",
                self.name
            );
        }
    }

    /// Say, unprompted, that this port is served, for the domain it speaks for: at boot,
    /// and when the port's domain was destroyed and it serves a fresh one.
    pub fn send_ready(&self, start_id: u64) {
        let notice = ready_notice(self.domain, start_id);
        self.send(FrameKind::Ready, 0, &[notice.as_bytes()]);
    }

    /// Tell the peer a frame it sent was malformed.
    pub fn send_reject(&self, sequence: u32, error: Error) {
        self.send(
            FrameKind::Reject,
            sequence,
            &[reject_payload(error).as_bytes()],
        );
    }

    /// Tell a guest its VBDs changed, so it probes again.
    pub fn send_change(&self, changed: Changed) {
        self.send(
            FrameKind::ChangeNotice,
            0,
            &[change_notice(changed).as_bytes()],
        );
    }
}

/// Counters for the summary line printed at shutdown.
#[derive(Clone, Copy, Debug, Default)]
pub struct Statistics {
    pub frames_served: u64,
    pub frames_rejected: u64,
    pub bytes_skipped: u64,
    pub partial_frames_abandoned: u64,
    pub io_errors: u64,
}

impl core::fmt::Display for Statistics {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            formatter,
            "frames_served={} frames_rejected={} bytes_skipped={} partial_frames_abandoned={} io_errors={}",
            self.frames_served,
            self.frames_rejected,
            self.bytes_skipped,
            self.partial_frames_abandoned,
            self.io_errors
        )
    }
}

/// The ATA disks, addressed in bytes as hv-vbd's block path hands them out. Transfers of
/// the frame channel always fall on sector boundaries (its requests are whole sectors in
/// one buffer); anything else is refused rather than rounded.
pub struct AtaDevices<'a> {
    pub disks: &'a Disks,
}

impl AtaDevices<'_> {
    /// The disk and first sector of a transfer, or why it cannot be done.
    fn place(
        &self,
        device: DeviceNumber,
        offset: u64,
        length: usize,
    ) -> Result<(&crate::disks::PhysicalDisk, u64), Error> {
        let disk = self.disks.find(device).ok_or(Error::NoDevice)?;
        let sector_bytes = SECTOR_BYTES as u64;
        if !offset.is_multiple_of(sector_bytes) || !length.is_multiple_of(SECTOR_BYTES) {
            return Err(Error::InvalidArgument);
        }
        Ok((disk, offset / sector_bytes))
    }
}

impl BlockDevices for AtaDevices<'_> {
    fn read(&mut self, device: DeviceNumber, offset: u64, buffer: &mut [u8]) -> Result<(), Error> {
        let (disk, sector) = self.place(device, offset, buffer.len())?;
        disk.read(sector, buffer).map_err(|failure| {
            log!("I/O error: {failure}");
            Error::Io
        })
    }

    fn write(&mut self, device: DeviceNumber, offset: u64, data: &[u8]) -> Result<(), Error> {
        let (disk, sector) = self.place(device, offset, data.len())?;
        disk.write(sector, data).map_err(|failure| {
            log!("I/O error: {failure}");
            Error::Io
        })
    }
}
