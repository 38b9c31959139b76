//! The guest memory table of one connection as its queue threads see it. A queue thread
//! serves each batch under the table that was newest when it began, and pops no request
//! under a table once a newer one is published; vhost-user-backend acknowledges a new table
//! to the VMM only after [`MemoryTable::published`], which returns once no queue thread is
//! popping under an older one. So every request the guest posts after the acknowledgement is
//! popped, parsed and served under the new table (a region it adds is never a bad address),
//! while the requests popped before finish under the table they were parsed with.

use std::sync::{PoisonError, RwLock};

use vm_memory::{GuestAddressSpace, GuestMemoryLoadGuard, GuestMemoryMmap};

use super::device::Memory;

pub struct MemoryTable {
    newest: Memory,
    /// Read by a queue thread for each pop, taken to write once a newer table is published.
    popping: RwLock<()>,
}

impl MemoryTable {
    pub fn new(newest: Memory) -> MemoryTable {
        MemoryTable {
            newest,
            popping: RwLock::new(()),
        }
    }

    /// The newest table, to serve a batch under.
    pub fn newest(&self) -> GuestMemoryLoadGuard<GuestMemoryMmap<()>> {
        self.newest.memory()
    }

    /// Whether `table` is still the newest.
    pub fn is_newest(&self, table: &GuestMemoryMmap<()>) -> bool {
        // The caller holds `table`, so no newer table can have its address.
        std::ptr::eq(&*self.newest.memory(), table)
    }

    /// Pop with `pop` under `table`, unless a newer table was published: then `None`, and
    /// the caller begins again under the newer one.
    pub fn pop_under<T>(
        &self,
        table: &GuestMemoryMmap<()>,
        pop: impl FnOnce() -> Option<T>,
    ) -> Option<T> {
        let _popping = self.popping.read().unwrap_or_else(PoisonError::into_inner);
        if self.is_newest(table) {
            pop()
        } else {
            None
        }
    }

    /// A newer table was published: return once no pop under an older one is under way.
    pub fn published(&self) {
        drop(self.popping.write().unwrap_or_else(PoisonError::into_inner));
    }
}
