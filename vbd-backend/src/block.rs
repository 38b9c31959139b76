//! Block operations on one pinned VBD: reads and writes through a byte buffer in this
//! process (the NBD exports, whose data arrives on a socket), and the operations that move
//! no data (flush, discard, write-zeroes) for every path.
//!
//! Each operation is translated by hv-vbd and its disk I/O runs while the translation is
//! held, so a delete or shrink of the VBD is answered only once the I/O has finished.

use std::ops::Range;

use hv_vbd::serve::BlockDevices;
use hv_vbd::{Access, Request, Transfer, VbdRef};
use shared_abi::Error;

use crate::disks::{DiskIo, Release};
use crate::vbd::{vbd_devices, Translator};

/// What a block operation needs: this thread's translator and the disks.
pub struct BlockContext<'a> {
    pub translator: &'a mut Translator,
    pub io: DiskIo<'a>,
}

impl BlockContext<'_> {
    /// Fill `buffer` (whole sectors) from `vbd` starting at `sector`.
    pub fn read(&mut self, vbd: &VbdRef, sector: u64, buffer: &mut [u8]) -> Result<(), Error> {
        self.transfer(
            vbd,
            Access::Read,
            sector,
            buffer.len(),
            |io, transfer, range| {
                io.read(transfer.device, transfer.disk_offset, &mut buffer[range])
            },
        )
    }

    /// Write `data` (whole sectors) to `vbd` starting at `sector`.
    pub fn write(&mut self, vbd: &VbdRef, sector: u64, data: &[u8]) -> Result<(), Error> {
        self.transfer(
            vbd,
            Access::Write,
            sector,
            data.len(),
            |io, transfer, range| io.write(transfer.device, transfer.disk_offset, &data[range]),
        )
    }

    /// Translate a request of one buffer of `length` bytes and call `each` with every
    /// transfer and its range of the buffer, while the translation is held.
    fn transfer(
        &mut self,
        vbd: &VbdRef,
        access: Access,
        sector: u64,
        length: usize,
        mut each: impl FnMut(&mut DiskIo<'_>, Transfer, Range<usize>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let request = Request::from_bytes(access, sector, length as u64)?;
        let io = &mut self.io;
        self.translator
            .transfer(vbd, &request, [length], |transfer| {
                let range = transfer.buffer_offset..transfer.buffer_offset + transfer.length;
                each(io, transfer, range)
            })
    }

    /// Discard or zero `nr_sectors` at `sector`, inside the VBD's extents only: the range is
    /// translated for writing, so it is refused on a read-only VBD or past its end.
    pub fn release(
        &mut self,
        vbd: &VbdRef,
        sector: u64,
        nr_sectors: u64,
        how: Release,
    ) -> Result<(), Error> {
        let request = Request::new(Access::Write, sector, nr_sectors)?;
        // One buffer as long as the request: one transfer per segment.
        let length = usize::try_from(request.bytes()).map_err(|_| Error::TooBig)?;
        let io = &self.io;
        self.translator
            .transfer(vbd, &request, [length], |transfer| {
                io.disks
                    .find(transfer.device)
                    .and_then(|disk| {
                        disk.release(transfer.disk_offset, transfer.length as u64, how)
                    })
                    .map_err(|failure| io.failed(failure))
            })
    }

    /// `fdatasync` every disk the VBD's extents lie on; `ENOENT` once the VBD is gone.
    pub fn flush(&mut self, vbd: &VbdRef) -> Result<(), Error> {
        let devices = vbd_devices(self.translator.table(), vbd)?;
        self.io
            .disks
            .flush(&devices)
            .map_err(|failure| self.io.failed(failure))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disks::tests::{hda_on_a_faulty_disk, two_disks};
    use crate::disks::Disks;
    use crate::vbd::tests::{create, empty_table, xvda};

    fn context<'a>(translator: &'a mut Translator, disks: &'a Disks) -> BlockContext<'a> {
        BlockContext {
            translator,
            io: DiskIo {
                disks,
                channel: "test",
            },
        }
    }

    #[test]
    fn reads_writes_and_zeroes_land_at_the_translated_offsets_only() {
        let (_directory, disks) = two_disks();
        let table = empty_table();
        // VBD sectors 0..2 are disk 1 sectors 10..12, 2..4 are disk 0 sectors 100..102.
        let vbd = create(table, xvda(1), &[(1, 10, 2), (0, 100, 2)], true, "vd:1");
        let mut translator = Translator::new(table);
        let mut block = context(&mut translator, &disks);
        let data: Vec<u8> = (0..4 * 512).map(|byte| (byte / 512 + 1) as u8).collect();
        block.write(&vbd, 0, &data).unwrap();
        let disk = |index: usize, sector: u64| {
            let mut bytes = vec![0u8; 512];
            disks
                .iter()
                .nth(index)
                .unwrap()
                .read_exact_at(&mut bytes, sector * 512)
                .unwrap();
            bytes[0]
        };
        assert_eq!(
            [disk(1, 9), disk(1, 10), disk(1, 11), disk(1, 12)],
            [0, 1, 2, 0]
        );
        assert_eq!(
            [disk(0, 99), disk(0, 100), disk(0, 101), disk(0, 102)],
            [0, 3, 4, 0]
        );
        let mut back = vec![0u8; 4 * 512];
        block.read(&vbd, 0, &mut back).unwrap();
        assert_eq!(back, data);

        block
            .release(&vbd, 1, 2, Release::WriteZeroes { may_unmap: false })
            .unwrap();
        assert_eq!(
            [disk(1, 10), disk(1, 11), disk(0, 100), disk(0, 101)],
            [1, 0, 0, 4]
        );
        assert_eq!(
            block.release(&vbd, 3, 2, Release::Discard),
            Err(Error::OutOfRange),
            "a range past the VBD's end touches nothing"
        );
        assert_eq!(disk(0, 101), 4);
        assert_eq!(
            block.write(&vbd, 0, &data[..100]),
            Err(Error::InvalidArgument)
        );
        block.flush(&vbd).unwrap();
    }

    #[test]
    fn a_read_only_vbd_refuses_writes_and_releases() {
        let (_directory, disks) = two_disks();
        let table = empty_table();
        let vbd = create(table, xvda(1), &[(0, 0, 8)], false, "");
        let mut translator = Translator::new(table);
        let mut block = context(&mut translator, &disks);
        assert_eq!(block.write(&vbd, 0, &[1; 512]), Err(Error::ReadOnly));
        assert_eq!(
            block.release(&vbd, 0, 1, Release::WriteZeroes { may_unmap: true }),
            Err(Error::ReadOnly)
        );
        let mut sector = vec![0u8; 512];
        assert_eq!(block.read(&vbd, 0, &mut sector), Ok(()));
    }

    #[test]
    fn a_failed_writeback_fails_every_later_flush_and_write_of_that_disk_only() {
        let (_directory, hda, devices, disks) = hda_on_a_faulty_disk();
        let table = empty_table();
        let on_hda = create(table, xvda(1), &[(0, 0, 64)], true, "");
        let on_hdb = create(table, xvda(2), &[(1, 0, 64)], true, "");
        let mut translator = Translator::new(table);
        let mut block = context(&mut translator, &disks);
        assert_eq!(block.write(&on_hda, 0, &[1; 512]), Ok(()));
        hda.fail_next_sync();
        assert_eq!(block.flush(&on_hda), Err(Error::Io), "the writeback failed");
        // The kernel has reported the failure once and would sync again without complaint.
        assert_eq!(block.flush(&on_hda), Err(Error::Io), "and stays failed");
        assert_eq!(block.write(&on_hda, 1, &[2; 512]), Err(Error::Io));
        assert_eq!(
            block.release(&on_hda, 2, 1, Release::WriteZeroes { may_unmap: false }),
            Err(Error::Io)
        );
        let syncs = hda.syncs();
        assert_eq!(block.flush(&on_hda), Err(Error::Io));
        assert_eq!(hda.syncs(), syncs, "refused without syncing again");
        let mut sector = vec![0u8; 1024];
        assert_eq!(block.read(&on_hda, 0, &mut sector), Ok(()), "reads go on");
        assert_eq!(sector, [[1; 512], [0; 512]].concat());
        assert_eq!(
            block.write(&on_hdb, 0, &[3; 512]),
            Ok(()),
            "other disks too"
        );
        assert_eq!(block.flush(&on_hdb), Ok(()));
        assert_eq!(
            disks.flush_all().map_err(|error| error.to_string()),
            Err(format!(
                "disk hda ({}) lost writes earlier: its writes and flushes fail until the backend is restarted",
                hda.path().display()
            )),
            "the stop reports it"
        );

        // Opening the disks again (a restart of the backend) clears it.
        let reopened = Disks::open(&devices).unwrap();
        let mut block = context(&mut translator, &reopened);
        assert_eq!(block.write(&on_hda, 1, &[2; 512]), Ok(()));
        assert_eq!(block.flush(&on_hda), Ok(()));
    }

    #[test]
    fn a_write_failing_with_eio_fails_every_later_write_and_flush_of_that_disk() {
        let (_directory, hda, _devices, disks) = hda_on_a_faulty_disk();
        let table = empty_table();
        let on_hda = create(table, xvda(1), &[(0, 0, 64)], true, "");
        let mut translator = Translator::new(table);
        let mut block = context(&mut translator, &disks);
        hda.fail_writes(true);
        assert_eq!(block.write(&on_hda, 0, &[1; 512]), Err(Error::Io));
        hda.fail_writes(false);
        assert_eq!(block.write(&on_hda, 0, &[1; 512]), Err(Error::Io));
        assert_eq!(block.flush(&on_hda), Err(Error::Io));
    }
}
