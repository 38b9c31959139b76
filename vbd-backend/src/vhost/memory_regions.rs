//! The guest memory a VMM announces must lie inside the files it sends. vhost-user-backend
//! maps each region of `SET_MEM_TABLE` and `ADD_MEM_REG` as announced and publishes the new
//! table before this device can register it with the SIGBUS guard
//! ([`crate::guest_memory`]): a region past the end of its file would fault, unguarded, at
//! the first touch. The relay checks each region against its file before passing the
//! message on, and ends the connection of a VMM that announces one that does not fit.
//!
//! Only regular files are accepted (a memfd, a file on a tmpfs or a hugetlbfs, which is what
//! QEMU and libblkio share): their size is what `fstat` says, and what a mapping of them may
//! touch. Other descriptors (a character device such as device-DAX, a block device) have no
//! size `fstat` reports, so nothing could show their regions are backed; they are refused
//! rather than trusted.
//!
//! A file the VMM truncates after the check is the SIGBUS guard's to survive.

use std::fmt;
use std::os::fd::OwnedFd;

use rustix::fs::FileType;

/// `VHOST_USER_SET_MEM_TABLE`: a count, padding, then that many regions, one descriptor each.
pub const SET_MEM_TABLE: u32 = 5;
/// `VHOST_USER_ADD_MEM_REG`: padding, then one region and its descriptor.
pub const ADD_MEM_REG: u32 = 37;
/// Bytes before the first region, in both messages.
const REGIONS_START: usize = 8;
/// A region: guest address, size, VMM address, offset in the file; each a `u64`.
const REGION_BYTES: usize = 32;
const SIZE_AT: usize = 8;
const OFFSET_AT: usize = 24;

/// Why a region announced is refused; `index` is its place in the message.
#[derive(Debug, PartialEq, Eq)]
pub enum RegionError {
    /// Its file is not a regular file, so its size is unknown.
    NotAFile { index: usize },
    /// Its offset and size overflow.
    Overflows { index: usize },
    /// It ends past its file's end.
    PastTheEnd {
        index: usize,
        end: u64,
        file_bytes: u64,
    },
    /// Its descriptor cannot be examined.
    Unknown {
        index: usize,
        errno: rustix::io::Errno,
    },
}

impl fmt::Display for RegionError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionError::NotAFile { index } => write!(
                formatter,
                "guest memory region {index} is not in a regular file (its size cannot be known)"
            ),
            RegionError::Overflows { index } => write!(
                formatter,
                "guest memory region {index} ends past the largest file offset"
            ),
            RegionError::PastTheEnd {
                index,
                end,
                file_bytes,
            } => write!(
                formatter,
                "guest memory region {index} ends at byte {end} of a {file_bytes}-byte file"
            ),
            RegionError::Unknown { index, errno } => write!(
                formatter,
                "guest memory region {index}: its file cannot be examined ({errno})"
            ),
        }
    }
}

/// Check every region of message `request` (its `payload`) against its descriptor in `fds`.
/// Other messages, and regions without a descriptor (which vhost refuses), pass.
pub fn check(request: u32, payload: &[u8], fds: &[OwnedFd]) -> Result<(), RegionError> {
    let count = match request {
        SET_MEM_TABLE => payload.get(..4).map_or(0, |bytes| {
            u32::from_le_bytes(bytes.try_into().unwrap()) as usize
        }),
        ADD_MEM_REG => 1,
        _ => 0,
    };
    let regions = payload
        .get(REGIONS_START..)
        .unwrap_or_default()
        .chunks_exact(REGION_BYTES)
        .take(count);
    regions
        .zip(fds)
        .enumerate()
        .try_for_each(|(index, (region, fd))| check_region(index, region, fd))
}

fn check_region(index: usize, region: &[u8], fd: &OwnedFd) -> Result<(), RegionError> {
    let field = |at: usize| u64::from_le_bytes(region[at..at + 8].try_into().unwrap());
    let stat = rustix::fs::fstat(fd).map_err(|errno| RegionError::Unknown { index, errno })?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(RegionError::NotAFile { index });
    }
    let end = field(OFFSET_AT)
        .checked_add(field(SIZE_AT))
        .ok_or(RegionError::Overflows { index })?;
    // A regular file's size is never negative.
    let file_bytes = stat.st_size as u64;
    if end > file_bytes {
        return Err(RegionError::PastTheEnd {
            index,
            end,
            file_bytes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(bytes: u64) -> OwnedFd {
        let fd = rustix::fs::memfd_create("guest", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, bytes).unwrap();
        fd
    }

    /// The payload of `request` announcing `(size, offset)` regions.
    fn payload(request: u32, regions: &[(u64, u64)]) -> Vec<u8> {
        let mut bytes = match request {
            SET_MEM_TABLE => (regions.len() as u32).to_le_bytes().to_vec(),
            _ => vec![0; 4],
        };
        bytes.extend_from_slice(&[0; 4]);
        for (index, &(size, offset)) in regions.iter().enumerate() {
            let guest_address = (index as u64) << 30;
            for field in [guest_address, size, 0x7f00_0000_0000, offset] {
                bytes.extend_from_slice(&field.to_le_bytes());
            }
        }
        bytes
    }

    #[test]
    fn regions_inside_their_files_pass() {
        let fds = [memfd(0x10000), memfd(0x3000)];
        let table = payload(SET_MEM_TABLE, &[(0x10000, 0), (0x1000, 0x2000)]);
        assert_eq!(check(SET_MEM_TABLE, &table, &fds), Ok(()));
        let added = payload(ADD_MEM_REG, &[(0x2000, 0x1000)]);
        assert_eq!(check(ADD_MEM_REG, &added, &fds[1..]), Ok(()));
    }

    #[test]
    fn a_region_past_its_files_end_is_refused_in_either_message() {
        let fds = [memfd(0x10000), memfd(0x3000)];
        let table = payload(SET_MEM_TABLE, &[(0x10000, 0), (0x2000, 0x2000)]);
        let past = RegionError::PastTheEnd {
            index: 1,
            end: 0x4000,
            file_bytes: 0x3000,
        };
        assert_eq!(check(SET_MEM_TABLE, &table, &fds), Err(past));
        let added = payload(ADD_MEM_REG, &[(0x10001, 0)]);
        let past = RegionError::PastTheEnd {
            index: 0,
            end: 0x10001,
            file_bytes: 0x10000,
        };
        assert_eq!(check(ADD_MEM_REG, &added, &fds), Err(past));
    }

    #[test]
    fn a_region_whose_end_overflows_is_refused() {
        let fds = [memfd(0x1000)];
        let table = payload(SET_MEM_TABLE, &[(0x1000, u64::MAX - 0xfff)]);
        assert_eq!(
            check(SET_MEM_TABLE, &table, &fds),
            Err(RegionError::Overflows { index: 0 })
        );
    }

    #[test]
    fn a_region_in_something_other_than_a_regular_file_is_refused() {
        let (reader, _writer) = std::io::pipe().unwrap();
        let table = payload(SET_MEM_TABLE, &[(0x1000, 0)]);
        assert_eq!(
            check(SET_MEM_TABLE, &table, &[OwnedFd::from(reader)]),
            Err(RegionError::NotAFile { index: 0 })
        );
    }

    #[test]
    fn other_messages_pass_whatever_they_carry() {
        let fds = [memfd(0)];
        let table = payload(SET_MEM_TABLE, &[(0x1000, 0)]);
        assert_eq!(check(13, &table, &fds), Ok(()));
    }
}
