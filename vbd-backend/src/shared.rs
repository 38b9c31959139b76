//! What every thread of the backend shares: the VBD table, the disks, and whether the
//! backend is stopping. A leaf: the sockets and the threads that serve them depend on it,
//! it depends on none of them.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::disks::Disks;
use crate::vbd::Table;

/// What every thread shares: the VBD table and the disks are the only shared state of the
/// data path.
pub struct Shared {
    pub table: &'static Table,
    pub disks: Disks,
    /// Virtqueues (and queue threads) per vhost-user-blk device.
    pub queues: u16,
    /// This start's identifier, reported in every Ready notice: records made under
    /// another start describe VBDs that a restart took away.
    pub start_id: u64,
    /// The etcd revision of the host's registration in a shared pool, which a successor
    /// taking the VBDs over must find unbroken.
    pub registration: Option<i64>,
    stopping: AtomicBool,
    /// Whether another process took over: queue threads pop nothing more.
    handed_over: AtomicBool,
}

impl Shared {
    pub fn new(
        table: &'static Table,
        disks: Disks,
        queues: u16,
        start_id: u64,
        registration: Option<i64>,
    ) -> Shared {
        Shared {
            table,
            disks,
            queues,
            start_id,
            registration,
            stopping: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
        }
    }

    /// Whether the backend is stopping: queue threads fail the requests they have not
    /// started.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Whether a new process took over the VBDs: the requests not yet taken from a ring are
    /// left in it for that process ([`crate::takeover`]).
    pub fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Acquire)
    }

    pub fn hand_over(&self) {
        self.handed_over.store(true, Ordering::Release);
    }
}
