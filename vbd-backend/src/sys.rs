//! The only `unsafe` in the backend: positioned reads and writes between a disk and guest
//! memory, which vm-memory offers only as `read`/`write` at the file's cursor.
//!
//! Queue threads share each disk's file descriptor, so the cursor cannot be used; `preadv`
//! and `pwritev` take the offset with the call. The data moves straight between the disk and
//! the guest's pages: there is no bounce buffer.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// Fill `slices`, in order, from `file` at byte `offset`, with `preadv`: the slices of a
/// request that lie end to end on the disk go in one system call. A short file is an
/// `UnexpectedEof` error.
pub fn read_exact_vectored_at(
    file: &File,
    offset: u64,
    slices: &[VolatileSlice<impl BitmapSlice>],
) -> io::Result<()> {
    let guards: Vec<_> = slices.iter().map(VolatileSlice::ptr_guard_mut).collect();
    let mut iovecs = iovecs(guards.iter().map(|guard| guard.as_ptr()), slices);
    let result = repeat_vectored(
        offset,
        &mut iovecs,
        io::ErrorKind::UnexpectedEof,
        |left, position| {
            // SAFETY: every `iovec` names guest memory that its VolatileSlice's constructor
            // checked to be mapped and writable, or the rest of it after a short transfer;
            // the slices' borrow of the guest memory (the caller's snapshot of the
            // connection's `GuestMemoryMmap`, whose regions own the mappings) keeps it mapped
            // for this call, and `guards` only hand out the pointers. The kernel writes
            // through them, never Rust code, so the guest changing the same bytes
            // concurrently cannot break an aliasing rule. `left` is at most `UIO_MAXIOV`
            // long (the caller's bound) and borrowed for the call, and the descriptor is
            // valid: `file` is borrowed for the duration of the call.
            unsafe {
                libc::preadv(
                    file.as_raw_fd(),
                    left.as_ptr(),
                    left.len() as libc::c_int,
                    position,
                )
            }
        },
    );
    // Even a failed read may have written some of the slices.
    for slice in slices {
        slice.bitmap().mark_dirty(0, slice.len());
    }
    result
}

/// Write all of `slices`, in order, to `file` at byte `offset`, with `pwritev`: the slices
/// of a request that lie end to end on the disk go in one system call. One call matters
/// beyond its cost: ext4 prepares each page-cache folio a write touches in full, so a
/// 1 MiB write in sixty-four 16 KiB calls prepares each of its folios sixty-four times.
pub fn write_all_vectored_at(
    file: &File,
    offset: u64,
    slices: &[VolatileSlice<impl BitmapSlice>],
) -> io::Result<()> {
    let guards: Vec<_> = slices.iter().map(VolatileSlice::ptr_guard).collect();
    let mut iovecs = iovecs(guards.iter().map(|guard| guard.as_ptr().cast_mut()), slices);
    repeat_vectored(
        offset,
        &mut iovecs,
        io::ErrorKind::WriteZero,
        |left, position| {
            // SAFETY: as in `read_exact_vectored_at`, except that the kernel only reads
            // through the pointers.
            unsafe {
                libc::pwritev(
                    file.as_raw_fd(),
                    left.as_ptr(),
                    left.len() as libc::c_int,
                    position,
                )
            }
        },
    )
}

/// The `iovec`s of `slices`, at `pointers` (their guards').
fn iovecs(
    pointers: impl Iterator<Item = *mut u8>,
    slices: &[VolatileSlice<impl BitmapSlice>],
) -> Vec<libc::iovec> {
    pointers
        .zip(slices)
        .map(|(pointer, slice)| libc::iovec {
            iov_base: pointer.cast(),
            iov_len: slice.len(),
        })
        .collect()
}

/// Call `transfer(left, position)` with the `iovecs` not yet done until all are, retrying
/// on `EINTR` and going on after a short transfer from where it stopped (the first `iovec`
/// left cut to what remains); a call that moves nothing is `stalled`.
fn repeat_vectored(
    offset: u64,
    iovecs: &mut [libc::iovec],
    stalled: io::ErrorKind,
    mut transfer: impl FnMut(&[libc::iovec], libc::off_t) -> isize,
) -> io::Result<()> {
    let mut first = 0usize;
    let mut done = 0usize;
    while first < iovecs.len() {
        if iovecs[first].iov_len == 0 {
            first += 1;
            continue;
        }
        let mut moved = match transfer(&iovecs[first..], offset_at(offset, done)?) {
            0 => return Err(stalled.into()),
            count if count > 0 => count as usize,
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
                continue;
            }
        };
        done += moved;
        while let Some(iovec) = iovecs.get_mut(first) {
            if moved < iovec.iov_len {
                iovec.iov_base = iovec.iov_base.cast::<u8>().wrapping_add(moved).cast();
                iovec.iov_len -= moved;
                break;
            }
            moved -= iovec.iov_len;
            first += 1;
        }
    }
    Ok(())
}

/// `offset + done` as the kernel's signed offset, or `EINVAL` past `i64::MAX`.
fn offset_at(offset: u64, done: usize) -> io::Result<libc::off_t> {
    offset
        .checked_add(done as u64)
        .and_then(|position| libc::off_t::try_from(position).ok())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    #[test]
    fn guest_memory_round_trips_through_a_file_at_an_offset() {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8192)]).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[0u8; 4096]).unwrap();
        let pattern: Vec<u8> = (0..1024u32).map(|byte| byte as u8 ^ 0x5a).collect();
        memory.write_slice(&pattern, GuestAddress(100)).unwrap();
        let source = [
            memory.get_slice(GuestAddress(100), 1000).unwrap(),
            memory.get_slice(GuestAddress(1100), 0).unwrap(),
            memory.get_slice(GuestAddress(1100), 24).unwrap(),
        ];
        write_all_vectored_at(&file, 2048, &source).unwrap();
        let mut on_disk = vec![0u8; 1024];
        file.seek(SeekFrom::Start(2048)).unwrap();
        file.read_exact(&mut on_disk).unwrap();
        assert_eq!(on_disk, pattern);

        let target = [
            memory.get_slice(GuestAddress(5000), 24).unwrap(),
            memory.get_slice(GuestAddress(5024), 1000).unwrap(),
        ];
        read_exact_vectored_at(&file, 2048, &target).unwrap();
        let mut back = vec![0u8; 1024];
        memory.read_slice(&mut back, GuestAddress(5000)).unwrap();
        assert_eq!(back, pattern);
    }

    #[test]
    fn reading_past_the_end_of_the_file_is_an_error() {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4096)]).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[1u8; 1000]).unwrap();
        let target = [memory.get_slice(GuestAddress(0), 1024).unwrap()];
        assert_eq!(
            read_exact_vectored_at(&file, 0, &target)
                .unwrap_err()
                .kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(
            read_exact_vectored_at(&file, u64::MAX, &target)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EINVAL)
        );
    }

    #[test]
    fn a_short_transfer_goes_on_from_where_it_stopped() {
        let mut bytes = [0u8; 10];
        let base = bytes.as_mut_ptr();
        let iovec = |from: usize, length: usize| libc::iovec {
            iov_base: base.wrapping_add(from).cast(),
            iov_len: length,
        };
        let mut iovecs = [iovec(0, 4), iovec(4, 0), iovec(4, 6)];
        let mut calls = Vec::new();
        let result = repeat_vectored(100, &mut iovecs, io::ErrorKind::WriteZero, |left, at| {
            let first = left[0].iov_base as usize - base as usize;
            calls.push((first, left[0].iov_len, left.len(), at));
            3
        });
        assert!(result.is_ok());
        // Three bytes a call: each resumes inside the iovec, at the file offset, it reached.
        assert_eq!(
            calls,
            [
                (0, 4, 3, 100),
                (3, 1, 3, 103),
                (6, 4, 1, 106),
                (9, 1, 1, 109)
            ]
        );
        let mut iovecs = [iovec(0, 4)];
        assert_eq!(
            repeat_vectored(0, &mut iovecs, io::ErrorKind::WriteZero, |_, _| 0)
                .unwrap_err()
                .kind(),
            io::ErrorKind::WriteZero
        );
    }
}
