//! Reads, writes, flushes and releases of a VBD through a byte buffer in this process: the
//! path of dom0's block frames and of the NBD exports, whose data arrives on a socket.

use std::io;
use std::ops::Range;

use hv_vbd::Access;

use crate::disks::{Disk, Disks, Release};
use crate::vbd::{vbd_devices, Table, Translator, VbdRef, WalkError};

/// What a block operation needs: the table, the disks, and this thread's translator.
pub struct BlockContext<'a> {
    pub table: &'a Table,
    pub disks: &'a Disks,
    pub translator: &'a mut Translator,
}

impl BlockContext<'_> {
    /// Fill `buffer` (whole sectors) from `vbd` starting at `sector`.
    pub fn read(
        &mut self,
        vbd: VbdRef,
        sector: u64,
        buffer: &mut [u8],
    ) -> Result<(), WalkError<io::Error>> {
        self.pieces(
            vbd,
            Access::Read,
            sector,
            buffer.len(),
            |disk, range, offset| disk.read_exact_at(&mut buffer[range], offset),
        )
    }

    /// Write `data` (whole sectors) to `vbd` starting at `sector`.
    pub fn write(
        &mut self,
        vbd: VbdRef,
        sector: u64,
        data: &[u8],
    ) -> Result<(), WalkError<io::Error>> {
        self.pieces(
            vbd,
            Access::Write,
            sector,
            data.len(),
            |disk, range, offset| disk.write_all_at(&data[range], offset),
        )
    }

    /// Walk one buffer of `length` bytes: `each` gets the disk, the buffer's byte range and
    /// the disk offset of every piece.
    fn pieces(
        &mut self,
        vbd: VbdRef,
        access: Access,
        sector: u64,
        length: usize,
        mut each: impl FnMut(&Disk, Range<usize>, u64) -> io::Result<()>,
    ) -> Result<(), WalkError<io::Error>> {
        let disks = self.disks;
        self.translator.walk(
            self.table,
            vbd,
            access,
            sector,
            &[length as u64],
            |transfer| {
                let start = transfer.buffer_offset as usize;
                let range = start..start + transfer.length as usize;
                each(disks.find(transfer.device)?, range, transfer.disk_offset)
            },
        )
    }

    /// Discard or zero `nr_sectors` at `sector`, inside the VBD's extents only.
    pub fn release(
        &mut self,
        vbd: VbdRef,
        sector: u64,
        nr_sectors: u64,
        how: Release,
    ) -> Result<(), WalkError<io::Error>> {
        let disks = self.disks;
        self.translator.ranges(
            self.table,
            vbd,
            sector,
            nr_sectors,
            |device, offset, length| disks.find(device)?.release(offset, length, how),
        )
    }

    /// `fdatasync` every disk the VBD's extents lie on.
    pub fn flush(&mut self, vbd: VbdRef) -> Result<(), WalkError<io::Error>> {
        let devices = vbd_devices(self.table, vbd).map_err(WalkError::Refused)?;
        self.disks.flush(&devices).map_err(WalkError::Failed)
    }
}
