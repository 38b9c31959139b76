//! io_uring for the queue threads: many reads from the disks in flight at once, each moved
//! by the kernel straight into the guest's pages. With `sys.rs`, the only `unsafe` of the
//! backend.
//!
//! Reads, because that is where it pays on these machines (ext4, kernel 6.18, buffered
//! files), measured with fio on a cached image: 4 KiB random reads at depth 32 went from
//! 11.9k IOPS with `pread` to 55k on io_uring, while 128 KiB buffered writes at depth 8 fell
//! from 3.9 to 2.7 GB/s, with 40 000 context switches against 100: the kernel cannot write
//! a buffered file without blocking, so io_uring hands every write to a worker thread.
//! Writes therefore stay `pwrite`s on the queue thread ([`crate::sys`]); `pwritev2` with
//! `RWF_NOWAIT` is no way around it, since ext4 refuses it (`EOPNOTSUPP`) for buffered files.
//! The one write that comes here is the part of a large write bound for one disk while the
//! queue thread writes the rest to others: that hand-off to a worker is what is wanted.
//!
//! Nor are reads tried with `preadv2(RWF_NOWAIT)` before the ring: io_uring already
//! completes a page-cache hit inline at submission, one `io_uring_enter` for the whole batch,
//! where `preadv2` costs a system call per read, and measured slower at depth 32
//! (BENCHMARKS.md, issue 15).
//!
//! The kernel holds a transfer's addresses from submission until its completion, so no
//! transfer may outlive the guest memory, the file or the `iovec` array it names. The only
//! way to submit is [`Ring::batch`]: it lends a [`Batch`] bound to the lifetime `'m` of the
//! memory and the files, and does not return, nor unwind, before every transfer the batch
//! submitted has completed. The caller never owns a `Batch`, so it cannot forget one with
//! transfers in flight.
//!
//! A read that moves fewer bytes than asked (a signal, a file that ends) is resubmitted for
//! the rest; one that moves nothing is an error, as a short `pread` is in `sys.rs`.
//!
//! The caller may send the first bytes of a read to io_uring's workers (`IOSQE_ASYNC`),
//! while the rest is copied in the queue thread as it submits, so one large request's copy
//! out of the page cache runs on two cores at once. A read cut in two this way reports its
//! token once, when both parts are done, with the first error either met.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use hv_vbd::InFlight;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use vm_memory::volatile_memory::PtrGuardMut;
use vm_memory::VolatileSlice;

/// The most slices one transfer may take: the kernel's `UIO_MAXIOV`.
pub const MAX_SLICES: usize = 1024;

/// A read is cut for the workers on a page boundary of its bytes.
const PAGE_BYTES: u64 = 4096;

/// One queue thread's io_uring.
pub struct Ring {
    ring: IoUring,
    /// Kept from batch to batch, so that once it has grown a batch allocates nothing.
    state: State,
}

/// The bookkeeping of a ring's transfers.
#[derive(Default)]
struct State {
    /// Transfer slots, by the `user_data` the kernel returns.
    transfers: Vec<Transfer>,
    /// Slots not in use.
    free: Vec<usize>,
    /// Completed transfers the caller has not been told of yet.
    finished: Vec<(u64, io::Result<()>)>,
    /// Room for the completions being handled.
    completions: Vec<cqueue::Entry>,
}

// SAFETY: the only pointers a `State` holds are those of its transfers' `iovecs` and
// `guards`, which are cleared when a transfer is released, and every transfer of a batch is
// released before the batch lets go of the state (`Batch::drop`). Between batches, when the
// state can move to another thread, it holds no pointer at all; during one it is borrowed
// by the batch on the thread that runs it.
unsafe impl Send for State {}

impl Ring {
    /// A ring with room for `entries` submissions at once (a power of two); more transfers
    /// than the completion queue holds are never in flight together.
    pub fn new(entries: u32) -> io::Result<Ring> {
        Ok(Ring {
            ring: IoUring::new(entries)?,
            state: State::default(),
        })
    }

    /// Lend `work` a batch on this ring; every transfer it submitted has completed when this
    /// returns or unwinds.
    pub fn batch<'m, R>(&mut self, work: impl FnOnce(&mut Batch<'_, 'm>) -> R) -> R {
        let mut batch = Batch {
            ring: &mut self.ring,
            state: &mut self.state,
            in_flight: 0,
            _memory: std::marker::PhantomData,
        };
        // `batch` drops after this, or while unwinding: `Batch::drop` waits for the kernel.
        work(&mut batch)
    }
}

/// One transfer slot: what the kernel is (or will be) told, and how far it got.
#[derive(Default)]
struct Transfer {
    /// Queued or in flight; the rest is stale when not.
    live: bool,
    token: u64,
    fd: RawFd,
    /// The file offset of the first byte not yet moved.
    offset: u64,
    /// Moves guest memory to the file, not the file to guest memory.
    write: bool,
    /// Done by io_uring's workers (`IOSQE_ASYNC`), not by the submitting thread.
    on_workers: bool,
    /// The other half of a split read while it is still going: it reports for both.
    sibling: Option<usize>,
    /// An error of the other half, finished first, to report with this one.
    carried: Option<io::Error>,
    /// The slices; `iovecs[first..]` are what is left, the first of them possibly cut.
    iovecs: Vec<libc::iovec>,
    first: usize,
    /// The slices' pointer guards, from which the `iovecs` were taken; what keeps the memory
    /// mapped is the batch's borrow of it (`'m`). Mutable ones for writes too: the guest
    /// memory here has no dirty bitmap, so a guard is only its pointer.
    guards: Vec<PtrGuardMut>,
    /// The in-flight registration of the translation this transfer was made from, let go
    /// only once the kernel has finished with it: a change that removes its extents
    /// waits for it, however the batch ends (completed, left early, or unwinding).
    registration: Option<InFlight<'static>>,
}

/// Reads from files into guest memory, and writes the other way, both living at least as
/// long as `'m`, submitted together and completed in any order. Lent by [`Ring::batch`].
pub struct Batch<'r, 'm> {
    ring: &'r mut IoUring,
    state: &'r mut State,
    /// Transfers queued or submitted and not yet completed.
    in_flight: usize,
    _memory: std::marker::PhantomData<&'m ()>,
}

impl<'m> Batch<'_, 'm> {
    /// Queue a read of `file` at byte `offset` filling `slices` in order, holding
    /// `registration` until the kernel has finished it; `token` comes back with its
    /// completion. The first `to_workers` bytes (cut on a page boundary; all of them when
    /// `to_workers` covers the read) are copied by io_uring's workers, the rest by this
    /// thread as it submits. `EINVAL` (and nothing queued) past `i64::MAX` or with more than
    /// [`MAX_SLICES`] slices.
    pub fn read(
        &mut self,
        token: u64,
        file: &'m File,
        offset: u64,
        slices: &[VolatileSlice<'m>],
        registration: InFlight<'static>,
        to_workers: u64,
    ) -> io::Result<()> {
        let total = checked_total(offset, slices)?;
        let cut = if to_workers >= total {
            total
        } else {
            to_workers & !(PAGE_BYTES - 1)
        };
        if cut == 0 || cut == total {
            let on_workers = cut == total;
            return self.queue_whole(token, file, offset, slices, registration, |transfer| {
                transfer.on_workers = on_workers;
            });
        }
        self.make_room(2)?;
        let worker = self.take_slot(
            token,
            file,
            offset,
            part(slices, 0..cut),
            registration.clone(),
        );
        let here = self.take_slot(
            token,
            file,
            offset + cut,
            part(slices, cut..total),
            registration,
        );
        let transfers = &mut self.state.transfers;
        transfers[worker].on_workers = true;
        transfers[worker].sibling = Some(here);
        transfers[here].sibling = Some(worker);
        if let Err(error) = self.push(worker) {
            self.release(worker);
            self.release(here);
            return Err(error);
        }
        if let Err(error) = self.push(here) {
            // The first part is in flight: it reports this failure with its own end.
            self.state.transfers[worker].sibling = None;
            self.state.transfers[worker].carried = Some(error);
            self.release(here);
        }
        Ok(())
    }

    /// Start a write of `slices`, in order, to `file` at byte `offset`, done by io_uring's
    /// workers, holding `registration` until the kernel has finished it; `token` comes back
    /// with its completion. The workers write one file's data one write at a time, so this
    /// pays only beside writes to other files, which the caller makes while the workers
    /// write: it is submitted at once, not with the batch. `EINVAL` (and nothing queued) as
    /// for [`Batch::read`].
    pub fn write(
        &mut self,
        token: u64,
        file: &'m File,
        offset: u64,
        slices: &[VolatileSlice<'m>],
        registration: InFlight<'static>,
    ) -> io::Result<()> {
        checked_total(offset, slices)?;
        self.queue_whole(token, file, offset, slices, registration, |transfer| {
            transfer.write = true;
            transfer.on_workers = true;
        })?;
        // Queued, so in flight whatever this returns: a ring that fails to submit now fails
        // again, and says so, when the batch waits for it.
        let _ = self.enter(0);
        Ok(())
    }

    /// Queue all of `slices` as one transfer, read here unless `mark` makes it a write or
    /// sends it to io_uring's workers; nothing is left queued when it fails.
    fn queue_whole(
        &mut self,
        token: u64,
        file: &'m File,
        offset: u64,
        slices: &[VolatileSlice<'m>],
        registration: InFlight<'static>,
        mark: impl FnOnce(&mut Transfer),
    ) -> io::Result<()> {
        self.make_room(1)?;
        let index = self.take_slot(token, file, offset, slices.iter().copied(), registration);
        mark(&mut self.state.transfers[index]);
        self.push(index).inspect_err(|_| {
            // Not submitted: nothing to wait for.
            self.release(index);
        })
    }

    /// Wait until `parts` more transfers fit beside those in flight: never more in flight
    /// than the completion queue holds, so none is dropped or deferred by the kernel.
    fn make_room(&mut self, parts: usize) -> io::Result<()> {
        while self.in_flight + parts > self.ring.params().cq_entries() as usize {
            self.enter(1)?;
            self.reap();
        }
        Ok(())
    }

    /// A free slot, filled with a read of `file` at `offset` into `slices` (which the caller
    /// may mark a write), counted in flight but not yet submitted.
    fn take_slot(
        &mut self,
        token: u64,
        file: &'m File,
        offset: u64,
        slices: impl Iterator<Item = VolatileSlice<'m>>,
        registration: InFlight<'static>,
    ) -> usize {
        let transfers = &mut self.state.transfers;
        let index = self.state.free.pop().unwrap_or_else(|| {
            transfers.push(Transfer::default());
            transfers.len() - 1
        });
        let transfer = &mut transfers[index];
        transfer.live = true;
        transfer.token = token;
        transfer.fd = file.as_raw_fd();
        transfer.offset = offset;
        transfer.first = 0;
        transfer.write = false;
        transfer.on_workers = false;
        transfer.sibling = None;
        transfer.carried = None;
        transfer.registration = Some(registration);
        let Transfer { iovecs, guards, .. } = transfer;
        guards.extend(slices.map(|slice| slice.ptr_guard_mut()));
        iovecs.extend(guards.iter().map(|guard| libc::iovec {
            iov_base: guard.as_ptr().cast(),
            iov_len: guard.len(),
        }));
        self.in_flight += 1;
        index
    }

    /// Transfers queued or submitted and not yet reported finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Submit everything queued, wait until at least one transfer has finished (unless none
    /// is in flight), and drain every finished one, each with its token. An error here is the
    /// ring's own, not a transfer's.
    pub fn finish_some(&mut self) -> io::Result<std::vec::Drain<'_, (u64, io::Result<()>)>> {
        while self.state.finished.is_empty() && self.in_flight > 0 {
            self.enter(1)?;
            self.reap();
        }
        Ok(self.state.finished.drain(..))
    }

    /// Put transfer `index`'s next step in the submission queue, making room if it is full.
    fn push(&mut self, index: usize) -> io::Result<()> {
        let entry = submission(&self.state.transfers[index]).user_data(index as u64);
        while self.ring.submission().is_full() {
            self.enter(0)?;
        }
        // SAFETY: the entry names the transfer's `fd`, a file borrowed for `'m`, and guest
        // memory of slices borrowed for `'m`: each slice borrows the `GuestMemoryMmap` whose
        // regions own the mappings (the queue thread holds it, through its snapshot of the
        // connection's memory, for the whole batch), so nothing unmaps them before `'m` ends,
        // and vm-memory's constructors checked the pointers in bounds. (The `guards` only
        // hand out the pointers; they keep nothing mapped. A file shrunk under a mapping
        // makes the kernel fail the read with `EFAULT`, never write elsewhere.) All of it
        // goes through the transfer's `iovecs`,
        // a heap array of slot `index` left untouched until the transfer completes (a slot is
        // cleared and reused only after its completion is reaped). `'m` outlives the batch,
        // and the batch does not go away before the kernel has completed every transfer
        // (`Drop`), so nothing the kernel uses is freed or reused while it uses it.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        pushed.map_err(|_| io::Error::other("the submission queue is full"))
    }

    /// `io_uring_enter`: submit what is queued and wait for `want` completions.
    fn enter(&mut self, want: usize) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                // The completion queue is full: make room, then go on.
                Err(error) if error.raw_os_error() == Some(libc::EBUSY) => self.reap(),
                Err(error) => return Err(error),
            }
        }
    }

    /// Take every completion the kernel has posted: finished transfers are reported, short
    /// ones go on where they stopped.
    fn reap(&mut self) {
        self.each_completion(Batch::complete);
    }

    /// Run `each` on every completion the kernel has posted, in room kept from call to call.
    fn each_completion(&mut self, mut each: impl FnMut(&mut Self, cqueue::Entry)) {
        let mut completions = std::mem::take(&mut self.state.completions);
        completions.extend(self.ring.completion());
        for completion in completions.drain(..) {
            each(self, completion);
        }
        self.state.completions = completions;
    }

    /// One completion: a finished transfer is reported, a short one goes on where it stopped.
    fn complete(&mut self, completion: cqueue::Entry) {
        let index = completion.user_data() as usize;
        let Some(transfer) = self.state.transfers.get_mut(index).filter(|t| t.live) else {
            return;
        };
        // `None`: more to move.
        let finished = match completion.result() {
            moved if moved > 0 => transfer.advance(moved as usize).then_some(Ok(())),
            0 if transfer.write => Some(Err(io::ErrorKind::WriteZero.into())),
            0 => Some(Err(io::ErrorKind::UnexpectedEof.into())),
            error if -error == libc::EINTR || -error == libc::EAGAIN => None,
            error => Some(Err(io::Error::from_raw_os_error(-error))),
        };
        let result = match finished {
            Some(result) => result,
            None => match self.push(index) {
                Ok(()) => return,
                Err(error) => Err(error),
            },
        };
        self.report(index, result);
    }

    /// Transfer `index` is over with `result`. Its token is reported unless it is half of a
    /// split read whose other half is still going, which then reports for both.
    fn report(&mut self, index: usize, result: io::Result<()>) {
        let transfer = &mut self.state.transfers[index];
        let token = transfer.token;
        let sibling = transfer.sibling.take();
        let result = match transfer.carried.take() {
            Some(error) => Err(error),
            None => result,
        };
        self.release(index);
        match sibling {
            Some(other) => {
                let other = &mut self.state.transfers[other];
                other.sibling = None;
                if let Err(error) = result {
                    other.carried.get_or_insert(error);
                }
            }
            None => self.state.finished.push((token, result)),
        }
    }

    /// Transfer `index` is over: the kernel has no more use of its memory.
    fn release(&mut self, index: usize) {
        let transfer = &mut self.state.transfers[index];
        transfer.live = false;
        transfer.iovecs.clear();
        transfer.guards.clear();
        transfer.sibling = None;
        transfer.carried = None;
        // The kernel is done with it: a fence may pass now.
        transfer.registration = None;
        self.state.free.push(index);
        self.in_flight -= 1;
    }
}

impl Transfer {
    /// Count `moved` more bytes done; `true` when nothing is left.
    fn advance(&mut self, mut moved: usize) -> bool {
        self.offset += moved as u64;
        while let Some(iovec) = self.iovecs.get_mut(self.first) {
            if moved < iovec.iov_len {
                iovec.iov_base = iovec.iov_base.cast::<u8>().wrapping_add(moved).cast();
                iovec.iov_len -= moved;
                return false;
            }
            moved -= iovec.iov_len;
            self.first += 1;
        }
        true
    }
}

/// The submission entry for what is left of `transfer`: one buffer is a plain read or
/// write, several a vectored one.
fn submission(transfer: &Transfer) -> squeue::Entry {
    let fd = types::Fd(transfer.fd);
    let offset = transfer.offset;
    let entry = match (transfer.write, &transfer.iovecs[transfer.first..]) {
        (false, [one]) => opcode::Read::new(fd, one.iov_base.cast(), one.iov_len as u32)
            .offset(offset)
            .build(),
        (false, many) => opcode::Readv::new(fd, many.as_ptr(), many.len() as u32)
            .offset(offset)
            .build(),
        (true, [one]) => opcode::Write::new(fd, one.iov_base.cast(), one.iov_len as u32)
            .offset(offset)
            .build(),
        (true, many) => opcode::Writev::new(fd, many.as_ptr(), many.len() as u32)
            .offset(offset)
            .build(),
    };
    if transfer.on_workers {
        entry.flags(squeue::Flags::ASYNC)
    } else {
        entry
    }
}

/// The bytes `slices` hold, checked: `EINVAL` for none, more than [`MAX_SLICES`], or an end
/// past `i64::MAX` from `offset`.
fn checked_total(offset: u64, slices: &[VolatileSlice<'_>]) -> io::Result<u64> {
    let total = slices
        .iter()
        .try_fold(0u64, |total, slice| total.checked_add(slice.len() as u64));
    let end = total.and_then(|total| offset.checked_add(total));
    match (total, end) {
        (Some(total), Some(end))
            if i64::try_from(end).is_ok() && !slices.is_empty() && slices.len() <= MAX_SLICES =>
        {
            Ok(total)
        }
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// The pieces of `slices`, taken as one run of bytes, that lie in `range`.
fn part<'s, 'm>(
    slices: &'s [VolatileSlice<'m>],
    range: std::ops::Range<u64>,
) -> impl Iterator<Item = VolatileSlice<'m>> + 's {
    let mut start = 0u64;
    slices.iter().filter_map(move |slice| {
        let (from, to) = (start, start + slice.len() as u64);
        start = to;
        let (first, last) = (from.max(range.start), to.min(range.end));
        // In bounds of the slice by construction, so `subslice` cannot fail.
        (first < last)
            .then(|| {
                slice
                    .subslice((first - from) as usize, (last - first) as usize)
                    .ok()
            })
            .flatten()
    })
}

impl Drop for Batch<'_, '_> {
    fn drop(&mut self) {
        // The caller normally waited for everything; on an early return or an unwind, the
        // kernel must still be done with the memory before `'m` may end.
        while self.in_flight > 0 {
            if let Err(error) = self.enter(1) {
                // A ring that can no longer be waited on may still write guest memory that is
                // about to be unmapped: stopping the process is the only safe way out.
                eprintln!("vbd-backend: cannot wait for the disk I/O in flight: {error}");
                std::process::abort();
            }
            self.each_completion(|batch, completion| {
                let index = completion.user_data() as usize;
                if batch.state.transfers.get(index).is_some_and(|t| t.live) {
                    batch.release(index);
                }
            });
        }
        // Nobody was told of these, and the next batch must not be.
        self.state.finished.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::FileExt;
    use std::sync::OnceLock;
    use std::time::Duration;

    use hv_vbd::{Access, Segment, VbdRef};
    use shared_abi::DOM0;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    use crate::vbd::tests::{create, empty_table, xvda};
    use crate::vbd::{Table, Translator};

    /// A fresh table with `vd:1`, the first 8 sectors of its first disk, as `dom1/xvda`.
    fn a_table_with_a_vbd() -> (&'static Table, VbdRef) {
        let table = empty_table();
        (table, create(table, xvda(1), &[(0, 0, 8)], true, "vd:1"))
    }

    /// A registration of a read of `vbd`, as a queue thread hands one to each transfer.
    fn registration_of(table: &'static Table, vbd: &VbdRef) -> InFlight<'static> {
        let translator = Translator::new(table);
        let mut segments = [Segment::default(); 4];
        let request = hv_vbd::Request::from_bytes(Access::Read, 0, 512).unwrap();
        translator
            .translate_into(vbd, &request, &mut segments)
            .unwrap()
            .registration()
    }

    /// A registration in a table no test changes, for tests about the I/O alone.
    fn held() -> InFlight<'static> {
        static TABLE: OnceLock<(&'static Table, VbdRef)> = OnceLock::new();
        let (table, vbd) = TABLE.get_or_init(a_table_with_a_vbd);
        registration_of(table, vbd)
    }

    /// A file of 64 KiB whose every byte is its offset's low byte plus one.
    fn patterned_file() -> (tempfile::NamedTempFile, Vec<u8>) {
        let file = tempfile::NamedTempFile::new().unwrap();
        let bytes: Vec<u8> = (0..65536u32).map(|at| at as u8 ^ 0x5a).collect();
        file.as_file().write_all_at(&bytes, 0).unwrap();
        (file, bytes)
    }

    fn memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20000)]).unwrap()
    }

    /// Guest memory holding, for each `(at, byte, length)`, `length` copies of `byte` at `at`.
    fn memory_holding(runs: &[(u64, u8, usize)]) -> GuestMemoryMmap<()> {
        let memory = memory();
        for &(at, byte, length) in runs {
            memory
                .write_slice(&vec![byte; length], GuestAddress(at))
                .unwrap();
        }
        memory
    }

    /// What guest memory holds at `at`.
    fn guest_bytes(memory: &GuestMemoryMmap<()>, at: u64, length: usize) -> Vec<u8> {
        let mut out = vec![0; length];
        memory.read_slice(&mut out, GuestAddress(at)).unwrap();
        out
    }

    fn slice(memory: &GuestMemoryMmap<()>, at: u64, length: usize) -> VolatileSlice<'_> {
        memory
            .get_slices(GuestAddress(at), length)
            .next()
            .unwrap()
            .unwrap()
    }

    /// Wait for every transfer of `batch`: each one's token and result, by token.
    fn finish_all(batch: &mut Batch<'_, '_>) -> Vec<(u64, io::Result<()>)> {
        let mut finished = Vec::new();
        while batch.in_flight() > 0 {
            finished.extend(batch.finish_some().unwrap());
        }
        finished.sort_by_key(|(token, _)| *token);
        finished
    }

    /// [`finish_all`], each result told only as done or failed.
    fn outcomes(batch: &mut Batch<'_, '_>) -> Vec<(u64, bool)> {
        let finished = finish_all(batch);
        finished.into_iter().map(|(t, r)| (t, r.is_ok())).collect()
    }

    #[test]
    fn reads_of_one_and_many_slices_land_in_order_and_each_reports_its_token() {
        let (file, bytes) = patterned_file();
        let memory = memory();
        let mut ring = Ring::new(8).unwrap();
        let tokens = ring.batch(|batch| {
            batch
                .read(
                    7,
                    file.as_file(),
                    512,
                    &[slice(&memory, 0x1000, 4096)],
                    held(),
                    0,
                )
                .unwrap();
            let scattered = [
                slice(&memory, 0x8000, 100),
                slice(&memory, 0x3000, 1000),
                slice(&memory, 0x9000, 3000),
            ];
            batch
                .read(9, file.as_file(), 40000, &scattered, held(), 0)
                .unwrap();
            outcomes(batch)
        });
        assert_eq!(tokens, [(7, true), (9, true)]);
        let read = |at: u64, length: usize| guest_bytes(&memory, at, length);
        assert_eq!(read(0x1000, 4096), bytes[512..4608]);
        assert_eq!(read(0x8000, 100), bytes[40000..40100]);
        assert_eq!(read(0x3000, 1000), bytes[40100..41100]);
        assert_eq!(read(0x9000, 3000), bytes[41100..44100]);
        assert_eq!(read(0x8000 + 100, 4), [0; 4], "nothing past the slice");
    }

    #[test]
    fn more_reads_than_the_ring_holds_all_complete() {
        let (file, bytes) = patterned_file();
        let memory = memory();
        let mut ring = Ring::new(2).unwrap();
        let done = ring.batch(|batch| {
            for index in 0..64u64 {
                let at = index * 1024;
                batch
                    .read(
                        index,
                        file.as_file(),
                        at,
                        &[slice(&memory, at, 1024)],
                        held(),
                        0,
                    )
                    .unwrap();
            }
            let mut done = 0;
            while batch.in_flight() > 0 {
                done += batch.finish_some().unwrap().len();
            }
            done
        });
        assert_eq!(done, 64);
        assert_eq!(guest_bytes(&memory, 0, 65536), bytes);
    }

    #[test]
    fn a_read_past_the_end_fails_alone_and_bad_shapes_are_refused_before_submission() {
        let (file, _) = patterned_file();
        let memory = memory();
        let mut ring = Ring::new(4).unwrap();
        ring.batch(|batch| {
            let refused = |result: io::Result<()>| result.unwrap_err().raw_os_error();
            assert_eq!(
                refused(batch.read(1, file.as_file(), 0, &[], held(), 0)),
                Some(libc::EINVAL)
            );
            let past_i64 = u64::MAX - 100;
            let one = [slice(&memory, 0, 512)];
            assert_eq!(
                refused(batch.read(2, file.as_file(), past_i64, &one, held(), 0)),
                Some(libc::EINVAL)
            );
            let too_many: Vec<VolatileSlice<'_>> = (0..=MAX_SLICES as u64)
                .map(|at| slice(&memory, at, 1))
                .collect();
            assert_eq!(
                refused(batch.read(3, file.as_file(), 0, &too_many, held(), 0)),
                Some(libc::EINVAL)
            );
            assert_eq!(batch.in_flight(), 0, "nothing was queued");

            // The file ends at 64 KiB: the read gets its first 512 bytes, then nothing.
            batch
                .read(
                    4,
                    file.as_file(),
                    65536 - 512,
                    &[slice(&memory, 0, 1024)],
                    held(),
                    0,
                )
                .unwrap();
            batch
                .read(
                    5,
                    file.as_file(),
                    0,
                    &[slice(&memory, 0x4000, 512)],
                    held(),
                    0,
                )
                .unwrap();
            let finished = finish_all(batch);
            assert_eq!(finished[0].0, 4);
            assert_eq!(
                finished[0].1.as_ref().unwrap_err().kind(),
                io::ErrorKind::UnexpectedEof
            );
            assert_eq!(finished[1].0, 5);
            assert!(finished[1].1.is_ok());
        });
    }

    #[test]
    fn a_read_cut_for_the_workers_is_reported_once_with_an_error_of_either_part() {
        const HALF: usize = 256 << 10;
        let length = 2 * HALF + 4096;
        let file = tempfile::NamedTempFile::new().unwrap();
        let bytes: Vec<u8> = (0..length as u32 + 8192).map(|at| (at / 7) as u8).collect();
        file.as_file().write_all_at(&bytes, 0).unwrap();
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 * length)]).unwrap();
        // Three slices of odd lengths, out of order in memory: the cut falls inside one.
        let (a, b) = (1000, HALF);
        let slices = [
            slice(&memory, length as u64, a),
            slice(&memory, 0, b),
            slice(&memory, (length + a) as u64, length - a - b),
        ];
        let on_workers = [slice(&memory, 3 * length as u64, length)];
        let mut ring = Ring::new(4).unwrap();
        let reported = ring.batch(|batch| {
            // Not on a page boundary: cut at the page below.
            let to_workers = length as u64 / 2 + 100;
            batch
                .read(1, file.as_file(), 512, &slices, held(), to_workers)
                .unwrap();
            // Past the end of the file: its part read here moves nothing.
            let past = [slice(&memory, 2 * length as u64, length)];
            let end = (bytes.len() - HALF) as u64;
            batch
                .read(2, file.as_file(), end, &past, held(), HALF as u64)
                .unwrap();
            // All of it on the workers.
            batch
                .read(3, file.as_file(), 0, &on_workers, held(), u64::MAX)
                .unwrap();
            outcomes(batch)
        });
        assert_eq!(
            reported,
            [(1, true), (2, false), (3, true)],
            "one report a read"
        );
        let data = &bytes[512..512 + length];
        assert_eq!(guest_bytes(&memory, length as u64, a), data[..a]);
        assert_eq!(guest_bytes(&memory, 0, b), data[a..a + b]);
        assert_eq!(
            guest_bytes(&memory, (length + a) as u64, length - a - b),
            data[a + b..]
        );
        assert_eq!(
            guest_bytes(&memory, 3 * length as u64, length),
            bytes[..length]
        );
    }

    #[test]
    fn writes_on_the_workers_land_in_order_and_a_failed_one_is_reported() {
        let (file, mut bytes) = patterned_file();
        let memory = memory_holding(&[(0x1000, 7, 3000), (0x8000, 9, 5000)]);
        let read_only = std::fs::File::open(file.path()).unwrap();
        let mut ring = Ring::new(4).unwrap();
        let reported = ring.batch(|batch| {
            let two = [slice(&memory, 0x1000, 3000), slice(&memory, 0x8000, 5000)];
            batch.write(1, file.as_file(), 1000, &two, held()).unwrap();
            let one = [slice(&memory, 0x1000, 512)];
            batch.write(2, &read_only, 0, &one, held()).unwrap();
            outcomes(batch)
        });
        assert_eq!(reported, [(1, true), (2, false)]);
        bytes[1000..4000].fill(7);
        bytes[4000..9000].fill(9);
        assert!(
            std::fs::read(file.path()).unwrap() == bytes,
            "only the write landed"
        );
    }

    #[test]
    fn a_write_on_the_workers_starts_before_the_batch_waits() {
        let (file, mut bytes) = patterned_file();
        let memory = memory_holding(&[(0x1000, 5, 4096)]);
        bytes[..4096].fill(5);
        let mut ring = Ring::new(4).unwrap();
        let landed = ring.batch(|batch| {
            let one = [slice(&memory, 0x1000, 4096)];
            batch.write(1, file.as_file(), 0, &one, held()).unwrap();
            // The caller writes elsewhere meanwhile; here it only looks at the file.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let landed = loop {
                if std::fs::read(file.path()).unwrap() == bytes {
                    break true;
                }
                if std::time::Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            };
            finish_all(batch);
            landed
        });
        assert!(landed, "the write waited for the batch to be submitted");
    }

    #[test]
    fn a_batch_left_early_still_waits_for_its_reads() {
        let (file, bytes) = patterned_file();
        let memory = memory();
        let mut ring = Ring::new(4).unwrap();
        ring.batch(|batch| {
            batch
                .read(1, file.as_file(), 0, &[slice(&memory, 0, 65536)], held(), 0)
                .unwrap();
            // Returns with the read in flight: the batch's drop waits for it.
        });
        assert_eq!(guest_bytes(&memory, 0, 65536), bytes);
    }

    #[test]
    fn a_ring_serves_batch_after_batch_and_none_hears_of_another_ones_reads() {
        let (file, bytes) = patterned_file();
        let memory = memory();
        let mut ring = Ring::new(4).unwrap();
        // The first batch leaves with its read finished but never reported.
        ring.batch(|batch| {
            batch
                .read(1, file.as_file(), 0, &[slice(&memory, 0, 4096)], held(), 0)
                .unwrap();
        });
        for round in 0..3u64 {
            let tokens: Vec<u64> = ring.batch(|batch| {
                for index in 0..6u64 {
                    let at = 4096 * (index + 1);
                    let slices = [slice(&memory, at, 2048), slice(&memory, at + 2048, 2048)];
                    batch
                        .read(10 * round + index, file.as_file(), at, &slices, held(), 0)
                        .unwrap();
                }
                let mut tokens = Vec::new();
                while batch.in_flight() > 0 {
                    tokens.extend(batch.finish_some().unwrap().map(|(token, result)| {
                        result.unwrap();
                        token
                    }));
                }
                tokens.sort();
                tokens
            });
            assert_eq!(tokens, (10 * round..10 * round + 6).collect::<Vec<_>>());
        }
        assert_eq!(guest_bytes(&memory, 0, 7 * 4096), bytes[..7 * 4096]);
    }

    /// Queue with `queue`, on a batch left early, one transfer made from a translation of a
    /// VBD deleted since, which the kernel can finish only once `unblock` has run (on another
    /// thread, 50 ms later): the delete's fence must wait for the kernel, not for the batch.
    fn assert_the_fence_waits_for_the_kernel<'m>(
        queue: impl FnOnce(&mut Batch<'_, 'm>, InFlight<'static>),
        unblock: impl FnOnce() + Send,
    ) {
        let (table, vbd) = a_table_with_a_vbd();
        let mut ring = Ring::new(4).unwrap();
        // Translated before the delete: the delete's fence waits for it.
        let registration = registration_of(table, &vbd);
        let removal = table.delete(DOM0, xvda(1)).unwrap();
        let fence = &removal.fence;
        std::thread::scope(|scope| {
            ring.batch(|batch| {
                queue(batch, registration);
                assert!(!fence.is_complete(), "the transfer is queued");
                // Left with the transfer in flight: the drop waits for the kernel, which
                // waits for the other thread, which looks at the fence first.
                scope.spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    let held = !fence.is_complete();
                    unblock();
                    assert!(
                        held,
                        "the fence passed while the batch waited for the transfer"
                    );
                });
            });
            assert!(fence.is_complete(), "the transfer is over");
        });
    }

    #[test]
    fn a_reads_registration_is_let_go_only_once_the_kernel_finished_it_even_if_the_batch_is_left_early(
    ) {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let disk = File::from(std::os::fd::OwnedFd::from(reader));
        let memory = memory();
        assert_the_fence_waits_for_the_kernel(
            |batch, registration| {
                let into = [slice(&memory, 0, 512)];
                batch.read(1, &disk, 0, &into, registration, 0).unwrap();
            },
            move || writer.write_all(&[0x5a; 512]).unwrap(),
        );
        assert_eq!(guest_bytes(&memory, 0, 512), [0x5a; 512]);
    }

    #[test]
    fn a_writes_registration_is_let_go_only_once_the_kernel_finished_it_even_if_the_batch_is_left_early(
    ) {
        let (mut reader, mut writer) = std::io::pipe().unwrap();
        // A pipe holds 16 pages unless resized: full, it makes the write wait until the
        // other end is read.
        let room = 16 * PAGE_BYTES as usize;
        writer.write_all(&vec![0; room]).unwrap();
        let disk = File::from(std::os::fd::OwnedFd::from(writer));
        let memory = memory_holding(&[(0, 0x77, 512)]);
        assert_the_fence_waits_for_the_kernel(
            |batch, registration| {
                let from = [slice(&memory, 0, 512)];
                batch.write(1, &disk, 0, &from, registration).unwrap();
            },
            move || {
                let mut drained = vec![0; room];
                reader.read_exact(&mut drained).unwrap();
            },
        );
    }
}
