//! A connection's socket, read and written in batches: one receive takes in every request
//! the client has already sent, and the replies to them collect here until the next read
//! would go to the socket, when they leave together in one send.
//!
//! A pipelining client (fio at depth 32, nbdcopy) otherwise costs a receive for each header,
//! another for each write's data and a send for each reply. Replies never wait behind a
//! read that could block: whatever is pending is sent before the socket is asked for more,
//! so a client that waits for its replies before it sends again is answered. Once they
//! have left, the connection looks for the client's next request for a moment before it
//! blocks in the receive ([`crate::polling`]).

use std::io::{self, BufReader, BufWriter, IoSlice, Read, Write};
use std::os::unix::net::UnixStream;

use rustix::net::{recv, RecvFlags};

use crate::polling;

/// Bytes received at once: a depth-32 batch of 4 KiB writes with their headers.
const RECEIVE_BYTES: usize = 160 << 10;
/// Bytes of replies collected before they are sent anyway: a depth-32 batch of 4 KiB reads.
/// A larger reply goes straight from its buffer to the socket.
const SEND_BYTES: usize = 160 << 10;

/// Both directions of one connection's socket.
pub struct Batched<'a> {
    socket: &'a UnixStream,
    reader: BufReader<&'a UnixStream>,
    writer: BufWriter<&'a UnixStream>,
    /// Something was answered since the socket was last read: the client may be about to
    /// send more.
    answered: bool,
}

impl<'a> Batched<'a> {
    /// Batch `socket`, both ways.
    pub fn new(socket: &'a UnixStream) -> Batched<'a> {
        Batched {
            socket,
            reader: BufReader::with_capacity(RECEIVE_BYTES, socket),
            writer: BufWriter::with_capacity(SEND_BYTES, socket),
            answered: false,
        }
    }

    /// Whether the client has sent something not yet received (or closed, or failed: the
    /// receive then says what), without waiting for it.
    fn client_has_sent(&self) -> bool {
        let mut byte = [0u8; 1];
        !matches!(
            recv(
                self.socket,
                &mut byte,
                RecvFlags::PEEK | RecvFlags::DONTWAIT
            ),
            Err(rustix::io::Errno::AGAIN)
        )
    }
}

impl Read for Batched<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        // A `BufReader` goes to the socket only when it holds nothing: then, and only then,
        // the replies so far must leave first.
        if self.reader.buffer().is_empty() {
            self.writer.flush()?;
            if std::mem::take(&mut self.answered) {
                polling::look_for_more(|| self.client_has_sent());
            }
        }
        self.reader.read(buffer)
    }
}

impl Write for Batched<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.answered = true;
        self.writer.write(bytes)
    }

    fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        self.answered = true;
        self.writer.write_vectored(slices)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// Write every byte of `slices`, in order, in as few system calls as the stream allows:
/// a reply's header and its data in one `sendmsg`.
pub fn write_all_vectored(
    stream: &mut impl Write,
    mut slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match stream.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_wait_for_the_next_read_that_would_go_to_the_socket() {
        let (server, mut client) = UnixStream::pair().unwrap();
        client.write_all(b"onetwo").unwrap();
        let mut batched = Batched::new(&server);
        let mut first = [0u8; 3];
        batched.read_exact(&mut first).unwrap();
        batched.write_all(b"reply1").unwrap();
        let mut second = [0u8; 3];
        batched.read_exact(&mut second).unwrap();
        assert_eq!((&first, &second), (b"one", b"two"));
        batched.write_all(b"reply2").unwrap();
        client.set_nonblocking(true).unwrap();
        let mut nothing = [0u8; 16];
        assert_eq!(
            client.read(&mut nothing).map_err(|error| error.kind()),
            Err(io::ErrorKind::WouldBlock),
            "both requests came in one receive, so no reply has left yet"
        );
        client.set_nonblocking(false).unwrap();
        // The next read finds nothing received: the replies leave before it waits.
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                let mut third = [0u8; 5];
                batched.read_exact(&mut third).map(|()| third)
            });
            let mut replies = [0u8; 12];
            client.read_exact(&mut replies).unwrap();
            assert_eq!(&replies, b"reply1reply2");
            client.write_all(b"three").unwrap();
            assert_eq!(&reader.join().unwrap().unwrap(), b"three");
        });
    }

    #[test]
    fn a_vectored_write_sends_every_slice_in_order() {
        let mut sent = Vec::new();
        let data = vec![7u8; 100_000];
        let mut slices = [
            IoSlice::new(b"head"),
            IoSlice::new(&[]),
            IoSlice::new(&data),
        ];
        write_all_vectored(&mut sent, &mut slices).unwrap();
        assert_eq!(sent.len(), 100_004);
        assert_eq!(&sent[..4], b"head");
        assert!(sent[4..].iter().all(|&byte| byte == 7));
    }
}
