//! One connection to a hypervisor port: send a request frame, read frames until its reply.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use shared_abi::frame::{self, FrameHeader, FrameKind};
use shared_abi::reassembly::{Reassembler, Step};
use shared_abi::wire::ChangeNotice;
use zerocopy::FromBytes;

use super::HypervisorError;

/// Where a hypervisor port is: `unix:PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
}

impl FromStr for Endpoint {
    type Err = HypervisorError;

    fn from_str(text: &str) -> Result<Endpoint, HypervisorError> {
        match text.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => Ok(Endpoint::Unix(PathBuf::from(path))),
            _ => Err(HypervisorError::BadEndpoint(text.to_owned())),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(formatter, "unix:{}", path.display()),
        }
    }
}

/// How long a reply may take. A 1 MiB block transfer through an emulated UART and ATA PIO
/// takes a few seconds under TCG; a minute means the hypervisor is gone.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// A connected port.
pub struct Channel {
    stream: UnixStream,
    endpoint: String,
    /// How long a reply may take before the call fails with [`HypervisorError::NoReply`].
    reply_timeout: Duration,
    next_sequence: u32,
    /// Bytes read past the last frame handed out: replies are read as they come.
    received: Reassembler<Vec<u8>>,
    notices: Vec<ChangeNotice>,
}

impl Channel {
    pub fn connect(endpoint: &Endpoint) -> Result<Channel, HypervisorError> {
        let name = endpoint.to_string();
        let io = |source| HypervisorError::Io {
            endpoint: name.clone(),
            source,
        };
        let Endpoint::Unix(path) = endpoint;
        // A signal that interrupts the connect is no answer from the hypervisor: ask again.
        let stream = loop {
            match UnixStream::connect(path) {
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other.map_err(io)?,
            }
        };
        Channel::over(stream, name.clone()).map_err(io)
    }

    /// A channel over a connected stream, waiting [`REPLY_TIMEOUT`] for replies.
    fn over(stream: UnixStream, endpoint: String) -> std::io::Result<Channel> {
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Channel {
            stream,
            endpoint,
            reply_timeout: REPLY_TIMEOUT,
            next_sequence: 1,
            received: Reassembler::new(vec![0u8; frame::MAX_FRAME]),
            notices: Vec::new(),
        })
    }

    /// Wait `timeout` for each reply from now on.
    pub fn set_reply_timeout(&mut self, timeout: Duration) -> Result<(), HypervisorError> {
        self.stream
            .set_read_timeout(Some(timeout))
            .map_err(|error| self.io_error(error))?;
        self.reply_timeout = timeout;
        Ok(())
    }

    fn io_error(&self, source: std::io::Error) -> HypervisorError {
        HypervisorError::Io {
            endpoint: self.endpoint.clone(),
            source,
        }
    }

    fn protocol_error(&self, message: impl Into<String>) -> HypervisorError {
        HypervisorError::Protocol {
            endpoint: self.endpoint.clone(),
            message: message.into(),
        }
    }

    /// Write raw bytes to the port: for tests that send garbage or half a frame.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), HypervisorError> {
        self.stream
            .write_all(bytes)
            .map_err(|error| self.io_error(error))
    }

    /// Send one frame and return the payload of its reply (`expected` kind, same sequence).
    /// A `Reject` reply becomes an error naming the errno; change notices that arrive in
    /// between are kept for [`Channel::take_notices`].
    pub fn request(
        &mut self,
        kind: FrameKind,
        payload: &[&[u8]],
        expected: FrameKind,
    ) -> Result<Vec<u8>, HypervisorError> {
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1).max(1);
        let header = FrameHeader::for_payload(kind, sequence, payload)
            .map_err(|error| self.protocol_error(format!("cannot send: {error}")))?;
        let mut bytes = Vec::with_capacity(frame::HEADER_LEN + header.length as usize);
        bytes.extend_from_slice(&header.to_bytes());
        for part in payload {
            bytes.extend_from_slice(part);
        }
        self.send_raw(&bytes)?;
        loop {
            let (reply_kind, reply_sequence, reply) = self.next_frame()?;
            match reply_kind {
                FrameKind::ChangeNotice => {
                    if let Ok((notice, _)) = ChangeNotice::read_from_prefix(&reply) {
                        self.notices.push(notice);
                    }
                }
                _ if reply_sequence != sequence => {} // a stale reply to an abandoned request
                FrameKind::Reject => {
                    let errno = reply
                        .get(..8)
                        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                        .map(i64::from_le_bytes);
                    let error = errno.and_then(shared_abi::Error::from_wire);
                    return Err(self.protocol_error(match error {
                        Some(Err(error)) => format!("frame rejected: {error}"),
                        _ => "frame rejected".to_owned(),
                    }));
                }
                _ if reply_kind == expected => return Ok(reply),
                other => {
                    return Err(self
                        .protocol_error(format!("expected a {expected:?} reply, got {other:?}")))
                }
            }
        }
    }

    /// Change notices received so far, oldest first.
    pub fn take_notices(&mut self) -> Vec<ChangeNotice> {
        std::mem::take(&mut self.notices)
    }

    /// Wait up to `limit` for a change notice.
    pub fn wait_notice(
        &mut self,
        limit: Duration,
    ) -> Result<Option<ChangeNotice>, HypervisorError> {
        if let Some(notice) = self.notices.first().copied() {
            self.notices.remove(0);
            return Ok(Some(notice));
        }
        self.stream
            .set_read_timeout(Some(limit))
            .map_err(|error| self.io_error(error))?;
        let result = loop {
            match self.next_frame() {
                Ok((FrameKind::ChangeNotice, _, payload)) => {
                    break Ok(ChangeNotice::read_from_prefix(&payload)
                        .ok()
                        .map(|(notice, _)| notice))
                }
                Ok(_) => continue,
                Err(HypervisorError::NoReply { .. }) => break Ok(None),
                Err(error) => break Err(error),
            }
        };
        self.set_reply_timeout(self.reply_timeout)?;
        result
    }

    /// Read the next well-formed frame, skipping anything malformed.
    fn next_frame(&mut self) -> Result<(FrameKind, u32, Vec<u8>), HypervisorError> {
        loop {
            match self.received.step() {
                Step::Frame { header, payload } => {
                    return Ok((header.kind, header.sequence, payload.to_vec()))
                }
                // The hypervisor sent something malformed: nothing to tell it, read on.
                Step::Rejected { .. } => continue,
                Step::NeedMore => {}
            }
            let read = match self.stream.read(self.received.spare()) {
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                other => other,
            };
            let read = read.map_err(|error| {
                match error.kind() {
                    // What a read timeout looks like on a unix socket.
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                        HypervisorError::NoReply {
                            endpoint: self.endpoint.clone(),
                            waited: self.reply_timeout,
                        }
                    }
                    _ => self.io_error(error),
                }
            })?;
            if read == 0 {
                return Err(self.protocol_error("the port closed"));
            }
            self.received.commit(read);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "unix:/tmp/dom0.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/tmp/dom0.sock".into())
        );
        for bad in ["", "unix:", "tcp:1.2.3.4:5", "/tmp/dom0.sock"] {
            assert!(matches!(
                bad.parse::<Endpoint>(),
                Err(HypervisorError::BadEndpoint(text)) if text == bad
            ));
        }
    }

    #[test]
    fn a_reply_is_found_among_garbage_stale_replies_and_notices() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let mut channel = Channel::over(client, "test".to_owned()).unwrap();
        channel.next_sequence = 7;
        let notice = ChangeNotice {
            domain: 1,
            _reserved: 0,
            generation: 9,
        };
        let frame = |kind, sequence, payload: &[u8]| {
            let mut out = vec![0u8; frame::HEADER_LEN + payload.len()];
            frame::encode(kind, sequence, &[payload], &mut out).unwrap();
            out
        };
        let mut stream = b"noise".to_vec();
        stream.extend(frame(FrameKind::BlockResponse, 6, b"stale"));
        stream.extend(frame(
            FrameKind::ChangeNotice,
            0,
            zerocopy::IntoBytes::as_bytes(&notice),
        ));
        stream.extend(frame(FrameKind::BlockResponse, 7, b"mine"));
        server.write_all(&stream).unwrap();
        let reply = channel
            .request(FrameKind::BlockRead, &[b"req"], FrameKind::BlockResponse)
            .unwrap();
        assert_eq!(reply, b"mine");
        assert_eq!(channel.take_notices(), vec![notice]);
        let mut sent = vec![0u8; frame::HEADER_LEN + 3];
        server.read_exact(&mut sent).unwrap();
        let (request, _) = frame::decode(&sent).unwrap();
        assert_eq!((request.kind, request.sequence), (FrameKind::BlockRead, 7));
    }

    #[test]
    fn a_silent_port_is_no_reply_within_the_timeout_not_an_errno() {
        let (client, _server) = UnixStream::pair().unwrap();
        let mut channel = Channel::over(client, "test".to_owned()).unwrap();
        channel
            .set_reply_timeout(Duration::from_millis(100))
            .unwrap();
        let error = channel
            .request(FrameKind::BlockRead, &[b"req"], FrameKind::BlockResponse)
            .unwrap_err();
        assert!(
            matches!(error, HypervisorError::NoReply { .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "hypervisor at test: no reply within 0.1 s"
        );
        // Waiting for a notice that does not come is not an error, and keeps the timeout.
        assert!(channel
            .wait_notice(Duration::from_millis(10))
            .unwrap()
            .is_none());
        assert_eq!(channel.reply_timeout, Duration::from_millis(100));
    }
}
