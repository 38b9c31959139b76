//! The only `unsafe` in the backend: positioned reads and writes between a disk and guest
//! memory, which vm-memory offers only as `read`/`write` at the file's cursor.
//!
//! Queue threads share each disk's file descriptor, so the cursor cannot be used; `pread`
//! and `pwrite` take the offset with the call. The data moves straight between the disk and
//! the guest's pages: there is no bounce buffer.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// Fill `slice` from `file` at byte `offset`. A short file is an `UnexpectedEof` error.
pub fn read_exact_at(
    file: &File,
    offset: u64,
    slice: &VolatileSlice<impl BitmapSlice>,
) -> io::Result<()> {
    let guard = slice.ptr_guard_mut();
    let base = guard.as_ptr();
    let result = repeat_at(
        offset,
        slice.len(),
        io::ErrorKind::UnexpectedEof,
        |done, position| {
            // SAFETY: `base..base + slice.len()` is guest memory that the VolatileSlice's
            // constructor checked to be mapped and writable, and the slice's borrow of the
            // guest memory (the caller's snapshot of the connection's `GuestMemoryMmap`, whose
            // regions own the mappings) keeps it mapped for this call; `guard` only hands out
            // the pointer. `done < slice.len()`, so the range passed is inside it. The kernel
            // writes through the pointer, never Rust code, so the guest changing the same bytes
            // concurrently cannot break an aliasing rule. The descriptor is valid: `file` is
            // borrowed for the duration of the call.
            unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    base.add(done).cast(),
                    slice.len() - done,
                    position,
                )
            }
        },
    );
    // Even a failed read may have written some of the slice.
    slice.bitmap().mark_dirty(0, slice.len());
    result
}

/// Write all of `slice` to `file` at byte `offset`.
pub fn write_all_at(
    file: &File,
    offset: u64,
    slice: &VolatileSlice<impl BitmapSlice>,
) -> io::Result<()> {
    let guard = slice.ptr_guard();
    let base = guard.as_ptr();
    repeat_at(
        offset,
        slice.len(),
        io::ErrorKind::WriteZero,
        |done, position| {
            // SAFETY: as in `read_exact_at`: a checked guest range kept mapped by the slice's
            // borrow of the guest memory,
            // of which only `done..len` is passed; the kernel only reads it.
            unsafe {
                libc::pwrite(
                    file.as_raw_fd(),
                    base.add(done).cast(),
                    slice.len() - done,
                    position,
                )
            }
        },
    )
}

/// Call `transfer(done, position)` until `length` bytes are done, retrying on `EINTR`; a
/// call that moves nothing is `stalled`.
fn repeat_at(
    offset: u64,
    length: usize,
    stalled: io::ErrorKind,
    mut transfer: impl FnMut(usize, libc::off_t) -> isize,
) -> io::Result<()> {
    let mut done = 0usize;
    while done < length {
        match transfer(done, offset_at(offset, done)?) {
            0 => return Err(stalled.into()),
            count if count > 0 => done += count as usize,
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
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
        let source = memory.get_slice(GuestAddress(100), 1024).unwrap();
        write_all_at(&file, 2048, &source).unwrap();
        let mut on_disk = vec![0u8; 1024];
        file.seek(SeekFrom::Start(2048)).unwrap();
        file.read_exact(&mut on_disk).unwrap();
        assert_eq!(on_disk, pattern);

        let target = memory.get_slice(GuestAddress(5000), 1024).unwrap();
        read_exact_at(&file, 2048, &target).unwrap();
        let mut back = vec![0u8; 1024];
        memory.read_slice(&mut back, GuestAddress(5000)).unwrap();
        assert_eq!(back, pattern);
    }

    #[test]
    fn reading_past_the_end_of_the_file_is_an_error() {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4096)]).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[1u8; 1000]).unwrap();
        let target = memory.get_slice(GuestAddress(0), 1024).unwrap();
        assert_eq!(
            read_exact_at(&file, 0, &target).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(
            read_exact_at(&file, u64::MAX, &target)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EINVAL)
        );
    }
}
