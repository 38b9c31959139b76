//! A bare-metal x86_64 test hypervisor for the VBD layer, booted by QEMU through PVH.
//!
//! It links `hv-vbd`, finds the IDE disks and registers them, and then serves three serial
//! ports, each the channel of one domain: COM2 is dom0, COM3 domain 1, COM4 domain 2. COM1
//! is the console. What it adds to hv-vbd is only a transport and disk I/O: frames are
//! reassembled from the UARTs and handed to hv-vbd's frame server, whose block requests end
//! in the ATA driver. There is one core and no allocator: the main loop polls the ports
//! round-robin and, when none has a byte, halts until an interrupt (a UART's or the 1 kHz
//! timer's) says there may be one.
#![no_std]
#![no_main]

mod ata;
mod boot;
mod channel;
mod command_line;
mod cpu;
mod disks;
mod exit;
mod interrupts;
mod rtc;
mod serial;
mod server;
mod timer;

use hv_vbd::serve::{Port, MAX_BLOCK_BYTES, MAX_SEGMENTS};
use hv_vbd::{DefaultVbdTable, IoContext, Segment, SharingLevel, VbdTable};
use shared_abi::reassembly::Step;
use shared_abi::DeviceNumber;

use crate::channel::{Receiver, IDLE_MILLISECONDS};
use crate::command_line::CommandLine;
use crate::disks::Disks;
use crate::exit::ExitCode;
use crate::serial::log;
use crate::server::{AtaDevices, ChannelPort, Statistics, CHANNEL_PORTS};
use crate::timer::Instant;

/// Bytes read from one port before the loop moves on, so a busy port cannot starve the
/// others of attention.
const BYTES_PER_TURN: usize = 4096;

static TABLE: DefaultVbdTable = VbdTable::new(SharingLevel::Unrestricted);

/// The large buffers, in `.bss` rather than on the stack: one frame per port, one block
/// transfer and one translated segment list. The main loop locks it once and keeps it.
struct Workspace {
    receivers: [Receiver; CHANNEL_PORTS.len()],
    block_buffer: [u8; MAX_BLOCK_BYTES],
    segments: [Segment; MAX_SEGMENTS],
}

static WORKSPACE: spin::Mutex<Workspace> = spin::Mutex::new(Workspace {
    receivers: [Receiver::new(), Receiver::new(), Receiver::new()],
    block_buffer: [0; MAX_BLOCK_BYTES],
    segments: [Segment {
        device: DeviceNumber::from_raw(0),
        sector: 0,
        nr_sectors: 0,
    }; MAX_SEGMENTS],
});

/// Called by the entry code in 64-bit mode with a stack and the physical address of the
/// PVH start info.
#[no_mangle]
extern "C" fn hypervisor_main(start_info: u32) -> ! {
    // First, so that an exception is reported and any wait can sleep.
    interrupts::initialise();
    serial::COM1.initialise();
    log!("booting");
    match timer::calibrate() {
        Ok(ticks_per_millisecond) => log!("TSC runs at {ticks_per_millisecond} kHz"),
        Err(error) => {
            log!("fatal: cannot calibrate the TSC: {error}");
            exit::exit(ExitCode::Failure);
        }
    }
    let options = CommandLine::read(start_info).and_then(|command_line| {
        command_line.options(|word| {
            log!("ignoring `{}` on the command line", word.escape_ascii());
        })
    });
    let options = match options {
        Ok(options) => options,
        Err(error) => {
            log!("fatal: {error}");
            exit::exit(ExitCode::Failure);
        }
    };
    if let Err(error) = TABLE.set_sharing_ceiling(options.sharing) {
        log!("fatal: cannot set the sharing ceiling: {}", error.name());
        exit::exit(ExitCode::Failure);
    }
    // Different at every boot, so tools can tell the VBDs they recorded under an earlier
    // start from this one's: under TCG the TSC counts from the machine's start, so the time
    // of day goes in the high half and the TSC, which differs within a second, in the low.
    let start_id = (rtc::seconds().unwrap_or(0) << 32) ^ cpu::time_stamp();
    let present = CHANNEL_PORTS.map(|port| port.uart.initialise());
    for (port, present) in CHANNEL_PORTS.iter().zip(present) {
        if present {
            port.uart.enable_receive_interrupt();
        } else {
            log!(
                "{}: no UART; domain {} is not served",
                port.name,
                port.domain
            );
        }
    }
    let disks = Disks::discover();
    for disk in disks.iter() {
        let registered = TABLE.register_disk(hv_vbd::Disk {
            device: disk.device,
            sectors: disk.ata.sectors(),
        });
        if let Err(error) = registered {
            log!("fatal: cannot register {}: {}", disk.name, error.name());
            exit::exit(ExitCode::Failure);
        }
        log!(
            "disk {} {} sectors={} ({} MiB) model=\"{}\"",
            disk.name,
            disk.device,
            disk.ata.sectors(),
            disk.mebibytes(),
            disk.ata.model()
        );
    }
    log!(
        "ready ports={} disks={} sharing={} start={start_id:#x}",
        present.iter().filter(|&&present| present).count(),
        disks.iter().count(),
        TABLE.sharing_ceiling()
    );
    for (port, present) in CHANNEL_PORTS.iter().zip(present) {
        if present {
            port.send_ready(start_id);
        }
    }
    let context = TABLE.io_context();
    serve_forever(&disks, &context, present, start_id)
}

/// What serving needs besides the frame: the disks, the buffers, the counters.
struct Server<'a> {
    context: &'a IoContext<'static>,
    devices: AtaDevices<'a>,
    block_buffer: &'a mut [u8; MAX_BLOCK_BYTES],
    segments: &'a mut [Segment; MAX_SEGMENTS],
    start_id: u64,
    statistics: Statistics,
}

/// Poll every present channel port in turn, reassemble frames and serve them.
fn serve_forever(
    disks: &Disks,
    context: &IoContext<'static>,
    present: [bool; CHANNEL_PORTS.len()],
    start_id: u64,
) -> ! {
    let mut workspace = WORKSPACE.lock();
    let Workspace {
        receivers,
        block_buffer,
        segments,
    } = &mut *workspace;
    let mut server = Server {
        context,
        devices: AtaDevices { disks },
        block_buffer,
        segments,
        start_id,
        statistics: Statistics::default(),
    };
    loop {
        let mut received_any = false;
        for (index, port) in CHANNEL_PORTS.iter().enumerate() {
            if !present[index] {
                continue;
            }
            let receiver = &mut receivers[index];
            let received = receiver.receive(|| port.uart.try_read(), BYTES_PER_TURN);
            received_any |= received != 0;
            if receiver.abandon_if_idle() {
                server.statistics.partial_frames_abandoned += 1;
                log!(
                    "{}: dropped a partial frame idle for over {IDLE_MILLISECONDS} ms",
                    port.name
                );
            }
            let turn = serve_buffered_frames(&mut server, port, receiver, present);
            // Garbage trickles in a FIFO load at a time: report it once the port falls quiet.
            let discarded = if received == 0 {
                receiver.take_discarded()
            } else {
                0
            };
            if discarded != 0 {
                server.statistics.bytes_skipped += discarded as u64;
                log!(
                    "{}: skipped {discarded} bytes that were not a frame",
                    port.name
                );
            }
            if turn.shutdown {
                log!("shutdown requested by dom0");
                log!("summary {}", server.statistics);
                exit::exit(ExitCode::Success);
            }
            if let Some(domain) = turn.destroyed {
                if let Some(target) = CHANNEL_PORTS.iter().position(|port| port.domain == domain) {
                    receivers[target].clear();
                    if present[target] {
                        log!(
                            "{}: serving a fresh domain {domain}",
                            CHANNEL_PORTS[target].name
                        );
                        CHANNEL_PORTS[target].send_ready(start_id);
                    }
                }
            }
            if turn.served {
                // Bytes that waited in QEMU while we served were not the senders' idleness.
                let now = Instant::now();
                receivers
                    .iter_mut()
                    .for_each(|receiver| receiver.resume(now));
            }
        }
        // Every port's FIFO was empty when read and every complete frame is served (a frame
        // completes only on a round that received bytes). Polling on would starve QEMU's
        // thread that refills the FIFOs; sleep until a UART or the timer interrupts. While
        // bytes keep arriving, rounds receive some and never sleep.
        if !received_any {
            cpu::wait_for_interrupt();
        }
    }
}

/// What one port's turn did that concerns the other ports.
struct Turn {
    served: bool,
    destroyed: Option<u32>,
    shutdown: bool,
}

/// Serve every complete frame the receiver holds. Bounded: each step consumes bytes.
fn serve_buffered_frames(
    server: &mut Server<'_>,
    port: &ChannelPort,
    receiver: &mut Receiver,
    present: [bool; CHANNEL_PORTS.len()],
) -> Turn {
    let mut turn = Turn {
        served: false,
        destroyed: None,
        shutdown: false,
    };
    loop {
        match receiver.step() {
            Step::NeedMore => return turn,
            Step::Rejected { sequence, error } => {
                server.statistics.frames_rejected += 1;
                log!("{}: rejected frame {sequence}: {error}", port.name);
                port.send_reject(sequence, error.errno());
            }
            Step::Frame { header, payload } => {
                turn.served = true;
                server.statistics.frames_served += 1;
                let mut channel = Port {
                    domain: port.domain,
                    start_id: server.start_id,
                    context: server.context,
                    disks: &mut server.devices,
                    buffer: &mut server.block_buffer[..],
                    segments: &mut server.segments[..],
                };
                // One core, and every I/O is done before its reply: a change never finds
                // I/O in flight, so its fence is complete at once.
                let served = TABLE.serve_frame(
                    &mut channel,
                    header.kind,
                    header.sequence,
                    payload,
                    &mut core::hint::spin_loop,
                    &mut |kind, sequence, parts| port.send(kind, sequence, parts),
                );
                if served.io_error {
                    server.statistics.io_errors += 1;
                }
                if let Some(changed) = served.changed {
                    let target = CHANNEL_PORTS
                        .iter()
                        .zip(present)
                        .find(|(target, present)| *present && target.domain == changed.domain);
                    if let Some((target, _)) = target {
                        target.send_change(changed);
                    }
                }
                if let Some(domain) = served.destroyed {
                    log!("domain {domain} destroyed by dom0");
                }
                turn.destroyed = turn.destroyed.or(served.destroyed);
                if served.shutdown {
                    turn.shutdown = true;
                    return turn;
                }
            }
        }
    }
}
