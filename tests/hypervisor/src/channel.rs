//! Reassembly of frames from one channel port's byte stream: shared-abi's [`Reassembler`]
//! over a buffer of one frame, fed from the UART, plus the idle clock that abandons a
//! partial frame whose sender went quiet (a host that disconnected mid-frame).
//!
//! The port reads only the bytes the current frame still lacks, so a frame's successor
//! stays in the UART and a healthy stream never needs its buffer shifted.

use shared_abi::frame::MAX_FRAME;
use shared_abi::reassembly::{Reassembler, Step};

use crate::timer::Instant;

/// How long a partial frame may sit without a new byte before its sender counts as gone.
pub const IDLE_MILLISECONDS: u64 = 200;

/// One port's frames as they arrive, and how long its sender has been quiet.
pub struct Receiver {
    frames: Reassembler<[u8; MAX_FRAME]>,
    /// When the last byte arrived, or when the hypervisor last came back from serving
    /// another port: time spent busy elsewhere is not the sender's idleness.
    last_activity: Option<Instant>,
}

impl Receiver {
    pub const fn new() -> Receiver {
        Receiver {
            frames: Reassembler::new([0; MAX_FRAME]),
            last_activity: None,
        }
    }

    /// Move up to `limit` of the bytes the current frame lacks from `source` (which
    /// returns `None` when it has nothing right now) into the buffer; returns how many.
    pub fn receive(&mut self, mut source: impl FnMut() -> Option<u8>, limit: usize) -> usize {
        let space = self.frames.space();
        let wanted = space.len().min(limit);
        let mut count = 0;
        while count < wanted {
            let Some(byte) = source() else { break };
            space[count] = byte;
            count += 1;
        }
        self.frames.commit(count);
        if count != 0 {
            self.last_activity = Some(Instant::now());
        }
        count
    }

    /// Restart the idle clock: the hypervisor was busy elsewhere and did not read.
    pub fn resume(&mut self, now: Instant) {
        if self.frames.buffered() != 0 {
            self.last_activity = Some(now);
        }
    }

    /// Forget everything buffered: the peer behind this port was replaced.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.last_activity = None;
    }

    /// Garbage bytes dropped since the last call, for the console.
    pub fn take_discarded(&mut self) -> usize {
        self.frames.take_discarded()
    }

    /// If a partial frame has waited longer than [`IDLE_MILLISECONDS`] for its next byte,
    /// drop it up to the next possible magic within it; returns whether it did.
    pub fn abandon_if_idle(&mut self) -> bool {
        let idle = self
            .last_activity
            .is_some_and(|since| since.elapsed_milliseconds() > IDLE_MILLISECONDS);
        idle && self.frames.abandon()
    }

    /// Make what progress the buffered bytes allow: a frame, a rejection, or nothing yet.
    pub fn step(&mut self) -> Step<'_> {
        self.frames.step()
    }
}
