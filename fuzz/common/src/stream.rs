//! A byte stream as a client's socket delivers it: in pieces of the sizes the input chooses,
//! now and then interrupted by a signal, so the parsers' loops over short reads are driven.

use std::io::{self, Read};

/// `bytes`, handed over `sizes[0]`, `sizes[1]`, ... bytes at a time (cycling); a size of 0
/// is one `Interrupted` error before the next piece.
pub struct Trickle<'a> {
    bytes: &'a [u8],
    sizes: &'a [u8],
    turn: usize,
    interrupted: bool,
}

impl<'a> Trickle<'a> {
    pub fn new(bytes: &'a [u8], sizes: &'a [u8]) -> Trickle<'a> {
        Trickle {
            bytes,
            sizes,
            turn: 0,
            interrupted: false,
        }
    }

    /// The bytes not yet read.
    pub fn left(&self) -> usize {
        self.bytes.len()
    }
}

impl Read for Trickle<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let size = match self.sizes {
            [] => usize::MAX,
            sizes => usize::from(sizes[self.turn % sizes.len()]),
        };
        self.turn = self.turn.wrapping_add(1);
        // At most one interruption in a row, so a stream of zeroes still moves.
        if size == 0 && !self.interrupted {
            self.interrupted = true;
            return Err(io::ErrorKind::Interrupted.into());
        }
        self.interrupted = false;
        let count = size.max(1).min(buffer.len()).min(self.bytes.len());
        buffer[..count].copy_from_slice(&self.bytes[..count]);
        self.bytes = &self.bytes[count..];
        Ok(count)
    }
}
