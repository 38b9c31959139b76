//! The replay of a resumed ring: the chains its inflight record names as taken and not
//! completed, done again one at a time in the order they were taken, each through the
//! same parsing, admission and translation as a chain just popped.

use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::GuestAddress;

use super::execute::serve_chain;
use super::Round;
use crate::vhost::inflight::descriptors;

impl Round<'_, '_> {
    /// Serve the chains at `heads` in order, and signal the guest.
    pub(super) fn replay(&mut self, heads: &[u16]) {
        let (table, size) = {
            let vring = self.vring.get_ref();
            let queue = vring.get_queue();
            (GuestAddress(queue.desc_table()), queue.size())
        };
        for &head in heads {
            let chain = descriptors(self.memory, table, size, head);
            let used = serve_chain(self.queue, chain, self.memory, &mut *self.translator);
            self.used(head, used);
        }
        if !heads.is_empty() {
            eprintln!(
                "vbd-backend: {}: ring {} replayed {} requests that were in flight",
                self.queue.target.name,
                self.queue.ring,
                heads.len()
            );
        }
        self.signal();
    }
}
