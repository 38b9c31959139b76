//! One transmission-phase request, parsed and checked before any I/O: the 28-byte header
//! read off the stream, then the command, its flags, its alignment and its size checked
//! against what the export advertised. What the check accepts is a typed `Command` whose
//! sectors are whole and whose transfer is within the limit.

use std::io::{self, Read};

use shared_abi::{Error, SECTOR_SIZE};

use super::wire::*;

/// Bytes of a request header.
pub const HEADER_BYTES: usize = 28;

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// A flag the command does not take, or that was not advertised.
    UnknownFlags,
    /// A command this server does not offer.
    UnknownCommand,
    /// Offset or length not whole sectors, a zero length, or data on a command without.
    Malformed,
    /// Longer than the advertised maximum.
    TooLarge,
    /// A change to a read-only export.
    ReadOnly,
    /// The table refused the request (`ENOENT` once the VBD is gone), or the disk failed
    /// (`EIO`, logged where it happened).
    Refused(Error),
}

impl RequestError {
    /// The errno of the reply. Exhaustive, with no `_` arm: a new error needs a decision.
    pub fn errno(&self, writes: bool) -> u32 {
        match self {
            RequestError::UnknownFlags
            | RequestError::UnknownCommand
            | RequestError::Malformed
            | RequestError::TooLarge => EINVAL,
            RequestError::ReadOnly => EPERM,
            RequestError::Refused(error) => match error {
                Error::ReadOnly | Error::PermissionDenied | Error::AccessDenied => EPERM,
                // Past the end: the protocol asks for ENOSPC on writes, EINVAL otherwise.
                Error::OutOfRange if writes => ENOSPC,
                Error::OutOfRange | Error::InvalidArgument | Error::TooBig => EINVAL,
                Error::NotFound
                | Error::NoDevice
                | Error::Io
                | Error::BadAddress
                | Error::Busy
                | Error::AlreadyExists
                | Error::NoSpace
                | Error::NotImplemented
                | Error::Stale => EIO,
            },
        }
    }
}

impl From<Error> for RequestError {
    fn from(error: Error) -> RequestError {
        RequestError::Refused(error)
    }
}

/// One request header, as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

/// What a checked request asks for. `NBD_CMD_DISC` is not among them: it ends the stream
/// and is the connection's business.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read {
        sector: u64,
    },
    Write {
        sector: u64,
    },
    Flush,
    Trim {
        sector: u64,
        count: u64,
    },
    WriteZeroes {
        sector: u64,
        count: u64,
        may_unmap: bool,
    },
}

impl Request {
    /// Read the next header; `None` at a clean end of the stream between requests (the
    /// client leaving without `NBD_CMD_DISC`).
    pub fn read(stream: &mut impl Read) -> io::Result<Option<Request>> {
        let mut header = [0u8; HEADER_BYTES];
        let mut filled = 0;
        while filled < header.len() {
            match stream.read(&mut header[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(count) => filled += count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Request::decode(&header).map(Some)
    }

    /// The fields of a header; a bad magic is an error, since the stream cannot be trusted
    /// to be in step any more.
    pub fn decode(header: &[u8; HEADER_BYTES]) -> io::Result<Request> {
        let u16_at = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
        let u32_at = |at: usize| {
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(&header[at..at + 4]);
            u32::from_be_bytes(bytes)
        };
        let u64_at = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&header[at..at + 8]);
            u64::from_be_bytes(bytes)
        };
        if u32_at(0) != REQUEST_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad request magic",
            ));
        }
        Ok(Request {
            flags: u16_at(4),
            command: u16_at(6),
            handle: u64_at(8),
            offset: u64_at(16),
            length: u32_at(24),
        })
    }

    /// Whether the request changes the export's bytes.
    pub fn writes(&self) -> bool {
        matches!(self.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES)
    }

    /// The command, checked against what the export advertised: whether it is writable,
    /// and the longest transfer (`maximum_request` bytes).
    pub fn check(&self, writable: bool, maximum_request: u32) -> Result<Command, RequestError> {
        if self.writes() && !writable {
            return Err(RequestError::ReadOnly);
        }
        match self.command {
            CMD_READ => {
                self.check_flags(0)?;
                let (sector, _) = self.transfer_sectors(maximum_request)?;
                Ok(Command::Read { sector })
            }
            CMD_WRITE => {
                self.check_flags(CMD_FLAG_FUA)?;
                let (sector, _) = self.transfer_sectors(maximum_request)?;
                Ok(Command::Write { sector })
            }
            CMD_FLUSH => {
                self.check_flags(0)?;
                if self.offset != 0 || self.length != 0 {
                    return Err(RequestError::Malformed);
                }
                Ok(Command::Flush)
            }
            CMD_TRIM => {
                self.check_flags(CMD_FLAG_FUA)?;
                let (sector, count) = self.sectors()?;
                Ok(Command::Trim { sector, count })
            }
            CMD_WRITE_ZEROES => {
                self.check_flags(CMD_FLAG_FUA | CMD_FLAG_NO_HOLE)?;
                let (sector, count) = self.sectors()?;
                Ok(Command::WriteZeroes {
                    sector,
                    count,
                    may_unmap: self.flags & CMD_FLAG_NO_HOLE == 0,
                })
            }
            _ => Err(RequestError::UnknownCommand),
        }
    }

    fn check_flags(&self, allowed: u16) -> Result<(), RequestError> {
        if self.flags & !allowed != 0 {
            Err(RequestError::UnknownFlags)
        } else {
            Ok(())
        }
    }

    /// The whole sectors the request covers: `(first sector, count)`. Trim and
    /// write-zeroes carry no data, so they may exceed the transfer limit.
    fn sectors(&self) -> Result<(u64, u64), RequestError> {
        let length = u64::from(self.length);
        if length == 0 || length % SECTOR_SIZE != 0 || !self.offset.is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::Malformed);
        }
        Ok((self.offset / SECTOR_SIZE, length / SECTOR_SIZE))
    }

    /// The sectors of a read or a write, whose data must fit the advertised maximum.
    fn transfer_sectors(&self, maximum_request: u32) -> Result<(u64, u64), RequestError> {
        let sectors = self.sectors()?;
        if self.length > maximum_request {
            return Err(RequestError::TooLarge);
        }
        Ok(sectors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u32 = 1 << 20;

    fn header(flags: u16, command: u16, offset: u64, length: u32) -> Vec<u8> {
        let mut header = Vec::new();
        header
            .put_u32(REQUEST_MAGIC)
            .put_u16(flags)
            .put_u16(command)
            .put_u64(0x1122_3344_5566_7788)
            .put_u64(offset)
            .put_u32(length);
        header
    }

    fn request(flags: u16, command: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            command,
            handle: 0x1122_3344_5566_7788,
            offset,
            length,
        }
    }

    #[test]
    fn a_header_is_read_whole_or_not_at_all() {
        let bytes = header(CMD_FLAG_FUA, CMD_WRITE, 4096, 512);
        assert_eq!(
            Request::read(&mut &bytes[..]).unwrap(),
            Some(request(CMD_FLAG_FUA, CMD_WRITE, 4096, 512))
        );
        assert_eq!(Request::read(&mut &[][..]).unwrap(), None);
        assert_eq!(
            Request::read(&mut &bytes[..27]).map_err(|error| error.kind()),
            Err(io::ErrorKind::UnexpectedEof)
        );
        let mut bad_magic = bytes;
        bad_magic[0] ^= 1;
        assert_eq!(
            Request::read(&mut &bad_magic[..]).map_err(|error| error.kind()),
            Err(io::ErrorKind::InvalidData)
        );
    }

    #[test]
    fn checked_commands_carry_whole_sectors() {
        assert_eq!(
            request(0, CMD_READ, 1024, 4096).check(false, LIMIT),
            Ok(Command::Read { sector: 2 })
        );
        assert_eq!(
            request(CMD_FLAG_FUA, CMD_WRITE, 512, LIMIT).check(true, LIMIT),
            Ok(Command::Write { sector: 1 })
        );
        assert_eq!(
            request(0, CMD_FLUSH, 0, 0).check(false, LIMIT),
            Ok(Command::Flush)
        );
        assert_eq!(
            request(0, CMD_TRIM, 512, LIMIT * 4).check(true, LIMIT),
            Ok(Command::Trim {
                sector: 1,
                count: u64::from(LIMIT * 4 / 512)
            })
        );
        assert_eq!(
            request(CMD_FLAG_NO_HOLE, CMD_WRITE_ZEROES, 0, 512).check(true, LIMIT),
            Ok(Command::WriteZeroes {
                sector: 0,
                count: 1,
                may_unmap: false
            })
        );
    }

    #[test]
    fn one_negative_test_per_error() {
        assert_eq!(
            request(CMD_FLAG_FUA, CMD_READ, 0, 512).check(true, LIMIT),
            Err(RequestError::UnknownFlags)
        );
        assert_eq!(
            request(0, 5, 0, 512).check(true, LIMIT),
            Err(RequestError::UnknownCommand)
        );
        assert_eq!(
            request(0, CMD_READ, 0, 500).check(true, LIMIT),
            Err(RequestError::Malformed)
        );
        assert_eq!(
            request(0, CMD_READ, 0, LIMIT + 512).check(true, LIMIT),
            Err(RequestError::TooLarge)
        );
        assert_eq!(
            request(0, CMD_WRITE_ZEROES, 0, 512).check(false, LIMIT),
            Err(RequestError::ReadOnly)
        );
    }
}
