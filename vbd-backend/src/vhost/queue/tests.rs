//! The queue thread against a hand-made ring: fencing, refusals, and what a guest cannot break.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::execute::serve_chain;
use super::*;

use crate::disks::tests::{a_disk_on_a_pipe, two_disks};
use crate::shared::Shared;
use crate::vbd::tests::{create, empty_table, xvda};
use shared_abi::DOM0;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};

/// `dom1/xvda.sock`, writable, serving `vd:1`: the first 8 sectors of `disks`' first
/// disk, in a fresh table.
fn vd_1_on(disks: crate::disks::Disks) -> DeviceTarget {
    let table = empty_table();
    let vbd = create(table, xvda(1), &[(0, 0, 8)], true, "vd:1");
    DeviceTarget {
        shared: Arc::new(Shared::new(table, disks, 1, 1, None)),
        vbd,
        writable: true,
        serial: "vd:1".into(),
        name: "dom1/xvda.sock".into(),
    }
}

/// Where a hand-made split virtqueue of 16 entries and its one read request live.
const DESCRIPTORS: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const HEADER: u64 = 0x3000;
const STATUS: u64 = 0x3100;
const DATA: u64 = 0x4000;

/// A ring of 16 entries holding one chain: a read of sector 0 into 512 bytes at `DATA`.
fn a_ring_with_one_read(memory: &GuestMemoryAtomic<Mapped>) -> VringRwLock<Memory> {
    let guest = memory.memory();
    let descriptors = [
        (HEADER, 16, VRING_DESC_F_NEXT, 1u16),
        (DATA, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2),
        (STATUS, 1, VRING_DESC_F_WRITE, 0),
    ];
    for (index, (address, length, flags, next)) in descriptors.into_iter().enumerate() {
        let at = DESCRIPTORS + 16 * index as u64;
        guest.write_obj(address, GuestAddress(at)).unwrap();
        guest
            .write_obj(length as u32, GuestAddress(at + 8))
            .unwrap();
        guest
            .write_obj(flags as u16, GuestAddress(at + 12))
            .unwrap();
        guest.write_obj(next, GuestAddress(at + 14)).unwrap();
    }
    let mut header = VIRTIO_BLK_T_IN.to_le_bytes().to_vec();
    header.extend_from_slice(&[0; 12]);
    guest.write_slice(&header, GuestAddress(HEADER)).unwrap();
    guest.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    // The avail ring: no flags, one entry, chain 0.
    guest.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
    guest.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
    let vring = VringRwLock::new(memory.clone(), QUEUE_SIZE).unwrap();
    vring.set_queue_size(16);
    vring.set_queue_info(DESCRIPTORS, AVAIL, USED).unwrap();
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    vring
}

/// Offer `heads` after those already in the avail ring (no flags, so every chain is
/// wanted back as soon as it is used).
fn offer(memory: &GuestMemoryAtomic<Mapped>, heads: &[u16]) {
    let guest = memory.memory();
    let mut index: u16 = guest.read_obj(GuestAddress(AVAIL + 2)).unwrap();
    for &head in heads {
        let slot = u64::from(index % 16);
        guest
            .write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot))
            .unwrap();
        index = index.wrapping_add(1);
    }
    guest.write_obj(index, GuestAddress(AVAIL + 2)).unwrap();
}

/// What one attempt saw: whether the delete's fence had passed while the read was held
/// in flight, what serving the ring returned, and the read's status and first byte once
/// it was let go.
struct Seen {
    passed_while_in_flight: bool,
    served: io::Result<()>,
    status: u8,
    first_byte: u8,
}

/// Serve one read from a disk on a pipe on the ring path, with `then` offered after it in
/// the same batch, delete the VBD while the read waits for the pipe, then let the read
/// finish. (Only the ring can read a pipe at an offset; `pread` is `ESPIPE`, so the path
/// without io_uring is not tested this way.) `after` runs with the worker once it is done.
fn delete_during_a_read_on_the_ring<R>(
    then: &[u16],
    after: impl FnOnce(&mut QueueWorker, &QueueTarget<'_>, &VringRwLock<Memory>, &Memory) -> R,
) -> (Seen, R) {
    let (disks, mut pipe) = a_disk_on_a_pipe();
    let target = vd_1_on(disks);
    let table = target.shared.table;
    let resumed = ResumedRings::default();
    let memory =
        GuestMemoryAtomic::new(Mapped::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
    let memory_table = MemoryTable::new(memory.clone());
    let queue = QueueTarget {
        target: &target,
        resumed: &resumed,
        table: &memory_table,
        inflight: &Inflight::new(1),
        ring: 0,
    };
    let vring = a_ring_with_one_read(&memory);
    offer(&memory, then);
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            let mut worker = QueueWorker::new(&target, 0);
            assert!(worker.ring.is_some(), "this kernel gives an io_uring");
            let served = worker.serve(&queue, &vring, &memory.memory());
            (worker, served)
        });
        // Popped, and then (as long as a thread takes to translate and submit) in flight.
        let deadline = Instant::now() + Duration::from_secs(10);
        while vring.get_ref().get_queue().next_avail() == 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(100));
        let removal = table.delete(DOM0, xvda(1)).unwrap();
        let passed_while_in_flight = removal.fence.is_complete();
        // Let the read go before any assertion, so a failure cannot leave it waiting.
        pipe.write_all(&[0x5a; 512]).unwrap();
        assert_ne!(
            vring.get_ref().get_queue().next_avail(),
            0,
            "the queue thread never popped"
        );
        let (mut worker, served) = server.join().unwrap();
        assert!(removal.fence.is_complete(), "the read has completed");
        let guest = memory.memory();
        let seen = Seen {
            passed_while_in_flight,
            served,
            status: guest.read_obj(GuestAddress(STATUS)).unwrap(),
            first_byte: guest.read_obj(GuestAddress(DATA)).unwrap(),
        };
        let later = after(&mut worker, &queue, &vring, &memory);
        (seen, later)
    })
}

/// Run `attempt` until the queue thread translated its read before the delete (it may be
/// descheduled for the 100 ms the test gives it), and check that the read got the disk's
/// bytes and held the delete's fence until then. Returns what that attempt saw after.
fn until_translated_before_the_delete<R>(mut attempt: impl FnMut() -> (Seen, R)) -> R {
    for _ in 0..3 {
        let (seen, later) = attempt();
        if seen.status == VIRTIO_BLK_S_IOERR as u8 {
            // The delete came first: the read was refused, as it must be. Again.
            assert!(seen.passed_while_in_flight);
            continue;
        }
        assert!(
            !seen.passed_while_in_flight,
            "the delete's fence passed while a read it had to wait for was in flight"
        );
        assert_eq!(
            (seen.status, seen.first_byte),
            (VIRTIO_BLK_S_OK as u8, 0x5a),
            "the read got the disk's bytes"
        );
        assert_eq!(seen.served.map_err(|error| error.to_string()), Ok(()));
        return later;
    }
    panic!("the queue thread never translated its read within 100 ms of popping it");
}

#[test]
fn a_delete_is_not_answered_while_a_read_translated_before_it_is_in_flight_on_the_ring() {
    until_translated_before_the_delete(|| delete_during_a_read_on_the_ring(&[], |_, _, _, _| {}));
}

#[test]
fn a_head_past_the_queue_neither_releases_a_read_in_flight_nor_stops_the_queue() {
    let (served, used, last_length, status) = until_translated_before_the_delete(|| {
        delete_during_a_read_on_the_ring(&[0xffff, 16], |worker, queue, vring, memory| {
            // The queue goes on: the next read is answered (refused: its VBD is gone).
            let guest = memory.memory();
            guest.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            offer(memory, &[0]);
            let served = worker.serve(queue, vring, &guest);
            let used: u16 = guest.read_obj(GuestAddress(USED + 2)).unwrap();
            let last = USED + 4 + 8 * u64::from(used.wrapping_sub(1) % 16);
            let last_length: u32 = guest.read_obj(GuestAddress(last + 4)).unwrap();
            let status: u8 = guest.read_obj(GuestAddress(STATUS)).unwrap();
            (
                served.map_err(|error| error.to_string()),
                used,
                last_length,
                status,
            )
        })
    });
    assert_eq!(served, Ok(()));
    // Only the two reads are in the used ring: the bad heads cannot be named there.
    assert_eq!(
        (used, last_length, status),
        (2, 1, VIRTIO_BLK_S_IOERR as u8)
    );
}

#[test]
fn requests_once_stopping_fail_and_touch_nothing() {
    let (_directory, disks) = two_disks();
    let target = vd_1_on(disks);
    let (table, shared) = (target.shared.table, target.shared.clone());
    let resumed = ResumedRings::default();
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let memory_table = MemoryTable::new(GuestMemoryAtomic::new(memory.clone()));
    let queue = QueueTarget {
        target: &target,
        resumed: &resumed,
        table: &memory_table,
        inflight: &Inflight::new(1),
        ring: 0,
    };
    let mut header = VIRTIO_BLK_T_OUT.to_le_bytes().to_vec();
    header.extend_from_slice(&[0; 12]);
    memory.write_slice(&header, GuestAddress(0x100)).unwrap();
    let chain = || {
        vec![
            Descriptor::new(0x100, 16, 0, 0),
            Descriptor::new(0x1000, 512, 0, 0),
            Descriptor::new(0x80, 1, VRING_DESC_F_WRITE as u16, 0),
        ]
    };
    let status = || memory.read_obj::<u8>(GuestAddress(0x80)).unwrap();
    let on_disk = || {
        let mut sector = [0u8; 512];
        shared
            .disks
            .iter()
            .next()
            .unwrap()
            .read_exact_at(&mut sector, 0)
            .unwrap();
        sector[0]
    };
    let mut translator = Translator::new(table);
    memory
        .write_slice(&[0xab; 512], GuestAddress(0x1000))
        .unwrap();
    assert_eq!(serve_chain(&queue, chain(), &memory, &mut translator), 1);
    assert_eq!((status(), on_disk()), (VIRTIO_BLK_S_OK as u8, 0xab));

    shared.stop();
    memory.write_obj(0xffu8, GuestAddress(0x80)).unwrap();
    assert_eq!(serve_chain(&queue, chain(), &memory, &mut translator), 1);
    assert_eq!((status(), on_disk()), (VIRTIO_BLK_S_IOERR as u8, 0xab));
}

#[test]
fn write_zeroes_go_in_steps_across_extents_and_a_range_past_the_end_changes_nothing() {
    let (_directory, disks) = two_disks();
    let table = empty_table();
    // 4800 sectors: hda 1000..4000, then hdb 100..1900.
    let vbd = create(
        table,
        xvda(1),
        &[(0, 1000, 3000), (1, 100, 1800)],
        true,
        "vd:1",
    );
    let target = DeviceTarget {
        shared: Arc::new(Shared::new(table, disks, 1, 1, None)),
        vbd,
        writable: true,
        serial: "vd:1".into(),
        name: "dom1/xvda.sock".into(),
    };
    let shared = target.shared.clone();
    let resumed = ResumedRings::default();
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let memory_table = MemoryTable::new(GuestMemoryAtomic::new(memory.clone()));
    let queue = QueueTarget {
        target: &target,
        resumed: &resumed,
        table: &memory_table,
        inflight: &Inflight::new(1),
        ring: 0,
    };
    let disk = |index: usize| shared.disks.iter().nth(index).unwrap();
    for index in 0..2 {
        disk(index)
            .write_all_at(&vec![0xee; 4096 * 512], 0)
            .unwrap();
    }
    let zeroes = |sector: u64, count: u32| {
        let mut header = virtio_bindings::virtio_blk::VIRTIO_BLK_T_WRITE_ZEROES
            .to_le_bytes()
            .to_vec();
        header.extend_from_slice(&[0; 12]);
        memory.write_slice(&header, GuestAddress(0x100)).unwrap();
        let mut segment = sector.to_le_bytes().to_vec();
        segment.extend_from_slice(&count.to_le_bytes());
        segment.extend_from_slice(&0u32.to_le_bytes());
        memory.write_slice(&segment, GuestAddress(0x200)).unwrap();
        let chain = vec![
            Descriptor::new(0x100, 16, 0, 0),
            Descriptor::new(0x200, 16, 0, 0),
            Descriptor::new(0x80, 1, VRING_DESC_F_WRITE as u16, 0),
        ];
        let mut translator = Translator::new(table);
        serve_chain(&queue, chain, &memory, &mut translator);
        memory.read_obj::<u8>(GuestAddress(0x80)).unwrap()
    };
    let on_disk = |index: usize| {
        let mut bytes = vec![0u8; 4096 * 512];
        disk(index).read_exact_at(&mut bytes, 0).unwrap();
        bytes
    };
    // One sector past the end: refused before the first step.
    assert_eq!(zeroes(10, 4800 - 10 + 1), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(
        (on_disk(0), on_disk(1)),
        (vec![0xee; 4096 * 512], vec![0xee; 4096 * 512])
    );
    // Sectors 10..4790 of the VBD: three steps, across the boundary of the extents.
    assert_eq!(zeroes(10, 4780), VIRTIO_BLK_S_OK as u8);
    let mut first = vec![0xee; 4096 * 512];
    first[(1010 * 512)..(4000 * 512)].fill(0);
    let mut second = vec![0xee; 4096 * 512];
    second[(100 * 512)..(1890 * 512)].fill(0);
    assert!(
        on_disk(0) == first,
        "hda holds zeros exactly where the VBD's extent is"
    );
    assert!(
        on_disk(1) == second,
        "hdb holds zeros exactly where the VBD's extent is"
    );
}
