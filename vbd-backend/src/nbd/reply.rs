//! Replies of the transmission phase: simple replies, or, once the client negotiated them,
//! structured reply chunks, where a read's holes go as hole chunks and an error carries a
//! message.

use std::io::{self, IoSlice, Write};

use super::allocation::Piece;
use super::batched::write_all_vectored;
use super::wire::*;

/// How one connection answers.
#[derive(Clone, Copy, Debug)]
pub struct Replies {
    pub structured: bool,
}

impl Replies {
    /// Success of a command without data.
    pub fn done(self, stream: &mut impl Write, handle: u64) -> io::Result<()> {
        if self.structured {
            chunk(stream, handle, REPLY_FLAG_DONE, REPLY_TYPE_NONE, &[], &[])
        } else {
            simple(stream, handle, 0, &[])
        }
    }

    /// Failure with `errno`; a structured reply also says `why`.
    pub fn error(
        self,
        stream: &mut impl Write,
        handle: u64,
        errno: u32,
        why: &str,
    ) -> io::Result<()> {
        if self.structured {
            let message = &why.as_bytes()[..why.len().min(4096)];
            let mut payload = Vec::with_capacity(6 + message.len());
            payload.put_u32(errno).put_u16(message.len() as u16);
            payload.extend_from_slice(message);
            chunk(
                stream,
                handle,
                REPLY_FLAG_DONE,
                REPLY_TYPE_ERROR,
                &payload,
                &[],
            )
        } else {
            simple(stream, handle, errno, &[])
        }
    }

    /// A read of `data` at byte `offset` of the export: its pieces as data and hole chunks,
    /// the last one marked done, or the whole of it in one reply.
    pub fn read(
        self,
        stream: &mut impl Write,
        handle: u64,
        offset: u64,
        data: &[u8],
        pieces: &[Piece],
    ) -> io::Result<()> {
        if !self.structured {
            return simple(stream, handle, 0, data);
        }
        let whole = [Piece {
            offset: 0,
            length: data.len(),
            hole: false,
        }];
        let pieces = if pieces.is_empty() { &whole } else { pieces };
        for (index, piece) in pieces.iter().enumerate() {
            let flags = if index + 1 == pieces.len() {
                REPLY_FLAG_DONE
            } else {
                0
            };
            let mut head = Vec::with_capacity(12);
            head.put_u64(offset + piece.offset as u64);
            if piece.hole {
                head.put_u32(piece.length as u32);
                chunk(stream, handle, flags, REPLY_TYPE_OFFSET_HOLE, &head, &[])?;
            } else {
                let bytes = &data[piece.offset..piece.offset + piece.length];
                chunk(stream, handle, flags, REPLY_TYPE_OFFSET_DATA, &head, bytes)?;
            }
        }
        Ok(())
    }

    /// Block status of metadata context `context`: one chunk of `(length, flags)`
    /// descriptors.
    pub fn block_status(
        self,
        stream: &mut impl Write,
        handle: u64,
        context: u32,
        descriptors: &[(u32, u32)],
    ) -> io::Result<()> {
        let mut payload = Vec::with_capacity(4 + 8 * descriptors.len());
        payload.put_u32(context);
        for &(length, flags) in descriptors {
            payload.put_u32(length).put_u32(flags);
        }
        chunk(
            stream,
            handle,
            REPLY_FLAG_DONE,
            REPLY_TYPE_BLOCK_STATUS,
            &payload,
            &[],
        )
    }
}

fn simple(stream: &mut impl Write, handle: u64, error: u32, data: &[u8]) -> io::Result<()> {
    let mut message = Vec::with_capacity(16);
    message
        .put_u32(SIMPLE_REPLY_MAGIC)
        .put_u32(error)
        .put_u64(handle);
    write_all_vectored(stream, &mut [IoSlice::new(&message), IoSlice::new(data)])
}

/// One structured chunk whose payload is `head` then `data` (kept apart so that a read's
/// data is written from its buffer, not copied), in one vectored write.
fn chunk(
    stream: &mut impl Write,
    handle: u64,
    flags: u16,
    kind: u16,
    head: &[u8],
    data: &[u8],
) -> io::Result<()> {
    let mut message = Vec::with_capacity(20 + head.len());
    message
        .put_u32(STRUCTURED_REPLY_MAGIC)
        .put_u16(flags)
        .put_u16(kind)
        .put_u64(handle)
        .put_u32((head.len() + data.len()) as u32);
    message.extend_from_slice(head);
    write_all_vectored(stream, &mut [IoSlice::new(&message), IoSlice::new(data)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_structured_read_sends_holes_as_hole_chunks_and_marks_the_last_done() {
        let data = [0, 0, 7, 7];
        let pieces = [
            Piece {
                offset: 0,
                length: 2,
                hole: true,
            },
            Piece {
                offset: 2,
                length: 2,
                hole: false,
            },
        ];
        let mut sent = Vec::new();
        Replies { structured: true }
            .read(&mut sent, 9, 1000, &data, &pieces)
            .unwrap();
        let mut expected = Vec::new();
        expected
            .put_u32(STRUCTURED_REPLY_MAGIC)
            .put_u16(0)
            .put_u16(REPLY_TYPE_OFFSET_HOLE)
            .put_u64(9)
            .put_u32(12)
            .put_u64(1000)
            .put_u32(2);
        expected
            .put_u32(STRUCTURED_REPLY_MAGIC)
            .put_u16(REPLY_FLAG_DONE)
            .put_u16(REPLY_TYPE_OFFSET_DATA)
            .put_u64(9)
            .put_u32(10)
            .put_u64(1002);
        expected.extend_from_slice(&[7, 7]);
        assert_eq!(sent, expected);

        let mut simple = Vec::new();
        Replies { structured: false }
            .read(&mut simple, 9, 1000, &data, &pieces)
            .unwrap();
        let mut expected = Vec::new();
        expected.put_u32(SIMPLE_REPLY_MAGIC).put_u32(0).put_u64(9);
        expected.extend_from_slice(&data);
        assert_eq!(simple, expected, "holes go as zeros in a simple reply");
    }

    #[test]
    fn errors_carry_their_message_when_structured() {
        let mut sent = Vec::new();
        Replies { structured: true }
            .error(&mut sent, 3, EINVAL, "no")
            .unwrap();
        let mut expected = Vec::new();
        expected
            .put_u32(STRUCTURED_REPLY_MAGIC)
            .put_u16(REPLY_FLAG_DONE)
            .put_u16(REPLY_TYPE_ERROR)
            .put_u64(3)
            .put_u32(8)
            .put_u32(EINVAL)
            .put_u16(2);
        expected.extend_from_slice(b"no");
        assert_eq!(sent, expected);
    }
}
