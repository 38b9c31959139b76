//! The client's side of the handshake, parsed: one option message at a time, the data of
//! `NBD_OPT_INFO` and `NBD_OPT_GO`, and that of the meta context options. Every length is checked against the bytes there are
//! before anything is taken, so no client can make the server allocate more than
//! `MAX_OPTION_DATA` or read past what it sent.

use std::io::{self, Read};

use super::wire::{read_u32, read_u64, IHAVEOPT};

/// The longest option data read: an export name is at most 4096 bytes.
pub const MAX_OPTION_DATA: u32 = 8192;

/// One option message as the client sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOption {
    pub option: u32,
    pub data: Vec<u8>,
}

/// Read one option message; `None` when the client broke the protocol (a bad magic, or
/// more data than any option may carry), which ends the session.
pub fn read_option(stream: &mut impl Read) -> io::Result<Option<ClientOption>> {
    if read_u64(stream)? != IHAVEOPT {
        return Ok(None);
    }
    let option = read_u32(stream)?;
    let length = read_u32(stream)?;
    if length > MAX_OPTION_DATA {
        return Ok(None);
    }
    let mut data = vec![0u8; length as usize];
    stream.read_exact(&mut data)?;
    Ok(Some(ClientOption { option, data }))
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`: a name and the information items asked.
pub fn parse_info_request(data: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let name_length = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4usize.checked_add(name_length)?)?;
    let rest = &data[4 + name_length..];
    let count = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let items = rest.get(2..)?;
    if items.len() != count * 2 {
        return None;
    }
    Some((
        name,
        items
            .chunks_exact(2)
            .map(|item| u16::from_be_bytes([item[0], item[1]]))
            .collect(),
    ))
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`: an export name
/// and the queries. The count is checked against the bytes there are (each query takes at
/// least its 4-byte length) before anything is allocated.
pub fn parse_meta_context_request(data: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let (name, mut rest) = take_string(data)?;
    let count = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    rest = &rest[4..];
    if count > rest.len() / 4 {
        return None;
    }
    let mut queries = Vec::with_capacity(count);
    for _ in 0..count {
        let (query, after) = take_string(rest)?;
        queries.push(query);
        rest = after;
    }
    rest.is_empty().then_some((name, queries))
}

/// A string after its 32-bit length, and the bytes after it.
fn take_string(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let length = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let string = data.get(4..4usize.checked_add(length)?)?;
    Some((string, &data[4 + length..]))
}

#[cfg(test)]
mod tests {
    use super::super::wire::{Put, INFO_BLOCK_SIZE, INFO_NAME, OPT_GO};
    use super::*;

    fn info_request(name: &[u8], items: &[u16]) -> Vec<u8> {
        let mut data = Vec::new();
        data.put_u32(name.len() as u32);
        data.extend_from_slice(name);
        data.put_u16(items.len() as u16);
        items.iter().for_each(|&item| {
            data.put_u16(item);
        });
        data
    }

    #[test]
    fn information_requests_parse_only_when_every_length_agrees() {
        let good = info_request(b"xvda", &[INFO_BLOCK_SIZE, INFO_NAME]);
        assert_eq!(
            parse_info_request(&good),
            Some((&b"xvda"[..], vec![INFO_BLOCK_SIZE, INFO_NAME]))
        );
        assert_eq!(parse_info_request(&good[..good.len() - 1]), None);
        let mut long = good.clone();
        long.push(0);
        assert_eq!(parse_info_request(&long), None);
        let mut lying = good.clone();
        lying[3] = 200;
        assert_eq!(parse_info_request(&lying), None);
        let mut huge = good;
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_info_request(&huge), None);
        assert_eq!(
            parse_info_request(&info_request(b"", &[])),
            Some((&b""[..], vec![]))
        );
    }

    fn meta_context_request(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
        let mut data = Vec::new();
        data.put_u32(name.len() as u32);
        data.extend_from_slice(name);
        data.put_u32(queries.len() as u32);
        for query in queries {
            data.put_u32(query.len() as u32);
            data.extend_from_slice(query);
        }
        data
    }

    #[test]
    fn meta_context_requests_parse_only_when_every_length_agrees() {
        let good = meta_context_request(b"xvda", &[b"base:allocation", b"x-y:z"]);
        assert_eq!(
            parse_meta_context_request(&good),
            Some((&b"xvda"[..], vec![&b"base:allocation"[..], &b"x-y:z"[..]]))
        );
        assert_eq!(parse_meta_context_request(&good[..good.len() - 1]), None);
        let mut long = good.clone();
        long.push(0);
        assert_eq!(parse_meta_context_request(&long), None);
        let mut too_many = good.clone();
        too_many[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_meta_context_request(&too_many), None);
        let mut lying_query = good;
        lying_query[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_meta_context_request(&lying_query), None);
        assert_eq!(
            parse_meta_context_request(&meta_context_request(b"", &[])),
            Some((&b""[..], vec![]))
        );
    }

    fn option_message(magic: u64, option: u32, length: u32, data: &[u8]) -> Vec<u8> {
        let mut message = Vec::new();
        message.put_u64(magic).put_u32(option).put_u32(length);
        message.extend_from_slice(data);
        message
    }

    #[test]
    fn an_option_is_read_whole_and_only_with_its_magic_and_a_bounded_length() {
        let message = option_message(IHAVEOPT, OPT_GO, 3, b"abc");
        assert_eq!(
            read_option(&mut &message[..]).unwrap(),
            Some(ClientOption {
                option: OPT_GO,
                data: b"abc".to_vec()
            })
        );
        let bad_magic = option_message(IHAVEOPT ^ 1, OPT_GO, 3, b"abc");
        assert_eq!(read_option(&mut &bad_magic[..]).unwrap(), None);
        let too_long = option_message(IHAVEOPT, OPT_GO, MAX_OPTION_DATA + 1, b"");
        assert_eq!(read_option(&mut &too_long[..]).unwrap(), None);
        let short = option_message(IHAVEOPT, OPT_GO, 4, b"abc");
        assert_eq!(
            read_option(&mut &short[..]).map_err(|error| error.kind()),
            Err(io::ErrorKind::UnexpectedEof)
        );
    }
}
