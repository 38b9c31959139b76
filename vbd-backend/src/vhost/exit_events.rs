//! The exit events that stop a vhost-user daemon's queue threads, and the descriptor of each
//! that vhost-user-backend 0.24 never closes.
//!
//! `VringEpollHandler::new` (the crate's `event_loop.rs`) takes the consumer of the pair
//! `exit_event` returns with `into_raw_fd()`, adds that descriptor to its epoll set, and keeps
//! only the notifier: nothing in the crate closes the consumer again, so every connection
//! leaked one descriptor per queue thread until the process ran out. The crate is pinned to
//! 0.24.0 exactly; a version that closes the consumer itself makes [`ExitEvents`]' close a
//! second one, so an upgrade must revisit this module.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// The exit events handed to one daemon; the consumers are closed when this is dropped.
#[derive(Default)]
pub struct ExitEvents {
    /// The consumers' descriptors, which the daemon holds without owning them.
    consumers: Mutex<Vec<RawFd>>,
}

impl ExitEvents {
    /// A new exit event for a queue thread. Only the daemon may call this, once per thread,
    /// and only it may take the consumer: the descriptor is closed here later.
    pub fn create(&self) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()?;
        self.consumers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(consumer.as_raw_fd());
        Some((consumer, notifier))
    }
}

impl Drop for ExitEvents {
    fn drop(&mut self) {
        let consumers = self
            .consumers
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for descriptor in consumers.drain(..) {
            // SAFETY: `descriptor` is an eventfd that `create` opened and gave the daemon's
            // epoll handler, which turned it into a raw descriptor, registered it in its epoll
            // set and closes it nowhere (see the module's doc): it is still open, and nothing
            // else owns it. `ExitEvents` lives in the `BlockDevice`, which every epoll handler
            // holds an `Arc` of; it is dropped only once the last handler is gone, and with it
            // its thread and its epoll set, so no one uses this number again, and closing it
            // here is the only close.
            drop(unsafe { OwnedFd::from_raw_fd(descriptor) });
        }
    }
}
