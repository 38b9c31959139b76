//! A thread that has just served requests looks for more for a moment before it sleeps:
//! a client that sends its next request right after a reply (a client at depth 1, or one
//! refilling its queue) then finds the thread awake, and neither side pays for a wake-up
//! and a context switch, which at depth 1 are most of a request's time (on a virtual
//! machine, a wake-up across cores is an interrupt through the hypervisor). Both data
//! paths do it: a vhost-user queue before it sleeps on its kick, an NBD connection before
//! it blocks in its receive. Bounded: a thread whose client stays quiet for [`WINDOW`] goes
//! back to sleep, and one that served nothing does not look at all, so an idle backend
//! spins nowhere. Between two looks the thread yields its core, so a client that shares
//! that core (two cores, several busy processes) runs meanwhile instead of waiting for the
//! window to end.

use std::time::{Duration, Instant};

/// How long a thread that has just been busy looks for more requests.
pub const WINDOW: Duration = Duration::from_micros(50);

/// Call `has_more` until it says yes (`true`) or [`WINDOW`] has passed (`false`).
pub fn look_for_more(has_more: impl FnMut() -> bool) -> bool {
    look_within(WINDOW, has_more)
}

/// [`look_for_more`] with any window: the tests widen it, since a loaded machine may
/// preempt the looking thread for longer than [`WINDOW`].
fn look_within(window: Duration, mut has_more: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if has_more() {
            return true;
        }
        if start.elapsed() >= window {
            return false;
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_stops_at_the_first_yes_or_after_the_window() {
        let mut asked = 0;
        assert!(look_within(Duration::from_secs(60), || {
            asked += 1;
            asked == 3
        }));
        assert_eq!(asked, 3, "asked until the first yes, no more");
        let start = Instant::now();
        assert!(
            !look_for_more(|| false),
            "a thread whose client stays quiet goes to sleep"
        );
        assert!(start.elapsed() >= WINDOW, "but only after the window");
    }
}
