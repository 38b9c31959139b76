//! NBD as a hostile client speaks it: option messages and request headers described field
//! by field, most of them well formed, encoded into the bytes a client sends and handed to
//! the backend's parsers in pieces (`Trickle`), as a socket would.
//!
//! While the stream is in step, what the parsers read must be exactly what was sent; once
//! a message lies about its length, only the bounds are checked. Every request the check
//! accepts must be one the export may run: whole sectors, within the advertised maximum,
//! a change only to a writable export, and only the flags its command takes.

use arbitrary::Arbitrary;
use serde::{Deserialize, Serialize};
use shared_abi::SECTOR_SIZE;
use std::io;
use vbd_backend::nbd::options::{parse_info_request, read_option, ClientOption, MAX_OPTION_DATA};
use vbd_backend::nbd::request::{Command, Offered, Request, RequestError, HEADER_BYTES};
use vbd_backend::nbd::wire::*;

use crate::stream::Trickle;
use crate::Mostly;

/// What a client sends while haggling.
#[derive(Arbitrary, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OptionInput {
    pub options: Vec<OptionMessage>,
    /// The sizes the stream is read in (see `Trickle`).
    pub pieces: Vec<u8>,
    /// Bytes cut off the end of the stream, as by a client that goes away.
    pub cut: u8,
}

#[derive(Arbitrary, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OptionMessage {
    pub wrong_magic: Mostly<u64>,
    pub option: OptionKind,
    pub data: OptionData,
    /// The length sent: the data's own, or a lie.
    pub declared_length: Mostly<Lie>,
}

/// A length other than the true one: less or more by some, or any.
#[derive(Arbitrary, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lie {
    Less(u8),
    More(u8),
    Any(u32),
}

impl Mostly<Lie> {
    fn of(self, actual: usize) -> u32 {
        match self.0 {
            None => actual as u32,
            Some(Lie::Less(by)) => actual.saturating_sub(usize::from(by)) as u32,
            Some(Lie::More(by)) => (actual + usize::from(by)) as u32,
            Some(Lie::Any(length)) => length,
        }
    }

    fn is_true(self, actual: usize) -> bool {
        self.of(actual) as usize == actual
    }
}

#[derive(Arbitrary, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionKind {
    ExportName,
    Abort,
    List,
    Info,
    Go,
    StructuredReply,
    Other(u32),
}

#[derive(Arbitrary, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum OptionData {
    /// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`, with the lengths sent.
    Information {
        name: Vec<u8>,
        items: Vec<u16>,
        name_length: Mostly<Lie>,
        count: Mostly<Lie>,
    },
    Raw(Vec<u8>),
}

impl OptionKind {
    fn value(self) -> u32 {
        match self {
            OptionKind::ExportName => OPT_EXPORT_NAME,
            OptionKind::Abort => OPT_ABORT,
            OptionKind::List => OPT_LIST,
            OptionKind::Info => OPT_INFO,
            OptionKind::Go => OPT_GO,
            OptionKind::StructuredReply => OPT_STRUCTURED_REPLY,
            OptionKind::Other(value) => value,
        }
    }
}

impl OptionData {
    fn bytes(&self) -> Vec<u8> {
        match self {
            OptionData::Information {
                name,
                items,
                name_length,
                count,
            } => {
                let mut data = Vec::new();
                data.put_u32(name_length.of(name.len()));
                data.extend_from_slice(name);
                data.put_u16(count.of(items.len()) as u16);
                for &item in items {
                    data.put_u16(item);
                }
                data
            }
            OptionData::Raw(data) => data.clone(),
        }
    }

    /// The name and items, when the lengths sent are the true ones.
    fn honest(&self) -> Option<(&[u8], &[u16])> {
        match self {
            OptionData::Information {
                name,
                items,
                name_length,
                count,
            } if name_length.is_true(name.len())
                && count.is_true(items.len())
                && items.len() <= usize::from(u16::MAX) =>
            {
                Some((name, items))
            }
            _ => None,
        }
    }
}

/// Read `input`'s stream option by option, as the handshake does, and check each.
pub fn drive_options(input: &OptionInput) {
    let mut sent = Vec::new();
    for message in &input.options {
        let data = message.data.bytes();
        sent.put_u64(message.wrong_magic.0.unwrap_or(IHAVEOPT))
            .put_u32(message.option.value())
            .put_u32(message.declared_length.of(data.len()));
        sent.extend_from_slice(&data);
    }
    sent.truncate(sent.len().saturating_sub(usize::from(input.cut)));
    let mut stream = Trickle::new(&sent, &input.pieces);
    // Each option read takes at least its 16 bytes of header.
    let mut in_step = true;
    for index in 0..=sent.len() / 16 {
        let message = input.options.get(index).filter(|_| in_step);
        let before = stream.left();
        match read_option(&mut stream) {
            Ok(Some(ClientOption { option, data })) => {
                assert!(data.len() <= MAX_OPTION_DATA as usize);
                assert_eq!(before - stream.left(), 16 + data.len());
                check_information(option, &data);
                if let Some(message) = message {
                    assert!(message.wrong_magic.0.is_none_or(|magic| magic == IHAVEOPT));
                    assert_eq!(option, message.option.value());
                    let sent_data = message.data.bytes();
                    if message.declared_length.is_true(sent_data.len()) {
                        assert_eq!(data, sent_data);
                        if matches!(option, OPT_INFO | OPT_GO) {
                            if let Some((name, items)) = message.data.honest() {
                                assert_eq!(parse_info_request(&data), Some((name, items.to_vec())));
                            }
                        }
                    } else {
                        in_step = false;
                    }
                }
            }
            Ok(None) => {
                if let Some(message) = message {
                    let declared = message.declared_length.of(message.data.bytes().len());
                    assert!(
                        message.wrong_magic.0.is_some_and(|magic| magic != IHAVEOPT)
                            || declared > MAX_OPTION_DATA
                    );
                }
                return;
            }
            Err(error) => {
                assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
                return;
            }
        }
    }
    panic!("more options read than the stream holds");
}

/// Information requests that parse are exactly what their lengths say.
fn check_information(option: u32, data: &[u8]) {
    if !matches!(option, OPT_INFO | OPT_GO) {
        return;
    }
    if let Some((name, items)) = parse_info_request(data) {
        let mut again = Vec::new();
        again.put_u32(name.len() as u32);
        again.extend_from_slice(name);
        again.put_u16(items.len() as u16);
        for item in items {
            again.put_u16(item);
        }
        assert_eq!(again, data);
    }
}

/// What a client sends once the export is chosen.
#[derive(Arbitrary, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RequestInput {
    pub writable: bool,
    /// The advertised maximum transfer, in sectors.
    pub maximum_sectors: u16,
    pub requests: Vec<RequestHeader>,
    pub pieces: Vec<u8>,
    pub cut: u8,
}

#[derive(Arbitrary, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    pub wrong_magic: Mostly<u32>,
    pub flags: Flags,
    pub command: CommandKind,
    pub handle: u64,
    pub offset: Offset,
    pub length: Length,
}

#[derive(Arbitrary, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flags {
    /// Any of FUA and NO_HOLE.
    Known {
        fua: bool,
        no_hole: bool,
    },
    Any(u16),
}

#[derive(Arbitrary, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    Read,
    Write,
    Disconnect,
    Flush,
    Trim,
    WriteZeroes,
    Other(u16),
}

#[derive(Arbitrary, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offset {
    Sectors(u32),
    Bytes(u64),
}

#[derive(Arbitrary, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    Sectors(u16),
    Bytes(u32),
}

impl RequestHeader {
    /// The header as decoded, if the magic is right.
    fn fields(&self) -> Request {
        Request {
            flags: match self.flags {
                Flags::Known { fua, no_hole } => {
                    (if fua { CMD_FLAG_FUA } else { 0 })
                        | (if no_hole { CMD_FLAG_NO_HOLE } else { 0 })
                }
                Flags::Any(flags) => flags,
            },
            command: match self.command {
                CommandKind::Read => CMD_READ,
                CommandKind::Write => CMD_WRITE,
                CommandKind::Disconnect => CMD_DISC,
                CommandKind::Flush => CMD_FLUSH,
                CommandKind::Trim => CMD_TRIM,
                CommandKind::WriteZeroes => CMD_WRITE_ZEROES,
                CommandKind::Other(command) => command,
            },
            handle: self.handle,
            offset: match self.offset {
                Offset::Sectors(sectors) => u64::from(sectors) * SECTOR_SIZE,
                Offset::Bytes(bytes) => bytes,
            },
            length: match self.length {
                Length::Sectors(sectors) => u32::from(sectors) * SECTOR_SIZE as u32,
                Length::Bytes(bytes) => bytes,
            },
        }
    }
}

/// Read `input`'s stream header by header, as the transmission phase does, and check each
/// header and what its check accepts.
pub fn drive_requests(input: &RequestInput) {
    let mut sent = Vec::new();
    for header in &input.requests {
        let fields = header.fields();
        sent.put_u32(header.wrong_magic.0.unwrap_or(REQUEST_MAGIC))
            .put_u16(fields.flags)
            .put_u16(fields.command)
            .put_u64(fields.handle)
            .put_u64(fields.offset)
            .put_u32(fields.length);
    }
    sent.truncate(sent.len().saturating_sub(usize::from(input.cut)));
    let maximum = u32::from(input.maximum_sectors) * SECTOR_SIZE as u32;
    let mut stream = Trickle::new(&sent, &input.pieces);
    for header in input
        .requests
        .iter()
        .take(sent.len().div_ceil(HEADER_BYTES) + 1)
    {
        let whole = stream.left() >= HEADER_BYTES;
        let bad_magic = header
            .wrong_magic
            .0
            .is_some_and(|magic| magic != REQUEST_MAGIC);
        match Request::read(&mut stream) {
            Ok(Some(request)) => {
                assert!(whole && !bad_magic);
                assert_eq!(request, header.fields());
                check_command(&request, input.writable, maximum);
            }
            Ok(None) => {
                assert_eq!(sent.len() % HEADER_BYTES, 0, "a cut header read as the end");
                return;
            }
            Err(error) if whole => {
                assert!(bad_magic);
                assert_eq!(error.kind(), io::ErrorKind::InvalidData);
                return;
            }
            Err(error) => {
                assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
                return;
            }
        }
    }
    assert_eq!(
        Request::read(&mut stream).ok(),
        Some(None),
        "the stream ends between headers"
    );
}

fn check_command(request: &Request, writable: bool, maximum: u32) {
    let whole = |length: u32| {
        length > 0
            && u64::from(length).is_multiple_of(SECTOR_SIZE)
            && request.offset.is_multiple_of(SECTOR_SIZE)
    };
    // FUA is taken by every command.
    let flags_within = |allowed: u16| request.flags & !(allowed | CMD_FLAG_FUA) == 0;
    // The fullest negotiation: structured replies and block status, so every flag and
    // command is reachable.
    let offered = Offered {
        writable,
        maximum_request: maximum,
        structured_replies: true,
        block_status: true,
    };
    match request.check(offered) {
        Ok(Command::Read {
            sector,
            whole: dont_fragment,
        }) => {
            assert_eq!(request.command, CMD_READ);
            assert!(whole(request.length) && request.length <= maximum);
            assert!(flags_within(CMD_FLAG_DF));
            assert_eq!(dont_fragment, request.flags & CMD_FLAG_DF != 0);
            assert_eq!(sector * SECTOR_SIZE, request.offset);
        }
        Ok(Command::Write { sector }) => {
            assert_eq!(request.command, CMD_WRITE);
            assert!(writable && whole(request.length) && request.length <= maximum);
            assert!(flags_within(0));
            assert_eq!(sector * SECTOR_SIZE, request.offset);
        }
        Ok(Command::Flush) => {
            assert_eq!(request.command, CMD_FLUSH);
            assert!(request.offset == 0 && request.length == 0 && flags_within(0));
        }
        Ok(Command::Cache { sector, count }) => {
            assert_eq!(request.command, CMD_CACHE);
            assert!(whole(request.length) && flags_within(0));
            assert_eq!(
                (sector * SECTOR_SIZE, count * SECTOR_SIZE),
                (request.offset, u64::from(request.length))
            );
        }
        Ok(Command::BlockStatus { sector, count, one }) => {
            assert_eq!(request.command, CMD_BLOCK_STATUS);
            assert!(whole(request.length) && flags_within(CMD_FLAG_REQ_ONE));
            assert_eq!(one, request.flags & CMD_FLAG_REQ_ONE != 0);
            assert_eq!(
                (sector * SECTOR_SIZE, count * SECTOR_SIZE),
                (request.offset, u64::from(request.length))
            );
        }
        Ok(Command::Trim { sector, count }) => {
            assert_eq!(request.command, CMD_TRIM);
            assert!(writable && whole(request.length) && flags_within(0));
            assert_eq!(
                (sector * SECTOR_SIZE, count * SECTOR_SIZE),
                (request.offset, u64::from(request.length))
            );
        }
        Ok(Command::WriteZeroes {
            sector,
            count,
            may_unmap,
            fast,
        }) => {
            assert_eq!(request.command, CMD_WRITE_ZEROES);
            assert!(writable && whole(request.length));
            assert!(flags_within(CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO));
            assert_eq!(may_unmap, request.flags & CMD_FLAG_NO_HOLE == 0);
            assert_eq!(fast, request.flags & CMD_FLAG_FAST_ZERO != 0);
            assert_eq!(
                (sector * SECTOR_SIZE, count * SECTOR_SIZE),
                (request.offset, u64::from(request.length))
            );
        }
        Err(error) => {
            assert_ne!(error.errno(request.writes()), 0);
            if error == RequestError::ReadOnly {
                assert!(!writable && request.writes());
            }
            if error == RequestError::UnknownCommand {
                assert!(!matches!(
                    request.command,
                    CMD_READ
                        | CMD_WRITE
                        | CMD_FLUSH
                        | CMD_TRIM
                        | CMD_CACHE
                        | CMD_WRITE_ZEROES
                        | CMD_BLOCK_STATUS
                ));
            }
        }
    }
}

/// The option seeds: every option the server knows, well formed, then the ways a client
/// breaks the protocol.
pub fn option_seeds() -> Vec<(&'static str, OptionInput)> {
    let message = |option, data| OptionMessage {
        wrong_magic: Mostly(None),
        option,
        data,
        declared_length: Mostly(None),
    };
    let information = |name: &[u8], items: &[u16]| OptionData::Information {
        name: name.to_vec(),
        items: items.to_vec(),
        name_length: Mostly(None),
        count: Mostly(None),
    };
    let stream = |options: Vec<OptionMessage>, pieces: &[u8], cut| OptionInput {
        options,
        pieces: pieces.to_vec(),
        cut,
    };
    let raw = |bytes: &[u8]| OptionData::Raw(bytes.to_vec());
    vec![
        (
            "haggling_then_go",
            stream(
                vec![
                    message(OptionKind::StructuredReply, raw(b"")),
                    message(OptionKind::List, raw(b"")),
                    message(OptionKind::Info, information(b"xvda", &[INFO_NAME])),
                    message(
                        OptionKind::Go,
                        information(b"xvda", &[INFO_BLOCK_SIZE, INFO_NAME]),
                    ),
                ],
                &[],
                0,
            ),
        ),
        (
            "export_name_in_pieces",
            stream(
                vec![message(OptionKind::ExportName, raw(b"xvda"))],
                &[1, 0, 3, 7],
                0,
            ),
        ),
        (
            "abort",
            stream(vec![message(OptionKind::Abort, raw(b""))], &[], 0),
        ),
        (
            "unknown_option",
            stream(vec![message(OptionKind::Other(42), raw(b"?"))], &[], 0),
        ),
        (
            "lying_information",
            stream(
                vec![message(
                    OptionKind::Go,
                    OptionData::Information {
                        name: b"xvda".to_vec(),
                        items: vec![INFO_NAME],
                        name_length: Mostly(Some(Lie::Any(u32::MAX))),
                        count: Mostly(Some(Lie::More(2))),
                    },
                )],
                &[],
                0,
            ),
        ),
        (
            "bad_magic",
            stream(
                vec![OptionMessage {
                    wrong_magic: Mostly(Some(NBDMAGIC)),
                    ..message(OptionKind::Go, information(b"", &[]))
                }],
                &[],
                0,
            ),
        ),
        (
            "too_long",
            stream(
                vec![OptionMessage {
                    declared_length: Mostly(Some(Lie::Any(MAX_OPTION_DATA + 1))),
                    ..message(OptionKind::ExportName, raw(b"xvda"))
                }],
                &[],
                0,
            ),
        ),
        (
            "cut_short",
            stream(
                vec![message(OptionKind::Go, information(b"xvda", &[]))],
                &[5],
                3,
            ),
        ),
    ]
}

/// The request seeds: every command, well formed, then each way a request is refused.
pub fn request_seeds() -> Vec<(&'static str, RequestInput)> {
    let header = |command, offset, length| RequestHeader {
        wrong_magic: Mostly(None),
        flags: Flags::Known {
            fua: false,
            no_hole: false,
        },
        command,
        handle: 7,
        offset: Offset::Sectors(offset),
        length: Length::Sectors(length),
    };
    let stream = |writable, requests: Vec<RequestHeader>, pieces: &[u8], cut| RequestInput {
        writable,
        maximum_sectors: 64,
        requests,
        pieces: pieces.to_vec(),
        cut,
    };
    vec![
        (
            "every_command",
            stream(
                true,
                vec![
                    header(CommandKind::Read, 0, 8),
                    RequestHeader {
                        flags: Flags::Known {
                            fua: true,
                            no_hole: false,
                        },
                        ..header(CommandKind::Write, 8, 64)
                    },
                    header(CommandKind::Flush, 0, 0),
                    header(CommandKind::Trim, 16, 4096),
                    RequestHeader {
                        flags: Flags::Known {
                            fua: false,
                            no_hole: true,
                        },
                        ..header(CommandKind::WriteZeroes, 16, 8)
                    },
                    header(CommandKind::Disconnect, 0, 0),
                ],
                &[],
                0,
            ),
        ),
        (
            "in_pieces",
            stream(
                false,
                vec![header(CommandKind::Read, 1, 1); 3],
                &[1, 0, 27, 2],
                0,
            ),
        ),
        (
            "refused",
            stream(
                false,
                vec![
                    header(CommandKind::Write, 0, 1),
                    header(CommandKind::Read, 0, 65),
                    RequestHeader {
                        length: Length::Bytes(500),
                        ..header(CommandKind::Read, 0, 0)
                    },
                    RequestHeader {
                        flags: Flags::Any(0x8000),
                        ..header(CommandKind::Read, 0, 1)
                    },
                    header(CommandKind::Other(9), 0, 1),
                    header(CommandKind::Flush, 1, 0),
                ],
                &[],
                0,
            ),
        ),
        (
            "bad_magic",
            stream(
                true,
                vec![RequestHeader {
                    wrong_magic: Mostly(Some(SIMPLE_REPLY_MAGIC)),
                    ..header(CommandKind::Read, 0, 1)
                }],
                &[],
                0,
            ),
        ),
        (
            "cut_header",
            stream(true, vec![header(CommandKind::Read, 0, 1); 2], &[], 5),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_seeds_are_driven_and_written() {
        let seeds = option_seeds();
        for (_, input) in &seeds {
            drive_options(input);
        }
        crate::write_corpus("nbd_option", &seeds).unwrap();
    }

    #[test]
    fn request_seeds_are_driven_and_written() {
        let seeds = request_seeds();
        for (_, input) in &seeds {
            drive_requests(input);
        }
        crate::write_corpus("nbd_request", &seeds).unwrap();
    }
}
