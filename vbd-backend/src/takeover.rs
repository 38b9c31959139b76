//! Upgrade in place: `vbd-backend --takeover` starts a new binary that takes over the VBDs
//! and the sockets of the backend serving the same `DIR`, while its guests run.
//!
//! Every backend listens on `DIR/takeover.sock` (root and its own user only). The new
//! process connects and asks; the old one stops its control socket (the table can change
//! no more), sends its start identifier and every VBD (domain, device, mode, label,
//! extents), and waits. The new process makes the same VBDs in its own table, then its
//! sockets, each bound aside and renamed over the old one's path, so no path is ever
//! missing (a client connects to the old socket or to the new one), and says it has taken
//! over. The old process then pops no more requests, finishes those in flight, closes its
//! VMMs' connections (QEMU's `reconnect=N` brings each to the new process, which resumes
//! its rings from their inflight records: [`crate::vhost`]) and its NBD clients', flushes
//! the disks and exits 0, leaving the sockets, now the new process's, in place. Only then
//! does the new process serve its control socket: a change it makes (a detach) fences its
//! own I/O, not the old process's, which must therefore be over.
//!
//! The new process keeps the old start identifier: the VBDs were never taken away, so
//! `vdisk` must not take them for an earlier start's. In a shared pool it also continues
//! the old process's registration, whose revision the snapshot carries: the VBDs were
//! granted under it, and if it lapsed meanwhile (the old process fenced), other hosts may
//! hold their disks now, so the new process refuses to serve them and exits
//! ([`crate::lease`]). If the new process goes away before
//! it has taken over, the old one serves its control socket again and goes on.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hv_vbd::VbdId;
use shared_abi::wire::Extent;
use shared_abi::{DeviceNumber, Label, Mode, DOM0};

use crate::control::{Service, Stop};
use crate::sockets::{Peers, SocketDirectory};
use crate::threads::{Connections, Policy};
use crate::vbd::{domain_vbds, Table};

/// The socket's name in `DIR`.
pub const SOCKET: &str = "takeover.sock";

/// How long either side waits for the other's next line.
const PATIENCE: Duration = Duration::from_secs(60);

/// What the old process hands over: its start identifier, the revision of its host's
/// registration in a shared pool, and its VBDs.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub start_id: u64,
    pub registration: Option<i64>,
    pub vbds: Vec<VbdRecord>,
}

/// One VBD, as [`Snapshot`] carries it.
#[derive(Debug, PartialEq, Eq)]
pub struct VbdRecord {
    pub domain: u32,
    pub vdevice: DeviceNumber,
    pub mode: Mode,
    pub label: Label,
    pub extents: Vec<Extent>,
}

impl Snapshot {
    /// Every VBD of `table`.
    pub fn of(table: &Table, start_id: u64, registration: Option<i64>) -> Result<Snapshot, String> {
        let states = domain_vbds(table, shared_abi::wire::PROBE_ALL)
            .map_err(|error| format!("cannot list the VBDs: {error}"))?;
        let mut vbds = Vec::with_capacity(states.len());
        for state in states {
            let id = state.id();
            let mut extents = Vec::new();
            let info = table
                .info(DOM0, id, 0, usize::MAX, |_, extent| {
                    extents.push(extent);
                    Ok(())
                })
                .map_err(|error| format!("cannot read the VBD {id:?}: {error}"))?;
            vbds.push(VbdRecord {
                domain: id.domain,
                vdevice: id.vdevice,
                mode: info.mode,
                label: info.label,
                extents,
            });
        }
        Ok(Snapshot {
            start_id,
            registration,
            vbds,
        })
    }

    /// Make every VBD in `table` (the new process's, empty), at the table's sharing ceiling:
    /// the VBDs coexisted, each at a level no higher than it. Returns their domains.
    pub fn restore(&self, table: &Table) -> Result<Vec<u32>, String> {
        let level = table.sharing_ceiling();
        let mut domains = Vec::new();
        for vbd in &self.vbds {
            let id = VbdId {
                domain: vbd.domain,
                vdevice: vbd.vdevice,
            };
            table
                .create(DOM0, id, vbd.mode, vbd.label)
                .map_err(|error| format!("cannot make the VBD {id:?}: {error}"))?;
            // A VBD just made has no I/O to fence: its fence is complete at once.
            table
                .set_extents(DOM0, id, vbd.extents.iter().copied().map(Ok), level)
                .map_err(|error| format!("cannot give the VBD {id:?} its extents: {error}"))?
                .fence
                .wait(std::thread::yield_now);
            if !domains.contains(&vbd.domain) {
                domains.push(vbd.domain);
            }
        }
        Ok(domains)
    }

    /// The lines that carry it: `start ID`, `registration REVISION` in a shared pool,
    /// `vbd DOMAIN DEVICE MODE LABEL-HEX EXTENTS` with EXTENTS `DEVICE:START:COUNT,...`, and
    /// `end`.
    pub fn encode(&self) -> String {
        let mut text = format!("start {:#x}\n", self.start_id);
        if let Some(revision) = self.registration {
            text.push_str(&format!("registration {revision}\n"));
        }
        for vbd in &self.vbds {
            let label: String = vbd
                .label
                .as_str()
                .bytes()
                .map(|byte| format!("{byte:02x}"))
                .collect();
            let extents: Vec<String> = vbd
                .extents
                .iter()
                .map(|extent| {
                    format!(
                        "{}:{}:{}",
                        extent.device().raw(),
                        extent.start_sector(),
                        extent.nr_sectors()
                    )
                })
                .collect();
            text.push_str(&format!(
                "vbd {} {} {} {} {}\n",
                vbd.domain,
                vbd.vdevice.raw(),
                vbd.mode.bits(),
                if label.is_empty() { "-" } else { &label },
                extents.join(",")
            ));
        }
        text.push_str("end\n");
        text
    }

    /// Read what [`Snapshot::encode`] wrote, up to its `end` line.
    pub fn decode(lines: impl IntoIterator<Item = io::Result<String>>) -> Result<Snapshot, String> {
        let mut lines = lines.into_iter();
        let mut next = || -> Result<String, String> {
            lines
                .next()
                .ok_or("the old backend ended its reply early")?
                .map_err(|error| format!("cannot read the old backend's reply: {error}"))
        };
        let first = next()?;
        let start_id = first
            .strip_prefix("start 0x")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .ok_or_else(|| format!("not a start line: {first:?}"))?;
        let mut vbds = Vec::new();
        let mut registration = None;
        loop {
            let line = next()?;
            if line == "end" {
                return Ok(Snapshot {
                    start_id,
                    registration,
                    vbds,
                });
            }
            // Only right after the start line; a backend outside a shared pool sends none.
            if let Some(revision) = line.strip_prefix("registration ") {
                if registration.is_some() || !vbds.is_empty() {
                    return Err(format!("a registration line out of place: {line:?}"));
                }
                registration = Some(
                    revision
                        .parse()
                        .map_err(|_| format!("not a registration line: {line:?}"))?,
                );
                continue;
            }
            vbds.push(VbdRecord::decode(&line).ok_or_else(|| format!("not a VBD line: {line:?}"))?);
        }
    }
}

impl VbdRecord {
    fn decode(line: &str) -> Option<VbdRecord> {
        let mut fields = line.strip_prefix("vbd ")?.split(' ');
        let domain = fields.next()?.parse().ok()?;
        let vdevice = DeviceNumber::from_raw(fields.next()?.parse().ok()?);
        let mode = Mode::from_bits(fields.next()?.parse().ok()?)?;
        let label_hex = fields.next()?;
        let label_bytes = if label_hex == "-" {
            Vec::new()
        } else {
            (0..label_hex.len())
                .step_by(2)
                .map(|at| u8::from_str_radix(label_hex.get(at..at + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?
        };
        let label = Label::new(std::str::from_utf8(&label_bytes).ok()?).ok()?;
        let extents = fields
            .next()?
            .split(',')
            .filter(|text| !text.is_empty())
            .map(|text| {
                let mut parts = text.split(':').map(|part| part.parse::<u64>().ok());
                let device = DeviceNumber::from_raw(u32::try_from(parts.next()??).ok()?);
                Extent::new(device, parts.next()??, parts.next()??).ok()
            })
            .collect::<Option<Vec<Extent>>>()?;
        if fields.next().is_some() {
            return None;
        }
        Some(VbdRecord {
            domain,
            vdevice,
            mode,
            label,
            extents,
        })
    }
}

/// The new process's side: ask the backend serving `dir` for its VBDs. The stream stays
/// open for [`taken`].
pub fn request(dir: &Path) -> Result<(Snapshot, UnixStream), String> {
    let path = dir.join(SOCKET);
    let mut stream = UnixStream::connect(&path)
        .map_err(|error| format!("{}: no backend to take over ({error})", path.display()))?;
    stream
        .set_read_timeout(Some(PATIENCE))
        .and_then(|()| stream.write_all(b"takeover\n"))
        .map_err(|error| format!("{}: {error}", path.display()))?;
    let reader = BufReader::new(
        stream
            .try_clone()
            .map_err(|error| format!("{}: {error}", path.display()))?,
    );
    let snapshot = Snapshot::decode(reader.lines())?;
    Ok((snapshot, stream))
}

/// The new process serves every VBD's socket: tell the old one, and wait (bounded) until
/// it has finished the requests it took and exited, so that no I/O it translated can land
/// after a change this process makes: only then may the control socket take changes.
pub fn taken(mut stream: UnixStream) -> Result<(), String> {
    stream
        .write_all(b"taken\n")
        .map_err(|error| format!("cannot tell the old backend: {error}"))?;
    // The old process's end closes when it exits.
    let mut byte = [0u8; 1];
    loop {
        match io::Read::read(&mut stream, &mut byte) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                eprintln!(
                    "vbd-backend: the backend taken over from has not finished ({error}): serving on"
                );
                return Ok(());
            }
        }
    }
}

/// The old process's side: what a handover needs.
pub struct Handover {
    pub service: Arc<Service>,
    pub sockets: Arc<SocketDirectory>,
    /// control.sock's connections; served again when a takeover fails.
    pub control: Mutex<Connections>,
    pub control_idle_timeout: Duration,
    /// The new process's connection, kept open until this process exits: its end is how
    /// the new process learns that this one has finished.
    pub successor: Mutex<Option<UnixStream>>,
}

/// Serve `DIR/takeover.sock`: one new process at a time, root or this user only.
pub fn serve(handover: Arc<Handover>) -> Result<Connections, String> {
    let path = handover.sockets.root().join(SOCKET);
    let listener = handover.sockets.listen(&path)?;
    let policy = Policy {
        limit: 1,
        wait_for_slot: Duration::ZERO,
        peers: Peers::Owner,
        idle_timeout: Some(PATIENCE),
    };
    Connections::serve(SOCKET.into(), listener, policy, move |stream| {
        handover.hand_over(stream)
    })
    .map_err(|error| format!("{}: cannot serve: {error}", path.display()))
}

impl Handover {
    fn control(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hand everything over to the process at the other end of `stream`.
    fn hand_over(&self, stream: UnixStream) -> io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line != "takeover\n" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a takeover request: {line:?}"),
            ));
        }
        eprintln!("vbd-backend: a new backend takes over");
        // No change to the table from now on: the snapshot is the last word.
        self.control().stop();
        let shared = &self.service.shared;
        let snapshot = Snapshot::of(shared.table, shared.start_id, shared.registration)
            .map_err(io::Error::other)?;
        let answer = (&stream)
            .write_all(snapshot.encode().as_bytes())
            .and_then(|()| {
                line.clear();
                reader.read_line(&mut line)
            });
        if answer.is_err() || line != "taken\n" {
            eprintln!("vbd-backend: the new backend went away before it took over: serving on");
            let control_path = self.sockets.root().join("control.sock");
            let listener = self
                .sockets
                .listen(&control_path)
                .map_err(io::Error::other)?;
            *self.control() =
                crate::control::serve(self.service.clone(), listener, self.control_idle_timeout)?;
            return answer.map(drop);
        }
        eprintln!(
            "vbd-backend: handed {} VBDs over: finishing the requests in flight",
            snapshot.vbds.len()
        );
        self.service.shared.hand_over();
        *self
            .successor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(stream);
        self.service.request_stop(Stop::HandedOver);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(domain: u32, label: &str, extents: &[(u32, u64, u64)]) -> VbdRecord {
        VbdRecord {
            domain,
            vdevice: DeviceNumber::from_name("xvda").unwrap(),
            mode: Mode::READ | Mode::WRITE,
            label: Label::new(label).unwrap(),
            extents: extents
                .iter()
                .map(|&(device, start, count)| {
                    Extent::new(DeviceNumber::from_raw(device), start, count).unwrap()
                })
                .collect(),
        }
    }

    #[test]
    fn a_snapshot_reads_back_as_it_was_written() {
        for registration in [None, Some(42)] {
            let snapshot = Snapshot {
                start_id: 0xfeed_beef_0000_0001,
                registration,
                vbds: vec![
                    record(1, "vd:7", &[(768, 2048, 8192), (832, 0, 4096)]),
                    record(0, "", &[(768, 0, 16)]),
                ],
            };
            let text = snapshot.encode();
            let decoded = Snapshot::decode(text.lines().map(|line| Ok(line.to_owned()))).unwrap();
            assert_eq!(decoded, snapshot);
        }
    }

    #[test]
    fn a_garbled_or_short_snapshot_is_refused_by_line() {
        let lines = |text: &str| -> Vec<io::Result<String>> {
            text.lines().map(|line| Ok(line.to_owned())).collect()
        };
        assert_eq!(
            Snapshot::decode(lines("start 0x1\n")),
            Err("the old backend ended its reply early".to_owned())
        );
        assert_eq!(
            Snapshot::decode(lines("begin\n")),
            Err("not a start line: \"begin\"".to_owned())
        );
        for bad in [
            "vbd 1 51712 3 7664 768:0:0",
            "vbd 1 51712 3 7664 768:0",
            "vbd 1 51712 4096 7664 768:0:8",
            "vbd 1 51712 3 7g 768:0:8",
            "vbd 1 51712 3 7664 768:0:8 more",
        ] {
            assert_eq!(
                Snapshot::decode(lines(&format!("start 0x1\n{bad}\nend\n"))),
                Err(format!("not a VBD line: {bad:?}"))
            );
        }
        assert_eq!(
            Snapshot::decode(lines("start 0x1\nregistration x\nend\n")),
            Err("not a registration line: \"registration x\"".to_owned())
        );
        assert_eq!(
            Snapshot::decode(lines(
                "start 0x1\nvbd 1 51712 3 7664 768:0:8\nregistration 5\nend\n"
            )),
            Err("a registration line out of place: \"registration 5\"".to_owned())
        );
    }
}
