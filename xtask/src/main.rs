//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! Every external command is printed before it runs. Exit status: 0 when everything held,
//! 1 when a step failed, 2 for a usage error.

mod bench;
mod demo;
mod fuzz;
mod man;
mod provision;
mod qemu;
mod test;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  bench [--quick] [--only SECTION]
                                every benchmark beside its baseline: criterion, hv-vbd's
                                threads, vdisk, the test hypervisor's I/O, fio in a real
                                guest on vbd-backend, qemu-storage-daemon and QEMU's own
                                virtio-blk, fio and nbdcopy on both NBD exports, and a
                                host libblkio client on vbd-backend and qemu-storage-daemon
                                beside fio on the file; prints a table, writes
                                target/bench/summary.json (--quick: shorter samples and
                                rounds; --only nbd|backend_io: that section alone, to
                                target/bench/SECTION.json)
  demo [--bare-metal]           the HOWTO walkthrough, every command printed and checked: a
                                real Linux guest boots from a VD served by vbd-backend
                                (--bare-metal: dom1 of the test hypervisor reads it back)
  fuzz TARGET [--seconds N]     run a cargo-fuzz target of fuzz/ for N seconds (default 60)
                                after writing its seed corpus; installs cargo-fuzz if
                                missing; fails on a crash, a panic or a hang (the input is
                                kept in fuzz/artifacts/TARGET/). TARGET: virtio_request,
                                nbd_option or nbd_request
  man                           write the manual page vdisk(1) to target/man/vdisk.1
  test                          formatting, clippy, every host test, the no_std builds and
                                the QEMU integration suite
  qemu [--dir DIR] [--disk NAME=SIZE ...] [--sharing 0|1|2]
                                boot the test hypervisor with partitioned images and keep it
                                running; writes DIR/machine.toml for `vdisk --devices`/`--hv`
                                (default DIR target/qemu, disks hda=256M hdb=256M, each with
                                partitions of 64M, 96M and the rest; --sharing is the
                                hypervisor's ceiling, default 2, so vdisk's --safety rules)

examples:
  cargo xtask demo
  cargo xtask demo --bare-metal
  cargo xtask fuzz virtio_request --seconds 600
  cargo xtask qemu --dir /tmp/vm --disk hda=512M --disk hdb=128M
";

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let result = match arguments.first().map(String::as_str) {
        Some("bench") => match bench::Options::parse(&arguments[1..]) {
            Ok(options) => bench::run(options),
            Err(message) => return usage_error(&message),
        },
        Some("demo") => match &arguments[1..] {
            [] => demo::run(demo::Embedding::Backend),
            [flag] if flag == "--bare-metal" => demo::run(demo::Embedding::BareMetal),
            _ => return usage_error("demo takes only --bare-metal"),
        },
        Some("fuzz") => match fuzz::Options::parse(&arguments[1..]) {
            Ok(options) => fuzz::run(options),
            Err(message) => return usage_error(&message),
        },
        Some("man") if arguments.len() == 1 => man::run(),
        Some("test") if arguments.len() == 1 => test::run(),
        Some("qemu") => match qemu::Options::parse(&arguments[1..]) {
            Ok(options) => qemu::run(options),
            Err(message) => return usage_error(&message),
        },
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => return usage_error(&format!("unknown command or arguments: `{other}`")),
        None => return usage_error("no command given"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("xtask: {message}\n\n{USAGE}");
    ExitCode::from(2)
}
