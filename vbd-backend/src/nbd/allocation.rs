//! Where a VBD's bytes are holes: the runs of data and holes of a range, looked up on its
//! disks with `SEEK_DATA`/`SEEK_HOLE` while the range's read translation is held, like any
//! I/O, so a change to the VBD waits for the lookup. They answer `NBD_CMD_BLOCK_STATUS`
//! (`base:allocation`) and let a structured read send holes as hole chunks without reading
//! them.

use hv_vbd::{Access, Request, VbdRef};
use shared_abi::{DeviceNumber, Error};

use super::wire::{STATE_HOLE, STATE_ZERO};
use crate::disks::DiskIo;
use crate::vbd::Translator;

/// Runs looked up for one block status request at most: the protocol lets a reply cover
/// less than was asked, and a client asks again from where it ends.
pub const MAX_STATUS_RUNS: usize = 1024;

/// Bytes of one disk that are all data or all hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub device: DeviceNumber,
    pub disk_offset: u64,
    pub length: u64,
    pub hole: bool,
}

/// The runs of `count` sectors of `vbd` from `sector`, in VBD order, at most `limit` of
/// them, and `then` called with them while the translation is still held (a read's data is
/// read in `then`, so a change to the VBD waits for it).
pub fn with_runs<R>(
    translator: &mut Translator,
    io: &DiskIo<'_>,
    vbd: &VbdRef,
    (sector, count): (u64, u64),
    limit: usize,
    then: impl FnOnce(&[Run]) -> Result<R, Error>,
) -> Result<R, Error> {
    /// Why the walk stopped early: `then` has run (at the limit) or something failed.
    enum Stop {
        Done,
        Failed(Error),
    }
    impl From<Error> for Stop {
        fn from(error: Error) -> Stop {
            Stop::Failed(error)
        }
    }
    let request = Request::new(Access::Read, sector, count)?;
    let total = usize::try_from(request.bytes()).map_err(|_| Error::TooBig)?;
    let mut runs = Vec::new();
    let mut then = Some(then);
    let mut answer = None;
    let walked = translator.transfer(vbd, &request, [total], |transfer| {
        let disk = io
            .disks
            .find(transfer.device)
            .map_err(|failure| io.failed(failure))?;
        let end = transfer.disk_offset + transfer.length as u64;
        let mut at = transfer.disk_offset;
        let last = transfer.buffer_offset + transfer.length == total;
        while at < end && runs.len() < limit {
            let (length, hole) = disk
                .allocation(at, end)
                .map_err(|failure| io.failed(failure))?;
            runs.push(Run {
                device: transfer.device,
                disk_offset: at,
                length,
                hole,
            });
            at += length;
        }
        // The last piece, or as many runs as asked for: answer while the translation is
        // still held.
        if last || runs.len() == limit {
            if let Some(then) = then.take() {
                answer = Some(then(&runs)?);
            }
            return Err(Stop::Done);
        }
        Ok(())
    });
    match walked {
        Err(Stop::Failed(error)) => Err(error),
        Ok(()) | Err(Stop::Done) => answer.ok_or(Error::InvalidArgument),
    }
}

/// The block status descriptors of `runs`, `(length, flags)`: a hole reads as zeros, and
/// neighbours of one kind are one descriptor, so extent boundaries do not show.
pub fn descriptors(runs: &[Run]) -> Vec<(u32, u32)> {
    let mut descriptors: Vec<(u64, u32)> = Vec::new();
    for run in runs {
        let flags = if run.hole { STATE_HOLE | STATE_ZERO } else { 0 };
        match descriptors.last_mut() {
            Some((length, last)) if *last == flags => *length += run.length,
            _ => descriptors.push((run.length, flags)),
        }
    }
    // A request's length is a u32, so a descriptor of it fits one.
    descriptors
        .into_iter()
        .map(|(length, flags)| (length as u32, flags))
        .collect()
}

/// A piece of a structured read reply: `length` bytes at `offset` of the read, data (in
/// the read's buffer at the same offset) or a hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub offset: usize,
    pub length: usize,
    pub hole: bool,
}

/// Read the data of `runs` into `buffer` (their bytes in order), leaving holes unread; the
/// pieces of the reply, neighbours of one kind merged.
pub fn read_runs(io: &DiskIo<'_>, runs: &[Run], buffer: &mut [u8]) -> Result<Vec<Piece>, Error> {
    let mut pieces: Vec<Piece> = Vec::new();
    let mut offset = 0;
    for run in runs {
        let length = run.length as usize;
        if !run.hole {
            io.disks
                .find(run.device)
                .and_then(|disk| {
                    disk.read_exact_at(&mut buffer[offset..offset + length], run.disk_offset)
                })
                .map_err(|failure| io.failed(failure))?;
        }
        match pieces.last_mut() {
            Some(last) if last.hole == run.hole => last.length += length,
            _ => pieces.push(Piece {
                offset,
                length,
                hole: run.hole,
            }),
        }
        offset += length;
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disks::tests::two_disks;
    use crate::vbd::tests::{create, disk, empty_table, xvda};

    #[test]
    fn runs_follow_the_translation_and_descriptors_merge_across_extents() {
        let (_directory, disks) = two_disks();
        let table = empty_table();
        // VBD bytes 0..8K are disk 1 at 16K, 8K..16K are disk 0 at 64K.
        let vbd = create(table, xvda(1), &[(1, 32, 16), (0, 128, 16)], true, "vd:1");
        let [hda, hdb] = [0, 1].map(|index| disks.iter().nth(index).unwrap());
        hdb.write_all_at(&[1; 4096], 16384 + 4096).unwrap();
        hda.write_all_at(&[2; 4096], 65536).unwrap();
        let io = DiskIo {
            disks: &disks,
            channel: "test",
        };
        let mut translator = Translator::new(table);
        let runs = with_runs(&mut translator, &io, &vbd, (0, 32), usize::MAX, |runs| {
            Ok(runs.to_vec())
        })
        .unwrap();
        let run = |index, disk_offset, length, hole| Run {
            device: disk(index),
            disk_offset,
            length,
            hole,
        };
        assert_eq!(
            runs,
            [
                run(1, 16384, 4096, true),
                run(1, 20480, 4096, false),
                run(0, 65536, 4096, false),
                run(0, 69632, 4096, true),
            ]
        );
        let hole = STATE_HOLE | STATE_ZERO;
        assert_eq!(descriptors(&runs), [(4096, hole), (8192, 0), (4096, hole)]);
        let limited = with_runs(&mut translator, &io, &vbd, (0, 32), 2, |runs| {
            Ok(descriptors(runs))
        });
        assert_eq!(limited, Ok(vec![(4096, hole), (4096, 0)]));

        let mut buffer = vec![9u8; 16384];
        let pieces = read_runs(&io, &runs, &mut buffer).unwrap();
        let piece = |offset, length, hole| Piece {
            offset,
            length,
            hole,
        };
        assert_eq!(
            pieces,
            [
                piece(0, 4096, true),
                piece(4096, 8192, false),
                piece(12288, 4096, true)
            ]
        );
        assert_eq!(&buffer[4096..12288], [[1; 4096], [2; 4096]].concat());
        assert_eq!(
            with_runs(&mut translator, &io, &vbd, (16, 32), 8, |_| Ok(())),
            Err(Error::OutOfRange),
            "past the end"
        );
    }
}
