//! Framing of the remote hypercall channel: a byte stream (a serial port) carrying frames.
//!
//! A frame is a 24-byte header followed by `length` payload bytes:
//!
//! | offset | field        | meaning                                             |
//! |--------|--------------|-----------------------------------------------------|
//! | 0      | magic        | `b"VBD1"`                                           |
//! | 4      | version      | [`FRAME_VERSION`]                                   |
//! | 5      | kind         | [`FrameKind`]                                       |
//! | 6      | reserved     | zero                                                |
//! | 8      | sequence     | chosen by the requester, echoed in the reply        |
//! | 12     | length       | payload bytes, at most [`MAX_PAYLOAD`]              |
//! | 16     | payload_crc  | CRC-32 (IEEE) of the payload                        |
//! | 20     | header_crc   | CRC-32 of bytes 0..20                               |
//!
//! The header has its own checksum so that a corrupted `length` is caught before the reader
//! waits for a payload that will never come. After any malformed header the reader drops one
//! byte and looks for the next magic ([`resync`]), so one bad frame costs only itself.
//! Every reader does this through [`crate::reassembly::Reassembler`].

use crate::Error;

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"VBD1";
/// The frame layout version.
pub const FRAME_VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 24;
/// The most sectors one block request may move: 1 MiB.
pub const MAX_BLOCK_SECTORS: u32 = 2048;
/// The largest payload: a block write of [`MAX_BLOCK_SECTORS`] with its head, with room to
/// spare for a hypercall's memory image.
pub const MAX_PAYLOAD: usize = MAX_BLOCK_SECTORS as usize * 512 + 4096;
/// The largest encoded frame.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD;

/// The value the hypervisor writes to QEMU's `isa-debug-exit` port after a clean
/// [`FrameKind::Shutdown`]; QEMU then exits with status `(value << 1) | 1` = 33.
pub const SHUTDOWN_EXIT_VALUE: u8 = 0x10;
/// The value written on a fatal error (QEMU exits with 35).
pub const FAILURE_EXIT_VALUE: u8 = 0x11;

/// What a frame carries.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Both directions. Host → hypervisor: the first frame of every connection, with an
    /// empty payload and a sequence of the host's choosing (a non-empty payload is
    /// rejected with `EINVAL`). Hypervisor → host: a [`crate::wire::ReadyNotice`] naming
    /// the port's domain and [`crate::ABI_VERSION`], as the reply to the host's `Ready`
    /// (same sequence), and unprompted with sequence 0 when the hypervisor starts serving
    /// the port (at boot, and when dom0 destroys the port's domain). Bytes sent before a
    /// host connected are lost, which is why the host asks.
    Ready = 1,
    /// Host → hypervisor: [`crate::wire::HypercallRequest`] + guest memory image.
    HypercallRequest = 2,
    /// Hypervisor → host: [`crate::wire::HypercallResponse`] + the guest memory image from
    /// its start up to the last byte the call wrote; the caller's bytes beyond are as it
    /// sent them.
    HypercallResponse = 3,
    /// Host → hypervisor: [`crate::wire::BlockRequest`].
    BlockRead = 4,
    /// Host → hypervisor: [`crate::wire::BlockRequest`] + data.
    BlockWrite = 5,
    /// Hypervisor → host: [`crate::wire::BlockResponse`] (+ data for a read).
    BlockResponse = 6,
    /// Hypervisor → guest: [`crate::wire::ChangeNotice`].
    ChangeNotice = 7,
    /// Hypervisor → host: a frame was malformed; payload is a [`crate::wire::BlockResponse`]
    /// holding the errno. Sequence is the malformed frame's when its header was readable.
    Reject = 8,
    /// dom0 → hypervisor: print the summary line and power off (other ports: `EPERM`).
    /// Test harnesses end every run this way, so a run passes only on the agreed exit code
    /// and the summary line.
    Shutdown = 9,
}

impl TryFrom<u8> for FrameKind {
    type Error = FrameError;

    fn try_from(raw: u8) -> Result<Self, FrameError> {
        Ok(match raw {
            1 => FrameKind::Ready,
            2 => FrameKind::HypercallRequest,
            3 => FrameKind::HypercallResponse,
            4 => FrameKind::BlockRead,
            5 => FrameKind::BlockWrite,
            6 => FrameKind::BlockResponse,
            7 => FrameKind::ChangeNotice,
            8 => FrameKind::Reject,
            9 => FrameKind::Shutdown,
            _ => return Err(FrameError::UnknownKind),
        })
    }
}

/// Why bytes are not a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// More bytes are needed: at least this many in all from the frame's start.
    Truncated { needed: usize },
    /// The first four bytes are not [`MAGIC`].
    BadMagic,
    /// The header checksum does not match.
    BadHeaderChecksum,
    /// A version this codec does not speak.
    BadVersion,
    /// A kind this codec does not know.
    UnknownKind,
    /// The reserved header field is not zero.
    ReservedNotZero,
    /// `length` exceeds [`MAX_PAYLOAD`].
    TooLong,
    /// The payload checksum does not match.
    BadPayloadChecksum,
    /// The output buffer cannot hold the encoded frame.
    BufferTooSmall,
}

impl FrameError {
    /// The errno a peer is told about this malformed frame.
    pub const fn errno(self) -> Error {
        match self {
            FrameError::Truncated { .. } | FrameError::BufferTooSmall => Error::TooBig,
            FrameError::TooLong => Error::TooBig,
            FrameError::BadMagic
            | FrameError::BadHeaderChecksum
            | FrameError::BadPayloadChecksum
            | FrameError::ReservedNotZero => Error::InvalidArgument,
            FrameError::BadVersion | FrameError::UnknownKind => Error::NotImplemented,
        }
    }
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::Truncated { needed } => {
                write!(formatter, "truncated frame ({needed} bytes needed)")
            }
            FrameError::BadMagic => write!(formatter, "bad frame magic"),
            FrameError::BadHeaderChecksum => write!(formatter, "bad frame header checksum"),
            FrameError::BadVersion => write!(formatter, "unsupported frame version"),
            FrameError::UnknownKind => write!(formatter, "unknown frame kind"),
            FrameError::ReservedNotZero => write!(formatter, "reserved frame field not zero"),
            FrameError::TooLong => {
                write!(formatter, "frame payload longer than {MAX_PAYLOAD} bytes")
            }
            FrameError::BadPayloadChecksum => write!(formatter, "bad frame payload checksum"),
            FrameError::BufferTooSmall => write!(formatter, "buffer too small for frame"),
        }
    }
}

/// A parsed, checked header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub sequence: u32,
    /// Payload bytes; at most [`MAX_PAYLOAD`].
    pub length: u32,
    pub payload_crc: u32,
}

impl FrameHeader {
    /// The header of a frame carrying `payload` (given in parts, concatenated).
    pub fn for_payload(
        kind: FrameKind,
        sequence: u32,
        payload: &[&[u8]],
    ) -> Result<FrameHeader, FrameError> {
        let length: usize = payload.iter().map(|part| part.len()).sum();
        if length > MAX_PAYLOAD {
            return Err(FrameError::TooLong);
        }
        let mut crc = Crc32::new();
        for part in payload {
            crc.update(part);
        }
        Ok(FrameHeader {
            kind,
            sequence,
            length: length as u32,
            payload_crc: crc.finish(),
        })
    }

    /// The 24 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[0..4].copy_from_slice(&MAGIC);
        bytes[4] = FRAME_VERSION;
        bytes[5] = self.kind as u8;
        bytes[8..12].copy_from_slice(&self.sequence.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.length.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.payload_crc.to_le_bytes());
        let header_crc = Crc32::new().update(&bytes[..20]).finish();
        bytes[20..24].copy_from_slice(&header_crc.to_le_bytes());
        bytes
    }

    /// Check and parse header bytes.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<FrameHeader, FrameError> {
        if bytes[0..4] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        let field = |offset: usize| {
            u32::from_le_bytes([
                bytes[offset],
                bytes[offset + 1],
                bytes[offset + 2],
                bytes[offset + 3],
            ])
        };
        if Crc32::new().update(&bytes[..20]).finish() != field(20) {
            return Err(FrameError::BadHeaderChecksum);
        }
        if bytes[4] != FRAME_VERSION {
            return Err(FrameError::BadVersion);
        }
        let kind = FrameKind::try_from(bytes[5])?;
        if bytes[6] != 0 || bytes[7] != 0 {
            return Err(FrameError::ReservedNotZero);
        }
        let length = field(12);
        if length as usize > MAX_PAYLOAD {
            return Err(FrameError::TooLong);
        }
        Ok(FrameHeader {
            kind,
            sequence: field(8),
            length,
            payload_crc: field(16),
        })
    }

    /// Check a payload against this header.
    pub fn check_payload(&self, payload: &[u8]) -> Result<(), FrameError> {
        if payload.len() != self.length as usize {
            return Err(FrameError::Truncated {
                needed: HEADER_LEN + self.length as usize,
            });
        }
        if Crc32::new().update(payload).finish() != self.payload_crc {
            return Err(FrameError::BadPayloadChecksum);
        }
        Ok(())
    }
}

/// A decoded frame borrowing its payload from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: FrameKind,
    pub sequence: u32,
    pub payload: &'a [u8],
}

/// Encode a frame whose payload is the concatenation of `payload` into `out`; returns the
/// bytes written.
pub fn encode(
    kind: FrameKind,
    sequence: u32,
    payload: &[&[u8]],
    out: &mut [u8],
) -> Result<usize, FrameError> {
    let header = FrameHeader::for_payload(kind, sequence, payload)?;
    let total = HEADER_LEN + header.length as usize;
    let out = out.get_mut(..total).ok_or(FrameError::BufferTooSmall)?;
    out[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    let mut offset = HEADER_LEN;
    for part in payload {
        out[offset..offset + part.len()].copy_from_slice(part);
        offset += part.len();
    }
    Ok(total)
}

/// Decode the frame at the start of `input`; returns it and the bytes it used. On
/// `Truncated` read more and try again; on any other error drop [`resync`] bytes.
pub fn decode(input: &[u8]) -> Result<(Frame<'_>, usize), FrameError> {
    let Some(header_bytes) = input.first_chunk::<HEADER_LEN>() else {
        // Garbage is reported as soon as it is visible, not after a full header arrives.
        let seen = input.len().min(MAGIC.len());
        if input[..seen] != MAGIC[..seen] {
            return Err(FrameError::BadMagic);
        }
        return Err(FrameError::Truncated { needed: HEADER_LEN });
    };
    let header = FrameHeader::parse(header_bytes)?;
    let total = HEADER_LEN + header.length as usize;
    let Some(payload) = input.get(HEADER_LEN..total) else {
        return Err(FrameError::Truncated { needed: total });
    };
    header.check_payload(payload)?;
    Ok((
        Frame {
            kind: header.kind,
            sequence: header.sequence,
            payload,
        },
        total,
    ))
}

/// How many bytes to drop after a malformed frame at the start of `input`: up to the next
/// place the magic could start (possibly a partial magic at the very end), at least one.
pub fn resync(input: &[u8]) -> usize {
    (1..input.len())
        .find(|&start| {
            let candidate = &input[start..];
            let seen = candidate.len().min(MAGIC.len());
            candidate[..seen] == MAGIC[..seen]
        })
        .unwrap_or(input.len().max(1))
}

/// CRC-32 (IEEE 802.3, reflected, the zlib polynomial) with a table built at compile time.
#[derive(Clone, Copy, Debug)]
pub struct Crc32(u32);

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut index = 0;
    while index < 256 {
        let mut value = index as u32;
        let mut bit = 0;
        while bit < 8 {
            value = if value & 1 != 0 {
                (value >> 1) ^ 0xEDB8_8320
            } else {
                value >> 1
            };
            bit += 1;
        }
        table[index] = value;
        index += 1;
    }
    table
};

impl Crc32 {
    pub const fn new() -> Crc32 {
        Crc32(0xFFFF_FFFF)
    }

    pub fn update(&mut self, bytes: &[u8]) -> &mut Crc32 {
        for &byte in bytes {
            self.0 = CRC_TABLE[((self.0 ^ u32::from(byte)) & 0xFF) as usize] ^ (self.0 >> 8);
        }
        self
    }

    pub fn finish(&self) -> u32 {
        !self.0
    }
}

impl Default for Crc32 {
    fn default() -> Self {
        Crc32::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(kind: FrameKind, sequence: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_LEN + payload.len()];
        let written = encode(kind, sequence, &[payload], &mut out).unwrap();
        assert_eq!(written, out.len());
        out
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(Crc32::new().update(b"123456789").finish(), 0xCBF4_3926);
    }

    #[test]
    fn encode_decode_round_trip() {
        let bytes = frame(FrameKind::BlockWrite, 7, b"hello");
        let (decoded, used) = decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(
            decoded,
            Frame {
                kind: FrameKind::BlockWrite,
                sequence: 7,
                payload: b"hello"
            }
        );
        assert_eq!(&bytes[..4], b"VBD1");
    }

    #[test]
    fn payload_given_in_parts_equals_the_concatenation() {
        let mut out = vec![0u8; 64];
        let used = encode(
            FrameKind::HypercallRequest,
            1,
            &[b"ab", b"", b"cd"],
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..used], frame(FrameKind::HypercallRequest, 1, b"abcd"));
    }

    #[test]
    fn truncation_asks_for_more() {
        let bytes = frame(FrameKind::Ready, 1, b"payload");
        assert_eq!(
            decode(&bytes[..0]),
            Err(FrameError::Truncated { needed: HEADER_LEN })
        );
        assert_eq!(
            decode(&bytes[..3]),
            Err(FrameError::Truncated { needed: HEADER_LEN })
        );
        assert_eq!(
            decode(&bytes[..HEADER_LEN]),
            Err(FrameError::Truncated {
                needed: bytes.len()
            })
        );
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]),
            Err(FrameError::Truncated {
                needed: bytes.len()
            })
        );
    }

    #[test]
    fn each_malformation_has_its_own_error() {
        let good = frame(FrameKind::Ready, 1, b"xyz");
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert_eq!(decode(&bad_magic), Err(FrameError::BadMagic));
        assert_eq!(decode(b"XB"), Err(FrameError::BadMagic));

        let mut bad_header = good.clone();
        bad_header[13] ^= 1;
        assert_eq!(decode(&bad_header), Err(FrameError::BadHeaderChecksum));

        let mut bad_payload = good.clone();
        *bad_payload.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&bad_payload), Err(FrameError::BadPayloadChecksum));

        let reseal = |mut bytes: Vec<u8>| {
            let crc = Crc32::new().update(&bytes[..20]).finish();
            bytes[20..24].copy_from_slice(&crc.to_le_bytes());
            bytes
        };
        let mut version = good.clone();
        version[4] = 2;
        assert_eq!(decode(&reseal(version)), Err(FrameError::BadVersion));
        let mut kind = good.clone();
        kind[5] = 99;
        assert_eq!(decode(&reseal(kind)), Err(FrameError::UnknownKind));
        let mut reserved = good.clone();
        reserved[7] = 1;
        assert_eq!(decode(&reseal(reserved)), Err(FrameError::ReservedNotZero));
        let mut long = good.clone();
        long[12..16].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert_eq!(decode(&reseal(long)), Err(FrameError::TooLong));
    }

    #[test]
    fn encoding_refuses_small_buffers_and_huge_payloads() {
        let mut small = [0u8; HEADER_LEN + 2];
        assert_eq!(
            encode(FrameKind::Ready, 0, &[b"abc"], &mut small),
            Err(FrameError::BufferTooSmall)
        );
        let huge = vec![0u8; MAX_PAYLOAD + 1];
        let mut out = vec![0u8; MAX_FRAME + 1];
        assert_eq!(
            encode(FrameKind::Ready, 0, &[&huge], &mut out),
            Err(FrameError::TooLong)
        );
    }

    #[test]
    fn resync_finds_the_next_frame_after_garbage() {
        let mut stream = b"garbage VB".to_vec();
        stream.extend(frame(FrameKind::BlockRead, 9, b"req"));
        let mut offset = 0;
        let decoded = loop {
            match decode(&stream[offset..]) {
                Ok((frame, _)) => break frame,
                Err(FrameError::Truncated { .. }) => panic!("whole frame is present"),
                Err(_) => offset += resync(&stream[offset..]),
            }
        };
        assert_eq!(decoded.sequence, 9);
        assert_eq!(resync(b"xxVB"), 2);
        assert_eq!(resync(b"x"), 1);
        assert_eq!(resync(b""), 1);
    }

    /// Decode bytes the way the hypervisor's reader does: frames found in order, garbage
    /// skipped, and each burst followed by an idle timeout, after which a frame still
    /// incomplete is abandoned by resynchronising on what was buffered.
    fn decode_bursts(bursts: &[&[u8]]) -> Vec<(FrameKind, u32, Vec<u8>)> {
        let mut frames = Vec::new();
        let mut buffered = Vec::new();
        for burst in bursts {
            buffered.extend_from_slice(burst);
            let mut timed_out = false;
            while !buffered.is_empty() {
                match decode(&buffered) {
                    Ok((frame, used)) => {
                        frames.push((frame.kind, frame.sequence, frame.payload.to_vec()));
                        buffered.drain(..used);
                    }
                    // More may come; this sketch of the reader has no more, so it times out.
                    Err(FrameError::Truncated { .. }) if !timed_out => timed_out = true,
                    Err(_) => {
                        let skip = resync(&buffered);
                        buffered.drain(..skip);
                    }
                }
            }
        }
        frames
    }

    proptest! {
        #[test]
        fn frames_survive_surrounding_garbage(
            garbage_before in proptest::collection::vec(any::<u8>(), 0..64),
            payload in proptest::collection::vec(any::<u8>(), 0..256),
            sequence: u32,
        ) {
            let mut stream = garbage_before.clone();
            let good = frame(FrameKind::HypercallRequest, sequence, &payload);
            stream.extend(&good);
            let frames = decode_bursts(&[&stream]);
            // Garbage can only add frames if it contains a whole valid frame, which random
            // bytes with two CRCs practically never do; the real frame is always last.
            prop_assert_eq!(frames.last(), Some(&(FrameKind::HypercallRequest, sequence, payload)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_bursts(&[&bytes]);
        }

        #[test]
        fn a_frame_cut_short_by_a_disconnect_loses_only_itself(
            payload in proptest::collection::vec(any::<u8>(), 1..128),
            cut in 1usize..100,
        ) {
            // The host sends part of a frame and goes away; after the idle timeout a new
            // connection sends a good one. (Back to back in one burst, the good frame's first
            // bytes could complete the cut one with a matching CRC; the timeout is what
            // separates them.)
            let first = frame(FrameKind::BlockWrite, 1, &payload);
            let cut = cut.min(first.len() - 1);
            let next = frame(FrameKind::BlockRead, 2, b"next");
            let frames = decode_bursts(&[&first[..cut], &next]);
            prop_assert_eq!(frames, vec![(FrameKind::BlockRead, 2, b"next".to_vec())]);
        }
    }
}
