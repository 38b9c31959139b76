//! dom0's NBD exports against real clients (`qemu-img`, `qemu-io`) and against a raw client
//! that sends what those never would: every refusal is an NBD error, and the connection and
//! the backend go on serving.

mod common;
mod faulty_disk;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    attach_dom0_xvda, hda, hdb, label, pattern, qemu_io, run, xvda, xvda_url, Backend, IMAGE_BYTES,
};
use faulty_disk::FaultyDisk;
use shared_abi::wire::Extent;
use shared_abi::{Mode, SharingLevel};

/// dom0's xvda over three extents, out of order and over both disks:
/// VBD sectors 0..64 are hdb 1000..1064, 64..96 are hda 5000..5032, 96..128 are hdb 10..42.
const EXTENTS: [(u32, u64, u64); 3] = [(1, 1000, 64), (0, 5000, 32), (1, 10, 32)];

fn image_name(disk: u32) -> &'static str {
    if disk == 0 {
        "hda"
    } else {
        "hdb"
    }
}

/// The VBD's bytes, read from the images in VBD order.
fn vbd_bytes_from_images(backend: &Backend) -> Vec<u8> {
    EXTENTS
        .iter()
        .flat_map(|&(disk, start, count)| {
            backend.read_image(image_name(disk), start * 512, count as usize * 512)
        })
        .collect()
}

#[test]
fn qemu_io_writes_land_at_the_translated_offsets_and_read_back() {
    let backend = Backend::start(&[]);
    attach_dom0_xvda(&backend, Mode::READ | Mode::WRITE, &EXTENTS);
    let info = run("qemu-img", &["info", "--output=json", &xvda_url(&backend)]);
    assert!(info.status.success());
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], 128 * 512);

    qemu_io(&backend, &["write -P 0xab 0 64k", "read -P 0xab 0 64k"]);
    assert_eq!(vbd_bytes_from_images(&backend), vec![0xab; 64 << 10]);
    // Nothing outside the extents changed.
    assert_eq!(backend.read_image("hdb", 999 * 512, 512), vec![0; 512]);
    assert_eq!(backend.read_image("hdb", 1064 * 512, 512), vec![0; 512]);
    assert_eq!(backend.read_image("hda", 4999 * 512, 512), vec![0; 512]);
    assert_eq!(backend.read_image("hdb", 42 * 512, 512), vec![0; 512]);

    qemu_io(
        &backend,
        &[
            "write -z 32k 16k",
            "discard 48k 16k",
            "read -P 0 32k 16k",
            "flush",
        ],
    );
    // Write-zeroes at VBD sector 64 is hda 5000; the discard left the data around it alone.
    assert_eq!(
        backend.read_image("hda", 5000 * 512, 16 << 10),
        vec![0; 16 << 10]
    );
    assert_eq!(
        backend.read_image("hdb", 1000 * 512, 32 << 10),
        vec![0xab; 32 << 10]
    );
}

#[test]
fn qemu_img_converts_into_the_export_and_compares_equal() {
    let backend = Backend::start(&[]);
    attach_dom0_xvda(&backend, Mode::READ | Mode::WRITE, &EXTENTS);
    let source = backend.work.path().join("source.raw");
    std::fs::write(&source, pattern(128 * 512, 3)).unwrap();
    let source = source.to_str().unwrap();
    assert!(run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            source,
            &xvda_url(&backend)
        ]
    )
    .status
    .success());
    assert!(run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            source,
            &xvda_url(&backend)
        ]
    )
    .status
    .success());
    assert_eq!(vbd_bytes_from_images(&backend), pattern(128 * 512, 3));
}

#[test]
fn a_read_only_export_says_so_and_refuses_writes() {
    let backend = Backend::start(&[]);
    backend.write_image("hdb", 1000 * 512, &pattern(512, 9));
    attach_dom0_xvda(&backend, Mode::READ, &EXTENTS);
    let write = run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0xcd 0 4k", &xvda_url(&backend)],
    );
    assert!(
        !write.status.success(),
        "qemu-io refuses to open a read-only export for writing"
    );
    assert_eq!(backend.read_image("hdb", 1000 * 512, 512), pattern(512, 9));
    let read = run(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read 0 4k", &xvda_url(&backend)],
    );
    assert!(read.status.success());
    // A client that ignores the flag gets EPERM, and the image is unchanged.
    let mut client = RawClient::go(&backend.socket(0, "xvda"));
    assert_eq!(client.transmission_flags & 0x2, 0x2, "NBD_FLAG_READ_ONLY");
    assert_eq!(
        client.request(1, 0, 0, 512, Some(&[0xee; 512])),
        (EPERM, vec![])
    );
    assert_eq!(client.request(4, 0, 0, 512, None).0, EPERM, "trim too");
    assert_eq!(backend.read_image("hdb", 1000 * 512, 512), pattern(512, 9));
}

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const ENOTSUP: u32 = 95;

/// A minimal NBD client for the requests real clients never send.
struct RawClient {
    stream: UnixStream,
    transmission_flags: u16,
    next_handle: u64,
}

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;

impl RawClient {
    /// Greet, and return the stream positioned at option haggling.
    fn haggle(path: &Path) -> UnixStream {
        let mut stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        assert_eq!(
            u64::from_be_bytes(greeting[8..16].try_into().unwrap()),
            IHAVEOPT
        );
        assert_eq!(u16::from_be_bytes([greeting[16], greeting[17]]), 0b11);
        stream.write_all(&3u32.to_be_bytes()).unwrap();
        stream
    }

    fn option(stream: &mut UnixStream, option: u32, data: &[u8]) {
        let mut message = IHAVEOPT.to_be_bytes().to_vec();
        message.extend_from_slice(&option.to_be_bytes());
        message.extend_from_slice(&(data.len() as u32).to_be_bytes());
        message.extend_from_slice(data);
        stream.write_all(&message).unwrap();
    }

    /// One option reply: (type, data).
    fn option_reply(stream: &mut UnixStream, option: u32) -> (u32, Vec<u8>) {
        let mut header = [0u8; 20];
        stream.read_exact(&mut header).unwrap();
        assert_eq!(
            u64::from_be_bytes(header[..8].try_into().unwrap()),
            0x0003_e889_0455_65a9
        );
        assert_eq!(
            u32::from_be_bytes(header[8..12].try_into().unwrap()),
            option
        );
        let kind = u32::from_be_bytes(header[12..16].try_into().unwrap());
        let mut data = vec![0u8; u32::from_be_bytes(header[16..20].try_into().unwrap()) as usize];
        stream.read_exact(&mut data).unwrap();
        (kind, data)
    }

    fn info_request(name: &[u8]) -> Vec<u8> {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name);
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&3u16.to_be_bytes());
        data
    }

    fn go(path: &Path) -> RawClient {
        let mut stream = Self::haggle(path);
        // The export is named as its socket.
        let name = path.file_stem().unwrap().as_encoded_bytes();
        Self::option(&mut stream, 7, &Self::info_request(name));
        let mut transmission_flags = 0;
        loop {
            let (kind, data) = Self::option_reply(&mut stream, 7);
            match kind {
                3 if data[..2] == [0, 0] => {
                    transmission_flags = u16::from_be_bytes([data[10], data[11]])
                }
                3 => {}
                1 => break,
                other => panic!("GO failed with reply {other:#x}"),
            }
        }
        RawClient {
            stream,
            transmission_flags,
            next_handle: 1,
        }
    }

    /// `NBD_CMD_DISC`: no reply, the server closes the connection.
    fn disconnect(mut self) {
        let mut message = 0x2560_9513u32.to_be_bytes().to_vec();
        message.extend_from_slice(&[0, 0, 0, 2]);
        message.extend_from_slice(&[0u8; 20]);
        self.stream.write_all(&message).unwrap();
        let mut rest = Vec::new();
        assert_eq!(self.stream.read_to_end(&mut rest).unwrap(), 0);
    }

    /// Send a request; return (error, data of a successful read).
    fn request(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        data: Option<&[u8]>,
    ) -> (u32, Vec<u8>) {
        let handle = self.next_handle;
        self.next_handle += 1;
        let mut message = 0x2560_9513u32.to_be_bytes().to_vec();
        message.extend_from_slice(&flags.to_be_bytes());
        message.extend_from_slice(&command.to_be_bytes());
        message.extend_from_slice(&handle.to_be_bytes());
        message.extend_from_slice(&offset.to_be_bytes());
        message.extend_from_slice(&length.to_be_bytes());
        message.extend_from_slice(data.unwrap_or_default());
        self.stream.write_all(&message).unwrap();
        let mut reply = [0u8; 16];
        self.stream.read_exact(&mut reply).unwrap();
        assert_eq!(
            u32::from_be_bytes(reply[..4].try_into().unwrap()),
            0x6744_6698
        );
        assert_eq!(u64::from_be_bytes(reply[8..16].try_into().unwrap()), handle);
        let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
        let mut read = Vec::new();
        if command == 0 && error == 0 {
            read.resize(length as usize, 0);
            self.stream.read_exact(&mut read).unwrap();
        }
        (error, read)
    }
}

#[test]
fn option_haggling_refuses_what_it_does_not_offer_and_goes_on() {
    let backend = Backend::start(&[]);
    attach_dom0_xvda(&backend, Mode::READ | Mode::WRITE, &EXTENTS);
    let path = backend.socket(0, "xvda");
    let mut stream = RawClient::haggle(&path);
    // Metadata contexts before structured replies: ERR_INVALID.
    let mut query = 0u32.to_be_bytes().to_vec();
    query.extend_from_slice(&1u32.to_be_bytes());
    query.extend_from_slice(&15u32.to_be_bytes());
    query.extend_from_slice(b"base:allocation");
    RawClient::option(&mut stream, 10, &query);
    assert_eq!(RawClient::option_reply(&mut stream, 10).0, (1 << 31) + 3);
    RawClient::option(&mut stream, 8, b"x");
    assert_eq!(
        RawClient::option_reply(&mut stream, 8).0,
        (1 << 31) + 3,
        "structured replies with data: ERR_INVALID"
    );
    RawClient::option(&mut stream, 8, &[]);
    assert_eq!(
        RawClient::option_reply(&mut stream, 8).0,
        1,
        "structured replies: ACK"
    );
    RawClient::option(&mut stream, 10, &query[..query.len() - 1]);
    assert_eq!(
        RawClient::option_reply(&mut stream, 10).0,
        (1 << 31) + 3,
        "a truncated query: ERR_INVALID"
    );
    RawClient::option(&mut stream, 10, &query);
    let (kind, data) = RawClient::option_reply(&mut stream, 10);
    assert_eq!((kind, &data[4..]), (4, &b"base:allocation"[..]));
    assert_eq!(RawClient::option_reply(&mut stream, 10).0, 1);
    RawClient::option(&mut stream, 3, &[]);
    let (kind, data) = RawClient::option_reply(&mut stream, 3);
    assert_eq!(
        (kind, &data[4..]),
        (2, &b"xvda"[..]),
        "LIST names the export"
    );
    assert_eq!(RawClient::option_reply(&mut stream, 3).0, 1);
    RawClient::option(&mut stream, 3, b"junk");
    assert_eq!(
        RawClient::option_reply(&mut stream, 3).0,
        (1 << 31) + 3,
        "LIST with data: ERR_INVALID"
    );
    RawClient::option(&mut stream, 6, &RawClient::info_request(b"xvdb"));
    assert_eq!(
        RawClient::option_reply(&mut stream, 6).0,
        (1 << 31) + 6,
        "unknown name: ERR_UNKNOWN"
    );
    RawClient::option(&mut stream, 6, &RawClient::info_request(b"xvda")[..5]);
    assert_eq!(
        RawClient::option_reply(&mut stream, 6).0,
        (1 << 31) + 3,
        "truncated INFO: ERR_INVALID"
    );
    RawClient::option(&mut stream, 6, &RawClient::info_request(b""));
    let (kind, data) = RawClient::option_reply(&mut stream, 6);
    assert_eq!(kind, 3);
    assert_eq!(
        u64::from_be_bytes(data[2..10].try_into().unwrap()),
        128 * 512,
        "the default export is xvda"
    );
    let (kind, data) = RawClient::option_reply(&mut stream, 6);
    assert_eq!(kind, 3);
    assert_eq!(&data[..2], &[0, 3], "the block sizes asked for");
    assert_eq!(u32::from_be_bytes(data[2..6].try_into().unwrap()), 512);
    assert_eq!(RawClient::option_reply(&mut stream, 6).0, 1);
    RawClient::option(&mut stream, 2, &[]);
    assert_eq!(
        RawClient::option_reply(&mut stream, 2).0,
        1,
        "ABORT is acknowledged"
    );
    let mut rest = Vec::new();
    assert_eq!(
        stream.read_to_end(&mut rest).unwrap(),
        0,
        "and the connection closes"
    );

    // EXPORT_NAME with an unknown name has no error reply: the connection closes.
    let mut stream = RawClient::haggle(&path);
    RawClient::option(&mut stream, 1, b"nope");
    assert_eq!(stream.read_to_end(&mut rest).unwrap(), 0);
    // With the right name: size, flags, and no zeroes (both sides asked for none).
    let mut stream = RawClient::haggle(&path);
    RawClient::option(&mut stream, 1, b"xvda");
    let mut export = [0u8; 10];
    stream.read_exact(&mut export).unwrap();
    assert_eq!(
        u64::from_be_bytes(export[..8].try_into().unwrap()),
        128 * 512
    );
}

#[test]
fn malformed_requests_get_errors_and_the_connection_goes_on() {
    let backend = Backend::start(&[]);
    attach_dom0_xvda(&backend, Mode::READ | Mode::WRITE, &EXTENTS);
    let mut client = RawClient::go(&backend.socket(0, "xvda"));
    assert_eq!(
        client.transmission_flags, 0b1101_0110_1101,
        "HAS_FLAGS SEND_FLUSH SEND_FUA SEND_TRIM SEND_WRITE_ZEROES CAN_MULTI_CONN SEND_CACHE \
         SEND_FAST_ZERO"
    );
    let size = 128 * 512;
    let refusals: [(u16, u16, u64, u32, u32, &str); 13] = [
        (0, 0, 100, 512, EINVAL, "unaligned offset"),
        (0, 0, 0, 100, EINVAL, "unaligned length"),
        (0, 0, 0, 0, EINVAL, "empty read"),
        (0, 0, size, 512, EINVAL, "read past the end"),
        (1, 0, size - 512, 1024, ENOSPC, "write past the end"),
        (0, 0x8000, 0, 512, EINVAL, "unknown flag"),
        (3, 0, 512, 0, EINVAL, "flush with an offset"),
        (7, 0, 0, 512, EINVAL, "block status was not negotiated"),
        (
            0,
            4,
            0,
            512,
            EINVAL,
            "don't-fragment without structured replies",
        ),
        (9, 0, 0, 512, EINVAL, "an unknown command"),
        (5, 0, size - 512, 1024, EINVAL, "cache past the end"),
        (0, 0, 0, 33 << 20, EINVAL, "larger than the maximum"),
        (4, 0, u64::MAX - 511, 512, ENOSPC, "trim that wraps"),
    ];
    for (command, flags, offset, length, error, why) in refusals {
        let data = vec![1u8; if command == 1 { length as usize } else { 0 }];
        let data = (command == 1).then_some(&data[..]);
        assert_eq!(
            client.request(command, flags, offset, length, data).0,
            error,
            "{why}"
        );
    }
    // Still in step: a write with FUA, a flush and a read; FUA is taken on every command.
    let data = pattern(1024, 5);
    assert_eq!(client.request(1, 1, 1024, 1024, Some(&data)).0, 0);
    assert_eq!(client.request(3, 0, 0, 0, None).0, 0);
    assert_eq!(client.request(0, 0, 1024, 1024, None), (0, data.clone()));
    assert_eq!(client.request(0, 1, 1024, 1024, None), (0, data.clone()));
    assert_eq!(client.request(3, 1, 0, 0, None).0, 0, "a flush with FUA");
    assert_eq!(client.request(5, 1, 0, 4096, None).0, 0, "a cache with FUA");
    assert_eq!(backend.read_image("hdb", 1002 * 512, 1024), data);
    assert_eq!(
        client.request(6, 2, 1024, 512, None).0,
        0,
        "write-zeroes with NO_HOLE"
    );
    assert_eq!(client.request(0, 0, 1024, 512, None), (0, vec![0; 512]));

    // A bad magic ends this connection, and only this one.
    client.stream.write_all(&[0u8; 28]).unwrap();
    let mut rest = Vec::new();
    assert_eq!(client.stream.read_to_end(&mut rest).unwrap(), 0);
    let mut again = RawClient::go(&backend.socket(0, "xvda"));
    assert_eq!(
        again.request(0, 0, 1536, 512, None),
        (0, data[512..].to_vec())
    );
    again.disconnect();
}

#[test]
fn a_deleted_vbd_fails_the_open_connection_and_takes_the_socket_away() {
    let backend = Backend::start(&[]);
    attach_dom0_xvda(&backend, Mode::READ | Mode::WRITE, &EXTENTS);
    let mut client = RawClient::go(&backend.socket(0, "xvda"));
    assert_eq!(client.request(0, 0, 0, 512, None).0, 0);
    backend.hypervisor().delete(0, xvda()).unwrap();
    assert!(!backend.socket(0, "xvda").exists());
    assert_eq!(
        client.request(1, 0, 0, 512, Some(&[7; 512])).0,
        5,
        "EIO after the delete"
    );
    assert_eq!(client.request(0, 0, 0, 512, None).0, 5);
    assert_eq!(backend.read_image("hdb", 1000 * 512, 512), vec![0; 512]);
    // A VBD created again under the same name is a new export; the old connection stays dead.
    attach_dom0_xvda(&backend, Mode::READ | Mode::WRITE, &EXTENTS);
    assert_eq!(client.request(0, 0, 0, 512, None).0, 5);
}

/// The fence, end to end: NBD clients write dom0's xvda continuously while control.sock
/// deletes it; as soon as the delete is answered, the test reissues the extents (it writes
/// the new owner's bytes straight into the image, last chunk first, so that it overtakes any
/// old write still going forward). Every write the old clients had in flight was done before
/// that answer, and every later one is refused, so none of their bytes may show through the
/// new owner's. The VBD is made of 64 KiB extents, so a write is many `pwrite`s (one never
/// interleaves with another on the same file) and one is in flight most of the time; the
/// rounds repeat, since a missing fence loses only some races (with the I/O moved out of the
/// translation, three runs of three failed, in rounds 0, 10 and 11).
#[test]
fn a_delete_is_answered_only_after_the_writes_in_flight_have_landed() {
    const ROUNDS: u8 = 24;
    const WRITERS: usize = 2;
    const REGION: usize = 16 << 20;
    const WRITE: usize = 4 << 20;
    const CHUNK: usize = 64 << 10;
    let backend = Backend::start(&[]);
    let mut hypervisor = backend.hypervisor();
    let extents: Vec<Extent> = (0..REGION / CHUNK)
        .map(|chunk| {
            Extent::new(hda(), (chunk * CHUNK / 512) as u64, (CHUNK / 512) as u64).unwrap()
        })
        .collect();
    let image = File::options()
        .write(true)
        .open(backend.image("hda"))
        .unwrap();
    for round in 0..ROUNDS {
        hypervisor
            .create(0, xvda(), Mode::READ | Mode::WRITE, label("vd:1"))
            .unwrap();
        hypervisor
            .set_extents(0, xvda(), &extents, SharingLevel::ReadersOnly)
            .unwrap();
        let written: Vec<AtomicUsize> = (0..WRITERS).map(|_| AtomicUsize::new(0)).collect();
        let new_owner = vec![0x80 | round; CHUNK];
        std::thread::scope(|scope| {
            let writers: Vec<_> = written
                .iter()
                .enumerate()
                .map(|(writer, count)| {
                    let mut client = RawClient::go(&backend.socket(0, "xvda"));
                    scope.spawn(move || {
                        let data = vec![0x10 | round; WRITE];
                        for write in 0.. {
                            let offset = ((writer + write) * WRITE % REGION) as u64;
                            let (error, _) =
                                client.request(1, 0, offset, WRITE as u32, Some(&data));
                            if error != 0 {
                                return error;
                            }
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        unreachable!("the loop ends with the first refused write")
                    })
                })
                .collect();
            let deadline = Instant::now() + Duration::from_secs(30);
            while written.iter().any(|count| count.load(Ordering::SeqCst) < 3) {
                assert!(Instant::now() < deadline, "the writers made no progress");
                std::thread::yield_now();
            }
            hypervisor.delete(0, xvda()).unwrap();
            for chunk in (0..REGION / CHUNK).rev() {
                image
                    .write_all_at(&new_owner, (chunk * CHUNK) as u64)
                    .unwrap();
            }
            for writer in writers {
                assert_eq!(writer.join().unwrap(), 5, "EIO once the VBD is gone");
            }
        });
        let image = backend.read_image("hda", 0, REGION);
        let stale = image.iter().filter(|&&byte| byte != 0x80 | round).count();
        assert_eq!(stale, 0, "round {round}: bytes of the deleted VBD's writers landed after the delete was answered");
    }
}

#[test]
fn idle_clients_never_lock_the_export_out_and_are_closed_after_the_idle_timeout() {
    let backend = Backend::start(&["--nbd-idle-timeout", "2"]);
    attach_dom0_xvda(&backend, Mode::READ | Mode::WRITE, &EXTENTS);
    let path = backend.socket(0, "xvda");
    // More than the 8 clients an export once served at most: some haggling, some chose.
    let mut idle: Vec<UnixStream> = (0..5).map(|_| RawClient::haggle(&path)).collect();
    idle.extend((0..5).map(|_| RawClient::go(&path).stream));
    let mut client = RawClient::go(&path);
    assert_eq!(client.request(0, 0, 0, 512, None).0, 0);
    for mut stream in idle {
        let mut rest = Vec::new();
        assert_eq!(
            stream.read_to_end(&mut rest).unwrap(),
            0,
            "an idle client is closed"
        );
    }
    assert!(
        backend
            .log()
            .contains("dom0/xvda.nbd: closed a connection idle for 2 s"),
        "{}",
        backend.log()
    );
}

#[test]
fn a_client_that_never_reads_its_replies_does_not_hold_a_stop() {
    let mut backend = Backend::start(&[]);
    attach_dom0_xvda(&backend, Mode::READ | Mode::WRITE, &EXTENTS);
    let mut client = RawClient::go(&backend.socket(0, "xvda"));
    // 64 reads of 64 KiB, whose replies fill the socket's buffer long before the last.
    for handle in 0..64u64 {
        let mut message = 0x2560_9513u32.to_be_bytes().to_vec();
        message.extend_from_slice(&[0, 0, 0, 0]);
        message.extend_from_slice(&handle.to_be_bytes());
        message.extend_from_slice(&0u64.to_be_bytes());
        message.extend_from_slice(&(64u32 << 10).to_be_bytes());
        client.stream.write_all(&message).unwrap();
    }
    // Let the backend block writing its replies.
    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(backend.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let status = backend.wait(Duration::from_secs(10));
    assert!(status.success(), "{status}: {}", backend.log());
}

/// dom0's VBD `name` over the first `sectors` of `disk`, read and write.
fn attach_whole(backend: &Backend, name: &str, disk: shared_abi::DeviceNumber, sectors: u64) {
    let vdevice = shared_abi::DeviceNumber::from_name(name).unwrap();
    let mut hypervisor = backend.hypervisor();
    hypervisor
        .create(0, vdevice, Mode::READ | Mode::WRITE, label(""))
        .unwrap();
    hypervisor
        .set_extents(
            0,
            vdevice,
            &[Extent::new(disk, 0, sectors).unwrap()],
            SharingLevel::ReadersOnly,
        )
        .unwrap();
}

#[test]
fn a_failed_writeback_fails_every_later_flush_and_write_of_its_disk_until_a_restart() {
    const READ: u16 = 0;
    const WRITE: u16 = 1;
    const FLUSH: u16 = 3;
    const WRITE_ZEROES: u16 = 6;
    const FUA: u16 = 1;
    let disk = FaultyDisk::mount(IMAGE_BYTES);
    let mut backend = Backend::start_with(Some(disk.path()), None, &[]);
    attach_whole(&backend, "xvda", hda(), 64);
    attach_whole(&backend, "xvdb", hdb(), 64);
    let mut on_hda = RawClient::go(&backend.socket(0, "xvda"));
    let mut on_hdb = RawClient::go(&backend.socket(0, "xvdb"));
    assert_eq!(
        on_hda.transmission_flags & 0xc,
        0xc,
        "FLUSH and FUA offered"
    );
    let written = pattern(512, 1);
    assert_eq!(on_hda.request(WRITE, 0, 0, 512, Some(&written)).0, 0);

    disk.fail_next_sync();
    assert_eq!(on_hda.request(FLUSH, 0, 0, 0, None), (EIO, vec![]));
    // The kernel has told of the failed writeback once and would sync again without a word.
    assert_eq!(on_hda.request(FLUSH, 0, 0, 0, None), (EIO, vec![]));
    assert_eq!(
        on_hda.request(WRITE, 0, 512, 512, Some(&[2; 512])),
        (EIO, vec![])
    );
    assert_eq!(
        on_hda.request(WRITE, FUA, 512, 512, Some(&[2; 512])),
        (EIO, vec![])
    );
    assert_eq!(on_hda.request(WRITE_ZEROES, 0, 0, 512, None), (EIO, vec![]));
    assert_eq!(
        on_hda.request(READ, 0, 0, 1024, None),
        (0, [written.clone(), vec![0; 512]].concat()),
        "reads go on"
    );
    // Another disk's VBD is not concerned, nor a new connection to this one.
    assert_eq!(on_hdb.request(WRITE, FUA, 0, 512, Some(&[3; 512])).0, 0);
    assert_eq!(on_hdb.request(FLUSH, 0, 0, 0, None).0, 0);
    let mut again = RawClient::go(&backend.socket(0, "xvda"));
    assert_eq!(again.request(FLUSH, 0, 0, 0, None), (EIO, vec![]));

    let log = backend.log();
    let said = format!("disk hda ({}): fdatasync failed", disk.path().display());
    assert_eq!(log.matches(&said).count(), 1, "said once: {log}");
    assert!(log.contains("until the backend is restarted"), "{log}");
    on_hda.disconnect();
    on_hdb.disconnect();
    again.disconnect();
    assert_eq!(backend.stop().code(), Some(1), "the stop cannot flush hda");

    backend.restart(&[]);
    attach_whole(&backend, "xvda", hda(), 64);
    let mut on_hda = RawClient::go(&backend.socket(0, "xvda"));
    assert_eq!(on_hda.request(WRITE, FUA, 512, 512, Some(&[2; 512])).0, 0);
    assert_eq!(on_hda.request(FLUSH, 0, 0, 0, None).0, 0);
    assert_eq!(
        on_hda.request(READ, 0, 0, 1024, None),
        (0, [written, vec![2; 512]].concat())
    );
}

#[test]
fn nothing_after_a_disconnect_is_served() {
    let backend = Backend::start(&[]);
    attach_dom0_xvda(&backend, Mode::READ | Mode::WRITE, &EXTENTS);
    let mut client = RawClient::go(&backend.socket(0, "xvda"));
    // NBD_CMD_DISC and, in the same write, a write the client must not send after it.
    let mut message = 0x2560_9513u32.to_be_bytes().to_vec();
    message.extend_from_slice(&[0, 0, 0, 2]);
    message.extend_from_slice(&[0u8; 20]);
    message.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    message.extend_from_slice(&[0, 0, 0, 1]);
    message.extend_from_slice(&7u64.to_be_bytes());
    message.extend_from_slice(&0u64.to_be_bytes());
    message.extend_from_slice(&512u32.to_be_bytes());
    message.extend_from_slice(&[0xee; 512]);
    client.stream.write_all(&message).unwrap();
    // The server closes with the write still unread, which a UNIX socket may report to
    // the peer as a reset rather than an end: either way, nothing came back.
    let mut rest = Vec::new();
    match client.stream.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset),
    }
    assert_eq!(
        rest,
        Vec::<u8>::new(),
        "no reply, and the connection closed"
    );
    assert_eq!(backend.read_image("hdb", 1000 * 512, 512), vec![0; 512]);
}

/// A client that sends requests and never reads their replies blocks its own connection's
/// thread in a write; every other connection, of this export or another, goes on.
#[test]
fn a_client_that_stops_reading_stalls_no_other_connection() {
    let backend = Backend::start(&[]);
    attach_dom0_xvda(&backend, Mode::READ | Mode::WRITE, &EXTENTS);
    attach_whole(&backend, "xvdb", hda(), 64);
    let mut stalled = RawClient::go(&backend.socket(0, "xvda"));
    // 64 reads of 1 MiB: far more than the socket buffers hold.
    for handle in 0..64u64 {
        let mut message = 0x2560_9513u32.to_be_bytes().to_vec();
        message.extend_from_slice(&[0, 0, 0, 0]);
        message.extend_from_slice(&handle.to_be_bytes());
        message.extend_from_slice(&0u64.to_be_bytes());
        message.extend_from_slice(&(64u32 * 512).to_be_bytes());
        stalled.stream.write_all(&message).unwrap();
    }
    // Let the backend fill the socket and block writing a reply.
    std::thread::sleep(Duration::from_millis(500));
    let data = pattern(4096, 3);
    for export in ["xvda", "xvdb"] {
        let mut other = RawClient::go(&backend.socket(0, export));
        assert_eq!(other.request(1, 0, 8192, 4096, Some(&data)).0, 0);
        assert_eq!(other.request(3, 0, 0, 0, None).0, 0);
        assert_eq!(other.request(0, 0, 8192, 4096, None), (0, data.clone()));
        other.disconnect();
    }
    // The table changes too: no translation is held by the stalled connection.
    backend
        .hypervisor()
        .delete(0, shared_abi::DeviceNumber::from_name("xvdb").unwrap())
        .unwrap();
}

/// Multi-conn's promise: a flush on one connection covers the writes completed on every
/// connection of the export, since a flush syncs the disks themselves.
#[test]
fn a_flush_on_one_connection_covers_writes_completed_on_another() {
    let disk = FaultyDisk::mount(IMAGE_BYTES);
    let backend = Backend::start_with(Some(disk.path()), None, &[]);
    attach_whole(&backend, "xvda", hda(), 64);
    let mut writer = RawClient::go(&backend.socket(0, "xvda"));
    let mut flusher = RawClient::go(&backend.socket(0, "xvda"));
    assert_eq!(
        writer.transmission_flags & 0x100,
        0x100,
        "NBD_FLAG_CAN_MULTI_CONN"
    );
    assert_eq!(writer.request(1, 0, 0, 512, Some(&[5; 512])).0, 0);
    let syncs = disk.syncs();
    assert_eq!(flusher.request(3, 0, 0, 0, None).0, 0);
    assert_eq!(
        disk.syncs(),
        syncs + 1,
        "the other connection's flush synced"
    );
    assert_eq!(flusher.request(0, 0, 0, 512, None), (0, vec![5; 512]));
    // And it reports what the writer's data met: a failed writeback of it.
    assert_eq!(writer.request(1, 0, 512, 512, Some(&[6; 512])).0, 0);
    disk.fail_next_sync();
    assert_eq!(flusher.request(3, 0, 0, 0, None), (EIO, vec![]));
}

#[test]
fn a_fast_zero_that_would_write_zeros_fails_with_enotsup_and_changes_nothing() {
    const WRITE_ZEROES: u16 = 6;
    const NO_HOLE: u16 = 2;
    const FAST_ZERO: u16 = 0x10;
    // The FUSE image implements no fallocate: zeroing it means writing zeros.
    let disk = FaultyDisk::mount(IMAGE_BYTES);
    let backend = Backend::start_with(Some(disk.path()), None, &[]);
    attach_whole(&backend, "xvda", hda(), 64);
    let mut client = RawClient::go(&backend.socket(0, "xvda"));
    assert_eq!(client.transmission_flags & 0x800, 0x800, "SEND_FAST_ZERO");
    let data = pattern(4096, 1);
    assert_eq!(client.request(1, 0, 0, 4096, Some(&data)).0, 0);
    for flags in [FAST_ZERO, FAST_ZERO | NO_HOLE] {
        assert_eq!(
            client.request(WRITE_ZEROES, flags, 0, 4096, None),
            (ENOTSUP, vec![])
        );
    }
    assert_eq!(client.request(0, 0, 0, 4096, None), (0, data));
    // Without the flag the zeros are written.
    assert_eq!(client.request(WRITE_ZEROES, 0, 0, 4096, None).0, 0);
    assert_eq!(client.request(0, 0, 0, 4096, None), (0, vec![0; 4096]));
}
