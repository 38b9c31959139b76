//! One tenant cannot stall another's changes: while a hostile guest keeps its queue full of
//! the largest reads the backend accepts, on a disk that does not answer them, an unrelated
//! VBD is detached and attached again and again, each time promptly. Only a change to the
//! hostile guest's own VBD waits for those reads, and once it returns, what the reads put in
//! the guest's buffers is what the disk held before, never the next tenant's bytes.

mod common;
mod faulty_disk;
#[path = "common/hostile_driver.rs"]
mod hostile_driver;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{hda, hdb, label, pattern, xvda, Backend, IMAGE_BYTES};
use faulty_disk::FaultyDisk;
use host_tools::hypervisor::Hypervisor;
use hostile_driver::{
    Driver, IOERR, OK, QUEUE_SIZE, VIRTIO_BLK_T_IN, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use shared_abi::wire::Extent;
use shared_abi::{Mode, SharingLevel};
use vbd_backend::vhost::request::MAX_TRANSFER_BYTES;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// The hostile guest's requests: one per descriptor of its queue (each an indirect table),
/// so that every descriptor is taken and the queue stays full while the disk holds them.
const CHAINS: u16 = QUEUE_SIZE;
/// Each request reads the most the backend accepts in one request.
const TRANSFER_BYTES: u64 = MAX_TRANSFER_BYTES;
/// Where the hostile guest keeps each request's indirect table, header and status byte:
/// past the rings and the pieces the driver's own requests use.
const TABLES: u64 = 0x4000;
const HEADERS: u64 = 0x5000;
const STATUSES: u64 = 0x6000;
/// Request `n`'s data buffer, 4 MiB of its own, from 1 MiB up.
const BUFFERS: u64 = 1 << 20;
const GUEST_MEMORY_BYTES: u64 = BUFFERS + CHAINS as u64 * TRANSFER_BYTES;
/// The unrelated VBD: domain 2's xvda, the first MiB of hdb.
const BYSTANDER_SECTORS: u64 = 2048;
const CYCLES: usize = 100;
/// Generous bounds, for slow machines: the held reads are held far longer than any of them.
const CYCLE_LIMIT: Duration = Duration::from_secs(5);
const LOOP_LIMIT: Duration = Duration::from_secs(60);
/// How long a change to the hostile guest's VBD is watched for not returning early.
const HELD_WATCH: Duration = Duration::from_secs(2);

/// Read request `n` of the hostile guest: sectors `n * 4 MiB ..` of its VBD into its own
/// buffer, through an indirect table of header, data and status.
fn offer_largest_reads(driver: &mut Driver) {
    for chain in 0..CHAINS {
        let table = TABLES + 0x40 * u64::from(chain);
        let header = HEADERS + 0x10 * u64::from(chain);
        let status = STATUSES + u64::from(chain);
        let sector = u64::from(chain) * TRANSFER_BYTES / 512;
        let mut header_bytes = VIRTIO_BLK_T_IN.to_le_bytes().to_vec();
        header_bytes.extend_from_slice(&0u32.to_le_bytes());
        header_bytes.extend_from_slice(&sector.to_le_bytes());
        driver
            .memory
            .write_slice(&header_bytes, GuestAddress(header))
            .unwrap();
        driver
            .memory
            .write_obj(0xffu8, GuestAddress(status))
            .unwrap();
        driver.raw_descriptor_at(table, 0, header, 16, VIRTQ_DESC_F_NEXT, 1);
        driver.raw_descriptor_at(
            table,
            1,
            buffer(chain),
            TRANSFER_BYTES as u32,
            VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
            2,
        );
        driver.raw_descriptor_at(table, 2, status, 1, VIRTQ_DESC_F_WRITE, 0);
        driver.raw_descriptor(chain, table, 48, VIRTQ_DESC_F_INDIRECT, 0);
    }
    let heads: Vec<u16> = (0..CHAINS).collect();
    driver.offer(&heads);
    driver.kick();
}

fn buffer(chain: u16) -> u64 {
    BUFFERS + u64::from(chain) * TRANSFER_BYTES
}

/// Run `work` on a thread of its own, so that a change that never returns fails the test
/// instead of hanging it; the receiver hears each result `work` sends.
fn on_a_thread<T: Send + 'static>(
    work: impl FnOnce(mpsc::Sender<T>) + Send + 'static,
) -> mpsc::Receiver<T> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || work(sender));
    receiver
}

/// Detach domain 2's VBD and attach it again, `CYCLES` times; each cycle's result is sent,
/// its error as the message `vdisk` would print.
fn detach_and_attach_again(mut hypervisor: Hypervisor, results: &mpsc::Sender<Result<(), String>>) {
    let extent = Extent::new(hdb(), 0, BYSTANDER_SECTORS).unwrap();
    for _ in 0..CYCLES {
        let cycle = hypervisor.delete(2, xvda()).and_then(|()| {
            hypervisor.create(2, xvda(), Mode::READ | Mode::WRITE, label("vd:2"))?;
            hypervisor.set_extents(2, xvda(), &[extent], SharingLevel::ReadersOnly)
        });
        if results
            .send(cycle.map_err(|error| error.to_string()))
            .is_err()
        {
            return;
        }
    }
}

#[test]
fn a_guest_holding_its_queue_full_of_the_largest_reads_stalls_no_other_vbds_changes() {
    let disk = FaultyDisk::mount(IMAGE_BYTES);
    let old_bytes = pattern(IMAGE_BYTES as usize, 0x5a);
    OpenOptions::new()
        .write(true)
        .open(disk.path())
        .unwrap()
        .write_all_at(&old_bytes, 0)
        .unwrap();
    // The backend opens the image after it was written: no page of it is cached, every read
    // of it reaches the filesystem.
    let backend = Backend::start_with(Some(disk.path()), None, &[]);
    let bystander_bytes = pattern(BYSTANDER_SECTORS as usize * 512, 0x77);
    backend.write_image("hdb", 0, &bystander_bytes);
    let rw = Mode::READ | Mode::WRITE;
    let whole_hda = Extent::new(hda(), 0, IMAGE_BYTES / 512).unwrap();
    common::attach_xvda(&backend, 1, rw, "vd:1", &[whole_hda]);
    let bystander_extent = Extent::new(hdb(), 0, BYSTANDER_SECTORS).unwrap();
    common::attach_xvda(&backend, 2, rw, "vd:2", &[bystander_extent]);

    let mut hostile = Driver::connect_with_memory(
        &backend.socket(1, "xvda"),
        0,
        EventFd::new(0).unwrap(),
        GUEST_MEMORY_BYTES as usize,
    );
    disk.hold_reads();
    offer_largest_reads(&mut hostile);
    disk.wait_for_a_held_read();
    assert_eq!(hostile.used_index(), 0, "no read was answered while held");

    let client = backend.hypervisor();
    let cycles = on_a_thread(move |results| detach_and_attach_again(client, &results));
    let loop_deadline = Instant::now() + LOOP_LIMIT;
    for cycle in 0..CYCLES {
        match cycles.recv_timeout(CYCLE_LIMIT) {
            Ok(result) => assert_eq!(result, Ok(()), "cycle {cycle}"),
            Err(_) => panic!(
                "cycle {cycle}: detaching and attaching domain 2's VBD took over {CYCLE_LIMIT:?} while domain 1's reads were held"
            ),
        }
        assert!(
            Instant::now() < loop_deadline,
            "{CYCLES} cycles took over {LOOP_LIMIT:?}"
        );
    }
    // The attached-again VBD serves its guest, beside the reads still held.
    let mut bystander = Driver::connect(&backend.socket(2, "xvda"), 0);
    assert_eq!(
        bystander.read(0, 4096, 512),
        (OK, bystander_bytes[..4096].to_vec())
    );
    assert_eq!(hostile.used_index(), 0, "the reads are still held");

    // Deleting the hostile guest's own VBD waits for its reads.
    let mut owner = backend.hypervisor();
    let deleted = on_a_thread(move |result| {
        drop(result.send(owner.delete(1, xvda()).map_err(|error| error.to_string())))
    });
    assert_eq!(
        deleted.recv_timeout(HELD_WATCH),
        Err(mpsc::RecvTimeoutError::Timeout),
        "the delete returned while the VBD's reads were held"
    );
    // The new tenant's bytes are ready before the release, so that they are written the
    // moment the delete returns: a read still to land then would carry them.
    let new_bytes = pattern(IMAGE_BYTES as usize, 0xa5);
    disk.release_reads();
    assert_eq!(deleted.recv_timeout(Duration::from_secs(20)), Ok(Ok(())));

    // The extents go to a new tenant, whose bytes dom0 writes over them.
    OpenOptions::new()
        .write(true)
        .open(disk.path())
        .unwrap()
        .write_all_at(&new_bytes, 0)
        .unwrap();
    let mut heads: Vec<u32> = hostile
        .answered(CHAINS)
        .into_iter()
        .map(|(head, length)| {
            assert_eq!(length, TRANSFER_BYTES as u32 + 1, "read {head}");
            head
        })
        .collect();
    heads.sort_unstable();
    assert_eq!(heads, (0..u32::from(CHAINS)).collect::<Vec<_>>());
    for chain in 0..CHAINS {
        let status: u8 = hostile
            .memory
            .read_obj(GuestAddress(STATUSES + u64::from(chain)))
            .unwrap();
        assert_eq!(status, OK, "read {chain}");
        let mut read = vec![0u8; TRANSFER_BYTES as usize];
        hostile
            .memory
            .read_slice(&mut read, GuestAddress(buffer(chain)))
            .unwrap();
        let start = usize::from(chain) * TRANSFER_BYTES as usize;
        assert!(
            read == old_bytes[start..start + TRANSFER_BYTES as usize],
            "read {chain} holds other bytes than the disk had before the delete"
        );
    }
    // The queue goes on answering: its VBD is gone, so with an error.
    assert_eq!(hostile.read(0, 4096, 512).0, IOERR);
}
