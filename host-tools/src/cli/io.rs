//! Block I/O on a VBD through the hypervisor: `write` fills one from a file, `read` copies
//! one to a file. dom0 uses them to populate a VD; tests use them as guest frontends.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use clap::Args;
use host_tools::database::vdevice_name;
use host_tools::error::{Error, Result};
use host_tools::hypervisor::Hypervisor;
use host_tools::size::{parse_size, BYTE_COUNT};
use shared_abi::frame::MAX_BLOCK_SECTORS;
use shared_abi::{DeviceNumber, SECTOR_SIZE};

use super::output::emit;
use super::vbd::{hypervisor, vdevice_argument};
use super::Context;

/// Bytes: a number, optionally with K, M or G (binary units).
fn bytes_argument(text: &str) -> std::result::Result<u64, String> {
    parse_size(text, BYTE_COUNT).map_err(|error| error.to_string())
}

/// The size in bytes of the port's own VBD `vdevice`.
fn vbd_bytes(hypervisor: &mut Hypervisor, vdevice: DeviceNumber) -> Result<u64> {
    let domain = hypervisor.domain();
    let (vbds, _) = hypervisor.probe(Some(domain))?;
    let vbd = vbds
        .iter()
        .find(|vbd| vbd.vdevice == vdevice)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "{} of domain {domain}: no such VBD",
                vdevice_name(vdevice)
            ))
        })?;
    Ok(vbd.size_sectors * SECTOR_SIZE)
}

/// Check that `[offset, offset + length)` lies inside a VBD of `size` bytes.
fn check_range(vdevice: DeviceNumber, offset: u64, length: u64, size: u64) -> Result<()> {
    match offset.checked_add(length) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::Refused(format!(
            "{}: bytes {offset}..{} lie past its end ({size} bytes)",
            vdevice_name(vdevice),
            offset as u128 + length as u128
        ))),
    }
}

/// The sector-aligned chunks, each at most one request, that cover `[offset, offset + length)`:
/// `(first sector, sectors, byte offset into the range, bytes of the range in the chunk)`.
fn chunks(offset: u64, length: u64) -> impl Iterator<Item = (u64, u32, u64, u64)> {
    let end = offset + length;
    let first = offset / SECTOR_SIZE;
    let last = end.div_ceil(SECTOR_SIZE);
    (first..last)
        .step_by(MAX_BLOCK_SECTORS as usize)
        .map(move |sector| {
            let sectors = (last - sector).min(u64::from(MAX_BLOCK_SECTORS));
            let chunk_start = (sector * SECTOR_SIZE).max(offset);
            let chunk_end = ((sector + sectors) * SECTOR_SIZE).min(end);
            (
                sector,
                sectors as u32,
                chunk_start - offset,
                chunk_end - chunk_start,
            )
        })
}

/// With `--sparse`, zero data is skipped in pieces of this many sectors (4 KiB, the block
/// size of most filesystem images).
const SPARSE_GRANULE_SECTORS: usize = 8;

/// The runs of `data` (whole sectors) that hold a non-zero byte, in granules of
/// [`SPARSE_GRANULE_SECTORS`]: `(first sector, sectors)` relative to the start of `data`.
fn nonzero_runs(data: &[u8]) -> Vec<(u64, u64)> {
    let granule = SPARSE_GRANULE_SECTORS * SECTOR_SIZE as usize;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (index, piece) in data.chunks(granule).enumerate() {
        if piece.iter().all(|&byte| byte == 0) {
            continue;
        }
        let first = (index * SPARSE_GRANULE_SECTORS) as u64;
        let sectors = piece.len() as u64 / SECTOR_SIZE;
        match runs.last_mut() {
            Some((start, count)) if *start + *count == first => *count += sectors,
            _ => runs.push((first, sectors)),
        }
    }
    runs
}

/// Write a file into a VBD of the domain whose port --hv names.
///
/// Partial sectors at either end are read, merged and written back, so any byte offset
/// works. The whole range is checked against the VBD's size before anything is written.
/// --sparse skips 4 KiB pieces that are all zeros, like `cp --sparse`: use it only where
/// the VBD already reads zeros, as a freshly created VD does.
#[derive(Args)]
#[command(
    after_help = "Example:\n  vdisk --hv unix:/tmp/vm/dom0.sock write xvda --from rootfs.img"
)]
pub struct Write {
    /// The VBD: xvda, xvdb, hdb, or major:minor.
    #[arg(value_parser = vdevice_argument)]
    vdevice: DeviceNumber,
    /// The file to write.
    #[arg(long)]
    from: PathBuf,
    /// Where in the VBD to start, in bytes (K, M, G allowed).
    #[arg(long, value_parser = bytes_argument, default_value = "0")]
    offset: u64,
    /// Skip 4 KiB pieces of zeros (the VBD must already read zeros there).
    #[arg(long)]
    sparse: bool,
}

impl Write {
    pub fn run(self, context: &Context) -> Result<()> {
        let file = File::open(&self.from).map_err(|error| Error::io(&self.from, error))?;
        let length = file
            .metadata()
            .map_err(|error| Error::io(&self.from, error))?
            .len();
        let mut hypervisor = hypervisor(context)?;
        let size = vbd_bytes(&mut hypervisor, self.vdevice)?;
        check_range(self.vdevice, self.offset, length, size)?;
        let bar = context.progress_bar("writing");
        bar.set_length(length);
        for (sector, sectors, at, bytes) in chunks(self.offset, length) {
            let whole = u64::from(sectors) * SECTOR_SIZE;
            if self.sparse && bytes == whole {
                let mut buffer = vec![0u8; whole as usize];
                file.read_exact_at(&mut buffer, at)
                    .map_err(|error| Error::io(&self.from, error))?;
                for (first, count) in nonzero_runs(&buffer) {
                    let bytes =
                        (first * SECTOR_SIZE) as usize..((first + count) * SECTOR_SIZE) as usize;
                    hypervisor.write(self.vdevice, sector + first, &buffer[bytes])?;
                }
                bar.inc(bytes);
                continue;
            }
            let mut buffer = if bytes == whole {
                vec![0u8; whole as usize]
            } else {
                hypervisor.read(self.vdevice, sector, sectors)?
            };
            let inside = ((self.offset + at) - sector * SECTOR_SIZE) as usize;
            file.read_exact_at(&mut buffer[inside..inside + bytes as usize], at)
                .map_err(|error| Error::io(&self.from, error))?;
            hypervisor.write(self.vdevice, sector, &buffer)?;
            bar.inc(bytes);
        }
        bar.finish_and_clear();
        if context.json {
            return Ok(());
        }
        emit(&format!(
            "wrote {length} bytes to {} at offset {}\n",
            vdevice_name(self.vdevice),
            self.offset
        ))
    }
}

/// Read a VBD of the domain whose port --hv names into a file.
#[derive(Args)]
#[command(
    after_help = "Example:\n  vdisk --hv unix:/tmp/vm/dom1.sock read xvda --to disk.img --offset 1M --length 4096"
)]
pub struct Read {
    /// The VBD: xvda, xvdb, hdb, or major:minor.
    #[arg(value_parser = vdevice_argument)]
    vdevice: DeviceNumber,
    /// The file to write what was read to (created or truncated).
    #[arg(long)]
    to: PathBuf,
    /// Where in the VBD to start, in bytes (K, M, G allowed).
    #[arg(long, value_parser = bytes_argument, default_value = "0")]
    offset: u64,
    /// How many bytes to read; by default up to the end of the VBD.
    #[arg(long, value_parser = bytes_argument)]
    length: Option<u64>,
}

impl Read {
    pub fn run(self, context: &Context) -> Result<()> {
        let mut hypervisor = hypervisor(context)?;
        let size = vbd_bytes(&mut hypervisor, self.vdevice)?;
        let length = self.length.unwrap_or(size.saturating_sub(self.offset));
        check_range(self.vdevice, self.offset, length, size)?;
        let file = File::create(&self.to).map_err(|error| Error::io(&self.to, error))?;
        let bar = context.progress_bar("reading");
        bar.set_length(length);
        for (sector, sectors, at, bytes) in chunks(self.offset, length) {
            let data = hypervisor.read(self.vdevice, sector, sectors)?;
            let inside = ((self.offset + at) - sector * SECTOR_SIZE) as usize;
            file.write_all_at(&data[inside..inside + bytes as usize], at)
                .map_err(|error| Error::io(&self.to, error))?;
            bar.inc(bytes);
        }
        file.sync_all()
            .map_err(|error| Error::io(&self.to, error))?;
        bar.finish_and_clear();
        if context.json {
            return Ok(());
        }
        emit(&format!(
            "read {length} bytes from {} at offset {}\n",
            vdevice_name(self.vdevice),
            self.offset
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_range_exactly_in_whole_sectors() {
        assert_eq!(chunks(0, 1024).collect::<Vec<_>>(), vec![(0, 2, 0, 1024)]);
        assert_eq!(chunks(100, 10).collect::<Vec<_>>(), vec![(0, 1, 0, 10)]);
        assert_eq!(chunks(500, 20).collect::<Vec<_>>(), vec![(0, 2, 0, 20)]);
        let big = 1u64 << 20;
        assert_eq!(
            chunks(512, 2 * big).collect::<Vec<_>>(),
            vec![(1, 2048, 0, big), (2049, 2048, big, big)]
        );
        assert_eq!(chunks(0, 0).count(), 0);
    }

    #[test]
    fn sparse_writes_skip_only_zero_granules() {
        let granule = SPARSE_GRANULE_SECTORS * 512;
        let mut data = vec![0u8; granule * 6];
        data[0] = 1;
        data[granule + 5] = 2;
        data[granule * 4 + granule - 1] = 3;
        assert_eq!(nonzero_runs(&data), vec![(0, 16), (32, 8)]);
        assert_eq!(nonzero_runs(&vec![0u8; granule * 3]), vec![]);
        // A short last piece (whole sectors, less than a granule) counts its own sectors.
        let mut tail = vec![0u8; granule + 1024];
        tail[granule + 1] = 9;
        assert_eq!(nonzero_runs(&tail), vec![(8, 2)]);
    }

    #[test]
    fn ranges_past_the_end_are_refused() {
        let xvda = DeviceNumber::from_name("xvda").unwrap();
        assert!(check_range(xvda, 0, 1024, 1024).is_ok());
        assert!(check_range(xvda, 1, 1024, 1024).is_err());
        assert!(check_range(xvda, u64::MAX, 2, 1024).is_err());
    }
}
