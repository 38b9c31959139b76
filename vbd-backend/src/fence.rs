//! Self-fencing for a backend whose host holds a lease in a shared pool: every I/O is
//! refused, before it reaches a disk, once the lease may have expired, since from then on
//! another host may have been given what this one maps.
//!
//! The deadline is the send time of the last acknowledged renewal plus the lease's time to
//! live, less a margin, on the monotonic clock. The clock keeps running while the process
//! is stopped (SIGSTOP, a frozen VM), so a backend that resumes after its deadline finds it
//! passed before its renewing thread can say anything: the check fails closed. It is read
//! as `CLOCK_MONOTONIC_COARSE`, which the vDSO answers without a system call, so the check
//! costs the I/O path a few nanoseconds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rustix::time::{clock_gettime, ClockId};
use shared_abi::Error;

/// Nanoseconds on the coarse monotonic clock before which I/O may run. Without a lease
/// (no `--pool`), never reached.
static DEADLINE: AtomicU64 = AtomicU64::new(u64::MAX);

/// The lease is known to have expired: no renewal moves the deadline again.
static EXPIRED: AtomicBool = AtomicBool::new(false);

/// The coarse monotonic clock, in nanoseconds.
pub fn now() -> u64 {
    let time = clock_gettime(ClockId::MonotonicCoarse);
    (time.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(time.tv_nsec as u64)
}

/// Refuse an I/O once the deadline has passed.
pub fn check() -> Result<(), Error> {
    if now() < DEADLINE.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(Error::Io)
    }
}

/// Fence until the first renewal: a backend with a pool serves nothing before its lease.
pub fn arm() {
    DEADLINE.store(0, Ordering::Release);
}

/// Allow I/O until `ttl` less `margin` after `sent`, the time the acknowledged renewal
/// was sent (the lease runs from when etcd received it, which is later).
pub fn renewed(sent: u64, ttl: Duration, margin: Duration) {
    let until = sent.saturating_add(ttl.saturating_sub(margin).as_nanos() as u64);
    if !EXPIRED.load(Ordering::Acquire) {
        DEADLINE.store(until, Ordering::Release);
    }
}

/// The lease expired: fence for good (only a restart, with a new registration, serves
/// again).
pub fn expired() {
    EXPIRED.store(true, Ordering::Release);
    DEADLINE.store(0, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test owns the process-wide deadline; the others in this binary never arm it.
    #[test]
    fn the_deadline_passes_with_the_clock_and_an_expiry_is_final() {
        assert_eq!(check(), Ok(()), "without a lease nothing is fenced");
        arm();
        assert_eq!(
            check(),
            Err(Error::Io),
            "armed, nothing runs before a renewal"
        );
        renewed(
            now(),
            Duration::from_millis(300),
            Duration::from_millis(100),
        );
        assert_eq!(check(), Ok(()));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(check(), Err(Error::Io), "200 ms after the renewal was sent");
        renewed(now(), Duration::from_secs(10), Duration::from_secs(1));
        assert_eq!(check(), Ok(()));
        expired();
        renewed(now(), Duration::from_secs(10), Duration::from_secs(1));
        assert_eq!(check(), Err(Error::Io), "an expired lease is not renewed");
        DEADLINE.store(u64::MAX, Ordering::Release);
        EXPIRED.store(false, Ordering::Release);
    }
}
