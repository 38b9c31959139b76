//! vbd-backend's resident memory with 1 and with 64 VBDs attached: a fresh backend, VBDs of
//! one 1 MiB extent each made one after another, `VmRSS` read once the first VBD's socket
//! exists and again once the 64th's does. No VMM is connected: a connected one's guest
//! memory counts only where the backend touched it (see [`super::GuestIo::backend_rss_mib_serving`]).

use std::path::Path;

use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, SECTOR_SIZE};
use vbd_machine::guest::process_resident_bytes;

use super::setup::{hda, start_backend};

/// VBDs per domain (xvda to xvdp); 64 VBDs fill four domains.
const VBDS_PER_DOMAIN: u32 = 16;
pub const MANY_VBDS: u32 = 64;

/// Bytes in MiB, as the resident figures are reported.
pub fn mebibytes(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// Resident MiB with one VBD attached and with [`MANY_VBDS`].
pub fn measure(binary: &Path, devices: &Path, dir: &Path) -> Result<(f64, f64), String> {
    let mut backend = start_backend(binary, devices, dir, 1)?;
    let mut one = None;
    for index in 0..MANY_VBDS {
        let domain = 1 + index / VBDS_PER_DOMAIN;
        let letter = char::from(b'a' + (index % VBDS_PER_DOMAIN) as u8);
        let vdevice = DeviceNumber::from_name(&format!("xvd{letter}"))
            .ok_or_else(|| format!("xvd{letter} is no device name"))?;
        let megabyte = (1u64 << 20) / SECTOR_SIZE;
        let extent = Extent::new(hda(), u64::from(index) * megabyte, megabyte)
            .map_err(|error| format!("extent {index}: {error}"))?;
        backend.attach(domain, vdevice, &format!("rss_{index}"), &[extent])?;
        if index == 0 {
            one = Some(mebibytes(process_resident_bytes(backend.pid())?));
        }
    }
    let many = mebibytes(process_resident_bytes(backend.pid())?);
    backend.stop()?;
    Ok((one.expect("at least one VBD"), many))
}
