//! The fixed-newstyle handshake: greeting, client flags, then option haggling until
//! `NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME` picks the export (or the client leaves).
//!
//! A client that breaks a MUST of the protocol (unknown client flags, a bad option magic, an
//! unknown name given to `NBD_OPT_EXPORT_NAME`) is disconnected; any other bad option gets an
//! error reply and haggling goes on, bounded in count and size.

use std::io::{self, Read, Write};

use super::options::{parse_info_request, read_option, ClientOption};
use super::wire::*;
use super::Target;
use crate::vbd::vbd_state;

/// Options a client may send before it must choose an export.
const MAX_OPTIONS: usize = 64;
/// Block sizes: sectors at least, 4 KiB preferred, at most 32 MiB per request.
pub const MINIMUM_BLOCK: u32 = 512;
pub const PREFERRED_BLOCK: u32 = 4096;
pub const MAXIMUM_REQUEST: u32 = 32 << 20;

/// What the client chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub size: u64,
    pub writable: bool,
}

impl Negotiated {
    pub fn transmission_flags(self) -> u16 {
        let mut flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA;
        if self.writable {
            flags |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES;
        } else {
            flags |= FLAG_READ_ONLY;
        }
        flags
    }
}

fn option_reply(stream: &mut impl Write, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut message = Vec::with_capacity(20 + data.len());
    message
        .put_u64(OPTION_REPLY_MAGIC)
        .put_u32(option)
        .put_u32(kind)
        .put_u32(data.len() as u32);
    message.extend_from_slice(data);
    stream.write_all(&message)
}

fn error_reply(stream: &mut impl Write, option: u32, kind: u32, message: &str) -> io::Result<()> {
    option_reply(stream, option, kind, message.as_bytes())
}

/// The export as it stands now, if `name` names it.
fn lookup(target: &Target, name: &[u8]) -> Option<Negotiated> {
    if !name.is_empty() && name != target.name.as_bytes() {
        return None;
    }
    vbd_state(target.shared.table, &target.vbd)
        .ok()
        .map(|state| Negotiated {
            size: state.size_sectors * shared_abi::SECTOR_SIZE,
            writable: state.writable,
        })
}

/// Greet the client and haggle; `None` when the client left or had to be disconnected.
pub fn negotiate<S: Read + Write>(
    stream: &mut S,
    target: &Target,
) -> io::Result<Option<Negotiated>> {
    let mut greeting = Vec::with_capacity(18);
    greeting
        .put_u64(NBDMAGIC)
        .put_u64(IHAVEOPT)
        .put_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    stream.write_all(&greeting)?;
    let client_flags = read_u32(stream)?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Ok(None);
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    for _ in 0..MAX_OPTIONS {
        let Some(ClientOption { option, data }) = read_option(stream)? else {
            return Ok(None);
        };
        match option {
            OPT_EXPORT_NAME => {
                // No error reply exists for this option: an unknown name ends the session.
                let Some(export) = lookup(target, &data) else {
                    return Ok(None);
                };
                let mut reply = Vec::with_capacity(134);
                reply
                    .put_u64(export.size)
                    .put_u16(export.transmission_flags());
                if !no_zeroes {
                    reply.extend_from_slice(&[0u8; 124]);
                }
                stream.write_all(&reply)?;
                return Ok(Some(export));
            }
            OPT_ABORT => {
                option_reply(stream, option, REP_ACK, &[])?;
                return Ok(None);
            }
            OPT_LIST if data.is_empty() => {
                let mut server = Vec::new();
                server.put_u32(target.name.len() as u32);
                server.extend_from_slice(target.name.as_bytes());
                option_reply(stream, option, REP_SERVER, &server)?;
                option_reply(stream, option, REP_ACK, &[])?;
            }
            OPT_LIST => error_reply(
                stream,
                option,
                REP_ERR_INVALID,
                "NBD_OPT_LIST takes no data",
            )?,
            OPT_INFO | OPT_GO => {
                let Some((name, items)) = parse_info_request(&data) else {
                    error_reply(
                        stream,
                        option,
                        REP_ERR_INVALID,
                        "malformed information request",
                    )?;
                    continue;
                };
                let Some(export) = lookup(target, name) else {
                    error_reply(stream, option, REP_ERR_UNKNOWN, "no such export")?;
                    continue;
                };
                let mut info = Vec::new();
                info.put_u16(INFO_EXPORT)
                    .put_u64(export.size)
                    .put_u16(export.transmission_flags());
                option_reply(stream, option, REP_INFO, &info)?;
                if items.contains(&INFO_NAME) {
                    let mut info = Vec::new();
                    info.put_u16(INFO_NAME)
                        .extend_from_slice(target.name.as_bytes());
                    option_reply(stream, option, REP_INFO, &info)?;
                }
                if items.contains(&INFO_BLOCK_SIZE) {
                    let mut info = Vec::new();
                    info.put_u16(INFO_BLOCK_SIZE)
                        .put_u32(MINIMUM_BLOCK)
                        .put_u32(PREFERRED_BLOCK)
                        .put_u32(MAXIMUM_REQUEST);
                    option_reply(stream, option, REP_INFO, &info)?;
                }
                option_reply(stream, option, REP_ACK, &[])?;
                if option == OPT_GO {
                    return Ok(Some(export));
                }
            }
            OPT_STRUCTURED_REPLY => {
                error_reply(stream, option, REP_ERR_UNSUP, "simple replies only")?;
            }
            _ => error_reply(stream, option, REP_ERR_UNSUP, "option not supported")?,
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_exports_advertise_read_only_and_no_trim() {
        let read_only = Negotiated {
            size: 512,
            writable: false,
        };
        let flags = read_only.transmission_flags();
        assert_eq!(flags & FLAG_READ_ONLY, FLAG_READ_ONLY);
        assert_eq!(flags & (FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES), 0);
        let writable = Negotiated {
            size: 512,
            writable: true,
        };
        assert_eq!(
            writable.transmission_flags(),
            FLAG_HAS_FLAGS
                | FLAG_SEND_FLUSH
                | FLAG_SEND_FUA
                | FLAG_SEND_TRIM
                | FLAG_SEND_WRITE_ZEROES
        );
    }
}
