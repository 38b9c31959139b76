//! The descriptors of a chain named by its head alone, as a replay needs them: virtio-queue
//! yields chains only as it pops them from the avail ring (its constructor is private), and
//! a request in flight across a restart may no longer be in the avail ring's window.
//!
//! The walk has virtio-queue's bounds: at most the table's size in steps, one level of
//! indirect table whose length is a whole number of descriptors, no nested indirection,
//! and it stops at the first descriptor it cannot read. What it yields is then parsed and
//! checked like any popped chain.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Bytes of one descriptor.
const DESCRIPTOR_BYTES: u64 = 16;

/// The descriptors of the chain at `head` of the table at `table` of `size` descriptors.
pub fn descriptors<M: GuestMemoryBackend>(
    memory: &M,
    table: GuestAddress,
    size: u16,
    head: u16,
) -> Vec<Descriptor> {
    let mut chain = Vec::new();
    let (mut table, mut size, mut next) = (table, size, head);
    let mut steps = size;
    let mut indirect = false;
    while steps > 0 && next < size {
        let Some(descriptor) = table
            .0
            .checked_add(u64::from(next) * DESCRIPTOR_BYTES)
            .and_then(|address| memory.read_obj::<Descriptor>(GuestAddress(address)).ok())
        else {
            break;
        };
        if descriptor.refers_to_indirect_table() {
            let entries = u64::from(descriptor.len()) / DESCRIPTOR_BYTES;
            if indirect
                || u64::from(descriptor.len()) % DESCRIPTOR_BYTES != 0
                || entries > u64::from(u16::MAX)
            {
                break;
            }
            indirect = true;
            (table, size, next) = (descriptor.addr(), entries as u16, 0);
            steps = size;
            continue;
        }
        chain.push(descriptor);
        if !descriptor.has_next() {
            break;
        }
        next = descriptor.next();
        steps -= 1;
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
    use vm_memory::GuestMemoryMmap;

    fn memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn put(memory: &GuestMemoryMmap<()>, at: u64, index: u16, descriptor: Descriptor) {
        memory
            .write_obj(
                descriptor,
                GuestAddress(at + u64::from(index) * DESCRIPTOR_BYTES),
            )
            .unwrap();
    }

    #[test]
    fn a_chain_through_an_indirect_table_is_walked_in_order() {
        let memory = memory();
        let next = VRING_DESC_F_NEXT as u16;
        put(&memory, 0x1000, 3, Descriptor::new(0x2000, 16, next, 5));
        put(
            &memory,
            0x1000,
            5,
            Descriptor::new(0x3000, 48, VRING_DESC_F_INDIRECT as u16, 0),
        );
        put(&memory, 0x3000, 0, Descriptor::new(0x4000, 512, next, 2));
        put(&memory, 0x3000, 2, Descriptor::new(0x5000, 1, 0, 0));
        let chain = descriptors(&memory, GuestAddress(0x1000), 8, 3);
        let addresses: Vec<u64> = chain.iter().map(|d| d.addr().0).collect();
        assert_eq!(addresses, vec![0x2000, 0x4000, 0x5000]);
    }

    #[test]
    fn a_loop_a_nested_table_and_a_head_past_the_table_end_the_walk() {
        let memory = memory();
        let next = VRING_DESC_F_NEXT as u16;
        put(&memory, 0x1000, 0, Descriptor::new(0x2000, 16, next, 1));
        put(&memory, 0x1000, 1, Descriptor::new(0x2000, 16, next, 0));
        assert_eq!(descriptors(&memory, GuestAddress(0x1000), 4, 0).len(), 4);
        assert!(descriptors(&memory, GuestAddress(0x1000), 4, 4).is_empty());
        let indirect = VRING_DESC_F_INDIRECT as u16;
        put(&memory, 0x1000, 2, Descriptor::new(0x3000, 16, indirect, 0));
        put(&memory, 0x3000, 0, Descriptor::new(0x3000, 16, indirect, 0));
        assert!(descriptors(&memory, GuestAddress(0x1000), 4, 2).is_empty());
        put(&memory, 0x1000, 3, Descriptor::new(0x3000, 17, indirect, 0));
        assert!(descriptors(&memory, GuestAddress(0x1000), 4, 3).is_empty());
    }
}
