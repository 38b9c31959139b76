//! The seam to hv-vbd: the backend's table, the translation of one thread's requests
//! ([`Translator`]), and what the sockets ask about a VBD.
//!
//! Every socket and connection reaches its VBD through a [`VbdRef`] pinned when the socket
//! was made, so once that VBD is deleted its requests fail with `ENOENT`, even after another
//! of the same name is created. Every I/O holds its [`Translation`] (hv-vbd's in-flight
//! registration) until it is done, inside [`Translator::transfer`] or, for a batch of requests
//! in flight together, as [`Translator::translate_into`] returns it: a change that removes
//! the extents is answered only after the I/O has finished. No lock is held meanwhile.

use hv_vbd::{
    IoContext, Request, Segment, SegmentRoom, Transfer, Translation, VbdId, VbdRef, VbdTable,
};
use shared_abi::{DeviceNumber, Error, Label, DOM0};

/// Extents the table holds, in all VBDs together.
const EXTENTS: usize = 65536;

/// The one VBD table of this backend: hv-vbd's default sizes.
pub type Table = VbdTable<64, 16, EXTENTS, 16>;

/// A VBD as its socket needs it: pinned, with what the table says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VbdState {
    pub vbd: VbdRef,
    pub writable: bool,
    pub size_sectors: u64,
    pub label: Label,
}

impl VbdState {
    pub fn id(&self) -> VbdId {
        self.vbd.id()
    }
}

/// The current state of the VBD `vbd` was pinned to; `ENOENT` once it is gone, whatever has
/// been created under its name since. The backend is the hypervisor: it asks as dom0.
pub fn vbd_state(table: &Table, vbd: &VbdRef) -> Result<VbdState, Error> {
    let info = table.info(DOM0, vbd.id(), 0, 0, |_, _| Ok(()))?;
    if info.incarnation != vbd.incarnation() {
        return Err(Error::NotFound);
    }
    Ok(VbdState {
        vbd: *vbd,
        writable: info.mode.is_writable(),
        size_sectors: info.size_sectors,
        label: info.label,
    })
}

/// Every VBD of `domain`, each pinned. A domain without VBDs has none.
pub fn domain_vbds(table: &Table, domain: u32) -> Result<Vec<VbdState>, Error> {
    let mut ids = Vec::new();
    loop {
        let room = ids.capacity().max(16);
        ids.clear();
        ids.reserve(room);
        let summary = table.probe(DOM0, domain, room, |_, entry| {
            ids.push(VbdId {
                domain: entry.domain,
                vdevice: DeviceNumber::from_raw(entry.device),
            });
            Ok(())
        })?;
        if summary.complete {
            break;
        }
        ids = Vec::with_capacity(summary.count);
    }
    ids.into_iter()
        .map(|id| vbd_state(table, &table.pin(DOM0, id)?))
        .collect()
}

/// The disks the extents of the pinned VBD lie on, each once, in the devices file's order:
/// what a flush must sync. Read where translation reads, without a lock, so a flush neither
/// walks the VBD's extents nor waits for (or fails with `EBUSY` under) changes to the table.
pub fn vbd_devices(table: &Table, vbd: &VbdRef) -> Result<Vec<DeviceNumber>, Error> {
    let mut devices = Vec::new();
    table.vbd_disks(vbd, |device| devices.push(device))?;
    Ok(devices)
}

/// One thread's way into the table: its I/O context and a reusable segment buffer.
pub struct Translator {
    table: &'static Table,
    context: IoContext<'static>,
    segments: Segments,
}

/// Segments to start with; the buffer grows when a request crosses more extents.
const INITIAL_SEGMENTS: usize = 16;

impl Translator {
    /// A translator on `table`: any number of threads may have one.
    pub fn new(table: &'static Table) -> Translator {
        Translator {
            table,
            // Queue, NBD and control threads can outnumber the cores: a translation that
            // meets a change under way yields to the control thread making it.
            context: table.io_context().relaxing_with(std::thread::yield_now),
            segments: Segments(vec![Segment::default(); INITIAL_SEGMENTS]),
        }
    }

    pub fn table(&self) -> &'static Table {
        self.table
    }

    /// The context and a segment buffer of at least `room` entries, for hv-vbd's frame
    /// server, which translates by itself.
    pub fn parts(&mut self, room: usize) -> (&IoContext<'static>, &mut [Segment]) {
        self.segments.grow(room);
        (&self.context, &mut self.segments.0)
    }

    /// Translate `request` on the pinned VBD into `out`, once: `E2BIG` when its segments do
    /// not fit. The translation is registered as in flight until it is dropped, which may be
    /// long after this returns (a batch holds many at once, each in a buffer of its own).
    pub fn translate_into<'s>(
        &self,
        vbd: &VbdRef,
        request: &Request,
        out: &'s mut [Segment],
    ) -> Result<Translation<'s, 'static>, Error> {
        crate::fence::check()?;
        self.table
            .translate_pinned(&self.context, vbd, request, out)
    }

    /// Translate `request` on the pinned VBD and call `each` with every transfer against
    /// buffers of the lengths `buffers` yields, while the translation is held (hv-vbd's
    /// [`VbdTable::transfer`]): a change that removes the extents is answered only after
    /// this returns. The segment buffer grows until every segment fits.
    pub fn transfer<E: From<Error>>(
        &mut self,
        vbd: &VbdRef,
        request: &Request,
        buffers: impl IntoIterator<Item = usize>,
        each: impl FnMut(Transfer) -> Result<(), E>,
    ) -> Result<(), E> {
        crate::fence::check()?;
        self.table.transfer(
            &self.context,
            vbd.into(),
            request,
            &mut self.segments,
            buffers,
            each,
        )
    }
}

/// A translator's segment buffer, grown whenever hv-vbd asks for more room: a request has
/// at most one segment per sector and one per extent of the table, so it stays bounded.
struct Segments(Vec<Segment>);

impl SegmentRoom for Segments {
    fn segments(&mut self) -> &mut [Segment] {
        &mut self.0
    }

    fn grow(&mut self, wanted: usize) -> bool {
        self.0.resize(wanted.max(self.0.len()), Segment::default());
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hv_vbd::{Access, SharingLevel};
    use shared_abi::wire::Extent;
    use shared_abi::Mode;

    pub fn disk(index: u32) -> DeviceNumber {
        DeviceNumber::new(3, index * 64).unwrap()
    }

    pub fn xvda(domain: u32) -> VbdId {
        VbdId {
            domain,
            vdevice: DeviceNumber::from_name("xvda").unwrap(),
        }
    }

    /// A leaked table (it is about 2 MiB: built on a thread with room, since a test
    /// thread's stack is smaller) with two disks of 4096 sectors.
    pub fn empty_table() -> &'static Table {
        let table: &'static Table = std::thread::Builder::new()
            .stack_size(16 << 20)
            .spawn(|| Box::leak(Box::new(Table::new(SharingLevel::Unrestricted))))
            .unwrap()
            .join()
            .unwrap();
        for index in 0..2 {
            table
                .register_disk(hv_vbd::Disk {
                    device: disk(index),
                    sectors: 4096,
                })
                .unwrap();
        }
        table
    }

    /// Create `id` labelled `label` over `extents` of `(disk index, start, count)`.
    pub fn create(
        table: &Table,
        id: VbdId,
        extents: &[(u32, u64, u64)],
        writable: bool,
        label: &str,
    ) -> VbdRef {
        let mode = if writable {
            Mode::READ | Mode::WRITE
        } else {
            Mode::READ
        };
        table
            .create(DOM0, id, mode, Label::new(label).unwrap())
            .unwrap();
        let extents = extents
            .iter()
            .map(|&(index, start, count)| Extent::new(disk(index), start, count));
        table
            .set_extents(DOM0, id, extents, SharingLevel::Unrestricted)
            .unwrap()
            .fence
            .wait(std::thread::yield_now);
        table.pin(DOM0, id).unwrap()
    }

    /// Walk `request` on `vbd` with a buffer of its length, doing nothing.
    fn walk(translator: &mut Translator, vbd: &VbdRef, request: &Request) -> Result<(), Error> {
        let bytes = request.bytes() as usize;
        translator.transfer(vbd, request, [bytes], |_| Ok::<(), Error>(()))
    }

    #[test]
    fn a_translator_grows_its_buffer_for_a_request_over_many_extents() {
        let table = empty_table();
        // 40 one-sector extents, every other sector of disk 0.
        let extents: Vec<_> = (0..40).map(|index| (0, index * 2, 1)).collect();
        let vbd = create(table, xvda(1), &extents, true, "vd:1");
        let mut translator = Translator::new(table);
        let request = Request::new(Access::Read, 0, 40).unwrap();
        let mut sectors = Vec::new();
        translator
            .transfer(&vbd, &request, [40 * 512], |transfer| {
                sectors.push(transfer.disk_offset / 512);
                Ok::<(), Error>(())
            })
            .unwrap();
        assert_eq!(sectors, (0..40).map(|index| index * 2).collect::<Vec<_>>());
    }

    #[test]
    fn a_pinned_vbd_is_gone_once_deleted_even_if_its_name_is_created_again() {
        let table = empty_table();
        let vbd = create(table, xvda(1), &[(0, 0, 8)], true, "vd:1");
        let mut translator = Translator::new(table);
        let request = Request::new(Access::Write, 0, 1).unwrap();
        assert_eq!(walk(&mut translator, &vbd, &request), Ok(()));
        table
            .delete(DOM0, xvda(1))
            .unwrap()
            .fence
            .wait(std::thread::yield_now);
        let again = create(table, xvda(1), &[(1, 0, 8)], true, "vd:2");
        assert_eq!(walk(&mut translator, &vbd, &request), Err(Error::NotFound));
        assert_eq!(vbd_state(table, &vbd), Err(Error::NotFound));
        assert_eq!(vbd_devices(table, &vbd), Err(Error::NotFound));
        assert_eq!(walk(&mut translator, &again, &request), Ok(()));
    }

    #[test]
    fn a_read_only_vbd_refuses_writes() {
        let table = empty_table();
        let vbd = create(table, xvda(1), &[(0, 0, 8)], false, "");
        let mut translator = Translator::new(table);
        let write = Request::new(Access::Write, 0, 1).unwrap();
        assert_eq!(walk(&mut translator, &vbd, &write), Err(Error::ReadOnly));
        let read = Request::new(Access::Read, 0, 8).unwrap();
        assert_eq!(walk(&mut translator, &vbd, &read), Ok(()));
        let past = Request::new(Access::Read, 8, 1).unwrap();
        assert_eq!(walk(&mut translator, &vbd, &past), Err(Error::OutOfRange));
    }

    #[test]
    fn state_devices_and_domain_listing_follow_the_table() {
        let table = empty_table();
        let vbd = create(
            table,
            xvda(1),
            &[(1, 100, 8), (0, 0, 8), (1, 0, 8)],
            true,
            "vd:7",
        );
        assert_eq!(vbd_devices(table, &vbd), Ok(vec![disk(0), disk(1)]));
        let state = VbdState {
            vbd,
            writable: true,
            size_sectors: 24,
            label: Label::new("vd:7").unwrap(),
        };
        assert_eq!(vbd_state(table, &vbd), Ok(state));
        assert_eq!(domain_vbds(table, 1), Ok(vec![state]));
        assert_eq!(domain_vbds(table, 7), Ok(vec![]));
    }

    #[test]
    fn a_vbds_disks_are_read_without_a_lock_even_while_it_keeps_changing() {
        // A flush once walked every extent under the table's writer mutex, in batches, and
        // answered EBUSY when the VBD changed between them.
        let table = empty_table();
        let extents: Vec<_> = (0..300).map(|index| (0, index * 2, 1)).collect();
        let vbd = create(table, xvda(1), &extents, true, "vd:1");
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for _ in 0..300 {
                    let extent = Extent::new(disk(1), 0, 8).unwrap();
                    table
                        .grow(DOM0, xvda(1), extent, SharingLevel::Unrestricted)
                        .unwrap();
                    table
                        .shrink(DOM0, xvda(1))
                        .unwrap()
                        .fence
                        .wait(std::thread::yield_now);
                }
                done.store(true, std::sync::atomic::Ordering::Release);
            });
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let devices = vbd_devices(table, &vbd).unwrap();
                assert!(devices == [disk(0)] || devices == [disk(0), disk(1)]);
            }
        });
    }

    #[test]
    fn any_number_of_translators_translate_at_once() {
        // The table once had 256 I/O contexts, and a queue that missed one failed every
        // request of its connection.
        let table = empty_table();
        let vbd = create(table, xvda(1), &[(0, 0, 8)], true, "vd:1");
        let request = Request::new(Access::Read, 0, 8).unwrap();
        let mut translators: Vec<Translator> = (0..1000).map(|_| Translator::new(table)).collect();
        for translator in &mut translators {
            assert_eq!(walk(translator, &vbd, &request), Ok(()));
        }
    }
}
