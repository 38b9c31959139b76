//! Self-fencing for a backend whose host holds a lease in a shared pool: every I/O is
//! refused, before it reaches a disk, once the lease may have expired, since from then on
//! another host may have been given what this one maps.
//!
//! The deadline is the send time of the last acknowledged renewal plus the lease's time to
//! live, less a margin, on `CLOCK_BOOTTIME`. That clock keeps running while the process is
//! stopped (SIGSTOP) and while the whole machine is suspended, which `CLOCK_MONOTONIC` does
//! not count, so a backend that resumes after its deadline finds it passed before its
//! renewing thread can say anything: the check fails closed. The vDSO answers it without a
//! system call, so the check costs the I/O path some tens of nanoseconds.
//!
//! What the check cannot cover is a pause between a check that passed and the system call
//! it let through: the margin absorbs ordinary scheduling delays there, not a stop of the
//! process at that very instruction.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rustix::time::{clock_gettime, ClockId};
use shared_abi::Error;

/// A deadline for I/O and whether it can still move.
pub struct Fence {
    /// Nanoseconds on the boot-time clock before which I/O may run.
    deadline: AtomicU64,
    /// The lease is known to have expired: no renewal moves the deadline again.
    expired: AtomicBool,
}

/// The backend's fence. Without a lease (no `--pool`), its deadline is never reached.
pub static FENCE: Fence = Fence::open();

/// The boot-time clock (monotonic, suspend included), in nanoseconds.
pub fn now() -> u64 {
    let time = clock_gettime(ClockId::Boottime);
    (time.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(time.tv_nsec as u64)
}

/// Refuse an I/O once the backend's deadline has passed.
pub fn check() -> Result<(), Error> {
    FENCE.check()
}

impl Fence {
    /// A fence that lets everything through until it is armed.
    const fn open() -> Fence {
        Fence {
            deadline: AtomicU64::new(u64::MAX),
            expired: AtomicBool::new(false),
        }
    }

    /// Refuse an I/O once the deadline has passed.
    pub fn check(&self) -> Result<(), Error> {
        if now() < self.deadline.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Error::Io)
        }
    }

    /// Fence until the first renewal: a backend with a pool serves nothing before its
    /// lease.
    pub fn arm(&self) {
        self.deadline.store(0, Ordering::Release);
    }

    /// Allow I/O until `ttl` less `margin` after `sent`, the time the acknowledged renewal
    /// was sent (the lease runs from when etcd received it, which is later).
    pub fn renewed(&self, sent: u64, ttl: Duration, margin: Duration) {
        let until = sent.saturating_add(ttl.saturating_sub(margin).as_nanos() as u64);
        if !self.expired.load(Ordering::Acquire) {
            self.deadline.store(until, Ordering::Release);
        }
    }

    /// The lease expired: fence for good (only a restart, with a new registration, serves
    /// again).
    pub fn expired(&self) {
        self.expired.store(true, Ordering::Release);
        self.deadline.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_passes_with_the_clock_and_an_expiry_is_final() {
        let fence = Fence::open();
        assert_eq!(fence.check(), Ok(()), "without a lease nothing is fenced");
        fence.arm();
        assert_eq!(
            fence.check(),
            Err(Error::Io),
            "armed, nothing runs before a renewal"
        );
        fence.renewed(
            now(),
            Duration::from_millis(300),
            Duration::from_millis(100),
        );
        assert_eq!(fence.check(), Ok(()));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            fence.check(),
            Err(Error::Io),
            "200 ms after the renewal was sent"
        );
        fence.renewed(now(), Duration::from_secs(10), Duration::from_secs(1));
        assert_eq!(fence.check(), Ok(()));
        fence.expired();
        fence.renewed(now(), Duration::from_secs(10), Duration::from_secs(1));
        assert_eq!(
            fence.check(),
            Err(Error::Io),
            "an expired lease is not renewed"
        );
        assert_eq!(
            check(),
            Ok(()),
            "the backend's own fence was never armed here"
        );
    }
}
