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
    /// A fast write-zeroes that could only be done by writing zeros.
    SlowZeroes,
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
            RequestError::SlowZeroes => ENOTSUP,
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

/// The one-line message of a structured error reply.
impl std::fmt::Display for RequestError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::UnknownFlags => formatter.write_str("a flag this command does not take"),
            RequestError::UnknownCommand => {
                formatter.write_str("a command this export does not offer")
            }
            RequestError::Malformed => {
                formatter.write_str("offset and length must be whole, non-zero sectors")
            }
            RequestError::TooLarge => formatter.write_str("longer than the maximum request"),
            RequestError::ReadOnly => formatter.write_str("the export is read-only"),
            RequestError::SlowZeroes => formatter.write_str("zeroing this range would write zeros"),
            RequestError::Refused(error) => write!(formatter, "{error}"),
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

/// What the handshake offered the client, which decides what its requests may ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offered {
    pub writable: bool,
    /// The longest read or write, in bytes.
    pub maximum_request: u32,
    /// Structured replies, and with them `NBD_CMD_FLAG_DF` on reads.
    pub structured_replies: bool,
    /// `base:allocation` was selected, so `NBD_CMD_BLOCK_STATUS` may be sent.
    pub block_status: bool,
}

/// What a checked request asks for. `NBD_CMD_DISC` is not among them: it ends the stream
/// and is the connection's business. `NBD_CMD_FLAG_FUA` is accepted on every command, as
/// the protocol requires once it is offered; it is the connection's business too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read {
        sector: u64,
        /// One data chunk, holes included (`NBD_CMD_FLAG_DF`).
        whole: bool,
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
        /// Fail rather than write zeros (`NBD_CMD_FLAG_FAST_ZERO`).
        fast: bool,
    },
    Cache {
        sector: u64,
        count: u64,
    },
    BlockStatus {
        sector: u64,
        count: u64,
        /// One extent is enough (`NBD_CMD_FLAG_REQ_ONE`).
        one: bool,
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

    /// The command, checked against what the export `offered`: whether it is writable,
    /// the longest transfer, and what the client negotiated.
    pub fn check(&self, offered: Offered) -> Result<Command, RequestError> {
        if self.writes() && !offered.writable {
            return Err(RequestError::ReadOnly);
        }
        match self.command {
            CMD_READ => {
                let dont_fragment = if offered.structured_replies {
                    CMD_FLAG_DF
                } else {
                    0
                };
                self.check_flags(dont_fragment)?;
                let (sector, _) = self.transfer_sectors(offered.maximum_request)?;
                Ok(Command::Read {
                    sector,
                    whole: self.flags & CMD_FLAG_DF != 0,
                })
            }
            CMD_WRITE => {
                self.check_flags(0)?;
                let (sector, _) = self.transfer_sectors(offered.maximum_request)?;
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
                self.check_flags(0)?;
                let (sector, count) = self.sectors()?;
                Ok(Command::Trim { sector, count })
            }
            CMD_WRITE_ZEROES => {
                self.check_flags(CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO)?;
                let (sector, count) = self.sectors()?;
                Ok(Command::WriteZeroes {
                    sector,
                    count,
                    may_unmap: self.flags & CMD_FLAG_NO_HOLE == 0,
                    fast: self.flags & CMD_FLAG_FAST_ZERO != 0,
                })
            }
            CMD_CACHE => {
                self.check_flags(0)?;
                let (sector, count) = self.sectors()?;
                Ok(Command::Cache { sector, count })
            }
            CMD_BLOCK_STATUS if offered.block_status => {
                self.check_flags(CMD_FLAG_REQ_ONE)?;
                let (sector, count) = self.sectors()?;
                Ok(Command::BlockStatus {
                    sector,
                    count,
                    one: self.flags & CMD_FLAG_REQ_ONE != 0,
                })
            }
            _ => Err(RequestError::UnknownCommand),
        }
    }

    /// Whether the command takes no flags but `allowed` and FUA, which every command takes.
    fn check_flags(&self, allowed: u16) -> Result<(), RequestError> {
        if self.flags & !(allowed | CMD_FLAG_FUA) != 0 {
            Err(RequestError::UnknownFlags)
        } else {
            Ok(())
        }
    }

    /// The whole sectors the request covers: `(first sector, count)`. Commands other than
    /// read and write move no data, so they may exceed the transfer limit.
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

    const PLAIN: Offered = Offered {
        writable: true,
        maximum_request: LIMIT,
        structured_replies: false,
        block_status: false,
    };
    const STRUCTURED: Offered = Offered {
        structured_replies: true,
        block_status: true,
        ..PLAIN
    };
    const READ_ONLY: Offered = Offered {
        writable: false,
        ..STRUCTURED
    };

    #[test]
    fn checked_commands_carry_whole_sectors() {
        assert_eq!(
            request(0, CMD_READ, 1024, 4096).check(READ_ONLY),
            Ok(Command::Read {
                sector: 2,
                whole: false
            })
        );
        assert_eq!(
            request(CMD_FLAG_DF, CMD_READ, 0, 512).check(STRUCTURED),
            Ok(Command::Read {
                sector: 0,
                whole: true
            })
        );
        assert_eq!(
            request(CMD_FLAG_FUA, CMD_WRITE, 512, LIMIT).check(PLAIN),
            Ok(Command::Write { sector: 1 })
        );
        assert_eq!(
            request(0, CMD_FLUSH, 0, 0).check(READ_ONLY),
            Ok(Command::Flush)
        );
        assert_eq!(
            request(0, CMD_TRIM, 512, LIMIT * 4).check(PLAIN),
            Ok(Command::Trim {
                sector: 1,
                count: u64::from(LIMIT * 4 / 512)
            })
        );
        assert_eq!(
            request(CMD_FLAG_NO_HOLE, CMD_WRITE_ZEROES, 0, 512).check(PLAIN),
            Ok(Command::WriteZeroes {
                sector: 0,
                count: 1,
                may_unmap: false,
                fast: false
            })
        );
        assert_eq!(
            request(CMD_FLAG_FAST_ZERO, CMD_WRITE_ZEROES, 0, 512).check(PLAIN),
            Ok(Command::WriteZeroes {
                sector: 0,
                count: 1,
                may_unmap: true,
                fast: true
            })
        );
        assert_eq!(
            request(0, CMD_CACHE, 512, LIMIT * 2).check(READ_ONLY),
            Ok(Command::Cache {
                sector: 1,
                count: u64::from(LIMIT * 2 / 512)
            })
        );
        assert_eq!(
            request(CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 0, LIMIT * 2).check(READ_ONLY),
            Ok(Command::BlockStatus {
                sector: 0,
                count: u64::from(LIMIT * 2 / 512),
                one: true
            })
        );
    }

    #[test]
    fn fua_is_accepted_on_every_command() {
        for command in [
            CMD_READ,
            CMD_WRITE,
            CMD_TRIM,
            CMD_WRITE_ZEROES,
            CMD_CACHE,
            CMD_BLOCK_STATUS,
        ] {
            assert_eq!(
                request(CMD_FLAG_FUA, command, 0, 512).check(STRUCTURED),
                request(0, command, 0, 512).check(STRUCTURED),
                "command {command}"
            );
        }
        assert_eq!(
            request(CMD_FLAG_FUA, CMD_FLUSH, 0, 0).check(STRUCTURED),
            Ok(Command::Flush)
        );
    }

    #[test]
    fn one_negative_test_per_error() {
        assert_eq!(
            request(CMD_FLAG_NO_HOLE, CMD_READ, 0, 512).check(STRUCTURED),
            Err(RequestError::UnknownFlags)
        );
        assert_eq!(
            request(CMD_FLAG_DF, CMD_READ, 0, 512).check(PLAIN),
            Err(RequestError::UnknownFlags),
            "don't-fragment needs structured replies"
        );
        assert_eq!(
            request(CMD_FLAG_FAST_ZERO, CMD_TRIM, 0, 512).check(STRUCTURED),
            Err(RequestError::UnknownFlags)
        );
        assert_eq!(
            request(0, 9, 0, 512).check(STRUCTURED),
            Err(RequestError::UnknownCommand)
        );
        assert_eq!(
            request(0, CMD_BLOCK_STATUS, 0, 512).check(PLAIN),
            Err(RequestError::UnknownCommand),
            "block status without a meta context"
        );
        assert_eq!(
            request(0, CMD_READ, 0, 500).check(PLAIN),
            Err(RequestError::Malformed)
        );
        assert_eq!(
            request(0, CMD_READ, 0, LIMIT + 512).check(PLAIN),
            Err(RequestError::TooLarge)
        );
        assert_eq!(
            request(0, CMD_WRITE_ZEROES, 0, 512).check(READ_ONLY),
            Err(RequestError::ReadOnly)
        );
        assert_eq!(RequestError::SlowZeroes.errno(true), ENOTSUP);
    }
}
