//! The relay between a VMM's vhost-user connection and vhost-user-backend's, one message at
//! a time with the descriptors it carries. It exists for the messages the daemon cannot be
//! left to handle alone:
//! - vhost 0.18's `Backend` (the back-end request channel the VMM hands over in
//!   `SET_BACKEND_REQ_FD`) has no way to send `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`, so the
//!   relay keeps its own copy of that channel, through which
//!   [`BackendChannel::config_changed`] tells QEMU to re-read the capacity after a VBD grows;
//! - `SET_VRING_BASE` says where each ring's next request is: 0 for a driver that has just
//!   started, elsewhere for a VMM that reconnects to a guest that ran before. The relay
//!   reports it ([`Inbound::ring_base`]) before the daemon acts on it;
//! - `SET_VRING_CALL` hands over the eventfd that notifies the guest. A VMM may give a
//!   blocking one already at its maximum count, on which a queue thread would block for
//!   ever: the relay makes it non-blocking, and a notification that finds it full is one
//!   the guest already has;
//! - `SET_MEM_TABLE` and `ADD_MEM_REG` carry the files of guest memory: a region that does
//!   not fit inside its file ends the connection before the daemon maps it
//!   ([`super::memory_regions`]);
//! - inflight tracking ([`super::inflight`]), which the daemon does not support: the relay
//!   adds `INFLIGHT_SHMFD` to the daemon's protocol features, answers `GET_INFLIGHT_FD` and
//!   `SET_INFLIGHT_FD` itself, notes each ring's size (`SET_VRING_NUM`), and kicks a ring
//!   that has requests to replay as it passes on its kick eventfd (`SET_VRING_KICK`), since
//!   no guest kick may come while the guest waits for them. A region it refuses ends the
//!   connection.
//!
//! Only control messages pass here; the data path is shared memory and eventfds.

use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use super::inflight::{Inflight, PAYLOAD_BYTES};
use super::memory_regions::{self, ADD_MEM_REG, SET_MEM_TABLE};
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// A vhost-user message header: request, flags, payload size.
const HEADER_BYTES: usize = 12;
/// The largest payload vhost accepts (`MAX_MSG_SIZE`).
const MAX_PAYLOAD: usize = 0x1000;
/// The most descriptors one message carries (`MAX_ATTACHED_FD_ENTRIES`).
const MAX_FDS: usize = 32;
/// `VHOST_USER_SET_BACKEND_REQ_FD`.
const SET_BACKEND_REQ_FD: u32 = 21;
/// `VHOST_USER_SET_VRING_BASE`, whose payload is a ring index and its next request.
const SET_VRING_BASE: u32 = 10;
/// `VHOST_USER_SET_VRING_CALL`, which carries a ring's call eventfd.
const SET_VRING_CALL: u32 = 13;
/// `VHOST_USER_SET_VRING_NUM`: a ring index and its size.
const SET_VRING_NUM: u32 = 8;
/// `VHOST_USER_SET_VRING_KICK`: a ring index (low byte) and its kick eventfd.
const SET_VRING_KICK: u32 = 12;
/// `VHOST_USER_GET_PROTOCOL_FEATURES`, whose reply the relay adds inflight tracking to.
const GET_PROTOCOL_FEATURES: u32 = 15;
/// `VHOST_USER_GET_INFLIGHT_FD` and `VHOST_USER_SET_INFLIGHT_FD`, answered by the relay.
const GET_INFLIGHT_FD: u32 = 31;
const SET_INFLIGHT_FD: u32 = 32;
/// `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`.
const INFLIGHT_SHMFD: u64 = 1 << 12;
/// Header flags: a reply, and a request that wants one (`REPLY_ACK`).
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;
/// `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`.
const CONFIG_CHANGE_MSG: u32 = 2;
/// Flags of a message from the back-end: protocol version 1.
const VERSION_1: u32 = 0x1;

/// The back-end request channel of the current connection, once the VMM sent it.
#[derive(Default)]
pub struct BackendChannel {
    stream: Mutex<Option<UnixStream>>,
}

impl BackendChannel {
    fn set(&self, stream: Option<UnixStream>) {
        *self
            .stream
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = stream;
    }

    /// Tell the VMM the config space changed; `false` when it gave no channel to say it on.
    pub fn config_changed(&self) -> io::Result<bool> {
        let mut guard = self
            .stream
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(stream) = guard.as_mut() else {
            return Ok(false);
        };
        let mut message = [0u8; HEADER_BYTES];
        message[..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
        message[4..8].copy_from_slice(&VERSION_1.to_le_bytes());
        stream.write_all(&message)?;
        Ok(true)
    }

    /// The connection ended: its channel is gone with it.
    pub fn clear(&self) {
        self.set(None);
    }
}

/// What the relay does with the VMM's messages, besides passing them on.
pub struct Inbound<'a> {
    /// Where the back-end request channel is kept.
    pub channel: &'a BackendChannel,
    /// Told each ring's index and first request, before the daemon is; an error ends the
    /// connection.
    pub ring_base: &'a (dyn Fn(u32, u32) -> Result<(), String> + Sync),
    /// The connection's inflight tracking.
    pub inflight: &'a Inflight,
    /// Answers `GET_INFLIGHT_FD` with a region stamped with the socket's VBD.
    pub get_inflight: &'a (dyn Fn(&[u8; PAYLOAD_BYTES]) -> io::Result<InflightReply> + Sync),
}

/// The payload and the region's descriptor that answer `GET_INFLIGHT_FD`.
pub type InflightReply = ([u8; PAYLOAD_BYTES], OwnedFd);

/// One end of the VMM's connection, written by both directions of the relay: the daemon's
/// replies and the relay's own answers must not interleave.
pub struct Vmm<'a> {
    stream: &'a UnixStream,
    sending: Mutex<()>,
}

impl<'a> Vmm<'a> {
    pub fn new(stream: &'a UnixStream) -> Vmm<'a> {
        Vmm {
            stream,
            sending: Mutex::new(()),
        }
    }

    fn send(&self, message: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
        let _sending = self
            .sending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        send(self.stream, message, fds)
    }

    /// Answer `request` with `payload` (and `fds`), as the daemon would have.
    fn reply(&self, request: u32, payload: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
        let mut message = Vec::with_capacity(HEADER_BYTES + payload.len());
        message.extend_from_slice(&request.to_le_bytes());
        message.extend_from_slice(&(VERSION_1 | REPLY).to_le_bytes());
        message.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        message.extend_from_slice(payload);
        self.send(&message, fds)
    }
}

/// Read exactly `buffer.len()` bytes, collecting any descriptors that come with them.
/// `Ok(false)` when the stream ends before the first byte.
fn receive(stream: &UnixStream, buffer: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buffer.len() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buffer[filled..])];
        let received = match recvmsg(stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(received) => received.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(error) => return Err(error.into()),
        };
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received_fds) = message {
                fds.extend(received_fds);
            }
        }
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many descriptors in one message",
            ));
        }
        if received == 0 {
            return if filled == 0 {
                Ok(false)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        filled += received;
    }
    Ok(true)
}

fn send(stream: &UnixStream, message: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(io::Error::other("descriptors do not fit a control message"));
    }
    let mut sent = loop {
        match sendmsg(
            stream,
            &[IoSlice::new(message)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(sent) => break sent,
            Err(rustix::io::Errno::INTR) => continue,
            Err(error) => return Err(error.into()),
        }
    };
    // The descriptors went with the first bytes; the rest is plain data.
    let mut stream = stream;
    while sent < message.len() {
        sent += stream.write(&message[sent..])?;
    }
    Ok(())
}

/// Relay the VMM's messages to the daemon until the VMM's end closes, watching them; then
/// end both, so the other direction and the daemon stop too.
pub fn relay_inbound(vmm: &Vmm, daemon: &UnixStream, inbound: &Inbound) -> io::Result<()> {
    let result = relay_messages(vmm.stream, |request, message, fds| {
        match watch(vmm, inbound, request, message, fds)? {
            Watched::Pass => send(daemon, message, fds),
            Watched::Answered => Ok(()),
        }
    });
    end(vmm.stream, daemon);
    result
}

/// Relay the daemon's messages to the VMM until the daemon's end closes, adding inflight
/// tracking to its protocol features; then end both.
pub fn relay_outbound(daemon: &UnixStream, vmm: &Vmm) -> io::Result<()> {
    let result = relay_messages(daemon, |request, message, fds| {
        if request == GET_PROTOCOL_FEATURES && message.len() == HEADER_BYTES + 8 {
            let features = u64::from(word(message, HEADER_BYTES))
                | u64::from(word(message, HEADER_BYTES + 4)) << 32
                | INFLIGHT_SHMFD;
            message[HEADER_BYTES..].copy_from_slice(&features.to_le_bytes());
        }
        vmm.send(message, fds)
    });
    end(daemon, vmm.stream);
    result
}

fn end(from: &UnixStream, to: &UnixStream) {
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// The little-endian `u32` at `offset`, which the caller has checked is inside `bytes`.
fn word(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(word)
}

fn invalid(why: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// What became of a message the relay watched.
enum Watched {
    /// Pass it on to the daemon.
    Pass,
    /// The relay answered it.
    Answered,
}

/// Act on a message from the VMM before the daemon sees it, or instead of it.
fn watch(
    vmm: &Vmm,
    inbound: &Inbound,
    request: u32,
    message: &[u8],
    fds: &[OwnedFd],
) -> io::Result<Watched> {
    let flags = word(message, 4);
    let payload = &message[HEADER_BYTES..];
    match request {
        SET_BACKEND_REQ_FD => {
            let kept = match fds.first() {
                Some(fd) => Some(UnixStream::from(fd.try_clone()?)),
                None => None,
            };
            inbound.channel.set(kept);
        }
        SET_VRING_CALL => {
            for fd in fds {
                let flags = rustix::fs::fcntl_getfl(fd)?;
                rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
            }
        }
        SET_MEM_TABLE | ADD_MEM_REG => {
            memory_regions::check(request, payload, fds).map_err(invalid)?;
        }
        SET_VRING_NUM if payload.len() >= 8 => {
            inbound
                .inflight
                .ring_size(word(payload, 0), word(payload, 4));
        }
        SET_VRING_BASE if payload.len() >= 8 => {
            (inbound.ring_base)(word(payload, 0), word(payload, 4)).map_err(invalid)?;
        }
        // The ring's requests in flight wait for a kick no guest will send: give one. It
        // stays in the eventfd until the daemon listens on it, once the ring is started and
        // enabled. Made non-blocking first, as call eventfds are: a kick that finds the
        // counter full is one the daemon will see anyway.
        SET_VRING_KICK
            if payload.len() >= 8 && inbound.inflight.replay_pending(word(payload, 0) & 0xff) =>
        {
            if let Some(kick) = fds.first() {
                let flags = rustix::fs::fcntl_getfl(kick)?;
                rustix::fs::fcntl_setfl(kick, flags | rustix::fs::OFlags::NONBLOCK)?;
                match rustix::io::write(kick, &1u64.to_ne_bytes()) {
                    Ok(_) | Err(rustix::io::Errno::AGAIN) => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }
        GET_INFLIGHT_FD => {
            let asked: &[u8; PAYLOAD_BYTES] = payload
                .try_into()
                .map_err(|_| invalid(format!("a {}-byte GET_INFLIGHT_FD", payload.len())))?;
            let (reply, fd) = (inbound.get_inflight)(asked)?;
            vmm.reply(request, &reply, &[fd])?;
            return Ok(Watched::Answered);
        }
        SET_INFLIGHT_FD => {
            let given: &[u8; PAYLOAD_BYTES] = payload
                .try_into()
                .map_err(|_| invalid(format!("a {}-byte SET_INFLIGHT_FD", payload.len())))?;
            inbound.inflight.set(given, fds.first()).map_err(invalid)?;
            if flags & NEED_REPLY != 0 {
                vmm.reply(request, &0u64.to_le_bytes(), &[])?;
            }
            return Ok(Watched::Answered);
        }
        _ => {}
    }
    Ok(Watched::Pass)
}

/// Read messages from `from` and hand each to `deliver`, until `from` ends.
fn relay_messages(
    from: &UnixStream,
    mut deliver: impl FnMut(u32, &mut Vec<u8>, &[OwnedFd]) -> io::Result<()>,
) -> io::Result<()> {
    let mut message = Vec::with_capacity(HEADER_BYTES + MAX_PAYLOAD);
    loop {
        let mut fds = Vec::new();
        message.resize(HEADER_BYTES, 0);
        if !receive(from, &mut message, &mut fds)? {
            return Ok(());
        }
        let request = word(&message, 0);
        let size = word(&message, 8) as usize;
        if size > MAX_PAYLOAD {
            return Err(invalid(format!("a {size}-byte vhost-user message")));
        }
        message.resize(HEADER_BYTES + size, 0);
        receive(from, &mut message[HEADER_BYTES..], &mut fds)?;
        deliver(request, &mut message, &fds)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    fn no_inflight(_: &[u8; PAYLOAD_BYTES]) -> io::Result<InflightReply> {
        Err(io::Error::other("not in this test"))
    }

    /// A watch that keeps the back-end channel and tracks inflight I/O, and nothing more.
    fn watching<'a>(channel: &'a BackendChannel, inflight: &'a Inflight) -> Inbound<'a> {
        Inbound {
            channel,
            ring_base: &|_, _| Ok(()),
            inflight,
            get_inflight: &no_inflight,
        }
    }

    fn message(request: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = request.to_le_bytes().to_vec();
        bytes.extend_from_slice(&VERSION_1.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn messages_and_descriptors_pass_and_the_backend_channel_is_kept() {
        let (vmm, vmm_end) = UnixStream::pair().unwrap();
        let (daemon_end, daemon) = UnixStream::pair().unwrap();
        let channel = BackendChannel::default();
        let bases = Mutex::new(Vec::new());
        let record = |index: u32, base: u32| {
            bases.lock().unwrap().push((index, base));
            Ok(())
        };
        let inflight = Inflight::new(1);
        let inbound = Inbound {
            channel: &channel,
            ring_base: &record,
            inflight: &inflight,
            get_inflight: &no_inflight,
        };
        let vmm_side = Vmm::new(&vmm_end);
        let (backend_ours, mut backend_vmm) = UnixStream::pair().unwrap();
        let mut ring_base = 1u32.to_le_bytes().to_vec();
        ring_base.extend_from_slice(&77u32.to_le_bytes());
        std::thread::scope(|scope| {
            let relayed = scope.spawn(|| relay_inbound(&vmm_side, &daemon_end, &inbound));
            send(&vmm, &message(1, &[]), &[]).unwrap();
            send(&vmm, &message(SET_VRING_BASE, &ring_base), &[]).unwrap();
            let descriptor = OwnedFd::from(backend_ours.try_clone().unwrap());
            send(
                &vmm,
                &message(SET_BACKEND_REQ_FD, &7u64.to_le_bytes()),
                &[descriptor],
            )
            .unwrap();
            let mut fds = Vec::new();
            let mut first = vec![0u8; HEADER_BYTES];
            assert!(receive(&daemon, &mut first, &mut fds).unwrap());
            assert_eq!(first, message(1, &[]));
            let mut base = vec![0u8; HEADER_BYTES + 8];
            assert!(receive(&daemon, &mut base, &mut fds).unwrap());
            assert_eq!(base, message(SET_VRING_BASE, &ring_base));
            let mut second = vec![0u8; HEADER_BYTES + 8];
            assert!(receive(&daemon, &mut second, &mut fds).unwrap());
            assert_eq!(second, message(SET_BACKEND_REQ_FD, &7u64.to_le_bytes()));
            assert_eq!(fds.len(), 1, "the descriptor reaches the daemon");
            assert_ne!(fds[0].as_raw_fd(), backend_ours.as_raw_fd());
            drop(vmm);
            relayed.join().unwrap().unwrap();
        });
        assert_eq!(*bases.lock().unwrap(), vec![(1, 77)]);
        assert!(channel.config_changed().unwrap());
        let mut notice = [0u8; HEADER_BYTES];
        backend_vmm.read_exact(&mut notice).unwrap();
        assert_eq!(notice.to_vec(), message(CONFIG_CHANGE_MSG, &[]));
        channel.clear();
        assert!(!channel.config_changed().unwrap());
    }

    #[test]
    fn a_call_eventfd_reaches_the_daemon_non_blocking() {
        let (vmm, vmm_end) = UnixStream::pair().unwrap();
        let (daemon_end, daemon) = UnixStream::pair().unwrap();
        let channel = BackendChannel::default();
        let inflight = Inflight::new(1);
        let inbound = watching(&channel, &inflight);
        let vmm_side = Vmm::new(&vmm_end);
        let call = rustix::event::eventfd(0, rustix::event::EventfdFlags::empty()).unwrap();
        rustix::io::write(&call, &0xffff_ffff_ffff_fffe_u64.to_ne_bytes()).unwrap();
        let payload = 0u64.to_le_bytes();
        std::thread::scope(|scope| {
            let relayed = scope.spawn(|| relay_inbound(&vmm_side, &daemon_end, &inbound));
            let descriptor = call.try_clone().unwrap();
            send(&vmm, &message(SET_VRING_CALL, &payload), &[descriptor]).unwrap();
            let mut fds = Vec::new();
            let mut received = vec![0u8; HEADER_BYTES + 8];
            assert!(receive(&daemon, &mut received, &mut fds).unwrap());
            assert_eq!(received, message(SET_VRING_CALL, &payload));
            let flags = rustix::fs::fcntl_getfl(&fds[0]).unwrap();
            assert!(flags.contains(rustix::fs::OFlags::NONBLOCK));
            // A full counter refuses another notification at once instead of blocking.
            let mut notifier = std::fs::File::from(fds.remove(0));
            let refused = std::io::Write::write(&mut notifier, &1u64.to_ne_bytes());
            assert_eq!(refused.unwrap_err().kind(), io::ErrorKind::WouldBlock);
            drop(vmm);
            relayed.join().unwrap().unwrap();
        });
    }

    #[test]
    fn inflight_tracking_is_offered_and_a_region_not_made_here_ends_the_connection() {
        let (daemon, daemon_end) = UnixStream::pair().unwrap();
        let (vmm_end, mut vmm) = UnixStream::pair().unwrap();
        let vmm_side = Vmm::new(&vmm_end);
        let mut reply = message(GET_PROTOCOL_FEATURES, &0x202u64.to_le_bytes());
        reply[4..8].copy_from_slice(&(VERSION_1 | REPLY).to_le_bytes());
        send(&daemon, &reply, &[]).unwrap();
        drop(daemon);
        relay_outbound(&daemon_end, &vmm_side).unwrap();
        let mut received = vec![0u8; HEADER_BYTES + 8];
        vmm.read_exact(&mut received).unwrap();
        let features = u64::from_le_bytes(received[HEADER_BYTES..].try_into().unwrap());
        assert_eq!(features, 0x202 | INFLIGHT_SHMFD);

        // A plain file is no region of ours: the relay ends before the daemon sees it.
        let (vmm, vmm_end) = UnixStream::pair().unwrap();
        let (daemon_end, _daemon) = UnixStream::pair().unwrap();
        let channel = BackendChannel::default();
        let inflight = Inflight::new(1);
        let inbound = watching(&channel, &inflight);
        let vmm_side = Vmm::new(&vmm_end);
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 20).unwrap();
        let mut payload = [0u8; PAYLOAD_BYTES];
        payload[..8].copy_from_slice(&4224u64.to_le_bytes());
        payload[16..18].copy_from_slice(&1u16.to_le_bytes());
        payload[18..20].copy_from_slice(&256u16.to_le_bytes());
        send(
            &vmm,
            &message(SET_INFLIGHT_FD, &payload),
            &[OwnedFd::from(file)],
        )
        .unwrap();
        let ended = relay_inbound(&vmm_side, &daemon_end, &inbound).unwrap_err();
        assert_eq!(ended.kind(), io::ErrorKind::InvalidData);
        assert!(ended.to_string().contains("not sealed"), "{ended}");
    }

    #[test]
    fn a_ring_to_replay_is_kicked_and_a_full_kick_eventfd_does_not_block_the_relay() {
        use crate::vhost::inflight::{Stamp, Start};
        let stamp = Stamp {
            digest: 1,
            size_sectors: 8,
            extents: 1,
        };
        let mut asked = [0u8; PAYLOAD_BYTES];
        asked[16..18].copy_from_slice(&1u16.to_le_bytes());
        asked[18..20].copy_from_slice(&16u16.to_le_bytes());
        // A ring started under one backend, resumed under the next: it has a replay pending.
        let before = Inflight::new(1);
        let (region, fd) = before.get(&asked, stamp).unwrap();
        before.set(&region, Some(&fd)).unwrap();
        before.ring_size(0, 16);
        assert_eq!(before.ring_starts(0, 0, || Some(stamp)), Ok(Start::Fresh));
        let inflight = Inflight::new(1);
        inflight.set(&region, Some(&fd)).unwrap();
        inflight.ring_size(0, 16);
        assert_eq!(
            inflight.ring_starts(0, 0, || Some(stamp)),
            Ok(Start::Resumed)
        );

        let (vmm, vmm_end) = UnixStream::pair().unwrap();
        let (daemon_end, daemon) = UnixStream::pair().unwrap();
        let channel = BackendChannel::default();
        let inbound = watching(&channel, &inflight);
        let vmm_side = Vmm::new(&vmm_end);
        let empty = rustix::event::eventfd(0, rustix::event::EventfdFlags::empty()).unwrap();
        let full = rustix::event::eventfd(0, rustix::event::EventfdFlags::empty()).unwrap();
        rustix::io::write(&full, &0xffff_ffff_ffff_fffe_u64.to_ne_bytes()).unwrap();
        let payload = 0u64.to_le_bytes();
        std::thread::scope(|scope| {
            let relayed = scope.spawn(|| relay_inbound(&vmm_side, &daemon_end, &inbound));
            for kick in [&empty, &full] {
                let descriptor = kick.try_clone().unwrap();
                send(&vmm, &message(SET_VRING_KICK, &payload), &[descriptor]).unwrap();
                let mut fds = Vec::new();
                let mut received = vec![0u8; HEADER_BYTES + 8];
                assert!(receive(&daemon, &mut received, &mut fds).unwrap());
                assert_eq!(received, message(SET_VRING_KICK, &payload));
            }
            drop(vmm);
            relayed.join().unwrap().unwrap();
        });
        let mut count = [0u8; 8];
        rustix::io::read(&empty, &mut count).unwrap();
        assert_eq!(
            u64::from_ne_bytes(count),
            1,
            "the ring to replay was kicked"
        );
    }

    #[test]
    fn an_oversized_message_ends_the_relay() {
        let (vmm, vmm_end) = UnixStream::pair().unwrap();
        let (daemon_end, _daemon) = UnixStream::pair().unwrap();
        let mut header = message(5, &[]);
        header[8..12].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        send(&vmm, &header, &[]).unwrap();
        let vmm_side = Vmm::new(&daemon_end);
        assert_eq!(
            relay_outbound(&vmm_end, &vmm_side).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
