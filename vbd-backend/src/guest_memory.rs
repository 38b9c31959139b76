//! Guest memory a VMM can take away: a process-wide registry of the guest mappings the
//! backend uses, and a SIGBUS handler that turns a fault in one of them into zero pages and
//! a broken device instead of the end of the process.
//!
//! A VMM shares its guest memory as a file (a memfd, a file on a tmpfs) that the backend maps.
//! If the VMM truncates that file, every access past the new end raises SIGBUS, whose default
//! action ends the process with every tenant's disks. Sealing cannot be required
//! (QEMU's `memory-backend-file` and libblkio do not seal against shrinking), so the fault is
//! survived instead: the handler finds the mapping that contains the faulting address,
//! replaces all of it in place with private anonymous memory (zeros, which the faulting
//! access then reads or writes when it is retried), and marks the mapping broken. The device
//! that uses it sees the mark, fails its requests and ends the connection
//! (`vhost::device`). A SIGBUS anywhere else is what it always was: the handler restores the
//! default action and raises it again.
//!
//! Reads and writes that the kernel does into a truncated mapping (`pread`, `pwrite`,
//! io_uring) raise no signal; they fail with `EFAULT`, an I/O error of that request.
//!
//! The handler may run on any thread at any moment, so the registry is a fixed array of
//! slots read without locks: each slot's range is published under a sequence number (a
//! seqlock) so that a half-written range is never matched. A mapping is registered while a
//! [`GuestMappings`] holds a reference to it and unregistered before that reference is let
//! go, so a registered range is always mapped as the guest memory it was registered for: the
//! handler never replaces memory that has been unmapped and reused for something else.

use std::io;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, MmapRegion};

/// Guest mappings registered at once, over every connection: room for every VBD socket of
/// a full table (1024, one connection each) holding two memory tables (the new one and the
/// one draining) of the most regions a connection may have (32, `vhost::device`), so no
/// tenant's connections can leave another's memory untracked (and so refused).
const SLOTS: usize = 1024 * 2 * 32;

/// One registered range of guest memory.
struct Slot {
    /// Taken by one [`Registration`] at a time.
    claimed: AtomicBool,
    /// Odd while `start` and `end` change.
    sequence: AtomicUsize,
    start: AtomicUsize,
    /// `start == end`: no range.
    end: AtomicUsize,
    /// Set by the handler once it replaced the range.
    broken: AtomicBool,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            claimed: AtomicBool::new(false),
            sequence: AtomicUsize::new(0),
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
        }
    }

    /// Publish `start..end`; only the slot's owner calls this.
    fn publish(&self, start: usize, end: usize) {
        let sequence = self.sequence.load(Ordering::Relaxed);
        self.sequence.store(sequence + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.start.store(start, Ordering::Relaxed);
        self.end.store(end, Ordering::Relaxed);
        self.sequence.store(sequence + 2, Ordering::Release);
    }

    /// The range, unless it is being changed right now (then it is being registered or
    /// unregistered, and no access to it can be faulting).
    fn range(&self) -> Option<(usize, usize)> {
        let before = self.sequence.load(Ordering::Acquire);
        if before % 2 == 1 {
            return None;
        }
        let start = self.start.load(Ordering::Relaxed);
        let end = self.end.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        (self.sequence.load(Ordering::Relaxed) == before && start < end).then_some((start, end))
    }
}

static REGISTRY: [Slot; SLOTS] = [const { Slot::new() }; SLOTS];

/// One mapping in the registry, and the reference that keeps it mapped until it has left it.
struct Registration {
    slot: &'static Slot,
    /// Dropped after `drop` has emptied the slot, so the range is never registered unmapped.
    mapping: Arc<MmapRegion<()>>,
}

impl Registration {
    fn new(mapping: Arc<MmapRegion<()>>) -> io::Result<Registration> {
        install_handler()?;
        let slot = REGISTRY
            .iter()
            .find(|slot| {
                slot.claimed
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or_else(|| io::Error::other("too many guest memory regions mapped at once"))?;
        slot.broken.store(false, Ordering::Relaxed);
        let start = mapping.as_ptr() as usize;
        slot.publish(start, start + mapping.size());
        Ok(Registration { slot, mapping })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.slot.publish(0, 0);
        self.slot.claimed.store(false, Ordering::Release);
    }
}

/// The guest mappings one device uses: each is registered from the first time the device
/// sees it until no one but this holds it any more.
#[derive(Default)]
pub struct GuestMappings {
    registrations: Mutex<Vec<Registration>>,
}

impl GuestMappings {
    fn registrations(&self) -> std::sync::MutexGuard<'_, Vec<Registration>> {
        self.registrations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Register every region of `memory` not registered yet, and unregister the mappings
    /// that only this still holds. Call it before touching `memory`; an error (the registry
    /// is full, or the handler could not be installed) means `memory` must not be used.
    pub fn track(&self, memory: &GuestMemoryMmap<()>) -> io::Result<()> {
        let mut registrations = self.registrations();
        // Nothing can reach a mapping that only this holds: it may leave the registry.
        registrations.retain(|registration| Arc::strong_count(&registration.mapping) > 1);
        for region in memory.iter() {
            let mapping = region.get_mmap();
            if !registrations
                .iter()
                .any(|registration| Arc::ptr_eq(&registration.mapping, &mapping))
            {
                registrations.push(Registration::new(mapping)?);
            }
        }
        Ok(())
    }

    /// Whether a mapping of this device was found truncated (and is zeros now).
    pub fn broken(&self) -> bool {
        self.registrations()
            .iter()
            .any(|registration| registration.slot.broken.load(Ordering::Acquire))
    }
}

/// Install the SIGBUS handler, once for the process.
fn install_handler() -> io::Result<()> {
    static INSTALL: Once = Once::new();
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    INSTALL.call_once(|| {
        // SAFETY: `sigaction` is given a zeroed struct (a valid value for every field)
        // with the handler, an empty mask (filled by `sigemptyset` on a pointer to that
        // struct's own field) and `SA_SIGINFO`, which matches the handler's three-argument
        // signature; the old action is not asked for. The handler itself is sound to run
        // at any point of any thread: see `on_sigbus`.
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask) == 0
                && libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) == 0
        };
        INSTALLED.store(installed, Ordering::Release);
    });
    if INSTALLED.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(io::Error::other(
            "cannot install the handler that survives truncated guest memory",
        ))
    }
}

/// The registered range that contains `address`, with its slot.
fn find(address: usize) -> Option<(&'static Slot, usize, usize)> {
    REGISTRY.iter().find_map(|slot| {
        let (start, end) = slot.range()?;
        (start <= address && address < end).then_some((slot, start, end))
    })
}

/// SIGBUS: in a registered guest mapping, make the mapping zeros and mark it broken; the
/// access that faulted is retried on the zeros. Anywhere else, die of it as before.
extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid `siginfo_t` to a handler installed with
    // `SA_SIGINFO`; `si_code` is always set, and `si_addr` is the faulting address for a
    // SIGBUS the kernel raised (`si_code > 0`), which is checked before it is read.
    // `__errno_location` is the calling thread's errno, saved and restored so the
    // interrupted code does not see the handler's errors.
    let (address, errno) = unsafe {
        let errno = *libc::__errno_location();
        let kernel = (*info).si_code > 0;
        (kernel.then(|| (*info).si_addr() as usize), errno)
    };
    if let Some((slot, start, end)) = address.and_then(find) {
        // SAFETY: `start..end` is a guest mapping that is still mapped: a range is in the
        // registry only while a `Registration` holds the `MmapRegion` that mapped it, and it
        // leaves the registry before that reference is dropped, so the range cannot have
        // been unmapped and reused. Rust code reaches guest memory only through raw
        // pointers and volatile accesses (vm-memory's `VolatileSlice`), never through
        // references, so replacing its pages with zeros in place is no more than the guest
        // writing zeros, which it may do at any time; the range stays mapped read-write, so
        // every pointer into it stays valid, and `MmapRegion`'s eventual `munmap` of the
        // same range unmaps these pages instead. `mmap` is a plain system call, safe in a
        // signal handler.
        let replaced = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                end - start,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if replaced != libc::MAP_FAILED {
            slot.broken.store(true, Ordering::Release);
            // SAFETY: as above, the thread's own errno, restored.
            unsafe { *libc::__errno_location() = errno };
            return;
        }
    }
    // SAFETY: `signal` and `raise` are async-signal-safe. With the default action back,
    // the raised signal (pending until this handler returns) ends the process as it would
    // have without this handler; a fault would also recur when the access is retried.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use vm_memory::{Bytes, FileOffset, GuestAddress};

    fn guest_memory_in_a_memfd(bytes: usize) -> (File, GuestMemoryMmap<()>) {
        let file =
            File::from(rustix::fs::memfd_create("guest", rustix::fs::MemfdFlags::CLOEXEC).unwrap());
        file.set_len(bytes as u64).unwrap();
        let memory = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0x10000),
            bytes,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        (file, memory)
    }

    #[test]
    fn a_truncated_registered_mapping_reads_as_zeros_and_is_broken() {
        let (file, memory) = guest_memory_in_a_memfd(0x4000);
        let mappings = GuestMappings::default();
        mappings.track(&memory).unwrap();
        memory.write_obj(0xabu8, GuestAddress(0x12000)).unwrap();
        assert!(!mappings.broken());
        file.set_len(0).unwrap();
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0x12000)).unwrap(), 0);
        assert!(mappings.broken());
        memory.write_obj(0xcdu8, GuestAddress(0x10000)).unwrap();
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0x10000)).unwrap(), 0xcd);
    }

    /// Whether exactly `start..end` is in the registry.
    fn registered(start: usize, end: usize) -> bool {
        REGISTRY
            .iter()
            .any(|slot| slot.range() == Some((start, end)))
    }

    #[test]
    fn a_mapping_leaves_the_registry_once_only_its_tracker_holds_it() {
        // Sizes no other test maps, so another test's mapping at a reused address differs.
        let (_file, memory) = guest_memory_in_a_memfd(0x5000);
        let start = memory.iter().next().unwrap().as_ptr() as usize;
        let mappings = GuestMappings::default();
        mappings.track(&memory).unwrap();
        mappings.track(&memory).unwrap();
        assert_eq!(mappings.registrations().len(), 1, "tracked once");
        assert!(registered(start, start + 0x5000));
        assert_eq!(find(start + 0x4fff).map(|(_, found, _)| found), Some(start));
        drop(memory);
        // Another table's tracking lets go of the one no one uses any more.
        let (_other_file, other) = guest_memory_in_a_memfd(0x6000);
        let other_start = other.iter().next().unwrap().as_ptr() as usize;
        mappings.track(&other).unwrap();
        assert_eq!(mappings.registrations().len(), 1);
        assert!(!registered(start, start + 0x5000));
        assert!(registered(other_start, other_start + 0x6000));
        drop(mappings);
        assert!(
            !registered(other_start, other_start + 0x6000),
            "unregistered with its tracker"
        );
    }
}
