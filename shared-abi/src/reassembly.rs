//! Reassembly of frames ([`crate::frame`]) from a byte stream, for every reader of the
//! channel: the hypervisor's serial ports, the backend's control socket and the tools'
//! client. A [`Reassembler`] is a state machine over a buffer its caller supplies (no
//! allocation): the caller reads bytes into it, and [`Reassembler::step`] hands out
//! complete, checked frames, or typed rejections of frames whose header was sound.
//!
//! Garbage and malformed headers cost one byte plus whatever precedes the next magic
//! ([`frame::resync`]); garbage is dropped as soon as it is visible, not only once a whole
//! header has arrived. A payload that fails its checksum is rejected and resynchronised
//! within the bytes already buffered, because the next frame may have started inside what
//! was taken for its payload (a sender that disconnected mid-frame and reconnected).
//!
//! Readers that must not take a frame's successor (a UART whose bytes should stay in its
//! FIFO, a blocking socket read) fill [`Reassembler::space`], exactly what the current
//! frame still lacks; readers that take what comes fill [`Reassembler::spare`].

use crate::frame::{self, FrameError, FrameHeader, HEADER_LEN, MAGIC};

/// What the buffered bytes amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Nothing to act on until more bytes arrive.
    NeedMore,
    /// A complete, checked frame. Its payload is the caller's to modify (a hypercall's
    /// memory image is updated in place); it is dropped on the next step.
    Frame {
        header: FrameHeader,
        payload: &'a mut [u8],
    },
    /// A frame whose header was sound but whose payload was not (or which is longer than
    /// the buffer: [`FrameError::TooLong`]): tell the sender.
    Rejected { sequence: u32, error: FrameError },
}

/// The bytes of a stream from a place where a frame could start, in a buffer of the
/// caller's: at least [`HEADER_LEN`] bytes, and [`frame::MAX_FRAME`] to take every frame.
pub struct Reassembler<B> {
    buffer: B,
    /// Bytes held, from the start of `buffer`.
    filled: usize,
    /// Bytes of a frame already handed out by [`Reassembler::step`], dropped on the next.
    delivered: usize,
    /// Bytes discarded as garbage since the last [`Reassembler::take_discarded`].
    discarded: usize,
}

impl<B> Reassembler<B> {
    /// A reassembler holding nothing, over `buffer`.
    pub const fn new(buffer: B) -> Self {
        Reassembler {
            buffer,
            filled: 0,
            delivered: 0,
            discarded: 0,
        }
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Reassembler<B> {
    fn capacity(&self) -> usize {
        self.buffer.as_ref().len()
    }

    /// How many bytes [`Reassembler::step`] needs before it can make progress: the rest of
    /// a header, or the rest of a frame; zero when it has work to do already.
    pub fn wanted(&self) -> usize {
        if self.delivered != 0 {
            return 0;
        }
        match self.header() {
            Some(Ok(header)) => {
                let total = HEADER_LEN + header.length as usize;
                if total > self.capacity() {
                    return 0;
                }
                total.saturating_sub(self.filled)
            }
            Some(Err(_)) => 0,
            None => HEADER_LEN - self.filled,
        }
    }

    /// Where to read the [`Reassembler::wanted`] bytes, and no more; then
    /// [`Reassembler::commit`] what was read.
    pub fn space(&mut self) -> &mut [u8] {
        let end = (self.filled + self.wanted()).min(self.capacity());
        &mut self.buffer.as_mut()[self.filled..end]
    }

    /// Where to read as much as the buffer holds, frames after the current one included;
    /// then [`Reassembler::commit`] what was read.
    pub fn spare(&mut self) -> &mut [u8] {
        let filled = self.filled;
        &mut self.buffer.as_mut()[filled..]
    }

    /// Take `count` bytes written at the start of [`Reassembler::space`] or
    /// [`Reassembler::spare`] as received.
    pub fn commit(&mut self, count: usize) {
        self.filled = self.filled.saturating_add(count).min(self.capacity());
    }

    /// Bytes held that are not a frame already handed out.
    pub fn buffered(&self) -> usize {
        self.filled - self.delivered
    }

    /// Make what progress the buffered bytes allow. Bounded: every turn of the loop either
    /// returns or drops at least one byte.
    pub fn step(&mut self) -> Step<'_> {
        if self.delivered != 0 {
            let delivered = core::mem::take(&mut self.delivered);
            self.drop_front(delivered);
        }
        loop {
            if self.filled == 0 {
                return Step::NeedMore;
            }
            let header = match self.header() {
                None => {
                    let seen = self.filled.min(MAGIC.len());
                    if self.buffer.as_ref()[..seen] != MAGIC[..seen] {
                        self.discard_to_next_magic();
                        continue;
                    }
                    return Step::NeedMore;
                }
                Some(Err(_)) => {
                    self.discard_to_next_magic();
                    continue;
                }
                Some(Ok(header)) => header,
            };
            let total = HEADER_LEN + header.length as usize;
            if total > self.capacity() {
                self.discard_to_next_magic();
                return Step::Rejected {
                    sequence: header.sequence,
                    error: FrameError::TooLong,
                };
            }
            if self.filled < total {
                return Step::NeedMore;
            }
            if let Err(error) = header.check_payload(&self.buffer.as_ref()[HEADER_LEN..total]) {
                self.discard_to_next_magic();
                return Step::Rejected {
                    sequence: header.sequence,
                    error,
                };
            }
            self.delivered = total;
            return Step::Frame {
                header,
                payload: &mut self.buffer.as_mut()[HEADER_LEN..total],
            };
        }
    }

    /// Give up on a partial frame (its sender went quiet) up to the next possible magic
    /// within it; returns whether there was one. Not counted as garbage.
    pub fn abandon(&mut self) -> bool {
        if self.delivered != 0 || self.filled == 0 {
            return false;
        }
        let drop = frame::resync(&self.buffer.as_ref()[..self.filled]);
        self.drop_front(drop);
        true
    }

    /// Forget everything buffered: the sender was replaced.
    pub fn clear(&mut self) {
        self.filled = 0;
        self.delivered = 0;
    }

    /// Garbage bytes dropped since the last call, for a log line.
    pub fn take_discarded(&mut self) -> usize {
        core::mem::take(&mut self.discarded)
    }

    /// The parsed header once all of its bytes are in.
    fn header(&self) -> Option<Result<FrameHeader, FrameError>> {
        let bytes = self.buffer.as_ref().first_chunk::<HEADER_LEN>()?;
        (self.filled >= HEADER_LEN).then(|| FrameHeader::parse(bytes))
    }

    fn discard_to_next_magic(&mut self) {
        let drop = frame::resync(&self.buffer.as_ref()[..self.filled]);
        self.discarded += drop;
        self.drop_front(drop);
    }

    fn drop_front(&mut self, count: usize) {
        self.buffer.as_mut().copy_within(count..self.filled, 0);
        self.filled -= count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode, Crc32, FrameKind, MAX_FRAME, MAX_PAYLOAD};

    fn frame(kind: FrameKind, sequence: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_LEN + payload.len()];
        encode(kind, sequence, &[payload], &mut out).unwrap();
        out
    }

    /// What a step handed out, owned.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        NeedMore,
        Frame(FrameKind, u32, Vec<u8>),
        Rejected(u32, FrameError),
    }

    fn step<B: AsRef<[u8]> + AsMut<[u8]>>(frames: &mut Reassembler<B>) -> Seen {
        match frames.step() {
            Step::NeedMore => Seen::NeedMore,
            Step::Frame { header, payload } => {
                Seen::Frame(header.kind, header.sequence, payload.to_vec())
            }
            Step::Rejected { sequence, error } => Seen::Rejected(sequence, error),
        }
    }

    /// Feed `bytes` the way an exact reader does, at most `chunk` at a time into
    /// [`Reassembler::space`], and collect every step that was not `NeedMore`.
    fn read_exactly(frames: &mut Reassembler<Vec<u8>>, bytes: &[u8], chunk: usize) -> Vec<Seen> {
        let mut seen = Vec::new();
        let mut offset = 0;
        loop {
            match step(frames) {
                Seen::NeedMore => {}
                other => {
                    seen.push(other);
                    continue;
                }
            }
            if offset == bytes.len() {
                return seen;
            }
            let space = frames.space();
            let count = space.len().min(chunk).min(bytes.len() - offset);
            space[..count].copy_from_slice(&bytes[offset..offset + count]);
            frames.commit(count);
            offset += count;
        }
    }

    fn reassembler() -> Reassembler<Vec<u8>> {
        Reassembler::new(vec![0u8; MAX_FRAME])
    }

    #[test]
    fn garbage_before_a_frame_is_dropped_and_counted() {
        let mut stream = b"\x00\xffgarbage VB V".to_vec();
        let garbage = stream.len();
        stream.extend(frame(FrameKind::BlockRead, 9, b"req"));
        let mut frames = reassembler();
        assert_eq!(
            read_exactly(&mut frames, &stream, usize::MAX),
            [Seen::Frame(FrameKind::BlockRead, 9, b"req".to_vec())]
        );
        assert_eq!(frames.take_discarded(), garbage);
        assert_eq!(frames.take_discarded(), 0);
    }

    #[test]
    fn garbage_is_dropped_before_a_whole_header_arrives() {
        let mut frames = reassembler();
        frames.spare()[..3].copy_from_slice(b"VBx");
        frames.commit(3);
        assert_eq!(step(&mut frames), Seen::NeedMore);
        assert_eq!(frames.take_discarded(), 3);
        assert_eq!(frames.buffered(), 0);
    }

    #[test]
    fn a_frame_split_across_reads_is_whole_once_its_last_byte_is_in() {
        let bytes = frame(FrameKind::BlockWrite, 3, &[5u8; 100]);
        let mut frames = reassembler();
        assert_eq!(
            read_exactly(&mut frames, &bytes, 1),
            [Seen::Frame(FrameKind::BlockWrite, 3, vec![5u8; 100])]
        );
        assert_eq!(frames.take_discarded(), 0);
    }

    #[test]
    fn an_exact_reader_is_never_offered_room_past_the_current_frame() {
        let first = frame(FrameKind::BlockRead, 1, b"one");
        let mut frames = reassembler();
        assert_eq!(frames.wanted(), HEADER_LEN);
        assert_eq!(frames.space().len(), HEADER_LEN);
        frames.space()[..10].copy_from_slice(&first[..10]);
        frames.commit(10);
        assert_eq!(frames.space().len(), HEADER_LEN - 10);
        frames.space().copy_from_slice(&first[10..HEADER_LEN]);
        frames.commit(HEADER_LEN - 10);
        assert_eq!(frames.space().len(), 3, "the payload and nothing more");
        frames.space().copy_from_slice(&first[HEADER_LEN..]);
        frames.commit(3);
        assert_eq!(frames.space().len(), 0, "the frame is complete");
        assert_eq!(
            step(&mut frames),
            Seen::Frame(FrameKind::BlockRead, 1, b"one".to_vec())
        );
        assert_eq!(frames.space().len(), 0, "until the frame is let go");
        assert_eq!(step(&mut frames), Seen::NeedMore);
        assert_eq!(frames.space().len(), HEADER_LEN);
    }

    #[test]
    fn a_greedy_reader_gets_every_frame_of_one_read_in_order() {
        let mut stream = frame(FrameKind::Ready, 1, b"");
        stream.extend(frame(FrameKind::BlockResponse, 2, b"two"));
        stream.extend(&frame(FrameKind::BlockResponse, 3, b"three")[..10]);
        let mut frames = reassembler();
        frames.spare()[..stream.len()].copy_from_slice(&stream);
        frames.commit(stream.len());
        assert_eq!(step(&mut frames), Seen::Frame(FrameKind::Ready, 1, vec![]));
        assert_eq!(
            step(&mut frames),
            Seen::Frame(FrameKind::BlockResponse, 2, b"two".to_vec())
        );
        assert_eq!(step(&mut frames), Seen::NeedMore);
        assert_eq!(frames.buffered(), 10, "the third frame's start waits");
    }

    #[test]
    fn a_bad_payload_checksum_is_rejected_and_the_next_frame_found_inside_it() {
        // A sender cut off mid-frame, then a whole frame: the first header announces more
        // payload than came, so the second frame is taken for the rest of it.
        let cut = frame(FrameKind::BlockWrite, 1, &[7u8; 40]);
        let next = frame(FrameKind::BlockRead, 2, b"next");
        let mut stream = cut[..HEADER_LEN + 4].to_vec();
        stream.extend(&next);
        stream.extend(vec![0u8; 40 - 4 - next.len()]);
        let mut frames = reassembler();
        let seen = read_exactly(&mut frames, &stream, usize::MAX);
        assert_eq!(seen[0], Seen::Rejected(1, FrameError::BadPayloadChecksum));
        assert_eq!(
            seen[1],
            Seen::Frame(FrameKind::BlockRead, 2, b"next".to_vec())
        );
    }

    #[test]
    fn a_header_announcing_more_than_a_frame_may_hold_is_garbage() {
        let mut bytes = frame(FrameKind::BlockWrite, 1, b"abc");
        bytes[12..16].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        let crc = Crc32::new().update(&bytes[..20]).finish();
        bytes[20..24].copy_from_slice(&crc.to_le_bytes());
        bytes.extend(frame(FrameKind::BlockRead, 2, b"after"));
        let mut frames = reassembler();
        assert_eq!(
            read_exactly(&mut frames, &bytes, usize::MAX),
            [Seen::Frame(FrameKind::BlockRead, 2, b"after".to_vec())]
        );
        assert_eq!(frames.take_discarded(), HEADER_LEN + 3);
    }

    #[test]
    fn a_frame_longer_than_the_buffer_is_rejected_as_too_long() {
        let mut frames = Reassembler::new(vec![0u8; HEADER_LEN + 8]);
        let long = frame(FrameKind::BlockWrite, 4, &[1u8; 9]);
        frames.space().copy_from_slice(&long[..HEADER_LEN]);
        frames.commit(HEADER_LEN);
        assert_eq!(
            frames.wanted(),
            0,
            "nothing to read: the frame cannot be taken"
        );
        assert_eq!(step(&mut frames), Seen::Rejected(4, FrameError::TooLong));
        let fits = frame(FrameKind::BlockWrite, 5, &[1u8; 8]);
        let mut fitting = Reassembler::new(vec![0u8; HEADER_LEN + 8]);
        fitting.spare().copy_from_slice(&fits);
        fitting.commit(fits.len());
        assert_eq!(
            step(&mut fitting),
            Seen::Frame(FrameKind::BlockWrite, 5, vec![1u8; 8])
        );
    }

    #[test]
    fn a_corrupted_header_costs_only_its_frame() {
        let mut bad = frame(FrameKind::BlockRead, 1, b"first");
        bad[13] ^= 1;
        let mut stream = bad.clone();
        stream.extend(frame(FrameKind::BlockRead, 2, b"second"));
        let mut frames = reassembler();
        assert_eq!(
            read_exactly(&mut frames, &stream, 7),
            [Seen::Frame(FrameKind::BlockRead, 2, b"second".to_vec())]
        );
        assert_eq!(frames.take_discarded(), bad.len());
    }

    #[test]
    fn an_abandoned_partial_frame_resyncs_within_itself_and_clear_forgets_all() {
        let first = frame(FrameKind::BlockWrite, 1, &[3u8; 50]);
        let mut frames = reassembler();
        let partial = &first[..30];
        frames.spare()[..30].copy_from_slice(partial);
        frames.commit(30);
        assert_eq!(step(&mut frames), Seen::NeedMore);
        assert!(frames.abandon());
        assert_eq!(frames.buffered(), 0, "no other magic inside it");
        assert_eq!(frames.take_discarded(), 0, "abandoned, not garbage");
        assert!(!frames.abandon(), "nothing left to abandon");

        frames.spare()[..30].copy_from_slice(partial);
        frames.commit(30);
        frames.clear();
        assert_eq!(frames.buffered(), 0);
        let next = frame(FrameKind::BlockRead, 2, b"next");
        assert_eq!(
            read_exactly(&mut frames, &next, usize::MAX),
            [Seen::Frame(FrameKind::BlockRead, 2, b"next".to_vec())]
        );
    }

    #[test]
    fn commit_never_claims_more_than_the_buffer() {
        let mut frames = Reassembler::new([0u8; HEADER_LEN]);
        frames.commit(usize::MAX);
        assert_eq!(frames.buffered(), HEADER_LEN);
    }
}
