//! dom0's NBD exports against the clients dom0 fills, copies and inspects disks with, all
//! written by others: `nbdinfo --map` and `qemu-img map` (block status), nbdcopy over four
//! connections (multi-conn and sparse copies), fio's `nbd` engine (checksummed I/O) and the
//! conformance cases of `nbd_conformance.py` (libnbd's Python binding). Each asserts exact
//! results.

mod common;

use std::path::Path;

use common::{attach_dom0_xvda, pattern, qemu_io, run, xvda_url, Backend};
use shared_abi::Mode;

const KIB: u64 = 1024;

/// dom0's xvda, 1 MiB over three extents on both disks, each 4 KiB-aligned on its disk so
/// that the filesystem's allocation shows through exactly: VBD bytes 0..256K are hdb at
/// 1 MiB, 256K..512K are hda at 4 MiB, 512K..1M are hdb at 0.
const EXTENTS: [(u32, u64, u64); 3] = [(1, 2048, 512), (0, 8192, 512), (1, 0, 1024)];
const VBD_BYTES: u64 = 1024 * KIB;

/// Run `program`, which must succeed; its standard output.
fn run_ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(output.status.success(), "{program} {args:?} failed");
    String::from_utf8(output.stdout).unwrap()
}

/// What `nbdinfo --map --json` reports: (offset, length, type), type 3 for a hole that
/// reads as zeros, 0 for data.
fn nbdinfo_map(backend: &Backend) -> Vec<(u64, u64, u64)> {
    let map: serde_json::Value =
        serde_json::from_str(&run_ok("nbdinfo", &["--map", "--json", &xvda_url(backend)])).unwrap();
    map.as_array()
        .unwrap()
        .iter()
        .map(|extent| {
            (
                extent["offset"].as_u64().unwrap(),
                extent["length"].as_u64().unwrap(),
                extent["type"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// What `qemu-img map --output=json` reports: (start, length, data, zero).
fn qemu_img_map(backend: &Backend) -> Vec<(u64, u64, bool, bool)> {
    let map: serde_json::Value = serde_json::from_str(&run_ok(
        "qemu-img",
        &["map", "--output=json", "-f", "raw", &xvda_url(backend)],
    ))
    .unwrap();
    map.as_array()
        .unwrap()
        .iter()
        .map(|extent| {
            (
                extent["start"].as_u64().unwrap(),
                extent["length"].as_u64().unwrap(),
                extent["data"].as_bool().unwrap(),
                extent["zero"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Both maps must show exactly `data` (offset, length) as data and the rest as holes.
fn assert_maps(backend: &Backend, data: &[(u64, u64)], why: &str) {
    let mut expected = Vec::new();
    let mut at = 0;
    for &(offset, length) in data {
        if offset > at {
            expected.push((at, offset - at, false));
        }
        expected.push((offset, length, true));
        at = offset + length;
    }
    if at < VBD_BYTES {
        expected.push((at, VBD_BYTES - at, false));
    }
    let nbdinfo: Vec<_> = expected
        .iter()
        .map(|&(offset, length, data)| (offset, length, if data { 0 } else { 3 }))
        .collect();
    assert_eq!(nbdinfo_map(backend), nbdinfo, "nbdinfo --map: {why}");
    let qemu: Vec<_> = expected
        .iter()
        .map(|&(offset, length, data)| (offset, length, data, !data))
        .collect();
    assert_eq!(qemu_img_map(backend), qemu, "qemu-img map: {why}");
}

#[test]
fn nbdinfo_and_qemu_img_map_see_exactly_what_was_written() {
    let backend = Backend::start(&[]);
    attach_dom0_xvda(&backend, Mode::READ | Mode::WRITE, &EXTENTS);
    assert_maps(&backend, &[], "a fresh VD is all holes");

    // 128 KiB across the boundary of the first two extents (hdb, then hda), and 4 KiB at
    // the very end of the last.
    qemu_io(
        &backend,
        &["write -P 0xab 192k 128k", "write -P 0xcd 1020k 4k"],
    );
    assert_maps(
        &backend,
        &[(192 * KIB, 128 * KIB), (1020 * KIB, 4 * KIB)],
        "after writes across an extent boundary",
    );

    // Write-zeroes that may unmap punches a hole; so does a discard.
    qemu_io(&backend, &["write -z -u 192k 64k", "discard 256k 32k"]);
    assert_maps(
        &backend,
        &[(288 * KIB, 32 * KIB), (1020 * KIB, 4 * KIB)],
        "after write-zeroes and discard",
    );
    qemu_io(
        &backend,
        &[
            "read -P 0 0 288k",
            "read -P 0xab 288k 32k",
            "read -P 0 320k 700k",
        ],
    );
}

/// Whether the export tells clients it may be used over several connections.
fn can_multi_conn(backend: &Backend) -> bool {
    let info: serde_json::Value =
        serde_json::from_str(&run_ok("nbdinfo", &["--json", &xvda_url(backend)])).unwrap();
    info["exports"][0]["can_multi_conn"].as_bool().unwrap()
}

/// `nbdcopy FROM TO` over four connections, which it must say it used: it opens one per
/// thread, and only when the export offers multi-conn.
fn nbdcopy(from: &str, to: &str) {
    let output = run(
        "nbdcopy",
        &["--verbose", "--connections=4", "--threads=4", from, to],
    );
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("nbdcopy: connections=4 "));
}

#[test]
fn nbdcopy_copies_in_and_out_over_four_connections_byte_for_byte() {
    let backend = Backend::start(&[]);
    attach_dom0_xvda(&backend, Mode::READ | Mode::WRITE, &EXTENTS);
    assert!(can_multi_conn(&backend), "nbdcopy needs multi-conn for 4");
    // A source with data in two places and holes elsewhere.
    let source = backend.work.path().join("source.raw");
    let mut bytes = vec![0u8; VBD_BYTES as usize];
    bytes[100 * 1024..300 * 1024].copy_from_slice(&pattern(200 * 1024, 7));
    bytes[900 * 1024..904 * 1024].copy_from_slice(&pattern(4 * 1024, 9));
    std::fs::write(&source, &bytes).unwrap();
    let source = source.to_str().unwrap();
    nbdcopy(source, &xvda_url(&backend));
    let copy = backend.work.path().join("copy.raw");
    nbdcopy(&xvda_url(&backend), copy.to_str().unwrap());
    assert_eq!(std::fs::read(&copy).unwrap(), bytes);
    // And what landed on the disks is the source, in VBD order.
    let on_disks: Vec<u8> = EXTENTS
        .iter()
        .flat_map(|&(disk, start, count)| {
            backend.read_image(
                if disk == 0 { "hda" } else { "hdb" },
                start * 512,
                count as usize * 512,
            )
        })
        .collect();
    assert_eq!(on_disks, bytes);
}

#[test]
fn fio_nbd_engine_writes_and_verifies_with_crc32c() {
    let backend = Backend::start(&[]);
    attach_dom0_xvda(&backend, Mode::READ | Mode::WRITE, &EXTENTS);
    let uri = format!("--uri={}", xvda_url(&backend));
    let output = run_ok(
        "fio",
        &[
            "--name=verify",
            "--ioengine=nbd",
            &uri,
            "--rw=randwrite",
            "--bs=4k",
            "--size=1M",
            "--iodepth=16",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_state_save=0",
            "--output-format=json",
        ],
    );
    // fio says "fio: connected to NBD server" before its report.
    let report: serde_json::Value =
        serde_json::from_str(&output[output.find('{').unwrap()..]).unwrap();
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0);
    assert_eq!(job["write"]["io_bytes"], VBD_BYTES, "every block written");
    assert_eq!(job["read"]["io_bytes"], VBD_BYTES, "and read back verified");
}

#[test]
fn libnbd_conformance_cases_pass() {
    let backend = Backend::start(&[]);
    attach_dom0_xvda(&backend, Mode::READ | Mode::WRITE, &EXTENTS);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nbd_conformance.py");
    // Debian's libnbd binding is importable from the system's python3 only.
    let output = run(
        "/usr/bin/python3",
        &[
            script.to_str().unwrap(),
            backend.socket(0, "xvda").to_str().unwrap(),
            &VBD_BYTES.to_string(),
        ],
    );
    assert!(output.status.success(), "the conformance cases failed");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).lines().last(),
        Some("conformance: all cases passed")
    );
}
