//! The fixed-newstyle handshake: greeting, client flags, then option haggling until
//! `NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME` picks the export (or the client leaves).
//!
//! A client that breaks a MUST of the protocol (unknown client flags, a bad option magic, an
//! unknown name given to `NBD_OPT_EXPORT_NAME`) is disconnected; any other bad option gets an
//! error reply and haggling goes on, bounded in count and size.
//!
//! Structured replies are offered, and with them the one metadata context there is,
//! `base:allocation`, for `NBD_CMD_BLOCK_STATUS`.

use std::io::{self, Read, Write};

use super::options::{parse_info_request, parse_meta_context_request, read_option, ClientOption};
use super::request::Offered;
use super::wire::*;
use super::Target;
use crate::vbd::vbd_state;

/// Options a client may send before it must choose an export.
const MAX_OPTIONS: usize = 64;
/// Block sizes: sectors at least, 4 KiB preferred, at most 32 MiB per request.
pub const MINIMUM_BLOCK: u32 = 512;
pub const PREFERRED_BLOCK: u32 = 4096;
pub const MAXIMUM_REQUEST: u32 = 32 << 20;

/// The metadata context id of `base:allocation`, the only one.
pub const BASE_ALLOCATION_ID: u32 = 0;

/// What the client chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub size: u64,
    pub writable: bool,
    pub structured_replies: bool,
    /// `base:allocation` is selected.
    pub block_status: bool,
}

impl Negotiated {
    /// Multi-conn is offered because the export has no cache of its own: every connection
    /// writes the same files with `pwrite`, so what one connection's write left in the page
    /// cache is what another reads, and a flush (`fdatasync` of the VBD's disks) on any
    /// connection makes durable every write completed on all of them.
    pub fn transmission_flags(self) -> u16 {
        let mut flags = FLAG_HAS_FLAGS
            | FLAG_SEND_FLUSH
            | FLAG_SEND_FUA
            | FLAG_CAN_MULTI_CONN
            | FLAG_SEND_CACHE;
        if self.writable {
            flags |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
        } else {
            flags |= FLAG_READ_ONLY;
        }
        if self.structured_replies {
            flags |= FLAG_SEND_DF;
        }
        flags
    }

    /// What requests may ask, given this.
    pub fn offered(self) -> Offered {
        Offered {
            writable: self.writable,
            maximum_request: MAXIMUM_REQUEST,
            structured_replies: self.structured_replies,
            block_status: self.block_status,
        }
    }
}

/// What haggling has settled so far.
#[derive(Clone, Copy, Debug, Default)]
struct Haggled {
    structured_replies: bool,
    block_status: bool,
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

/// Whether `name` names the export: its own name, or the empty default name.
fn names_export(target: &Target, name: &[u8]) -> bool {
    name.is_empty() || name == target.name.as_bytes()
}

/// The export as it stands now, if `name` names it.
fn lookup(target: &Target, name: &[u8], haggled: Haggled) -> Option<Negotiated> {
    if !names_export(target, name) {
        return None;
    }
    vbd_state(target.shared.table, &target.vbd)
        .ok()
        .map(|state| Negotiated {
            size: state.size_sectors * shared_abi::SECTOR_SIZE,
            writable: state.writable,
            structured_replies: haggled.structured_replies,
            block_status: haggled.block_status,
        })
}

/// Whether `query` selects `base:allocation`; a listing also takes the namespace alone.
fn selects_base_allocation(query: &[u8], listing: bool) -> bool {
    query == BASE_ALLOCATION.as_bytes() || (listing && query == b"base:")
}

/// Answer `NBD_OPT_LIST_META_CONTEXT` or `NBD_OPT_SET_META_CONTEXT`; `Some(selected)` once
/// a set has chosen whether `base:allocation` is selected.
fn meta_context(
    stream: &mut impl Write,
    target: &Target,
    option: u32,
    data: &[u8],
    haggled: Haggled,
) -> io::Result<Option<bool>> {
    if !haggled.structured_replies {
        error_reply(
            stream,
            option,
            REP_ERR_INVALID,
            "metadata contexts need structured replies first",
        )?;
        return Ok(None);
    }
    let Some((name, queries)) = parse_meta_context_request(data) else {
        error_reply(
            stream,
            option,
            REP_ERR_INVALID,
            "malformed metadata context request",
        )?;
        return Ok(None);
    };
    if !names_export(target, name) {
        error_reply(stream, option, REP_ERR_UNKNOWN, "no such export")?;
        return Ok(None);
    }
    let listing = option == OPT_LIST_META_CONTEXT;
    // Listing with no query lists every context; setting with none selects none.
    let selected = (listing && queries.is_empty())
        || queries
            .iter()
            .any(|query| selects_base_allocation(query, listing));
    if selected {
        let mut context = Vec::new();
        context.put_u32(BASE_ALLOCATION_ID);
        context.extend_from_slice(BASE_ALLOCATION.as_bytes());
        option_reply(stream, option, REP_META_CONTEXT, &context)?;
    }
    option_reply(stream, option, REP_ACK, &[])?;
    Ok((!listing).then_some(selected))
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
    let mut haggled = Haggled::default();
    for _ in 0..MAX_OPTIONS {
        let Some(ClientOption { option, data }) = read_option(stream)? else {
            return Ok(None);
        };
        match option {
            OPT_EXPORT_NAME => {
                // No error reply exists for this option: an unknown name ends the session.
                let Some(export) = lookup(target, &data, haggled) else {
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
                let Some(export) = lookup(target, name, haggled) else {
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
            OPT_STRUCTURED_REPLY if data.is_empty() => {
                haggled.structured_replies = true;
                option_reply(stream, option, REP_ACK, &[])?;
            }
            OPT_STRUCTURED_REPLY => error_reply(
                stream,
                option,
                REP_ERR_INVALID,
                "NBD_OPT_STRUCTURED_REPLY takes no data",
            )?,
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                if let Some(selected) = meta_context(stream, target, option, &data, haggled)? {
                    haggled.block_status = selected;
                }
            }
            _ => error_reply(stream, option, REP_ERR_UNSUP, "option not supported")?,
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRITABLE: Negotiated = Negotiated {
        size: 512,
        writable: true,
        structured_replies: false,
        block_status: false,
    };

    #[test]
    fn read_only_exports_advertise_read_only_and_no_changes() {
        let read_only = Negotiated {
            writable: false,
            ..WRITABLE
        };
        assert_eq!(
            read_only.transmission_flags(),
            FLAG_HAS_FLAGS
                | FLAG_READ_ONLY
                | FLAG_SEND_FLUSH
                | FLAG_SEND_FUA
                | FLAG_CAN_MULTI_CONN
                | FLAG_SEND_CACHE
        );
        assert_eq!(
            WRITABLE.transmission_flags(),
            FLAG_HAS_FLAGS
                | FLAG_SEND_FLUSH
                | FLAG_SEND_FUA
                | FLAG_CAN_MULTI_CONN
                | FLAG_SEND_CACHE
                | FLAG_SEND_TRIM
                | FLAG_SEND_WRITE_ZEROES
                | FLAG_SEND_FAST_ZERO
        );
    }

    #[test]
    fn dont_fragment_is_offered_only_with_structured_replies() {
        let structured = Negotiated {
            structured_replies: true,
            ..WRITABLE
        };
        assert_eq!(
            structured.transmission_flags(),
            WRITABLE.transmission_flags() | FLAG_SEND_DF
        );
    }

    #[test]
    fn only_base_allocation_is_selected_and_the_namespace_only_lists() {
        assert!(selects_base_allocation(b"base:allocation", false));
        assert!(selects_base_allocation(b"base:", true));
        assert!(!selects_base_allocation(b"base:", false));
        assert!(!selects_base_allocation(b"base:allocation2", true));
        assert!(!selects_base_allocation(b"qemu:dirty-bitmap:x", true));
    }
}
