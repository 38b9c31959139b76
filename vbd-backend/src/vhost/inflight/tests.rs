//! The inflight region: its bytes where the specification puts them, a kill simulated after
//! every store of taking and completing a chain, the replay order, and regions a VMM hands
//! over that are refused.

use std::os::fd::OwnedFd;

use super::region::{Layout, Refused, Region, Stamp};
use super::{Inflight, Start, PAYLOAD_BYTES};

const LAYOUT: Layout = Layout {
    queues: 2,
    queue_size: 128,
};

fn read_at(fd: &OwnedFd, offset: u64, length: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; length];
    let read = rustix::io::pread(fd, &mut bytes, offset).unwrap();
    assert_eq!(read, length);
    bytes
}

fn payload(mmap_size: u64, offset: u64, layout: Layout) -> [u8; PAYLOAD_BYTES] {
    let mut payload = [0u8; PAYLOAD_BYTES];
    payload[..8].copy_from_slice(&mmap_size.to_le_bytes());
    payload[8..16].copy_from_slice(&offset.to_le_bytes());
    payload[16..18].copy_from_slice(&layout.queues.to_le_bytes());
    payload[18..20].copy_from_slice(&layout.queue_size.to_le_bytes());
    payload
}

const STAMP: Stamp = Stamp {
    digest: 0x1234,
    size_sectors: 8192,
    extents: 2,
};

#[test]
fn the_records_lie_where_the_specification_puts_them() {
    assert_eq!(LAYOUT.queue_bytes(), 2112, "16 + 128 * 16, to 64 bytes");
    assert_eq!(LAYOUT.bytes(), 2 * 2112 + 64);
    let (region, fd) = Region::create(LAYOUT).unwrap();
    let record = region.queue(1).unwrap();
    record.start(128);
    record.take(5, 7);
    let queue = 2112u64;
    let header = read_at(&fd, queue, 16);
    assert_eq!(u16::from_le_bytes([header[8], header[9]]), 1, "version");
    assert_eq!(
        u16::from_le_bytes([header[10], header[11]]),
        128,
        "desc_num"
    );
    let desc = read_at(&fd, queue + 16 + 5 * 16, 16);
    assert_eq!(desc[0], 1, "inflight");
    assert_eq!(
        u64::from_le_bytes(desc[8..].try_into().unwrap()),
        7,
        "counter"
    );
    record.publishing(5);
    record.published(5, 1);
    let header = read_at(&fd, queue, 16);
    assert_eq!(
        u16::from_le_bytes([header[12], header[13]]),
        5,
        "last_batch_head"
    );
    assert_eq!(u16::from_le_bytes([header[14], header[15]]), 1, "used_idx");
    assert_eq!(read_at(&fd, queue + 16 + 5 * 16, 1), [0]);
    assert!(region.queue(2).is_none());
    assert_eq!(region.stamp(), None);
    region.set_stamp(STAMP);
    assert_eq!(region.stamp(), Some(STAMP));
    assert_eq!(read_at(&fd, 2 * 2112, 8), b"vbdinfl1");
}

/// The stores of taking chain 9 and completing it, the used ring's index moving between
/// them as virtio-queue's `add_used` moves it; chain 4 stays in flight throughout.
#[test]
fn a_kill_after_any_store_replays_exactly_the_chains_not_published() {
    let steps = 5;
    for killed_after in 0..=steps {
        let (region, _fd) = Region::create(LAYOUT).unwrap();
        let record = region.queue(0).unwrap();
        record.start(128);
        record.take(4, 0);
        let mut ring_used = 0u16;
        for step in 0..killed_after {
            match step {
                0 => record.take(9, 1),
                1 => record.publishing(9),
                2 => ring_used = 1,
                3 => record.published(9, ring_used),
                _ => {}
            }
        }
        let (replay, next) = record.recover(ring_used);
        let published = killed_after >= 3;
        let taken = killed_after >= 1;
        let expected: Vec<u16> = if taken && !published {
            vec![4, 9]
        } else {
            vec![4]
        };
        assert_eq!(replay, expected, "killed after {killed_after} stores");
        assert_eq!(
            next,
            expected.len() as u64,
            "the counter after the last taken"
        );
        // Recovery is idempotent: a second restart finds the same.
        assert_eq!(record.recover(ring_used).0, expected);
    }
}

#[test]
fn the_chains_in_flight_replay_in_the_order_they_were_taken() {
    let (region, _fd) = Region::create(LAYOUT).unwrap();
    let record = region.queue(0).unwrap();
    record.start(128);
    for (counter, head) in [(10u64, 9u16), (11, 3), (12, 7), (13, 100)] {
        record.take(head, counter);
    }
    record.publishing(3);
    record.published(3, 1);
    assert_eq!(record.recover(1), (vec![9, 7, 100], 14));
    // A head past the ring is never recorded.
    record.take(128, 14);
    assert_eq!(record.recover(1).0, vec![9, 7, 100]);
}

#[test]
fn a_region_a_vmm_hands_over_is_checked_before_it_is_used() {
    let (_region, fd) = Region::create(LAYOUT).unwrap();
    let size = LAYOUT.bytes() as u64;
    assert_eq!(
        Region::open(&fd, 0, size + 64, LAYOUT).err(),
        Some(Refused::Size {
            declared: size + 64,
            expected: LAYOUT.bytes()
        })
    );
    assert_eq!(
        Region::open(&fd, 4096, size, LAYOUT).err(),
        Some(Refused::Short {
            file: size,
            needed: size + 4096
        })
    );
    assert_eq!(
        Region::open(&fd, u64::MAX, size, LAYOUT).err(),
        Some(Refused::Offset(u64::MAX))
    );
    let plain = tempfile::tempfile().unwrap();
    plain.set_len(size).unwrap();
    assert_eq!(
        Region::open(&OwnedFd::from(plain), 0, size, LAYOUT).err(),
        Some(Refused::Unsealed)
    );
    let smaller = Layout {
        queues: 1,
        queue_size: 128,
    };
    let (_small, small_fd) = Region::create(smaller).unwrap();
    assert_eq!(
        Region::open(&small_fd, 0, size, LAYOUT).err(),
        Some(Refused::Short {
            file: smaller.bytes() as u64,
            needed: size
        })
    );
    assert!(Region::open(&fd, 0, size, LAYOUT).is_ok());

    let inflight = Inflight::new(2);
    for (queues, queue_size) in [(0, 128), (3, 128), (2, 0), (2, 257)] {
        let layout = Layout { queues, queue_size };
        assert_eq!(
            inflight.set(&payload(size, 0, layout), Some(&fd)),
            Err(Refused::Layout(layout))
        );
    }
    assert_eq!(
        inflight.set(&payload(size, 0, LAYOUT), None),
        Err(Refused::Map("no descriptor".into()))
    );
}

#[test]
fn a_ring_starts_fresh_resumes_on_its_own_vbd_and_is_foreign_on_another() {
    let inflight = Inflight::new(2);
    // Without a region the caller decides.
    assert_eq!(
        inflight.ring_starts(0, 0, || Some(STAMP)),
        Ok(Start::Unrecorded)
    );
    let asked = payload(0, 0, LAYOUT);
    let (reply, fd) = inflight.get(&asked, STAMP).unwrap();
    let size = u64::from_le_bytes(reply[..8].try_into().unwrap());
    assert_eq!(size, LAYOUT.bytes() as u64);
    inflight.set(&reply, Some(&fd)).unwrap();
    for index in 0..2 {
        inflight.ring_size(index, 128);
    }
    // A record not started and a ring not at 0: nothing is known of it.
    assert_eq!(
        inflight.ring_starts(1, 5, || Some(STAMP)),
        Ok(Start::Unrecorded)
    );
    assert_eq!(inflight.ring_starts(0, 0, || Some(STAMP)), Ok(Start::Fresh));
    assert!(!inflight.replay_pending(0));
    inflight.ring(0).unwrap().take(17);

    // The VMM hands the same region to a restarted backend.
    let restarted = Inflight::new(2);
    restarted.set(&reply, Some(&fd)).unwrap();
    restarted.ring_size(0, 128);
    assert_eq!(
        restarted.ring_starts(0, 0, || Some(STAMP)),
        Ok(Start::Resumed)
    );
    assert!(restarted.replay_pending(0));
    let other = Stamp {
        digest: 0x999,
        ..STAMP
    };
    assert!(matches!(
        restarted.ring_starts(0, 0, || Some(other)),
        Ok(Start::Foreign(why)) if why.contains("0x0000000000000999")
    ));
    assert!(matches!(
        restarted.ring_starts(0, 0, || None),
        Ok(Start::Foreign(why)) if why.contains("no VBD")
    ));
    restarted.ring_size(0, 64);
    assert_eq!(
        restarted.ring_starts(0, 0, || Some(STAMP)),
        Err("ring 0 has 64 descriptors, its inflight record 128".to_string())
    );
    // A ring the device does not have is nobody's record.
    assert_eq!(
        restarted.ring_starts(7, 0, || Some(STAMP)),
        Ok(Start::Unrecorded)
    );
}
