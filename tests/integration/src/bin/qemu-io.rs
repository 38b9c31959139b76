//! `qemu-io`: guest I/O throughput through the real hypervisor, for `cargo xtask bench`.
//!
//! Boots one machine, gives domain 1 two VBDs of the same size, one of a single extent and
//! one of many small extents scattered over another disk, and times domain 1 writing then
//! reading the whole of each through its own port in 1 MiB requests, the two VBDs taking
//! turns. Prints
//! `{"single_extent": MiB/s, "many_extents": MiB/s, "extents": N, "mib": M}` on stdout.
//!
//! Usage: qemu-io [--mib M] (default 16; each VBD is M MiB, written then read).

use std::time::Instant;

use shared_abi::frame::MAX_BLOCK_SECTORS;
use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, Mode, SECTOR_SIZE};
use vbd_integration::TestMachine;

/// Extents in the fragmented VBD: at least 1000, whatever its size.
const SMALL_EXTENTS: u64 = 1024;

fn main() {
    let mut arguments = std::env::args().skip(1);
    let mut mib = 16u64;
    while let Some(argument) = arguments.next() {
        match (
            argument.as_str(),
            arguments.next().and_then(|value| value.parse::<u64>().ok()),
        ) {
            ("--mib", Some(value)) if (1..=32).contains(&value) => mib = value,
            _ => {
                eprintln!("usage: qemu-io [--mib 1..32]");
                std::process::exit(2);
            }
        }
    }
    match measure(mib) {
        Ok(json) => println!("{json}"),
        Err(error) => {
            eprintln!("qemu-io: {error}");
            std::process::exit(1);
        }
    }
}

fn measure(mib: u64) -> Result<String, String> {
    let test = TestMachine::boot("qemu-io");
    let sectors = mib * (1 << 20) / SECTOR_SIZE;
    let hda = DeviceNumber::from_name("hda").expect("hda");
    let hdb = DeviceNumber::from_name("hdb").expect("hdb");
    // hda3 and hdb3 start at 160 MiB into their disks (after 64 MiB and 96 MiB partitions).
    let third_partition = 160 * (1 << 20) / SECTOR_SIZE;
    let single =
        vec![Extent::new(hda, third_partition, sectors).map_err(|error| error.to_string())?];
    // Every other small chunk, so no two extents are adjacent and none merges: 16 KiB
    // extents for 16 MiB, 2 KiB extents for 2 MiB.
    let small = sectors / SMALL_EXTENTS;
    let many: Vec<Extent> = (0..SMALL_EXTENTS)
        .map(|index| Extent::new(hdb, third_partition + index * 2 * small, small))
        .collect::<Result<_, _>>()
        .map_err(|error| error.to_string())?;
    let mut dom0 = test.client(0);
    let read_write = Mode::READ | Mode::WRITE;
    let vdevices = [
        DeviceNumber::from_name("xvda").expect("xvda"),
        DeviceNumber::from_name("xvdb").expect("xvdb"),
    ];
    for (vdevice, extents) in vdevices.iter().zip([&single, &many]) {
        dom0.create(1, *vdevice, read_write, shared_abi::Label::EMPTY)
            .map_err(|error| error.to_string())?;
        dom0.set_extents(1, *vdevice, extents, shared_abi::SharingLevel::ReadersOnly)
            .map_err(|error| error.to_string())?;
    }
    let mut guest = test.client(1);
    // The two VBDs take turns request by request, so a change in the machine's load during
    // the run weighs on both alike; each VBD's own requests are timed.
    let mut seconds = [0f64; 2];
    let chunk = u64::from(MAX_BLOCK_SECTORS);
    for sector in (0..sectors).step_by(chunk as usize) {
        let count = chunk.min(sectors - sector);
        let data = pattern(sector, count);
        for (index, vdevice) in vdevices.iter().enumerate() {
            let started = Instant::now();
            guest
                .write(*vdevice, sector, &data)
                .map_err(|error| error.to_string())?;
            seconds[index] += started.elapsed().as_secs_f64();
        }
    }
    for sector in (0..sectors).step_by(chunk as usize) {
        let count = chunk.min(sectors - sector);
        for (index, vdevice) in vdevices.iter().enumerate() {
            let started = Instant::now();
            let data = guest
                .read(*vdevice, sector, count as u32)
                .map_err(|error| error.to_string())?;
            seconds[index] += started.elapsed().as_secs_f64();
            if data != pattern(sector, count) {
                return Err(format!(
                    "{vdevice}: sectors {sector}+{count} read back differently"
                ));
            }
        }
    }
    let rates = seconds.map(|seconds| 2.0 * mib as f64 / seconds);
    for (vdevice, seconds) in vdevices.iter().zip(seconds) {
        eprintln!(
            "qemu-io: {}: wrote and read {mib} MiB in {seconds:.1} s",
            vdevice
                .name()
                .map(|name| name.to_string())
                .unwrap_or_default()
        );
    }
    drop(guest);
    drop(dom0);
    test.finish();
    Ok(format!(
        "{{\"single_extent\": {:.3}, \"many_extents\": {:.3}, \"extents\": {}, \"mib\": {mib}}}",
        rates[0],
        rates[1],
        many.len()
    ))
}

/// Data that differs in every sector, so a misplaced sector is caught.
fn pattern(first_sector: u64, count: u64) -> Vec<u8> {
    (first_sector..first_sector + count)
        .flat_map(|sector| {
            (0..SECTOR_SIZE).map(move |byte| (sector as u8) ^ (byte as u8).wrapping_mul(7))
        })
        .collect()
}
