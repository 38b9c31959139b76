//! Reassembly of frames from one channel port's byte stream.
//!
//! A [`Receiver`] holds the bytes of at most one frame, starting at a place where a frame
//! could start. It asks for exactly the bytes the current frame still lacks, so a healthy
//! stream never needs its buffer shifted. Garbage and malformed headers cost one byte plus
//! whatever precedes the next magic ([`frame::resync`]); a payload with a bad checksum is
//! rejected and resynchronised within the bytes already buffered, because the next frame
//! may have started inside what was taken for its payload (a host that disconnected
//! mid-frame and reconnected). A partial frame left idle too long is abandoned the same way.

use shared_abi::frame::{self, FrameError, FrameHeader, HEADER_LEN, MAGIC, MAX_FRAME};

use crate::timer::Instant;

/// How long a partial frame may sit without a new byte before its sender counts as gone.
pub const IDLE_MILLISECONDS: u64 = 200;

/// What the buffered bytes amount to.
pub enum Step<'a> {
    /// Nothing to act on until more bytes arrive.
    NeedMore,
    /// A complete, checked frame. Its payload is the caller's to modify (a hypercall's
    /// memory image is updated in place); it is dropped on the next call.
    Frame {
        header: FrameHeader,
        payload: &'a mut [u8],
    },
    /// A frame whose header was sound but whose payload was not: tell the sender.
    Rejected { sequence: u32, error: FrameError },
}

pub struct Receiver {
    buffer: [u8; MAX_FRAME],
    /// Bytes held, from the start of `buffer`.
    filled: usize,
    /// Bytes of a frame already handed out by [`Receiver::step`], dropped on the next step.
    delivered: usize,
    /// When the last byte arrived, or when the hypervisor last came back from serving
    /// another port: time spent busy elsewhere is not the sender's idleness.
    last_activity: Option<Instant>,
    /// Bytes discarded as garbage since the last [`Receiver::take_discarded`].
    discarded: usize,
}

impl Receiver {
    pub const fn new() -> Receiver {
        Receiver {
            buffer: [0; MAX_FRAME],
            filled: 0,
            delivered: 0,
            last_activity: None,
            discarded: 0,
        }
    }

    /// How many bytes to read before [`Receiver::step`] can make progress: the rest of a
    /// header, or the rest of a frame. Never more, so a frame's successor stays in the UART.
    fn wanted(&self) -> usize {
        if self.delivered != 0 {
            return 0;
        }
        match self.header() {
            Some(Ok(header)) => (HEADER_LEN + header.length as usize).saturating_sub(self.filled),
            Some(Err(_)) => 0,
            None => HEADER_LEN - self.filled,
        }
    }

    /// Move up to `limit` of the [`Receiver::wanted`] bytes from `source` (which returns
    /// `None` when it has nothing right now) into the buffer; returns how many it moved.
    pub fn receive(&mut self, mut source: impl FnMut() -> Option<u8>, limit: usize) -> usize {
        let end = self.filled + self.wanted().min(limit);
        let start = self.filled;
        while self.filled < end {
            let Some(byte) = source() else { break };
            self.buffer[self.filled] = byte;
            self.filled += 1;
        }
        if self.filled != start {
            self.last_activity = Some(Instant::now());
        }
        self.filled - start
    }

    /// Restart the idle clock: the hypervisor was busy elsewhere and did not read.
    pub fn resume(&mut self, now: Instant) {
        if self.filled != 0 {
            self.last_activity = Some(now);
        }
    }

    /// Forget everything buffered: the peer behind this port was replaced.
    pub fn clear(&mut self) {
        self.filled = 0;
        self.delivered = 0;
        self.last_activity = None;
    }

    /// Garbage bytes dropped since the last call, for the console.
    pub fn take_discarded(&mut self) -> usize {
        core::mem::take(&mut self.discarded)
    }

    /// If a partial frame has waited longer than [`IDLE_MILLISECONDS`] for its next byte,
    /// drop it up to the next possible magic within it; returns whether it did.
    pub fn abandon_if_idle(&mut self) -> bool {
        let idle = self
            .last_activity
            .is_some_and(|since| since.elapsed_milliseconds() > IDLE_MILLISECONDS);
        if self.delivered != 0 || self.filled == 0 || !idle {
            return false;
        }
        let drop = frame::resync(&self.buffer[..self.filled]);
        self.drop_front(drop);
        true
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
                    if self.buffer[..seen] != MAGIC[..seen] {
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
            if self.filled < total {
                return Step::NeedMore;
            }
            let payload = &self.buffer[HEADER_LEN..total];
            if let Err(error) = header.check_payload(payload) {
                self.discard_to_next_magic();
                return Step::Rejected {
                    sequence: header.sequence,
                    error,
                };
            }
            self.delivered = total;
            return Step::Frame {
                header,
                payload: &mut self.buffer[HEADER_LEN..total],
            };
        }
    }

    /// The parsed header once all of its bytes are in.
    fn header(&self) -> Option<Result<FrameHeader, FrameError>> {
        let bytes = self.buffer.first_chunk::<HEADER_LEN>()?;
        (self.filled >= HEADER_LEN).then(|| FrameHeader::parse(bytes))
    }

    fn discard_to_next_magic(&mut self) {
        let drop = frame::resync(&self.buffer[..self.filled]);
        self.discarded += drop;
        self.drop_front(drop);
    }

    fn drop_front(&mut self, count: usize) {
        self.buffer.copy_within(count..self.filled, 0);
        self.filled -= count;
    }
}
